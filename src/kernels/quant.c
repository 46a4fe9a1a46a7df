/*
 * quant.c - q8 / q4 block-quantised weights: the formats, quantisation at load,
 * the scalar reference kernels, the per-ISA table and the threaded matmul_q.
 *
 * The SIMD kernels live in quant_simd.c. Every ISA gives the same bytes:
 * quantisation is scalar (weights) or reproduces the scalar rounding exactly
 * (activations: IEEE division, then ties away from zero), and the integer dot of
 * each block is exact. The reference adds each row's block terms d * isum (d =
 * sw * sx, rounded once, then one rounded product) in block order, as the AVX2 and
 * the AVX-512 q8 kernels do (same floats); the AVX-512 q4 kernel adds them in
 * another order (quant.h states its bound). The multi-row kernels (matvec_rows,
 * batched decode) repeat each row's single-row arithmetic exactly, so matmul_q_int8
 * gives every row the bits it has alone.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "quant.h"

quant_kernels qkern = {quant_act_ref, matvec_q_ref, dequant_rows, matvec_rows_ref};

/* ---- formats and sizes ---- */

const char *quant_format_name(quant_format f) {
    switch (f) {
    case QUANT_Q8: return "q8";
    case QUANT_Q4: return "q4";
    case QUANT_NONE: break;
    }
    return "none";
}

int quant_format_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "q8")) return QUANT_Q8;
    if (!strcmp(s, "q4")) return QUANT_Q4;
    if (!strcmp(s, "bf16") || !strcmp(s, "none") || !strcmp(s, "as-stored")) return QUANT_NONE;
    return -1;
}

int quant_padded_cols(int k) { return (k + QUANT_CHUNK - 1) / QUANT_CHUNK * QUANT_CHUNK; }

size_t quant_row_bytes(quant_format f, int k) {
    size_t kp = (size_t)quant_padded_cols(k);
    return f == QUANT_Q8 ? kp : f == QUANT_Q4 ? kp / 2 : 0;
}

size_t quant_scale_count(int k) { return (size_t)quant_padded_cols(k) / QUANT_BLOCK; }

size_t quant_matrix_bytes(quant_format f, int m, int k) {
    return (size_t)m * (quant_row_bytes(f, k) + quant_scale_count(k) * sizeof(float));
}

/* 64-byte aligned (one cache line, one zmm load), size rounded up as C11 asks. */
static void *alloc64(size_t n) {
    n = (n + 63) / 64 * 64;
    return aligned_alloc(64, n ? n : 64);
}

ergo_status quant_alloc(qmatrix *qm, quant_format f, int m, int k, ergo_error *err) {
    memset(qm, 0, sizeof *qm);
    if (f != QUANT_Q8 && f != QUANT_Q4)
        return ergo_fail(err, ERGO_E_ARG, "quant_alloc: format %d is not q8 or q4", (int)f);
    if (m <= 0 || k <= 0)
        return ergo_fail(err, ERGO_E_SHAPE, "quant_alloc: bad shape (%d, %d)", m, k);
    if (k > QUANT_MAX_COLS)
        return ergo_fail(err, ERGO_E_LIMIT, "quant_alloc: %d columns, at most %d", k,
                         QUANT_MAX_COLS);
    qm->format = f;
    qm->rows = m;
    qm->cols = k;
    qm->cols_padded = quant_padded_cols(k);
    qm->q = alloc64((size_t)m * quant_row_bytes(f, k));
    qm->scale = alloc64((size_t)m * quant_scale_count(k) * sizeof(float));
    qm->owned = 1;
    if (!qm->q || !qm->scale) {
        quant_free(qm);
        return ergo_fail(err, ERGO_E_NOMEM, "quant_alloc: out of memory for (%d, %d) %s", m, k,
                         quant_format_name(f));
    }
    return ERGO_OK;
}

void quant_free(qmatrix *qm) {
    if (!qm) return;
    if (qm->owned) {
        free(qm->q);
        free(qm->scale);
    }
    memset(qm, 0, sizeof *qm);
}

/* ---- quantisation (scalar: the definition, and the only weight path) ---- */

