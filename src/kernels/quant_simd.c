/*
 * quant_simd.c - the AVX2 and AVX-512 (VNNI) kernels of quant.h: activation
 * quantisation and the q8 / q4 matrix-vector product for decode.
 *
 * The activation rounding reproduces quant.c's bit for bit (the same IEEE division
 * and ties-away rounding), and each block's integer dot is exact. q8 (both ISAs)
 * and AVX2 q4 also add each row's block terms d * isum in block order: the
 * reference's bits. AVX-512 q4 changes only the f32 summation order (rows4_q4_512).
 *   AVX-512: vpdpbusd (u8 weights x s8 activations) into int32 lanes, 4 rows at
 *            once sharing each activation load; the lanes of 4 rows x 4 blocks are
 *            reduced by a shuffle tree to one zmm of 16 block sums. q8 removes the
 *            zero point as zp * sumqx per block and adds the 16 terms in block
 *            order. q4 (twice the elements per byte, so compute-bound where q8 is
 *            not; Zen 4 issues ~2 zmm ops per cycle) starts each vpdpbusd from
 *            -zp * qx sums, reduces with packs + madd (its lanes fit int16) and
 *            accumulates with one FMA per chunk: ~42 ops per 4 rows x 128
 *            elements where exact block order took ~50 (one core, data in cache:
 *            42.5 GB/s, was 35.5; GFNI's one-op nibble shift measured slower);
 *            the 4 rows of a pass come from the 4 quarters of the row range, so
 *            the weights are read as 4 long sequential streams (rows of one
 *            quarter are contiguous) that the hardware prefetcher follows, plus
 *            a software prefetch into L2 of each stream 16 KB ahead (4 adjacent
 *            rows instead, 4 streams of 3.5 KB restarting every pass, read at
 *            ~27-30 GB/s on 2 cores where the memory gives ~50);
 *   AVX2:    no VNNI, and vpmaddubsw saturates at 255 * 127 * 2, so q8 flips u to the
 *            signed q (u ^ 0x80) and multiplies |q| by sign-adjusted x (at most
 *            2 * 127 * 127 per pair, exact); q4's u <= 15 cannot saturate.
 * Rows past the end of a range of 4 reuse the last row and are not stored.
 */
#include <immintrin.h>

#include "quant.h"

#define T256 __attribute__((target("avx2,fma,f16c")))
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* ---- activation quantisation ---- */

T512 void quant_act_avx512(qact *qa, const float *x, int k) {
    const int kp = quant_padded_cols(k), nb = kp / QUANT_BLOCK;
    const __m512 half = _mm512_set1_ps(0.5f), lo = _mm512_set1_ps(-127.0f),
                 hi = _mm512_set1_ps(127.0f);
    const __m512i signbit = _mm512_set1_epi32((int)0x80000000u);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int b = 0; b < nb; b++) {
        int e0 = b * QUANT_BLOCK, left = k - e0;
        left = left < 0 ? 0 : left > QUANT_BLOCK ? QUANT_BLOCK : left;
        __mmask16 m0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        __mmask16 m1 = left >= 32   ? (__mmask16)0xffff
                       : left <= 16 ? (__mmask16)0
                                    : (__mmask16)((1u << (left - 16)) - 1u);
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + e0), v1 = _mm512_maskz_loadu_ps(m1, x + e0 + 16);
        /* max is exact and order-free: the same amax as the scalar loop */
        __m512 a = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
        float amax = _mm512_reduce_max_ps(a);
        float s = amax / 127.0f;
        __m128i q8 = _mm_setzero_si128(), q8b = _mm_setzero_si128();
        int32_t sum = 0;
        if (s > 0.0f) {
            __m512 sv = _mm512_set1_ps(s);
            __m512i qi[2];
            for (int h = 0; h < 2; h++) {
                __m512 v = _mm512_div_ps(h ? v1 : v0, sv);
                __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                __mmask16 step =
                    _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), half, _CMP_GE_OQ);
                __m512 sgn = _mm512_castsi512_ps(_mm512_or_si512(
                    _mm512_castps_si512(one), _mm512_and_si512(_mm512_castps_si512(v), signbit)));
                t = _mm512_mask_add_ps(t, step, t, sgn);
                t = _mm512_min_ps(_mm512_max_ps(t, lo), hi); /* NaN -> -127 as fmaxf does */
                qi[h] = _mm512_cvttps_epi32(t);
            }
            q8 = _mm512_cvtsepi32_epi8(qi[0]);
            q8b = _mm512_cvtsepi32_epi8(qi[1]);
            sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qi[0], qi[1]));
        }
        _mm_storeu_si128((__m128i *)(qa->q + e0), q8);
        _mm_storeu_si128((__m128i *)(qa->q + e0 + 16), q8b);
        qa->scale[b] = s;
        qa->sum[b] = sum;
    }
}

