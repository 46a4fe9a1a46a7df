/*
 * engine.c - loading the shared, read-only part of a run once: kernels, model,
 * quantised twins, tokenizer, chat template, processor config, stop ids.
 */
#include "runtime/engine.h"

#include <omp.h>
#include <string.h>

#include "base/clock.h"
#include "base/file.h"
#include "model/lora_adapter.h"

void engine_options_default(engine_options *o) { memset(o, 0, sizeof *o); }

/* The --weights-cache choice: NULL / "auto" beside model_dir (none without a
 * directory), "off" none, else the path itself. */
static ergo_status quantize(engine *e, const engine_options *o, const char *model_dir,
                            ergo_error *err) {
    e->weights = o->weights;
    if (o->weights == QUANT_NONE) return ERGO_OK;
    if (o->weights != QUANT_Q8 && o->weights != QUANT_Q4)
        return ergo_fail(err, ERGO_E_ARG, "weights format %d: use bf16 (as stored), q8 or q4",
                         (int)o->weights);
    char path[4096];
    quantize_opts qo = {.format = o->weights, .release_source = 1,
                        .on_bytes = o->on_quantize, .on_bytes_ctx = o->on_quantize_ctx};
    /* merged weights: a cache made for another adapter (or none) must not match */
    if (e->lora_hash[0]) qo.salt = e->lora_hash, qo.salt_len = strlen(e->lora_hash);
    const char *cache = o->weights_cache;
    ergo_status s;
    if ((!cache || !strcmp(cache, "auto")) && model_dir) {
        if ((s = engine_cache_auto_path(path, sizeof path, model_dir, qo.format,
                                        e->lora_hash[0] ? e->lora_hash : NULL, err)))
            return s;
        qo.cache_path = path;
    } else if (cache && strcmp(cache, "off") && strcmp(cache, "auto")) {
        qo.cache_path = cache;
    }
    if ((s = model_quantize(&e->m, &qo, &e->quant, err))) return s;
    if (qo.cache_path && !e->quant.from_cache && !e->quant.cache_written)
        snprintf(e->warning, sizeof e->warning, "%s", e->quant.cache_note);
    return ERGO_OK;
}

ergo_status engine_cache_auto_path(char *out, size_t size, const char *model_dir, quant_format f,
                                   const char *lora_hash, ergo_error *err) {
    ergo_status s = quant_cache_default_path(out, size, model_dir, f, err);
    if (s || !lora_hash) return s;
    const size_t n = strlen(out);
    if (snprintf(out + n, size - n, "-lora-%.16s", lora_hash) >= (int)(size - n))
        return ergo_fail(err, ERGO_E_ARG, "%s: path too long", model_dir);
    return ERGO_OK;
}

/* The --lora adapter merged into e->m (before any quantisation). */
static ergo_status apply_lora(engine *e, const char *option, ergo_error *err) {
    char dir[sizeof e->lora_dir];
    lora_adapter a;
    ergo_status s = lora_adapter_resolve(option, dir, sizeof dir, e->lora_note,
                                         sizeof e->lora_note, err);
    if (!s) s = lora_adapter_load(&a, dir, &e->m.config, err);
    if (s) return s;
    s = lora_adapter_apply(&e->m, &a, err);
    if (!s) {
        memcpy(e->lora_dir, dir, sizeof e->lora_dir);
        memcpy(e->lora_hash, a.hash, sizeof e->lora_hash);
        e->lora_modules = a.n_modules;
    }
    lora_adapter_free(&a);
    return s;
}

/* What both constructors share once the model is in e->m: the adapter, threads,
 * limits, quantisation, processor defaults, the eos ids. */
