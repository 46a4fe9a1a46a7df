/*
 * test_runtime.c - the engine (src/runtime/engine.c) and contexts over it
 * (src/runtime/context.c), on the tiny checkpoint of the generate CLI tests
 * (tests/fixtures/text, cli_case) written to a scratch directory with the
 * tokenizer files:
 *   - engine_load: the tokenizer, template, processor config, stop ids (the eos ids
 *     + <|im_end|>), defaults and options (context limit, pixel limits, q8 with the
 *     cache off, a cache that cannot be written = a warning), and its refusals;
 *   - one engine shared by two contexts used from two threads at once gives what
 *     one context used twice gives: the prefill logits bit for bit and the greedy
 *     tokens and text (an image and text in the prompt);
 *   - the verbs' refusals and their messages: an image over the pixel limit, a
 *     prompt over the context (text, too many images, appended to a session that
 *     already holds tokens; the session unchanged), generate without a tokenizer
 *     (engine_from_model) or without logits.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "image/image.h"
#include "lm_fixture.h"
#include "runtime/context.h"
#include "runtime/engine.h"
#include "tokenizer/chat_template.h"

#define RT_IMAGE "tests/fixtures/text/img_84x112.png" /* grid (1, 6, 8): 12 vision tokens */
#define RT_NEW_TOKENS 12

/* What one greedy run produced (compared across contexts and threads). */
typedef struct rt_run {
    ergo_status status;
    char msg[768];
    float *logits;       /* (V) after the prompt */
    generate_result res;
    int prompt_tokens;
} rt_run;

static void rt_run_free(rt_run *r) {
    free(r->logits);
    generate_result_free(&r->res);
    memset(r, 0, sizeof *r);
}

/* One user turn [image, text] on a fresh session of c: encode, prefill, greedy
 * generate. No CHECK here: it also runs on worker threads (the counters are not
 * atomic); the caller checks r. */
static void rt_generate(context *c, const image *img, const char *text, rt_run *r) {
    const engine *e = c->e;
    ergo_error err = {0};
    context_image im = {0};
    tok_ids ids = {0};
    session s;
    int s_ready = 0;
    memset(r, 0, sizeof *r);
    ergo_status st = context_encode_image(c, img, NULL, &im, &err);
    if (!st) {
        chat_part parts[2] = {{CHAT_IMAGE, NULL, 0, (int32_t)im.tokens},
                              {CHAT_TEXT, text, strlen(text), 0}};
        chat_message m = {"user", NULL, 0, parts, 2};
        st = chat_encode(&e->ct, e->tok, &m, 1, 1, &ids, &err);
    }
    if (!st) st = context_session_init(c, &s, &err);
    s_ready = !st;
    context_prefill_out pf = {0};
    if (!st) {
        context_piece p = {ids.v, (int)ids.n, &im.grid, 1, im.rows};
        st = context_prefill(c, &s, &p, &pf, &err);
    }
    if (!st) {
        const size_t bytes = sizeof(float) * (size_t)e->m.config.text.vocab_size;
        r->logits = malloc(bytes);
        if (r->logits) memcpy(r->logits, pf.logits, bytes);
        r->prompt_tokens = pf.prompt_tokens;
        generate_params gp = {{0}, RT_NEW_TOKENS, e->stop_ids, e->n_stop_ids, NULL, 0};
        sampler_config_from_generation(&gp.sampling, &e->m.generation);
        gp.sampling.do_sample = 0;
        st = context_generate(c, &s, pf.logits, &gp, NULL, NULL, &r->res, &err);
    }
    r->status = st;
    memcpy(r->msg, err.msg, sizeof r->msg);
    if (s_ready) session_free(&s);
    tok_ids_free(&ids);
    context_image_free(&im);
}

typedef struct rt_worker {
    const engine *e;
    const image *img;
    const char *text;
    rt_run run;
    ergo_status init_status;
} rt_worker;

