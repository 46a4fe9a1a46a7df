/*
 * text_train.c - the language model's training forward and backward (text_train.h).
 *
 * The forward is model/text.c's arithmetic on one whole sequence with contiguous keys
 * (attn_train.h instead of the paged cache), so its logits agree with inference up to
 * the attention's summation order. Every layer keeps its activations (layer_acts);
 * the backward walks the layers in reverse with one running gradient of the residual
 * stream (dx), to which each sub-layer's input gradient is added (the fan-out of
 * x + f(x)).
 *
 * T = max tokens, n = this sequence's tokens, D = hidden, H = heads, KV = kv heads,
 * Dh = head dim, HD = H*Dh, KVD = KV*Dh, F = ffn, r = LoRA rank.
 */
#include "text_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attn_train.h"
#include "kernels/backward.h"
#include "kernels/kernels.h"
#include "kernels/rope.h"
#include "model/text.h"
#include "train/grads.h"
#include "train/loss.h"

typedef struct layer_acts {
    float *x_in;                 /* (T, D) the layer's input (residual stream) */
    float *xn1;                  /* (T, D) input_layernorm */
    float *q, *k, *v;            /* (T, HD), (T, KVD), (T, KVD): q, k after the rotary */
    float *o;                    /* (T, HD) attention output */
    float *lse;                  /* (H, T) its log-sum-exp per query row */
    float *x_mid;                /* (T, D) after the attention's residual */
    float *xn2;                  /* (T, D) post_attention_layernorm */
    float *gate, *up;            /* (T, F) before the activation */
    float *h;                    /* (T, F) silu(gate) * up, down_proj's input */
    float *lu[LORA_N_TARGETS];   /* (T, r) A x of each adapted linear (NULL without LoRA) */
} layer_acts;

struct text_train_state {
    text_config cfg;
    int max_tokens, rank;
    layer_acts *layers;          /* (n_layers); with recompute only x_in is kept per layer */
    layer_acts work;             /* recompute: one layer's activations, rebuilt in the backward */
    int recompute;
    float *x_out;                /* (T, D) the last layer's output */
    float *cos, *sin;            /* (T, Dh/2) rotary tables of the sequence */
    float *inv_freq;             /* (Dh/2) */
    int8_t *freq_axis;           /* (Dh/2) */
    int32_t *emb_ids;            /* (T) ids, image pads as -1 (their gradient goes to vision) */
    int32_t *sel, *sel_t;        /* (T) rows with a target, and the targets */
    float *x_sel, *h_sel;        /* (T, D) those rows before / after the final norm */
    float *lse_head;             /* (T) head log-sum-exp of those rows */
    float *head_scratch;         /* head_scratch_floats(V) */
    /* backward / forward scratch */
    float *dx, *dxn, *dtmp;      /* (T, D) */
    float *dbig;                 /* (T, max(F, HD)) dL/d(down_proj input), dL/d(attn out) */
    float *dgate, *dup;          /* (T, F) */
    float *dq, *dk, *dv;         /* (T, HD), (T, KVD), (T, KVD) */
    float *lora_dt;              /* (T, max(F, HD, D)) scale * dy of an adapted linear */
    float *lora_du;              /* (T, r) */
    /* the last forward */
    int n, n_sel, n_vision;
    float tau;
};

/* ---- state ---- */

static float *falloc(size_t n, int *ok) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) *ok = 0;
    return p;
}

static void acts_free(layer_acts *a) {
    float *bufs[] = {a->x_in, a->xn1, a->q,  a->k,    a->v,  a->o,
                     a->lse,  a->x_mid, a->xn2, a->gate, a->up, a->h};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    for (int t = 0; t < LORA_N_TARGETS; t++) free(a->lu[t]);
}

