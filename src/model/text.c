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
 * softmax (running max and sum; kernels/attention.h), so prefill never stores an
 * n x n matrix; tiles are counted from key 0 and each query row's arithmetic depends
 * only on itself and its causal limit, so the attention of a chunked prefill or of
 * token-by-token decode gives the same bits as one pass.
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

#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "model/linear.h"

/* ---- small helpers ---- */


static void *alloc_floats(size_t n, ergo_error *err, ergo_status *s) {
    void *p = malloc(n * sizeof(float));
    if (!p && *s == ERGO_OK)
        *s = ergo_fail(err, ERGO_E_NOMEM, "out of memory allocating %zu floats", n);
    return p;
}

/* ---- KV cache ---- */

ergo_status kv_cache_init(kv_cache *kv, const text_config *cfg, int capacity, ergo_error *err) {
    memset(kv, 0, sizeof *kv);
    if (capacity < 1) return ergo_fail(err, ERGO_E_ARG, "kv cache: capacity %d < 1", capacity);
    kv->n_layers = cfg->n_layers;
    kv->n_kv_heads = cfg->n_kv_heads;
    kv->head_dim = cfg->head_dim;
    kv->capacity = capacity;
    size_t n = (size_t)cfg->n_layers * cfg->n_kv_heads * (size_t)capacity * cfg->head_dim;
    ergo_status s = ERGO_OK;
    kv->k = alloc_floats(n, err, &s);
    kv->v = alloc_floats(n, err, &s);
    if (s) kv_cache_free(kv);
    return s;
}

void kv_cache_free(kv_cache *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

void kv_cache_copy_rows(kv_cache *dst, const kv_cache *src, int n_rows) {
    size_t row = (size_t)src->head_dim * sizeof(float);
    for (int l = 0; l < src->n_layers; l++)
        for (int g = 0; g < src->n_kv_heads; g++) {
            if (n_rows == 0) continue;
            memcpy(kv_cache_k(dst, l, g, 0), kv_cache_k(src, l, g, 0), row * (size_t)n_rows);
            memcpy(kv_cache_v(dst, l, g, 0), kv_cache_v(src, l, g, 0), row * (size_t)n_rows);
        }
}

ergo_status kv_cache_reserve(kv_cache *kv, int capacity, int n_keep, ergo_error *err) {
    if (capacity <= kv->capacity) return ERGO_OK;
    kv_cache grown;
    text_config shape = {0};
    shape.n_layers = kv->n_layers;
    shape.n_kv_heads = kv->n_kv_heads;
    shape.head_dim = kv->head_dim;
    ergo_status s = kv_cache_init(&grown, &shape, capacity, err);
    if (s) return s;
    kv_cache_copy_rows(&grown, kv, n_keep);
    kv_cache_free(kv);
    *kv = grown;
    return ERGO_OK;
}

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
    st->attn_floats = 2 * (size_t)rows * cfg->head_dim + attn_scratch_floats(rows, cfg->head_dim);
    st->attn_scratch = alloc_floats((size_t)st->n_threads * st->attn_floats, err, &s);
    st->attn_limit = malloc(sizeof(int32_t) * (size_t)st->n_threads * (size_t)rows);
    if (!st->attn_limit && s == ERGO_OK) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (s) {
        text_state_free(st);
        return s;
    }
    text_rope_init(st->inv_freq, st->freq_axis, cfg);
    return ERGO_OK;
}

/* ---- the pieces of a layer ---- */

/* cos/sin (T, Dh/2) of the chunk's positions: angle = float32(pos) * inv_freq, one
 * float32 product as the reference's inv_freq @ position_ids (inner dimension 1). */
static void rope_tables(text_state *st, const text_input *in, int c0, int n) {
    const int half = st->cfg.head_dim / 2;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            float angle = (float)in->pos[st->freq_axis[j]][c0 + i] * st->inv_freq[j];
            st->cos[(size_t)i * half + j] = cosf(angle);
            st->sin[(size_t)i * half + j] = sinf(angle);
        }
}

/* x (n, heads*Dh) rotated in place: x*cos + rotate_half(x)*sin with
 * rotate_half(x) = cat(-x2, x1) per head (the reference's un-fused products). */
static void rope_apply(float *x, const text_state *st, int n, int heads) {
    const int dh = st->cfg.head_dim, half = dh / 2;
    for (int i = 0; i < n; i++) {
        const float *c = st->cos + (size_t)i * half, *s = st->sin + (size_t)i * half;
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)i * heads + h) * dh;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                float lo = a * c[j] + (-b) * s[j];
                float hi = b * c[j] + a * s[j];
                v[j] = lo;
                v[j + half] = hi;
            }
        }
    }
}

