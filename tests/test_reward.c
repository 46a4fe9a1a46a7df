/*
 * test_reward.c - ERGO's GRPO rewards (src/train/reward.h) on a table of crafted
 * rollouts: missing tags, two boxes, an unparsable and an unmappable box, boxes over,
 * at and under gamma, the whole image, wrong and right letters in the forms the
 * evaluation's letter rule accepts, judge right / wrong / dropped, both format rules;
 * every ablation preset's total against its formula written out here; a NaN or
 * infinite weight stops with the item named; the flag parsers; the means for the log;
 * the fuzz corpus of the format reward replayed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pipeline/zoom.h"
#include "train/reward.h"

/* The original is 1000x1000 and the stage-1 image 200x200 (sx = sy = 5): a stage-1 box
 * [0, 0, 200, 120] maps to the crop [0, 0, 1000, 600], 0.6 of the image exactly. */
#define W 1000
#define H 1000
#define SX 5.0
#define MAXPIX (64 * 28 * 28)

static const char S2_OK[] = "<think>The tag reads 552.</think><answer>B</answer>";
static const char S1_OK[] = "<think>The tag is below the red circle.</think> <zoom>[10, 20, 60, 80]</zoom>";

typedef struct row {
    const char *name;
    const char *s1, *s2, *label;
    const char *judge;      /* the judge's answer when asked (NULL: dropped when `drop`) */
    int drop;
    /* expected */
    zoom_status box;
    int r_box, r_acc;
    int region_if_asked;    /* r_region when a preset asks the judge */
    int fmt_full;
    int fmt_partial_sixths; /* the partial score times 6 */
} row;