/* A worker thread: its own context over the shared engine. */
static void *rt_worker_main(void *arg) {
    rt_worker *w = arg;
    context c;
    ergo_error err = {0};
    w->init_status = context_init(&c, w->e, &err);
    if (w->init_status) {
        memcpy(w->run.msg, err.msg, sizeof w->run.msg);
        return NULL;
    }
    rt_generate(&c, w->img, w->text, &w->run);
    context_free(&c);
    return NULL;
}

/* b equals a: the same logits bit for bit, the same tokens and text. */
static void rt_same(const rt_run *a, const rt_run *b, int V, const char *label) {
    CHECK(a->status == ERGO_OK && b->status == ERGO_OK, "%s: runs failed: \"%s\" / \"%s\"",
          label, a->msg, b->msg);
    if (a->status || b->status || !a->logits || !b->logits) return;
    int first = -1;
    for (int i = 0; i < V && first < 0; i++)
        if (memcmp(&a->logits[i], &b->logits[i], sizeof(float))) first = i;
    CHECK(first < 0, "%s: prefill logits differ first at id %d: %.9g vs %.9g", label, first,
          first < 0 ? 0.0 : (double)a->logits[first], first < 0 ? 0.0 : (double)b->logits[first]);
    char l[160];
    snprintf(l, sizeof l, "%s: greedy tokens", label);
    CHECK_EQ_I32(b->res.tokens.v, b->res.tokens.n, a->res.tokens.v, a->res.tokens.n, l);
    CHECK(a->res.text.n == b->res.text.n && !memcmp(a->res.text.s, b->res.text.s, a->res.text.n),
          "%s: texts differ (%zu vs %zu bytes)", label, a->res.text.n, b->res.text.n);
    CHECK(a->res.reason == b->res.reason, "%s: stop reasons %s vs %s", label,
          stop_reason_name(a->res.reason), stop_reason_name(b->res.reason));
}

static void check_load(const char *dir) {
    ergo_error err = {0};
    engine e;
    ergo_status st = engine_load(&e, dir, NULL, &err);
    CHECK(st == ERGO_OK, "engine_load: %s", err.msg);
    if (!st) {
        CHECK(e.tok && e.has_chat_template, "tokenizer %p, template %d", (void *)e.tok,
              e.has_chat_template);
        /* eos ids [151645, 151643]; <|im_end|> = 151645 is among them already */
        CHECK(e.n_stop_ids == 2 && e.stop_ids[0] == 151645 && e.stop_ids[1] == 151643,
              "stop ids: %d of them, [%d, %d]", e.n_stop_ids, e.stop_ids[0], e.stop_ids[1]);
        CHECK_EQ_INT(e.max_context, e.m.config.text.max_position_embeddings, "default context");
        CHECK_EQ_INT(e.prefill_chunk, ENGINE_PREFILL_CHUNK, "default chunk");
        CHECK(e.isa == kern.isa && e.weights == QUANT_NONE && !e.warning[0] && e.load_ms >= 0,
              "isa %s, weights %s, warning \"%s\"", cpu_isa_name(e.isa),
              quant_format_name(e.weights), e.warning);
    }
    engine_free(&e);
    engine_free(&e); /* twice is harmless */

    /* options: limits and q8 without a cache file */
    engine_options o;
    engine_options_default(&o);
    o.max_context = 100;
    o.min_pixels = 28 * 28;
    o.max_pixels = 78400;
    o.prefill_chunk = 7;
    o.weights = QUANT_Q8;
    o.weights_cache = "off";
    st = engine_load(&e, dir, &o, &err);
    CHECK(st == ERGO_OK, "engine_load with options: %s", err.msg);
    if (!st)
        CHECK(e.max_context == 100 && e.pc.min_pixels == 28 * 28 && e.pc.max_pixels == 78400 &&
                  e.prefill_chunk == 7 && e.weights == QUANT_Q8 && e.quant.n_tensors > 0 &&
                  !e.quant.from_cache && !e.quant.cache_written && !e.warning[0],
              "options: context %d, pixels %lld..%lld, chunk %d, %s with %d tensors, "
              "warning \"%s\"",
              e.max_context, (long long)e.pc.min_pixels, (long long)e.pc.max_pixels,
              e.prefill_chunk, quant_format_name(e.weights), e.quant.n_tensors, e.warning);
    engine_free(&e);

    /* a cache that cannot be written: loaded all the same, with a warning to print */
    o.weights_cache = "/nonexistent-dir/ergo-weights.q8";
    st = engine_load(&e, dir, &o, &err);
    CHECK(st == ERGO_OK && e.warning[0], "unwritable cache: %s, warning \"%s\"",
          st ? err.msg : "loaded", st ? "" : e.warning);
    engine_free(&e);

    /* refusals */
    engine_options_default(&o);
    o.max_context = 1 << 30;
    st = engine_load(&e, dir, &o, &err);
    CHECK(st == ERGO_E_ARG && strstr(err.msg, "max_position_embeddings"),
          "context over the checkpoint's: %d \"%s\"", st, err.msg);
    engine_free(&e);
    engine_options_default(&o);
    o.min_pixels = 100000;
    o.max_pixels = 50000;
    st = engine_load(&e, dir, &o, &err);
    CHECK(st == ERGO_E_ARG && strstr(err.msg, "min pixels 100000 is above max pixels 50000"),
          "min above max pixels: %d \"%s\"", st, err.msg);
    engine_free(&e);
    engine_options_default(&o);
    o.isa = "vax";
    st = engine_load(&e, dir, &o, &err);
    CHECK(st == ERGO_E_ARG && strstr(err.msg, "vax"), "unknown ISA: %d \"%s\"", st, err.msg);
    engine_free(&e);
    kernels_init(NULL, &err);
    char missing[1100];
    snprintf(missing, sizeof missing, "%s/no-such-checkpoint", scratch_dir());
    st = engine_load(&e, missing, NULL, &err);
    CHECK(st != ERGO_OK && strstr(err.msg, "no-such-checkpoint"), "missing directory: \"%s\"",
          err.msg);
    engine_free(&e);
}