T256 static inline float hmax256(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

T256 void quant_act_avx2(qact *qa, const float *x, int k) {
    const int kp = quant_padded_cols(k), nb = kp / QUANT_BLOCK;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 half = _mm256_set1_ps(0.5f), lo = _mm256_set1_ps(-127.0f),
                 hi = _mm256_set1_ps(127.0f), one = _mm256_set1_ps(1.0f);
    const __m256 signbit = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    for (int b = 0; b < nb; b++) {
        int e0 = b * QUANT_BLOCK, left = k - e0;
        left = left < 0 ? 0 : left > QUANT_BLOCK ? QUANT_BLOCK : left;
        float buf[QUANT_BLOCK] = {0};
        const float *src = x + e0;
        if (left < QUANT_BLOCK) { /* the tail block, zero-padded */
            for (int e = 0; e < left; e++) buf[e] = x[e0 + e];
            src = buf;
        }
        __m256 v[4];
        __m256 a = _mm256_setzero_ps();
        for (int h = 0; h < 4; h++) {
            v[h] = _mm256_loadu_ps(src + 8 * h);
            a = _mm256_max_ps(a, _mm256_and_ps(v[h], absmask));
        }
        float s = hmax256(a) / 127.0f;
        int32_t sum = 0;
        if (s > 0.0f) {
            __m256 sv = _mm256_set1_ps(s);
            __m256i qi[4];
            for (int h = 0; h < 4; h++) {
                __m256 u = _mm256_div_ps(v[h], sv);
                __m256 t = _mm256_round_ps(u, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                __m256 step = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(u, t), absmask), half,
                                            _CMP_GE_OQ);
                __m256 sgn = _mm256_or_ps(one, _mm256_and_ps(u, signbit));
                t = _mm256_add_ps(t, _mm256_and_ps(step, sgn));
                /* max(t, lo) returns lo for NaN t (second operand), as fmaxf does */
                t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
                qi[h] = _mm256_cvttps_epi32(t);
            }
            /* pack int32 -> int8 keeping order: packs works per 128-bit lane */
            __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
            __m256i p = _mm256_packs_epi16(p01, p23);
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(qa->q + e0), p);
            __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]),
                                           _mm256_add_epi32(qi[2], qi[3]));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            sum = _mm_cvtsi128_si32(s4);
        } else {
            _mm256_storeu_si256((__m256i *)(qa->q + e0), _mm256_setzero_si256());
        }
        qa->scale[b] = s;
        qa->sum[b] = sum;
    }
}

/* ---- AVX-512 VNNI matrix-vector ---- */

/* 4 int32 vectors (16 lanes = 4 groups of 4) -> one: group g holds, for each input
 * r in lane r, the sum of that input's group g. */
