/*
 * ops.c - the operations of a transformer forward pass on f32 activations, with
 * weights read as stored (f32, bf16 or f16) and f32 accumulation.
 *
 * matmul_wt_ref is the definition of correct (a plain triple loop); matmul_wt is
 * the same product computed column by column with the dispatched dot product
 * and OpenMP over output columns for few rows (decode), and by gemm.c's
 * register-blocked tiles for many (bit-identical to the dot products). Each
 * output element is one dot product, so the
 * result does not depend on the number of threads.
 */
#include <immintrin.h>
#include <math.h>

#include "base/half.h"
#include "kernels.h"
#include "quant.h"

/* ---- dot products of an f32 vector with a weight row in its stored type ---- */

float dot_wt_ref(const float *x, const void *w, kdtype wt, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) s += x[i] * kdtype_at(w, wt, i);
    return s;
}

__attribute__((target("avx2,fma,f16c"))) float dot_wt_avx2(const float *x, const void *w,
                                                           kdtype wt, size_t n) {
    if (wt == KDT_F32) return dot_f32_avx2(x, w, n);
    const uint16_t *h = w;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(h + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(h + i + 8));
        __m256 wa, wb;
        if (wt == KDT_BF16) {
            wa = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(a), 16));
            wb = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
        } else {
            wa = _mm256_cvtph_ps(a);
            wb = _mm256_cvtph_ps(b);
        }
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), wa, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), wb, acc1);
    }
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float s = _mm_cvtss_f32(s4);
    for (; i < n; i++) s += x[i] * kdtype_at(w, wt, i);
    return s;
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 load16_wt(const uint16_t *h,
                                                                           kdtype wt,
                                                                           __mmask16 m) {
    __m256i v = _mm256_maskz_loadu_epi16(m, h);
    if (wt == KDT_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
    return _mm512_cvtph_ps(v);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) float dot_wt_avx512(const float *x,
                                                                        const void *w, kdtype wt,
                                                                        size_t n) {
    if (wt == KDT_F32) return dot_f32_avx512(x, w, n);
    const uint16_t *h = w;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load16_wt(h + i, wt, 0xffff), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), load16_wt(h + i + 16, wt, 0xffff),
                               acc1);
    }
    for (; i < n; i += 16) {
        size_t left = n - i;
        __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), load16_wt(h + i, wt, m), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* ---- matrix product with a PyTorch Linear weight ---- */

void matmul_wt_ref(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                   kdtype bt, int n, int k, int m) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            float s = 0.0f;
            for (int t = 0; t < k; t++)
                s += x[(size_t)i * k + t] * kdtype_at(w, wt, (size_t)j * k + t);
            y[(size_t)i * m + j] = bias ? s + kdtype_at(bias, bt, (size_t)j) : s;
        }
}

static size_t kdtype_size(kdtype t) { return t == KDT_F32 ? 4 : 2; }

void matmul_wt(float *y, const float *x, const void *w, kdtype wt, const void *bias, kdtype bt,
               int n, int k, int m) {
    if (n >= MATMUL_BLOCKED_MIN_N && kern.compute == COMPUTE_BF16 && wt == KDT_BF16 &&
        matmul_bf16(&kern, y, x, w, bias, bt, n, k, m) == 0)
        return; /* (out of memory for x's bf16 rows: the f32 path below needs none) */
    if (n >= MATMUL_BLOCKED_MIN_N && kern.matmul_block) {
        matmul_wt_blocked(&kern, y, x, w, wt, bias, bt, n, k, m);
        return;
    }
    float (*dot)(const float *, const void *, kdtype, size_t) = kern.dot_wt;
    const size_t row_bytes = (size_t)k * kdtype_size(wt);
    /* Columns outermost: each thread streams its weight rows once per call while the
     * (smaller) activations stay in cache. */
#pragma omp parallel for schedule(static) if ((size_t)m * k * (size_t)n > 32768)
    for (int j = 0; j < m; j++) {
        const void *wj = (const char *)w + (size_t)j * row_bytes;
        float b = bias ? kdtype_at(bias, bt, (size_t)j) : 0.0f;
        for (int i = 0; i < n; i++) {
            float s = dot(x + (size_t)i * k, wj, wt, (size_t)k);
            y[(size_t)i * m + j] = bias ? s + b : s;
        }
    }
}

/* ---- element-wise and row-wise ops ---- */

/* Element-wise work is threaded from this many elements on (below it the fork
 * costs more than it saves); each element or row is computed the same way
 * whichever thread does it. */
#define OPS_PARALLEL_MIN 32768

void rmsnorm(float *y, const float *x, const kweight *w, int n, int d, float eps) {
    ERGO_ASSERT(w->cols == d && w->data);
#pragma omp parallel for schedule(static) if ((size_t)n * (size_t)d >= OPS_PARALLEL_MIN && n > 1)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        double ss = 0.0;
        for (int t = 0; t < d; t++) ss += (double)xi[t] * (double)xi[t];
        /* Qwen2RMSNorm: x * rsqrt(mean(x^2) + eps), in f32, then times the weight */
        float inv = 1.0f / sqrtf((float)(ss / d) + eps);
        for (int t = 0; t < d; t++) yi[t] = kweight_at(w, (size_t)t) * (xi[t] * inv);
    }
}

void silu_mul(float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) if (n >= OPS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void gelu_erf(float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= OPS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

void softmax(float *x, size_t n) {
    if (n == 0) return;
    float mx = x[0];
    for (size_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += (double)x[i];
    }
    float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

void add_inplace(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= OPS_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void load_row_f32(float *out, const void *w, kdtype wt, size_t offset, size_t n) {
    switch (wt) {
    case KDT_F32:
        for (size_t i = 0; i < n; i++) out[i] = ((const float *)w)[offset + i];
        break;
    case KDT_BF16: kern.bf16_to_f32(out, (const uint16_t *)w + offset, n); break;
    case KDT_F16: kern.f16_to_f32(out, (const uint16_t *)w + offset, n); break;
    }
}

void kweight_row_f32(float *out, const kweight *w, int row) {
    load_row_f32(out, w->data, w->dt, (size_t)row * (size_t)w->cols, (size_t)w->cols);
}

void linear_forward_path(float *y, const float *x, const kweight *w, const kweight *b, int n,
                         linear_path path) {
    const void *bias = b ? b->data : NULL;
    const kdtype bt = b ? b->dt : KDT_F32;
    if (!w->q) {
        matmul_wt(y, x, w->data, w->dt, bias, bt, n, w->cols, w->rows);
        return;
    }
    ERGO_ASSERT(w->q->rows == w->rows && w->q->cols == w->cols);
    switch (path) {
    case LINEAR_INT8: matmul_q_int8(y, x, w->q, bias, bt, n); break;
    case LINEAR_PANELS: matmul_q_panels(y, x, w->q, bias, bt, n); break;
    case LINEAR_AUTO: matmul_q(y, x, w->q, bias, bt, n); break;
    }
}

void linear_forward(float *y, const float *x, const kweight *w, const kweight *b, int n) {
    linear_forward_path(y, x, w, b, n, LINEAR_AUTO);
}
