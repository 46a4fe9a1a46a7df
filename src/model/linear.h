/*
 * linear.h - one nn.Linear (or a Conv3d with stride = kernel, as the patch embed)
 * applied to rows of f32 activations, whatever form its weight is held in.
 *
 * A bound weight is read as stored (f32/bf16/f16, kernels/ops.c); when
 * model_quantize gave it a block-quantised twin (tensor.quant), the twin is used
 * instead (kernels/quant.h). The bias is always used as stored.
 */
#ifndef ERGO_LINEAR_H
#define ERGO_LINEAR_H

#include "io/safetensors.h"

/* y (n, out) = x (n, in) @ W^T (+ b), W (out, in) as nn.Linear stores it; b may be NULL. */
void linear_forward(float *y, const float *x, const tensor *w, const tensor *b, int n, int in,
                    int out);

#endif