T512 static inline __m512i reduce4(__m512i a, __m512i b, __m512i c, __m512i d) {
    __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

/* The same for lanes whose sums of 2 fit in int16 (q4's centred lanes: |lane| <=
 * 4 * 8 * 127 = 4064, output 16256): packs + madd with ones add pairs. */
T512 static inline __m512i reduce4_16(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ones = _mm512_set1_epi16(1);
    __m512i ab = _mm512_madd_epi16(_mm512_packs_epi32(a, b), ones);
    __m512i cd = _mm512_madd_epi16(_mm512_packs_epi32(c, d), ones);
    return _mm512_madd_epi16(_mm512_packs_epi32(ab, cd), ones);
}

/* Software prefetch distance per weight stream, bytes (measured: 8-32 KB alike). A
 * prefetch past the end of the matrix is harmless (prefetches do not fault). */
#define PF_AHEAD 16384
static inline int b0q(int c) { return c * (QUANT_CHUNK / QUANT_BLOCK); }

/* Rows r0..r3 (pointers to their quantised bytes and scales) against the activation:
 * out[r] = sum over blocks, in order, of (sw * sx) * isum. Q4 is a compile-time
 * constant at each call, so the unpacking specialises. */
T512 static inline __attribute__((always_inline)) void rows4_512(
    float out[4], const uint8_t *const row[4], const float *const sw[4], const qact *qa,
    const __m512i *zs, const __m512 *sxs, int kp, int q4) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m512i idx_t = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m128 acc = _mm_setzero_ps();
    const int cb = q4 ? QUANT_CHUNK / 2 : QUANT_CHUNK; /* bytes of one row's chunk */
    for (int c = 0; c < kp / QUANT_CHUNK; c++) {
        /* each stream PF_AHEAD bytes ahead, and its scales as far in rows (16 bytes of
         * scales per chunk of cb bytes: one line every 4 chunks) */
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
#pragma GCC unroll 2
            for (int l = 0; l < cb; l += 64)
                _mm_prefetch((const char *)row[r] + (size_t)c * cb + PF_AHEAD + l, _MM_HINT_T1);
            if (c % 4 == 0)
                _mm_prefetch((const char *)(sw[r] + b0q(c)) + PF_AHEAD * 16 / cb, _MM_HINT_T1);
        }
        const __m512i x0 = _mm512_loadu_si512(qa->q + c * QUANT_CHUNK);
        const __m512i x1 = _mm512_loadu_si512(qa->q + c * QUANT_CHUNK + 64);
        __m512i d0[4], d1[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512i u0, u1;
            if (q4) { /* byte j: element j (low nibble), element j + 64 (high) */
                __m512i v = _mm512_loadu_si512(row[r] + c * (QUANT_CHUNK / 2));
                u0 = _mm512_and_si512(v, nib);
                u1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
            } else {
                u0 = _mm512_loadu_si512(row[r] + c * QUANT_CHUNK);
                u1 = _mm512_loadu_si512(row[r] + c * QUANT_CHUNK + 64);
            }
            d0[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u0, x0);
            d1[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u1, x1);
        }
        /* e0 / e1: group g = quarter g of blocks (0,1) / (2,3), lane r = row r */
        __m512i e0 = q4 ? reduce4_16(d0[0], d0[1], d0[2], d0[3]) : reduce4(d0[0], d0[1], d0[2], d0[3]);
        __m512i e1 = q4 ? reduce4_16(d1[0], d1[1], d1[2], d1[3]) : reduce4(d1[0], d1[1], d1[2], d1[3]);
        /* group b = block b of the chunk (two quarters added), lane r = row r */
        __m512i g = _mm512_add_epi32(_mm512_shuffle_i32x4(e0, e1, 0x88),
                                     _mm512_shuffle_i32x4(e0, e1, 0xdd));
        /* q4's blocks 2, 3 summed 16 u: an exact multiple of 16, shifted back */
        g = _mm512_sub_epi32(g, zs[c]); /* - zp * sumqx */
        const int b0 = c * (QUANT_CHUNK / QUANT_BLOCK);
        __m256 w01 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(sw[0] + b0)),
                                          _mm_loadu_ps(sw[1] + b0), 1);
        __m256 w23 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(sw[2] + b0)),
                                          _mm_loadu_ps(sw[3] + b0), 1);
        __m512 w = _mm512_castpd_ps(_mm512_insertf64x4(
            _mm512_castpd256_pd512(_mm256_castps_pd(w01)), _mm256_castps_pd(w23), 1));
        __m512 d = _mm512_mul_ps(_mm512_permutexvar_ps(idx_t, w), sxs[c]); /* sw * sx */
        __m512 t = _mm512_mul_ps(d, _mm512_cvtepi32_ps(g));            /* exact int -> f32 */
        /* the blocks in order, as the reference adds them */
        acc = _mm_add_ps(acc, _mm512_castps512_ps128(t));
        acc = _mm_add_ps(acc, _mm512_extractf32x4_ps(t, 1));
        acc = _mm_add_ps(acc, _mm512_extractf32x4_ps(t, 2));
        acc = _mm_add_ps(acc, _mm512_extractf32x4_ps(t, 3));
    }
    _mm_storeu_ps(out, acc);
}

/* q4, 4 rows. The zero point costs nothing: each vpdpbusd starts from -zp times
 * its lanes' sums of qx (nz0 / nz1, per call), so every int32 lane is the exact
 * centred sum of 4 products, |lane| <= 4 * 8 * 127 = 4064: int16 holds sums of 8
 * of them, and packs + madd (reduce4_16) reduce 4 rows x 2 blocks at 2 ops per
 * merge. The 16 block sums (group b = block b, lane r = row r) are converted and
 * added by one FMA into a float accumulator per (block slot, row), with d = sw * sx
 * of those blocks; one horizontal sum per row at the end. f32 summation order is
 * therefore not the reference's (blocks b, b + 4, ... per lane, then 4 lanes). */
