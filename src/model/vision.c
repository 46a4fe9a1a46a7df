/*
 * vision.c - the Qwen2.5-VL vision encoder forward pass.
 *
 * Mirrors Qwen2_5_VisionTransformerPretrainedModel.forward (transformers 4.56.2):
 * patch embed (the Conv3d as one 1176-long dot per patch), 2-D rotary, the window
 * permutation, `depth` blocks (RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU
 * MLP with biases -> residual), the patch merger (ln_q, 4 rows -> one, Linear, GELU
 * (erf), Linear) and the inverse permutation.
 *
 * Attention is computed span by span, as the reference's eager/SDPA path does since
 * transformers PR #37363: window blocks attend inside each window (<= 64 tokens for
 * 112 px windows, so the cost is proportional to the windows), full-attention blocks
 * inside each frame, by the tiled online-softmax kernel (kernels/attention.h)
 * streaming over key tiles, so no n x n matrix is ever stored.
 * Everything is f32: late blocks exceed the f16 range (llama.cpp #17534).
 *
 * N = patches, U = merge^2 (4), D = hidden, H = heads, Dh = head dim, F = ffn,
 * Do = out_hidden.
 */
#include "base/clock.h"
#include "vision.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/file.h"
#include "kernels/attend.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "kernels/rope.h"
#include "model/positions.h"

/* ---- small helpers ---- */

static void trace(vision_state *st, const char *name, const float *data, int rows, int cols) {
    if (st->trace) st->trace(st->trace_ctx, name, data, rows, cols);
}


/* ---- state ---- */

void vision_state_free(vision_state *st) {
    if (!st) return;
    free(st->row);
    free(st->col);
    free(st->window_order);
    free(st->raster_order);
    free(st->window_len);
    free(st->segment_len);
    free(st->work_window);
    free(st->work_full);
    free(st->inv_freq);
    free(st->angles);
    free(st->cos);
    free(st->sin);
    free(st->x);
    free(st->xn);
    free(st->qkv);
    free(st->kt);
    free(st->vh);
    free(st->attn);
    free(st->gate);
    free(st->up);
    free(st->merged);
    free(st->scratch);
    free(st->layer_ms);
    memset(st, 0, sizeof *st);
}

/* calloc of n elements of size sz, or NULL; n is checked by the caller's limits. */
static void *alloc_n(size_t n, size_t sz, int *failed) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) *failed = 1;
    return p;
}

ergo_status vision_state_init(vision_state *st, const vision_config *cfg, int max_patches,
                              ergo_error *err) {
    memset(st, 0, sizeof *st);
    const int U = cfg->merge * cfg->merge;
    if (max_patches < U)
        return ergo_fail(err, ERGO_E_ARG,
                         "vision state: max_patches %d is below one merge unit (%d patches)",
                         max_patches, U);
    if (cfg->head_dim % 4 != 0 || cfg->hidden != cfg->n_heads * cfg->head_dim)
        return ergo_fail(err, ERGO_E_ARG,
                         "vision state: hidden %d, %d heads of %d: the 2-D rotary needs a head "
                         "dim that is a multiple of 4",
                         cfg->hidden, cfg->n_heads, cfg->head_dim);
    /* the biggest buffer is (N, 3D) floats; keep every index inside int arithmetic */
    const int64_t biggest = (int64_t)max_patches *
                            (3 * (int64_t)cfg->hidden > cfg->out_hidden ? 3 * (int64_t)cfg->hidden
                                                                        : cfg->out_hidden);
    if (biggest > (int64_t)INT32_MAX)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "vision state: %d patches of hidden %d exceed the buffer limit (2^31 "
                         "floats)",
                         max_patches, cfg->hidden);
    st->cfg = *cfg;
    st->max_patches = max_patches;
#ifdef _OPENMP
    st->n_threads = omp_get_max_threads();
#else
    st->n_threads = 1;