/* round(v) to nearest, ties away from zero (lroundf), clamped to [-qmax, qmax];
 * NaN gives -qmax (as the SIMD max/min order does). The SIMD activation code
 * reproduces exactly these steps: trunc, exact remainder, step by one. */
static float round_clamp(float v, float qmax) {
    float t = truncf(v);
    if (fabsf(v - t) >= 0.5f) t += copysignf(1.0f, v);
    t = fmaxf(t, -qmax);
    return fminf(t, qmax);
}

static size_t src_size(kdtype t) { return t == KDT_F32 ? 4 : 2; }

/* Sets the stored (unsigned) value of element e of a quantised row. */
static inline void put_u(uint8_t *row, quant_format f, int e, int u) {
    if (f == QUANT_Q8) {
        row[e] = (uint8_t)u;
        return;
    }
    int c = e / QUANT_CHUNK, p = e % QUANT_CHUNK;
    uint8_t *b = &row[c * (QUANT_CHUNK / 2) + (p & 63)];
    *b = p < 64 ? (uint8_t)((*b & 0xf0) | u) : (uint8_t)((*b & 0x0f) | (u << 4));
}

static inline int get_u(const uint8_t *row, quant_format f, int e) {
    if (f == QUANT_Q8) return row[e];
    int c = e / QUANT_CHUNK, p = e % QUANT_CHUNK;
    uint8_t b = row[c * (QUANT_CHUNK / 2) + (p & 63)];
    return p < 64 ? b & 15 : b >> 4;
}

static int zp_of(quant_format f) { return f == QUANT_Q8 ? 128 : 8; }

/* The block's scale: q8 max|w| / 127 (q in [-127, 127]); q4 the signed extreme
 * over -8, so the element of largest magnitude maps to exactly -8 and the others use
 * all 16 levels [-8, 7] (llama.cpp's q4_0 rule; absmax / 7 wasted one level, and on
 * the 7B-width fixture cost ~1.5 points of top-1 agreement). The first element of
 * largest magnitude decides the sign. */
static float block_scale(const float *v, int n, quant_format f) {
    float ext = 0.0f;
    for (int e = 0; e < n; e++)
        if (fabsf(v[e]) > fabsf(ext)) ext = v[e];
    return f == QUANT_Q8 ? fabsf(ext) / 127.0f : ext / -8.0f;
}

/* round_clamp(v, 128) without libm (truncf is a call on baseline x86-64, and this
 * runs for every weight at load): v = w / s lies in [-128, 128] by construction, so
 * the int conversion truncates exactly; the same steps, the same result. */
static inline int round_q(float v) {
    if (!(fabsf(v) < 256.0f)) return v < 0 ? -128 : 128; /* not reached for finite w */
    const int t = (int)v;
    /* branch-free: the rounding direction is a coin toss per weight */
    const int away = fabsf(v - (float)t) >= 0.5f, sign = 1 - 2 * (v < 0);
    return t + away * sign;
}

void quant_rows(qmatrix *qm, const void *w, kdtype wt, int j0, int j1) {
    const int k = qm->cols, kp = qm->cols_padded, nb = kp / QUANT_BLOCK;
    const size_t rb = quant_row_bytes(qm->format, k);
    const int qlo = qm->format == QUANT_Q8 ? -127 : -8;
    const int qhi = qm->format == QUANT_Q8 ? 127 : 7;
    const int zp = zp_of(qm->format);
    float v[QUANT_BLOCK];
    for (int j = j0; j < j1; j++) {
        const char *src = (const char *)w + (size_t)j * k * src_size(wt);
        uint8_t *row = qm->q + (size_t)j * rb;
        float *sc = qm->scale + (size_t)j * nb;
        for (int b = 0; b < nb; b++) {
            const int e0 = b * QUANT_BLOCK;
            const int n = k - e0 >= QUANT_BLOCK ? QUANT_BLOCK : k - e0 > 0 ? k - e0 : 0;
            for (int e = 0; e < n; e++) v[e] = kdtype_at(src, wt, (size_t)(e0 + e));
            /* a block whose scale underflows to 0 (or is all zero) stores q = 0 */
            const float s = n ? block_scale(v, n, qm->format) : 0.0f;
            sc[b] = s;
            for (int e = 0; e < QUANT_BLOCK; e++) {
                int q = 0;
                if (e < n && s != 0.0f) {
                    q = round_q(v[e] / s);
                    q = q < qlo ? qlo : q > qhi ? qhi : q;
                }
                put_u(row, qm->format, e0 + e, q + zp);
            }
        }
    }
}