T512 static inline __attribute__((always_inline)) void rows4_q4_512(
    float out[4], const uint8_t *const row[4], const float *const sw[4], const qact *qa,
    const __m512i *nz0, const __m512i *nz1, const __m512 *sxs, int kp) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m512i idx_t = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < kp / QUANT_CHUNK; c++) {
        /* prefetch as rows4_512 (64 bytes per row and chunk) */
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            _mm_prefetch((const char *)row[r] + (size_t)c * 64 + PF_AHEAD, _MM_HINT_T1);
            if (c % 4 == 0)
                _mm_prefetch((const char *)(sw[r] + b0q(c)) + PF_AHEAD / 4, _MM_HINT_T1);
        }
        const int b0 = c * (QUANT_CHUNK / QUANT_BLOCK);
        const __m512i x0 = _mm512_loadu_si512(qa->q + c * QUANT_CHUNK);
        const __m512i x1 = _mm512_loadu_si512(qa->q + c * QUANT_CHUNK + 64);
        __m512i d0[4], d1[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const __m512i v = _mm512_loadu_si512(row[r] + c * (QUANT_CHUNK / 2));
            d0[r] = _mm512_dpbusd_epi32(nz0[c], _mm512_and_si512(v, nib), x0);
            d1[r] = _mm512_dpbusd_epi32(nz1[c], _mm512_and_si512(_mm512_srli_epi16(v, 4), nib), x1);
        }
        /* e0 / e1: group g = quarter g of blocks (0,1) / (2,3), lane r = row r */
        const __m512i e0 = reduce4_16(d0[0], d0[1], d0[2], d0[3]);
        const __m512i e1 = reduce4_16(d1[0], d1[1], d1[2], d1[3]);
        const __m512i g = _mm512_add_epi32(_mm512_shuffle_i32x4(e0, e1, 0x88),
                                           _mm512_shuffle_i32x4(e0, e1, 0xdd));
        __m256 w01 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(sw[0] + b0)),
                                          _mm_loadu_ps(sw[1] + b0), 1);
        __m256 w23 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(sw[2] + b0)),
                                          _mm_loadu_ps(sw[3] + b0), 1);
        __m512 w = _mm512_castpd_ps(_mm512_insertf64x4(
            _mm512_castpd256_pd512(_mm256_castps_pd(w01)), _mm256_castps_pd(w23), 1));
        const __m512 d = _mm512_mul_ps(_mm512_permutexvar_ps(idx_t, w), sxs[c]); /* sw * sx */
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(g), d, acc);
    }
    __m128 t = _mm_add_ps(_mm_add_ps(_mm512_castps512_ps128(acc), _mm512_extractf32x4_ps(acc, 1)),
                          _mm_add_ps(_mm512_extractf32x4_ps(acc, 2), _mm512_extractf32x4_ps(acc, 3)));
    _mm_storeu_ps(out, t);
}

T512 void matvec_q_avx512(float *y, const qmatrix *qm, const qact *qa, int j0, int j1) {
    const int kp = qm->cols_padded, nb = kp / QUANT_BLOCK, nc = kp / QUANT_CHUNK;
    const size_t rb = quant_row_bytes(qm->format, qm->cols);
    const int q4 = qm->format == QUANT_Q4;
    /* per chunk, shared by every group of rows: sx in the layout of the block sums
     * (group b = block b, 4 lanes); q8: zp * sumqx in that layout; q4: the starting
     * values of the two vpdpbusd, -zp times each lane's sum of qx. */
    __m512i zs[QUANT_MAX_COLS / QUANT_CHUNK], nz1[QUANT_MAX_COLS / QUANT_CHUNK];
    __m512 sxs[QUANT_MAX_COLS / QUANT_CHUNK];
    __m512i *nz0 = zs;
    const __m512i idx_b = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int c = 0; c < nc; c++) {
        const int b0 = c * (QUANT_CHUNK / QUANT_BLOCK);
        sxs[c] = _mm512_permutexvar_ps(idx_b, _mm512_castps128_ps512(_mm_loadu_ps(qa->scale + b0)));
        if (q4) {
            const __m512i zero = _mm512_setzero_si512(), zp = _mm512_set1_epi8(8);
            const __m512i x0 = _mm512_loadu_si512(qa->q + c * QUANT_CHUNK);
            const __m512i x1 = _mm512_loadu_si512(qa->q + c * QUANT_CHUNK + 64);
            nz0[c] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, zp, x0));
            nz1[c] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, zp, x1));
            continue;
        }
        __m512i sums = _mm512_permutexvar_epi32(
            idx_b, _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(qa->sum + b0))));
        zs[c] = _mm512_slli_epi32(sums, 7); /* zp = 128 */
    }
    /* pass i: rows j0 + r * qn + i, one from each quarter (4 sequential streams);
     * the last quarter may be short: its missing rows repeat row j1 - 1, unstored */
    const int qn = (j1 - j0 + 3) / 4;
    for (int i = 0; i < qn; i++) {
        const uint8_t *row[4];
        const float *sw[4];
        for (int r = 0; r < 4; r++) {
            int jr = j0 + r * qn + i < j1 ? j0 + r * qn + i : j1 - 1;
            row[r] = qm->q + (size_t)jr * rb;
            sw[r] = qm->scale + (size_t)jr * nb;
        }
        float out[4];
        if (q4) rows4_q4_512(out, row, sw, qa, nz0, nz1, sxs, kp);
        else rows4_512(out, row, sw, qa, zs, sxs, kp, 0);
        for (int r = 0; r < 4 && j0 + r * qn + i < j1; r++) y[j0 + r * qn + i] = out[r];
    }
}

