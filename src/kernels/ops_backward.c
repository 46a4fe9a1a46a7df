/*
 * ops_backward.c - the backward of ops.c's element-wise and row-wise ops (rmsnorm,
 * silu_mul, gelu_erf) and of the embedding lookup (see backward.h).
 *
 * Each <op>_backward_ref is the definition (plain C, one element or row after the
 * other); <op>_backward is what training calls: the same arithmetic threaded over
 * rows or blocks (OpenMP) and, when `kern` is AVX2 or better, vectorised. Every
 * output element is computed the same way whichever thread does it, and parameter
 * gradients are summed over rows in index order, so no result depends on the
 * number of threads. What the fast versions change, against _ref:
 *   rmsnorm:   the order of the double sum(dy w x) (dx within a few f32 ulp; r and
 *              dw bit-identical: r is the forward's sequential double sum);
 *   silu_mul:  exp(-g) from the vectorised exp (attention.h, <= 2 ulp of expf);
 *   gelu_erf, embedding: nothing (threaded only: bit-identical).
 */
#include <immintrin.h>
#include <math.h>

#include "attention.h"
#include "backward.h"

/* Work is threaded from this many elements on, as in ops.c. */
#define OPS_BWD_PARALLEL_MIN 32768
/* rmsnorm's dw: rows are taken this many at a time (their r kept on the stack),
 * then the columns of dw are shared among the threads for those rows. */
#define RMS_ROW_BLOCK 256
/* Columns per task where a gradient is accumulated by columns (dw, dE). */
#define COL_BLOCK 64
/* silu_mul: elements per exp batch (a stack buffer). */
#define SILU_BLOCK 512

/* ---- rmsnorm ---- */

/* r = 1/sqrt(mean(x^2) + eps) exactly as rmsnorm (ops.c) computes it: sequential
 * double sum of squares, then f32. */
static float rms_inv(const float *x, int d, float eps) {
    double ss = 0.0;
    for (int t = 0; t < d; t++) ss += (double)x[t] * (double)x[t];
    return 1.0f / sqrtf((float)(ss / d) + eps);
}

/* dx (d) of one row given its r and S = sum_t dy_t w_t x_t (double):
 * dx = r (dy w) - c x, c = r^3 S / d rounded to f32 once. */
static void rms_row_dx_ref(float *dx, const float *dy, const float *x, const kweight *w, int d,
                           float r, double S) {
    const float c = (float)((double)r * (double)r * (double)r * S / d);
    for (int t = 0; t < d; t++) dx[t] = r * (dy[t] * kweight_at(w, (size_t)t)) - c * x[t];
}

static double rms_row_sum_ref(const float *dy, const float *x, const kweight *w, int d) {
    double S = 0.0;
    for (int t = 0; t < d; t++)
        S += (double)dy[t] * (double)kweight_at(w, (size_t)t) * (double)x[t];
    return S;
}

void rmsnorm_backward_ref(float *dx, float *dw, const float *dy, const float *x,
                          const kweight *w, int n, int d, float eps) {
    ERGO_ASSERT(w->cols == d && w->data);
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d, *dyi = dy + (size_t)i * d;
        const float r = rms_inv(xi, d, eps);
        rms_row_dx_ref(dx + (size_t)i * d, dyi, xi, w, d, r, rms_row_sum_ref(dyi, xi, w, d));
        if (dw)
            for (int t = 0; t < d; t++) dw[t] += dyi[t] * (xi[t] * r);
    }
}

#define T256 __attribute__((target("avx2,fma,f16c")))

/* 8 elements of a weight vector from element t, as f32 (exact). */
T256 static inline __m256 load8_wt(const void *w, kdtype dt, size_t t) {
    switch (dt) {
    case KDT_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + t))),
            16));
    case KDT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + t)));
    case KDT_F32: break;
    }
    return _mm256_loadu_ps((const float *)w + t);
}

/* S = sum_t dy_t w_t x_t in double, four lanes per half (order differs from _ref). */
T256 static double rms_row_sum_avx2(const float *dy, const float *x, const kweight *w, int d) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int t = 0;
    for (; t + 8 <= d; t += 8) {
        const __m256 p = _mm256_loadu_ps(dy + t), q = load8_wt(w->data, w->dt, (size_t)t),
                     v = _mm256_loadu_ps(x + t);
        const __m256d plo = _mm256_cvtps_pd(_mm256_castps256_ps128(p)),
                      phi = _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1));
        const __m256d qlo = _mm256_cvtps_pd(_mm256_castps256_ps128(q)),
                      qhi = _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1));
        const __m256d vlo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                      vhi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        a0 = _mm256_add_pd(a0, _mm256_mul_pd(_mm256_mul_pd(plo, qlo), vlo));
        a1 = _mm256_add_pd(a1, _mm256_mul_pd(_mm256_mul_pd(phi, qhi), vhi));
    }
    const __m256d a = _mm256_add_pd(a0, a1);
    __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    s2 = _mm_add_sd(s2, _mm_unpackhi_pd(s2, s2));
    double S = _mm_cvtsd_f64(s2);
    for (; t < d; t++) S += (double)dy[t] * (double)kweight_at(w, (size_t)t) * (double)x[t];
    return S;
}

