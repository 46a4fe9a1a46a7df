/*
 * linear.c - nn.Linear on f32 rows with the weight in its stored type or quantised.
 */
#include "linear.h"

#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "model/weights.h"

void linear_forward(float *y, const float *x, const tensor *w, const tensor *b, int n, int in,
                    int out) {
    const void *bias = b ? b->data : NULL;
    const kdtype bt = b ? tensor_kdtype(b) : KDT_F32;
    if (w->quant) {
        ERGO_ASSERT(w->quant->rows == out && w->quant->cols == in);
        matmul_q(y, x, w->quant, bias, bt, n);
        return;
    }
    matmul_wt(y, x, w->data, tensor_kdtype(w), bias, bt, n, in, out);
}