/* Every buffer of one layer's activations but x_in. */
static void acts_alloc(layer_acts *a, const text_config *cfg, size_t T, int lora_rank, int *ok) {
    const size_t D = (size_t)cfg->hidden, F = (size_t)cfg->ffn;
    const size_t HD = (size_t)cfg->n_heads * cfg->head_dim;
    const size_t KVD = (size_t)cfg->n_kv_heads * cfg->head_dim;
    a->xn1 = falloc(T * D, ok);
    a->q = falloc(T * HD, ok);
    a->k = falloc(T * KVD, ok);
    a->v = falloc(T * KVD, ok);
    a->o = falloc(T * HD, ok);
    a->lse = falloc((size_t)cfg->n_heads * T, ok);
    a->x_mid = falloc(T * D, ok);
    a->xn2 = falloc(T * D, ok);
    a->gate = falloc(T * F, ok);
    a->up = falloc(T * F, ok);
    a->h = falloc(T * F, ok);
    for (int t = 0; lora_rank && t < LORA_N_TARGETS; t++) a->lu[t] = falloc(T * (size_t)lora_rank, ok);
}

void text_train_state_free(text_train_state *st) {
    if (!st) return;
    if (st->layers)
        for (int l = 0; l < st->cfg.n_layers; l++) acts_free(&st->layers[l]);
    acts_free(&st->work);
    free(st->layers);
    float *bufs[] = {st->x_out, st->cos,     st->sin,      st->inv_freq, st->x_sel,
                     st->h_sel, st->lse_head, st->head_scratch, st->dx,  st->dxn,
                     st->dtmp,  st->dbig,    st->dgate,    st->dup,      st->dq,
                     st->dk,    st->dv,      st->lora_dt,  st->lora_du};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(st->freq_axis);
    free(st->emb_ids);
    free(st->sel);
    free(st->sel_t);
    free(st);
}

static size_t max3(size_t a, size_t b, size_t c) {
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

ergo_status text_train_state_new(text_train_state **out, const text_config *cfg,
                                 int max_tokens, int lora_rank, int recompute, ergo_error *err) {
    *out = NULL;
    if (max_tokens < 1 || lora_rank < 0)
        return ergo_fail(err, ERGO_E_ARG, "text training state: %d tokens, LoRA rank %d",
                         max_tokens, lora_rank);
    if (cfg->head_dim % 2 || cfg->n_kv_heads < 1 || cfg->n_heads % cfg->n_kv_heads)
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "text training state: head_dim %d, heads %d, "
                         "kv heads %d not supported", cfg->head_dim, cfg->n_heads, cfg->n_kv_heads);
    text_train_state *st = calloc(1, sizeof *st);
    if (!st) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the training state");
    st->cfg = *cfg;
    st->max_tokens = max_tokens;
    st->rank = lora_rank;
    const size_t T = (size_t)max_tokens, D = (size_t)cfg->hidden, F = (size_t)cfg->ffn;
    const size_t HD = (size_t)cfg->n_heads * cfg->head_dim;
    const size_t KVD = (size_t)cfg->n_kv_heads * cfg->head_dim, half = (size_t)cfg->head_dim / 2;
    int ok = 1;
    st->layers = calloc((size_t)cfg->n_layers, sizeof *st->layers);
    if (!st->layers) ok = 0;
    st->recompute = recompute;
    for (int l = 0; ok && l < cfg->n_layers; l++) {
        st->layers[l].x_in = falloc(T * D, &ok);
        if (!recompute) acts_alloc(&st->layers[l], cfg, T, lora_rank, &ok);
    }
    if (recompute) acts_alloc(&st->work, cfg, T, lora_rank, &ok);
    st->x_out = falloc(T * D, &ok);
    st->cos = falloc(T * half, &ok);
    st->sin = falloc(T * half, &ok);
    st->inv_freq = falloc(half, &ok);
    st->freq_axis = malloc(half);
    st->emb_ids = malloc(T * sizeof(int32_t));
    st->sel = malloc(T * sizeof(int32_t));
    st->sel_t = malloc(T * sizeof(int32_t));
    if (!st->freq_axis || !st->emb_ids || !st->sel || !st->sel_t) ok = 0;
    st->x_sel = falloc(T * D, &ok);
    st->h_sel = falloc(T * D, &ok);
    st->lse_head = falloc(T, &ok);
    st->head_scratch = falloc(head_scratch_floats(cfg->vocab_size), &ok);
    st->dx = falloc(T * D, &ok);
    st->dxn = falloc(T * D, &ok);
    st->dtmp = falloc(T * D, &ok);
    st->dbig = falloc(T * (F > HD ? F : HD), &ok);
    st->dgate = falloc(T * F, &ok);
    st->dup = falloc(T * F, &ok);
    st->dq = falloc(T * HD, &ok);
    st->dk = falloc(T * KVD, &ok);
    st->dv = falloc(T * KVD, &ok);
    st->lora_dt = falloc(T * max3(F, HD, D), &ok);
    st->lora_du = falloc(T * (size_t)(lora_rank ? lora_rank : 1), &ok);
    if (!ok) {
        text_train_state_free(st);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the training state (%d tokens)",
                         max_tokens);
    }
    text_rope_init(st->inv_freq, st->freq_axis, cfg);
    *out = st;
    return ERGO_OK;
}