#endif
    const size_t N = (size_t)max_patches, D = (size_t)cfg->hidden, Dh = (size_t)cfg->head_dim;
    const size_t n_units = N / (size_t)U + 1;
    /* a span of L patches gives ceil(L / QROWS) items; spans never outnumber units */
    st->max_work = (int)(n_units + N / VISION_ATTN_QROWS + 1);
    st->scratch_floats = (int)attn_scratch_floats(VISION_ATTN_QROWS, (int)Dh);
    int failed = 0;
    st->row = alloc_n(N, sizeof *st->row, &failed);
    st->col = alloc_n(N, sizeof *st->col, &failed);
    st->window_order = alloc_n(n_units, sizeof(int32_t), &failed);
    st->raster_order = alloc_n(n_units, sizeof(int32_t), &failed);
    st->window_len = alloc_n(n_units, sizeof(int32_t), &failed);
    st->segment_len = alloc_n(n_units, sizeof(int32_t), &failed);
    st->work_window = alloc_n((size_t)st->max_work * 3, sizeof(int32_t), &failed);
    st->work_full = alloc_n((size_t)st->max_work * 3, sizeof(int32_t), &failed);
    st->inv_freq = alloc_n(Dh / 4, sizeof(float), &failed);
    st->angles = alloc_n(N * Dh / 2, sizeof(float), &failed);
    st->cos = alloc_n(N * Dh / 2, sizeof(float), &failed);
    st->sin = alloc_n(N * Dh / 2, sizeof(float), &failed);
    st->x = alloc_n(N * D, sizeof(float), &failed);
    st->xn = alloc_n(N * D, sizeof(float), &failed);
    st->qkv = alloc_n(N * 3 * D, sizeof(float), &failed);
    st->kt = alloc_n((N + VISION_KT_PAD) * D, sizeof(float), &failed);
    st->vh = alloc_n(N * D, sizeof(float), &failed);
    st->attn = alloc_n(N * D, sizeof(float), &failed);
    const size_t mlp_rows = N < VISION_MLP_ROWS ? N : VISION_MLP_ROWS;
    st->gate = alloc_n(mlp_rows * (size_t)cfg->ffn, sizeof(float), &failed);
    st->up = alloc_n(mlp_rows * (size_t)cfg->ffn, sizeof(float), &failed);
    st->merged = alloc_n(n_units * (size_t)cfg->out_hidden, sizeof(float), &failed);
    st->scratch =
        alloc_n((size_t)st->n_threads * (size_t)st->scratch_floats, sizeof(float), &failed);
    st->layer_ms = alloc_n((size_t)cfg->depth + 2, sizeof(double), &failed);
    if (failed) {
        vision_state_free(st);
        return ergo_fail(err, ERGO_E_NOMEM,
                         "vision state: out of memory for %d patches of hidden %d", max_patches,
                         cfg->hidden);
    }
    vision_rotary_inv_freq(st->inv_freq, cfg->head_dim, 10000.0f);
    return ERGO_OK;
}

ergo_status vision_check_grid(const vision_state *st, int grid_t, int grid_h, int grid_w,
                              ergo_error *err) {
    const int M = st->cfg.merge;
    if (grid_t < 1 || grid_h < 1 || grid_w < 1)
        return ergo_fail(err, ERGO_E_ARG, "vision encoder: grid (%d, %d, %d) has an empty side",
                         grid_t, grid_h, grid_w);
    if (grid_h % M != 0 || grid_w % M != 0)
        return ergo_fail(err, ERGO_E_SHAPE,
                         "vision encoder: grid %dx%d patches is not a multiple of the merge size "
                         "%d (image sides must be multiples of %d px)",
                         grid_h, grid_w, M, M * st->cfg.patch);
    const int64_t n = (int64_t)grid_t * grid_h * grid_w;
    if (n > st->max_patches)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "vision encoder: grid (%d, %d, %d) has %lld patches, over the limit of "
                         "%d this state was sized for",
                         grid_t, grid_h, grid_w, (long long)n, st->max_patches);
    return ERGO_OK;
}

/* ---- attention ---- */

/* Lists the work items of a set of consecutive spans (lengths in patches): one item
 * per VISION_ATTN_QROWS queries of a span, as (span start, span length, query start). */
