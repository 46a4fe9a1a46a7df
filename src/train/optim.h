/*
 * optim.h - the optimiser: AdamW with torch.optim.AdamW's semantics, global-norm
 * gradient clipping as torch.nn.utils.clip_grad_norm_, and the learning-rate
 * schedules of transformers (linear warm-up, then cosine or constant).
 *
 * AdamW (torch 2.8, single-tensor, maximize = amsgrad = False), at step t >= 1:
 *   p *= 1 - lr * wd                       (decoupled decay, before the moments)
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)   (eps outside the root)
 * in f32, whatever the storage dtype of the model (master weights and moments are
 * f32). Biases and norm weights get no decay (transformers' Trainer groups).
 *
 *   opt_param ps[] = {{w, g, m, v, n, 1}, ...};
 *   float norm = grad_clip_global_norm(ps, n_params, 1.0f);  // before the step
 *   adamw_step(ps, n_params, &cfg, t, lr_at(&sched, t - 1));
 */
#ifndef ERGO_OPTIM_H
#define ERGO_OPTIM_H

#include <stddef.h>
#include <stdint.h>

typedef struct opt_param {
    float *w;        /* (n) master weights */
    float *g;        /* (n) gradient of this step */
    float *m, *v;    /* (n) first and second moments (zeroed before step 1) */
    size_t n;
    int decay;       /* 1: weight decay applies */
} opt_param;

typedef struct adamw_config {
    float beta1, beta2;   /* 0.9, 0.999 */
    float eps;            /* 1e-8 */
    float weight_decay;   /* 0.01 in torch, 0.0 in transformers' TrainingArguments */
} adamw_config;

/* One AdamW step t (1-based) at learning rate lr over every parameter. */
void adamw_step(opt_param *ps, int n_params, const adamw_config *c, int64_t t, float lr);

/* The global 2-norm of all gradients (torch: the norm of the per-tensor norms, in
 * f32); when max_norm > 0 scales every gradient by min(1, max_norm / (norm + 1e-6)).
 * Returns the norm before clipping (what trainers log). A NaN/Inf norm is returned
 * as is and nothing is scaled (the caller stops). */
float grad_clip_global_norm(opt_param *ps, int n_params, float max_norm);

typedef enum lr_kind { LR_CONSTANT = 0, LR_COSINE, LR_LINEAR } lr_kind;
typedef struct lr_schedule {
    lr_kind kind;
    float lr;             /* peak learning rate */
    int64_t warmup;       /* steps of linear warm-up from 0 */
    int64_t total;        /* steps of the whole run (cosine / linear decay to 0) */
} lr_schedule;

/* The learning rate of optimiser step `step` (0-based, as transformers' LambdaLR:
 * warm-up lr * step / warmup, then cosine 0.5 (1 + cos(pi * progress)) or linear). */
float lr_at(const lr_schedule *s, int64_t step);

#endif
