/*
 * gemm_bf16.c - the many-row product y (n, m) = x (n, k) @ W^T (+ b) with bf16 operands
 * and f32 accumulation: the `--compute bf16` path of prefill and the vision encoder.
 *
 * The activations are rounded to bf16 once per call (round to nearest even, as torch's
 * .to(torch.bfloat16)); the weights are bf16 as stored (or a dequantised panel rounded
 * to bf16, quant.c). Products of two bf16 values are exact in f32, so the only
 * differences from an f32 product are the rounding of x and the order of the f32 sums.
 *
 * matmul_bf16_block_ref is the definition (a plain loop, sums in k order). The
 * AVX-512 BF16 kernel (vdpbf16ps: 32 bf16 products summed pairwise into 16 f32 lanes
 * per instruction, twice the f32 FMA rate) keeps a 4 x 4 tile of dot-product
 * accumulators and reduces the 16 of them together at the end. Every output, the
 * tile's remainder rows and columns included, goes through the same tile code (rows of
 * x padded with zeros, missing weight rows clamped and not stored), so the result does
 * not depend on n, on blocking or on the number of threads, like the f32 path.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "kernels.h"

int bf16_padded_k(int k) { return (k + 31) / 32 * 32; }
int bf16_padded_rows(int n) { return (n + 3) / 4 * 4; }

/* ---- the activations as bf16 rows of kp = bf16_padded_k(k) elements ---- */

void x_to_bf16_ref(uint16_t *xb, const float *x, int n, int k) {
    const int kp = bf16_padded_k(k), np = bf16_padded_rows(n);
    for (int i = 0; i < np; i++) {
        uint16_t *o = xb + (size_t)i * kp;
        int t = 0;
        if (i < n)
            for (; t < k; t++) o[t] = f32_to_bf16_one(x[(size_t)i * k + t]);
        for (; t < kp; t++) o[t] = 0;
    }
}

/* The same rounding as f32_to_bf16_one, in integer lanes (so denormals are kept,
 * unlike vcvtneps2bf16, and the two paths are bit-identical). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m256i
round16_bf16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    r = _mm512_mask_mov_epi32(r, nan, q);
    return _mm512_cvtepi32_epi16(r);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void
rows_to_bf16_avx512(uint16_t *xb, const float *x, int i0, int i1, int n, int k) {
    const int kp = bf16_padded_k(k);
    for (int i = i0; i < i1; i++) {
        uint16_t *o = xb + (size_t)i * kp;
        if (i >= n) {
            memset(o, 0, (size_t)kp * 2);
            continue;
        }
        const float *xi = x + (size_t)i * k;
        for (int t = 0; t < kp; t += 16) {
            int left = k - t;
            __mmask16 m = left >= 16 ? (__mmask16)0xffff
                          : left > 0 ? (__mmask16)((1u << left) - 1u)
                                     : (__mmask16)0;
            /* masked-off lanes load 0.0f, which rounds to the 0 padding */
            _mm256_storeu_si256((__m256i *)(o + t), round16_bf16(_mm512_maskz_loadu_ps(m, xi + t)));
        }
    }
}

void x_to_bf16_avx512(uint16_t *xb, const float *x, int n, int k) {
    const int np = bf16_padded_rows(n);
#pragma omp parallel for schedule(static) if ((size_t)n * k >= 65536)
    for (int i = 0; i < np; i += 4) rows_to_bf16_avx512(xb, x, i, i + 4, n, k);
}

void bf16_round_rows(const kernel_table *t, uint16_t *xb, const float *x, int n, int k) {
    if (t->isa == ISA_AVX512) rows_to_bf16_avx512(xb, x, 0, bf16_padded_rows(n), n, k);
    else x_to_bf16_ref(xb, x, n, k);
}

/* ---- scalar reference ---- */

static inline void put(float *y, float s, const void *bias, kdtype bt, int j) {
    *y = bias ? s + kdtype_at(bias, bt, (size_t)j) : s;
}

