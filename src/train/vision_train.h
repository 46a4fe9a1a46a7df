/*
 * vision_train.h - the vision encoder for training: the forward of model/vision.c
 * that keeps what its backward needs, and that backward (training.md section 2.2):
 * patch embed (weight gradient only: the input is pixels), the 2-D rotary, window /
 * full attention (attn_train.h, one span per window or frame), SwiGLU MLPs with
 * biases, the window permutation and its inverse, the merger (ln_q, fc1, GELU, fc2).
 *
 * Gradients go to a model_weights-shaped set `g` whose weight.k.data point at f32
 * gradient buffers of the same shapes (train/grads.h); a weight whose gradient
 * pointer is NULL is frozen (not computed). Gradients accumulate (+=).
 *
 * A vision_train_state holds ONE image's saved activations (a sample with two
 * images uses two states): forward(image) ... backward(that image's output grad).
 * Its buffers are allocated once for max_patches (none inside the passes): about
 * N (K + (depth+1) D + depth (5 D + 2 F + H) + D) floats kept plus
 * N (11 D + 3 F + 3 Dh/2) + 2 (N/4) Do of scratch (vision_train.c), i.e. 26 KB per
 * patch for training.md's tiny-A tower, 1.9 MB per patch for 7B's.
 *
 *   vision_train_state *vs;
 *   vision_train_state_new(&vs, &cfg.vision, max_patches, &err);
 *   vision_train_forward(vs, &w, pixels, gt, gh, gw, rows, &err); // rows (N/4, Do), raster
 *   ... the language model uses rows, computes d_rows ...
 *   vision_train_backward(vs, &w, &g, d_rows);
 *   vision_train_state_free(vs);
 */
#ifndef ERGO_VISION_TRAIN_H
#define ERGO_VISION_TRAIN_H

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/grads.h"

typedef struct vision_train_state vision_train_state; /* defined in vision_train.c */

/* Allocates a state for images of up to max_patches patches (*out, free with
 * vision_train_state_free). */
ergo_status vision_train_state_new(vision_train_state **out, const vision_config *cfg,
                                   int max_patches, ergo_error *err);
void vision_train_state_free(vision_train_state *st);

/* The forward of vision_encode for one image (same inputs, same output order: out
 * (N/U, out_hidden) in raster merge-group order), saving activations in st. Its
 * output equals vision_encode's within the f32 summation-order error (tested). */
ergo_status vision_train_forward(vision_train_state *st, const model_weights *w,
                                 const float *pixels, int grid_t, int grid_h, int grid_w,
                                 float *out, ergo_error *err);

/* Given d_out (N/U, out_hidden) = dL/d(out), in raster order: accumulates the
 * gradients of every vision weight whose gradient buffer in g is not NULL, for the
 * image of the last successful vision_train_forward on st with the same w (a no-op
 * when there is none). Gradients below the lowest trainable parameter are not
 * computed (a tower frozen up to the merger costs only the merger's backward). */
void vision_train_backward(vision_train_state *st, const model_weights *w, model_weights *g,
                           const float *d_out);

#endif