static int attention_work(int32_t *work, const int32_t *span_len, int n_spans, int scale) {
    int n = 0, start = 0;
    for (int s = 0; s < n_spans; s++) {
        const int len = span_len[s] * scale;
        for (int q = 0; q < len; q += VISION_ATTN_QROWS, n++) {
            work[3 * n + 0] = start;
            work[3 * n + 1] = len;
            work[3 * n + 2] = start + q;
        }
        start += len;
    }
    return n;
}

/* out (N, D) = softmax(q k^T / sqrt(Dh)) v per head, queries attending only to the keys
 * of their span: q from qkv (N, 3D) (rotated), k from kt (H, Dh, N + pad), v from
 * vh (H, N, Dh) (kernels/attend.h). */
static void attention(vision_state *st, float *out, const float *qkv, const int32_t *work,
                      int n_work, int N, int head_major) {
    const attend_span_args a = {
        .out = out, .ldo = (size_t)st->cfg.hidden, .q = qkv, .ldq = 3 * (size_t)st->cfg.hidden,
        .kt = st->kt, .ldkt = (size_t)N + VISION_KT_PAD, .v = st->vh, .n_rows = N,
        .heads = st->cfg.n_heads, .dh = st->cfg.head_dim, .qrows = VISION_ATTN_QROWS,
        .scratch = st->scratch, .scratch_floats = (size_t)st->scratch_floats,
        .n_threads = st->n_threads};
    attend_spans(&a, work, n_work, head_major);
}

/* kt (H, Dh, N + pad) = the k third of qkv (N, 3D) transposed per head, in blocks of
 * 16 patches x 16 channels so both sides stay in cache lines; vh (H, N, Dh) = the v
 * third, each head's rows made contiguous. */
static void pack_kv(vision_state *st, const float *qkv, int N) {
    const int D = st->cfg.hidden, H = st->cfg.n_heads, Dh = st->cfg.head_dim;
    const size_t ldkt = (size_t)N + VISION_KT_PAD;
    float *kt = st->kt, *vh = st->vh;
    const int n_cb = (D + 15) / 16;
#pragma omp parallel num_threads(st->n_threads) if (N > 64)
    {
#pragma omp for schedule(static) nowait
        for (int cb = 0; cb < n_cb; cb++) /* c = h * Dh + d */
            for (int p0 = 0; p0 < N; p0 += 16) {
                const int c1 = cb * 16 + 16 < D ? cb * 16 + 16 : D, p1 = p0 + 16 < N ? p0 + 16 : N;
                for (int c = cb * 16; c < c1; c++) {
                    float *dst = kt + (size_t)(c / Dh) * Dh * ldkt + (size_t)(c % Dh) * ldkt;
                    for (int p = p0; p < p1; p++) dst[p] = qkv[(size_t)p * 3 * D + D + c];
                }
            }
#pragma omp for schedule(static)
        for (int p = 0; p < N; p++)
            for (int h = 0; h < H; h++)
                memcpy(vh + ((size_t)h * N + p) * Dh, qkv + (size_t)p * 3 * D + 2 * D + (size_t)h * Dh,
                       sizeof(float) * (size_t)Dh);
    }
}

/* ---- the forward pass ---- */