/* ---- linears with an optional adapter ---- */

static kweight f32_weight(const float *data, int rows, int cols) {
    return (kweight){KDT_F32, data, rows, cols, NULL};
}

/* y (n, out) = x W^T (+ b) + scale * (x A^T) B^T, saving u = x A^T (n, r) for the
 * backward; PEFT adds the adapter's term (scaled) to the base output. */
static void linear_lora(text_train_state *st, float *y, const float *x, const weight *w,
                        const weight *b, const lora_linear *ad, float scale, float *u, int n) {
    linear_forward(y, x, &w->k, b ? &b->k : NULL, n);
    if (!ad) return;
    const kweight ka = f32_weight(ad->a, st->rank, ad->in);
    const kweight kb = f32_weight(ad->b, ad->out, st->rank);
    float *t = st->lora_dt;
    linear_forward(u, x, &ka, NULL, n);
    linear_forward(t, u, &kb, NULL, n);
    const size_t m = (size_t)n * ad->out;
    for (size_t i = 0; i < m; i++) y[i] += t[i] * scale;
}

/* The backward of linear_lora: dx (n, in) = (or +=, accumulate) dL/dx given dy
 * (n, out); the weight's and bias's gradients (NULL: frozen) and the adapter's. */
static void linear_lora_backward(text_train_state *st, float *dx, int accumulate,
                                 const float *dy, const float *x, const weight *w,
                                 const weight *gw, const weight *b, const weight *gb,
                                 const lora_linear *ad, float scale, const float *u, int n) {
    const int out = w->k.rows, in = w->k.cols;
    linear_backward_input(dx, dy, &w->k, n, accumulate);
    float *dW = gw ? train_grad(gw) : NULL;
    float *db = (b && gb) ? train_grad(gb) : NULL;
    if (dW) {
        linear_backward_weight(dW, db, dy, x, n, out, in);
    } else if (db) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < out; j++) db[j] += dy[(size_t)i * out + j];
    }
    if (!ad) return;
    const int r = st->rank;
    const kweight ka = f32_weight(ad->a, r, in);
    const kweight kb = f32_weight(ad->b, out, r);
    float *dt = st->lora_dt, *du = st->lora_du;
    const size_t m = (size_t)n * out;
    for (size_t i = 0; i < m; i++) dt[i] = dy[i] * scale;
    linear_backward_weight(ad->gb, NULL, dt, u, n, out, r); /* dB += dt^T u */
    linear_backward_input(du, dt, &kb, n, 0);               /* du = dt B */
    linear_backward_weight(ad->ga, NULL, du, x, n, r, in);  /* dA += du^T x */
    linear_backward_input(dx, du, &ka, n, 1);               /* dx += du A */
}

/* ---- forward ---- */

