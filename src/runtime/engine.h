/*
 * engine.h - what is loaded once and shared read-only by every thread and request:
 * the model (with its q8/q4 twins), the tokenizer, the chat template, the
 * processor and generation configs, the stop ids, and the load options that
 * shaped them (weights format, cache file, ISA, threads, limits).
 *
 * An engine is immutable after engine_load / engine_from_model returns: every user
 * holds a `const engine *` (contexts, pipelines, commands), so any number of
 * threads may use one engine at once, each through its own context (context.h).
 * The kernel table is process-wide: engine_load initialises it (kernels_init with
 * the options' ISA), so load engines before starting the threads that use them.
 *
 *   engine_options o;  engine_options_default(&o);
 *   o.weights = QUANT_Q8;
 *   engine e;  if (engine_load(&e, dir, &o, &err)) ...;
 *   if (e.warning[0]) fprintf(stderr, "warning: %s\n", e.warning);
 *   ... context_init(&c, &e, &err) per worker ...
 *   engine_free(&e);
 */
#ifndef ERGO_RUNTIME_ENGINE_H
#define ERGO_RUNTIME_ENGINE_H

#include <stdint.h>

#include "base/status.h"
#include "image/preprocess.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/quantize.h"
#include "model/session.h"
#include "model/kv_cache.h"
#include "model/weights.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

/* Tokens per prefill chunk when the options leave it at 0: bounds the text state
 * (its (T, ffn) MLP buffers); any chunk gives the same numbers (text.h). */
#define ENGINE_PREFILL_CHUNK 64

typedef struct engine_options {
    quant_format weights;      /* QUANT_NONE (bf16: as stored, the default), QUANT_Q8, QUANT_Q4 */
    const char *weights_cache; /* q8/q4 only: NULL or "auto" = <dir>/ergo-weights.<q8|q4>
                                  (none for engine_from_model), "off" = none, else a file */
    const char *isa;           /* "ref", "avx2", "avx512", "auto"; NULL = $ERGO_ISA or the best */
    int n_threads;             /* OpenMP threads per context call; 0 = as the process has */
    int64_t min_pixels;        /* processor limits; 0 = preprocessor_config.json's */
    int64_t max_pixels;        /*   (its size.shortest_edge / longest_edge, or min/max_pixels) */
    int max_context;           /* tokens one session may hold; 0 = max_position_embeddings */
    int prefill_chunk;         /* tokens per text forward in a context; 0 = ENGINE_PREFILL_CHUNK */
    kv_dtype kv_dtype;         /* how each context's KV cache stores keys/values (KV_F32) */
    size_t kv_budget_bytes;    /* each context's KV cache limit; 0 = none */
    void (*on_quantize)(void *ctx, int64_t done, int64_t total); /* quantisation progress
                                  (source bytes), or NULL */
    void *on_quantize_ctx;
    int model_only;            /* engine_load: the model alone (no tokenizer, template or
                                  processor config; as engine_from_model): benchmarks */
    const char *lora;          /* NULL, or a PEFT LoRA adapter directory (or an `ergo train
                                  sft` output: its newest checkpoint) merged into the weights
                                  after the load, before the q8/q4 twins (model/lora_adapter.h);
                                  an automatic weights cache is then <dir>/ergo-weights.<fmt>-
                                  lora-<16 hex of the adapter's SHA-256>, and every cache's
                                  fingerprint includes that hash */
} engine_options;

/* Everything 0 / NULL: bf16 as stored, cache beside the checkpoint, the best ISA,
 * the checkpoint's limits. */
void engine_options_default(engine_options *o);

typedef struct engine {
    model m;                   /* config, generation config, weights (+ twins) */
    tokenizer *tok;            /* NULL when built without one (model_only, engine_from_model) */
    chat_template ct;          /* valid when has_chat_template */
    int has_chat_template;
    preprocess_config pc;      /* preprocessor_config.json (or the processor's defaults),
                                  with the options' pixel limits applied */
    int32_t stop_ids[GEN_MAX_EOS + 1]; /* the generation config's eos ids + <|im_end|>
                                          (no <|im_end|> without a tokenizer) */
    int n_stop_ids;
    int max_context;           /* session limit in tokens (<= max_position_embeddings) */
    int prefill_chunk;         /* T of every context's text_state */
    kv_dtype kv_dtype;         /* of every context's KV pool */
    size_t kv_budget_bytes;
    int n_threads;             /* 0: the process default */
    cpu_isa isa;               /* the kernels' instruction set */
    quant_format weights;      /* what the linear weights are read as */
    quantize_report quant;     /* what the quantisation did (zeroed for bf16) */
    char warning[256];         /* non-empty: the weights cache could not be used or written
                                  (the engine is fine; the caller prints it) */
    char lora_dir[1024];       /* the adapter merged ("" for none), as resolved */
    char lora_hash[65];        /* its content's SHA-256 (hex) */
    int lora_modules;          /* linears it adapted */
    char lora_note[256];       /* how lora_dir was found from the option, "" when it is it */
    double load_ms;            /* model_load (mapping, binding); 0 for engine_from_model */
    int model_loaded;          /* m must be freed */
} engine;

/* Loads the checkpoint directory dir: kernels_init(o->isa), model_load, the
 * quantisation o->weights asks for (through its cache), then unless
 * o->model_only the tokenizer, chat template, preprocessor_config.json (defaults
 * when absent) and the stop ids. o may be NULL (defaults). On failure err says
 * why; free e with engine_free in every case. */
ergo_status engine_load(engine *e, const char *dir, const engine_options *o, ergo_error *err);

/* An engine around an already-filled in-memory model (random checkpoints,
 * tests): *m is taken in every case (the engine frees it; *m is zeroed). The
 * quantisation applies (cache only with an explicit weights_cache path); tok is
 * NULL, there is no chat template, pc is the processor's defaults (with the
 * options' limits), the stop ids are the generation config's eos ids. Such an
 * engine can encode images and prefill, not generate (which needs a tokenizer). */
ergo_status engine_from_model(engine *e, model *m, const engine_options *o, ergo_error *err);

/* A view of e that runs other weights of the same shapes: GRPO's rollouts on the
 * policy being trained, whose f32 masters change in place after every step. Everything
 * but the weights is e's, shared read-only; the view reads w as it is (no q8/q4 twins).
 * Never engine_free a view; it must not outlive e or w. */
void engine_view(engine *view, const engine *e, const model_weights *w);

/* Releases everything; e is zeroed (safe after a failed load, and twice). */
void engine_free(engine *e);

/* "<model_dir>/ergo-weights.<fmt>" or, with a LoRA adapter of content hash
 * lora_hash (hex, NULL for none), "<model_dir>/ergo-weights.<fmt>-lora-<16 hex>":
 * where `--weights-cache auto` keeps a q8/q4 cache. */
ergo_status engine_cache_auto_path(char *out, size_t size, const char *model_dir, quant_format f,
                                   const char *lora_hash, ergo_error *err);



#endif
