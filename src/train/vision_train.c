/*
 * vision_train.c - the vision encoder's training forward and backward (vision_train.h).
 *
 * The forward is vision_encode's (model/vision.c) op for op, with the attention done
 * by attn_train_forward (spans = the windows, or the frames in a full-attention
 * block) so that each row's log-sum-exp is kept for the backward; it keeps:
 *   pix      (N, K)                 the pixel rows (patch embed's dW needs them)
 *   xs[l]    (N, D), l <= depth     the residual stream entering block l (norm1's
 *                                   input); xs[depth] enters the merger (ln_q's input)
 *   q, k, v  (N, D) per block       after the rotary (v as projected)
 *   o        (N, D) per block       attention output, heads concatenated
 *   lse      (H, N) per block       its log-sum-exp per query row and head
 *   xm       (N, D) per block       the stream after the attention residual (norm2's input)
 *   gate, up (N, F) per block       the MLP's two projections (SwiGLU's inputs)
 *   fc1      (N/U, U*D)             the merger's first Linear output (the GELU input)
 * all in window order. What is cheap is recomputed in the backward instead of kept:
 * the normed inputs of qkv / gate / up / fc1 (one rmsnorm each) and the SwiGLU and
 * GELU outputs (the inputs of down and fc2).
 *
 * Memory per image, in floats (N = patches, U = 4, K = C*Tp*P*P = 1176):
 *   kept     N (K + (depth + 1) D + depth (5 D + 2 F + H) + D)
 *   scratch  N (11 D + 3 F + 3 Dh/2) + 2 (N/U) Do  (+ what attn_train allocates per call)
 * for max_patches = N, allocated once by vision_train_state_new (none in the passes).
 * E.g. tiny-A of training.md 5.7 (D 128, F 256, H 2, depth 4): 26 KB per patch kept,
 * 6.7 MB for a 256-patch image; the 7B tower (D 1280, F 3420, H 16, depth 32): 1.9 MB
 * per patch, 9.6 GB for a 5120-patch image (a 7B run keeps the tower frozen).
 *
 * The backward walks the same graph in reverse: the inverse permutation of d_out
 * (output row j is window row raster_order[j]), the merger, the blocks from the
 * last (residual: the stream's gradient dx passes through, each sub-layer's input
 * gradient is added to it), the window permutation undone (dx of window unit i
 * goes to raster unit window_order[i]) and patch embed's weight gradient. It stops
 * as soon as nothing below is trainable (a frozen lower tower costs nothing).
 *
 * N = patches, U = merge^2 (4), D = hidden, H = heads, Dh = head dim, F = ffn,
 * Do = out_hidden, NU = N/U.
 */
#include "vision_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attn_train.h"
#include "kernels/backward.h"
#include "kernels/kernels.h"
#include "kernels/rope.h"
#include "model/positions.h"
#include "model/vision.h"

struct vision_train_state {
    vision_config cfg;
    int max_patches;
    int K;                        /* pixel row length C*Tp*P*P */
    /* the image of the last forward (0 patches: no forward yet) */
    int n, grid_t, grid_h, grid_w;
    int n_windows, n_frames;
    /* bookkeeping (positions.h) */
    int32_t *row, *col;           /* (N) processor order */
    int32_t *window_order;        /* (NU) raster unit at window position i */
    int32_t *raster_order;        /* (NU) window position of raster unit j */
    int32_t *window_len;          /* (NU) units per window */
    int32_t *segment_len;         /* (NU) patches per frame */
    int32_t *spans_window;        /* (NU, 2) attention spans (start, len) in patches */
    int32_t *spans_full;          /* (NU, 2) one per frame */
    float *inv_freq;              /* (Dh/4) */
    float *angles;                /* (N, Dh/2) processor order */
    float *cos, *sin;             /* (N, Dh/2) window order */
    /* kept activations (window order) */
    float *pix;                   /* (N, K) */
    float *xs;                    /* (depth + 1, N, D) */
    float *q, *k, *v, *o;         /* (depth, N, D) each */
    float *lse;                   /* (depth, H, N) */
    float *xm;                    /* (depth, N, D) */
    float *gate, *up;             /* (depth, N, F) each */
    float *fc1;                   /* (NU, U*D) */
    /* scratch */
    float *xn;                    /* (N, D) a normed input; GELU output (NU, U*D) */
    float *qkv;                   /* (N, 3D) attn.qkv output; its gradient */
    float *h;                     /* (N, F) SwiGLU output; its gradient */
    float *dgate, *dup;           /* (N, F) */
    float *dx, *dxn, *dt;         /* (N, D) stream gradient, a normed input's, a temporary */
    float *dq, *dk, *dv, *dout;   /* (N, D) attention gradients; dout doubles as a temporary */
    float *merged, *dmerged;      /* (NU, Do) merger output / its gradient, window order */
};

