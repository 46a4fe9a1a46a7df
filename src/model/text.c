/*
 * text.c - the Qwen2.5-VL language model forward pass.
 *
 * Mirrors Qwen2_5_VLTextModel.forward and the lm_head of
 * Qwen2_5_VLForConditionalGeneration (transformers 4.56.2, modeling_qwen2_5_vl.py):
 * embeddings (image pads replaced by the vision rows, as masked_scatter), per layer
 * RMSNorm -> q/k/v (bias) -> sectioned rotary -> causal grouped-query attention
 * over the KV cache -> o_proj -> residual -> RMSNorm -> SwiGLU -> residual, then the
 * final RMSNorm and lm_head on the rows whose logits are wanted.
 *
 * Attention streams over the cached keys in tiles of ATTN_KTILE with an online
 * softmax (running max and sum; kernels/attention.h), reading the paged cache's
 * blocks in place (kernels/attend.h), so prefill never stores an n x n matrix; tiles
 * are counted from key 0 and each query row's arithmetic depends only on itself and
 * its causal limit, so the attention of a chunked prefill or of token-by-token
 * decode gives the same bits as one pass.
 *
 * A round = up to max_tokens rows taken from the sequences in order; the rows of
 * pieces that take the int8-activation path of quantised weights (decode steps) come
 * first, so every product is [int8 rows | panel rows].
 *
 * T = tokens in the chunk, D = hidden, H = heads, KV = kv heads, Dh = head dim,
 * F = ffn, V = vocab.
 */
#include "base/clock.h"
#include "text.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/attend.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "kernels/rope.h"

/* ---- small helpers ---- */

static void *alloc_floats(size_t n, ergo_error *err, ergo_status *s) {
    void *p = malloc(n * sizeof(float));
    if (!p && *s == ERGO_OK)
        *s = ergo_fail(err, ERGO_E_NOMEM, "out of memory allocating %zu floats", n);
    return p;
}

/* One round's piece of one sequence: rows [row0, row0 + n) of the round's buffers
 * are tokens [c0, c0 + n) of seqs[seq].in, at cache rows pos0 = n_past + c0 .. */
typedef struct text_segment {
    int seq, c0, n, row0, pos0;
    int first_logit; /* first row of the piece (in the piece) whose logits are wanted */
} text_segment;

/* ---- state ---- */

void text_state_free(text_state *st) {
    if (!st) return;
    free(st->x);
    free(st->xn);
    free(st->q);
    free(st->k);
    free(st->v);
    free(st->attn);
    free(st->gate);
    free(st->up);
    free(st->cos);
    free(st->sin);
    free(st->inv_freq);
    free(st->freq_axis);
    free(st->attn_scratch);
    free(st->attn_limit);
    for (int a = 0; a < 3; a++) free(st->pos[a]);
    free(st->logits);
    free(st->attn_tiles);
    free(st->blocks);
    free(st->segs);
    free(st->att);
    memset(st, 0, sizeof *st);
}

void text_rope_init(float *inv_freq, int8_t *freq_axis, const text_config *cfg) {
    const int half = cfg->head_dim / 2;
    /* _compute_default_rope_parameters: 1.0 / (base ** (arange(0, dim, 2).float() / dim)),
     * every step in float32 */
    for (int j = 0; j < half; j++) {
        float e = (float)(2 * j) / (float)cfg->head_dim;
        inv_freq[j] = 1.0f / powf((float)cfg->rope_theta, e);
    }
    /* apply_multimodal_rotary_pos_emb: the (doubled) frequency axis is split into
     * mrope_section * 2 chunks, chunk i taking axis i % 3; frequency j and j + half
     * land in the same section, so one axis per frequency is all there is. */
    int j = 0;
    for (int a = 0; a < 3; a++)
        for (int c = 0; c < cfg->mrope_section[a] && j < half; c++) freq_axis[j++] = (int8_t)a;
    for (; j < half; j++) freq_axis[j] = 2; /* unreachable: sections sum to half */
}