/* The same float operations as rms_row_dx_ref, unfused: bit-identical for equal S. */
T256 static void rms_row_dx_avx2(float *dx, const float *dy, const float *x, const kweight *w,
                                 int d, float r, double S) {
    const float c = (float)((double)r * (double)r * (double)r * S / d);
    const __m256 vr = _mm256_set1_ps(r), vc = _mm256_set1_ps(c);
    int t = 0;
    for (; t + 8 <= d; t += 8) {
        const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + t), load8_wt(w->data, w->dt, (size_t)t));
        _mm256_storeu_ps(dx + t, _mm256_sub_ps(_mm256_mul_ps(vr, g),
                                               _mm256_mul_ps(vc, _mm256_loadu_ps(x + t))));
    }
    for (; t < d; t++) dx[t] = r * (dy[t] * kweight_at(w, (size_t)t)) - c * x[t];
}

/* dw[j0, j1) += sum over rows [0, rows) of dy x r, rows in index order (as _ref). */
T256 static void rms_cols_dw_avx2(float *dw, const float *dy, const float *x, const float *r,
                                  int rows, int d, int j0, int j1) {
    for (int i = 0; i < rows; i++) {
        const float *dyi = dy + (size_t)i * d, *xi = x + (size_t)i * d;
        const __m256 vr = _mm256_set1_ps(r[i]);
        int t = j0;
        for (; t + 8 <= j1; t += 8)
            _mm256_storeu_ps(dw + t, _mm256_add_ps(_mm256_loadu_ps(dw + t),
                                                   _mm256_mul_ps(_mm256_loadu_ps(dyi + t),
                                                                 _mm256_mul_ps(_mm256_loadu_ps(xi + t), vr))));
        for (; t < j1; t++) dw[t] += dyi[t] * (xi[t] * r[i]);
    }
}

static void rms_cols_dw_ref(float *dw, const float *dy, const float *x, const float *r, int rows,
                            int d, int j0, int j1) {
    for (int i = 0; i < rows; i++)
        for (int t = j0; t < j1; t++)
            dw[t] += dy[(size_t)i * d + t] * (x[(size_t)i * d + t] * r[i]);
}

void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const kweight *w,
                      int n, int d, float eps) {
    ERGO_ASSERT(w->cols == d && w->data);
    const int avx2 = kern.isa >= ISA_AVX2;
    const int ncb = (d + COL_BLOCK - 1) / COL_BLOCK;
    float r[RMS_ROW_BLOCK]; /* r of the rows of the current block, for dw */
#pragma omp parallel if ((size_t)n * (size_t)d >= OPS_BWD_PARALLEL_MIN)
    for (int i0 = 0; i0 < n; i0 += RMS_ROW_BLOCK) {
        const int rows = n - i0 < RMS_ROW_BLOCK ? n - i0 : RMS_ROW_BLOCK;
        const float *xb = x + (size_t)i0 * d, *dyb = dy + (size_t)i0 * d;
        /* dx, one row per iteration; the implicit barrier publishes r for dw */
#pragma omp for schedule(static)
        for (int i = 0; i < rows; i++) {
            const float *xi = xb + (size_t)i * d, *dyi = dyb + (size_t)i * d;
            float *dxi = dx + (size_t)(i0 + i) * d;
            r[i] = rms_inv(xi, d, eps);
            if (avx2)
                rms_row_dx_avx2(dxi, dyi, xi, w, d, r[i], rms_row_sum_avx2(dyi, xi, w, d));
            else
                rms_row_dx_ref(dxi, dyi, xi, w, d, r[i], rms_row_sum_ref(dyi, xi, w, d));
        }
        if (dw) {
            /* each column of dw gets this block's rows in index order, by one thread */
#pragma omp for schedule(static)
            for (int cb = 0; cb < ncb; cb++) {
                const int j0 = cb * COL_BLOCK, j1 = j0 + COL_BLOCK < d ? j0 + COL_BLOCK : d;
                if (avx2)
                    rms_cols_dw_avx2(dw, dyb, xb, r, rows, d, j0, j1);
                else
                    rms_cols_dw_ref(dw, dyb, xb, r, rows, d, j0, j1);
            }
        }
    }
}

/* ---- silu_mul: h = silu(g) u ---- */

