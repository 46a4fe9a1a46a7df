/*
 * attention.c - tiled attention with an online softmax (see attention.h): the scalar
 * reference, the vectorised exp, and the AVX2 / AVX-512 kernels (one body,
 * attention_simd.h, included once per vector width).
 */
#include "attention.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "base/half.h"

attention_kernels akern = {attn_block_ref, exp_f32_ref};

size_t attn_scratch_floats(int nq, int dh) {
    const size_t nqp = (size_t)(nq + ATTN_ROWS - 1) / ATTN_ROWS * ATTN_ROWS;
    /* + the bf16 kernel's paired K and V tiles, q rows and p rows (bf16, in floats) */
    return 2 * (size_t)dh * ATTN_KTILE + (size_t)ATTN_ROWS * ATTN_KTILE + nqp * (size_t)dh +
           2 * nqp + (size_t)dh * ATTN_KTILE + (nqp * (size_t)dh + 1) / 2 +
           (size_t)ATTN_ROWS * ATTN_KTILE / 2;
}

/* ---- reference: one row at a time, the same tile grid, expf ---- */

/* element i of paged tile t (K^T first, then V; see attention.h) */
static inline float tile_at(const attn_keys *kv, int t, size_t i) {
    return kv->tiles_bf16 ? bf16_to_f32_one(((const uint16_t *)kv->tiles[t])[i])
                          : ((const float *)kv->tiles[t])[i];
}

/* element d of key t0 + j, in any mode (t0 on the tile grid) */
static inline float key_at(const attn_keys *kv, int t0, int j, int d) {
    if (kv->tiles) return tile_at(kv, t0 / ATTN_KTILE, (size_t)d * ATTN_KTILE + (size_t)j);
    if (kv->kt) return kv->kt[(size_t)d * kv->ldkt + (size_t)(t0 + j)];
    return kv->k[(size_t)(t0 + j) * kv->ldk + (size_t)d];
}

static inline float value_at(const attn_keys *kv, int t0, int j, int d, int dh) {
    if (kv->tiles)
        return tile_at(kv, t0 / ATTN_KTILE,
                       (size_t)ATTN_KTILE * dh + (size_t)j * dh + (size_t)d);
    return kv->v[(size_t)(t0 + j) * kv->ldv + (size_t)d];
}

void attn_block_ref(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                    const int32_t *limit, const attn_keys *kv, int dh, float scale,
                    float *scratch) {
    float *s = scratch;              /* (KTILE) scores, then p */
    float *acc = s + ATTN_KTILE;     /* (dh) */
    const int nk = kv->nk;
    for (int i = 0; i < nq; i++) {
        const float *qi = q + (size_t)i * ldq;
        int lim = limit ? limit[i] : nk;
        if (lim > nk) lim = nk;
        float m = -INFINITY, l = 0.0f;
        for (int d = 0; d < dh; d++) acc[d] = 0.0f;
        for (int t0 = 0; t0 < lim; t0 += ATTN_KTILE) {
            const int jn = nk - t0 < ATTN_KTILE ? nk - t0 : ATTN_KTILE;
            const int nv = lim - t0; /* valid keys of this tile (>= 1 here) */
            float mt = -INFINITY;
            for (int j = 0; j < ATTN_KTILE; j++) {
                if (j < nv) {
                    float dot = 0.0f;
                    for (int d = 0; d < dh; d++) dot += qi[d] * key_at(kv, t0, j, d);
                    s[j] = dot * scale;
                } else {
                    s[j] = -INFINITY;
                }
                if (s[j] > mt) mt = s[j];
            }
            const float mnew = mt > m ? mt : m;
            const float corr = expf(m - mnew); /* 0 on the first tile */
            float sum = 0.0f;
            for (int j = 0; j < ATTN_KTILE; j++) {
                s[j] = expf(s[j] - mnew);
                sum += s[j];
            }
            l = l * corr + sum;
            m = mnew;
            for (int d = 0; d < dh; d++) acc[d] *= corr;
            for (int j = 0; j < jn; j++)
                for (int d = 0; d < dh; d++) acc[d] += s[j] * value_at(kv, t0, j, d, dh);
        }
        const float inv = 1.0f / l;
        for (int d = 0; d < dh; d++) o[(size_t)i * ldo + d] = acc[d] * inv;
    }
}

