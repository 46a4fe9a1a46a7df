/*
 * gemm.c - the matrix-matrix product y (n, m) = x (n, k) @ W^T (+ b) for many rows
 * (prefill, the vision encoder): register-blocked tiles, cache-blocked and threaded.
 *
 * Each output element is summed in exactly the order of the ISA's dot_wt (the
 * same two accumulators over alternate vector blocks, the same tail and the same
 * final reduction), only several outputs at once: a tile of R rows of x times C
 * rows of W keeps 2*R*C accumulators in registers, so each loaded x vector is
 * used C times and each converted weight vector R times. The result is therefore
 * bit-identical to the one-dot-per-element path, whatever n, the blocking or the
 * number of threads: a prompt prefilled in one chunk or in several, or decoded
 * token by token, gives the same numbers.
 *
 * Weights are read as stored (f32, bf16, f16) and converted to f32 in registers.
 */
#include <immintrin.h>

#include "base/half.h"
#include "kernels.h"

static size_t wt_size(kdtype t) { return t == KDT_F32 ? 4 : 2; }

/* Stores one output element the way matmul_wt always has: s, or s + bias[j]. */
static inline void put(float *y, float s, const void *bias, kdtype bt, int j) {
    *y = bias ? s + kdtype_at(bias, bt, (size_t)j) : s;
}

/* ---- scalar: one dot product per element (the remainder path of every ISA) ---- */

static void block_dots(float (*dot)(const float *, const void *, kdtype, size_t), float *y,
                       const float *x, const void *w, kdtype wt, const void *bias, kdtype bt,
                       int k, int m, int i0, int i1, int j0, int j1) {
    const size_t row_bytes = (size_t)k * wt_size(wt);
    for (int j = j0; j < j1; j++)
        for (int i = i0; i < i1; i++)
            put(&y[(size_t)i * m + j],
                dot(x + (size_t)i * k, (const char *)w + (size_t)j * row_bytes, wt, (size_t)k),
                bias, bt, j);
}

void matmul_block_ref(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                      kdtype bt, int k, int m, int i0, int i1, int j0, int j1) {
    block_dots(dot_wt_ref, y, x, w, wt, bias, bt, k, m, i0, i1, j0, j1);
}

/* ---- AVX-512: 4 rows x 3 weight rows, 24 accumulators + 4 x + 1 w registers ---- */

#define R512 4
#define C512 3

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl")))

T512 static inline __m512 w16(const void *w, kdtype wt, size_t i, __mmask16 m) {
    if (wt == KDT_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m256i v = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (wt == KDT_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
    return _mm512_cvtph_ps(v);
}

/* One tile; `wt` is a constant at each call site so the loads specialise. */
T512 static inline __attribute__((always_inline)) void tile512(float *y, const float *x,
                                                                const char *w, kdtype wt,
                                                                const void *bias, kdtype bt,
                                                                int k, int m, int i, int j) {
    const size_t rb = (size_t)k * wt_size(wt);
    const float *xr[R512];
    const char *wr[C512];
    for (int r = 0; r < R512; r++) xr[r] = x + (size_t)(i + r) * k;
    for (int c = 0; c < C512; c++) wr[c] = w + (size_t)(j + c) * rb;
    __m512 a0[R512][C512], a1[R512][C512];
#pragma GCC unroll 4
    for (int r = 0; r < R512; r++)
#pragma GCC unroll 3
        for (int c = 0; c < C512; c++) a0[r][c] = a1[r][c] = _mm512_setzero_ps();
    size_t t = 0;
    /* dot_wt_avx512's main loop: blocks 2b -> acc0, 2b+1 -> acc1 */
    for (; t + 32 <= (size_t)k; t += 32) {
        __m512 wv[C512];
#pragma GCC unroll 3
        for (int c = 0; c < C512; c++) wv[c] = w16(wr[c], wt, t, 0xffff);
#pragma GCC unroll 4
        for (int r = 0; r < R512; r++) {
            __m512 xv = _mm512_loadu_ps(xr[r] + t);
            __asm__("" : "+v"(xv)); /* one load, kept in a register for the C products */
#pragma GCC unroll 3
            for (int c = 0; c < C512; c++) a0[r][c] = _mm512_fmadd_ps(xv, wv[c], a0[r][c]);
        }
#pragma GCC unroll 3
        for (int c = 0; c < C512; c++) wv[c] = w16(wr[c], wt, t + 16, 0xffff);
#pragma GCC unroll 4
        for (int r = 0; r < R512; r++) {
            __m512 xv = _mm512_loadu_ps(xr[r] + t + 16);
            __asm__("" : "+v"(xv));
#pragma GCC unroll 3
            for (int c = 0; c < C512; c++) a1[r][c] = _mm512_fmadd_ps(xv, wv[c], a1[r][c]);
        }
    }
    /* the tail exactly as the dot products do it, per element (unrolled, so the
     * accumulators stay registers rather than an array in memory) */
#pragma GCC unroll 4
    for (int r = 0; r < R512; r++)
#pragma GCC unroll 3
        for (int c = 0; c < C512; c++) {
            __m512 acc0 = a0[r][c], acc1 = a1[r][c];
            size_t u = t;
            if (wt == KDT_F32) { /* dot_f32_avx512: one full block -> acc0, masked -> acc1 */
                for (; u + 16 <= (size_t)k; u += 16)
                    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(xr[r] + u), w16(wr[c], wt, u, 0xffff),
                                           acc0);
                if (u < (size_t)k) {
                    __mmask16 mk = (__mmask16)((1u << (k - u)) - 1u);
                    acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xr[r] + u),
                                           w16(wr[c], wt, u, mk), acc1);
                }
            } else { /* dot_wt_avx512: every remaining (masked) block -> acc0 */
                for (; u < (size_t)k; u += 16) {
                    size_t left = (size_t)k - u;
                    __mmask16 mk = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
                    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xr[r] + u),
                                           w16(wr[c], wt, u, mk), acc0);
                }
            }
            put(&y[(size_t)(i + r) * m + j + c], _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)),
                bias, bt, j + c);
        }
}

