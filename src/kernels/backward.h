/*
 * backward.h - the backward of every forward op of kernels.h / rope.h: what training
 * needs to turn the gradient of an op's output into the gradients of its inputs and
 * parameters (../shared/spec/training.md section 2.2).
 *
 * Conventions, as in the forward: outputs first, then inputs, then sizes; f32
 * activations and gradients, weights read in any kdtype (or their quantised twin:
 * a frozen base used as stored). Gradients of parameters ACCUMULATE (+=: gradient
 * accumulation over micro-batches and the tied embedding's two uses need it; the
 * caller zeroes them once per step); gradients of activations are OVERWRITTEN unless
 * the name says _acc. A parameter gradient pointer may be NULL: that parameter is
 * frozen and its gradient is not computed (only the input gradient).
 *
 * Each kernel has a plain scalar _ref beside its fast version (same file), a test
 * comparing them on every ISA this CPU has, and a finite-difference test at odd
 * sizes (tests/test_backward.c).
 *
 *   linear_forward(y, x, &W, &b, n);                      // forward, kernels.h
 *   linear_backward_input(dx, dy, &W, n, 0);              // dx = dy W
 *   linear_backward_weight(dW, db, dy, x, n, W.rows, W.cols);  // dW += dy^T x
 */
#ifndef ERGO_BACKWARD_H
#define ERGO_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* ---- products (gemm_backward.c) ----
 *
 * linear_backward_input: dx (n, w->cols) = dy (n, w->rows) @ W, W (rows, cols) as
 *   stored (f32 / bf16 / f16) or its quantised twin (dequantised a panel at a time);
 *   accumulate = 1 adds into dx instead (the residual fan-out, q/k/v sharing x).
 * linear_backward_weight: dw (m, k) += dy^T (m, n) @ x (n, k), and db (m) += the
 *   column sums of dy when db is not NULL; f32 everywhere (master gradients).
 * Both thread over their output (OpenMP) and are deterministic: each output element
 * is summed in a fixed order that does not depend on the number of threads. */
void linear_backward_input(float *dx, const float *dy, const kweight *w, int n, int accumulate);
void linear_backward_weight(float *dw, float *db, const float *dy, const float *x, int n, int m,
                            int k);
/* Scalar definitions the tests compare with (same signatures). */
void linear_backward_input_ref(float *dx, const float *dy, const kweight *w, int n,
                               int accumulate);
void linear_backward_weight_ref(float *dw, float *db, const float *dy, const float *x, int n,
                                int m, int k);
/* The products of one ISA (tests run every ISA the CPU has; the two public functions
 * use the one kernels_init chose, kern.isa). ISA_REF gives the _ref functions above
 * (double accumulation); AVX2 and AVX-512 the AVX2+FMA kernels (f32 FMA chains:
 * there is no AVX-512 variant yet). */
typedef struct linear_backward_kernels {
    void (*input)(float *dx, const float *dy, const kweight *w, int n, int accumulate);
    void (*weight)(float *dw, float *db, const float *dy, const float *x, int n, int m, int k);
} linear_backward_kernels;
void linear_backward_kernels_for(linear_backward_kernels *t, cpu_isa isa);
void linear_backward_input_avx2(float *dx, const float *dy, const kweight *w, int n,
                                int accumulate);
void linear_backward_weight_avx2(float *dw, float *db, const float *dy, const float *x, int n,
                                 int m, int k);

/* ---- element-wise and row-wise (ops_backward.c) ----
 *
 * rmsnorm_backward: y = w * x * r, r = 1/sqrt(mean(x^2) + eps) per row (rmsnorm):
 *   dx (n, d) = r (dy w) - (r^3 / d) x sum(dy w x);  dw (d) += sum_rows dy x r (NULL:
 *   frozen). r is recomputed from x exactly as the forward computes it.
 * silu_mul_backward: h = silu(g) u: dg = dh u sig(g) (1 + g (1 - sig(g))),
 *   du = dh silu(g); n elements, all five arrays distinct.
 * gelu_erf_backward: y = gelu(x): dx = dy (Phi(x) + x phi(x)); dx may alias dy.
 * embedding_backward: dE (V, d) rows ids[i] += dy row i, for ids[i] >= 0 (a negative
 *   id marks a row whose gradient goes elsewhere: an image pad routed to the merger).
 *   Deterministic: rows are added in index order per vocabulary row. */
void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const kweight *w,
                      int n, int d, float eps);
void silu_mul_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                       size_t n);
void gelu_erf_backward(float *dx, const float *dy, const float *x, size_t n);
void embedding_backward(float *dE, const float *dy, const int32_t *ids, int n, int d);

void rmsnorm_backward_ref(float *dx, float *dw, const float *dy, const float *x,
                          const kweight *w, int n, int d, float eps);
void silu_mul_backward_ref(float *dg, float *du, const float *dh, const float *g,
                           const float *u, size_t n);
void gelu_erf_backward_ref(float *dx, const float *dy, const float *x, size_t n);
void embedding_backward_ref(float *dE, const float *dy, const int32_t *ids, int n, int d);

/* ---- rotary (rope.c) ----
 * rope_apply_inverse: the backward of rope_apply, which is a rotation by +theta of
 *   each (i, i + Dh/2) pair: rotates by -theta in place (x*cos - rotate_half(x)*sin
 *   with rotate_half's sign flipped), same layout and tables as rope_apply. */
void rope_apply_inverse(float *x, size_t ldx, int n, int heads, int dh, const float *cos,
                        const float *sin);

#endif