static const row rows[] = {
    {"good rollout", S1_OK, S2_OK, "B", "B", 0, ZOOM_OK, 1, 1, 1, 1, 6},
    {"turn 1 without tags", "<think>x</think> [10, 20, 60, 80]", S2_OK, "B", "B", 0, ZOOM_NONE, 0, 1, 0, 0, 4},
    {"turn 1 without think", "<zoom>[10, 20, 60, 80]</zoom>", S2_OK, "B", "B", 0, ZOOM_OK, 1, 1, 1, 0, 4},
    {"two boxes (the first is read)", "<think>a</think> <zoom>[10, 20, 60, 80]</zoom> <zoom>[0, 0, 200, 200]</zoom>",
     S2_OK, "B", "B", 0, ZOOM_OK, 1, 1, 1, 0, 4},
    {"two think blocks", "<think>a</think><think>b</think> <zoom>[10, 20, 60, 80]</zoom>", S2_OK, "B", "B", 0,
     ZOOM_OK, 1, 1, 1, 0, 4},
    {"unparsable box", "<think>x</think> <zoom>[10, 20, sixty, 80]</zoom>", S2_OK, "B", "B", 0, ZOOM_NONE, 0, 1, 0,
     0, 4},
    {"box with x2 < x1 (parses, cannot be mapped)", "<think>x</think> <zoom>[60, 20, 10, 80]</zoom>", S2_OK, "B",
     "B", 0, ZOOM_INVALID, 0, 1, 0, 1, 6},
    {"zero-area box", "<think>x</think> <zoom>[10, 20, 10, 80]</zoom>", S2_OK, "B", "B", 0, ZOOM_INVALID, 0, 1, 0, 1,
     6},
    {"box just over gamma", "<think>x</think><zoom>[0, 0, 200, 121]</zoom>", S2_OK, "B", "B", 0, ZOOM_OK, 0, 1, 1, 1,
     6},
    {"box exactly at gamma", "<think>x</think><zoom>[0, 0, 200, 120]</zoom>", S2_OK, "B", "B", 0, ZOOM_OK, 1, 1, 1, 1,
     6},
    {"box just under gamma", "<think>x</think><zoom>[0, 0, 200, 119]</zoom>", S2_OK, "B", "B", 0, ZOOM_OK, 1, 1, 1, 1,
     6},
    {"whole image (verifies, too big)", "<think>x</think><zoom>[0, 0, 200, 200]</zoom>", S2_OK, "B", "B", 0, ZOOM_OK,
     0, 1, 1, 1, 6},
    {"wrong letter", S1_OK, "<think>x</think><answer>C</answer>", "B", "B", 0, ZOOM_OK, 1, 0, 1, 1, 6},
    {"lower-case letter with spaces", S1_OK, "<think>x</think><answer> b </answer>", "B", "B", 0, ZOOM_OK, 1, 1, 1, 1,
     6},
    {"letter in parentheses", S1_OK, "<think>x</think><answer>(B)</answer>", "B", "B", 0, ZOOM_OK, 1, 1, 1, 1, 6},
    {"letter with a period", S1_OK, "<think>x</think>\n<answer>B.</answer>\n", "B", "B", 0, ZOOM_OK, 1, 1, 1, 1, 6},
    {"bare letter, no tags", S1_OK, "B", "B", "B", 0, ZOOM_OK, 1, 1, 1, 0, 3},
    {"answer with words (the letter rule says wrong)", S1_OK, "<think>x</think><answer>Option B</answer>", "B", "B",
     0, ZOOM_OK, 1, 0, 1, 1, 6},
    {"text after the answer", S1_OK, "<think>x</think><answer>B</answer> done", "B", "B", 0, ZOOM_OK, 1, 1, 1, 0, 5},
    {"the prompt's <think> ... <think> typo", S1_OK, "<think> x <think><answer>B</answer>", "B", "B", 0, ZOOM_OK, 1, 1,
     1, 0, 4},
    {"stage 2 did not run", S1_OK, NULL, "B", "B", 0, ZOOM_OK, 1, 0, 1, 0, 3},
    {"judge wrong", S1_OK, S2_OK, "B", "C", 0, ZOOM_OK, 1, 1, 0, 1, 6},
    {"judge answers in words", S1_OK, S2_OK, "B", "The answer is B", 0, ZOOM_OK, 1, 1, 0, 1, 6},
    {"judge answers in tags", S1_OK, S2_OK, "B", "<answer>b</answer>", 0, ZOOM_OK, 1, 1, 1, 1, 6},
    {"judge dropped", S1_OK, S2_OK, "B", NULL, 1, ZOOM_OK, 1, 1, 0, 1, 6},
    {"whitespace around both turns", "\n <think>a\nb</think>\n<zoom> [10,20, 60,80] </zoom>\n",
     "  <think>x</think>\n\n<answer>B</answer>\n", "B", "B", 0, ZOOM_OK, 1, 1, 1, 1, 6},
    {"Arabic-Indic digits (the parser reads them, the format rule does not)",
     "<think>x</think><zoom>[\xd9\xa1\xd9\xa0, 20, 60, 80]</zoom>", S2_OK, "B", "B", 0, ZOOM_OK, 1, 1, 1, 0, 4},
    {"empty answer (the letter rule reads the whole text)", S1_OK, "<think>x</think><answer></answer>", "B", "B", 0,
     ZOOM_OK, 1, 0, 1, 1, 6},
};

/* Each preset's R written out from the recipe (ergo-training.md), independent of
 * reward_weights_of. */
static double want_total(reward_preset p, double a, double b, double reg, double box, double acc, double fmt) {
    switch (p) {
    case REWARD_ACC_ONLY: return acc + fmt;
    case REWARD_REGION_ONLY: return reg + fmt;
    case REWARD_REGION_BOX: return reg + box + fmt;
    case REWARD_WEIGHTED: return a * reg + b * box + fmt;
    case REWARD_FULL: return a * reg + b * box + acc + fmt;
    }
    return NAN;
}

static void make_rollout(const row *r, reward_rollout *ro) {
    memset(ro, 0, sizeof *ro);
    ro->item = r->name;
    ro->stage1_text = r->s1;
    ro->stage2_text = r->s2;
    ro->label = r->label;
    ro->width = W;
    ro->height = H;
    ro->box_status = reward_box_of(r->s1, SX, SX, W, H, MAXPIX, &ro->crop);
}