void vision_train_state_free(vision_train_state *st) {
    if (!st) return;
    void *bufs[] = {st->row, st->col, st->window_order, st->raster_order, st->window_len,
                    st->segment_len, st->spans_window, st->spans_full, st->inv_freq, st->angles,
                    st->cos, st->sin, st->pix, st->xs, st->q, st->k, st->v, st->o, st->lse,
                    st->xm, st->gate, st->up, st->fc1, st->xn, st->qkv, st->h, st->dgate,
                    st->dup, st->dx, st->dxn, st->dt, st->dq, st->dk, st->dv, st->dout,
                    st->merged, st->dmerged};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(st);
}

/* calloc of n elements of sz bytes (n = 0 gives one), or NULL with *failed set. */
static void *alloc_n(size_t n, size_t sz, int *failed) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) *failed = 1;
    return p;
}

ergo_status vision_train_state_new(vision_train_state **out, const vision_config *cfg,
                                   int max_patches, ergo_error *err) {
    *out = NULL;
    const int U = cfg->merge * cfg->merge;
    if (max_patches < U)
        return ergo_fail(err, ERGO_E_ARG,
                         "vision train state: max_patches %d is below one merge unit (%d "
                         "patches)",
                         max_patches, U);
    if (cfg->depth < 1 || cfg->n_heads < 1 || cfg->head_dim % 4 != 0 ||
        cfg->hidden != cfg->n_heads * cfg->head_dim)
        return ergo_fail(err, ERGO_E_ARG,
                         "vision train state: depth %d, hidden %d, %d heads of %d: the 2-D "
                         "rotary needs a head dim that is a multiple of 4",
                         cfg->depth, cfg->hidden, cfg->n_heads, cfg->head_dim);
    const int64_t K = (int64_t)cfg->in_channels * cfg->temporal_patch * cfg->patch * cfg->patch;
    /* every per-block buffer is indexed in int by the kernels: (N, widest row) */
    int64_t widest = 3 * (int64_t)cfg->hidden;
    if (cfg->ffn > widest) widest = cfg->ffn;
    if (K > widest) widest = K;
    if (cfg->out_hidden > widest) widest = cfg->out_hidden;
    if ((int64_t)max_patches * widest > (int64_t)INT32_MAX)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "vision train state: %d patches of hidden %d exceed the buffer limit "
                         "(2^31 floats per buffer)",
                         max_patches, cfg->hidden);
    vision_train_state *st = calloc(1, sizeof *st);
    if (!st) return ergo_fail(err, ERGO_E_NOMEM, "vision train state: out of memory");
    st->cfg = *cfg;
    st->max_patches = max_patches;
    st->K = (int)K;
    const size_t N = (size_t)max_patches, D = (size_t)cfg->hidden, F = (size_t)cfg->ffn;
    const size_t L = (size_t)cfg->depth, H = (size_t)cfg->n_heads, Dh = (size_t)cfg->head_dim;
    const size_t NU = N / (size_t)U + 1, Do = (size_t)cfg->out_hidden;
    int failed = 0;
    st->row = alloc_n(N, sizeof(int32_t), &failed);
    st->col = alloc_n(N, sizeof(int32_t), &failed);
    st->window_order = alloc_n(NU, sizeof(int32_t), &failed);
    st->raster_order = alloc_n(NU, sizeof(int32_t), &failed);
    st->window_len = alloc_n(NU, sizeof(int32_t), &failed);
    st->segment_len = alloc_n(NU, sizeof(int32_t), &failed);
    st->spans_window = alloc_n(2 * NU, sizeof(int32_t), &failed);
    st->spans_full = alloc_n(2 * NU, sizeof(int32_t), &failed);
    st->inv_freq = alloc_n(Dh / 4, sizeof(float), &failed);
    st->angles = alloc_n(N * Dh / 2, sizeof(float), &failed);
    st->cos = alloc_n(N * Dh / 2, sizeof(float), &failed);
    st->sin = alloc_n(N * Dh / 2, sizeof(float), &failed);
    st->pix = alloc_n(N * (size_t)K, sizeof(float), &failed);
    st->xs = alloc_n((L + 1) * N * D, sizeof(float), &failed);
    st->q = alloc_n(L * N * D, sizeof(float), &failed);
    st->k = alloc_n(L * N * D, sizeof(float), &failed);
    st->v = alloc_n(L * N * D, sizeof(float), &failed);
    st->o = alloc_n(L * N * D, sizeof(float), &failed);
    st->lse = alloc_n(L * H * N, sizeof(float), &failed);
    st->xm = alloc_n(L * N * D, sizeof(float), &failed);
    st->gate = alloc_n(L * N * F, sizeof(float), &failed);
    st->up = alloc_n(L * N * F, sizeof(float), &failed);
    st->fc1 = alloc_n(N * D, sizeof(float), &failed);
    st->xn = alloc_n(N * D, sizeof(float), &failed);
    st->qkv = alloc_n(N * 3 * D, sizeof(float), &failed);
    st->h = alloc_n(N * F, sizeof(float), &failed);
    st->dgate = alloc_n(N * F, sizeof(float), &failed);
    st->dup = alloc_n(N * F, sizeof(float), &failed);
    st->dx = alloc_n(N * D, sizeof(float), &failed);
    st->dxn = alloc_n(N * D, sizeof(float), &failed);
    st->dt = alloc_n(N * D, sizeof(float), &failed);
    st->dq = alloc_n(N * D, sizeof(float), &failed);
    st->dk = alloc_n(N * D, sizeof(float), &failed);
    st->dv = alloc_n(N * D, sizeof(float), &failed);
    st->dout = alloc_n(N * D, sizeof(float), &failed);
    st->merged = alloc_n(NU * Do, sizeof(float), &failed);
    st->dmerged = alloc_n(NU * Do, sizeof(float), &failed);
    if (failed) {
        vision_train_state_free(st);
        return ergo_fail(err, ERGO_E_NOMEM,
                         "vision train state: out of memory for %d patches of hidden %d, depth "
                         "%d",
                         max_patches, cfg->hidden, cfg->depth);
    }
    vision_rotary_inv_freq(st->inv_freq, cfg->head_dim, 10000.0f);
    *out = st;
    return ERGO_OK;
}

