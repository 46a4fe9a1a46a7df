/*
 * quant.h - block-quantised weight matrices (q8, q4) and the kernels that read them.
 *
 * A weight W (m, k) as nn.Linear stores it is quantised row by row in blocks of
 * QUANT_BLOCK = 32 consecutive elements, each block with one f32 scale s and
 * integers q = round(w / s) (nearest, ties away from zero, as lroundf), clamped to
 * the format's range, so w ~ s * q: q8 s = max|w| / 127, q in [-127, 127]; q4
 * s = w_ext / -8 with w_ext the block's (first) element of largest magnitude, so
 * it maps to exactly -8 and the rest use all 16 levels [-8, 7] (q4_0's rule; the
 * scale may be negative). Rows are zero-padded
 * to kp = k rounded up to QUANT_CHUNK = 128 (vision's 3420-wide down_proj and
 * 1176-wide patch embed have no multiple of 32), and padding quantises to 0.
 *
 * Stored unsigned with a zero point, because the int8 dot instruction (AVX-512
 * VNNI vpdpbusd) multiplies unsigned by signed bytes:
 *   q8: one byte per element, u = q + 128 (q in [-127, 127]);
 *   q4: two per byte: in each chunk of 128 elements, byte j (0..63) holds element j
 *       in its low nibble and element j + 64 in its high nibble, u = q + 8
 *       (q in [-8, 7]); one 64-byte load then unpacks into two 64-element halves.
 * Scales are f32 (exact, no f16 underflow for tiny blocks), (m, kp / 32) row-major.
 *
 * Decode (few rows) quantises the activation row to int8 per block of 32 as fast
 * engines do (s = max|x| / 127, round to nearest) and keeps the block sums so the
 * zero point folds out exactly:
 *   y[j] = sum_b sw[j,b] * sx[b] * (sum_{i in b} u[j,i] * qx[i] - zp * sumqx[b])
 * The integer part isum is exact on every ISA, and d = sw * sx is one rounded
 * product. The reference adds a row's terms d * isum in block order; so do the AVX2
 * kernels and the AVX-512 q8 kernel (the same bits). The AVX-512 q4 kernel, the one
 * that would otherwise be compute-bound, adds them in another order (one FMA per
 * 4 rows x 4 blocks into 4 lanes per row, lanes summed at the end): it differs from
 * the reference by summation order only, |err| <= gamma_(nb/4+3) * sum_b |d isum|
 * (tests/test_quant.c checks that bound). Activation quantisation is the same bits
 * on every ISA: x / s (IEEE division), then to nearest with ties away from zero, as
 * for weights.
 * Many rows (prefill, vision) dequantise panels of weight rows to f32 and run the
 * f32 tile kernel: activations stay f32 there, and each element equals
 * kern.dot_wt of its row of x and its dequantised weight row.
 *
 *   qmatrix qm;  quant_alloc(&qm, QUANT_Q4, m, k, &err);
 *   quant_rows(&qm, w, KDT_BF16, 0, m);           // at load, threads split rows
 *   matmul_q(y, x, &qm, bias, bt, n);             // y (n, m) = x (n, k) @ W^T (+ b)
 *   matmul_q_int8(y, x, &qm, bias, bt, n);        // the same, int8 for every row (decode)
 */
#ifndef ERGO_QUANT_H
#define ERGO_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "kernels/kernels.h"

#define QUANT_BLOCK 32
#define QUANT_CHUNK 128

typedef enum quant_format { QUANT_NONE = 0, QUANT_Q8 = 1, QUANT_Q4 = 2 } quant_format;

typedef struct qmatrix {
    quant_format format;
    int rows, cols;   /* m, k of the source weight */
    int cols_padded;  /* kp: cols rounded up to QUANT_CHUNK */
    uint8_t *q;       /* rows * quant_row_bytes(format, cols) bytes */
    float *scale;     /* rows * (kp / QUANT_BLOCK) */
    int owned;        /* q and scale were allocated by quant_alloc (else they point into a map) */
} qmatrix;

/* An activation row quantised for the int8 dot (decode). */
typedef struct qact {
    int8_t *q;        /* kp values (padding 0) */
    float *scale;     /* kp / QUANT_BLOCK */
    int32_t *sum;     /* kp / QUANT_BLOCK: sum of q over the block */
} qact;

const char *quant_format_name(quant_format f); /* "q8", "q4", "none" */
/* "q8"/"q4" -> format; "bf16"/"none"/"as-stored" -> QUANT_NONE; else -1. */
int quant_format_parse(const char *s);
int quant_padded_cols(int k);
size_t quant_row_bytes(quant_format f, int k);   /* bytes of q per row */
size_t quant_scale_count(int k);                 /* scales per row */
/* Total bytes a quantised (m, k) weight occupies (q + scales): what decode reads. */
size_t quant_matrix_bytes(quant_format f, int m, int k);

/* q and scale 64-byte aligned, owned = 1; refuses a format other than q8/q4, an
 * empty shape and k > QUANT_MAX_COLS (ERGO_E_LIMIT). quant_free frees only owned
 * arrays, and clears *qm either way. */
ergo_status quant_alloc(qmatrix *qm, quant_format f, int m, int k, ergo_error *err);
void quant_free(qmatrix *qm);