static ergo_status check_sample(const text_train_state *st, const model_weights *w,
                                const train_sample *s, ergo_error *err) {
    const text_config *c = &st->cfg;
    if (s->n < 1 || !s->ids || !s->targets || !s->pos[0] || !s->pos[1] || !s->pos[2])
        return ergo_fail(err, ERGO_E_ARG, "training sample: %d tokens or missing arrays", s->n);
    if (s->n > st->max_tokens)
        return ergo_fail(err, ERGO_E_LIMIT, "training sample of %d tokens is longer than the "
                         "training state's %d", s->n, st->max_tokens);
    if (s->n > c->max_position_embeddings)
        return ergo_fail(err, ERGO_E_LIMIT, "training sample of %d tokens exceeds the model's "
                         "%d positions", s->n, c->max_position_embeddings);
    if (w->text.embed.k.cols != c->hidden || w->text.embed.k.rows != c->vocab_size)
        return ergo_fail(err, ERGO_E_ARG, "training: the weights do not fit the state's model");
    int pads = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->ids[i] < 0 || s->ids[i] >= c->vocab_size)
            return ergo_fail(err, ERGO_E_ARG, "token id %d at position %d is outside the "
                             "vocabulary (%d)", s->ids[i], i, c->vocab_size);
        if (s->targets[i] < -1 || s->targets[i] >= c->vocab_size)
            return ergo_fail(err, ERGO_E_ARG, "target %d at position %d is outside the "
                             "vocabulary (%d)", s->targets[i], i, c->vocab_size);
        pads += s->ids[i] == s->image_token_id;
    }
    if (s->vision ? pads != s->n_vision : s->n_vision != 0)
        return ergo_fail(err, ERGO_E_ARG, "image features and image tokens do not match: "
                         "tokens: %d, features: %d", pads, s->n_vision);
    return ERGO_OK;
}

/* Decoder layer l of the last sample's n rows: a (its activations; a->x_in may be
 * another layer_acts' x_in: the layer's input is st->layers[l].x_in) -> out (n, D).
 * The same arithmetic whenever it runs, so a recomputed layer gives the same bits. */
static void layer_forward(text_train_state *st, const text_weights *tw, const lora_set *lora,
                          int l, layer_acts *a, float *out) {
    const text_config *c = &st->cfg;
    const int n = st->n, D = c->hidden, H = c->n_heads, KV = c->n_kv_heads, dh = c->head_dim;
    const size_t HD = (size_t)H * dh, KVD = (size_t)KV * dh, F = (size_t)c->ffn;
    const float eps = (float)c->rms_eps;
    const float scale = lora ? lora->scale : 0.0f;
    const attn_train_args aa = {n, H, KV, dh, 1, NULL, 0, 1.0f / sqrtf((float)dh)};
    const text_layer_weights *L = &tw->layers[l];
    const float *x_in = st->layers[l].x_in;
    rmsnorm(a->xn1, x_in, &L->input_norm.k, n, D, eps);
    linear_lora(st, a->q, a->xn1, &L->q_w, &L->q_b, lora_at(lora, l, LORA_Q), scale,
                a->lu[LORA_Q], n);
    linear_lora(st, a->k, a->xn1, &L->k_w, &L->k_b, lora_at(lora, l, LORA_K), scale,
                a->lu[LORA_K], n);
    linear_lora(st, a->v, a->xn1, &L->v_w, &L->v_b, lora_at(lora, l, LORA_V), scale,
                a->lu[LORA_V], n);
    rope_apply(a->q, HD, n, H, dh, st->cos, st->sin);
    rope_apply(a->k, KVD, n, KV, dh, st->cos, st->sin);
    attn_train_forward(&aa, a->o, a->lse, a->q, a->k, a->v);
    linear_lora(st, st->dtmp, a->o, &L->o_w, NULL, lora_at(lora, l, LORA_O), scale,
                a->lu[LORA_O], n);
    for (size_t i = 0; i < (size_t)n * D; i++) a->x_mid[i] = x_in[i] + st->dtmp[i];
    rmsnorm(a->xn2, a->x_mid, &L->post_norm.k, n, D, eps);
    linear_lora(st, a->gate, a->xn2, &L->gate_w, NULL, lora_at(lora, l, LORA_GATE), scale,
                a->lu[LORA_GATE], n);
    linear_lora(st, a->up, a->xn2, &L->up_w, NULL, lora_at(lora, l, LORA_UP), scale,
                a->lu[LORA_UP], n);
    memcpy(a->h, a->gate, sizeof(float) * (size_t)n * F);
    silu_mul(a->h, a->up, (size_t)n * F);
    linear_lora(st, st->dtmp, a->h, &L->down_w, NULL, lora_at(lora, l, LORA_DOWN), scale,
                a->lu[LORA_DOWN], n);
    for (size_t i = 0; i < (size_t)n * D; i++) out[i] = a->x_mid[i] + st->dtmp[i];
}