static ergo_status finish_model(engine *e, const engine_options *o, const char *model_dir,
                                ergo_error *err) {
    const text_config *t = &e->m.config.text;
    if (o->n_threads < 0 || o->max_context < 0 || o->prefill_chunk < 0 || o->min_pixels < 0 ||
        o->max_pixels < 0)
        return ergo_fail(err, ERGO_E_ARG,
                         "engine options: negative threads %d, context %d, chunk %d or pixels "
                         "%lld..%lld",
                         o->n_threads, o->max_context, o->prefill_chunk,
                         (long long)o->min_pixels, (long long)o->max_pixels);
    if (o->max_context > t->max_position_embeddings)
        return ergo_fail(err, ERGO_E_ARG,
                         "context limit %d is above the checkpoint's max_position_embeddings %d",
                         o->max_context, t->max_position_embeddings);
    e->n_threads = o->n_threads;
    if (e->n_threads > 0) omp_set_num_threads(e->n_threads); /* the quantisation's threads too */
    e->max_context = o->max_context ? o->max_context : t->max_position_embeddings;
    e->prefill_chunk = o->prefill_chunk ? o->prefill_chunk : ENGINE_PREFILL_CHUNK;
    e->kv_dtype = o->kv_dtype;
    e->kv_budget_bytes = o->kv_budget_bytes;
    ergo_status s;
    if (o->lora && (s = apply_lora(e, o->lora, err))) return s;
    s = quantize(e, o, model_dir, err);
    if (s) return s;
    const generation_config *g = &e->m.generation;
    for (int i = 0; i < g->n_eos; i++) e->stop_ids[e->n_stop_ids++] = g->eos_token_ids[i];
    return ERGO_OK;
}

/* The processor settings: the checkpoint's file (or the class defaults) and the
 * options' overrides. */
static ergo_status load_processor(engine *e, const char *dir, const engine_options *o,
                                  ergo_error *err) {
    ergo_status s;
    if (dir) {
        char path[4096];
        if ((s = path_join(path, sizeof path, dir, "preprocessor_config.json", err))) return s;
        if (file_exists(path)) {
            if ((s = preprocess_config_load(&e->pc, path, err))) return s;
        } else {
            preprocess_config_default(&e->pc);
        }
    } else {
        preprocess_config_default(&e->pc);
    }
    if (o->min_pixels) e->pc.min_pixels = o->min_pixels;
    if (o->max_pixels) e->pc.max_pixels = o->max_pixels;
    if (e->pc.min_pixels > e->pc.max_pixels)
        return ergo_fail(err, ERGO_E_ARG, "min pixels %lld is above max pixels %lld",
                         (long long)e->pc.min_pixels, (long long)e->pc.max_pixels);
    return ERGO_OK;
}

ergo_status engine_load(engine *e, const char *dir, const engine_options *o, ergo_error *err) {
    memset(e, 0, sizeof *e);
    engine_options defaults;
    if (!o) engine_options_default(&defaults), o = &defaults;
    ergo_status s;
    if ((s = kernels_init(o->isa, err))) return s;
    e->isa = kern.isa;
    double t0 = now_ms();
    if ((s = model_load(&e->m, dir, err))) return s;
    e->model_loaded = 1;
    e->load_ms = now_ms() - t0;
    if ((s = finish_model(e, o, dir, err))) return s;
    if (o->model_only) return load_processor(e, NULL, o, err);
    if ((s = tokenizer_load(&e->tok, dir, err))) return s;
    if ((s = chat_template_load(&e->ct, dir, err))) return s;
    e->has_chat_template = 1;
    if ((s = load_processor(e, dir, o, err))) return s;
    /* stop at the checkpoint's eos ids and always at <|im_end|> (the turn's end) */
    int32_t im_end = tokenizer_token_id(e->tok, "<|im_end|>", 10);
    if (im_end < 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: the tokenizer has no <|im_end|>", dir);
    int have = 0;
    for (int i = 0; i < e->n_stop_ids; i++) have |= e->stop_ids[i] == im_end;
    if (!have) e->stop_ids[e->n_stop_ids++] = im_end;
    return ERGO_OK;
}

ergo_status engine_from_model(engine *e, model *m, const engine_options *o, ergo_error *err) {
    memset(e, 0, sizeof *e);
    e->m = *m;
    memset(m, 0, sizeof *m);
    e->model_loaded = 1;
    engine_options defaults;
    if (!o) engine_options_default(&defaults), o = &defaults;
    ergo_status s;
    if ((s = kernels_init(o->isa, err))) return s;
    e->isa = kern.isa;
    if ((s = finish_model(e, o, NULL, err))) return s;
    return load_processor(e, NULL, o, err);
}

void engine_view(engine *view, const engine *e, const model_weights *w) {
    *view = *e;
    view->m.weights = *w;
    view->m.quant = NULL;
    view->weights = QUANT_NONE;
    memset(&view->quant, 0, sizeof view->quant);
    view->model_loaded = 0;
}

void engine_free(engine *e) {
    tokenizer_free(e->tok);
    if (e->model_loaded) model_free(&e->m);
    memset(e, 0, sizeof *e);
}

