/*
 * grpo.h - ERGO's GRPO objective, pure and exact: group-normalised advantages, the
 * per-token clipped-ratio + k3-KL loss with TRL's aggregations, its gradient with
 * respect to each token's log-probability (what train_backward's g takes, step.h),
 * the metrics TRL logs, and the segment mask of a two-turn rollout (training.md
 * sections 1.2-1.8, 6). No model: the caller brings log-probabilities.
 *
 * Mirrors TRL v0.23.0 trl/trainer/grpo_trainer.py: advantages as in
 * _generate_and_score_completions (lines 1443-1464), the loss as _compute_loss
 * (lines 1624-1756, token-level importance sampling, no entropy mask, no vLLM
 * importance-sampling correction). VLM-R1's objective (ERGO's reference) is the
 * default: loss "grpo", scale "group", beta 0.04, eps 0.2. Per token t of sequence i:
 *
 *   rho = exp(lp - lp_old)                     lp_old = lp (detached) when mu = 1
 *   c1  = min(rho, delta) if delta else rho;   c2 = clamp(rho, 1 - eps_low, 1 + eps_high)
 *   l   = -min(c1 A_i, c2 A_i) + beta (exp(lp_ref - lp) - (lp_ref - lp) - 1)
 *   L   = sum_{i,t} w_i m_it l_it;             g_it = dL/dlp_it = w_i m_it dl/dlp
 *   w_i = 1 / (B max(n_i, 1) GA)    grpo    (per-sequence mean, then batch mean)
 *         1 / (max(N, 1) GA)        bnpo    (token mean of the micro-batch)
 *         1 / (B L_max GA)          dr_grpo (L_max = max_completion_length)
 *         P / global_tokens         dapo    (token mean of the whole generation batch)
 * with B the micro-batch's sequences, n_i = sum_t m_it, N = sum n_i, GA the
 * micro-batches per optimiser step, P the data-parallel processes. This is exactly
 * the value TRL's _compute_loss returns for one micro-batch; TRL's step gradient is
 * the mean over the P ranks of the sum over the GA micro-batches (DDP + HF Trainer),
 * so with a train_comm that sums (sft.h) divide the summed gradient by P. torch's
 * tie rules are kept: where c1 A = c2 A (rho inside the clip range) min passes half
 * its gradient to each side and both clamps pass theirs, i.e. the full unclipped
 * gradient -A rho; clamps pass gradient at their bounds (inclusive).
 *
 * The gradient is separable: w_i depends on counts only, so a trainer can forward,
 * score and backward one sequence at a time (grpo_seq_loss) once it knows the
 * micro-batch's counts (from the masks, before any forward).
 *
 *   grpo_config c;  grpo_config_default(&c);            // G 8, grpo, group, 0.04, 0.2
 *   double adv[16];  grpo_reward_stats rs;
 *   grpo_advantages(&c, rewards, 16, adv, NULL, &rs, &err);   // 2 groups of 8
 *   grpo_mask_config mc = {151645, 151655, 0};            // <|im_end|>, <|image_pad|>
 *   grpo_segment segs[4] = {{GRPO_SEG_CONTEXT, 0, p}, {GRPO_SEG_GENERATED, p, g1},
 *                           {GRPO_SEG_CONTEXT, p + g1, u}, {GRPO_SEG_GENERATED, p + g1 + u, g2}};
 *   grpo_build_mask(&mc, ids, n, segs, 4, mask, targets, &mi, &err); // targets: train_sample
 *   grpo_norm nm = {.n_seqs = B, .n_tokens = sum of mi.n_loss, .grad_accum = 1,
 *                   .n_processes = 1, .global_tokens = sum of mi.n_generated};
 *   train_forward(..., tau, logp, &n, &err);              // n == mi.n_loss
 *   grpo_seq s = {logp, NULL, ref_logp, NULL, n, adv[i]};
 *   grpo_stats st = {0};
 *   grpo_seq_loss(&c, &nm, &s, g, &st, &err);             // st.loss += this sequence's part
 *   train_backward(..., g);
 *   grpo_metrics m = grpo_stats_metrics(&st);             // kl, clip_ratio/low_mean, ...
 */
#ifndef ERGO_TRAIN_GRPO_H
#define ERGO_TRAIN_GRPO_H

#include <stdint.h>

#include "base/status.h"

typedef enum grpo_loss_type {
    GRPO_LOSS_GRPO = 0, /* VLM-R1 and TRL "grpo": mean over sequences of the token mean
                           (TRL clamps each count to >= 1; VLM-R1 does not and gives NaN
                           for a sequence without loss tokens: we follow TRL) */
    GRPO_LOSS_BNPO,     /* TRL v0.17-v0.21 default: token mean of the micro-batch */
    GRPO_LOSS_DR_GRPO,  /* Dr. GRPO: token sum / (B * max_completion_length) */
    GRPO_LOSS_DAPO,     /* TRL v0.22+ default: token sum / (global tokens / P) */
} grpo_loss_type;