void dequant_rows(float *out, const qmatrix *qm, int j0, int j1) {
    const int k = qm->cols, nb = qm->cols_padded / QUANT_BLOCK;
    const size_t rb = quant_row_bytes(qm->format, k);
    const int zp = zp_of(qm->format);
    for (int j = j0; j < j1; j++) {
        const uint8_t *row = qm->q + (size_t)j * rb;
        const float *sc = qm->scale + (size_t)j * nb;
        float *o = out + (size_t)(j - j0) * k;
        for (int e = 0; e < k; e++)
            o[e] = sc[e / QUANT_BLOCK] * (float)(get_u(row, qm->format, e) - zp);
    }
}

/* ---- reference kernels ---- */

void quant_act_ref(qact *qa, const float *x, int k) {
    const int kp = quant_padded_cols(k), nb = kp / QUANT_BLOCK;
    for (int b = 0; b < nb; b++) {
        int e0 = b * QUANT_BLOCK, e1 = e0 + QUANT_BLOCK < k ? e0 + QUANT_BLOCK : k;
        float amax = 0.0f;
        for (int e = e0; e < e1; e++) amax = fmaxf(amax, fabsf(x[e]));
        float s = amax / 127.0f;
        int32_t sum = 0;
        for (int e = e0; e < e0 + QUANT_BLOCK; e++) {
            int q = 0;
            if (e < e1 && s > 0.0f) q = (int)round_clamp(x[e] / s, 127.0f);
            qa->q[e] = (int8_t)q;
            sum += q;
        }
        qa->scale[b] = s;
        qa->sum[b] = sum;
    }
}

/* Row j of qm . one quantised activation row, blocks added in order. */
static float dot_q_ref(const qmatrix *qm, const qact *qa, int j) {
    const int nb = qm->cols_padded / QUANT_BLOCK;
    const uint8_t *row = qm->q + (size_t)j * quant_row_bytes(qm->format, qm->cols);
    const float *sw = qm->scale + (size_t)j * nb;
    const int zp = zp_of(qm->format);
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int e = b * QUANT_BLOCK; e < (b + 1) * QUANT_BLOCK; e++)
            isum += get_u(row, qm->format, e) * qa->q[e];
        isum -= zp * qa->sum[b];
        float d = sw[b] * qa->scale[b];
        acc += d * (float)isum;
    }
    return acc;
}

void matvec_rows_ref(float *y, size_t ldy, const qmatrix *qm, const qact *qa, int nr, int j0,
                     int j1) {
    for (int j = j0; j < j1; j++) /* the weight row stays in cache for every activation row */
        for (int a = 0; a < nr; a++) y[(size_t)a * ldy + (size_t)j] = dot_q_ref(qm, &qa[a], j);
}

void matvec_q_ref(float *y, const qmatrix *qm, const qact *qa, int j0, int j1) {
    matvec_rows_ref(y, 0, qm, qa, 1, j0, j1);
}

/* ---- the table ---- */

void quant_kernels_for(quant_kernels *t, cpu_isa isa) {
    /* AVX-512 F/BW/VL without VNNI (Skylake-X) has no vpdpbusd: use the AVX2 code. */
    if (isa == ISA_AVX512 && !cpu_features_get()->avx512vnni) isa = ISA_AVX2;
    switch (isa) {
    case ISA_AVX512:
        t->act = quant_act_avx512;
        t->matvec = matvec_q_avx512;
        t->dequant = dequant_rows_avx512;
        t->matvec_rows = matvec_rows_avx512;
        break;
    case ISA_AVX2:
        t->act = quant_act_avx2;
        t->matvec = matvec_q_avx2;
        t->dequant = dequant_rows_avx2;
        t->matvec_rows = matvec_rows_avx2;
        break;
    case ISA_REF:
        t->act = quant_act_ref;
        t->matvec = matvec_q_ref;
        t->dequant = dequant_rows;
        t->matvec_rows = matvec_rows_ref;
        break;
    }
}

