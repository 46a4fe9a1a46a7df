/*
 * test_grpo.c - the GRPO objective (src/train/grpo.c) against TRL v0.23.0's
 * _compute_loss and advantage code, ported line by line to torch in float64 by
 * tools/fixtures_grpo.py (tests/fixtures/grpo/grpo.json):
 *   - every loss case (4 aggregations x mu 1/2 x beta 0/0.04, clip-higher + delta, a
 *     sequence with no loss token, one sequence): the loss, dL/dlogp of every token
 *     (torch autograd) and the metrics (kl, clip low/high/region);
 *   - the same gradients against central differences of our own loss in double;
 *   - equivalences: old_logp NULL = a copy of logp (mu = 1), ref_logp NULL = given
 *     with beta 0, mask NULL over the compacted tokens = the masked sequence;
 *   - advantages under every scale mode (a zero-variance group, an all-equal batch);
 *   - segment masks of two-turn rollouts (TRL's per-completion EOS rule per turn);
 *   - every refusal with the name of what is wrong.
 * Tolerances: the reference and we both compute in double on the same float inputs,
 * so the loss agrees to ~1e-15 relative (bound: 1e-12 absolute + 1e-10 relative);
 * g is returned as float (what train_backward takes), so it carries one f32 rounding,
 * 2^-24 = 6e-8 relative (bound: 1e-7 relative + 1e-12 absolute for tokens where
 * policy and KL terms cancel). Central differences with h = 2^-12 on inputs that lie
 * on a 2^-12 grid (so lp +- h is exact in float) have a truncation error of
 * h^2/6 |l'''| ~ 1e-8 relative, well inside 1e-6 relative + 1e-10 absolute.
 */
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "check.h"
#include "train/grpo.h"

static json_t *load_fixture(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/grpo/grpo.json", fixtures_dir());
    ergo_error err = {0};
    json_t *j = json_load_path(path, &err);
    CHECK(j != NULL, "grpo fixtures: %s", err.msg);
    return j;
}

static double num(const json_t *o, const char *k) { return json_number_value(json_object_get(o, k)); }
static int integer(const json_t *o, const char *k) { return (int)json_integer_value(json_object_get(o, k)); }

/* A JSON number array as floats (NULL for JSON null); at least one element allocated. */
static float *floats(const json_t *a, int *n) {
    if (!a || json_is_null(a)) return NULL;
    *n = (int)json_array_size(a);
    float *v = calloc((size_t)*n + 1, sizeof *v);
    for (int i = 0; i < *n; i++) v[i] = (float)json_number_value(json_array_get(a, (size_t)i));
    return v;
}

static int close_d(double got, double want, double atol, double rtol) {
    return fabs(got - want) <= atol + rtol * fabs(want);
}

/* ---------------------------------------------------------------- loss cases */

typedef struct lcase {
    const char *name;
    grpo_config cfg;
    grpo_norm nm;
    int B, T;        /* every sequence has T tokens (padding masked) */
    grpo_seq seq[8];
    float *logp, *old, *ref, *want_g; /* (B, T) */
    uint8_t *mask;                    /* (B, T) */
} lcase;