/* ---- AVX-512 VNNI, several activation rows per pass (batched decode) ----
 *
 * One pass reads 4 weight rows (one per quarter of the range, as above) once and
 * multiplies each loaded chunk by up to ROWS_PER_PASS activation rows. The shared
 * part (unpack, the permutation below, the scale gather) is paid once per chunk;
 * per activation row a chunk costs 8 vpdpbusd, one reduction and the epilogue.
 * Chunk lanes are permuted (weights and activations alike) so that 128-bit group b
 * holds block b's elements: x0' = elements 0-15 of each block, x1' = 16-31. Two
 * chained vpdpbusd from the centred start -zp * (lane's qx) then leave in group b
 * of one register per row the centred partial sums of block b (4 lanes of 8
 * products, |lane| <= 8 * 127 * 127 for q8, 8 * 8 * 127 for q4, so q4 keeps the
 * int16 reduction), and one reduce4 gives group b = block b, lane r = row r: the
 * exact integers isum of the single-row kernels. The f32 epilogue per (weight row,
 * activation row) is the single-row kernel's, op for op (q8: d * isum added in
 * block order; q4: one FMA per chunk into lane (b, r), lanes summed at the end),
 * so each output's bits depend only on its weight row and its activation row. */
#define ROWS_PER_PASS 8

/* One chunk of one activation row, prepared once per call. */
typedef struct act_chunk {
    __m512i x0, x1; /* qx, group b = elements 0-15 / 16-31 of block b */
    __m512i nz;     /* -zp * (sum of the 8 qx each lane of x0, x1 meets) */
    __m512 sx;      /* sx of block b in each lane of group b */
} act_chunk;

/* [chunk][row of the pass]: 256 B per chunk and row, at most 512 KB per thread
 * (static so the decode step never allocates). */
static _Thread_local act_chunk act_prep[QUANT_MAX_COLS / QUANT_CHUNK * ROWS_PER_PASS];

T512 static void prep_act_512(act_chunk *p, int na, const qact *qa, int nc, int zp) {
    const __m512i idx_b = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i zero = _mm512_setzero_si512(), zpv = _mm512_set1_epi8((char)zp);
    for (int a = 0; a < na; a++)
        for (int c = 0; c < nc; c++) {
            const __m512i x0 = _mm512_loadu_si512(qa[a].q + c * QUANT_CHUNK);
            const __m512i x1 = _mm512_loadu_si512(qa[a].q + c * QUANT_CHUNK + 64);
            act_chunk *o = &p[c * na + a];
            o->x0 = _mm512_shuffle_i32x4(x0, x1, 0x88);
            o->x1 = _mm512_shuffle_i32x4(x0, x1, 0xdd);
            o->nz = _mm512_sub_epi32(
                zero, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, zpv, o->x0), zpv, o->x1));
            o->sx = _mm512_permutexvar_ps(
                idx_b, _mm512_castps128_ps512(_mm_loadu_ps(qa[a].scale + b0q(c))));
        }
}

/* out[a][r] = weight row r . activation row a for the na rows prepared in p. q4 and
 * na are compile-time constants at each call. */
T512 static inline __attribute__((always_inline)) void pass_512(
    float out[][4], const uint8_t *const row[4], const float *const sw[4], const act_chunk *p,
    int nc, const int q4, const int na) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m512i idx_t = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const int cb = q4 ? QUANT_CHUNK / 2 : QUANT_CHUNK; /* bytes of one row's chunk */
    __m512 acc[ROWS_PER_PASS];
    __m128 acc4[ROWS_PER_PASS];
