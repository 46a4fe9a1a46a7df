/*
 * grpo.c - the GRPO objective (see grpo.h): advantages, the per-token loss and its
 * gradient, the aggregations, the metrics and the segment mask.
 *
 * Everything is computed in double from the float inputs (torch runs TRL's code in
 * the logits' dtype; the fixtures run it in float64, so both sides compute the same
 * real numbers and differ by rounding only); g is rounded to float once at the end.
 */
#include "grpo.h"

#include <math.h>
#include <string.h>

/* TRL's torch.isclose(std, 0): |std| <= atol 1e-8 + rtol 1e-5 * 0. */
#define GRPO_ZERO_STD 1e-8
/* TRL's and VLM-R1's std epsilon (grpo_trainer.py: std_rewards + 1e-4). */
#define GRPO_STD_EPS 1e-4

void grpo_config_default(grpo_config *c) {
    memset(c, 0, sizeof *c);
    c->group_size = 8;
    c->scale_rewards = GRPO_SCALE_GROUP;
    c->eps_low = 0.2;
    c->eps_high = 0.2;
    c->delta = 0.0;
    c->kl_beta = 0.04;
    c->loss_type = GRPO_LOSS_GRPO;
    c->max_completion_length = 256;
}

ergo_status grpo_config_check(const grpo_config *c, ergo_error *err) {
    if (c->group_size < 2)
        return ergo_fail(err, ERGO_E_ARG, "grpo: group size %d: a group needs at least 2 rollouts",
                         c->group_size);
    if ((unsigned)c->scale_rewards > GRPO_SCALE_NONE)
        return ergo_fail(err, ERGO_E_ARG, "grpo: unknown scale_rewards mode %d", (int)c->scale_rewards);
    if ((unsigned)c->loss_type > GRPO_LOSS_DAPO)
        return ergo_fail(err, ERGO_E_ARG, "grpo: unknown loss type %d", (int)c->loss_type);
    if (!(c->eps_low >= 0.0 && c->eps_low < 1.0))
        return ergo_fail(err, ERGO_E_ARG, "grpo: eps_low %g must be in [0, 1)", c->eps_low);
    if (!(c->eps_high >= 0.0 && isfinite(c->eps_high)))
        return ergo_fail(err, ERGO_E_ARG, "grpo: eps_high %g must be finite and >= 0", c->eps_high);
    if (!(c->delta == 0.0 || (c->delta > 1.0 && isfinite(c->delta))))
        return ergo_fail(err, ERGO_E_ARG, "grpo: delta %g must be 0 (off) or a finite value > 1",
                         c->delta);
    if (!(c->kl_beta >= 0.0 && isfinite(c->kl_beta)))
        return ergo_fail(err, ERGO_E_ARG, "grpo: kl_beta %g must be finite and >= 0", c->kl_beta);
    if (c->loss_type == GRPO_LOSS_DR_GRPO && c->max_completion_length < 1)
        return ergo_fail(err, ERGO_E_ARG, "grpo: dr_grpo needs max_completion_length >= 1 (got %d)",
                         c->max_completion_length);
    return ERGO_OK;
}

static const char *const loss_names[] = {"grpo", "bnpo", "dr_grpo", "dapo"};
static const char *const scale_names[] = {"group", "batch", "none"};

const char *grpo_loss_type_name(grpo_loss_type t) {
    return (unsigned)t <= GRPO_LOSS_DAPO ? loss_names[t] : "?";
}

const char *grpo_scale_name(grpo_scale s) {
    return (unsigned)s <= GRPO_SCALE_NONE ? scale_names[s] : "?";
}

ergo_status grpo_loss_type_parse(const char *s, grpo_loss_type *out, ergo_error *err) {
    for (int i = 0; i <= GRPO_LOSS_DAPO; i++)
        if (s && strcmp(s, loss_names[i]) == 0) {
            *out = (grpo_loss_type)i;
            return ERGO_OK;
        }
    return ergo_fail(err, ERGO_E_ARG, "unknown GRPO loss \"%s\" (grpo, bnpo, dr_grpo or dapo)",
                     s ? s : "");
}