void exp_f32_ref(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

/* ---- the vectorised exp ----
 * exp(x) = 2^n e^r, n = round(x log2 e), r = x - n ln 2 in two steps (Cody-Waite,
 * Cephes' constants), e^r = 1 + r + r^2 P(r) with Cephes expf's degree-5 P
 * (|r| <= ln2/2). x is clamped to [-104, 89] first: exp(-104) is below the smallest
 * denormal and exp(89) overflows, so the clamp changes no result, and -inf gives 0. */

#define EXP_LO -104.0f
#define EXP_HI 89.0f
#define EXP_C1 0.693359375f
#define EXP_C2 -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define T256 __attribute__((target("avx2,fma")))

T512 static inline __m512 exp512(__m512 x) {
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C1), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C2), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n); /* y * 2^n, denormals and overflow included */
}

T256 static inline __m256 exp256(__m256 x) {
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C1), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C2), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    /* 2^n as two factors 2^(n/2) 2^(n - n/2), each a normal float for n in [-150, 129],
     * so denormal results and overflow come out as the products round them */
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(y, f1), f2);
}

T512 void exp_f32_avx512(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, exp512(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

T256 void exp_f32_avx2(float *y, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp256(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float in[8] = {0}, out[8];
        memcpy(in, x + i, sizeof(float) * (n - i));
        _mm256_storeu_ps(out, exp256(_mm256_loadu_ps(in)));
        memcpy(y + i, out, sizeof(float) * (n - i));
    }
}

/* dst[c * ldd + r] = src[r * lds + c] for r, c < 8 (an 8x8 block of K to K^T; the
 * AVX-512 kernel uses it too) */
T256 static inline void transpose8(float *dst, size_t ldd, const float *src, size_t lds) {
    __m256 r[8], t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)i * lds);
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) {
        u[i + 0] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + (size_t)i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (size_t)(i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}

/* ---- AVX-512: 16 floats, scores 4 rows x 64 keys (16 accumulators), P V 4 rows x
 * 64 dims (16 accumulators) ---- */

T512 static inline __m512 mask_lt512(__m512 v, int n) { /* lanes >= n -> -inf */
    const __mmask16 keep = n >= 16 ? (__mmask16)0xffff
                           : n <= 0 ? (__mmask16)0
                                    : (__mmask16)((1u << n) - 1u);
    return _mm512_mask_blend_ps(keep, _mm512_set1_ps(-INFINITY), v);
}

/* dst[i] = the f32 of bf16 bits src[i], n a multiple of 16 (exact: a shift) */
T512 static inline void widen_bf16_512(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
}

#define SUF avx512
#define TGT T512
#define V __m512
#define VL 16
#define SB 4
#define CV 4
#define VLOADU(p) _mm512_loadu_ps(p)
#define VSTOREU(p, v) _mm512_storeu_ps((p), (v))
#define VSET1(x) _mm512_set1_ps(x)
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VSUB(a, b) _mm512_sub_ps((a), (b))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#define VHMAX(v) _mm512_reduce_max_ps(v)
#define VHSUM(v) _mm512_reduce_add_ps(v)
#define VEXP(v) exp512(v)
#define VMASK_LT(v, n) mask_lt512((v), (n))
#define VWIDEN_BF16(dst, src, n) widen_bf16_512((dst), (src), (n))
#include "attention_simd.h"
#undef SUF
#undef TGT
#undef V
#undef VL
#undef SB
#undef CV
#undef VLOADU
#undef VSTOREU
#undef VSET1
#undef VZERO
#undef VFMA
#undef VMUL
#undef VADD
#undef VSUB
#undef VMAX
#undef VHMAX
#undef VHSUM
#undef VEXP
#undef VMASK_LT
#undef VWIDEN_BF16

/* ---- AVX-512 BF16 (--compute bf16): Q K^T and P V on vdpbf16ps ----
 *
 * The same tile grid, masks and f32 online softmax as attn_block_avx512 (the f32 tile
 * is prepared by tile_avx512), but q, k, v and the probabilities p are rounded to bf16
 * (ties to even) for the two products, which sum in f32. vdpbf16ps multiplies pairs
 * of adjacent bf16 values, so the tiles are paired along the summed index: K as
 * (dh/2, KTILE) pairs (k[j][2p], k[j][2p+1]), V as (KTILE/2, dh) pairs (v[2q][d],
 * v[2q+1][d]); a q row or a p row is a plain bf16 row, read a pair (32 bits) at a
 * time. The running sum of the softmax uses the f32 p, as flash attention does on
 * GPUs. Each row still depends only on itself, its limit and the tile grid. */

#define TBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

/* 16 floats -> their bf16 bits in the low half of each 32-bit lane (f32_to_bf16_one) */
TBF static inline __m512i bf16_lanes(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
}

/* pairs (a[i], b[i]) of 16 floats each, a in the low half */
TBF static inline __m512i bf16_pairs(__m512 a, __m512 b) {
    return _mm512_or_si512(bf16_lanes(a), _mm512_slli_epi32(bf16_lanes(b), 16));
}

/* n floats (a multiple of 16) -> n bf16 */
TBF static inline void bf16_row(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(bf16_lanes(_mm512_loadu_ps(src + i))));
}

