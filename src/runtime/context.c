/*
 * context.c - one worker's scratch and its verbs, thin over model/: the processor
 * + vision_encode, session_append, generate_run.
 */
#include "runtime/context.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"

/* OpenMP's thread count is per thread: a worker thread starts with the process
 * default, so every entry point applies the engine's. */
static void use_threads(const context *c) {
    if (c->e->n_threads > 0) omp_set_num_threads(c->e->n_threads);
}

ergo_status context_init(context *c, const engine *e, ergo_error *err) {
    memset(c, 0, sizeof *c);
    c->e = e;
    use_threads(c);
    const text_config *t = &e->m.config.text;
    const kv_pool_config kc = text_kv_config(t, e->kv_dtype, e->kv_budget_bytes);
    ergo_status s = kv_pool_init(&c->pool, &kc, err);
    if (s) {
        memset(c, 0, sizeof *c);
        return s;
    }
    s = text_state_init(&c->st, t, e->prefill_chunk, err);
    if (!s && !(c->logits = malloc(sizeof *c->logits * (size_t)t->vocab_size))) {
        text_state_free(&c->st);
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for the logits");
    }
    if (s) kv_pool_free(&c->pool);
    if (s) memset(c, 0, sizeof *c); /* context_free is then a no-op */
    return s;
}

void context_free(context *c) {
    if (!c->e) return; /* never initialised, or freed */
    free(c->logits);
    context_release_vision(c);
    text_state_free(&c->st);
    kv_pool_free(&c->pool);
    memset(c, 0, sizeof *c);
}

ergo_status context_session_init(context *c, session *s, ergo_error *err) {
    return session_init(s, &c->e->m, &c->pool, c->e->max_context, err);
}

ergo_status context_reserve_vision(context *c, int n_patches, ergo_error *err) {
    if (n_patches <= c->vs_patches) return ERGO_OK;
    use_threads(c);
    context_release_vision(c);
    ergo_status s = vision_state_init(&c->vs, &c->e->m.config.vision, n_patches, err);
    if (!s) c->vs_patches = n_patches;
    return s;
}

void context_release_vision(context *c) {
    if (c->vs_patches) vision_state_free(&c->vs);
    c->vs_patches = 0;
}

void context_image_free(context_image *im) {
    free(im->rows);
    memset(im, 0, sizeof *im);
}

ergo_status context_encode_image(context *c, const image *img, const preprocess_config *pc,
                                 context_image *out, ergo_error *err) {
    memset(out, 0, sizeof *out);
    const model_config *cfg = &c->e->m.config;
    if (!pc) pc = &c->e->pc;
    use_threads(c);
    preprocess_output po = {0};
    double t0 = now_ms();
    ergo_status s = preprocess_image(pc, img, &po, err);
    out->image_ms = now_ms() - t0;
    if (s) return s;
    out->grid = (mrope_grid){po.grid_t, po.grid_h, po.grid_w};
    out->width = po.width;
    out->height = po.height;
    out->processor_resized = po.resized;
    out->n_patches = po.n_patches;
    out->tokens = mrope_grid_tokens(&out->grid, cfg->vision.merge);
    /* the configured limit: no image may take more patches than max_pixels allows */
    const int64_t max_patches = pc->max_pixels / ((int64_t)pc->patch_size * pc->patch_size);
    if (po.n_patches > max_patches) {
        s = ergo_fail(err, ERGO_E_LIMIT,
                      "its %dx%d patch grid (%lld patches, %dx%d px) exceeds the limit of %lld "
                      "patches (max pixels %lld)",
                      po.grid_h, po.grid_w, (long long)po.n_patches, po.width, po.height,
                      (long long)max_patches, (long long)pc->max_pixels);
        goto done;
    }
    if ((s = context_reserve_vision(c, (int)po.n_patches, err))) goto done;
    out->rows = malloc(sizeof *out->rows * (size_t)out->tokens * (size_t)cfg->text.hidden);
    if (!out->rows) {
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for %lld vision rows",
                      (long long)out->tokens);
        goto done;
    }
    t0 = now_ms();
    s = vision_encode(&c->e->m, &c->vs, po.pixel_values, po.grid_t, po.grid_h, po.grid_w,
                      out->rows, err);
    out->vision_ms = now_ms() - t0;
done:
    preprocess_output_free(&po);
    return s;
}

ergo_status context_prefill(context *c, session *s, const context_piece *p,
                            context_prefill_out *out, ergo_error *err) {
    memset(out, 0, sizeof *out);
    use_threads(c);
    /* refuse what cannot fit before any work, saying what the images take */
    const int merge = c->e->m.config.vision.merge;
    int64_t vision_tokens = 0;
    for (int i = 0; i < p->n_images; i++) vision_tokens += mrope_grid_tokens(&p->grids[i], merge);
    const int room = s->max_context - s->n_cached;
    if (p->n > room) {
        if (s->n_cached == 0 && p->n_images && p->n - vision_tokens <= room)
            return ergo_fail(err, ERGO_E_LIMIT,
                             "too many images for the context: %d image(s) take %lld vision "
                             "tokens, making a prompt of %d tokens; the context holds %d",
                             p->n_images, (long long)vision_tokens, p->n, s->max_context);
        if (s->n_cached == 0)
            return ergo_fail(err, ERGO_E_LIMIT,
                             "the prompt is %d tokens (%lld of them for %d image(s)), longer "
                             "than the context of %d tokens",
                             p->n, (long long)vision_tokens, p->n_images, s->max_context);
        return ergo_fail(err, ERGO_E_LIMIT,
                         "the prompt is %d tokens (%lld of them for %d image(s)) and the "
                         "session holds %d: more than the context of %d tokens",
                         p->n, (long long)vision_tokens, p->n_images, s->n_cached,
                         s->max_context);
    }
    double t0 = now_ms();
    ergo_status r = session_append(s, &c->st, p->ids, p->n, p->grids, p->n_images, p->vision,
                                   c->logits, err);
    out->ms = now_ms() - t0;
    out->prompt_tokens = p->n;
    out->context_tokens = s->n_cached;
    if (!r) out->logits = c->logits;
    return r;
}

ergo_status context_generate(context *c, session *s, const float *logits,
                             const generate_params *p, generate_text_fn on_text, void *ctx,
                             generate_result *out, ergo_error *err) {
    if (!c->e->tok)
        return ergo_fail(err, ERGO_E_ARG, "the engine has no tokenizer (built from a model "
                                          "alone): it cannot generate");
    if (!logits) return ergo_fail(err, ERGO_E_ARG, "generate: no logits to start from");
    use_threads(c);
    if (logits != c->logits)
        memcpy(c->logits, logits, sizeof *c->logits * (size_t)c->e->m.config.text.vocab_size);
    return generate_run(s, &c->st, c->e->tok, p, c->logits, on_text, ctx, out, err);
}