ergo_status grpo_scale_parse(const char *s, grpo_scale *out, ergo_error *err) {
    for (int i = 0; i <= GRPO_SCALE_NONE; i++)
        if (s && strcmp(s, scale_names[i]) == 0) {
            *out = (grpo_scale)i;
            return ERGO_OK;
        }
    return ergo_fail(err, ERGO_E_ARG, "unknown reward scaling \"%s\" (group, batch or none)",
                     s ? s : "");
}

/* ---------------------------------------------------------------- advantages */

/* Mean and unbiased std (torch.std, correction 1) of n >= 2 values. Two passes: the
 * mean of equal values is exactly that value, so their deviations are exactly 0. */
static void mean_std(const double *v, int n, double *mean, double *std) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += v[i];
    const double m = s / n;
    double q = 0.0;
    for (int i = 0; i < n; i++) q += (v[i] - m) * (v[i] - m);
    *mean = m;
    *std = sqrt(q / (n - 1));
}

ergo_status grpo_advantages(const grpo_config *c, const double *rewards, int n, double *adv,
                            uint8_t *zero_std, grpo_reward_stats *stats, ergo_error *err) {
    ergo_status st = grpo_config_check(c, err);
    if (st != ERGO_OK) return st;
    const int G = c->group_size;
    if (n < G || n % G != 0)
        return ergo_fail(err, ERGO_E_SHAPE, "grpo: %d rewards are not whole groups of %d", n, G);
    for (int i = 0; i < n; i++)
        if (!isfinite(rewards[i]))
            return ergo_fail(err, ERGO_E_ARG, "grpo: reward %d is %g (rewards must be finite)", i,
                             rewards[i]);
    const int n_groups = n / G;
    double batch_mean = 0.0, batch_std = 0.0, sum_std = 0.0;
    mean_std(rewards, n, &batch_mean, &batch_std);
    int n_zero = 0;
    for (int k = 0; k < n_groups; k++) {
        const double *r = rewards + (size_t)k * G;
        double m, sd;
        mean_std(r, G, &m, &sd);
        const int zero = sd <= GRPO_ZERO_STD;
        n_zero += zero;
        if (zero_std) zero_std[k] = (uint8_t)zero;
        sum_std += sd;
        /* TRL: advantages = rewards - mean; / (std + 1e-4) unless "none" */
        const double div = c->scale_rewards == GRPO_SCALE_GROUP   ? sd + GRPO_STD_EPS
                           : c->scale_rewards == GRPO_SCALE_BATCH ? batch_std + GRPO_STD_EPS
                                                                  : 1.0;
        for (int i = 0; i < G; i++) {
            const double a = r[i] - m;
            adv[(size_t)k * G + i] = c->scale_rewards == GRPO_SCALE_NONE ? a : a / div;
        }
    }
    if (stats) {
        stats->reward_mean = batch_mean;
        stats->n_groups = n_groups;
        stats->n_zero_std = n_zero;
        /* TRL logs the stds it computed: per group for "group" and "none", the
         * batch's for "batch" (expanded to every element, so its mean is itself). */
        if (c->scale_rewards == GRPO_SCALE_BATCH) {
            stats->reward_std = batch_std;
            stats->frac_zero_std = batch_std <= GRPO_ZERO_STD ? 1.0 : 0.0;
        } else {
            stats->reward_std = sum_std / n_groups;
            stats->frac_zero_std = (double)n_zero / n_groups;
        }
    }
    return ERGO_OK;
}

/* ---------------------------------------------------------------- loss */

grpo_metrics grpo_stats_metrics(const grpo_stats *st) {
    const double t = st->tokens > 1.0 ? st->tokens : 1.0;
    const double kt = st->kl_tokens > 1.0 ? st->kl_tokens : 1.0;
    grpo_metrics m;
    m.kl = st->kl_tokens > 0.0 ? st->kl_sum / kt : (double)NAN;
    m.clip_low = st->low_clipped / t;
    m.clip_high = st->high_clipped / t;
    m.clip_region = st->region_clipped / t;
    return m;
}