static int lcase_load(lcase *c, const json_t *j) {
    memset(c, 0, sizeof *c);
    c->name = json_string_value(json_object_get(j, "name"));
    grpo_config_default(&c->cfg);
    ergo_error err = {0};
    CHECK(grpo_loss_type_parse(json_string_value(json_object_get(j, "loss_type")), &c->cfg.loss_type,
                               &err) == ERGO_OK, "%s: %s", c->name, err.msg);
    c->cfg.kl_beta = num(j, "kl_beta");
    c->cfg.eps_low = num(j, "eps_low");
    c->cfg.eps_high = num(j, "eps_high");
    c->cfg.delta = num(j, "delta");
    c->cfg.max_completion_length = integer(j, "max_completion_length");
    c->nm.grad_accum = integer(j, "grad_accum");
    c->nm.n_processes = integer(j, "n_processes");
    c->nm.global_tokens = integer(j, "global_tokens");
    const json_t *seqs = json_object_get(j, "seqs"), *grads = json_object_get(j, "grad");
    c->B = (int)json_array_size(seqs);
    c->T = (int)json_array_size(json_object_get(json_array_get(seqs, 0), "logp"));
    if (c->B < 1 || c->B > 8 || c->T < 1) {
        CHECK(0, "%s: bad shape %d x %d", c->name, c->B, c->T);
        return 0;
    }
    const size_t BT = (size_t)c->B * c->T;
    c->logp = calloc(BT, sizeof(float));
    c->ref = calloc(BT, sizeof(float));
    c->want_g = calloc(BT, sizeof(float));
    c->mask = calloc(BT, 1);
    const int has_old = !json_is_null(json_object_get(json_array_get(seqs, 0), "old_logp"));
    if (has_old) c->old = calloc(BT, sizeof(float));
    for (int i = 0; i < c->B; i++) {
        const json_t *s = json_array_get(seqs, (size_t)i);
        int n = 0;
        float *v;
        const char *keys[3] = {"logp", "ref_logp", "old_logp"};
        float *dst[3] = {c->logp, c->ref, c->old};
        for (int k = 0; k < 3; k++) {
            if (!dst[k]) continue;
            v = floats(json_object_get(s, keys[k]), &n);
            CHECK(v && n == c->T, "%s: seq %d %s has %d tokens", c->name, i, keys[k], n);
            if (v && n == c->T) memcpy(dst[k] + (size_t)i * c->T, v, sizeof(float) * (size_t)n);
            free(v);
        }
        v = floats(json_array_get(grads, (size_t)i), &n);
        if (v && n == c->T) memcpy(c->want_g + (size_t)i * c->T, v, sizeof(float) * (size_t)n);
        free(v);
        const json_t *m = json_object_get(s, "mask");
        for (int t = 0; t < c->T; t++)
            c->mask[(size_t)i * c->T + t] = (uint8_t)json_integer_value(json_array_get(m, (size_t)t));
        c->seq[i] = (grpo_seq){c->logp + (size_t)i * c->T, c->old ? c->old + (size_t)i * c->T : NULL,
                               c->cfg.kl_beta != 0.0 ? c->ref + (size_t)i * c->T : NULL,
                               c->mask + (size_t)i * c->T, c->T, num(s, "advantage")};
    }
    return 1;
}

static void lcase_free(lcase *c) {
    free(c->logp), free(c->old), free(c->ref), free(c->want_g), free(c->mask);
}

static double batch_loss(lcase *c, float *g, grpo_stats *st) {
    double loss = (double)NAN;
    ergo_error err = {0};
    ergo_status s = grpo_batch_loss(&c->cfg, &c->nm, c->seq, c->B, g, &loss, st, &err);
    CHECK(s == ERGO_OK, "%s: %s", c->name, err.msg);
    return loss;
}

/* One CHECK over n gradients: |got - want| <= atol + rtol |want|, naming the first bad token. */
static void check_grad(const char *name, const char *what, const float *got, const float *want,
                       size_t n, double rtol, double atol) {
    size_t bad = n;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= atol + rtol * fabs((double)want[i])) && bad == n) bad = i;
        if (!(e <= worst)) worst = e;
    }
    CHECK(bad == n, "%s: %s differs at token %zu: got %.9g, want %.9g (max |err| %.3g)", name, what,
          bad, bad < n ? (double)got[bad] : 0.0, bad < n ? (double)want[bad] : 0.0, worst);
}