/* ---- matmul_q: the threaded driver ---- */

/* Panels of dequantised weight rows: 48 rows of 3584 (672 KB, in L2 beside a block of
 * x) for the 7B widths, fewer (a multiple of 3, the tile width) for wider rows. */
#define PANEL_FLOATS (48 * 3584)

/* Per-thread scratch, static so the forward pass never allocates: the quantised
 * activation rows of matmul_q_int8, packed at their padded width kp (QUANT_INT8_ROWS
 * rows of QUANT_MAX_COLS, so 16 * QUANT_MAX_COLS / kp rows of a narrower matrix),
 * written by the calling thread's team and read by it. */
#define ACT_POOL ((size_t)QUANT_INT8_ROWS * QUANT_MAX_COLS)
static _Thread_local int8_t act_q[ACT_POOL];
static _Thread_local float act_scale[ACT_POOL / QUANT_BLOCK];
static _Thread_local int32_t act_sum[ACT_POOL / QUANT_BLOCK];
static _Thread_local float panel[PANEL_FLOATS];
/* the panel rounded to bf16 for --compute bf16: rows padded to 32 elements */
static _Thread_local uint16_t panel_bf16[PANEL_FLOATS + 48 * 32];

/* Activation rows per pass over the weights (the multi-row kernel takes 8 per pass
 * over a range, so more than 8 go through the range in tiles that stay in L2). */
#define INT8_GROUP_MAX 64

int matmul_q_int8_rows(int k) {
    const size_t g = ACT_POOL / (size_t)quant_padded_cols(k);
    return g > INT8_GROUP_MAX ? INT8_GROUP_MAX : (int)g;
}

void matmul_q_int8(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt,
                   int n) {
    const int k = qm->cols, m = qm->rows, kp = qm->cols_padded;
    const int group = matmul_q_int8_rows(k);
    void (*act)(qact *, const float *, int) = qkern.act;
    void (*mvr)(float *, size_t, const qmatrix *, const qact *, int, int, int) = qkern.matvec_rows;
    /* ~128 KB of weight rows per tile when more than 8 rows re-read it */
    int tile = (int)(128 * 1024 / quant_row_bytes(qm->format, k));
    tile = tile < 4 ? 4 : tile - tile % 4;
    qact qa[INT8_GROUP_MAX];
    for (int i0 = 0; i0 < n; i0 += group) {
        const int nr = n - i0 < group ? n - i0 : group;
        for (int i = 0; i < nr; i++)
            qa[i] = (qact){act_q + (size_t)i * kp, act_scale + (size_t)i * (kp / QUANT_BLOCK),
                           act_sum + (size_t)i * (kp / QUANT_BLOCK)};
        float *yg = y + (size_t)i0 * m;
        const float *xg = x + (size_t)i0 * k;
#pragma omp parallel if ((size_t)m * k > 32768)
        {
#pragma omp for schedule(static)
            for (int i = 0; i < nr; i++) act(&qa[i], xg + (size_t)i * k, k);
            /* one contiguous range of weight rows per thread, so each call streams it
             * from start to end (see matvec_rows_avx512); the barrier above publishes qa */
            const int nt = omp_get_num_threads(), id = omp_get_thread_num();
            const int per = ((m + nt - 1) / nt + 3) / 4 * 4;
            const int j0 = id * per < m ? id * per : m, j1 = j0 + per < m ? j0 + per : m;
            if (nr <= 8) {
                if (j0 < j1) mvr(yg, (size_t)m, qm, qa, nr, j0, j1);
            } else {
                for (int t0 = j0; t0 < j1; t0 += tile)
                    mvr(yg, (size_t)m, qm, qa, nr, t0, t0 + tile < j1 ? t0 + tile : j1);
            }
            if (bias)
                for (int i = 0; i < nr; i++) {
                    float *yi = yg + (size_t)i * m;
                    for (int j = j0; j < j1; j++) yi[j] = yi[j] + kdtype_at(bias, bt, (size_t)j);
                }
        }
    }
}

/* matmul_q_panels under --compute bf16: x rounded to bf16 once, each dequantised panel
 * rounded to bf16 and multiplied by the bf16 tile kernel (gemm_bf16.c). Returns -1
 * (nothing written) when x's bf16 rows cannot be allocated. */
