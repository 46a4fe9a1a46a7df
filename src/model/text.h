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
 * for up to max_tokens rows at a time (allocated once; more rows run in rounds of
 * max_tokens, which gives the same numbers: each output element of a product is one
 * dot product of its row, and attention walks keys in fixed tiles from position 0).
 * Keys and values live in a paged KV cache (kv_cache.h): a kv_seq per sequence, in
 * a kv_pool shared by all of them.
 *
 * Batch first: one call runs the new tokens of several sequences (text_seq), their
 * rows together through every linear / norm / activation (one pass over the weights
 * for all of them: decode of B sequences costs about one decode's weight reads), and
 * only the KV write and the attention per sequence. A sequence's results do not
 * depend on which others share the call: every product row and every attention row
 * is computed alone. With block-quantised weights a piece of fewer than
 * MATMUL_BLOCKED_MIN_N tokens (a decode step) takes the int8-activation path and a
 * longer one the f32 panel path (kernels/quant.h): a property of the piece, not of
 * the batch, so batched equals solo there too.
 *
 *   text_state st;  text_state_init(&st, &m.config.text, 256, &err);
 *   kv_pool pool;   kv_pool_init(&pool, &(kv_pool_config){L, KV, Dh, KV_F32, 0}, &err);
 *   kv_seq kv = {0};
 *   text_input in = {ids, {pos_t, pos_h, pos_w}, n, vision, n_vision, m.config.image_token_id};
 *   text_forward(&m, &st, &pool, &kv, &in, 1, logits, &err);  // logits (1, V), last token
 * (session.h does the bookkeeping: positions, history, images.)
 */
#ifndef ERGO_TEXT_H
#define ERGO_TEXT_H

#include <stdint.h>

#include "base/status.h"
#include "kernels/attend.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/weights.h"

/* Queries per attention work item: with the rep query heads that share a kv head
 * they form one block of rows for the tiled kernel (kernels/attention.h), which
 * streams keys in tiles of ATTN_KTILE (no n x n score matrix is ever stored). */
#define TEXT_ATTN_QTILE 8
/* head_dim limit the state accepts (128 for every Qwen2.5-VL; tests size stack
 * buffers with it). */
#define TEXT_MAX_HEAD_DIM 256

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
    float *cos, *sin;     /* (T, Dh/2) rotary tables of the round's positions */
    int32_t *pos[3];      /* (T) each: the round's t, h, w position ids */
    float *inv_freq;      /* (Dh/2) 1 / theta^(2j/Dh), float32 as torch computes it */
    int8_t *freq_axis;    /* (Dh/2) position axis (0 t, 1 h, 2 w) of frequency j */
    float *logits;        /* (T, V) lm_head rows of a round, before they go to each sequence */
    int n_threads;        /* OpenMP threads the attention scratch is sized for */
    size_t attn_floats;   /* scratch floats per thread (R = TEXT_ATTN_QTILE * H/KV rows) */
    float *attn_scratch;  /* (n_threads, attn_floats): q rows (R, Dh), out rows (R, Dh),
                             the kernel's tiles and sums */
    int32_t *attn_limit;  /* (n_threads, R) keys each row may see (causal) */
    int max_blocks;       /* KV blocks a sequence may have: max_position_embeddings / 64 */
    const void **attn_tiles;    /* (n_threads, max_blocks) tile pointers of one item */
    const uint8_t **blocks;     /* (T, max_blocks) block bases of the round's sequences */
    struct text_segment *segs;  /* (T) the round's pieces of sequences */
    attend_causal_seq *att;     /* (T) their queries and caches for the attention */
    /* Progress of a long forward (a prefill): called after each round with the rows
     * done and the call's total; NULL (the default) for none. The caller sets it. */
    void (*on_rows)(void *ctx, int64_t done, int64_t total);
    void *on_rows_ctx;
    double ms_layers;     /* time spent in the decoder layers (accumulated) */
    double ms_head;       /* time spent in the final norm + lm_head (accumulated) */
} text_state;

/* Allocates every buffer for rounds of up to max_tokens rows. */
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

/* One sequence's part of a batched forward. */
typedef struct text_seq {
    kv_seq *kv;            /* its cache: rows [0, kv->n_tokens) are the context */
    text_input in;         /* the new tokens; their keys/values go to the next rows */
    int n_logits;          /* logits wanted for the last n_logits tokens (0 <= . <= in.n) */
    float *logits;         /* (n_logits, V) */
    int int8_rows;         /* 1: quantised weights take the int8-activation path for these
                              rows (the piece they come from has < MATMUL_BLOCKED_MIN_N
                              tokens: text_piece_int8); a property of the whole piece, so
                              a piece run in chunks gives the same bits */
    /* the forward's own progress (zero them; rounds resume from here) */
    int done, vision_done;
} text_seq;

/* Runs the new tokens of n_seqs sequences through the decoder: keys/values appended
 * to each sequence's cache (reserved, stored, committed: kv->n_tokens grows by
 * in.n), logits where asked. The sequences must be distinct. On failure (bad input,
 * the pool's budget exhausted) no sequence's committed rows change. */
ergo_status text_forward_batch(const model *m, text_state *st, kv_pool *pool, text_seq *seqs,
                               int n_seqs, ergo_error *err);

/* Whether a piece of n tokens takes the int8 path (n < MATMUL_BLOCKED_MIN_N). */
int text_piece_int8(int n);

/* One sequence: text_forward_batch with n_seqs = 1 (int8_rows from in->n). */
ergo_status text_forward(const model *m, text_state *st, kv_pool *pool, kv_seq *kv,
                         const text_input *in, int n_logits, float *logits, ergo_error *err);

/* The pool configuration a model's cache needs (dtype and budget as given). */
kv_pool_config text_kv_config(const text_config *cfg, kv_dtype dt, size_t budget_bytes);

#endif