static void test_loss_case(const json_t *j, int *n_fd, int *n_clip_low, int *n_clip_high) {
    lcase c;
    if (!lcase_load(&c, j)) return;
    const size_t BT = (size_t)c.B * c.T;
    float *g = calloc(BT, sizeof(float)), *g2 = calloc(BT, sizeof(float));
    grpo_stats st;

    /* against TRL */
    const double loss = batch_loss(&c, g, &st);
    const double want = num(j, "loss");
    CHECK(close_d(loss, want, 1e-12, 1e-10), "%s: loss %.17g, want %.17g", c.name, loss, want);
    check_grad(c.name, "dL/dlogp vs torch", g, c.want_g, BT, 1e-7, 1e-12);
    grpo_metrics m = grpo_stats_metrics(&st);
    CHECK(close_d(m.clip_low, num(j, "clip_low"), 1e-15, 0) &&
              close_d(m.clip_high, num(j, "clip_high"), 1e-15, 0) &&
              close_d(m.clip_region, num(j, "clip_region"), 1e-15, 0),
          "%s: clip low/high/region %g %g %g, want %g %g %g", c.name, m.clip_low, m.clip_high,
          m.clip_region, num(j, "clip_low"), num(j, "clip_high"), num(j, "clip_region"));
    CHECK(close_d(st.loss, loss, 0, 0), "%s: stats loss %.17g != %.17g", c.name, st.loss, loss);
    *n_clip_low += (int)st.low_clipped;
    *n_clip_high += (int)st.high_clipped;

    /* the KL metric: with the reference given (also at beta 0, where the loss must not
     * change) */
    grpo_seq with_ref[8];
    for (int i = 0; i < c.B; i++) with_ref[i] = c.seq[i], with_ref[i].ref_logp = c.ref + (size_t)i * c.T;
    {
        grpo_stats st2;
        double l2 = (double)NAN;
        ergo_error err = {0};
        CHECK(grpo_batch_loss(&c.cfg, &c.nm, with_ref, c.B, g2, &l2, &st2, &err) == ERGO_OK, "%s: %s",
              c.name, err.msg);
        grpo_metrics m2 = grpo_stats_metrics(&st2);
        CHECK(close_d(m2.kl, num(j, "kl"), 1e-15, 1e-12), "%s: kl %.17g, want %.17g", c.name, m2.kl,
              num(j, "kl"));
        if (c.cfg.kl_beta == 0.0) {
            CHECK(l2 == loss && memcmp(g, g2, BT * sizeof(float)) == 0,
                  "%s: a reference at beta 0 changed the loss or gradient", c.name);
            CHECK(isnan(m.kl), "%s: kl without a reference should be NaN, got %g", c.name, m.kl);
        }
    }

    /* mu = 1: old NULL is lp.detach(): the same as passing a copy of logp */
    if (!c.old) {
        grpo_seq s2[8];
        for (int i = 0; i < c.B; i++) s2[i] = c.seq[i], s2[i].old_logp = c.seq[i].logp;
        double l2 = (double)NAN;
        ergo_error err = {0};
        CHECK(grpo_batch_loss(&c.cfg, &c.nm, s2, c.B, g2, &l2, NULL, &err) == ERGO_OK, "%s", err.msg);
        CHECK(l2 == loss && memcmp(g, g2, BT * sizeof(float)) == 0,
              "%s: old_logp NULL differs from old_logp = logp", c.name);
    }

    /* mask NULL over the compacted loss tokens = the masked sequences (what ergo's
     * trainer passes: train_forward returns only the target positions) */
    {
        float *lp = calloc(BT, sizeof(float)), *od = calloc(BT, sizeof(float)),
              *rf = calloc(BT, sizeof(float)), *gc = calloc(BT, sizeof(float));
        grpo_seq s2[8];
        size_t k = 0;
        for (int i = 0; i < c.B; i++) {
            const size_t k0 = k;
            for (int t = 0; t < c.T; t++) {
                const size_t at = (size_t)i * c.T + t;
                if (!c.mask[at]) continue;
                lp[k] = c.logp[at], od[k] = c.old ? c.old[at] : 0, rf[k] = c.ref[at];
                k++;
            }
            s2[i] = (grpo_seq){lp + k0, c.old ? od + k0 : NULL, c.seq[i].ref_logp ? rf + k0 : NULL,
                               NULL, (int)(k - k0), c.seq[i].advantage};
        }
        grpo_norm nm2 = c.nm;
        double l2 = (double)NAN;
        ergo_error err = {0};
        CHECK(grpo_batch_loss(&c.cfg, &nm2, s2, c.B, gc, &l2, NULL, &err) == ERGO_OK, "%s", err.msg);
        int same = l2 == loss && nm2.n_tokens == c.nm.n_tokens;
        k = 0;
        for (size_t at = 0; at < BT; at++) {
            if (!c.mask[at]) {
                same &= g[at] == 0.0f;
                continue;
            }
            same &= gc[k++] == g[at];
        }
        CHECK(same, "%s: compacted tokens with mask NULL differ from the masked sequences", c.name);
        free(lp), free(od), free(rf), free(gc);
    }

    /* central differences of our own loss; old held fixed at its value (detach) */
    {
        float *copy = NULL;
        if (!c.old) {
            copy = malloc(BT * sizeof(float));
            memcpy(copy, c.logp, BT * sizeof(float));
            for (int i = 0; i < c.B; i++) c.seq[i].old_logp = copy + (size_t)i * c.T;
        }
        const float step = 1.0f / 4096.0f; /* 2^-12, the fixtures' grid */
        size_t bad = BT, off_grid = BT;
        double worst = 0;
        for (size_t at = 0; at < BT; at++) {
            const float x = c.logp[at];
            c.logp[at] = x + step;
            ergo_error err = {0};
            double lp_ = (double)NAN, lm_ = (double)NAN;
            grpo_batch_loss(&c.cfg, &c.nm, c.seq, c.B, g2, &lp_, NULL, &err);
            c.logp[at] = x - step;
            grpo_batch_loss(&c.cfg, &c.nm, c.seq, c.B, g2, &lm_, NULL, &err);
            c.logp[at] = x;
            if ((float)(x + step) - step != x && off_grid == BT) off_grid = at;
            const double fd = (lp_ - lm_) / (2.0 * (double)step);
            const double e = fabs(fd - (double)g[at]);
            if (!(e <= 1e-10 + 1e-6 * fabs(fd)) && bad == BT) bad = at;
            if (!(e <= worst)) worst = e;
            *n_fd += 1;
        }
        CHECK(off_grid == BT, "%s: token %zu is off the 2^-12 grid", c.name, off_grid);
        CHECK(bad == BT, "%s: dL/dlogp vs central difference at token %zu: analytic %.9g (max |err| "
                         "%.3g)", c.name, bad, bad < BT ? (double)g[bad] : 0.0, worst);
        free(copy);
    }
    free(g), free(g2);
    lcase_free(&c);
}