ergo_status text_state_init(text_state *st, const text_config *cfg, int max_tokens,
                            ergo_error *err) {
    memset(st, 0, sizeof *st);
    if (max_tokens < 1)
        return ergo_fail(err, ERGO_E_ARG, "text state: max_tokens %d < 1", max_tokens);
    if (cfg->head_dim > TEXT_MAX_HEAD_DIM || cfg->head_dim % 2 || cfg->n_kv_heads < 1 ||
        cfg->n_heads % cfg->n_kv_heads)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "text state: head_dim %d / heads %d / kv heads %d not supported",
                         cfg->head_dim, cfg->n_heads, cfg->n_kv_heads);
    st->cfg = *cfg;
    st->max_tokens = max_tokens;
    const size_t T = (size_t)max_tokens, D = (size_t)cfg->hidden;
    const size_t HD = (size_t)cfg->n_heads * cfg->head_dim;
    const size_t KVD = (size_t)cfg->n_kv_heads * cfg->head_dim;
    const size_t half = (size_t)cfg->head_dim / 2;
    ergo_status s = ERGO_OK;
    st->x = alloc_floats(T * D, err, &s);
    st->xn = alloc_floats(T * D, err, &s);
    st->q = alloc_floats(T * HD, err, &s);
    st->k = alloc_floats(T * KVD, err, &s);
    st->v = alloc_floats(T * KVD, err, &s);
    st->attn = alloc_floats(T * (HD > D ? HD : D), err, &s);
    st->gate = alloc_floats(T * (size_t)cfg->ffn, err, &s);
    st->up = alloc_floats(T * (size_t)cfg->ffn, err, &s);
    st->cos = alloc_floats(T * half, err, &s);
    st->sin = alloc_floats(T * half, err, &s);
    st->inv_freq = alloc_floats(half, err, &s);
    st->freq_axis = malloc(half);
    if (!st->freq_axis && s == ERGO_OK) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
#ifdef _OPENMP
    st->n_threads = omp_get_max_threads();
#else
    st->n_threads = 1;
#endif
    const int rows = TEXT_ATTN_QTILE * (cfg->n_heads / cfg->n_kv_heads);
    st->attn_floats = attend_causal_scratch_floats(cfg->n_heads, cfg->n_kv_heads,
                                                   cfg->head_dim, TEXT_ATTN_QTILE);
    st->attn_scratch = alloc_floats((size_t)st->n_threads * st->attn_floats, err, &s);
    st->attn_limit = malloc(sizeof(int32_t) * (size_t)st->n_threads * (size_t)rows);
    for (int a = 0; a < 3; a++) {
        st->pos[a] = malloc(sizeof(int32_t) * T);
        if (!st->pos[a] && s == ERGO_OK) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    }
    st->logits = alloc_floats(T * (size_t)cfg->vocab_size, err, &s);
    st->max_blocks = (cfg->max_position_embeddings + KV_BLOCK - 1) / KV_BLOCK;
    if (st->max_blocks < 1) st->max_blocks = 1;
    st->attn_tiles = malloc(sizeof(void *) * (size_t)st->n_threads * (size_t)st->max_blocks);
    st->blocks = malloc(sizeof(void *) * T * (size_t)st->max_blocks);
    st->segs = malloc(sizeof(struct text_segment) * T);
    st->att = malloc(sizeof(attend_causal_seq) * T);
    if ((!st->attn_limit || !st->attn_tiles || !st->blocks || !st->segs || !st->att) &&
        s == ERGO_OK)
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (s) {
        text_state_free(st);
        return s;
    }
    text_rope_init(st->inv_freq, st->freq_axis, cfg);
    return ERGO_OK;
}

/* ---- the pieces of a layer ---- */

/* Embeddings of tokens [c0, c0 + n) of a piece: embed_tokens rows, except that the k-th
 * <|image_pad|> of the whole input takes vision row k (masked_scatter). */
static ergo_status embed(float *x, const model *m, const text_input *in, int c0, int n,
                         int *vision_used, ergo_error *err) {
    const text_config *cfg = &m->config.text;
    const kweight *e = &m->weights.text.embed.k;
    const size_t D = (size_t)cfg->hidden;
    for (int i = 0; i < n; i++) {
        int32_t id = in->ids[c0 + i];
        if (id < 0 || id >= cfg->vocab_size)
            return ergo_fail(err, ERGO_E_ARG, "token id %d at position %d is outside the "
                                              "vocabulary (%d)", id, c0 + i, cfg->vocab_size);
        if (in->vision && id == in->image_token_id) {
            memcpy(x + i * D, in->vision + (size_t)(*vision_used) * D, D * sizeof(float));
            (*vision_used)++;
        } else {
            kweight_row_f32(x + i * D, e, id);
        }
    }
    return ERGO_OK;
}