static void check_table(void) {
    const reward_preset presets[] = {REWARD_FULL, REWARD_ACC_ONLY, REWARD_REGION_ONLY, REWARD_REGION_BOX,
                                     REWARD_WEIGHTED};
    const size_t n = sizeof rows / sizeof *rows;
    for (size_t i = 0; i < n; i++) {
        const row *r = &rows[i];
        reward_rollout ro;
        make_rollout(r, &ro);
        CHECK(ro.box_status == r->box, "%s: box %s, want %s", r->name, zoom_status_name(ro.box_status),
              zoom_status_name(r->box));
        for (int f = 0; f < 2; f++) {
            for (size_t k = 0; k < sizeof presets / sizeof *presets; k++) {
                reward_config rc;
                reward_config_default(&rc);
                rc.preset = presets[k];
                rc.format = f ? REWARD_FORMAT_PARTIAL : REWARD_FORMAT_FULL_MATCH;
                int asked = rc.preset != REWARD_ACC_ONLY && r->box == ZOOM_OK;
                reward_parts p;
                ergo_error err = {0};
                ergo_status s = reward_finish(&rc, &ro, asked ? r->judge : NULL, asked && r->drop, &p, &err);
                const char *pn = reward_preset_name(rc.preset), *fn = reward_format_name(rc.format);
                CHECK(s == ERGO_OK, "%s [%s, %s]: %s", r->name, pn, fn, err.msg);
                CHECK_EQ_INT(p.judge_asked, asked, r->name);
                CHECK_EQ_INT(p.box_ok, r->box == ZOOM_OK, r->name);
                if (r->drop && asked) {
                    CHECK(p.dropped && p.total == 0, "%s [%s]: dropped %d total %g (want dropped, no score)", r->name,
                          pn, p.dropped, p.total);
                    continue;
                }
                CHECK(!p.dropped, "%s [%s]: dropped", r->name, pn);
                double reg = asked ? r->region_if_asked : 0;
                double fmt = f ? r->fmt_partial_sixths / 6.0 : r->fmt_full;
                CHECK(p.r_region == reg && p.r_box == r->r_box && p.r_acc == r->r_acc,
                      "%s [%s]: region %g box %g acc %g, want %g %d %d", r->name, pn, p.r_region, p.r_box, p.r_acc,
                      reg, r->r_box, r->r_acc);
                CHECK(fabs(p.r_format - fmt) < 1e-12, "%s [%s]: format %.17g, want %.17g", r->name, fn, p.r_format,
                      fmt);
                double want = want_total(rc.preset, rc.alpha, rc.beta, reg, r->r_box, r->r_acc, fmt);
                CHECK(fabs(p.total - want) < 1e-12, "%s [%s, %s]: R = %.17g, want %.17g", r->name, pn, fn, p.total,
                      want);
            }
        }
    }
    /* the per-turn partial checks one by one, on the bare turns */
    CHECK(reward_format_turn(REWARD_FORMAT_PARTIAL, 1, "<think>x</think><zoom>[1, 2, 3, 4]</zoom>") == 1.0,
          "partial: full turn 1");
    CHECK(fabs(reward_format_turn(REWARD_FORMAT_PARTIAL, 1, "<zoom>[1, 2, 3, 4]</zoom><think>x</think>") - 2 / 3.0) <
              1e-12, "partial: both pairs, wrong order (no full match)");
    CHECK(fabs(reward_format_turn(REWARD_FORMAT_PARTIAL, 1, "</think>x<think><zoom>[1, 2, 3, 4]</zoom>") - 1 / 3.0) <
              1e-12, "partial: think closed before opened");
    CHECK(reward_format_turn(REWARD_FORMAT_FULL_MATCH, 1, "<think>x</think><answer>B</answer>") == 0,
          "full: turn 1 with an answer instead of a box");
    CHECK(reward_format_turn(REWARD_FORMAT_FULL_MATCH, 2, "<think>x</think><zoom>[1, 2, 3, 4]</zoom>") == 0,
          "full: turn 2 with a box instead of an answer");
    CHECK(reward_format_turn(REWARD_FORMAT_FULL_MATCH, 2, "<think>x</think><answer>a <zoom> b</answer>") == 0,
          "full: a tag inside the answer");
    CHECK(reward_format_turn(REWARD_FORMAT_FULL_MATCH, 1, "<think>x</think><zoom>[-1, 2, 3, 4]</zoom>") == 0,
          "full: a negative number");
    CHECK(reward_format_turn(REWARD_FORMAT_FULL_MATCH, 1, "<think></think><zoom>[1, 2, 3, 4]</zoom>") == 1,
          "full: an empty think");
    CHECK(reward_format(REWARD_FORMAT_FULL_MATCH, NULL, S2_OK) == 0, "format of a missing turn 1");
}

