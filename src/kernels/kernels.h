/*
 * kernels.h - the numeric kernels and the table that picks their instruction set.
 *
 * Every kernel exists as <op>_ref (plain C, the definition of correct), and
 * where it pays, <op>_avx2 and <op>_avx512 beside it in the same file, with the
 * same signature (outputs first, then inputs, then sizes). kernels_init() fills
 * the `kern` table once from what the CPU and OS support; ERGO_ISA=ref|avx2|avx512
 * forces a path (an unsupported one is refused, not emulated); ERGO_MATMUL=dot
 * turns off the blocked many-row matmul (kern.matmul_block = NULL). One binary runs
 * on any x86-64: the SIMD functions carry target attributes, nothing is built
 * with -march.
 *
 * Exactness rules:
 *   - f32 kernels differ from _ref only by summation order (tests bound the error
 *     relative to the sum of |terms|);
 *   - conversions (bf16/f16 -> f32) are exact and must be bit-identical.
 *
 *   kernels_init(NULL);                 // once, at start-up
 *   float d = kern.dot_f32(a, b, n);
 */
#ifndef ERGO_KERNELS_H
#define ERGO_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "base/half.h"
#include "base/status.h"

typedef enum cpu_isa { ISA_REF = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 } cpu_isa;

/* Element types a kernel can read weights in (weights are used as stored). */
typedef enum kdtype { KDT_F32 = 0, KDT_BF16 = 1, KDT_F16 = 2 } kdtype;

/* Element i of an array of kdtype wt, as f32 (exact). The scalar paths' one reader. */
static inline float kdtype_at(const void *w, kdtype wt, size_t i) {
    switch (wt) {
    case KDT_BF16: return bf16_to_f32_one(((const uint16_t *)w)[i]);
    case KDT_F16: return f16_to_f32_one(((const uint16_t *)w)[i]);
    case KDT_F32: break;
    }
    return ((const float *)w)[i];
}

/* A weight as the kernels read it, bound once at load (model/weights.c) and shared
 * read-only: what every op that reads a parameter takes, instead of a pointer and a
 * dtype at each call. A linear layer's weight is (rows, cols) = (out, in) as
 * nn.Linear stores it (a Conv3d patch embed flattened to (out, C*T*P*P)); a vector
 * (norm weight, bias) is (1, n). With a block-quantised twin (kernels/quant.h, set
 * by model_quantize) the products read the twin and `data` may be NULL (released). */
struct qmatrix;
typedef struct kweight {
    kdtype dt;                 /* element type of data */
    const void *data;          /* (rows, cols) row-major, or NULL once released */
    int rows, cols;
    const struct qmatrix *q;   /* the twin the products use, or NULL */
} kweight;

/* Element i of a vector weight (a bias, a norm's weight) as f32. */
static inline float kweight_at(const kweight *w, size_t i) { return kdtype_at(w->data, w->dt, i); }

/* How the many-row products compute (--compute, ERGO_COMPUTE): f32 matches the
 * reference's f32 numbers; bf16 rounds the activations to bf16 at the product's input
 * and accumulates in f32 (gemm_bf16.c), on the CPU's bf16 dot-product instructions. */
typedef enum compute_mode { COMPUTE_F32 = 0, COMPUTE_BF16 = 1 } compute_mode;

/* rows [i0,i1) x columns [j0,j1) of y (row stride ldy) = xb @ W^T (+ bias): xb holds
 * bf16 rows of bf16_padded_k(k) elements, zero-padded to bf16_padded_rows rows; W is
 * m bf16 rows of stride ldw; bias (m) or NULL. One thread. */
typedef void (*matmul_bf16_block_fn)(float *y, int ldy, const uint16_t *xb, const uint16_t *w,
                                     int ldw, int m, const void *bias, kdtype bt, int k, int i0,
                                     int i1, int j0, int j1);

typedef struct kernel_table {
    cpu_isa isa;
    compute_mode compute;      /* what matmul_wt / matmul_q_panels use for many rows */
    /* sum_i a[i]*b[i] over n floats */
    float (*dot_f32)(const float *a, const float *b, size_t n);
    /* out[i] = f32(in[i]) for n bf16 values (raw uint16 bits) */
    void (*bf16_to_f32)(float *out, const uint16_t *in, size_t n);
    /* out[i] = f32(in[i]) for n IEEE half values (raw uint16 bits) */
    void (*f16_to_f32)(float *out, const uint16_t *in, size_t n);
    /* sum_i x[i]*w[i] with w in its stored type (kdtype, below) */
    float (*dot_wt)(const float *x, const void *w, kdtype wt, size_t n);
    /* rows [i0,i1) x columns [j0,j1) of y (., m) = x (., k) @ W^T (+ bias), one thread;
     * each element bit-identical to dot_wt of the same table (gemm.c) */
    void (*matmul_block)(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                         kdtype bt, int k, int m, int i0, int i1, int j0, int j1);
    /* the bf16 tile kernel, or NULL when this ISA has no bf16 dot product */
    matmul_bf16_block_fn matmul_bf16_block;
} kernel_table;