/* ---- forward ---- */

kv_pool_config text_kv_config(const text_config *cfg, kv_dtype dt, size_t budget_bytes) {
    return (kv_pool_config){cfg->n_layers, cfg->n_kv_heads, cfg->head_dim, dt, budget_bytes};
}

/* A piece of fewer rows than this takes the int8-activation path of quantised
 * weights (see the file comment). */
int text_piece_int8(int n) { return n < MATMUL_BLOCKED_MIN_N; }

/* y (n, out) for the round's rows: [0, n8) int8 rows, [n8, n) panel rows. */
static void linear_rows(float *y, const float *x, const kweight *w, const kweight *b, int n,
                        int n8) {
    if (!w->q || n8 == 0 || n8 == n) {
        linear_forward_path(y, x, w, b, n, n8 == n ? LINEAR_INT8 : LINEAR_PANELS);
        return;
    }
    linear_forward_path(y, x, w, b, n8, LINEAR_INT8);
    linear_forward_path(y + (size_t)n8 * w->rows, x + (size_t)n8 * w->cols, w, b, n - n8,
                        LINEAR_PANELS);
}

/* The next round: segments from the sequences' remaining rows, int8 pieces first.
 * Returns the number of segments; *n_rows, *n8 the round's rows and int8 rows. */
static int plan_round(text_state *st, text_seq *seqs, int n_seqs, int *n_rows, int *n8) {
    int used = 0, n_segs = 0;
    *n8 = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n_seqs && used < st->max_tokens; i++) {
            text_seq *q = &seqs[i];
            const int int8_pass = pass == 0;
            if (!!q->int8_rows != int8_pass || q->done == q->in.n) continue;
            int n = q->in.n - q->done;
            if (n > st->max_tokens - used) n = st->max_tokens - used;
            st->segs[n_segs++] = (text_segment){i, q->done, n, used, q->kv->n_tokens + q->done,
                                                q->in.n - q->n_logits};
            used += n;
            if (pass == 0) *n8 = used;
        }
    *n_rows = used;
    return n_segs;
}