/* ---- helpers ---- */

static int trainable(const weight *g) { return g->k.data != NULL; }

static int block_trainable(const vision_block_weights *g) {
    return trainable(&g->norm1) || trainable(&g->qkv_w) || trainable(&g->qkv_b) ||
           trainable(&g->proj_w) || trainable(&g->proj_b) || trainable(&g->norm2) ||
           trainable(&g->gate_w) || trainable(&g->gate_b) || trainable(&g->up_w) ||
           trainable(&g->up_b) || trainable(&g->down_w) || trainable(&g->down_b);
}

/* dW += dy^T x, db += column sums of dy, for the (W, b) pair whose gradients are gw
 * and gb (either may be frozen). */
static void weight_grad(const weight *gw, const weight *gb, const float *dy, const float *x,
                        int n, int m, int k) {
    float *dw = train_grad(gw), *db = gb ? train_grad(gb) : NULL;
    /* a frozen weight beside a trained bias: the bias sums alone, as a (m, 0) weight
     * (backward.h allows dw = NULL; k = 0 also keeps a kernel that reads dw safe) */
    if (dw || db) linear_backward_weight(dw, db, dy, x, n, m, dw ? k : 0);
}

/* Whether the weights' shapes are those of the state's config (a state sized for
 * another model would be overrun). */