ergo_status text_train_forward(text_train_state *st, const model_weights *w,
                               const lora_set *lora, const train_sample *s, float tau,
                               float *logp, int *n_logp, ergo_error *err) {
    ergo_status r = check_sample(st, w, s, err);
    if (r) return r;
    if (!(tau > 0.0f)) return ergo_fail(err, ERGO_E_ARG, "temperature %g must be > 0", (double)tau);
    const text_config *c = &st->cfg;
    const text_weights *tw = &w->text;
    const int n = s->n, D = c->hidden, dh = c->head_dim;
    const float eps = (float)c->rms_eps;
    st->n = n;
    st->n_vision = s->n_vision;
    st->tau = tau;

    /* inputs_embeds: embed_tokens rows, image pads replaced by the vision rows in order */
    float *x = st->layers[0].x_in;
    int k = 0;
    for (int i = 0; i < n; i++) {
        const int pad = s->vision && s->ids[i] == s->image_token_id;
        st->emb_ids[i] = pad ? -1 : s->ids[i];
        if (pad)
            memcpy(x + (size_t)i * D, s->vision + (size_t)(k++) * D, sizeof(float) * (size_t)D);
        else
            kweight_row_f32(x + (size_t)i * D, &tw->embed.k, s->ids[i]);
    }
    rope_mrope_tables(st->cos, st->sin, s->pos, st->freq_axis, st->inv_freq, n, dh / 2);

    for (int l = 0; l < c->n_layers; l++)
        layer_forward(st, tw, lora, l, st->recompute ? &st->work : &st->layers[l],
                      l + 1 < c->n_layers ? st->layers[l + 1].x_in : st->x_out);

    /* the final norm and the head, on the rows that carry loss only */
    int m = 0;
    for (int i = 0; i < n; i++)
        if (s->targets[i] >= 0) {
            st->sel[m] = i;
            st->sel_t[m] = s->targets[i];
            memcpy(st->x_sel + (size_t)m * D, st->x_out + (size_t)i * D, sizeof(float) * (size_t)D);
            m++;
        }
    st->n_sel = m;
    *n_logp = m;
    if (m) {
        rmsnorm(st->h_sel, st->x_sel, &tw->norm.k, m, D, eps);
        head_logprob_forward(logp, st->lse_head, st->h_sel, &tw->lm_head.k, st->sel_t, m, tau,
                             st->head_scratch);
    }
    return ERGO_OK;
}

/* ---- backward ---- */