static ergo_status forward_round(const model *m, text_state *st, kv_pool *pool, text_seq *seqs,
                                 text_segment *segs, int n_segs, int n, int n8,
                                 ergo_error *err) {
    const text_config *cfg = &m->config.text;
    const text_weights *w = &m->weights.text;
    const int D = cfg->hidden, H = cfg->n_heads, KV = cfg->n_kv_heads, dh = cfg->head_dim;
    const int F = cfg->ffn, V = cfg->vocab_size;
    const size_t KVD = (size_t)KV * dh;
    const float eps = (float)cfg->rms_eps;
    double t0 = now_ms();

    /* inputs_embeds (n, D), image pads replaced by each sequence's vision rows; the
     * round's position ids, and each sequence's block bases for the attention */
    for (int s = 0; s < n_segs; s++) {
        text_segment *g = &segs[s];
        text_seq *q = &seqs[g->seq];
        ergo_status r = embed(st->x + (size_t)g->row0 * D, m, &q->in, g->c0, g->n,
                              &q->vision_done, err);
        if (r) return r;
        for (int a = 0; a < 3; a++)
            memcpy(st->pos[a] + g->row0, q->in.pos[a] + g->c0, sizeof(int32_t) * (size_t)g->n);
        const uint8_t **blk = st->blocks + (size_t)s * st->max_blocks;
        const int nb = (g->pos0 + g->n + KV_BLOCK - 1) / KV_BLOCK;
        for (int b = 0; b < nb; b++) blk[b] = kv_tile(pool, q->kv->blocks[b], 0, 0);
        st->att[s] = (attend_causal_seq){st->attn + (size_t)g->row0 * H * dh,
                                     st->q + (size_t)g->row0 * H * dh, g->n, g->pos0, blk};
    }
    /* position_embeddings: cos, sin (n, Dh/2) from the 3-D position ids */
    const int32_t *pos[3] = {st->pos[0], st->pos[1], st->pos[2]};
    rope_mrope_tables(st->cos, st->sin, pos, st->freq_axis, st->inv_freq, n, dh / 2);
    const attend_causal_args aa = {
        .heads = H, .kv_heads = KV, .dh = dh, .qtile = TEXT_ATTN_QTILE,
        .kv_bf16 = pool->cfg.dtype == KV_BF16,
        .head_tile_bytes = pool->tile_elems * kv_dtype_size(pool->cfg.dtype),
        .scratch = st->attn_scratch, .scratch_floats = st->attn_floats,
        .limits = st->attn_limit, .tiles = st->attn_tiles, .max_tiles = st->max_blocks,
        .n_threads = st->n_threads};

    for (int l = 0; l < cfg->n_layers; l++) {
        const text_layer_weights *L = &w->layers[l];
        /* input_layernorm */
        rmsnorm(st->xn, st->x, &L->input_norm.k, n, D, eps);
        /* q_proj, k_proj, v_proj (with biases): q (n, H*Dh), k and v (n, KV*Dh) */
        linear_rows(st->q, st->xn, &L->q_w.k, &L->q_b.k, n, n8);
        linear_rows(st->k, st->xn, &L->k_w.k, &L->k_b.k, n, n8);
        linear_rows(st->v, st->xn, &L->v_w.k, &L->v_b.k, n, n8);
        /* apply_multimodal_rotary_pos_emb on q and k */
        rope_apply(st->q, (size_t)H * dh, n, H, dh, st->cos, st->sin);
        rope_apply(st->k, KVD, n, KV, dh, st->cos, st->sin);
        /* past_key_values.update: each sequence's new keys/values to its next rows */
        for (int s = 0; s < n_segs; s++)
            kv_seq_store(pool, seqs[segs[s].seq].kv, l, segs[s].pos0, segs[s].n,
                         st->k + (size_t)segs[s].row0 * KVD, st->v + (size_t)segs[s].row0 * KVD);
        /* causal attention of each sequence over its cache: attn (n, H*Dh) */
        attend_causal(&aa, st->att, n_segs, l);
        /* o_proj (no bias) -> xn (n, D), then the residual */
        linear_rows(st->xn, st->attn, &L->o_w.k, NULL, n, n8);
        add_inplace(st->x, st->xn, (size_t)n * D);
        /* post_attention_layernorm */
        rmsnorm(st->xn, st->x, &L->post_norm.k, n, D, eps);
        /* mlp: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases */
        linear_rows(st->gate, st->xn, &L->gate_w.k, NULL, n, n8);
        linear_rows(st->up, st->xn, &L->up_w.k, NULL, n, n8);
        silu_mul(st->gate, st->up, (size_t)n * F);
        linear_rows(st->xn, st->gate, &L->down_w.k, NULL, n, n8);
        add_inplace(st->x, st->xn, (size_t)n * D);
    }
    double t1 = now_ms();
    st->ms_layers += t1 - t0;

    /* final norm and lm_head, only on the rows whose logits are wanted (gathered in
     * round order, so int8 rows stay first) */
    int rows = 0, rows8 = 0;
    for (int s = 0; s < n_segs; s++) {
        const text_segment *g = &segs[s];
        for (int i = 0; i < g->n; i++)
            if (g->c0 + i >= g->first_logit) {
                memcpy(st->attn + (size_t)rows * D, st->x + (size_t)(g->row0 + i) * D,
                       sizeof(float) * (size_t)D);
                rows++;
            }
        if (g->row0 + g->n <= n8) rows8 = rows;
    }
    if (rows) {
        rmsnorm(st->xn, st->attn, &w->norm.k, rows, D, eps);
        linear_rows(st->logits, st->xn, &w->lm_head.k, NULL, rows, rows8);
        int r = 0;
        for (int s = 0; s < n_segs; s++) {
            const text_segment *g = &segs[s];
            const text_seq *q = &seqs[g->seq];
            for (int i = 0; i < g->n; i++)
                if (g->c0 + i >= g->first_logit) {
                    memcpy(q->logits + (size_t)(g->c0 + i - g->first_logit) * V,
                           st->logits + (size_t)r * V, sizeof(float) * (size_t)V);
                    r++;
                }
        }
    }
    st->ms_head += now_ms() - t1;
    return ERGO_OK;
}