/* acc rows (4, dh), dims [c0, c0 + 16 NC) = acc * corr + P V over nq2 key pairs */
TBF static inline __attribute__((always_inline)) void
pv_bf16(float *acc, const uint16_t *pb, const float *corr, const uint32_t *vp, int nq2, int dh,
        int c0, const int NC) {
    __m512 a[ATTN_ROWS][4];
#pragma GCC unroll 4
    for (int r = 0; r < ATTN_ROWS; r++) {
        const __m512 cr = _mm512_set1_ps(corr[r]);
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++)
            a[r][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + (size_t)r * dh + c0 + 16 * c), cr);
    }
    for (int q2 = 0; q2 < nq2; q2++) {
        __m512i x[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) x[c] = _mm512_loadu_si512(vp + (size_t)q2 * dh + c0 + 16 * c);
#pragma GCC unroll 4
        for (int r = 0; r < ATTN_ROWS; r++) {
            uint32_t pair;
            memcpy(&pair, pb + (size_t)r * ATTN_KTILE + 2 * q2, 4);
            const __m512i b = _mm512_set1_epi32((int)pair);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++)
                a[r][c] = _mm512_dpbf16_ps(a[r][c], (__m512bh)b, (__m512bh)x[c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < ATTN_ROWS; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(acc + (size_t)r * dh + c0 + 16 * c, a[r][c]);
}

TBF static __attribute__((noinline)) void pv_bf16_4(float *acc, const uint16_t *pb,
                                                    const float *corr, const uint32_t *vp,
                                                    int nq2, int dh, int c0) {
    pv_bf16(acc, pb, corr, vp, nq2, dh, c0, 4);
}

TBF static __attribute__((noinline)) void pv_bf16_1(float *acc, const uint16_t *pb,
                                                    const float *corr, const uint32_t *vp,
                                                    int nq2, int dh, int c0) {
    pv_bf16(acc, pb, corr, vp, nq2, dh, c0, 1);
}

/* scores pt (4, KTILE) = (q . k) * scale of 4 bf16 q rows against the paired K tile,
 * keys j >= nvalid[r] of row r at -inf */
TBF static inline void scores_bf16(float *pt, const uint16_t *const *qb, const uint32_t *kp,
                                   int dh, float scale, const int *nvalid) {
    __m512 a[ATTN_ROWS][4];
#pragma GCC unroll 4
    for (int r = 0; r < ATTN_ROWS; r++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) a[r][c] = _mm512_setzero_ps();
    for (int p2 = 0; p2 < dh / 2; p2++) {
        __m512i kv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) kv[c] = _mm512_loadu_si512(kp + (size_t)p2 * ATTN_KTILE + 16 * c);
#pragma GCC unroll 4
        for (int r = 0; r < ATTN_ROWS; r++) {
            uint32_t pair;
            memcpy(&pair, qb[r] + 2 * p2, 4);
            const __m512i b = _mm512_set1_epi32((int)pair);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) a[r][c] = _mm512_dpbf16_ps(a[r][c], (__m512bh)b, (__m512bh)kv[c]);
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 4
    for (int r = 0; r < ATTN_ROWS; r++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            _mm512_storeu_ps(pt + (size_t)r * ATTN_KTILE + 16 * c,
                             mask_lt512(_mm512_mul_ps(a[r][c], sc), nvalid[r] - 16 * c));
}

TBF void attn_block_avx512bf16(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                               const int32_t *limit, const attn_keys *kv, int dh, float scale,
                               float *scratch) {
    if (dh % 16 != 0 || nq < 1) { /* the f32 kernel takes (or refers on) any other shape */
        attn_block_avx512(o, ldo, q, ldq, nq, limit, kv, dh, scale, scratch);
        return;
    }
    const int nk = kv->nk;
    const int nqp = (nq + ATTN_ROWS - 1) / ATTN_ROWS * ATTN_ROWS;
    float *kts = scratch;                              /* (dh, KTILE) f32 tile */
    float *vts = kts + (size_t)dh * ATTN_KTILE;        /* (KTILE, dh) f32 value tile */
    float *pt = vts + (size_t)dh * ATTN_KTILE;         /* (ROWS, KTILE) scores, then p */
    float *acc = pt + (size_t)ATTN_ROWS * ATTN_KTILE;  /* (nqp, dh) unnormalised output */
    float *mx = acc + (size_t)nqp * dh;                /* (nqp) running max */
    float *sm = mx + nqp;                              /* (nqp) running sum */
    uint32_t *kp = (uint32_t *)(sm + nqp);             /* (dh/2, KTILE) K pairs */
    uint32_t *vp = kp + (size_t)dh / 2 * ATTN_KTILE;   /* (KTILE/2, dh) V pairs */
    uint16_t *qb = (uint16_t *)(vp + (size_t)ATTN_KTILE / 2 * dh); /* (nqp, dh) */
    uint16_t *pb = qb + (size_t)nqp * dh;              /* (ROWS, KTILE) p in bf16 */
    int lim_max = 0;
    for (int r = 0; r < nqp; r++) {
        mx[r] = -INFINITY;
        sm[r] = 0.0f;
        const int i = r < nq ? r : nq - 1; /* spare rows repeat the last */
        const int lr = limit ? limit[i] : nk;
        if (lr > lim_max) lim_max = lr;
        bf16_row(qb + (size_t)r * dh, q + (size_t)i * ldq, dh);
    }
    memset(acc, 0, sizeof(float) * (size_t)nqp * dh);
    if (lim_max > nk) lim_max = nk;
    for (int t0 = 0; t0 < lim_max; t0 += ATTN_KTILE) {
        const int jn = nk - t0 < ATTN_KTILE ? nk - t0 : ATTN_KTILE;
        const float *kt, *vt;
        size_t ldt, ldv;
        tile_avx512(&kt, &ldt, &vt, &ldv, kv, t0, jn, dh, kts, vts);
        for (int p2 = 0; p2 < dh / 2; p2++) /* keys past jn: whatever bits, masked below */
            for (int j = 0; j < ATTN_KTILE; j += 16)
                _mm512_storeu_si512(kp + (size_t)p2 * ATTN_KTILE + j,
                                    bf16_pairs(_mm512_loadu_ps(kt + (size_t)(2 * p2) * ldt + j),
                                               _mm512_loadu_ps(kt + (size_t)(2 * p2 + 1) * ldt + j)));
        const int nq2 = (jn + 1) / 2; /* values past jn are never read: zero partners */
        for (int q2 = 0; q2 < nq2; q2++) {
            const float *v0 = vt + (size_t)(2 * q2) * ldv, *v1 = v0 + ldv;
            const int has1 = 2 * q2 + 1 < jn;
            for (int d = 0; d < dh; d += 16)
                _mm512_storeu_si512(vp + (size_t)q2 * dh + d,
                                    bf16_pairs(_mm512_loadu_ps(v0 + d),
                                               has1 ? _mm512_loadu_ps(v1 + d) : _mm512_setzero_ps()));
        }
        for (int r0 = 0; r0 < nq; r0 += ATTN_ROWS) {
            const uint16_t *qr[ATTN_ROWS];
            int nvalid[ATTN_ROWS], any = 0;
            for (int r = 0; r < ATTN_ROWS; r++) {
                const int i = r0 + r < nq ? r0 + r : nq - 1;
                int lr = limit ? limit[i] : nk;
                if (lr > nk) lr = nk;
                qr[r] = qb + (size_t)(r0 + r) * dh;
                nvalid[r] = lr - t0;
                any |= nvalid[r] > 0;
            }
            if (!any) continue;
            scores_bf16(pt, qr, kp, dh, scale, nvalid);
            float corr[ATTN_ROWS];
            for (int r = 0; r < ATTN_ROWS; r++) {
                float *pr = pt + (size_t)r * ATTN_KTILE;
                __m512 m = _mm512_loadu_ps(pr);
                for (int c = 1; c < ATTN_KTILE / 16; c++) m = _mm512_max_ps(m, _mm512_loadu_ps(pr + c * 16));
                const float mt = _mm512_reduce_max_ps(m);
                const float mold = mx[r0 + r];
                const float mnew = mt > mold ? mt : mold;
                const __m512 mv = _mm512_set1_ps(mnew);
                __m512 sv = _mm512_setzero_ps();
                for (int c = 0; c < ATTN_KTILE / 16; c++) {
                    const __m512 pv = exp512(_mm512_sub_ps(_mm512_loadu_ps(pr + c * 16), mv));
                    _mm512_storeu_ps(pr + c * 16, pv);
                    sv = _mm512_add_ps(sv, pv);
                }
                corr[r] = expf(mold - mnew);
                sm[r0 + r] = sm[r0 + r] * corr[r] + _mm512_reduce_add_ps(sv);
                mx[r0 + r] = mnew;
                bf16_row(pb + (size_t)r * ATTN_KTILE, pr, ATTN_KTILE);
            }
            float *ar = acc + (size_t)r0 * dh;
            int c0 = 0;
            for (; c0 + 64 <= dh; c0 += 64) pv_bf16_4(ar, pb, corr, vp, nq2, dh, c0);
            for (; c0 < dh; c0 += 16) pv_bf16_1(ar, pb, corr, vp, nq2, dh, c0);
        }
    }
    for (int r = 0; r < nq; r++) {
        const __m512 iv = _mm512_set1_ps(1.0f / sm[r]);
        for (int c = 0; c < dh; c += 16)
            _mm512_storeu_ps(o + (size_t)r * ldo + c, _mm512_mul_ps(_mm512_loadu_ps(acc + (size_t)r * dh + c), iv));
    }
}

/* ---- AVX2: 8 floats, scores 4 rows x 16 keys, P V 4 rows x 16 dims (8 accumulators
 * of 16 registers) ---- */

T256 static inline __m256 mask_lt256(__m256 v, int n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, keep);
}

T256 static inline float hmax256(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

T256 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* dst[i] = the f32 of bf16 bits src[i], n a multiple of 8 */
T256 static inline void widen_bf16_256(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
}

#define SUF avx2
#define TGT T256
#define V __m256
#define VL 8
#define SB 2
#define CV 2
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTOREU(p, v) _mm256_storeu_ps((p), (v))
#define VSET1(x) _mm256_set1_ps(x)
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm256_mul_ps((a), (b))
#define VADD(a, b) _mm256_add_ps((a), (b))
#define VSUB(a, b) _mm256_sub_ps((a), (b))
#define VMAX(a, b) _mm256_max_ps((a), (b))
#define VHMAX(v) hmax256(v)
#define VHSUM(v) hsum256(v)
#define VEXP(v) exp256(v)
#define VMASK_LT(v, n) mask_lt256((v), (n))
#define VWIDEN_BF16(dst, src, n) widen_bf16_256((dst), (src), (n))
#include "attention_simd.h"

/* ---- the table ---- */

void attention_kernels_for(attention_kernels *t, cpu_isa isa) {
    switch (isa) {
    case ISA_AVX512:
        t->block = attn_block_avx512;
        t->exp_f32 = exp_f32_avx512;
        return;
    case ISA_AVX2:
        t->block = attn_block_avx2;
        t->exp_f32 = exp_f32_avx2;
        return;
    case ISA_REF: break;
    }
    t->block = attn_block_ref;
    t->exp_f32 = exp_f32_ref;
}

void attention_kernels_for_compute(attention_kernels *t, cpu_isa isa, compute_mode c) {
    attention_kernels_for(t, isa);
    if (c == COMPUTE_BF16 && isa == ISA_AVX512 && cpu_features_get()->avx512bf16)
        t->block = attn_block_avx512bf16;
}