static int shapes_match(const vision_config *c, const vision_weights *w, int K) {
    const int D = c->hidden, F = c->ffn, UD = c->merge * c->merge * c->hidden;
    if (w->patch_embed.k.rows != D || w->patch_embed.k.cols != K || !w->blocks) return 0;
    const vision_block_weights *b = &w->blocks[0];
    return b->qkv_w.k.rows == 3 * D && b->qkv_w.k.cols == D && b->gate_w.k.rows == F &&
           b->gate_w.k.cols == D && b->down_w.k.rows == D && b->down_w.k.cols == F &&
           w->merger_fc1_w.k.rows == UD && w->merger_fc1_w.k.cols == UD &&
           w->merger_fc2_w.k.rows == c->out_hidden && w->merger_fc2_w.k.cols == UD;
}

static attn_train_args attn_args(const vision_train_state *st, int full) {
    const vision_config *c = &st->cfg;
    attn_train_args a = {.n = st->n, .heads = c->n_heads, .kv_heads = c->n_heads,
                         .dh = c->head_dim, .causal = 0,
                         .spans = full ? st->spans_full : st->spans_window,
                         .n_spans = full ? st->n_frames : st->n_windows,
                         .scale = 1.0f / sqrtf((float)c->head_dim)};
    return a;
}

/* (start, length) in patches of consecutive spans of len[s] * scale patches. */
static void make_spans(int32_t *spans, const int32_t *len, int n, int scale) {
    int start = 0;
    for (int s = 0; s < n; s++) {
        spans[2 * s] = start;
        spans[2 * s + 1] = len[s] * scale;
        start += len[s] * scale;
    }
}

/* ---- forward ---- */