/* Two threads, two contexts, one engine == one context twice. */
static void check_shared(const engine *e, const image *img) {
    const int V = e->m.config.text.vocab_size;
    const char *text = "Describe this picture.";
    context c;
    ergo_error err = {0};
    if (context_init(&c, e, &err)) {
        CHECK(0, "context_init: %s", err.msg);
        return;
    }
    rt_run a, b;
    rt_generate(&c, img, text, &a);
    rt_generate(&c, img, text, &b); /* the same context again: its scratch reused */
    context_free(&c);
    CHECK(a.status == ERGO_OK && a.res.tokens.n == RT_NEW_TOKENS && a.res.reason == STOP_LENGTH,
          "one context: %s, %zu tokens, %s", a.msg, a.res.tokens.n,
          stop_reason_name(a.res.reason));
    rt_same(&a, &b, V, "one context used twice");

    rt_worker w[2];
    pthread_t th[2];
    int started[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].e = e, w[i].img = img, w[i].text = text;
        started[i] = pthread_create(&th[i], NULL, rt_worker_main, &w[i]) == 0;
        CHECK(started[i], "pthread_create %d", i);
    }
    for (int i = 0; i < 2; i++) {
        if (!started[i]) continue;
        pthread_join(th[i], NULL);
        CHECK(w[i].init_status == ERGO_OK, "thread %d: context_init: %s", i, w[i].run.msg);
        char label[64];
        snprintf(label, sizeof label, "thread %d of 2 vs one context", i);
        if (!w[i].init_status) rt_same(&a, &w[i].run, V, label);
        rt_run_free(&w[i].run);
    }
    printf("  [runtime] two threads on one engine: %zu greedy tokens each, identical to one "
           "context\n", a.res.tokens.n);
    rt_run_free(&a);
    rt_run_free(&b);
}

/* A piece of n copies of token `id` (a short word of the tokenizer). */
static int32_t *rt_tokens(int n, int32_t id) {
    int32_t *v = malloc(sizeof *v * (size_t)n);
    for (int i = 0; i < n; i++) v[i] = id;
    return v;
}