static void add_into(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void text_train_backward(text_train_state *st, const model_weights *w, model_weights *grads,
                         const lora_set *lora, const float *g, float *d_vision) {
    const text_config *c = &st->cfg;
    const text_weights *tw = &w->text;
    text_weights *gt = &grads->text;
    const int n = st->n, m = st->n_sel, D = c->hidden, H = c->n_heads, KV = c->n_kv_heads;
    const int dh = c->head_dim;
    const size_t HD = (size_t)H * dh, KVD = (size_t)KV * dh, F = (size_t)c->ffn;
    const size_t ND = (size_t)n * D;
    const float eps = (float)c->rms_eps;
    const float scale = lora ? lora->scale : 0.0f;

    /* the head and the final norm: rows with a target only, scattered into dx */
    memset(st->dx, 0, sizeof(float) * ND);
    if (m) {
        head_logprob_backward(st->dtmp, train_grad(&gt->lm_head), g, st->h_sel, &tw->lm_head.k,
                              st->sel_t, st->lse_head, m, st->tau, st->head_scratch);
        rmsnorm_backward(st->dxn, train_grad(&gt->norm), st->dtmp, st->x_sel, &tw->norm.k, m, D,
                         eps);
        for (int r = 0; r < m; r++)
            memcpy(st->dx + (size_t)st->sel[r] * D, st->dxn + (size_t)r * D,
                   sizeof(float) * (size_t)D);
    }
    const attn_train_args aa = {n, H, KV, dh, 1, NULL, 0, 1.0f / sqrtf((float)dh)};

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const text_layer_weights *L = &tw->layers[l];
        text_layer_weights *G = &gt->layers[l];
        layer_acts *a = &st->layers[l];
        if (st->recompute) { /* this layer's activations again, from its saved input */
            a = &st->work;
            layer_forward(st, tw, lora, l, a, st->dxn); /* the output is not needed */
        }
        /* out = x_mid + down(silu(gate(xn2)) * up(xn2)), xn2 = norm(x_mid); dx = dL/d(out) */
        linear_lora_backward(st, st->dbig, 0, st->dx, a->h, &L->down_w, &G->down_w, NULL, NULL,
                             lora_at(lora, l, LORA_DOWN), scale, a->lu[LORA_DOWN], n);
        silu_mul_backward(st->dgate, st->dup, st->dbig, a->gate, a->up, (size_t)n * F);
        linear_lora_backward(st, st->dxn, 0, st->dgate, a->xn2, &L->gate_w, &G->gate_w, NULL,
                             NULL, lora_at(lora, l, LORA_GATE), scale, a->lu[LORA_GATE], n);
        linear_lora_backward(st, st->dxn, 1, st->dup, a->xn2, &L->up_w, &G->up_w, NULL, NULL,
                             lora_at(lora, l, LORA_UP), scale, a->lu[LORA_UP], n);
        rmsnorm_backward(st->dtmp, train_grad(&G->post_norm), st->dxn, a->x_mid,
                         &L->post_norm.k, n, D, eps);
        add_into(st->dx, st->dtmp, ND); /* now dL/d(x_mid) */

        /* x_mid = x_in + o_proj(attn(rope(q), rope(k), v)), q/k/v of xn1 = norm(x_in) */
        linear_lora_backward(st, st->dbig, 0, st->dx, a->o, &L->o_w, &G->o_w, NULL, NULL,
                             lora_at(lora, l, LORA_O), scale, a->lu[LORA_O], n);
        attn_train_backward(&aa, st->dq, st->dk, st->dv, st->dbig, a->q, a->k, a->v, a->o,
                            a->lse);
        rope_apply_inverse(st->dq, HD, n, H, dh, st->cos, st->sin);
        rope_apply_inverse(st->dk, KVD, n, KV, dh, st->cos, st->sin);
        linear_lora_backward(st, st->dxn, 0, st->dq, a->xn1, &L->q_w, &G->q_w, &L->q_b, &G->q_b,
                             lora_at(lora, l, LORA_Q), scale, a->lu[LORA_Q], n);
        linear_lora_backward(st, st->dxn, 1, st->dk, a->xn1, &L->k_w, &G->k_w, &L->k_b, &G->k_b,
                             lora_at(lora, l, LORA_K), scale, a->lu[LORA_K], n);
        linear_lora_backward(st, st->dxn, 1, st->dv, a->xn1, &L->v_w, &G->v_w, &L->v_b, &G->v_b,
                             lora_at(lora, l, LORA_V), scale, a->lu[LORA_V], n);
        rmsnorm_backward(st->dtmp, train_grad(&G->input_norm), st->dxn, st->layers[l].x_in,
                         &L->input_norm.k, n, D, eps);
        add_into(st->dx, st->dtmp, ND); /* now dL/d(x_in) */
    }

    /* embeddings: text rows scatter-add into embed_tokens (the tied head's buffer too),
     * image-pad rows go back to the vision rows in order */
    float *dE = train_grad(&gt->embed);
    if (dE) embedding_backward(dE, st->dx, st->emb_ids, n, D);
    if (d_vision) {
        int k = 0;
        for (int i = 0; i < n && k < st->n_vision; i++)
            if (st->emb_ids[i] < 0)
                memcpy(d_vision + (size_t)(k++) * D, st->dx + (size_t)i * D,
                       sizeof(float) * (size_t)D);
    }
}