/* The crop reward_box_of gives is inference's: x*sx etc. clamped to the original. */
static void check_box_mapping(void) {
    zoom_crop c;
    zoom_status s = reward_box_of("<zoom>[10, 20, 60, 80]</zoom>", SX, SX, W, H, MAXPIX, &c);
    CHECK(s == ZOOM_OK && c.x1 == 50 && c.y1 == 100 && c.x2 == 300 && c.y2 == 400,
          "mapping: %s [%d, %d, %d, %d], want [50, 100, 300, 400]", zoom_status_name(s), c.x1, c.y1, c.x2, c.y2);
    s = reward_box_of("<zoom>[150, 150, 900, 900]</zoom>", SX, SX, W, H, MAXPIX, &c);
    CHECK(s == ZOOM_OK && c.x2 == W && c.y2 == H, "clamped: %s [%d, %d, %d, %d]", zoom_status_name(s), c.x1, c.y1,
          c.x2, c.y2);
    double ratio = -1;
    int rb = reward_box(s, &c, W, H, 0.6, &ratio);
    CHECK(rb == 1 && fabs(ratio - 250.0 * 250.0 / 1e6) < 1e-15, "clamped ratio %g (r_box %d)", ratio, rb);
    rb = reward_box(ZOOM_NONE, &c, W, H, 0.6, &ratio);
    CHECK(rb == 0 && ratio == 0, "no box: r_box %d ratio %g", rb, ratio);
    /* gamma 1 lets the whole image through */
    s = reward_box_of("<zoom>[0, 0, 200, 200]</zoom>", SX, SX, W, H, MAXPIX, &c);
    CHECK(reward_box(s, &c, W, H, 1.0, NULL) == 1, "gamma 1: the whole image earns r_box");
}

static void check_nan(void) {
    reward_rollout ro;
    make_rollout(&rows[0], &ro);
    ro.item = "synth test 17 rollout 3";
    reward_config rc;
    reward_config_default(&rc);
    reward_parts p;
    ergo_error err = {0};
    rc.alpha = NAN; /* past reward_config_check: the total itself is guarded */
    ergo_status s = reward_finish(&rc, &ro, "B", 0, &p, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "synth test 17 rollout 3") && strstr(err.msg, "nan"),
          "NaN alpha: status %d, message %s", s, err.msg);
    rc.alpha = INFINITY; /* inf * r_region 0 = NaN */
    memset(&err, 0, sizeof err);
    s = reward_finish(&rc, &ro, "C", 0, &p, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "synth test 17 rollout 3"), "inf alpha * 0: status %d, message %s", s,
          err.msg);
    /* and the config check refuses such weights up front, naming the flag */
    const struct { double a, b, g; const char *flag; } bad[] = {
        {NAN, 0.5, 0.6, "--alpha"}, {1, -0.5, 0.6, "--beta"}, {1, INFINITY, 0.6, "--beta"},
        {1, 0.5, 0, "--gamma"},     {1, 0.5, 1.5, "--gamma"}, {1, 0.5, NAN, "--gamma"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        reward_config_default(&rc);
        rc.alpha = bad[i].a, rc.beta = bad[i].b, rc.gamma = bad[i].g;
        memset(&err, 0, sizeof err);
        s = reward_config_check(&rc, &err);
        CHECK(s == ERGO_E_ARG && strstr(err.msg, bad[i].flag), "config check %zu: status %d, message %s", i, s,
              err.msg);
    }
    reward_config_default(&rc);
    CHECK(reward_config_check(&rc, &err) == ERGO_OK && rc.alpha == 1.0 && rc.beta == 0.5 && rc.gamma == 0.6 &&
              rc.preset == REWARD_FULL && rc.format == REWARD_FORMAT_FULL_MATCH,
          "defaults: alpha %g beta %g gamma %g", rc.alpha, rc.beta, rc.gamma);
}