static void check_refusals(const char *dir, const image *img) {
    ergo_error err = {0};
    engine_options o;
    engine_options_default(&o);
    o.max_context = 40;
    engine e;
    context c;
    if (engine_load(&e, dir, &o, &err) || context_init(&c, &e, &err)) {
        CHECK(0, "engine with a context of 40: %s", err.msg);
        engine_free(&e);
        return;
    }
    /* an image over the pixel limit (given processor settings): the grid of a 28x3000
     * strip is 2x214 patches, over 78400 / 14^2 = 400 */
    image wide = {0};
    ergo_status st = image_decode_file(&wide, "tests/fixtures/text/wide_28x3000.png", NULL, &err);
    CHECK(st == ERGO_OK, "%s", err.msg);
    preprocess_config pc = e.pc;
    pc.max_pixels = 78400;
    context_image im;
    if (!st) {
        st = context_encode_image(&c, &wide, &pc, &im, &err);
        CHECK(st == ERGO_E_LIMIT && strstr(err.msg, "patch grid") &&
                  strstr(err.msg, "exceeds the limit of 400 patches (max pixels 78400)") &&
                  !im.rows && !c.vs_patches,
              "image over the limit: %d \"%s\"", st, err.msg);
        context_image_free(&im);
    }
    image_free(&wide);

    /* prompts over the context: text alone, then images making it so */
    session s;
    if (context_session_init(&c, &s, &err)) {
        CHECK(0, "session: %s", err.msg);
        context_free(&c);
        engine_free(&e);
        return;
    }
    context_prefill_out pf;
    int32_t *ids = rt_tokens(60, 1879); /* any id of the text vocabulary */
    context_piece p = {ids, 41, NULL, 0, NULL};
    st = context_prefill(&c, &s, &p, &pf, &err);
    CHECK(st == ERGO_E_LIMIT &&
              strstr(err.msg, "the prompt is 41 tokens (0 of them for 0 image(s)), longer than "
                              "the context of 40 tokens"),
          "prompt over the context: %d \"%s\"", st, err.msg);
    st = context_encode_image(&c, img, NULL, &im, &err);
    CHECK(st == ERGO_OK && im.tokens == 12, "encode: %s, %lld tokens", err.msg,
          (long long)im.tokens);
    const size_t D = (size_t)e.m.config.text.hidden;
    float *rows3 = st ? NULL : malloc(sizeof *rows3 * 36 * D);
    if (rows3) {
        /* three images of 12 tokens in 42: the text alone (6) would fit */
        for (int k = 0; k < 3; k++) memcpy(rows3 + k * 12 * D, im.rows, sizeof *rows3 * 12 * D);
        mrope_grid g[3] = {im.grid, im.grid, im.grid};
        context_piece three = {ids, 42, g, 3, rows3};
        st = context_prefill(&c, &s, &three, &pf, &err);
        CHECK(st == ERGO_E_LIMIT &&
                  strstr(err.msg, "too many images for the context: 3 image(s) take 36 vision "
                                  "tokens, making a prompt of 42 tokens; the context holds 40"),
              "images over the context: %d \"%s\"", st, err.msg);
        CHECK_EQ_INT(s.n_cached, 0, "session after the refusals");
    }
    free(rows3);
    /* a session that holds 30 tokens takes 10 more, not 11; refusals change nothing */
    p.n = 30;
    st = context_prefill(&c, &s, &p, &pf, &err);
    CHECK(st == ERGO_OK && pf.context_tokens == 30 && pf.prompt_tokens == 30 &&
              pf.logits == c.logits,
          "30 tokens: %s", err.msg);
    p.n = 11;
    st = context_prefill(&c, &s, &p, &pf, &err);
    CHECK(st == ERGO_E_LIMIT &&
              strstr(err.msg, "the prompt is 11 tokens (0 of them for 0 image(s)) and the "
                              "session holds 30: more than the context of 40 tokens") &&
              s.n_cached == 30,
          "append over the context: %d \"%s\", %d cached", st, err.msg, s.n_cached);
    generate_result res = {0};
    generate_params gp = {{0}, 4, NULL, 0, NULL, 0}; /* no stop ids: only the limit stops */
    sampler_config_from_generation(&gp.sampling, &e.m.generation);
    gp.sampling.do_sample = 0;
    st = context_generate(&c, &s, NULL, &gp, NULL, NULL, &res, &err);
    CHECK(st == ERGO_E_ARG && strstr(err.msg, "no logits"), "generate without logits: \"%s\"",
          err.msg);
    generate_result_free(&res);
    /* the context limit stops generation as it stops a session */
    p.n = 9;
    st = context_prefill(&c, &s, &p, &pf, &err);
    if (!st) st = context_generate(&c, &s, pf.logits, &gp, NULL, NULL, &res, &err);
    CHECK(st == ERGO_OK && res.reason == STOP_CONTEXT && s.n_cached == 40,
          "generate at the limit: %s, %s, %d cached", err.msg, stop_reason_name(res.reason),
          s.n_cached);
    generate_result_free(&res);
    free(ids);
    context_image_free(&im);
    session_free(&s);
    context_free(&c);
    engine_free(&e);
}