T512 void matmul_block_avx512(float *y, const float *x, const void *w, kdtype wt,
                              const void *bias, kdtype bt, int k, int m, int i0, int i1, int j0,
                              int j1) {
    int jt = j0 + (j1 - j0) / C512 * C512, it = i0 + (i1 - i0) / R512 * R512;
    /* Keep in L1 whichever operand is re-read: 4 rows of x when they fit (k <= 1280,
     * 20 KB), the weight rows passing from L2; else a triple of weight rows, the
     * rows of x passing from L2. */
    if ((size_t)k * sizeof(float) * R512 <= 20 * 1024) {
        for (int i = i0; i < it; i += R512)
            for (int j = j0; j < jt; j += C512) switch (wt) {
                case KDT_F32: tile512(y, x, w, KDT_F32, bias, bt, k, m, i, j); break;
                case KDT_BF16: tile512(y, x, w, KDT_BF16, bias, bt, k, m, i, j); break;
                case KDT_F16: tile512(y, x, w, KDT_F16, bias, bt, k, m, i, j); break;
                }
    } else {
        for (int j = j0; j < jt; j += C512)
            for (int i = i0; i < it; i += R512) switch (wt) {
                case KDT_F32: tile512(y, x, w, KDT_F32, bias, bt, k, m, i, j); break;
                case KDT_BF16: tile512(y, x, w, KDT_BF16, bias, bt, k, m, i, j); break;
                case KDT_F16: tile512(y, x, w, KDT_F16, bias, bt, k, m, i, j); break;
                }
    }
    block_dots(dot_wt_avx512, y, x, w, wt, bias, bt, k, m, it, i1, j0, jt);
    block_dots(dot_wt_avx512, y, x, w, wt, bias, bt, k, m, i0, i1, jt, j1);
}

/* ---- AVX2: 2 rows x 3 weight rows, 12 accumulators + 2 x + 1 w of 16 registers ---- */

#define R256 2
#define C256 3

#define T256 __attribute__((target("avx2,fma,f16c")))