typedef enum grpo_scale {
    GRPO_SCALE_GROUP = 0, /* A = (R - mean_g) / (std_g + 1e-4) (TRL "group", VLM-R1) */
    GRPO_SCALE_BATCH,     /* A = (R - mean_g) / (std_batch + 1e-4) (TRL "batch") */
    GRPO_SCALE_NONE,      /* A = R - mean_g (TRL "none", Dr. GRPO) */
} grpo_scale;

typedef struct grpo_config {
    int group_size;            /* G, rollouts per prompt, 8 (>= 2) */
    grpo_scale scale_rewards;  /* GRPO_SCALE_GROUP */
    double eps_low;            /* 0.2 (TRL epsilon): the ratio's lower clip 1 - eps_low */
    double eps_high;           /* 0.2 (TRL epsilon_high; DAPO suggests 0.28) */
    double delta;              /* 0: off; else TRL's two-sided clip rho <= delta (> 1) */
    double kl_beta;            /* 0.04 (VLM-R1; TRL >= 0.19 uses 0): 0 needs no reference */
    grpo_loss_type loss_type;  /* GRPO_LOSS_GRPO */
    int max_completion_length; /* dr_grpo's constant L_max (generated tokens of a rollout) */
} grpo_config;

/* VLM-R1's defaults (training.md section 1.9), max_completion_length 256. */
void grpo_config_default(grpo_config *c);
/* Refuses out-of-range or non-finite values, naming the field. */
ergo_status grpo_config_check(const grpo_config *c, ergo_error *err);

/* "grpo", "bnpo", "dr_grpo", "dapo"; "group", "batch", "none" (CLI flags). */
const char *grpo_loss_type_name(grpo_loss_type t);
const char *grpo_scale_name(grpo_scale s);
ergo_status grpo_loss_type_parse(const char *s, grpo_loss_type *out, ergo_error *err);
ergo_status grpo_scale_parse(const char *s, grpo_scale *out, ergo_error *err);

/* ---------------------------------------------------------------- advantages */

/* What TRL logs of a generation batch's rewards. */
typedef struct grpo_reward_stats {
    double reward_mean;   /* "reward": mean of every R */
    double reward_std;    /* "reward_std": mean of the group stds (batch: the batch std) */
    double frac_zero_std; /* "frac_reward_zero_std": TRL's isclose(std, 0), i.e. std <= 1e-8,
                             over the stds the scale mode divides by (batch: 0 or 1) */
    int n_groups;
    int n_zero_std;       /* groups whose own std is <= 1e-8 (whatever the scale mode) */
} grpo_reward_stats;

/* Advantages of n rewards in groups of c->group_size consecutive rollouts (n a
 * multiple of G, TRL's and VLM-R1's layout: each prompt G times in a row), computed
 * over the whole generation batch of all ranks (TRL gathers before normalising).
 * std is unbiased (N - 1); a group of equal rewards gets A = 0 exactly. zero_std
 * (n / G, or NULL) gets 1 for each group whose std is <= 1e-8: only the KL moves
 * those rollouts. stats may be NULL. Refuses non-finite rewards. */
ergo_status grpo_advantages(const grpo_config *c, const double *rewards, int n, double *adv,
                            uint8_t *zero_std, grpo_reward_stats *stats, ergo_error *err);

/* ---------------------------------------------------------------- loss */

/* The denominators' inputs beyond one sequence (see w_i above). */
typedef struct grpo_norm {
    int n_seqs;            /* B: sequences of the micro-batch (grpo, dr_grpo) */
    int64_t n_tokens;      /* N: their masked tokens (bnpo) */
    int grad_accum;        /* GA: micro-batches per optimiser step (not dapo: TRL) */
    int n_processes;       /* P: data-parallel ranks (dapo) */
    int64_t global_tokens; /* dapo: TRL's num_items_in_batch, the generated tokens of the
                              whole generation batch over every rank and micro-batch
                              (grpo_mask_info.n_generated summed) */
} grpo_norm;

/* One sequence's per-token arrays: the tokens with a target, in position order (what
 * train_forward returns for targets from grpo_build_mask; then mask is NULL). All three
 * log-probabilities must come from the same temperature tau (TRL divides the policy's,
 * the old policy's and the reference's logits by it; VLM-R1 uses tau = 1): the
 * training.md section 1.7 trap. train_backward applies the 1/tau of dz. */
typedef struct grpo_seq {
    const float *logp;     /* (n) policy log-probabilities, this forward (at tau) */
    const float *old_logp; /* (n) the policy's at rollout time (mu > 1 or lagging
                              rollouts), or NULL: lp detached, rho = 1 */
    const float *ref_logp; /* (n) the frozen reference's, or NULL (needs kl_beta = 0) */
    const uint8_t *mask;   /* (n) 1 = carries loss, or NULL: all 1 */
    int n;
    double advantage;      /* A_i, the same for every token of the sequence */
} grpo_seq;

