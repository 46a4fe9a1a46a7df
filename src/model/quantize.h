/*
 * quantize.h - giving a loaded model's linear weights a block-quantised twin
 * (`--weights q8|q4`), at load time, optionally through a cache file.
 *
 * Quantised: every 2-D linear weight of the text model and of the vision encoder
 * (q/k/v/o, gate/up/down, attn.qkv/proj, the merger's two layers) in the format
 * asked; the lm_head one step finer (as stored with q8, q8 with q4), because its
 * rounding alone caused most top-1 flips on the 7B-width fixture. Kept as stored: the embedding table (a row lookup, not a product), the patch
 * embed (the first layer sees raw pixels; 0.3% of the encoder's FLOPs), biases and
 * norms. Each quantised weight's kernel view (`.k.q`) points at its twin; linear_forward uses it.
 *
 * The cache file (see quant_cache_* in quantize.c for the layout) holds the twins'
 * bytes so the next load maps them instead of quantising: it is keyed by the
 * format and a fingerprint of the source weights (names, shapes, dtypes and a
 * sample of 64 bytes in every MiB of each tensor, plus its last bytes), and a cache
 * that does not match, is truncated or is corrupt is ignored with a warning and
 * rewritten.
 *
 *   model m;  model_load(&m, dir, &err);
 *   quantize_opts o = {.format = QUANT_Q4, .cache_path = "dir/ergo-weights.q4"};
 *   quantize_report r;
 *   model_quantize(&m, &o, &r, &err);
 */
#ifndef ERGO_QUANTIZE_H
#define ERGO_QUANTIZE_H

#include "base/status.h"
#include "kernels/quant.h"
#include "model/weights.h"

typedef struct quantize_opts {
    quant_format format;     /* QUANT_Q8 or QUANT_Q4 (QUANT_NONE: nothing to do) */
    const char *cache_path;  /* NULL: no cache file */
    int release_source;      /* drop the source pages of quantised tensors as soon as
                              * each twin exists (their `data` becomes NULL): frees the
                              * memory of an in-memory model. If model_quantize then
                              * fails, the model is unusable: free it. */
    const void *salt;        /* salt_len bytes mixed into the cache's fingerprint (a LoRA
                              * adapter's hash: merged weights differ from the base in
                              * bytes the sampled fingerprint may not see); NULL: none */
    size_t salt_len;
    /* progress of a quantisation (not of a cache mapping): source bytes done of total,
     * after each tensor; NULL: none */
    void (*on_bytes)(void *ctx, int64_t done, int64_t total);
    void *on_bytes_ctx;
} quantize_opts;

typedef struct quantize_report {
    int n_tensors;           /* quantised tensors */
    size_t source_bytes;     /* their bytes as stored */
    size_t quant_bytes;      /* their bytes quantised (q + scales) */
    double ms;               /* quantising or mapping the cache */
    int from_cache;          /* 1: mapped from the cache file */
    int cache_written;       /* 1: the cache file was written */
    char cache_note[256];    /* why the cache was not used or not written ("" if it was) */
} quantize_report;

/* The twins of m's linear weights in opts->format. Fails only for out-of-memory
 * or weights the format cannot hold (a cache problem is a note in the report). */
ergo_status model_quantize(model *m, const quantize_opts *opts, quantize_report *rep,
                           ergo_error *err);

/* Turns the twins off (0: every weight used as stored again) or back on (1), to
 * compare both forms in one process. Needs the sources (release_source = 0). */
void model_quant_enable(model *m, int on);

/* Releases the twins (model_free calls it). */
void model_quant_free(model *m);

/* "<dir>/ergo-weights.<q8|q4>": where `--weights-cache auto` keeps the cache. */
ergo_status quant_cache_default_path(char *out, size_t size, const char *model_dir,
                                     quant_format f, ergo_error *err);

#endif