/* Quantises rows [j0, j1) of W (m, k) given in its stored type (scalar; the caller
 * splits rows over threads). Deterministic: the same bytes on every ISA. A block
 * whose scale is 0 (all zero, or the scale underflows) stores q = 0. Weights are
 * expected finite. */
void quant_rows(qmatrix *qm, const void *w, kdtype wt, int j0, int j1);
/* out (j1 - j0, k) = the f32 values s * q of rows [j0, j1) (one rounded product each,
 * the same bits on every ISA; qkern.dequant is the fast one). */
void dequant_rows(float *out, const qmatrix *qm, int j0, int j1);
void dequant_rows_avx2(float *out, const qmatrix *qm, int j0, int j1);
void dequant_rows_avx512(float *out, const qmatrix *qm, int j0, int j1);

/* ---- per-ISA kernels (the table below; exported for tests) ---- */

/* qa (kp values) = x (k floats) quantised per block; kp = quant_padded_cols(k). */
void quant_act_ref(qact *qa, const float *x, int k);
void quant_act_avx2(qact *qa, const float *x, int k);
void quant_act_avx512(qact *qa, const float *x, int k);

/* y[j] for j in [j0, j1) = row j of qm . the quantised activation (formula above). */
void matvec_q_ref(float *y, const qmatrix *qm, const qact *qa, int j0, int j1);
void matvec_q_avx2(float *y, const qmatrix *qm, const qact *qa, int j0, int j1);
void matvec_q_avx512(float *y, const qmatrix *qm, const qact *qa, int j0, int j1);

/* Several activation rows against the same weight rows (batched decode): qa (nr rows,
 * each from act), y (nr rows of stride ldy >= j1): for r < nr and j in [j0, j1),
 * y[r * ldy + j] = row j of qm . qa[r]; nothing else is written (nr >= 1; ldy may be
 * 0 for nr = 1). Each weight chunk is loaded once for up to 8 rows of qa (AVX-512; AVX2
 * and ref re-read it from L1). Bit-identical, output by output, to matvec of the same
 * ISA on qa[r] alone: the same exact integer block sums and the same f32 operations
 * in the same order, so a row's result never depends on nr, on the other rows of
 * the call, on j0 / j1 or on the thread split. matvec is this with nr = 1. The
 * AVX-512 kernel keeps 512 KB of static thread-local scratch (8 rows at
 * QUANT_MAX_COLS). */
void matvec_rows_ref(float *y, size_t ldy, const qmatrix *qm, const qact *qa, int nr, int j0,
                     int j1);
void matvec_rows_avx2(float *y, size_t ldy, const qmatrix *qm, const qact *qa, int nr, int j0,
                      int j1);
void matvec_rows_avx512(float *y, size_t ldy, const qmatrix *qm, const qact *qa, int nr, int j0,
                        int j1);

typedef struct quant_kernels {
    void (*act)(qact *qa, const float *x, int k);
    void (*matvec)(float *y, const qmatrix *qm, const qact *qa, int j0, int j1);
    void (*dequant)(float *out, const qmatrix *qm, int j0, int j1);
    void (*matvec_rows)(float *y, size_t ldy, const qmatrix *qm, const qact *qa, int nr, int j0,
                        int j1);
} quant_kernels;

/* The table for one ISA (kernels_init fills `qkern` with the chosen one). Every
 * entry gives the same bits as the reference, except the AVX-512 q4 matvec (f32
 * summation order only, bound above). AVX-512 without VNNI gets the AVX2 kernels. */
void quant_kernels_for(quant_kernels *t, cpu_isa isa);
extern quant_kernels qkern;

/* y (n, m) = x (n, k) @ dequant(W)^T (+ bias in its kdtype, or NULL), threaded.
 * n < MATMUL_BLOCKED_MIN_N: matmul_q_int8; otherwise matmul_q_panels. No
 * allocation: the scratch is static thread-local (about 1.8 MB per thread with the
 * kernel's, sized for k <= QUANT_MAX_COLS), so concurrent callers do not share it.
 * Results do not depend on the thread count. */
#define QUANT_MAX_COLS 32768
void matmul_q(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt, int n);
void matmul_q_int8(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt,
                   int n);
void matmul_q_panels(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt,
                     int n);

/* The int8 path for any n (batched decode: one row per sequence): every row is
 * quantised (qkern.act) and qkern.matvec_rows runs over the weight rows, one
 * contiguous range per thread, the weights streamed once for up to
 * matmul_q_int8_rows(k) rows (>= QUANT_INT8_ROWS; 64 for k <= 8192, 27 at 18944; a
 * larger n takes one pass per group of that many; past 8 rows a pass walks its range
 * in ~128 KB tiles that stay in L2). Row i of y is bit for bit what
 * matmul_q_int8(y_i, x_i, qm, bias, bt, 1) gives, for any n, any thread count and
 * whatever the other rows are. */
#define QUANT_INT8_ROWS 16
void matmul_q_int8(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt,
                   int n);
int matmul_q_int8_rows(int k);
/* The panel path for any n: dequantised panels of weight rows through kern's f32
 * tile kernel, activations f32 (prefill, vision); each element equals kern.dot_wt of
 * its row of x and its dequantised weight row (plus bias). */
void matmul_q_panels(float *y, const float *x, const qmatrix *qm, const void *bias, kdtype bt,
                     int n);

#endif