/* Sums over masked tokens, for the metrics; add sequences, micro-batches or ranks. */
typedef struct grpo_stats {
    double loss;           /* sum of the sequences' contributions to L */
    double tokens;         /* masked tokens */
    double kl_sum;         /* sum of k3 (only when ref_logp is given) */
    double kl_tokens;      /* masked tokens that had a ref_logp */
    double low_clipped;    /* rho < 1 - eps_low and A < 0 (TRL's is_low_clipped) */
    double high_clipped;   /* rho > 1 + eps_high and A > 0 */
    double region_clipped; /* either: these get no policy gradient (with delta, neither do
                              A < 0 tokens with rho > delta, which TRL does not count) */
} grpo_stats;

typedef struct grpo_metrics {
    double kl;          /* "kl": mean k3 over masked tokens (NaN without a reference) */
    double clip_low;    /* "clip_ratio/low_mean" of one rank */
    double clip_high;   /* "clip_ratio/high_mean" */
    double clip_region; /* "clip_ratio/region_mean" */
} grpo_metrics;

/* TRL's masked_batch_mean: sums / max(tokens, 1). */
grpo_metrics grpo_stats_metrics(const grpo_stats *st);

/* The weight w_i of a sequence of n_masked loss tokens (see above); 0 when the
 * config or norm is invalid (grpo_seq_loss checks and says why). */
double grpo_seq_weight(const grpo_config *c, const grpo_norm *nm, int64_t n_masked);

/* One sequence: writes g (s->n) = dL/dlogp (0 on unmasked tokens), adds its
 * contribution to st->loss and its tokens to the metric sums (st may be NULL).
 * Refuses a bad config or norm, a missing reference with kl_beta > 0, and
 * non-finite inputs (naming the token). */
ergo_status grpo_seq_loss(const grpo_config *c, const grpo_norm *nm, const grpo_seq *s,
                          float *g, grpo_stats *st, ergo_error *err);

/* A micro-batch of n_seqs sequences: fills nm->n_seqs and nm->n_tokens from the
 * masks (grad_accum, n_processes and global_tokens are the caller's), writes g (sum
 * of s[i].n, sequence after sequence), *loss (TRL's _compute_loss value) and st
 * (zeroed first; may be NULL). */
ergo_status grpo_batch_loss(const grpo_config *c, grpo_norm *nm, const grpo_seq *s, int n_seqs,
                            float *g, double *loss, grpo_stats *st, ergo_error *err);

/* ---------------------------------------------------------------- mask */

typedef enum grpo_seg_kind {
    GRPO_SEG_CONTEXT = 0,   /* prompt, injected user turn (crop pads), template text */
    GRPO_SEG_GENERATED = 1, /* tokens the policy sampled in one assistant turn */
} grpo_seg_kind;

/* A span [start, start + len) of a rollout's ids. */
typedef struct grpo_segment {
    grpo_seg_kind kind;
    int start, len;
} grpo_segment;

typedef struct grpo_mask_config {
    int32_t im_end_id;    /* <|im_end|> 151645: closes an assistant turn (kept) */
    int32_t image_pad_id; /* <|image_pad|> 151655: never generated (refused) */
    int mask_truncated;   /* TRL's mask_truncated_completions: a turn without its
                             <|im_end|> zeroes the whole rollout (0: VLM-R1, trained on);
                             such a rollout has n_loss 0 but still counts in B */
} grpo_mask_config;

typedef struct grpo_mask_info {
    int n_loss;      /* tokens with mask 1 (= train_forward's n_logp with `targets`) */
    int n_generated; /* the same before mask_truncated: TRL's completion length, what
                        dapo's global_tokens sums */
    int n_turns;     /* generated segments */
    int truncated;   /* some turn has no <|im_end|> */
} grpo_mask_info;

/* The loss mask of a rollout of n ids split into n_segs contiguous segments from
 * position 0 (tokens after the last one are padding). mask[i] = 1 on each generated
 * token of a turn up to and including the turn's first <|im_end|>, 0 on context, on
 * a turn's tokens after its <|im_end|> and on padding (training.md section 1.8:
 * never VLM-R1's "up to the first EOS" over the whole sequence, which would drop
 * turn 2). targets (n, or NULL) is train_sample's: ids[i + 1] when mask[i + 1], else
 * -1. Refuses segments that overlap, leave gaps, run past n or are empty, a
 * generated segment at position 0 (nothing predicts it), no generated segment, and
 * a generated <|image_pad|>. info may be NULL. */
ergo_status grpo_build_mask(const grpo_mask_config *mc, const int32_t *ids, int n,
                            const grpo_segment *segs, int n_segs, uint8_t *mask,
                            int32_t *targets, grpo_mask_info *info, ergo_error *err);

#endif
