/*
 * step.h - one training example through the whole model: each image through the
 * vision tower's training pass, the language model's, the log-probabilities of the
 * targets, and back (vision_train.h, text_train.h). What SFT and GRPO share.
 *
 *   train_states ts;  train_states_init(&ts, &tm, 4096, 8192, 4, 0, &err);
 *   train_forward(&ts, &tm, &ex, 1.0f, logp, &n, &err);      // logp (n) of the targets
 *   for (i..) g[i] = -1.0f / total_tokens;                    // dL/dlogp
 *   train_backward(&ts, &tm, g);                              // into tm.g and tm.lora
 */
#ifndef ERGO_TRAIN_STEP_H
#define ERGO_TRAIN_STEP_H

#include "base/status.h"
#include "train/text_train.h"
#include "train/train_model.h"
#include "train/vision_train.h"

/* One image of an example: pixel_values (t*h*w patches, C*Tp*P*P) and its grid. */
typedef struct train_image {
    const float *pixels;
    int grid_t, grid_h, grid_w;
} train_image;

/* An example: the token sequence (train_sample without vision rows: the step
 * computes them) and its images in order. */
typedef struct train_example {
    train_sample text;
    const train_image *images;
    int n_images;
} train_example;

typedef struct train_states {
    text_train_state *text;
    vision_train_state **vision; /* (max_images) one per image of an example */
    int max_images, max_patches;
    float *vision_rows;          /* (max vision rows, D) the merged rows of all images */
    float *d_vision;             /* (max vision rows, D) their gradient */
    int max_vision_rows;
    int n_vision_rows;           /* of the last forward */
    int n_images;                /* of the last forward */
    int *image_rows;             /* (max_images) merged rows of each image of the last forward */
    int vision_trains;           /* some vision parameter has a gradient buffer */
} train_states;

/* States for examples of up to max_tokens tokens and max_images images of up to
 * max_patches patches each. recompute: the language model keeps only each layer's
 * input and recomputes the layer in the backward (text_train.h). */
ergo_status train_states_init(train_states *ts, const train_model *tm, int max_tokens,
                              int max_patches, int max_images, int recompute,
                              ergo_error *err);
void train_states_free(train_states *ts);

/* The forward of one example at temperature tau: logp (*n_logp) of its targets. */
ergo_status train_forward(train_states *ts, const train_model *tm, const train_example *ex,
                          float tau, float *logp, int *n_logp, ergo_error *err);
/* The backward of the last forward, g = dL/dlogp (n_logp): gradients accumulate. */
void train_backward(train_states *ts, train_model *tm, const float *g);

#endif
