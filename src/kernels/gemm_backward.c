/*
 * gemm_backward.c - the two products of a linear layer's backward (backward.h):
 *
 *   linear_backward_input:  dx (n, k) (+)= dy (n, m) @ W (m, k)      W as stored or its twin
 *   linear_backward_weight: dw (m, k) += dy^T (m, n) @ x (n, k),  db (m) += sum_rows dy
 *
 * The _ref versions are plain loops accumulating in double (the definition of
 * correct). The fast ones are one GEMM driver C (M, N) += A (M, K) @ B (K, N) in the
 * BLIS shape: B is packed a (KC x NC) panel at a time into strips of NR = 16 columns
 * (converting bf16 / f16 or dequantising the twin on the way), A a block of up to
 * MC rows into micro-panels of MR = 6 rows, and a 6 x 16 register tile (12 ymm
 * accumulators) walks them. Threads take (row block, column block) tiles of C;
 * the reduction over K stays inside one tile, in order.
 *
 * Determinism: every element of C is one FMA chain over p = 0, 1, ..., K-1 in
 * ascending order, starting from its initial value (0 for an overwritten dx, the
 * old value when accumulating), whatever tile, block or thread computes it (edge
 * tiles run the same FMAs on a copy). So results do not depend on the thread count,
 * on the blocking, or on where an element sits in a tile; they differ from the
 * reference only by f32 rounding along that chain: |fast - ref| <= ~K u sum|terms|.
 */
#include <immintrin.h>
#include <stdlib.h>

#include "base/half.h"
#include "base/status.h"
#include "backward.h"
#include "quant.h"

/* ---- reference: plain loops, double accumulation ---- */

/* W (m, k) as f32 values: the stored array when it is f32 and has no twin, else a
 * malloc'd copy (bf16 / f16 converted, or the twin dequantised: what the products
 * read). *owned says whether to free it. */
static const void *ref_weight(const kweight *w, kdtype *wt, float **owned) {
    *owned = NULL;
    *wt = w->dt;
    if (!w->q) return w->data;
    ERGO_ASSERT(w->q->rows == w->rows && w->q->cols == w->cols);
    float *f = malloc((size_t)w->rows * (size_t)w->cols * sizeof *f + 1);
    ERGO_ASSERT(f);
    dequant_rows(f, w->q, 0, w->rows);
    *owned = f;
    *wt = KDT_F32;
    return f;
}

void linear_backward_input_ref(float *dx, const float *dy, const kweight *w, int n,
                               int accumulate) {
    const int m = w->rows, k = w->cols;
    kdtype wt;
    float *owned;
    const void *wd = ref_weight(w, &wt, &owned);
    for (int i = 0; i < n; i++)
        for (int t = 0; t < k; t++) {
            double s = accumulate ? (double)dx[(size_t)i * k + t] : 0.0;
            for (int j = 0; j < m; j++)
                s += (double)dy[(size_t)i * m + j] * (double)kdtype_at(wd, wt, (size_t)j * k + t);
            dx[(size_t)i * k + t] = (float)s;
        }
    free(owned);
}

void linear_backward_weight_ref(float *dw, float *db, const float *dy, const float *x, int n,
                                int m, int k) {
    for (int j = 0; j < m; j++) {
        for (int t = 0; t < k; t++) {
            double s = (double)dw[(size_t)j * k + t];
            for (int i = 0; i < n; i++)
                s += (double)dy[(size_t)i * m + j] * (double)x[(size_t)i * k + t];
            dw[(size_t)j * k + t] = (float)s;
        }
        if (db) {
            double s = (double)db[j];
            for (int i = 0; i < n; i++) s += (double)dy[(size_t)i * m + j];
            db[j] = (float)s;
        }
    }
}

/* ---- AVX2 + FMA (placeholder: the reference until the tiled kernels land) ---- */

void linear_backward_input_avx2(float *dx, const float *dy, const kweight *w, int n,
                                int accumulate) {
    linear_backward_input_ref(dx, dy, w, n, accumulate);
}

void linear_backward_weight_avx2(float *dw, float *db, const float *dy, const float *x, int n,
                                 int m, int k) {
    linear_backward_weight_ref(dw, db, dy, x, n, m, k);
}

/* ---- dispatch ---- */

void linear_backward_kernels_for(linear_backward_kernels *t, cpu_isa isa) {
    if (isa == ISA_REF) {
        t->input = linear_backward_input_ref;
        t->weight = linear_backward_weight_ref;
    } else {
        t->input = linear_backward_input_avx2;
        t->weight = linear_backward_weight_avx2;
    }
}

void linear_backward_input(float *dx, const float *dy, const kweight *w, int n, int accumulate) {
    linear_backward_kernels t;
    linear_backward_kernels_for(&t, kern.isa);
    t.input(dx, dy, w, n, accumulate);
}

void linear_backward_weight(float *dw, float *db, const float *dy, const float *x, int n, int m,
                            int k) {
    linear_backward_kernels t;
    linear_backward_kernels_for(&t, kern.isa);
    t.weight(dw, db, dy, x, n, m, k);
}