static void check_parse(void) {
    const struct { const char *name; reward_preset p; } names[] = {
        {"acc-only", REWARD_ACC_ONLY}, {"region-only", REWARD_REGION_ONLY}, {"region-box", REWARD_REGION_BOX},
        {"weighted", REWARD_WEIGHTED}, {"full", REWARD_FULL},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        reward_preset p = (reward_preset)-1;
        ergo_error err = {0};
        CHECK(reward_preset_parse(names[i].name, &p, &err) == ERGO_OK && p == names[i].p &&
                  !strcmp(reward_preset_name(p), names[i].name),
              "--rewards %s: %s", names[i].name, err.msg);
    }
    reward_preset p;
    ergo_error err = {0};
    CHECK(reward_preset_parse("region", &p, &err) == ERGO_E_ARG && strstr(err.msg, "--rewards region") &&
              strstr(err.msg, "region-box"),
          "--rewards region: %s", err.msg);
    reward_format_rule f = REWARD_FORMAT_FULL_MATCH;
    CHECK(reward_format_parse("partial", &f, &err) == ERGO_OK && f == REWARD_FORMAT_PARTIAL, "--format-reward partial");
    CHECK(reward_format_parse("full-match", &f, &err) == ERGO_OK && f == REWARD_FORMAT_FULL_MATCH,
          "--format-reward full-match");
    CHECK(reward_format_parse("strict", &f, &err) == ERGO_E_ARG && strstr(err.msg, "strict"), "--format-reward strict");
    reward_config rc;
    reward_config_default(&rc);
    CHECK(reward_needs_judge(&rc), "full needs the judge");
    rc.preset = REWARD_ACC_ONLY;
    CHECK(!reward_needs_judge(&rc), "acc-only needs no judge");
    /* reward_score without a judge: fine for acc-only, an error naming the item otherwise */
    reward_rollout ro;
    make_rollout(&rows[0], &ro);
    reward_parts parts;
    CHECK(reward_score(&rc, NULL, &ro, &parts, &err) == ERGO_OK && parts.total == 2.0 && !parts.judge_asked,
          "acc-only without a judge: R %g", parts.total);
    rc.preset = REWARD_FULL;
    memset(&err, 0, sizeof err);
    CHECK(reward_score(&rc, NULL, &ro, &parts, &err) == ERGO_E_ARG && strstr(err.msg, rows[0].name),
          "full without a judge: %s", err.msg);
}

/* The log's means over the table under the full recipe, against sums taken here. */
static void check_stats(void) {
    reward_config rc;
    reward_config_default(&rc);
    reward_stats st;
    memset(&st, 0, sizeof st);
    double sum_total = 0, sum_area = 0, sum_reg = 0;
    int n = 0, dropped = 0, no_box = 0, with_box = 0;
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        reward_rollout ro;
        make_rollout(&rows[i], &ro);
        reward_parts p;
        ergo_error err = {0};
        int ask = rows[i].box == ZOOM_OK;
        if (reward_finish(&rc, &ro, ask ? rows[i].judge : NULL, ask && rows[i].drop, &p, &err)) continue;
        reward_stats_add(&st, &p);
        if (p.dropped) { dropped++; continue; }
        n++;
        sum_total += p.total;
        sum_reg += p.r_region;
        if (ro.box_status == ZOOM_OK) {
            with_box++;
            sum_area += (double)(ro.crop.x2 - ro.crop.x1) * (ro.crop.y2 - ro.crop.y1) / (W * H);
        } else {
            no_box++;
        }
    }
    reward_means m;
    reward_stats_means(&st, &m);
    CHECK(st.n == n && st.dropped == dropped && dropped == 1 && st.no_box == no_box,
          "stats: n %lld dropped %lld no_box %lld (want %d %d %d)", (long long)st.n, (long long)st.dropped,
          (long long)st.no_box, n, dropped, no_box);
    CHECK(fabs(m.total - sum_total / n) < 1e-12 && fabs(m.region - sum_reg / n) < 1e-12 &&
              fabs(m.area_ratio - sum_area / with_box) < 1e-12 && fabs(m.no_box_rate - (double)no_box / n) < 1e-12 &&
              fabs(m.drop_rate - 1.0 / (n + 1)) < 1e-12,
          "means: total %g area %g no-box %g drop %g", m.total, m.area_ratio, m.no_box_rate, m.drop_rate);
}

static void replay(void *ctx, const char *name, const uint8_t *data, size_t size) {
    (void)name;
    reward_fuzz_one(data, size); /* traps on a broken invariant */
    (*(int *)ctx)++;
}

void test_reward(void) {
    check_table();
    check_box_mapping();
    check_nan();
    check_parse();
    check_stats();
    int n = 0;
    for_each_corpus_file("reward_format", replay, &n);
    CHECK(n >= 10, "reward_format fuzz corpus: %d files", n);
}