#pragma GCC unroll 8
    for (int a = 0; a < na; a++) {
        acc[a] = _mm512_setzero_ps();
        acc4[a] = _mm_setzero_ps();
    }
    for (int c = 0; c < nc; c++) {
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
#pragma GCC unroll 2
            for (int l = 0; l < cb; l += 64)
                _mm_prefetch((const char *)row[r] + (size_t)c * cb + PF_AHEAD + l, _MM_HINT_T1);
            if (c % 4 == 0)
                _mm_prefetch((const char *)(sw[r] + b0q(c)) + PF_AHEAD * 16 / cb, _MM_HINT_T1);
        }
        __m512i ua[4], ub[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512i u0, u1;
            if (q4) { /* byte j: element j (low nibble), element j + 64 (high) */
                const __m512i v = _mm512_loadu_si512(row[r] + c * (QUANT_CHUNK / 2));
                u0 = _mm512_and_si512(v, nib);
                u1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
            } else {
                u0 = _mm512_loadu_si512(row[r] + c * QUANT_CHUNK);
                u1 = _mm512_loadu_si512(row[r] + c * QUANT_CHUNK + 64);
            }
            ua[r] = _mm512_shuffle_i32x4(u0, u1, 0x88);
            ub[r] = _mm512_shuffle_i32x4(u0, u1, 0xdd);
        }
        const int b0 = b0q(c);
        __m256 w01 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(sw[0] + b0)),
                                          _mm_loadu_ps(sw[1] + b0), 1);
        __m256 w23 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(sw[2] + b0)),
                                          _mm_loadu_ps(sw[3] + b0), 1);
        const __m512 wt = _mm512_permutexvar_ps(
            idx_t, _mm512_castpd_ps(_mm512_insertf64x4(
                       _mm512_castpd256_pd512(_mm256_castps_pd(w01)), _mm256_castps_pd(w23), 1)));
        const act_chunk *pc = p + (size_t)c * na;
#pragma GCC unroll 8
        for (int a = 0; a < na; a++) {
            __m512i dd[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                dd[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(pc[a].nz, ua[r], pc[a].x0), ub[r],
                                            pc[a].x1);
            const __m512 d = _mm512_mul_ps(wt, pc[a].sx); /* sw * sx */
            if (q4) {
                const __m512i g = reduce4_16(dd[0], dd[1], dd[2], dd[3]);
                acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(g), d, acc[a]);
            } else {
                const __m512i g = reduce4(dd[0], dd[1], dd[2], dd[3]);
                const __m512 t = _mm512_mul_ps(d, _mm512_cvtepi32_ps(g)); /* exact int -> f32 */
                /* the blocks in order, as the reference adds them */
                acc4[a] = _mm_add_ps(acc4[a], _mm512_castps512_ps128(t));
                acc4[a] = _mm_add_ps(acc4[a], _mm512_extractf32x4_ps(t, 1));
                acc4[a] = _mm_add_ps(acc4[a], _mm512_extractf32x4_ps(t, 2));
                acc4[a] = _mm_add_ps(acc4[a], _mm512_extractf32x4_ps(t, 3));
            }
        }
    }
#pragma GCC unroll 8
    for (int a = 0; a < na; a++) {
        if (q4)
            acc4[a] = _mm_add_ps(
                _mm_add_ps(_mm512_castps512_ps128(acc[a]), _mm512_extractf32x4_ps(acc[a], 1)),
                _mm_add_ps(_mm512_extractf32x4_ps(acc[a], 2), _mm512_extractf32x4_ps(acc[a], 3)));
        _mm_storeu_ps(out[a], acc4[a]);
    }
}

/* Rows of qa in groups of ROWS_PER_PASS; a group of one goes through matvec_q_avx512
 * (its integers and f32 operations are those of pass_512, so the same bits; the
 * tests compare the two on every AVX-512 machine). */
T512 void matvec_rows_avx512(float *y, size_t ldy, const qmatrix *qm, const qact *qa, int nr,
                             int j0, int j1) {
    if (j0 >= j1) return;
    const int kp = qm->cols_padded, nb = kp / QUANT_BLOCK, nc = kp / QUANT_CHUNK;
    const size_t rb = quant_row_bytes(qm->format, qm->cols);
    const int q4 = qm->format == QUANT_Q4;
    /* more than ROWS_PER_PASS rows: one pass over [j0, j1) per group (the caller
     * keeps the range small enough to stay in cache, see matmul_q_int8) */
    for (int a0 = 0; a0 < nr; a0 += ROWS_PER_PASS) {
        const int na = nr - a0 < ROWS_PER_PASS ? nr - a0 : ROWS_PER_PASS;
        if (na == 1) { /* one row: the tuned single-row kernel, the same bits */
            matvec_q_avx512(y + (size_t)a0 * ldy, qm, qa + a0, j0, j1);
            continue;
        }
        prep_act_512(act_prep, na, qa + a0, nc, q4 ? 8 : 128);
        /* pass i: rows j0 + r * qn + i, one from each quarter (4 sequential streams);
         * the last quarter may be short: its missing rows repeat row j1 - 1, unstored */
        const int qn = (j1 - j0 + 3) / 4;
        for (int i = 0; i < qn; i++) {
            const uint8_t *row[4];
            const float *sw[4];
            for (int r = 0; r < 4; r++) {
                int jr = j0 + r * qn + i < j1 ? j0 + r * qn + i : j1 - 1;
                row[r] = qm->q + (size_t)jr * rb;
                sw[r] = qm->scale + (size_t)jr * nb;
            }
            float out[ROWS_PER_PASS][4];
#define PASS_CASE(N)                                                                           \
    case N:                                                                                    \
        if (q4) pass_512(out, row, sw, act_prep, nc, 1, N);                                    \
        else pass_512(out, row, sw, act_prep, nc, 0, N);                                       \
        break;
            switch (na) {
                PASS_CASE(2)
                PASS_CASE(3)
                PASS_CASE(4)
                PASS_CASE(5)
                PASS_CASE(6)
                PASS_CASE(7)
                PASS_CASE(8)
            }
#undef PASS_CASE
            for (int a = 0; a < na; a++)
                for (int r = 0; r < 4 && j0 + r * qn + i < j1; r++)
                    y[(size_t)(a0 + a) * ldy + (size_t)(j0 + r * qn + i)] = out[a][r];
        }
    }
}

