/*
 * policy_weights.h - the weights GRPO's rollouts run when the policy is a LoRA
 * adapter over a frozen base: the inference forward has no adapter term, so each
 * adapted linear is given as one f32 matrix W + scale * B A (PEFT's merge), rebuilt
 * after every optimiser step; every other weight is the base's, shared.
 *
 * Memory: one f32 copy of every adapted linear (for the 7B widths, about 0.93 G
 * floats per 4 layers with all seven linears adapted), so this suits small models and
 * benchmarks; a full-depth 7B needs the adapter term in the inference forward itself.
 * The merged product is exact f32 arithmetic in a fixed order, so a rollout and a
 * resumed rollout see the same bits.
 *
 *   policy_weights pw;  policy_weights_init(&pw, &tm, &err);   // tm.lora set
 *   engine_view(&policy, &e, &pw.w);
 *   ... adamw_step(...); policy_weights_update(&pw, &tm);     // after each step
 *   policy_weights_free(&pw);
 */
#ifndef ERGO_TRAIN_POLICY_WEIGHTS_H
#define ERGO_TRAIN_POLICY_WEIGHTS_H

#include "base/status.h"
#include "model/weights.h"
#include "train/train_model.h"

typedef struct policy_weights {
    model_weights w;   /* what the rollouts read */
    float **merged;    /* (n_layers * LORA_N_TARGETS) f32 W + s B A, NULL where not adapted */
    int n;
} policy_weights;

/* Copies tm->w's structure and allocates the merged matrices (filled: the update is
 * run once). Refuses a base whose adapted linears keep no bf16/f32 data (a q8/q4
 * twin alone). */
ergo_status policy_weights_init(policy_weights *pw, const train_model *tm, ergo_error *err);
/* Rebuilds every merged matrix from the base and the current adapters. */
void policy_weights_update(policy_weights *pw, const train_model *tm);
void policy_weights_free(policy_weights *pw);

#endif