static ergo_status norm_check(const grpo_config *c, const grpo_norm *nm, ergo_error *err) {
    if (nm->grad_accum < 1)
        return ergo_fail(err, ERGO_E_ARG, "grpo: grad_accum %d must be >= 1", nm->grad_accum);
    switch (c->loss_type) {
    case GRPO_LOSS_GRPO:
    case GRPO_LOSS_DR_GRPO:
        if (nm->n_seqs < 1)
            return ergo_fail(err, ERGO_E_ARG, "grpo: %s needs the micro-batch's sequence count "
                             "(n_seqs %d)", grpo_loss_type_name(c->loss_type), nm->n_seqs);
        break;
    case GRPO_LOSS_BNPO:
        if (nm->n_tokens < 0)
            return ergo_fail(err, ERGO_E_ARG, "grpo: bnpo: n_tokens %lld < 0", (long long)nm->n_tokens);
        break;
    case GRPO_LOSS_DAPO:
        if (nm->n_processes < 1)
            return ergo_fail(err, ERGO_E_ARG, "grpo: dapo: n_processes %d must be >= 1",
                             nm->n_processes);
        /* TRL divides by it unguarded; a batch without a generated token is a bug */
        if (nm->global_tokens < 1)
            return ergo_fail(err, ERGO_E_ARG, "grpo: dapo needs global_tokens >= 1 (the generated "
                             "tokens of the generation batch), got %lld",
                             (long long)nm->global_tokens);
        break;
    }
    return ERGO_OK;
}

double grpo_seq_weight(const grpo_config *c, const grpo_norm *nm, int64_t n_masked) {
    if (grpo_config_check(c, NULL) != ERGO_OK || norm_check(c, nm, NULL) != ERGO_OK) return 0.0;
    const double ga = nm->grad_accum;
    switch (c->loss_type) {
    case GRPO_LOSS_GRPO: /* .sum(-1) / mask.sum(-1).clamp(min=1), .mean(), / GA */
        return 1.0 / ((double)nm->n_seqs * (double)(n_masked > 1 ? n_masked : 1) * ga);
    case GRPO_LOSS_BNPO: /* .sum() / mask.sum().clamp(min=1), / GA */
        return 1.0 / ((double)(nm->n_tokens > 1 ? nm->n_tokens : 1) * ga);
    case GRPO_LOSS_DR_GRPO: /* .sum() / (B * max_completion_length), / GA */
        return 1.0 / ((double)nm->n_seqs * (double)c->max_completion_length * ga);
    case GRPO_LOSS_DAPO: /* .sum() / (num_items_in_batch / num_processes) */
        return 1.0 / ((double)nm->global_tokens / (double)nm->n_processes);
    }
    return 0.0;
}

/* One token: the loss l (before the weight) and dl/dlp, with TRL's clip flags.
 * torch's rules (derivatives.yaml): minimum(a, b) sends the gradient to the smaller
 * side and half to each at a tie; clamp passes it where min <= x <= max. */
typedef struct tok_out {
    double l, dl, kl;
    int low, high;
} tok_out;

static tok_out token_loss(const grpo_config *c, double lp, double old, int has_ref, double ref,
                          double A) {
    tok_out o = {0};
    const double rho = exp(lp - old); /* coef_1; d rho / d lp = rho */
    const double lo = 1.0 - c->eps_low, hi = 1.0 + c->eps_high;
    double c1 = rho, d1 = rho;
    if (c->delta > 0.0 && rho > c->delta) c1 = c->delta, d1 = 0.0; /* clamp(max=delta) */
    const double c2 = rho < lo ? lo : rho > hi ? hi : rho;            /* coef_2 */
    const double d2 = rho >= lo && rho <= hi ? rho : 0.0;
    const double a = c1 * A, b = c2 * A;
    o.l = -(a < b ? a : b);
    o.dl = -A * (a < b ? d1 : a > b ? d2 : 0.5 * (d1 + d2));
    if (has_ref) {
        const double x = ref - lp, ex = exp(x);
        o.kl = ex - x - 1.0; /* k3; d/dlp = 1 - exp(ref - lp) */
        if (c->kl_beta != 0.0) {
            o.l += c->kl_beta * o.kl;
            o.dl += c->kl_beta * (1.0 - ex);
        }
    }
    /* is_low_clipped / is_high_clipped use coef_1 after the delta clamp */
    o.low = c1 < lo && A < 0.0;
    o.high = c1 > hi && A > 0.0;
    return o;
}