ergo_status vision_train_forward(vision_train_state *st, const model_weights *mw,
                                 const float *pixels, int grid_t, int grid_h, int grid_w,
                                 float *out, ergo_error *err) {
    const vision_config *cfg = &st->cfg;
    const vision_weights *w = &mw->vision;
    st->n = 0; /* no valid forward until this one completes */
    if (!pixels || !out)
        return ergo_fail(err, ERGO_E_ARG, "vision train forward: no pixel_values or no output");
    if (!shapes_match(cfg, w, st->K))
        return ergo_fail(err, ERGO_E_ARG,
                         "vision train forward: the weights' shapes are not those of the "
                         "state's config (hidden %d, ffn %d, out_hidden %d)",
                         cfg->hidden, cfg->ffn, cfg->out_hidden);
    const int M = cfg->merge, U = M * M;
    if (grid_t < 1 || grid_h < 1 || grid_w < 1)
        return ergo_fail(err, ERGO_E_ARG,
                         "vision train forward: grid (%d, %d, %d) has an empty side", grid_t,
                         grid_h, grid_w);
    if (grid_h % M != 0 || grid_w % M != 0)
        return ergo_fail(err, ERGO_E_SHAPE,
                         "vision train forward: grid %dx%d patches is not a multiple of the "
                         "merge size %d",
                         grid_h, grid_w, M);
    const int64_t n64 = (int64_t)grid_t * grid_h * grid_w;
    if (n64 > st->max_patches)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "vision train forward: grid (%d, %d, %d) has %lld patches, over the "
                         "limit of %d this state was sized for",
                         grid_t, grid_h, grid_w, (long long)n64, st->max_patches);

    const int N = (int)n64, NU = N / U, UD = U * cfg->hidden;
    const int D = cfg->hidden, F = cfg->ffn, H = cfg->n_heads, Dh = cfg->head_dim;
    const int Do = cfg->out_hidden, L = cfg->depth;
    const int wu = cfg->window / cfg->patch / M; /* window side in units */
    const float eps = (float)cfg->rms_eps;
    const size_t ND = (size_t)N * D, NF = (size_t)N * F;

    /* bookkeeping, as vision_encode */
    vision_patch_positions(grid_t, grid_h, grid_w, M, st->row, st->col);
    st->n_windows = vision_window_order(grid_t, grid_h / M, grid_w / M, wu, st->window_order,
                                        st->raster_order, st->window_len);
    st->n_frames = vision_frame_segments(grid_t, grid_h, grid_w, st->segment_len);
    make_spans(st->spans_window, st->window_len, st->n_windows, U);
    make_spans(st->spans_full, st->segment_len, st->n_frames, 1);
    vision_rotary_angles(st->angles, st->row, st->col, N, st->inv_freq, Dh);
    for (int i = 0; i < NU; i++)
        for (int u = 0; u < U; u++) {
            const float *a = st->angles + ((size_t)st->window_order[i] * U + u) * (Dh / 2);
            float *c = st->cos + ((size_t)i * U + u) * (Dh / 2);
            float *s = st->sin + ((size_t)i * U + u) * (Dh / 2);
            for (int j = 0; j < Dh / 2; j++) {
                c[j] = cosf(a[j]);
                s[j] = sinf(a[j]);
            }
        }
    st->n = N;
    st->grid_t = grid_t;
    st->grid_h = grid_h;
    st->grid_w = grid_w;

    /* patch embed, then the window permutation into xs[0] */
    memcpy(st->pix, pixels, sizeof(float) * (size_t)N * st->K);
    linear_forward(st->xn, st->pix, &w->patch_embed.k, NULL, N); /* (N, D) raster */
    for (int i = 0; i < NU; i++)
        memcpy(st->xs + (size_t)i * U * D, st->xn + (size_t)st->window_order[i] * U * D,
               sizeof(float) * (size_t)U * D);

    for (int l = 0; l < L; l++) {
        const vision_block_weights *b = &w->blocks[l];
        const float *x = st->xs + (size_t)l * ND;
        float *xm = st->xm + (size_t)l * ND, *xnext = st->xs + (size_t)(l + 1) * ND;
        float *q = st->q + (size_t)l * ND, *k = st->k + (size_t)l * ND, *v = st->v + (size_t)l * ND;
        float *o = st->o + (size_t)l * ND, *lse = st->lse + (size_t)l * H * N;
        float *g = st->gate + (size_t)l * NF, *u = st->up + (size_t)l * NF;
        rmsnorm(st->xn, x, &b->norm1.k, N, D, eps);                   /* norm1 */
        linear_forward(st->qkv, st->xn, &b->qkv_w.k, &b->qkv_b.k, N); /* attn.qkv (N, 3D) */
        for (int p = 0; p < N; p++) { /* q | k | v apart: attn_train reads dense rows */
            const float *r = st->qkv + (size_t)p * 3 * D;
            memcpy(q + (size_t)p * D, r, sizeof(float) * (size_t)D);
            memcpy(k + (size_t)p * D, r + D, sizeof(float) * (size_t)D);
            memcpy(v + (size_t)p * D, r + 2 * D, sizeof(float) * (size_t)D);
        }
        rope_apply(q, (size_t)D, N, H, Dh, st->cos, st->sin);
        rope_apply(k, (size_t)D, N, H, Dh, st->cos, st->sin);
        const attn_train_args a = attn_args(st, vision_layer_is_full_attention(cfg, l));
        attn_train_forward(&a, o, lse, q, k, v);
        linear_forward(xm, o, &b->proj_w.k, &b->proj_b.k, N); /* attn.proj */
        add_inplace(xm, x, ND);                               /* x + attn */
        rmsnorm(st->xn, xm, &b->norm2.k, N, D, eps);          /* norm2 */
        linear_forward(g, st->xn, &b->gate_w.k, &b->gate_b.k, N);
        linear_forward(u, st->xn, &b->up_w.k, &b->up_b.k, N);
        memcpy(st->h, g, sizeof(float) * NF);
        silu_mul(st->h, u, NF);                                           /* silu(g) * u */
        linear_forward(xnext, st->h, &b->down_w.k, &b->down_b.k, N);      /* mlp.down_proj */
        add_inplace(xnext, xm, ND);                                       /* x + mlp */
    }

    /* merger: ln_q, U patches as one (U*D) row, fc1, GELU, fc2; inverse permutation */
    rmsnorm(st->xn, st->xs + (size_t)L * ND, &w->merger_ln_q.k, N, D, eps);
    linear_forward(st->fc1, st->xn, &w->merger_fc1_w.k, &w->merger_fc1_b.k, NU);
    memcpy(st->xn, st->fc1, sizeof(float) * (size_t)NU * UD);
    gelu_erf(st->xn, (size_t)NU * UD);
    linear_forward(st->merged, st->xn, &w->merger_fc2_w.k, &w->merger_fc2_b.k, NU);
    for (int j = 0; j < NU; j++)
        memcpy(out + (size_t)j * Do, st->merged + (size_t)st->raster_order[j] * Do,
               sizeof(float) * (size_t)Do);
    return ERGO_OK;
}