/* Causal grouped-query attention of n new queries (absolute positions n_past + i)
 * over rows 0 .. n_past + i of layer l's cache: out (n, H*Dh). Query heads h share
 * kv head h / rep (repeat_kv), so one work item is (kv head g, up to TEXT_ATTN_QTILE
 * queries): its rep heads x queries go to the tiled kernel as one block of rows, and
 * each K/V tile is read once for all of them. Decode is the same with one query. */
static void attention(text_state *st, float *out, const float *q, const kv_cache *kv, int l,
                      int n_past, int n) {
    const text_config *cfg = &st->cfg;
    const int H = cfg->n_heads, KV = cfg->n_kv_heads, dh = cfg->head_dim, rep = H / KV;
    const int QT = TEXT_ATTN_QTILE;
    const float scale = 1.0f / sqrtf((float)dh); /* head_dim ** -0.5 */
    const int n_qb = (n + QT - 1) / QT, items = n_qb * KV;
    /* items of one kv head are consecutive: its keys and values stay in cache */
#pragma omp parallel for schedule(dynamic, 1) num_threads(st->n_threads) if (items > 1)
    for (int it = 0; it < items; it++) {
#ifdef _OPENMP
        const int th = omp_get_thread_num();
#else
        const int th = 0;
#endif
        const int g = it / n_qb, i0 = (it % n_qb) * QT;
        const int nqi = n - i0 < QT ? n - i0 : QT, rows = nqi * rep;
        float *qg = st->attn_scratch + (size_t)th * st->attn_floats; /* (rows, Dh) */
        float *og = qg + (size_t)QT * rep * dh;                        /* (rows, Dh) */
        float *scr = og + (size_t)QT * rep * dh;
        int32_t *lim = st->attn_limit + (size_t)th * QT * rep;
        /* row r = (query i, head g*rep + hh), r = i*rep + hh: the rep heads of query i
         * are contiguous in q */
        for (int i = 0; i < nqi; i++) {
            memcpy(qg + (size_t)i * rep * dh, q + ((size_t)(i0 + i) * H + (size_t)g * rep) * dh,
                   sizeof(float) * (size_t)rep * dh);
            for (int hh = 0; hh < rep; hh++) lim[i * rep + hh] = n_past + i0 + i + 1;
        }
        const attn_keys keys = {.k = kv_cache_k(kv, l, g, 0), .ldk = (size_t)dh,
                                .v = kv_cache_v(kv, l, g, 0), .ldv = (size_t)dh,
                                .nk = n_past + i0 + nqi};
        akern.block(og, (size_t)dh, qg, (size_t)dh, rows, lim, &keys, dh, scale, scr);
        for (int i = 0; i < nqi; i++)
            memcpy(out + ((size_t)(i0 + i) * H + (size_t)g * rep) * dh, og + (size_t)i * rep * dh,
                   sizeof(float) * (size_t)rep * dh);
    }
}

/* Embeddings of the chunk's tokens: embed_tokens rows, except that the k-th
 * <|image_pad|> of the whole input takes vision row k (masked_scatter). */
static ergo_status embed(float *x, const model *m, const text_input *in, int c0, int n,
                         int *vision_used, ergo_error *err) {
    const text_config *cfg = &m->config.text;
    const tensor *e = &m->weights.text.embed;
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
            load_row_f32(x + i * D, e->data, tensor_kdtype(e), (size_t)id * D, D);
        }
    }
    return ERGO_OK;
}

/* ---- forward ---- */

/* One chunk of at most max_tokens tokens, c0 .. c0+n-1 of the input, at cache rows
 * n_past .. n_past+n-1; logits for the chunk rows >= first_logit (into logits). */