ergo_status grpo_seq_loss(const grpo_config *c, const grpo_norm *nm, const grpo_seq *s,
                          float *g, grpo_stats *st, ergo_error *err) {
    ergo_status rc = grpo_config_check(c, err);
    if (rc == ERGO_OK) rc = norm_check(c, nm, err);
    if (rc != ERGO_OK) return rc;
    if (s->n < 0 || (s->n > 0 && (!s->logp || !g)))
        return ergo_fail(err, ERGO_E_ARG, "grpo: a sequence of %d tokens without logp or g", s->n);
    if (c->kl_beta != 0.0 && !s->ref_logp)
        return ergo_fail(err, ERGO_E_ARG, "grpo: kl_beta %g needs the reference log-probabilities",
                         c->kl_beta);
    if (!isfinite(s->advantage))
        return ergo_fail(err, ERGO_E_ARG, "grpo: advantage %g is not finite", s->advantage);
    int64_t n_masked = 0;
    for (int t = 0; t < s->n; t++) {
        if (s->mask && s->mask[t] > 1)
            return ergo_fail(err, ERGO_E_ARG, "grpo: mask[%d] = %d (0 or 1)", t, s->mask[t]);
        if (s->mask && !s->mask[t]) continue;
        n_masked++;
        const float v[3] = {s->logp[t], s->old_logp ? s->old_logp[t] : 0.0f,
                            s->ref_logp ? s->ref_logp[t] : 0.0f};
        static const char *const what[3] = {"logp", "old_logp", "ref_logp"};
        for (int k = 0; k < 3; k++)
            if (!isfinite(v[k]))
                return ergo_fail(err, ERGO_E_ARG, "grpo: %s[%d] is %g", what[k], t, (double)v[k]);
    }
    const double w = grpo_seq_weight(c, nm, n_masked), A = s->advantage;
    double loss = 0.0, kl = 0.0;
    int low = 0, high = 0, region = 0;
    for (int t = 0; t < s->n; t++) {
        if (s->mask && !s->mask[t]) {
            g[t] = 0.0f;
            continue;
        }
        const double lp = (double)s->logp[t];
        /* old = lp.detach() when absent: the same value, held fixed */
        const double old = s->old_logp ? (double)s->old_logp[t] : lp;
        const tok_out o = token_loss(c, lp, old, s->ref_logp != NULL,
                                     s->ref_logp ? (double)s->ref_logp[t] : 0.0, A);
        loss += o.l;
        kl += o.kl;
        low += o.low, high += o.high, region += o.low || o.high;
        g[t] = (float)(w * o.dl);
    }
    if (st) {
        st->loss += w * loss;
        st->tokens += (double)n_masked;
        if (s->ref_logp) st->kl_sum += kl, st->kl_tokens += (double)n_masked;
        st->low_clipped += low, st->high_clipped += high, st->region_clipped += region;
    }
    return ERGO_OK;
}