/* ---- AVX2 matrix-vector ---- */

/* 4 int32x8 vectors -> their 4 totals (lane r = input r). */
T256 static inline __m128i reduce4_256(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

T256 static inline __attribute__((always_inline)) void rows4_256(
    float out[4], const uint8_t *const row[4], const float *const sw[4], const qact *qa, int kp,
    int q4) {
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80),
                  nib = _mm256_set1_epi8(0x0f);
    __m128 acc = _mm_setzero_ps();
    for (int c = 0; c < kp / QUANT_CHUNK; c++) {
        __m128i tot[4]; /* per block of the chunk: rows 0..3 */
        if (q4) {
            /* bytes 0..31: elements 0..31 (low) and 64..95 (high); bytes 32..63:
             * elements 32..63 and 96..127. u <= 15: maddubs is exact. */
            __m256i p[4][4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                const uint8_t *q = row[r] + c * (QUANT_CHUNK / 2);
                __m256i v0 = _mm256_loadu_si256((const __m256i *)q);
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(q + 32));
                __m256i u[4] = {_mm256_and_si256(v0, nib), _mm256_and_si256(v1, nib),
                                _mm256_and_si256(_mm256_srli_epi16(v0, 4), nib),
                                _mm256_and_si256(_mm256_srli_epi16(v1, 4), nib)};
#pragma GCC unroll 4
                for (int b = 0; b < 4; b++) {
                    __m256i xv = _mm256_loadu_si256(
                        (const __m256i *)(qa->q + c * QUANT_CHUNK + b * QUANT_BLOCK));
                    p[r][b] = _mm256_madd_epi16(_mm256_maddubs_epi16(u[b], xv), ones);
                }
            }
            for (int b = 0; b < 4; b++) {
                __m128i zs = _mm_set1_epi32(8 * qa->sum[c * 4 + b]);
                tot[b] = _mm_sub_epi32(reduce4_256(p[0][b], p[1][b], p[2][b], p[3][b]), zs);
            }
        } else {
#pragma GCC unroll 4
            for (int b = 0; b < 4; b++) {
                __m256i xv = _mm256_loadu_si256(
                    (const __m256i *)(qa->q + c * QUANT_CHUNK + b * QUANT_BLOCK));
                __m256i p[4];
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    __m256i q = _mm256_xor_si256(
                        _mm256_loadu_si256((const __m256i *)(row[r] + c * QUANT_CHUNK +
                                                             b * QUANT_BLOCK)),
                        flip); /* u - 128 as a signed byte */
                    __m256i pr = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(xv, q));
                    p[r] = _mm256_madd_epi16(pr, ones);
                }
                tot[b] = reduce4_256(p[0], p[1], p[2], p[3]);
            }
        }
        for (int b = 0; b < 4; b++) {
            int bb = c * 4 + b;
            __m128 swv = _mm_setr_ps(sw[0][bb], sw[1][bb], sw[2][bb], sw[3][bb]);
            __m128 d = _mm_mul_ps(swv, _mm_set1_ps(qa->scale[bb]));
            acc = _mm_add_ps(acc, _mm_mul_ps(d, _mm_cvtepi32_ps(tot[b])));
        }
    }
    _mm_storeu_ps(out, acc);
}

/* Several activation rows: each group of 4 weight rows is read from memory once and
 * from L1 for the other rows (no VNNI: AVX2 is not the decode path to tune); each
 * output is rows4_256's, so the same bits whatever nr. */