/* ---------------------------------------------------------------- advantages */

static void test_advantage_case(const json_t *j) {
    const char *name = json_string_value(json_object_get(j, "name"));
    grpo_config c;
    grpo_config_default(&c);
    c.group_size = integer(j, "group_size");
    ergo_error err = {0};
    CHECK(grpo_scale_parse(json_string_value(json_object_get(j, "scale_rewards")), &c.scale_rewards,
                           &err) == ERGO_OK, "%s: %s", name, err.msg);
    const json_t *r = json_object_get(j, "rewards"), *a = json_object_get(j, "advantages"),
                 *z = json_object_get(j, "zero_std");
    const int n = (int)json_array_size(r);
    double *rw = calloc((size_t)n + 1, sizeof(double)), *adv = calloc((size_t)n + 1, sizeof(double));
    uint8_t *zs = calloc((size_t)n + 1, 1);
    for (int i = 0; i < n; i++) rw[i] = json_number_value(json_array_get(r, (size_t)i));
    grpo_reward_stats rs;
    ergo_status s = grpo_advantages(&c, rw, n, adv, zs, &rs, &err);
    CHECK(s == ERGO_OK, "%s: %s", name, err.msg);
    for (int i = 0; s == ERGO_OK && i < n; i++) {
        const double w = json_number_value(json_array_get(a, (size_t)i));
        CHECK(close_d(adv[i], w, 1e-12, 1e-12), "%s: advantage %d %.17g, want %.17g", name, i, adv[i], w);
    }
    int zeros = 0;
    for (size_t k = 0; k < json_array_size(z); k++) {
        const int w = (int)json_integer_value(json_array_get(z, k));
        CHECK(zs[k] == w, "%s: group %zu zero_std %d, want %d", name, k, zs[k], w);
        zeros += w;
    }
    CHECK_EQ_INT(rs.n_zero_std, zeros, "n_zero_std");
    CHECK_EQ_INT(rs.n_groups, (int)json_array_size(z), "n_groups");
    CHECK(close_d(rs.reward_mean, num(j, "reward_mean"), 1e-12, 1e-12) &&
              close_d(rs.reward_std, num(j, "reward_std"), 1e-12, 1e-12) &&
              /* TRL takes this mean in float32 (is_std_zero.float().mean()) */
              close_d(rs.frac_zero_std, num(j, "frac_zero_std"), 1e-7, 0),
          "%s: reward mean/std/frac_zero_std %.17g %.17g %g, want %.17g %.17g %g", name, rs.reward_mean,
          rs.reward_std, rs.frac_zero_std, num(j, "reward_mean"), num(j, "reward_std"),
          num(j, "frac_zero_std"));
    /* a zero-variance group gets exactly 0 */
    for (int k = 0; k < n / c.group_size; k++)
        for (int i = 0; zs[k] && i < c.group_size; i++)
            CHECK(adv[k * c.group_size + i] == 0.0, "%s: zero-variance group %d: A = %g", name, k,
                  adv[k * c.group_size + i]);
    free(rw), free(adv), free(zs);
}