static ergo_status forward_chunk(const model *m, text_state *st, kv_cache *kv, int n_past,
                                 const text_input *in, int c0, int n, int first_logit,
                                 float *logits, int *vision_used, ergo_error *err) {
    const text_config *cfg = &m->config.text;
    const text_weights *w = &m->weights.text;
    const int D = cfg->hidden, H = cfg->n_heads, KV = cfg->n_kv_heads, dh = cfg->head_dim;
    const int F = cfg->ffn, V = cfg->vocab_size;
    const float eps = (float)cfg->rms_eps;
    double t0 = now_ms();

    /* inputs_embeds (n, D), image pads replaced by the vision rows */
    ergo_status s = embed(st->x, m, in, c0, n, vision_used, err);
    if (s) return s;
    /* position_embeddings: cos, sin (n, Dh/2) from the 3-D position ids */
    rope_tables(st, in, c0, n);

    for (int l = 0; l < cfg->n_layers; l++) {
        const text_layer_weights *L = &w->layers[l];
        /* input_layernorm */
        rmsnorm(st->xn, st->x, L->input_norm.data, tensor_kdtype(&L->input_norm), n, D, eps);
        /* q_proj, k_proj, v_proj (with biases): q (n, H*Dh), k and v (n, KV*Dh) */
        linear_forward(st->q, st->xn, &L->q_w, &L->q_b, n, D, H * dh);
        linear_forward(st->k, st->xn, &L->k_w, &L->k_b, n, D, KV * dh);
        linear_forward(st->v, st->xn, &L->v_w, &L->v_b, n, D, KV * dh);
        /* apply_multimodal_rotary_pos_emb on q and k */
        rope_apply(st->q, st, n, H);
        rope_apply(st->k, st, n, KV);
        /* past_key_values.update: the new keys/values go to cache rows n_past.. */
        for (int i = 0; i < n; i++)
            for (int g = 0; g < KV; g++) {
                memcpy(kv_cache_k(kv, l, g, n_past + i), st->k + ((size_t)i * KV + g) * dh,
                       (size_t)dh * sizeof(float));
                memcpy(kv_cache_v(kv, l, g, n_past + i), st->v + ((size_t)i * KV + g) * dh,
                       (size_t)dh * sizeof(float));
            }
        /* causal attention over the cache: attn (n, H*Dh) */
        attention(st, st->attn, st->q, kv, l, n_past, n);
        /* o_proj (no bias) -> xn (n, D), then the residual */
        linear_forward(st->xn, st->attn, &L->o_w, NULL, n, H * dh, D);
        add_inplace(st->x, st->xn, (size_t)n * D);
        /* post_attention_layernorm */
        rmsnorm(st->xn, st->x, L->post_norm.data, tensor_kdtype(&L->post_norm), n, D, eps);
        /* mlp: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases */
        linear_forward(st->gate, st->xn, &L->gate_w, NULL, n, D, F);
        linear_forward(st->up, st->xn, &L->up_w, NULL, n, D, F);
        silu_mul(st->gate, st->up, (size_t)n * F);
        linear_forward(st->xn, st->gate, &L->down_w, NULL, n, F, D);
        add_inplace(st->x, st->xn, (size_t)n * D);
    }
    double t1 = now_ms();
    st->ms_layers += t1 - t0;

    /* final norm and lm_head, only on the rows whose logits are wanted */
    if (first_logit < n) {
        const int rows = n - first_logit;
        const float *xr = st->x + (size_t)first_logit * D;
        rmsnorm(st->xn, xr, w->norm.data, tensor_kdtype(&w->norm), rows, D, eps);
        linear_forward(logits, st->xn, &w->lm_head, NULL, rows, D, V);
    }
    st->ms_head += now_ms() - t1;
    return ERGO_OK;
}

ergo_status text_forward(const model *m, text_state *st, kv_cache *kv, int n_past,
                         const text_input *in, int n_logits, float *logits, ergo_error *err) {
    const text_config *cfg = &m->config.text;
    if (cfg->hidden != st->cfg.hidden || cfg->n_layers != st->cfg.n_layers ||
        cfg->ffn != st->cfg.ffn || cfg->n_heads != st->cfg.n_heads ||
        cfg->n_kv_heads != st->cfg.n_kv_heads || cfg->head_dim != st->cfg.head_dim)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: the state was sized for another model");
    if (kv->n_layers != cfg->n_layers || kv->n_kv_heads != cfg->n_kv_heads ||
        kv->head_dim != cfg->head_dim)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: the KV cache has another shape");
    if (in->n < 1 || n_past < 0 || n_logits < 0 || n_logits > in->n)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: %d tokens, %d logits, %d past", in->n,
                         n_logits, n_past);
    if (n_past + in->n > kv->capacity)
        return ergo_fail(err, ERGO_E_LIMIT, "text_forward: %d + %d tokens exceed the KV cache's "
                                            "%d rows", n_past, in->n, kv->capacity);
    if (n_logits > 0 && !logits)
        return ergo_fail(err, ERGO_E_ARG, "text_forward: no logits buffer");
    /* masked_scatter needs exactly one vision row per image pad */
    if (in->vision || in->n_vision) {
        int pads = 0;
        for (int i = 0; i < in->n; i++) pads += in->ids[i] == in->image_token_id;
        if (!in->vision || pads != in->n_vision)
            return ergo_fail(err, ERGO_E_ARG,
                             "image features and image tokens do not match: tokens: %d, "
                             "features: %d", pads, in->n_vision);
    }
    const int first = in->n - n_logits; /* first input row whose logits are wanted */
    int vision_used = 0;
    for (int c0 = 0; c0 < in->n; c0 += st->max_tokens) {
        int n = in->n - c0 < st->max_tokens ? in->n - c0 : st->max_tokens;
        int first_in_chunk = first > c0 ? first - c0 : 0;
        float *out = logits ? logits + (size_t)(c0 + first_in_chunk - first) *
                                           (size_t)cfg->vocab_size
                            : NULL;
        ergo_status s = forward_chunk(m, st, kv, n_past + c0, in, c0, n,
                                      first_in_chunk < n ? first_in_chunk : n, out,
                                      &vision_used, err);
        if (s) return s;
    }
    return ERGO_OK;
}