/* An engine around an in-memory model: prefill works, generate is refused. */
static void check_from_model(const json_t *man) {
    model m;
    if (!lmf_model(&m, json_string_value(json_object_get(man, "cli_case")))) return;
    ergo_error err = {0};
    engine e;
    context c;
    ergo_status st = engine_from_model(&e, &m, NULL, &err);
    CHECK(st == ERGO_OK && !e.tok && !e.has_chat_template && e.n_stop_ids == 2 &&
              e.pc.patch_size == 14 && m.config.text.vocab_size == 0,
          "engine_from_model: %s (tok %p, %d stop ids)", err.msg, (void *)e.tok, e.n_stop_ids);
    if (!st) st = context_init(&c, &e, &err);
    if (!st) {
        session s;
        int32_t ids[5] = {151644, 872, 198, 9707, 13};
        context_piece p = {ids, 5, NULL, 0, NULL};
        context_prefill_out pf;
        st = context_session_init(&c, &s, &err);
        if (!st) st = context_prefill(&c, &s, &p, &pf, &err);
        CHECK(st == ERGO_OK && isfinite(pf.logits[0]), "prefill on a model alone: %s", err.msg);
        generate_result res = {0};
        generate_params gp = {{0}, 4, e.stop_ids, e.n_stop_ids, NULL, 0};
        sampler_config_from_generation(&gp.sampling, &e.m.generation);
        if (!st) {
            ergo_status g = context_generate(&c, &s, pf.logits, &gp, NULL, NULL, &res, &err);
            CHECK(g == ERGO_E_ARG && strstr(err.msg, "no tokenizer"),
                  "generate without a tokenizer: %d \"%s\"", g, err.msg);
            session_free(&s);
        }
        generate_result_free(&res);
        context_free(&c);
    }
    engine_free(&e);
}

void test_runtime(void) {
    json_t *man = lmf_manifest();
    if (!man) return;
    ergo_error err = {0};
    ckpt_case c;
    if (ckpt_case_load(&c, lmf_path(json_string_value(json_object_get(man, "cli_case"))), &err)) {
        CHECK(0, "%s", err.msg);
        json_decref(man);
        return;
    }
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/runtime_ck", scratch_dir());
    int ok = random_checkpoint_write(&c, dir, "assets/qwen2.5-vl-tokenizer", &err) == ERGO_OK;
    ckpt_case_free(&c);
    CHECK(ok, "writing the checkpoint: %s", err.msg);
    image img = {0};
    if (ok) ok = image_decode_file(&img, RT_IMAGE, NULL, &err) == ERGO_OK;
    CHECK(ok, "%s", err.msg);
    if (ok) {
        check_load(dir);
        engine e;
        if (engine_load(&e, dir, NULL, &err) == ERGO_OK) {
            const engine *shared = &e; /* read-only from here on */
            check_shared(shared, &img);
        } else {
            CHECK(0, "engine_load: %s", err.msg);
        }
        engine_free(&e);
        check_refusals(dir, &img);
        check_from_model(man);
    }
    image_free(&img);
    json_decref(man);
}