/* ---------------------------------------------------------------- masks */

static void test_mask_case(const json_t *j, int32_t im_end, int32_t image_pad) {
    const char *name = json_string_value(json_object_get(j, "name"));
    const json_t *ids_j = json_object_get(j, "ids"), *segs_j = json_object_get(j, "segments");
    const int n = (int)json_array_size(ids_j), ns = (int)json_array_size(segs_j);
    int32_t *ids = calloc((size_t)n, sizeof *ids), *tg = calloc((size_t)n, sizeof *tg),
            *want_tg = calloc((size_t)n, sizeof *want_tg);
    uint8_t *mask = calloc((size_t)n, 1);
    int32_t *want_mask = calloc((size_t)n, sizeof *want_mask), *got_mask = calloc((size_t)n, sizeof(int32_t));
    grpo_segment *segs = calloc((size_t)ns, sizeof *segs);
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)json_integer_value(json_array_get(ids_j, (size_t)i));
        want_mask[i] = (int32_t)json_integer_value(json_array_get(json_object_get(j, "mask"), (size_t)i));
        want_tg[i] = (int32_t)json_integer_value(json_array_get(json_object_get(j, "targets"), (size_t)i));
    }
    for (int k = 0; k < ns; k++) {
        const json_t *s = json_array_get(segs_j, (size_t)k);
        segs[k] = (grpo_segment){(grpo_seg_kind)integer(s, "kind"), integer(s, "start"), integer(s, "len")};
    }
    grpo_mask_config mc = {im_end, image_pad, integer(j, "mask_truncated")};
    grpo_mask_info mi;
    ergo_error err = {0};
    ergo_status st = grpo_build_mask(&mc, ids, n, segs, ns, mask, tg, &mi, &err);
    CHECK(st == ERGO_OK, "%s: %s", name, err.msg);
    if (st == ERGO_OK) {
        for (int i = 0; i < n; i++) got_mask[i] = mask[i];
        CHECK_EQ_I32(got_mask, n, want_mask, n, name);
        CHECK_EQ_I32(tg, n, want_tg, n, name);
        CHECK_EQ_INT(mi.n_loss, integer(j, "n_loss"), "n_loss");
        CHECK_EQ_INT(mi.n_generated, integer(j, "n_generated"), "n_generated");
        CHECK_EQ_INT(mi.n_turns, integer(j, "n_turns"), "n_turns");
        CHECK_EQ_INT(mi.truncated, integer(j, "truncated"), "truncated");
        /* the invariants the trainer relies on, whatever the fixture says */
        int n_targets = 0;
        for (int i = 0; i < n; i++) {
            n_targets += tg[i] >= 0;
            if (mask[i]) CHECK(ids[i] != image_pad, "%s: image pad %d in the mask", name, i);
        }
        CHECK_EQ_INT(n_targets, mi.n_loss, "targets = mask tokens");
        CHECK(mask[0] == 0 && tg[n - 1] == -1, "%s: first token masked or last target set", name);
    }
    free(ids), free(tg), free(want_tg), free(mask), free(want_mask), free(got_mask), free(segs);
}

/* ---------------------------------------------------------------- refusals */

