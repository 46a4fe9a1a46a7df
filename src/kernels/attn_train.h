/*
 * attn_train.h - attention for training: a forward that saves each query row's
 * log-sum-exp, and the FlashAttention-2 backward that recomputes the scores from it
 * tile by tile (no n x n matrix is ever stored; training.md section 2.2).
 *
 * Rows are contiguous (no KV cache): a packed batch of sequences, or one image's
 * patches in window order. `spans` cut the rows into independent segments (the
 * sequences of a packed batch; an image's attention windows, or its frames in a
 * full-attention block): a query sees only keys of its own span, and with causal = 1
 * only keys at or before it. Grouped-query: query head h reads kv head h / (H / KV);
 * the backward sums dK, dV of a kv head over its query heads.
 *
 *   attn_train_args a = {n, H, KV, Dh, 1, spans, n_spans, 1/sqrtf(Dh)};
 *   attn_train_forward(&a, out, lse, q, k, v);
 *   attn_train_backward(&a, dq, dk, dv, dout, q, k, v, out, lse);
 *
 * q, out, dq, dout: (n, H*Dh), heads concatenated (head h of row i at i*H*Dh + h*Dh);
 * k, v, dk, dv: (n, KV*Dh); lse: (H, n). Matches torch's sdpa (f32) forward and its
 * autograd backward within the f32 summation-order error. Threaded (OpenMP) over
 * (span, head, query tile) for the forward and dQ, over (span, kv head, key tile)
 * for dK/dV; deterministic whatever the number of threads.
 */
#ifndef ERGO_ATTN_TRAIN_H
#define ERGO_ATTN_TRAIN_H

#include <stdint.h>

typedef struct attn_train_args {
    int n;                  /* rows */
    int heads, kv_heads;    /* H, KV (H % KV == 0) */
    int dh;                 /* head dim */
    int causal;             /* 1: a query sees keys of its span up to itself */
    const int32_t *spans;   /* (n_spans, 2): (start, length), in order, covering [0, n);
                               NULL = one span of all rows */
    int n_spans;
    float scale;            /* 1/sqrt(Dh) */
} attn_train_args;

void attn_train_forward(const attn_train_args *a, float *out, float *lse, const float *q,
                        const float *k, const float *v);
/* dq, dk, dv are overwritten. */
void attn_train_backward(const attn_train_args *a, float *dq, float *dk, float *dv,
                         const float *dout, const float *q, const float *k, const float *v,
                         const float *out, const float *lse);

/* Naive definitions (the full score matrix of one row at a time, double sums): what
 * the tiled versions are tested against. Same signatures. */
void attn_train_forward_ref(const attn_train_args *a, float *out, float *lse, const float *q,
                            const float *k, const float *v);
void attn_train_backward_ref(const attn_train_args *a, float *dq, float *dk, float *dv,
                             const float *dout, const float *q, const float *k,
                             const float *v, const float *out, const float *lse);

#endif