void matmul_bf16_block_ref(float *y, int ldy, const uint16_t *xb, const uint16_t *w, int ldw,
                           int m, const void *bias, kdtype bt, int k, int i0, int i1, int j0,
                           int j1) {
    const int kp = bf16_padded_k(k);
    (void)m;
    for (int i = i0; i < i1; i++)
        for (int j = j0; j < j1; j++) {
            const uint16_t *xr = xb + (size_t)i * kp, *wr = w + (size_t)j * ldw;
            float s = 0.0f;
            for (int t = 0; t < k; t++) s += bf16_to_f32_one(xr[t]) * bf16_to_f32_one(wr[t]);
            put(&y[(size_t)i * ldy + j], s, bias, bt, j);
        }
}

/* ---- AVX-512 BF16: a 4 x 4 tile, 16 accumulators + 4 weight vectors + 1 x ---- */

#define TBF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

/* lane 4q+s of the result = the sum of the 16 lanes of v[4q+s]; every lane is summed
 * in the same association, so no output depends on its place in the tile */
TBF16 static inline __m512 sum16x16(const __m512 *v) {
    __m512 t[8], u[4];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++)
        t[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                             _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        __m512d a = _mm512_castps_pd(t[2 * q]), b = _mm512_castps_pd(t[2 * q + 1]);
        u[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* One 4 x 4 tile over elements [k0, k0 + kl) of the rows: y = the sums (first chunk)
 * or y += them, plus the bias after the last chunk. */
TBF16 static inline __attribute__((always_inline)) void
tile_bf16(float *y, int ldy, const uint16_t *xb, int kp, const uint16_t *w, int ldw, int m,
          const void *bias, kdtype bt, int k0, int kl, int last, int i, int i1, int j) {
    const uint16_t *xr[4], *wr[4];
    for (int r = 0; r < 4; r++) xr[r] = xb + (size_t)(i + r) * kp + k0;
    /* a missing weight row (j + c >= m) reads row m-1 and is not stored */
    for (int c = 0; c < 4; c++) wr[c] = w + (size_t)(j + c < m ? j + c : m - 1) * ldw + k0;
    __m512 acc[16];
#pragma GCC unroll 16
    for (int a = 0; a < 16; a++) acc[a] = _mm512_setzero_ps();
    int t = 0;
    for (; t + 32 <= kl; t += 32) {
        __m512i wv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) wv[c] = _mm512_loadu_si512(wr[c] + t);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512i xv = _mm512_loadu_si512(xr[r] + t);
            __asm__("" : "+v"(xv)); /* one load, kept in a register for the 4 products */
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                acc[r * 4 + c] = _mm512_dpbf16_ps(acc[r * 4 + c], (__m512bh)xv, (__m512bh)wv[c]);
        }
    }
    if (t < kl) { /* the last partial block: weights masked, x is zero-padded to kp */
        __mmask32 mk = (__mmask32)((1ull << (kl - t)) - 1u);
        __m512i wv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) wv[c] = _mm512_maskz_loadu_epi16(mk, wr[c] + t);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512i xv = _mm512_loadu_si512(xr[r] + t);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                acc[r * 4 + c] = _mm512_dpbf16_ps(acc[r * 4 + c], (__m512bh)xv, (__m512bh)wv[c]);
        }
    }
    __m512 s = sum16x16(acc);
    int ncols = m - j < 4 ? m - j : 4;
    __mmask8 cm = (__mmask8)((1u << ncols) - 1u);
    __m128 b = _mm_setzero_ps();
    if (bias && last) {
        float bb[4] = {0, 0, 0, 0};
        for (int c = 0; c < ncols; c++) bb[c] = kdtype_at(bias, bt, (size_t)(j + c));
        b = _mm_loadu_ps(bb);
    }
    __m128 rows[4] = {_mm512_extractf32x4_ps(s, 0), _mm512_extractf32x4_ps(s, 1),
                      _mm512_extractf32x4_ps(s, 2), _mm512_extractf32x4_ps(s, 3)};
    for (int r = 0; r < 4 && i + r < i1; r++) {
        float *yr = y + (size_t)(i + r) * ldy + j;
        __m128 v = rows[r];
        if (k0 > 0) v = _mm_add_ps(_mm_maskz_loadu_ps(cm, yr), v);
        if (bias && last) v = _mm_add_ps(v, b);
        _mm_mask_storeu_ps(yr, cm, v);
    }
}