extern kernel_table kern;

/* ---- model ops (ops.c): f32 activations, f32 accumulation, weights in any kdtype ----
 *
 * matmul_wt: y (n, m) = x (n, k) @ W^T (+ bias), with W (m, k) row-major as PyTorch's
 *   nn.Linear stores it and bias (m) or NULL. Threads over output columns (OpenMP);
 *   y must not alias x. From MATMUL_BLOCKED_MIN_N rows on it runs matmul_wt_blocked;
 *   either way every element equals kern.dot_wt of its row and column (plus bias),
 *   so results do not depend on n, on chunking or on the number of threads.
 * rmsnorm:   y (n, d) = x / sqrt(mean(x^2) + eps) * w, per row (Qwen2RMSNorm in f32).
 * silu_mul:  g (n) = silu(g) * u (SwiGLU's gate times up), in place.
 * gelu_erf:  x (n) = 0.5 x (1 + erf(x / sqrt 2)) (nn.GELU(), exact), in place.
 * softmax:   x (n) in place, max-subtracted, f32.
 * add:       y (n) += x.
 */
#define MATMUL_BLOCKED_MIN_N 4
void matmul_wt(float *y, const float *x, const void *w, kdtype wt, const void *bias, kdtype bt,
               int n, int k, int m);
void matmul_wt_ref(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                   kdtype bt, int n, int k, int m);
/* The many-row path of matmul_wt with a given table (cache-blocked, threaded; tests
 * run it for every ISA). Bit-identical to one t->dot_wt per element. */
void matmul_wt_blocked(const kernel_table *t, float *y, const float *x, const void *w, kdtype wt,
                       const void *bias, kdtype bt, int n, int k, int m);
void rmsnorm(float *y, const float *x, const kweight *w, int n, int d, float eps);
void silu_mul(float *g, const float *u, size_t n);
void gelu_erf(float *x, size_t n);
void softmax(float *x, size_t n);
void add_inplace(float *y, const float *x, size_t n);
/* out (n) = f32 of n elements of a weight row starting at element `offset`. */
void load_row_f32(float *out, const void *w, kdtype wt, size_t offset, size_t n);
/* out (cols) = row `row` of w as f32 (an embedding lookup). */
void kweight_row_f32(float *out, const kweight *w, int row);

/* linear_forward: y (n, w->rows) = x (n, w->cols) @ W^T (+ b), nn.Linear on f32 rows
 * whatever form the weight is held in: its quantised twin when it has one
 * (matmul_q), else as stored (matmul_wt). b (1, rows) or NULL, used as stored. */
void linear_forward(float *y, const float *x, const kweight *w, const kweight *b, int n);
/* The same with the path of a quantised weight named: LINEAR_INT8 quantises every row
 * of x to int8 (matmul_q_int8: what decode uses, weights read once for all rows),
 * LINEAR_PANELS keeps x f32 against dequantised panels (matmul_q_panels: prefill,
 * vision), LINEAR_AUTO lets n decide (matmul_q). Weights used as stored ignore it
 * (one path, whose elements do not depend on n). */
typedef enum linear_path { LINEAR_AUTO = 0, LINEAR_INT8, LINEAR_PANELS } linear_path;
void linear_forward_path(float *y, const float *x, const kweight *w, const kweight *b, int n,
                         linear_path path);

/* What this CPU and OS support, detected once (the one detection every kernel table,
 * the probe and `ergo --version` read): libgcc's __builtin_cpu_supports for the
 * vector extensions (it checks XCR0, i.e. that the OS saves the wide registers),
 * CPUID leaf 7 for the rest (clang 14's builtin does not know f16c or the AMX bits). */
typedef struct cpu_features {
    int avx2, fma, f16c;              /* the AVX2 kernels need all three */
    int avx512f, avx512bw, avx512vl;  /* the AVX-512 kernels */
    int avx512vnni;                   /* vpdpbusd: the q8/q4 matrix-vector kernels */
    int avx512bf16;                   /* vdpbf16ps */
    int amx_tile, amx_bf16, amx_int8; /* AMX (the OS must also grant tile data: Linux asks) */
} cpu_features;
const cpu_features *cpu_features_get(void);