static int panels_bf16(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt,
                       int n) {
    const int k = qm->cols, m = qm->rows, kp = bf16_padded_k(k), mb = bf16_row_block(k);
    uint16_t *xb = bf16_rows_alloc(n, k);
    if (!xb) return -1;
    x_to_bf16(&kern, xb, x, n, k);
    int nb = PANEL_FLOATS / k;
    nb = nb > 48 ? 48 : nb;
    nb -= nb % 4; /* whole 4 x 4 tiles */
    const int n_cb = (m + nb - 1) / nb;
    const size_t bsz = bt == KDT_F32 ? 4 : 2;
    matmul_bf16_block_fn blk = kern.matmul_bf16_block;
    void (*deq)(float *, const qmatrix *, int, int) = qkern.dequant;
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)m * k * (size_t)n > 32768)
    for (int cb = 0; cb < n_cb; cb++) {
        int j0 = cb * nb, j1 = j0 + nb < m ? j0 + nb : m;
        deq(panel, qm, j0, j1);
        bf16_round_rows(&kern, panel_bf16, panel, j1 - j0, k);
        const void *bj = bias ? (const char *)bias + (size_t)j0 * bsz : NULL;
        for (int i0 = 0; i0 < n; i0 += mb) /* a block of x's rows in L2 per pass */
            blk(y + j0, m, xb, panel_bf16, kp, j1 - j0, bj, bt, k, i0, i0 + mb < n ? i0 + mb : n,
                0, j1 - j0);
    }
    free(xb);
    return 0;
}

void matmul_q_panels(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt,
                     int n) {
    if (n <= 0) return;
    if (kern.compute == COMPUTE_BF16 && kern.matmul_bf16_block &&
        panels_bf16(y, x, qm, bias, bt, n) == 0)
        return;
    const int k = qm->cols, m = qm->rows;
    int nb = PANEL_FLOATS / k;
    nb = nb > 48 ? 48 : nb;
    nb -= nb % 3;
    /* rows of x per block: as matmul_wt_blocked, ~448 KB of x stays in L2 */
    int mb = (int)((size_t)448 * 1024 / ((size_t)k * sizeof(float)));
    mb = mb < 8 ? 8 : mb > 256 ? 256 : mb;
    mb -= mb % 4;
    const int n_cb = (m + nb - 1) / nb;
    const size_t bsz = bt == KDT_F32 ? 4 : 2;
    void (*blk)(float *, const float *, const void *, kdtype, const void *, kdtype, int, int, int,
                int, int, int) = kern.matmul_block;
    float (*dot)(const float *, const void *, kdtype, size_t) = kern.dot_wt;
    void (*deq)(float *, const qmatrix *, int, int) = qkern.dequant;
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)m * k * (size_t)n > 32768)
    for (int cb = 0; cb < n_cb; cb++) {
        int j0 = cb * nb, j1 = j0 + nb < m ? j0 + nb : m;
        deq(panel, qm, j0, j1);
        /* the panel's rows are W's rows j0..j1: shift y and bias so they start there */
        const void *bj = bias ? (const char *)bias + (size_t)j0 * bsz : NULL;
        for (int i0 = 0; i0 < n; i0 += mb) {
            int i1 = i0 + mb < n ? i0 + mb : n;
            if (blk) {
                blk(y + j0, x, panel, KDT_F32, bj, bt, k, m, i0, i1, 0, j1 - j0);
                continue;
            }
            for (int j = j0; j < j1; j++) /* ERGO_MATMUL=dot: one dot per element */
                for (int i = i0; i < i1; i++) {
                    float s = dot(x + (size_t)i * k, panel + (size_t)(j - j0) * k, KDT_F32,
                                  (size_t)k);
                    y[(size_t)i * m + j] = bias ? s + kdtype_at(bias, bt, (size_t)j) : s;
                }
        }
    }
}

void matmul_q(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt, int n) {
    if (n <= 0) return;
    if (n < MATMUL_BLOCKED_MIN_N) matmul_q_int8(y, x, qm, bias, bt, n);
    else matmul_q_panels(y, x, qm, bias, bt, n);
}