/* Long rows (the MLP's down projection, k = 18944) are summed in chunks of this many
 * elements, so that a tile's 4 weight rows (16 KB) stay in L1 while the rows of x
 * pass; the chunks depend on k alone, so results still do not depend on n. */
#define BF16_K_CHUNK 2048
static int k_chunk(int k) { return k > 2 * BF16_K_CHUNK ? BF16_K_CHUNK : k; }

TBF16 void matmul_bf16_block_avx512bf16(float *y, int ldy, const uint16_t *xb, const uint16_t *w,
                                        int ldw, int m, const void *bias, kdtype bt, int k, int i0,
                                        int i1, int j0, int j1) {
    const int kp = bf16_padded_k(k), kc = k_chunk(k);
    for (int k0 = 0; k0 < k; k0 += kc) {
        int kl = k - k0 < kc ? k - k0 : kc, last = k0 + kl == k;
        /* weight rows outer: 4 of them stay in L1 while the rows of x pass */
        for (int j = j0; j < j1; j += 4)
            for (int i = i0; i < i1; i += 4)
                tile_bf16(y, ldy, xb, kp, w, ldw, m, bias, bt, k0, kl, last, i, i1, j);
    }
}

/* ---- the cache-blocked, threaded driver ---- */

int bf16_row_block(int k) {
    /* x's row block (MB rows of one k chunk, ~512 KB of bf16) stays in L2 while
     * column blocks of weight rows pass; a multiple of the 4 x 4 tile */
    int mb = (int)((size_t)512 * 1024 / ((size_t)bf16_padded_k(k_chunk(k)) * 2));
    mb = mb < 8 ? 8 : mb > 512 ? 512 : mb;
    return mb - mb % 4;
}

void matmul_bf16_xb(const kernel_table *t, float *y, const uint16_t *xb, const uint16_t *w,
                    const void *bias, kdtype bt, int n, int k, int m) {
    const int mb = bf16_row_block(k), nb = 48;
    const int n_rb = (n + mb - 1) / mb, n_cb = (m + nb - 1) / nb;
    const long blocks = (long)n_rb * n_cb;
    matmul_bf16_block_fn blk = t->matmul_bf16_block;
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)m * k * (size_t)n > 32768)
    for (long b = 0; b < blocks; b++) {
        int rb = (int)(b / n_cb), cb = (int)(b % n_cb);
        int i0 = rb * mb, i1 = i0 + mb < n ? i0 + mb : n;
        int j0 = cb * nb, j1 = j0 + nb < m ? j0 + nb : m;
        blk(y, m, xb, w, k, m, bias, bt, k, i0, i1, j0, j1);
    }
}

void x_to_bf16(const kernel_table *t, uint16_t *xb, const float *x, int n, int k) {
    if (t->isa == ISA_AVX512) x_to_bf16_avx512(xb, x, n, k);
    else x_to_bf16_ref(xb, x, n, k);
}

uint16_t *bf16_rows_alloc(int n, int k) {
    size_t bytes = (size_t)bf16_padded_rows(n) * (size_t)bf16_padded_k(k) * 2;
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

int matmul_bf16(const kernel_table *t, float *y, const float *x, const uint16_t *w,
                const void *bias, kdtype bt, int n, int k, int m) {
    uint16_t *xb = bf16_rows_alloc(n, k);
    if (!xb) return -1;
    x_to_bf16(t, xb, x, n, k);
    matmul_bf16_xb(t, y, xb, w, bias, bt, n, k, m);
    free(xb);
    return 0;
}

void matmul_bf16_ref(float *y, const float *x, const uint16_t *w, const void *bias, kdtype bt,
                     int n, int k, int m) {
    uint16_t *xb = bf16_rows_alloc(n, k);
    ERGO_ASSERT(xb);
    x_to_bf16_ref(xb, x, n, k);
    matmul_bf16_block_ref(y, m, xb, w, k, m, bias, bt, k, 0, n, 0, m);
    free(xb);
}