T256 void matvec_rows_avx2(float *y, size_t ldy, const qmatrix *qm, const qact *qa, int nr,
                           int j0, int j1) {
    const int kp = qm->cols_padded, nb = kp / QUANT_BLOCK;
    const size_t rb = quant_row_bytes(qm->format, qm->cols);
    const int q4 = qm->format == QUANT_Q4;
    for (int j = j0; j < j1; j += 4) {
        const uint8_t *row[4];
        const float *sw[4];
        for (int r = 0; r < 4; r++) {
            int jr = j + r < j1 ? j + r : j1 - 1;
            row[r] = qm->q + (size_t)jr * rb;
            sw[r] = qm->scale + (size_t)jr * nb;
        }
        for (int a = 0; a < nr; a++) {
            float out[4];
            if (q4) rows4_256(out, row, sw, &qa[a], kp, 1);
            else rows4_256(out, row, sw, &qa[a], kp, 0);
            for (int r = 0; r < 4 && j + r < j1; r++) y[(size_t)a * ldy + (size_t)(j + r)] = out[r];
        }
    }
}

T256 void matvec_q_avx2(float *y, const qmatrix *qm, const qact *qa, int j0, int j1) {
    matvec_rows_avx2(y, 0, qm, qa, 1, j0, j1);
}

/* ---- dequantisation (the panels of matmul_q's many-row path) ----
 * out = s * (float)q exactly as dequant_rows: the same single rounded product. */

T512 void dequant_rows_avx512(float *out, const qmatrix *qm, int j0, int j1) {
    const int k = qm->cols, nb = qm->cols_padded / QUANT_BLOCK;
    const size_t rb = quant_row_bytes(qm->format, k);
    const int q4 = qm->format == QUANT_Q4;
    const __m512i zp = _mm512_set1_epi32(q4 ? 8 : 128), nib = _mm512_set1_epi32(15);
    for (int j = j0; j < j1; j++) {
        const uint8_t *row = qm->q + (size_t)j * rb;
        const float *sc = qm->scale + (size_t)j * nb;
        float *o = out + (size_t)(j - j0) * k;
        for (int e = 0; e < k; e += 16) {
            __m512i u;
            if (q4) {
                int c = e / QUANT_CHUNK, p = e % QUANT_CHUNK;
                u = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128((const __m128i *)(row + c * (QUANT_CHUNK / 2) + (p & 63))));
                u = p < 64 ? _mm512_and_si512(u, nib) : _mm512_srli_epi32(u, 4);
            } else {
                u = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + e)));
            }
            __m512 v = _mm512_mul_ps(_mm512_set1_ps(sc[e / QUANT_BLOCK]),
                                     _mm512_cvtepi32_ps(_mm512_sub_epi32(u, zp)));
            int left = k - e;
            __mmask16 mk = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
            _mm512_mask_storeu_ps(o + e, mk, v);
        }
    }
}

T256 void dequant_rows_avx2(float *out, const qmatrix *qm, int j0, int j1) {
    const int k = qm->cols, nb = qm->cols_padded / QUANT_BLOCK;
    const size_t rb = quant_row_bytes(qm->format, k);
    const int q4 = qm->format == QUANT_Q4;
    const __m256i zp = _mm256_set1_epi32(q4 ? 8 : 128), nib = _mm256_set1_epi32(15);
    for (int j = j0; j < j1; j++) {
        const uint8_t *row = qm->q + (size_t)j * rb;
        const float *sc = qm->scale + (size_t)j * nb;
        float *o = out + (size_t)(j - j0) * k;
        int e = 0;
        for (; e + 8 <= k; e += 8) {
            __m256i u;
            if (q4) {
                int c = e / QUANT_CHUNK, p = e % QUANT_CHUNK;
                u = _mm256_cvtepu8_epi32(
                    _mm_loadl_epi64((const __m128i *)(row + c * (QUANT_CHUNK / 2) + (p & 63))));
                u = p < 64 ? _mm256_and_si256(u, nib) : _mm256_srli_epi32(u, 4);
            } else {
                u = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + e)));
            }
            _mm256_storeu_ps(o + e, _mm256_mul_ps(_mm256_set1_ps(sc[e / QUANT_BLOCK]),
                                                  _mm256_cvtepi32_ps(_mm256_sub_epi32(u, zp))));
        }
        if (e < k) /* the last k % 8 elements, scalar */
            for (int t = e; t < k; t++) {
                int c = t / QUANT_CHUNK, p = t % QUANT_CHUNK, u;
                if (q4) {
                    uint8_t b = row[c * (QUANT_CHUNK / 2) + (p & 63)];
                    u = p < 64 ? b & 15 : b >> 4;
                } else {
                    u = row[t];
                }
                o[t] = sc[t / QUANT_BLOCK] * (float)(u - (q4 ? 8 : 128));
            }
    }
}