/* Refuses a sequence the forward cannot run, before anything is computed. */
static ergo_status check_seq(const model *m, const text_seq *q, int i, ergo_error *err) {
    const text_config *cfg = &m->config.text;
    const text_input *in = &q->in;
    if (!q->kv || in->n < 1 || q->n_logits < 0 || q->n_logits > in->n || !in->ids)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: sequence %d: %d tokens, %d logits", i,
                         in->n, q->n_logits);
    if (q->n_logits > 0 && !q->logits)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: sequence %d: no logits buffer", i);
    if ((int64_t)q->kv->n_tokens + in->n > (int64_t)cfg->max_position_embeddings)
        return ergo_fail(err, ERGO_E_LIMIT, "text_forward: %d + %d tokens exceed the model's "
                                            "%d positions", q->kv->n_tokens, in->n,
                         cfg->max_position_embeddings);
    /* masked_scatter needs exactly one vision row per image pad */
    if (in->vision || in->n_vision) {
        int pads = 0;
        for (int k = 0; k < in->n; k++) pads += in->ids[k] == in->image_token_id;
        if (!in->vision || pads != in->n_vision)
            return ergo_fail(err, ERGO_E_ARG,
                             "image features and image tokens do not match: tokens: %d, "
                             "features: %d", pads, in->n_vision);
    }
    return ERGO_OK;
}

ergo_status text_forward_batch(const model *m, text_state *st, kv_pool *pool, text_seq *seqs,
                               int n_seqs, ergo_error *err) {
    const text_config *cfg = &m->config.text;
    if (cfg->hidden != st->cfg.hidden || cfg->n_layers != st->cfg.n_layers ||
        cfg->ffn != st->cfg.ffn || cfg->n_heads != st->cfg.n_heads ||
        cfg->n_kv_heads != st->cfg.n_kv_heads || cfg->head_dim != st->cfg.head_dim ||
        cfg->vocab_size != st->cfg.vocab_size)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: the state was sized for another model");
    if (pool->cfg.n_layers != cfg->n_layers || pool->cfg.n_kv_heads != cfg->n_kv_heads ||
        pool->cfg.head_dim != cfg->head_dim)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: the KV pool has another shape");
    ergo_status r;
    for (int i = 0; i < n_seqs; i++) {
        if ((r = check_seq(m, &seqs[i], i, err))) return r;
        seqs[i].done = seqs[i].vision_done = 0;
    }
    /* every row the call writes, reserved up front: a full pool fails before any
     * sequence's cache is touched (rows past n_tokens are not committed) */
    for (int i = 0; i < n_seqs; i++)
        if ((r = kv_seq_reserve(pool, seqs[i].kv, seqs[i].kv->n_tokens + seqs[i].in.n, err)))
            return r;
    int64_t rows_total = 0, rows_done = 0;
    for (int i = 0; i < n_seqs; i++) rows_total += seqs[i].in.n;
    for (;;) {
        int n = 0, n8 = 0;
        const int n_segs = plan_round(st, seqs, n_seqs, &n, &n8);
        if (!n_segs) break;
        if ((r = forward_round(m, st, pool, seqs, st->segs, n_segs, n, n8, err))) return r;
        for (int s = 0; s < n_segs; s++) seqs[st->segs[s].seq].done += st->segs[s].n;
        rows_done += n;
        if (st->on_rows) st->on_rows(st->on_rows_ctx, rows_done, rows_total);
    }
    for (int i = 0; i < n_seqs; i++) kv_seq_commit(seqs[i].kv, seqs[i].kv->n_tokens + seqs[i].in.n);
    return ERGO_OK;
}

ergo_status text_forward(const model *m, text_state *st, kv_pool *pool, kv_seq *kv,
                         const text_input *in, int n_logits, float *logits, ergo_error *err) {
    text_seq q = {kv, *in, n_logits, logits, text_piece_int8(in->n), 0, 0};
    return text_forward_batch(m, st, pool, &q, 1, err);
}
