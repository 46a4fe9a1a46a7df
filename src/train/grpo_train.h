/*
 * grpo_train.h - ERGO's reinforcement learning (`ergo train grpo`): GRPO on two-turn
 * rollouts (rollout.h) scored by ERGO's rewards (reward.h, with the judge of
 * judge.h), the clipped-ratio + KL objective (grpo.h) through the training passes
 * (step.h), AdamW, checkpoints with resume (checkpoint.h), a fsynced JSONL log and
 * PNG plots (run_log.h, plot.h), data parallelism over a train_comm (sft.h).
 *
 * One step: prompts_per_step items of the epoch order (item k to rank k % ranks:
 * ranks take whole groups); for each, G rollouts on the current policy (an engine
 * view of the masters: the rollouts always see the weights being trained), each
 * scored; the rewards of every rank gathered and turned into advantages; each rollout
 * whose advantage or KL gives it a gradient goes forward (the reference policy first
 * when kl_beta > 0: the weights the run started from, or the base without adapters),
 * its per-token loss gradient back; the gradients summed over ranks, clipped, AdamW.
 * Log-probabilities are taken at the rollout temperature (training.md section 1.7:
 * the policy that sampled is softmax(logits / T)). With num_iterations mu > 1 each
 * batch of rollouts makes mu optimiser steps (TRL's num_iterations): the first
 * iteration's log-probabilities are kept as the old policy's, the reference's are
 * computed once.
 *
 * Choices the paper leaves open, made here (each a switch):
 *   - a group with a rollout the judge could not score is dropped whole (counted),
 *     never scored as wrong;
 *   - the loss's denominators are those of the whole step over all ranks (the update
 *     does not depend on the number of ranks);
 *   - a rollout whose box cannot be read stops after stage 1 unless
 *     rollout.fallback_full.
 *
 *   grpo_options o;  grpo_options_default(&o);
 *   o.data_path = "train/test_questions.jsonl"; o.out_dir = "runs/g"; o.judge.kind = JUDGE_ORACLE;
 *   grpo_result r;   grpo_run(&engine, "models/sft", &o, NULL, &r, &err);
 */
#ifndef ERGO_GRPO_TRAIN_H
#define ERGO_GRPO_TRAIN_H

#include <stdint.h>

#include "base/status.h"
#include "runtime/engine.h"
#include "train/grpo.h"
#include "train/judge.h"
#include "train/optim.h"
#include "train/reward.h"
#include "train/rollout.h"
#include "train/sft.h"
#include "train/train_model.h"

typedef struct grpo_options {
    const char *data_path, *out_dir; /* items in V*'s JSONL layout; the run's directory */
    int64_t max_steps;       /* 0: the epochs decide */
    int64_t epochs;          /* 1 */
    int prompts_per_step;    /* items per optimiser step over all ranks (2) */
    rollout_config rollout;  /* group size, budgets, sampling (temperature 1) */
    grpo_config objective;   /* advantages, clipping, KL, aggregation */
    int num_iterations;      /* mu: optimiser steps per batch of rollouts (1); from the
                                second on, rho = pi / pi_old with pi_old the policy that
                                sampled, and clipping acts */
    reward_config reward;
    judge_config judge;      /* JUDGE_ORACLE needs items with a "bbox" */
    float lr;                /* 1e-6 */
    lr_kind schedule;        /* LR_CONSTANT */
    int64_t warmup_steps;    /* 0 */
    adamw_config adam;       /* 0.9, 0.99, 1e-8, weight decay 0 */
    float max_grad_norm;     /* 1.0 */
    uint64_t seed;           /* item order, rollout sampling */
    train_config train;      /* what trains (full or frozen parts; LoRA is refused: the
                                rollouts' forward has no adapters yet) */
    int max_tokens;          /* a rollout's longest sequence (4096) */
    int max_patches;         /* per image (16384) */
    int recompute;
    int64_t save_every;      /* 50 steps (0: only at the end) */
    int keep;                /* 3 */
    int resume;
    int skip_bad_items;      /* 1: an item whose image cannot be read is skipped (counted) */
    int progress;            /* 1 terminal line, 0 a line per log_every, -1 none */
    int64_t log_every;
    /* Tests only (random weights earn no reward, so nothing would move): when set, R of
     * rollout k of a group is this function's value instead of the rewards'. */
    double (*reward_hook)(void *ctx, const rollout *r, int k);
    void *reward_hook_ctx;
} grpo_options;

void grpo_options_default(grpo_options *o);

typedef struct grpo_result {
    int64_t steps;
    int64_t rollouts;        /* rolled out by this rank in this run */
    int64_t dropped_groups;  /* a judge could not answer */
    int64_t bad_items;
    double first_reward, last_reward; /* mean total reward of the first / last step */
    char checkpoint[4096];
} grpo_result;

ergo_status grpo_run(const engine *e, const char *model_dir, const grpo_options *o,
                     const train_comm *comm, grpo_result *res, ergo_error *err);

#endif