ergo_status vision_encode(const model *m, vision_state *st, const float *pixel_values, int grid_t,
                          int grid_h, int grid_w, float *out, ergo_error *err) {
    const vision_config *cfg = &m->config.vision;
    const vision_weights *w = &m->weights.vision;
    if (cfg->hidden != st->cfg.hidden || cfg->ffn != st->cfg.ffn ||
        cfg->n_heads != st->cfg.n_heads || cfg->depth != st->cfg.depth ||
        cfg->merge != st->cfg.merge || cfg->out_hidden != st->cfg.out_hidden)
        return ergo_fail(err, ERGO_E_ARG,
                         "vision encoder: the state was sized for another vision config "
                         "(hidden %d, depth %d; the model has hidden %d, depth %d)",
                         st->cfg.hidden, st->cfg.depth, cfg->hidden, cfg->depth);
    if (!pixel_values || !out)
        return ergo_fail(err, ERGO_E_ARG, "vision encoder: no pixel_values or no output buffer");
    ergo_status s = vision_check_grid(st, grid_t, grid_h, grid_w, err);
    if (s) return s;

    double t0 = now_ms();
    const int M = cfg->merge, U = M * M;
    const int D = cfg->hidden, F = cfg->ffn, Dh = cfg->head_dim, Do = cfg->out_hidden;
    const int H = cfg->n_heads;
    const int N = grid_t * grid_h * grid_w;             /* patches */
    const int NU = N / U;                               /* merge units = output tokens */
    const int wu = cfg->window / cfg->patch / M;        /* window side in units, 4 */
    const float eps = (float)cfg->rms_eps;              /* 1e-6 */

    /* bookkeeping: positions, windows, spans (positions.h) */
    vision_patch_positions(grid_t, grid_h, grid_w, M, st->row, st->col);
    const int n_windows = vision_window_order(grid_t, grid_h / M, grid_w / M, wu,
                                              st->window_order, st->raster_order, st->window_len);
    const int n_frames = vision_frame_segments(grid_t, grid_h, grid_w, st->segment_len);
    const int n_work_window = attention_work(st->work_window, st->window_len, n_windows, U);
    const int n_work_full = attention_work(st->work_full, st->segment_len, n_frames, 1);

    /* rotary angles in processor order, then cos/sin gathered into window order */
    vision_rotary_angles(st->angles, st->row, st->col, N, st->inv_freq, Dh);
    for (int i = 0; i < NU; i++)
        for (int k = 0; k < U; k++) {
            const float *a = st->angles + ((size_t)st->window_order[i] * U + k) * (Dh / 2);
            float *c = st->cos + ((size_t)i * U + k) * (Dh / 2);
            float *sn = st->sin + ((size_t)i * U + k) * (Dh / 2);
            for (int j = 0; j < Dh / 2; j++) {
                c[j] = cosf(a[j]);
                sn[j] = sinf(a[j]);
            }
        }

    /* patch_embed: Conv3d with stride = kernel = one dot of each 1176-long row */
    linear_forward(st->xn, pixel_values, &w->patch_embed.k, NULL, N);       /* (N, D) */
    trace(st, "patch_embed", st->xn, N, D);
    /* window permutation: unit i of the window order <- raster unit window_order[i] */
    for (int i = 0; i < NU; i++)
        memcpy(st->x + (size_t)i * U * D, st->xn + (size_t)st->window_order[i] * U * D,
               sizeof(float) * (size_t)U * D);
    st->layer_ms[0] = now_ms() - t0;

    for (int l = 0; l < cfg->depth; l++) {
        t0 = now_ms();
        const vision_block_weights *b = &w->blocks[l];
        const int full = vision_layer_is_full_attention(cfg, l);
        rmsnorm(st->xn, st->x, &b->norm1.k, N, D, eps);    /* norm1 (N, D) */
        linear_forward(st->qkv, st->xn, &b->qkv_w.k, &b->qkv_b.k, N);         /* attn.qkv (N, 3D) */
        rope_apply(st->qkv, 3 * (size_t)D, N, H, Dh, st->cos, st->sin);     /* q rotated */
        rope_apply(st->qkv + D, 3 * (size_t)D, N, H, Dh, st->cos, st->sin); /* k rotated */
        pack_kv(st, st->qkv, N);                                            /* k^T, v per head */
        if (full) /* the whole frame, as cu_seqlens */
            attention(st, st->attn, st->qkv, st->work_full, n_work_full, N, 1);
        else      /* each window alone, as cu_window_seqlens */
            attention(st, st->attn, st->qkv, st->work_window, n_work_window, N, 0);
        linear_forward(st->xn, st->attn, &b->proj_w.k, &b->proj_b.k, N);         /* attn.proj (N, D) */
        add_inplace(st->x, st->xn, (size_t)N * D);                          /* x += attn */
        rmsnorm(st->xn, st->x, &b->norm2.k, N, D, eps);    /* norm2 (N, D) */
        for (int r0 = 0; r0 < N; r0 += VISION_MLP_ROWS) {  /* MLP in row chunks */
            const int nr = N - r0 < VISION_MLP_ROWS ? N - r0 : VISION_MLP_ROWS;
            const float *xr = st->xn + (size_t)r0 * D;
            linear_forward(st->gate, xr, &b->gate_w.k, &b->gate_b.k, nr);         /* mlp.gate_proj */
            linear_forward(st->up, xr, &b->up_w.k, &b->up_b.k, nr);               /* mlp.up_proj */
            silu_mul(st->gate, st->up, (size_t)nr * F);                     /* silu(g) * u */
            linear_forward(st->attn + (size_t)r0 * D, st->gate, &b->down_w.k, &b->down_b.k, nr); /* mlp.down_proj */
        }
        add_inplace(st->x, st->attn, (size_t)N * D);                        /* x += mlp */
        char name[32];
        snprintf(name, sizeof name, "blocks.%d", l);
        trace(st, name, st->x, N, D);
        st->layer_ms[1 + l] = now_ms() - t0;
    }

    /* merger: ln_q per patch, the U patches of a unit as one (U*D) row, MLP */
    t0 = now_ms();
    rmsnorm(st->xn, st->x, &w->merger_ln_q.k, N, D, eps); /* ln_q */
    linear_forward(st->attn, st->xn, &w->merger_fc1_w.k, &w->merger_fc1_b.k, NU); /* mlp.0 (NU, UD) */
    gelu_erf(st->attn, (size_t)NU * U * D);                                 /* mlp.1, erf GELU */
    linear_forward(st->merged, st->attn, &w->merger_fc2_w.k, &w->merger_fc2_b.k, NU); /* mlp.2 (NU, Do) */
    trace(st, "merger", st->merged, NU, Do);
    /* inverse permutation: raster unit j <- window position raster_order[j] */
    for (int j = 0; j < NU; j++)
        memcpy(out + (size_t)j * Do, st->merged + (size_t)st->raster_order[j] * Do,
               sizeof(float) * (size_t)Do);
    st->layer_ms[1 + cfg->depth] = now_ms() - t0;
    return ERGO_OK;
}