/* One element given e = exp(-g): the forward's silu(g) = g / (1 + e), s = 1 / (1 + e). */
static inline void silu_one(float *dg, float *du, float dh, float g, float u, float e) {
    const float s = 1.0f / (1.0f + e);
    *dg = dh * u * s * (1.0f + g * (1.0f - s));
    *du = dh * (g / (1.0f + e));
}

void silu_mul_backward_ref(float *dg, float *du, const float *dh, const float *g,
                           const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) silu_one(dg + i, du + i, dh[i], g[i], u[i], expf(-g[i]));
}

/* len <= SILU_BLOCK elements: exp(-g) vectorised into a stack buffer, then the same
 * float operations as silu_one, eight at a time. */
T256 static void silu_block_avx2(float *dg, float *du, const float *dh, const float *g,
                                 const float *u, size_t len) {
    float e[SILU_BLOCK] = {0}; /* zeroed: keeps -Wmaybe-uninitialized quiet when len is 0 */
    for (size_t k = 0; k < len; k++) e[k] = -g[k];
    exp_f32_avx2(e, e, len);
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t k = 0;
    for (; k + 8 <= len; k += 8) {
        const __m256 vg = _mm256_loadu_ps(g + k), vdh = _mm256_loadu_ps(dh + k);
        const __m256 den = _mm256_add_ps(one, _mm256_loadu_ps(e + k));
        const __m256 s = _mm256_div_ps(one, den);
        const __m256 t = _mm256_add_ps(one, _mm256_mul_ps(vg, _mm256_sub_ps(one, s)));
        _mm256_storeu_ps(dg + k, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(vdh, _mm256_loadu_ps(u + k)), s), t));
        _mm256_storeu_ps(du + k, _mm256_mul_ps(vdh, _mm256_div_ps(vg, den)));
    }
    for (; k < len; k++) silu_one(dg + k, du + k, dh[k], g[k], u[k], e[k]);
}

void silu_mul_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                       size_t n) {
    if (kern.isa < ISA_AVX2) {
#pragma omp parallel for schedule(static) if (n >= OPS_BWD_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) silu_one(dg + i, du + i, dh[i], g[i], u[i], expf(-g[i]));
        return;
    }
    const size_t nb = (n + SILU_BLOCK - 1) / SILU_BLOCK;
#pragma omp parallel for schedule(static) if (n >= OPS_BWD_PARALLEL_MIN)
    for (size_t b = 0; b < nb; b++) {
        const size_t o = b * SILU_BLOCK, len = n - o < SILU_BLOCK ? n - o : SILU_BLOCK;
        silu_block_avx2(dg + o, du + o, dh + o, g + o, u + o, len);
    }
}

/* ---- gelu_erf: y = 0.5 x (1 + erf(x / sqrt 2)) ---- */

/* dy (Phi(x) + x phi(x)); Phi as the forward writes it, phi = exp(-x^2/2) / sqrt(2 pi). */
static inline float gelu_grad_one(float dy, float x) {
    const float Phi = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
    const float phi = expf(-0.5f * x * x) * 0.398942280401432678f;
    return dy * (Phi + x * phi);
}

void gelu_erf_backward_ref(float *dx, const float *dy, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] = gelu_grad_one(dy[i], x[i]);
}

/* Threaded only: erff has no vector twin here, and the merger's GELU is a small part
 * of a step. Bit-identical to _ref. */
void gelu_erf_backward(float *dx, const float *dy, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= OPS_BWD_PARALLEL_MIN / 4)
    for (size_t i = 0; i < n; i++) dx[i] = gelu_grad_one(dy[i], x[i]);
}

/* ---- embedding: scatter-add of rows ---- */

void embedding_backward_ref(float *dE, const float *dy, const int32_t *ids, int n, int d) {
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0) continue;
        float *e = dE + (size_t)ids[i] * d;
        const float *g = dy + (size_t)i * d;
        for (int j = 0; j < d; j++) e[j] += g[j];
    }
}

/* Threads own column blocks and walk the rows in index order: every element of dE
 * receives its additions in the order of _ref whatever the ids repeat (no atomics,
 * bit-identical to _ref). */
void embedding_backward(float *dE, const float *dy, const int32_t *ids, int n, int d) {
    const int ncb = (d + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)n * (size_t)d >= OPS_BWD_PARALLEL_MIN)
    for (int cb = 0; cb < ncb; cb++) {
        const int j0 = cb * COL_BLOCK, j1 = j0 + COL_BLOCK < d ? j0 + COL_BLOCK : d;
        for (int i = 0; i < n; i++) {
            if (ids[i] < 0) continue;
            float *e = dE + (size_t)ids[i] * d;
            const float *g = dy + (size_t)i * d;
            for (int j = j0; j < j1; j++) e[j] += g[j];
        }
    }
}