T256 static inline __m256 w8(const void *w, kdtype wt, size_t i) {
    if (wt == KDT_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i v = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (wt == KDT_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
    return _mm256_cvtph_ps(v);
}

T256 static inline float hsum256(__m256 acc) { /* the reduction of dot_*_avx2 */
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}

T256 static inline __attribute__((always_inline)) void tile256(float *y, const float *x,
                                                                const char *w, kdtype wt,
                                                                const void *bias, kdtype bt,
                                                                int k, int m, int i, int j) {
    const size_t rb = (size_t)k * wt_size(wt);
    const float *xr[R256];
    const char *wr[C256];
    for (int r = 0; r < R256; r++) xr[r] = x + (size_t)(i + r) * k;
    for (int c = 0; c < C256; c++) wr[c] = w + (size_t)(j + c) * rb;
    __m256 a0[R256][C256], a1[R256][C256];
#pragma GCC unroll 2
    for (int r = 0; r < R256; r++)
#pragma GCC unroll 3
        for (int c = 0; c < C256; c++) a0[r][c] = a1[r][c] = _mm256_setzero_ps();
    size_t t = 0;
    for (; t + 16 <= (size_t)k; t += 16) {
        __m256 wv[C256];
#pragma GCC unroll 3
        for (int c = 0; c < C256; c++) wv[c] = w8(wr[c], wt, t);
#pragma GCC unroll 2
        for (int r = 0; r < R256; r++) {
            __m256 xv = _mm256_loadu_ps(xr[r] + t);
            __asm__("" : "+x"(xv)); /* one load, kept in a register for the C products */
#pragma GCC unroll 3
            for (int c = 0; c < C256; c++) a0[r][c] = _mm256_fmadd_ps(xv, wv[c], a0[r][c]);
        }
#pragma GCC unroll 3
        for (int c = 0; c < C256; c++) wv[c] = w8(wr[c], wt, t + 8);
#pragma GCC unroll 2
        for (int r = 0; r < R256; r++) {
            __m256 xv = _mm256_loadu_ps(xr[r] + t + 8);
            __asm__("" : "+x"(xv));
#pragma GCC unroll 3
            for (int c = 0; c < C256; c++) a1[r][c] = _mm256_fmadd_ps(xv, wv[c], a1[r][c]);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < R256; r++)
#pragma GCC unroll 3
        for (int c = 0; c < C256; c++) {
            __m256 acc0 = a0[r][c];
            size_t u = t;
            if (wt == KDT_F32) /* dot_f32_avx2 takes one more full block into acc0 */
                for (; u + 8 <= (size_t)k; u += 8)
                    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr[r] + u), w8(wr[c], wt, u), acc0);
            float s = hsum256(_mm256_add_ps(acc0, a1[r][c]));
            for (; u < (size_t)k; u++) s += xr[r][u] * kdtype_at(wr[c], wt, u);
            put(&y[(size_t)(i + r) * m + j + c], s, bias, bt, j + c);
        }
}

T256 void matmul_block_avx2(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                            kdtype bt, int k, int m, int i0, int i1, int j0, int j1) {
    int jt = j0 + (j1 - j0) / C256 * C256, it = i0 + (i1 - i0) / R256 * R256;
    for (int j = j0; j < jt; j += C256)
        for (int i = i0; i < it; i += R256) switch (wt) {
            case KDT_F32: tile256(y, x, w, KDT_F32, bias, bt, k, m, i, j); break;
            case KDT_BF16: tile256(y, x, w, KDT_BF16, bias, bt, k, m, i, j); break;
            case KDT_F16: tile256(y, x, w, KDT_F16, bias, bt, k, m, i, j); break;
            }
    block_dots(dot_wt_avx2, y, x, w, wt, bias, bt, k, m, it, i1, j0, jt);
    block_dots(dot_wt_avx2, y, x, w, wt, bias, bt, k, m, i0, i1, jt, j1);
}

/* ---- the cache-blocked, threaded driver ---- */

void matmul_wt_blocked(const kernel_table *t, float *y, const float *x, const void *w, kdtype wt,
                       const void *bias, kdtype bt, int n, int k, int m) {
    /* Row blocks: x's block (MB x k f32) should stay in the core's L2 (1 MB on Zen 4)
     * while the weight rows pass; column blocks of NB weight rows give each thread
     * a share of work that is a multiple of every tile width. */
    int mb = (int)((size_t)448 * 1024 / ((size_t)k * sizeof(float)));
    mb = mb < 8 ? 8 : mb > 256 ? 256 : mb;
    mb -= mb % 4;
    const int nb = 48;
    const int n_rb = (n + mb - 1) / mb, n_cb = (m + nb - 1) / nb;
    const long blocks = (long)n_rb * n_cb;
    void (*blk)(float *, const float *, const void *, kdtype, const void *, kdtype, int, int, int,
                int, int, int) = t->matmul_block;
    /* column blocks inner: consecutive blocks of one thread share the rows of x */
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)m * k * (size_t)n > 32768)
    for (long b = 0; b < blocks; b++) {
        int rb = (int)(b / n_cb), cb = (int)(b % n_cb);
        int i0 = rb * mb, i1 = i0 + mb < n ? i0 + mb : n;
        int j0 = cb * nb, j1 = j0 + nb < m ? j0 + nb : m;
        blk(y, x, w, wt, bias, bt, k, m, i0, i1, j0, j1);
    }
}