ergo_status grpo_batch_loss(const grpo_config *c, grpo_norm *nm, const grpo_seq *s, int n_seqs,
                            float *g, double *loss, grpo_stats *st, ergo_error *err) {
    if (n_seqs < 1) return ergo_fail(err, ERGO_E_ARG, "grpo: an empty micro-batch");
    int64_t tokens = 0;
    for (int i = 0; i < n_seqs; i++) {
        if (s[i].n < 0) return ergo_fail(err, ERGO_E_ARG, "grpo: sequence %d has %d tokens", i, s[i].n);
        for (int t = 0; t < s[i].n; t++) tokens += s[i].mask ? s[i].mask[t] != 0 : 1;
    }
    nm->n_seqs = n_seqs;
    nm->n_tokens = tokens;
    grpo_stats acc = {0};
    size_t off = 0;
    for (int i = 0; i < n_seqs; i++) {
        ergo_status rc = grpo_seq_loss(c, nm, &s[i], g + off, &acc, err);
        if (rc != ERGO_OK) {
            ergo_error_prefix(err, "sequence %d: ", i);
            return rc;
        }
        off += (size_t)s[i].n;
    }
    if (loss) *loss = acc.loss;
    if (st) *st = acc;
    return ERGO_OK;
}

/* ---------------------------------------------------------------- mask */

ergo_status grpo_build_mask(const grpo_mask_config *mc, const int32_t *ids, int n,
                            const grpo_segment *segs, int n_segs, uint8_t *mask,
                            int32_t *targets, grpo_mask_info *info, ergo_error *err) {
    if (n < 2 || !ids || !mask)
        return ergo_fail(err, ERGO_E_ARG, "grpo mask: a rollout of %d tokens (at least 2 needed)", n);
    if (n_segs < 1 || !segs) return ergo_fail(err, ERGO_E_ARG, "grpo mask: no segments");
    grpo_mask_info mi = {0};
    int at = 0;
    for (int k = 0; k < n_segs; k++) {
        const grpo_segment *sg = &segs[k];
        if (sg->kind != GRPO_SEG_CONTEXT && sg->kind != GRPO_SEG_GENERATED)
            return ergo_fail(err, ERGO_E_ARG, "grpo mask: segment %d has unknown kind %d", k,
                             (int)sg->kind);
        if (sg->start != at)
            return ergo_fail(err, ERGO_E_ARG, "grpo mask: segment %d starts at %d, not at %d where "
                             "segment %d ended (segments must be contiguous)", k, sg->start, at, k - 1);
        if (sg->len < 1 || sg->len > n - at)
            return ergo_fail(err, ERGO_E_ARG, "grpo mask: segment %d [%d, +%d) is empty or runs past "
                             "the %d ids", k, sg->start, sg->len, n);
        if (sg->kind == GRPO_SEG_GENERATED && at == 0)
            return ergo_fail(err, ERGO_E_ARG, "grpo mask: segment 0 is generated: the first token has "
                             "no position that predicts it");
        at += sg->len;
    }
    memset(mask, 0, (size_t)n);
    for (int k = 0; k < n_segs; k++) {
        const grpo_segment *sg = &segs[k];
        if (sg->kind != GRPO_SEG_GENERATED) continue;
        mi.n_turns++;
        int ended = 0;
        for (int i = sg->start; i < sg->start + sg->len; i++) {
            if (ids[i] == mc->image_pad_id)
                return ergo_fail(err, ERGO_E_ARG, "grpo mask: generated token %d (segment %d) is "
                                 "<|image_pad|> (%d): the sampler must never emit it", i, k, ids[i]);
            if (ended) continue; /* after the turn's <|im_end|>: not the policy's turn */
            mask[i] = 1;
            mi.n_generated++;
            ended = ids[i] == mc->im_end_id; /* the closing <|im_end|> itself is kept */
        }
        if (!ended) mi.truncated = 1;
    }
    if (mi.n_turns == 0) return ergo_fail(err, ERGO_E_ARG, "grpo mask: no generated segment");
    if (mi.truncated && mc->mask_truncated) memset(mask, 0, (size_t)n);
    for (int i = 0; i < n; i++) mi.n_loss += mask[i];
    if (targets) {
        for (int i = 0; i + 1 < n; i++) targets[i] = mask[i + 1] ? ids[i + 1] : -1;
        targets[n - 1] = -1;
    }
    if (info) *info = mi;
    return ERGO_OK;
}