#define CHECK_REFUSED(call, needle)                                                             \
    do {                                                                                        \
        ergo_status s_ = (call);                                                                \
        CHECK(s_ != ERGO_OK && strstr(err.msg, (needle)), "%s: want a refusal naming \"%s\", got %d " \
              "\"%s\"", #call, (needle), (int)s_, err.msg);                                     \
        memset(&err, 0, sizeof err);                                                            \
    } while (0)

static void test_refusals(void) {
    ergo_error err = {0};
    grpo_config c, bad;
    grpo_config_default(&c);
    bad = c, bad.eps_low = 1.0;
    CHECK_REFUSED(grpo_config_check(&bad, &err), "eps_low");
    bad = c, bad.eps_high = (double)NAN;
    CHECK_REFUSED(grpo_config_check(&bad, &err), "eps_high");
    bad = c, bad.delta = 0.9;
    CHECK_REFUSED(grpo_config_check(&bad, &err), "delta");
    bad = c, bad.kl_beta = -0.1;
    CHECK_REFUSED(grpo_config_check(&bad, &err), "kl_beta");
    bad = c, bad.group_size = 1;
    CHECK_REFUSED(grpo_config_check(&bad, &err), "group size");
    bad = c, bad.loss_type = GRPO_LOSS_DR_GRPO, bad.max_completion_length = 0;
    CHECK_REFUSED(grpo_config_check(&bad, &err), "max_completion_length");
    grpo_loss_type lt;
    grpo_scale sc;
    CHECK_REFUSED(grpo_loss_type_parse("ppo", &lt, &err), "ppo");
    CHECK_REFUSED(grpo_scale_parse("std", &sc, &err), "std");
    for (int i = 0; i <= GRPO_LOSS_DAPO; i++)
        CHECK(grpo_loss_type_parse(grpo_loss_type_name((grpo_loss_type)i), &lt, &err) == ERGO_OK &&
                  lt == (grpo_loss_type)i, "loss name round trip %d", i);
    for (int i = 0; i <= GRPO_SCALE_NONE; i++)
        CHECK(grpo_scale_parse(grpo_scale_name((grpo_scale)i), &sc, &err) == ERGO_OK &&
                  sc == (grpo_scale)i, "scale name round trip %d", i);

    double r[9] = {1, 0, 1, 0, 1, 0, 1, 0, 1}, adv[9];
    CHECK_REFUSED(grpo_advantages(&c, r, 9, adv, NULL, NULL, &err), "whole groups");
    r[3] = (double)NAN;
    CHECK_REFUSED(grpo_advantages(&c, r, 8, adv, NULL, NULL, &err), "reward 3");

    float lp[3] = {-1, -2, -3}, ref[3] = {-1, -2, -3}, g[3];
    grpo_norm nm = {1, 3, 1, 1, 3};
    grpo_seq s = {lp, NULL, NULL, NULL, 3, 0.5};
    CHECK_REFUSED(grpo_seq_loss(&c, &nm, &s, g, NULL, &err), "reference");
    s.ref_logp = ref;
    lp[1] = INFINITY;
    CHECK_REFUSED(grpo_seq_loss(&c, &nm, &s, g, NULL, &err), "logp[1]");
    lp[1] = -2;
    s.advantage = (double)NAN;
    CHECK_REFUSED(grpo_seq_loss(&c, &nm, &s, g, NULL, &err), "advantage");
    s.advantage = 0.5;
    grpo_config d = c;
    d.loss_type = GRPO_LOSS_DAPO;
    grpo_norm nm0 = nm;
    nm0.global_tokens = 0;
    CHECK_REFUSED(grpo_seq_loss(&d, &nm0, &s, g, NULL, &err), "global_tokens");
    nm0 = nm, nm0.grad_accum = 0;
    CHECK_REFUSED(grpo_seq_loss(&c, &nm0, &s, g, NULL, &err), "grad_accum");
    uint8_t m[3] = {1, 2, 1};
    s.mask = m;
    CHECK_REFUSED(grpo_seq_loss(&c, &nm, &s, g, NULL, &err), "mask[1]");
    s.mask = NULL;
    CHECK(grpo_seq_loss(&c, &nm, &s, g, NULL, &err) == ERGO_OK, "a valid sequence: %s", err.msg);
    /* the batch form names the sequence */
    grpo_seq two[2] = {s, s};
    two[1].ref_logp = NULL;
    double loss;
    CHECK_REFUSED(grpo_batch_loss(&c, &nm, two, 2, g, &loss, NULL, &err), "sequence 1");

    /* masks: 0..3 prompt, 4..6 generated, 7..8 context, 9..10 generated */
    const int32_t IE = 151645, IP = 151655;
    int32_t ids[11] = {1, 2, 3, 4, 10, 11, IE, 5, 6, 12, IE};
    uint8_t mask[11];
    grpo_mask_config mc = {IE, IP, 0};
    grpo_segment ok[4] = {{GRPO_SEG_CONTEXT, 0, 4}, {GRPO_SEG_GENERATED, 4, 3},
                          {GRPO_SEG_CONTEXT, 7, 2}, {GRPO_SEG_GENERATED, 9, 2}};
    grpo_mask_info mi;
    CHECK(grpo_build_mask(&mc, ids, 11, ok, 4, mask, NULL, &mi, &err) == ERGO_OK && mi.n_loss == 5,
          "the hand-made rollout: %s (n_loss %d, want 5)", err.msg, mi.n_loss);
    grpo_segment gap[4] = {{GRPO_SEG_CONTEXT, 0, 4}, {GRPO_SEG_GENERATED, 5, 2},
                           {GRPO_SEG_CONTEXT, 7, 2}, {GRPO_SEG_GENERATED, 9, 2}};
    CHECK_REFUSED(grpo_build_mask(&mc, ids, 11, gap, 4, mask, NULL, NULL, &err), "contiguous");
    grpo_segment past[2] = {{GRPO_SEG_CONTEXT, 0, 4}, {GRPO_SEG_GENERATED, 4, 8}};
    CHECK_REFUSED(grpo_build_mask(&mc, ids, 11, past, 2, mask, NULL, NULL, &err), "runs past");
    grpo_segment first[2] = {{GRPO_SEG_GENERATED, 0, 4}, {GRPO_SEG_CONTEXT, 4, 7}};
    CHECK_REFUSED(grpo_build_mask(&mc, ids, 11, first, 2, mask, NULL, NULL, &err), "segment 0");
    grpo_segment none[1] = {{GRPO_SEG_CONTEXT, 0, 11}};
    CHECK_REFUSED(grpo_build_mask(&mc, ids, 11, none, 1, mask, NULL, NULL, &err), "no generated");
    ids[5] = IP;
    CHECK_REFUSED(grpo_build_mask(&mc, ids, 11, ok, 4, mask, NULL, NULL, &err), "image_pad");
}

void test_grpo(void) {
    json_t *fx = load_fixture();
    if (!fx) return;
    const json_t *lc = json_object_get(fx, "loss_cases");
    int n_fd = 0, n_low = 0, n_high = 0;
    for (size_t i = 0; i < json_array_size(lc); i++)
        test_loss_case(json_array_get(lc, i), &n_fd, &n_low, &n_high);
    /* the fixtures must exercise clipping on both sides, or the test proves little */
    CHECK(json_array_size(lc) >= 16 && n_low >= 3 && n_high >= 3,
          "loss cases %zu, low-clipped tokens %d, high-clipped %d", json_array_size(lc), n_low, n_high);
    CHECK(n_fd > 300, "central differences on %d tokens", n_fd);
    const json_t *ac = json_object_get(fx, "advantage_cases");
    CHECK(json_array_size(ac) >= 12, "advantage cases %zu", json_array_size(ac));
    for (size_t i = 0; i < json_array_size(ac); i++) test_advantage_case(json_array_get(ac, i));
    const json_t *mc = json_object_get(fx, "mask_cases");
    CHECK(json_array_size(mc) >= 5, "mask cases %zu", json_array_size(mc));
    for (size_t i = 0; i < json_array_size(mc); i++)
        test_mask_case(json_array_get(mc, i), (int32_t)integer(fx, "im_end_id"),
                       (int32_t)integer(fx, "image_pad_id"));
    test_refusals();
    json_decref(fx);
}