/* The best ISA this CPU and OS support. */
cpu_isa cpu_best_isa(void);
const char *cpu_isa_name(cpu_isa isa);

/* Fills `kern` for the requested ISA, or for ERGO_ISA / the best one when
 * `requested` is NULL. Fails on an unknown name or an ISA this CPU lacks. */
ergo_status kernels_init(const char *requested, ergo_error *err);

/* Fills a table for one ISA (tests compare every ISA with ISA_REF), compute f32. */
void kernels_table_for(kernel_table *t, cpu_isa isa);

/* Sets kern.compute: "f32", "bf16", or "auto" / NULL / "" ($ERGO_COMPUTE, else the
 * default: bf16 where the CPU has bf16 dot products, else f32). bf16 on a table
 * without a bf16 kernel is refused. kernels_init calls it with NULL. */
ergo_status kernels_set_compute(const char *requested, ergo_error *err);
const char *compute_mode_name(compute_mode c);
/* The default of "auto" on this CPU. */
compute_mode compute_default(void);

/* ---- bf16 products (gemm_bf16.c) ----
 * matmul_bf16: y (n, m) = bf16(x) (n, k) @ W^T (+ bias) with W (m, k) bf16, f32 sums,
 *   cache-blocked and threaded with t->matmul_bf16_block (non-NULL). -1 when out of
 *   memory. matmul_bf16_ref: the definition (sums in k order).
 * x_to_bf16: xb = x rounded to bf16 (ties to even, as f32_to_bf16_one), rows padded
 *   to bf16_padded_k(k) and zero rows up to bf16_padded_rows(n); xb from
 *   bf16_rows_alloc (free()). matmul_bf16_xb runs the product on such rows. */
int bf16_padded_k(int k);
int bf16_padded_rows(int n);
/* Rows of x per cache block of the bf16 product (a multiple of 4). */
int bf16_row_block(int k);
uint16_t *bf16_rows_alloc(int n, int k);
void x_to_bf16(const kernel_table *t, uint16_t *xb, const float *x, int n, int k);
void x_to_bf16_ref(uint16_t *xb, const float *x, int n, int k);
void x_to_bf16_avx512(uint16_t *xb, const float *x, int n, int k);
/* x_to_bf16 on the calling thread alone (inside another parallel loop). */
void bf16_round_rows(const kernel_table *t, uint16_t *xb, const float *x, int n, int k);
int matmul_bf16(const kernel_table *t, float *y, const float *x, const uint16_t *w,
                const void *bias, kdtype bt, int n, int k, int m);
void matmul_bf16_xb(const kernel_table *t, float *y, const uint16_t *xb, const uint16_t *w,
                    const void *bias, kdtype bt, int n, int k, int m);
void matmul_bf16_ref(float *y, const float *x, const uint16_t *w, const void *bias, kdtype bt,
                     int n, int k, int m);
void matmul_bf16_block_ref(float *y, int ldy, const uint16_t *xb, const uint16_t *w, int ldw,
                           int m, const void *bias, kdtype bt, int k, int i0, int i1, int j0,
                           int j1);
void matmul_bf16_block_avx512bf16(float *y, int ldy, const uint16_t *xb, const uint16_t *w,
                                  int ldw, int m, const void *bias, kdtype bt, int k, int i0,
                                  int i1, int j0, int j1);

/* ---- per-ISA implementations (exported for tests) ---- */
float dot_f32_ref(const float *a, const float *b, size_t n);
float dot_f32_avx2(const float *a, const float *b, size_t n);
float dot_f32_avx512(const float *a, const float *b, size_t n);

void bf16_to_f32_ref(float *out, const uint16_t *in, size_t n);
void bf16_to_f32_avx2(float *out, const uint16_t *in, size_t n);
void bf16_to_f32_avx512(float *out, const uint16_t *in, size_t n);

void f16_to_f32_ref(float *out, const uint16_t *in, size_t n);
void f16_to_f32_avx2(float *out, const uint16_t *in, size_t n);
void f16_to_f32_avx512(float *out, const uint16_t *in, size_t n);

float dot_wt_ref(const float *x, const void *w, kdtype wt, size_t n);
float dot_wt_avx2(const float *x, const void *w, kdtype wt, size_t n);
float dot_wt_avx512(const float *x, const void *w, kdtype wt, size_t n);

void matmul_block_ref(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                      kdtype bt, int k, int m, int i0, int i1, int j0, int j1);
void matmul_block_avx2(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                       kdtype bt, int k, int m, int i0, int i1, int j0, int j1);
void matmul_block_avx512(float *y, const float *x, const void *w, kdtype wt, const void *bias,
                         kdtype bt, int k, int m, int i0, int i1, int j0, int j1);

#endif