ergo_status vision_encode_batch(const model *m, vision_state *st, const float *pixel_values,
                                const int32_t *grid_thw, int n_images, float *out,
                                ergo_error *err) {
    const vision_config *cfg = &m->config.vision;
    const size_t K = (size_t)cfg->in_channels * cfg->temporal_patch * cfg->patch * cfg->patch;
    const int U = cfg->merge * cfg->merge;
    if (n_images < 0 || (n_images > 0 && !grid_thw))
        return ergo_fail(err, ERGO_E_ARG, "vision encoder: %d images without grids", n_images);
    size_t row = 0, tok = 0;
    for (int i = 0; i < n_images; i++) {
        const int t = grid_thw[3 * i], h = grid_thw[3 * i + 1], wd = grid_thw[3 * i + 2];
        ergo_status s = vision_encode(m, st, pixel_values + row * K, t, h, wd,
                                      out + tok * (size_t)cfg->out_hidden, err);
        if (s) {
            ergo_error_prefix(err, "image %d of %d: ", i + 1, n_images);
            return s;
        }
        const size_t n = (size_t)t * (size_t)h * (size_t)wd;
        row += n;
        tok += n / (size_t)U;
    }
    return ERGO_OK;
}

void vision_trace_dump(void *dir, const char *name, const float *data, int rows, int cols) {
    char path[1024];
    snprintf(path, sizeof path, "%s/vision.%s.f32", (const char *)dir, name);
    ergo_error err = {0};
    /* a debugging aid: a failed write is reported and otherwise ignored */
    if (file_write_all(path, data, sizeof(float) * (size_t)rows * (size_t)cols, &err) != ERGO_OK)
        fprintf(stderr, "ergo: trace: %s\n", err.msg);
}
