/*
 * attention.h - softmax(Q K^T * scale) V for a block of query rows against a set
 * of keys/values, streamed over key tiles with an online softmax (no n x n matrix).
 *
 * One call: nq query rows (Dh floats each) against nk keys. Keys are walked in tiles
 * of ATTN_KTILE counted from key 0; for each tile and each group of ATTN_ROWS query
 * rows the kernel computes the scores S = (q . k) * scale (a register-blocked tile:
 * broadcast q[i][d] times a row of K^T), the running max/sum update, p = exp(S - max)
 * and acc = acc * exp(old max - new max) + P V (V in row layout), and finally
 * out = acc / sum. Row i may see only keys j < limit[i] (causal attention; NULL = all
 * nk): the others score -inf, so p = 0.
 *
 * Why the result does not depend on how a caller blocks its queries (threads,
 * chunked prefill, decode after prefill): every row's arithmetic depends only on
 * that row, its limit and the tile grid from key 0. A tile past a row's limit is an
 * exact no-op for it (max unchanged, rescale exp(0) = 1, p = 0); keys that exist but
 * are masked and keys that do not exist both give p = 0 in the sums.
 *
 * Fully masked rows cannot happen: the caller guarantees limit[i] >= 1 (a causal row
 * sees at least itself) and nk >= 1, so the first tile gives every row a finite max.
 *
 * Keys come either as rows (k, ldk: key j at k + j*ldk; a tile is transposed into the
 * scratch) or already transposed (kt, ldkt: element d of key j at kt[d*ldkt + j]; the
 * vision encoder transposes K once per layer). Full K^T tiles are read in place: pick
 * ldkt so that rows are not a multiple of 1 KiB apart (they would share L1 sets);
 * values with ldv != Dh are copied into a dense tile first (ldv = Dh avoids it).
 *
 * Or keys and values come from a paged KV cache (tiles, used when non-NULL; k, kt, v
 * and their strides are then ignored): tile t, keys 64t .. 64t+63, is one block
 * tiles[t] of 2 * ATTN_KTILE * Dh elements, K^T (Dh, ATTN_KTILE) then V (ATTN_KTILE,
 * Dh): element d of key j at [d*ATTN_KTILE + j], of value j at [ATTN_KTILE*Dh +
 * j*Dh + d]. The elements are f32 (tiles_bf16 = 0), read in place, or bf16
 * (tiles_bf16 = 1: raw uint16 bits), widened into the scratch once per tile and
 * call (for all the call's rows), so a bf16 call gives exactly what the f32 call
 * gives on the widened values, and either gives, bit for bit, what the rows mode
 * gives on the same keys (the same tile grid and arithmetic).
 * Every tile up to key nk - 1 must be a whole block (the kernels read the K^T of
 * the last tile whole); its keys >= nk may hold any bits (NaN too) and never reach
 * a result: their scores are replaced by -inf and their values are never read.
 * No alignment is required (64 bytes avoids split loads).
 *
 * f32 arithmetic throughout; the SIMD versions differ from _ref by summation order
 * and by their exp (a few ulp).
 *
 *   attn_keys kv = {.k = K, .ldk = Dh, .v = V, .ldv = Dh, .nk = n};
 *   akern.block(out, Dh, q, Dh, nq, NULL, &kv, Dh, 1 / sqrtf(Dh), scratch);
 *   // scratch: attn_scratch_floats(nq, Dh) floats, per thread
 *   attn_keys pk = {.nk = n, .tiles = blocks, .tiles_bf16 = 1}; // paged, bf16
 */
#ifndef ERGO_ATTENTION_H
#define ERGO_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#define ATTN_KTILE 64 /* keys per tile (fixed: chunked prefill relies on the grid) */
#define ATTN_ROWS 4   /* query rows per register block */

typedef struct attn_keys {
    const float *k;   /* keys as rows (used when tiles and kt are NULL) */
    size_t ldk;
    const float *kt;  /* or K^T (Dh, ldkt) */
    size_t ldkt;
    const float *v;   /* values as rows: value j at v + j*ldv */
    size_t ldv;
    int nk;           /* keys (>= 1) */
    const void *const *tiles; /* or a paged cache: (ceil(nk / ATTN_KTILE)) tile blocks */
    int tiles_bf16;           /* 1: tiles hold bf16 bits (uint16), 0: f32 */
} attn_keys;

/* Scratch floats one call with nq rows of head dim dh needs, in every mode (the
 * same size with tiles, bf16 or not: a bf16 tile is widened into the two
 * (Dh, ATTN_KTILE) areas the other modes use for a transposed or gathered tile):
 *   2*dh*ATTN_KTILE + ATTN_ROWS*ATTN_KTILE + nqp*dh + 2*nqp,
 *   nqp = nq rounded up to a multiple of ATTN_ROWS. */
size_t attn_scratch_floats(int nq, int dh);

/* out row i at o + i*ldo, query row i at q + i*ldq; limit (nq) or NULL; scratch
 * (attn_scratch_floats(nq, dh)) floats. */
typedef void (*attn_block_fn)(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                              const int32_t *limit, const attn_keys *kv, int dh, float scale,
                              float *scratch);

void attn_block_ref(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                    const int32_t *limit, const attn_keys *kv, int dh, float scale,
                    float *scratch);
/* SIMD versions: head dims that are a multiple of the vector width (16 floats for
 * AVX-512, 8 for AVX2); any other dh runs attn_block_ref. */
void attn_block_avx2(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                     const int32_t *limit, const attn_keys *kv, int dh, float scale,
                     float *scratch);
void attn_block_avx512(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                       const int32_t *limit, const attn_keys *kv, int dh, float scale,
                       float *scratch);
/* --compute bf16: q, k, v and the probabilities rounded to bf16 for the two products
 * (vdpbf16ps), f32 sums and softmax; head dims a multiple of 16 (else the f32 kernel).
 * Needs AVX-512 BF16 (attention_kernels_for_compute picks it only then). */
void attn_block_avx512bf16(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                           const int32_t *limit, const attn_keys *kv, int dh, float scale,
                           float *scratch);

/* y[i] = exp(x[i]) for n floats: the vectorised exp the SIMD kernels use (exported
 * for tests). Within 2 ulp of expf for x in [-87.3, 88.7]; exp(-inf) = 0; results
 * below FLT_MIN (x < -87.3) may be flushed to 0 (AVX2) or carry a denormal's
 * rounding; x > 88.72 gives +inf. NaN inputs are not handled. */
void exp_f32_ref(float *y, const float *x, size_t n);
void exp_f32_avx2(float *y, const float *x, size_t n);
void exp_f32_avx512(float *y, const float *x, size_t n);

typedef struct attention_kernels {
    attn_block_fn block;
    void (*exp_f32)(float *y, const float *x, size_t n);
} attention_kernels;

/* The table for one ISA; kernels_init fills `akern` with the chosen one. */
void attention_kernels_for(attention_kernels *t, cpu_isa isa);
/* The same for a compute mode: COMPUTE_BF16 on AVX-512 with BF16 takes the bf16
 * block (kernels_set_compute calls it). */
void attention_kernels_for_compute(attention_kernels *t, cpu_isa isa, compute_mode c);
extern attention_kernels akern;

#endif
