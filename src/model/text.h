/*
 * text.h - the Qwen2.5-VL language model (Qwen2 decoder with M-RoPE): tokens (and
 * the vision rows that replace the <|image_pad|> embeddings) -> keys/values in a
 * KV cache and logits where they are asked for.
 *
 * Mirrors Qwen2_5_VLTextModel.forward + lm_head (transformers 4.56.2,
 * modeling_qwen2_5_vl.py): embed_tokens with masked_scatter of the image
 * features, Qwen2_5_VLRotaryEmbedding + apply_multimodal_rotary_pos_emb
 * (mrope_section, rotate-half), Qwen2_5_VLAttention (q/k/v with bias, o without,
 * grouped-query, causal), Qwen2MLP (SwiGLU), Qwen2RMSNorm, lm_head (tied or not).
 * f32 activations and accumulation; weights read as stored.
 *
 * The model is read-only and shared; a text_state holds every buffer of a forward
 * for up to max_tokens tokens at a time (allocated once; longer inputs run in
 * chunks of max_tokens, which gives the same numbers: each output element is one
 * dot product and attention walks keys in fixed tiles from position 0). A kv_cache
 * belongs to one sequence (see session.h).
 *
 *   text_state st;  text_state_init(&st, &m.config.text, 256, &err);
 *   kv_cache kv;    kv_cache_init(&kv, &m.config.text, 1024, &err);
 *   text_input in = {ids, {pos_t, pos_h, pos_w}, n, vision, n_vision, m.config.image_token_id};
 *   text_forward(&m, &st, &kv, 0, &in, 1, logits, &err);  // logits (1, V), last token
 * (session.h does the bookkeeping: positions, cache growth, history.)
 */
#ifndef ERGO_TEXT_H
#define ERGO_TEXT_H

#include <stdint.h>

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"

/* Queries per attention work item: with the rep query heads that share a kv head
 * they form one block of rows for the tiled kernel (kernels/attention.h), which
 * streams keys in tiles of ATTN_KTILE (no n x n score matrix is ever stored). */
#define TEXT_ATTN_QTILE 8
/* head_dim limit the state accepts (128 for every Qwen2.5-VL; tests size stack
 * buffers with it). */
#define TEXT_MAX_HEAD_DIM 256

/* L = layers, KV = kv heads, C = capacity (rows), Dh = head dim. */
typedef struct kv_cache {
    int n_layers;    /* 28 */
    int n_kv_heads;  /* 4 */
    int head_dim;    /* 128 */
    int capacity;    /* rows allocated per layer and head */
    float *k, *v;    /* (L, KV, C, Dh) each: keys after the rotary, values */
} kv_cache;

/* Allocates a cache for `capacity` rows (capacity >= 1). kv_cache_free releases it. */
ergo_status kv_cache_init(kv_cache *kv, const text_config *cfg, int capacity, ergo_error *err);
void kv_cache_free(kv_cache *kv);
/* Grows to at least `capacity` rows, keeping the first n_keep rows. */
ergo_status kv_cache_reserve(kv_cache *kv, int capacity, int n_keep, ergo_error *err);
/* Copies the first n_rows rows of src into dst (same shape, capacity >= n_rows). */
void kv_cache_copy_rows(kv_cache *dst, const kv_cache *src, int n_rows);
/* Row j of layer l, kv head g (Dh floats). */
static inline float *kv_cache_k(const kv_cache *kv, int l, int g, int j) {
    return kv->k + (((size_t)l * kv->n_kv_heads + g) * kv->capacity + j) * kv->head_dim;
}
static inline float *kv_cache_v(const kv_cache *kv, int l, int g, int j) {
    return kv->v + (((size_t)l * kv->n_kv_heads + g) * kv->capacity + j) * kv->head_dim;
}

/* T = max_tokens per chunk, D = hidden, H = heads, Dh = head dim, KV = kv heads,
 * F = ffn. */
typedef struct text_state {
    text_config cfg;      /* the config the buffers were sized for */
    int max_tokens;       /* T */
    float *x;             /* (T, D) residual stream */
    float *xn;            /* (T, D) normed input of a sub-layer; MLP output */
    float *q;             /* (T, H*Dh) q_proj, then rotated */
    float *k, *v;         /* (T, KV*Dh) k_proj (rotated) and v_proj of the new tokens */
    float *attn;          /* (T, H*Dh) attention output, heads concatenated; o_proj out */
    float *gate, *up;     /* (T, F) mlp.gate_proj, mlp.up_proj */
    float *cos, *sin;     /* (T, Dh/2) rotary tables of the chunk's positions */
    float *inv_freq;      /* (Dh/2) 1 / theta^(2j/Dh), float32 as torch computes it */
    int8_t *freq_axis;    /* (Dh/2) position axis (0 t, 1 h, 2 w) of frequency j */
    int n_threads;        /* OpenMP threads the attention scratch is sized for */
    size_t attn_floats;   /* scratch floats per thread (R = TEXT_ATTN_QTILE * H/KV rows) */
    float *attn_scratch;  /* (n_threads, attn_floats): q rows (R, Dh), out rows (R, Dh),
                             the kernel's tiles and sums */
    int32_t *attn_limit;  /* (n_threads, R) keys each row may see (causal) */
    double ms_layers;     /* time spent in the decoder layers (accumulated) */
    double ms_head;       /* time spent in the final norm + lm_head (accumulated) */
} text_state;

/* Allocates every buffer for chunks of up to max_tokens tokens. */
ergo_status text_state_init(text_state *st, const text_config *cfg, int max_tokens,
                            ergo_error *err);
void text_state_free(text_state *st);

/* The sectioned rotary tables (pure, for tests): for each of the Dh/2 frequencies
 * j, inv_freq[j] and the axis (t, h, w) that mrope_section gives it. */
void text_rope_init(float *inv_freq, int8_t *freq_axis, const text_config *cfg);

/* One piece of input: n tokens with their M-RoPE ids, and the vision rows (in
 * order) that replace the embeddings of the <|image_pad|> tokens among them. */
typedef struct text_input {
    const int32_t *ids;    /* (n) token ids */
    const int32_t *pos[3]; /* (n) each: temporal, height, width position ids */
    int n;
    const float *vision;   /* (n_vision, D) or NULL */
    int n_vision;          /* must equal the number of <|image_pad|> among ids */
    int32_t image_token_id;
} text_input;

/* Runs the n tokens through the decoder, their keys/values going to rows
 * n_past .. n_past+n-1 of kv (capacity must allow it; rows before n_past are the
 * context), and writes the logits of the last n_logits tokens (0 <= n_logits <= n)
 * to logits (n_logits, V). */
ergo_status text_forward(const model *m, text_state *st, kv_cache *kv, int n_past,
                         const text_input *in, int n_logits, float *logits, ergo_error *err);

#endif