/* ---- backward ---- */

void vision_train_backward(vision_train_state *st, const model_weights *mw, model_weights *mg,
                           const float *d_out) {
    if (!st || st->n == 0 || !d_out) return;
    const vision_config *cfg = &st->cfg;
    const vision_weights *w = &mw->vision;
    const vision_weights *g = &mg->vision;
    const int N = st->n, U = cfg->merge * cfg->merge, NU = N / U;
    const int D = cfg->hidden, F = cfg->ffn, H = cfg->n_heads, Dh = cfg->head_dim;
    const int Do = cfg->out_hidden, L = cfg->depth, UD = U * D;
    const float eps = (float)cfg->rms_eps;
    const size_t ND = (size_t)N * D, NF = (size_t)N * F;

    /* lowest = the first block with a trainable parameter (L: none; -1: patch embed),
     * below which no gradient is needed */
    int lowest = trainable(&g->patch_embed) ? -1 : L;
    for (int l = 0; l < L && lowest == L; l++)
        if (block_trainable(&g->blocks[l])) lowest = l;
    const int merger_trainable = trainable(&g->merger_ln_q) || trainable(&g->merger_fc1_w) ||
                                 trainable(&g->merger_fc1_b) || trainable(&g->merger_fc2_w) ||
                                 trainable(&g->merger_fc2_b);
    if (lowest == L && !merger_trainable) return;

    /* inverse permutation: window row i of the merger output is output row window_order[i] */
    for (int i = 0; i < NU; i++)
        memcpy(st->dmerged + (size_t)i * Do, d_out + (size_t)st->window_order[i] * Do,
               sizeof(float) * (size_t)Do);

    /* merger, from fc2 down to ln_q: dx = d(xs[L]) */
    const float *xl = st->xs + (size_t)L * ND;
    if (trainable(&g->merger_fc2_w) || trainable(&g->merger_fc2_b)) {
        memcpy(st->xn, st->fc1, sizeof(float) * ND); /* GELU output, recomputed */
        gelu_erf(st->xn, ND);
        weight_grad(&g->merger_fc2_w, &g->merger_fc2_b, st->dmerged, st->xn, NU, Do, UD);
    }
    const int need_fc1 = lowest < L || trainable(&g->merger_ln_q) ||
                         trainable(&g->merger_fc1_w) || trainable(&g->merger_fc1_b);
    if (!need_fc1) return;
    linear_backward_input(st->dxn, st->dmerged, &w->merger_fc2_w.k, NU, 0); /* (NU, UD) */
    gelu_erf_backward(st->dxn, st->dxn, st->fc1, ND);
    if (trainable(&g->merger_fc1_w) || trainable(&g->merger_fc1_b)) {
        rmsnorm(st->xn, xl, &w->merger_ln_q.k, N, D, eps); /* fc1's input, recomputed */
        weight_grad(&g->merger_fc1_w, &g->merger_fc1_b, st->dxn, st->xn, NU, UD, UD);
    }
    if (lowest == L && !trainable(&g->merger_ln_q)) return;
    linear_backward_input(st->dt, st->dxn, &w->merger_fc1_w.k, NU, 0); /* d(ln_q out) */
    rmsnorm_backward(st->dx, train_grad(&g->merger_ln_q), st->dt, xl, &w->merger_ln_q.k, N, D,
                     eps);

    const int stop = lowest < 0 ? 0 : lowest; /* blocks below need no gradient */
    for (int l = L - 1; l >= stop; l--) {
        const vision_block_weights *b = &w->blocks[l], *gb = &g->blocks[l];
        const float *x = st->xs + (size_t)l * ND, *xm = st->xm + (size_t)l * ND;
        const float *q = st->q + (size_t)l * ND, *k = st->k + (size_t)l * ND;
        const float *v = st->v + (size_t)l * ND, *o = st->o + (size_t)l * ND;
        const float *lse = st->lse + (size_t)l * H * N;
        const float *gt = st->gate + (size_t)l * NF, *up = st->up + (size_t)l * NF;
        const int need_dx = l > lowest; /* something below block l is trainable */

        /* MLP: xs[l+1] = xm + down(silu(gate) up), gate/up of norm2(xm) */
        if (trainable(&gb->down_w) || trainable(&gb->down_b)) {
            memcpy(st->h, gt, sizeof(float) * NF);
            silu_mul(st->h, up, NF);
            weight_grad(&gb->down_w, &gb->down_b, st->dx, st->h, N, D, F);
        }
        linear_backward_input(st->h, st->dx, &b->down_w.k, N, 0); /* dh (N, F) */
        silu_mul_backward(st->dgate, st->dup, st->h, gt, up, NF);
        if (trainable(&gb->gate_w) || trainable(&gb->gate_b) || trainable(&gb->up_w) ||
            trainable(&gb->up_b)) {
            rmsnorm(st->xn, xm, &b->norm2.k, N, D, eps); /* norm2's output, recomputed */
            weight_grad(&gb->gate_w, &gb->gate_b, st->dgate, st->xn, N, F, D);
            weight_grad(&gb->up_w, &gb->up_b, st->dup, st->xn, N, F, D);
        }
        linear_backward_input(st->dxn, st->dgate, &b->gate_w.k, N, 0);
        linear_backward_input(st->dxn, st->dup, &b->up_w.k, N, 1);
        rmsnorm_backward(st->dt, train_grad(&gb->norm2), st->dxn, xm, &b->norm2.k, N, D, eps);
        add_inplace(st->dx, st->dt, ND); /* dx = d(xm): the residual plus norm2's path */

        /* attention: xm = x + proj(attn(rope(q), rope(k), v)), qkv of norm1(x) */
        weight_grad(&gb->proj_w, &gb->proj_b, st->dx, o, N, D, D);
        linear_backward_input(st->dout, st->dx, &b->proj_w.k, N, 0);
        const attn_train_args a = attn_args(st, vision_layer_is_full_attention(cfg, l));
        attn_train_backward(&a, st->dq, st->dk, st->dv, st->dout, q, k, v, o, lse);
        rope_apply_inverse(st->dq, (size_t)D, N, H, Dh, st->cos, st->sin);
        rope_apply_inverse(st->dk, (size_t)D, N, H, Dh, st->cos, st->sin);
        for (int p = 0; p < N; p++) { /* d(qkv) (N, 3D): q | k | v per row */
            float *r = st->qkv + (size_t)p * 3 * D;
            memcpy(r, st->dq + (size_t)p * D, sizeof(float) * (size_t)D);
            memcpy(r + D, st->dk + (size_t)p * D, sizeof(float) * (size_t)D);
            memcpy(r + 2 * D, st->dv + (size_t)p * D, sizeof(float) * (size_t)D);
        }
        if (trainable(&gb->qkv_w) || trainable(&gb->qkv_b)) {
            rmsnorm(st->xn, x, &b->norm1.k, N, D, eps); /* norm1's output, recomputed */
            weight_grad(&gb->qkv_w, &gb->qkv_b, st->qkv, st->xn, N, 3 * D, D);
        }
        if (!need_dx && !trainable(&gb->norm1)) break;
        linear_backward_input(st->dxn, st->qkv, &b->qkv_w.k, N, 0);
        rmsnorm_backward(st->dt, train_grad(&gb->norm1), st->dxn, x, &b->norm1.k, N, D, eps);
        add_inplace(st->dx, st->dt, ND); /* dx = d(xs[l]) */
        if (!need_dx) break;
    }

    /* patch embed: undo the window permutation, dW += d(embed)^T pixels */
    if (lowest < 0) {
        for (int i = 0; i < NU; i++)
            memcpy(st->dxn + (size_t)st->window_order[i] * U * D, st->dx + (size_t)i * U * D,
                   sizeof(float) * (size_t)U * D);
        linear_backward_weight(train_grad(&g->patch_embed), NULL, st->dxn, st->pix, N, D, st->K);
    }
}
