/*
 * reward.h - ERGO's GRPO rewards for one two-turn rollout (shared/spec/ergo-training.md,
 * training.md section 6), each a function of its own:
 *
 *   r_region  1 when the judge (judge.h), shown only the crop and the full multiple-choice
 *             question, answers the label (the evaluation's letter rule, eval/score.h)
 *   r_box     1 when area(crop) / area(original) <= gamma, the crop being the box mapped to
 *             the original exactly as inference maps it (pipeline/zoom.h); the ratio is a
 *             double division, so a crop of exactly gamma (60x100 of 100x100) scores 1
 *   r_acc     1 when the policy's own stage-2 answer is the label (the letter rule: every
 *             ASCII letter of the <answer> text, or of the whole answer without one,
 *             compared case-insensitively)
 *   r_format  both turns carry ERGO's tags (the rule below)
 *   R = alpha*r_region + beta*r_box + r_acc + r_format   (alpha 1, beta 0.5, gamma 0.6)
 *
 * A box that cannot be parsed or mapped (zoom.h: none, invalid) scores r_region = r_box = 0
 * and the judge is not asked (ergo-training.md, **open**: inference falls back to the whole
 * image; in training that would reward nothing useful). A judge that cannot answer
 * (judge.h: dropped) drops the rollout from its group: parts.dropped is set and no total
 * is given (never scored as a wrong answer). A total that is not finite (a NaN or infinite
 * weight) is an error naming the item.
 *
 * ---- the format rule ---------------------------------------------------------------
 * Each turn is its decoded text (special tokens skipped, so without <|im_end|>), matched
 * in full (PCRE2, no UTF/UCP: \s = [ \t\n\v\f\r], \d = [0-9], . matches newlines) against
 *
 *   turn 1:  \s*<think>T</think>\s*<zoom>\s*\[\d+,\s*\d+,\s*\d+,\s*\d+\]\s*</zoom>\s*
 *   turn 2:  \s*<think>T</think>\s*<answer>T</answer>\s*
 *   T     =  (?:(?!</?(?:think|zoom|answer)>).)*   any text holding none of the six tags
 *
 * REWARD_FORMAT_FULL_MATCH (the default; VLM-R1's format_reward style, 0 or 1):
 *   r_format = 1 when both turns match, else 0.
 * It follows VLM-R1's re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", DOTALL)
 * with three changes, all ours: whitespace around a turn is allowed (a newline before
 * <|im_end|> is no format error); T may not hold a tag, so a second <think> block or a
 * second box does not match (VLM-R1's .*? swallows them); turn 1 ends with ERGO's box (the
 * stage-1 prompt's <zoom>[x1, y1, x2, y2]</zoom>, with the spacing the box parser's full
 * form accepts) instead of an answer. ERGO's TEMPLATE2 asks for "<think> ... <think>" (a
 * typo of the prompt); only </think> closes a think block here, as in ERGO's SFT targets.
 *
 * REWARD_FORMAT_PARTIAL: each turn scores the mean of three checks and r_format is the
 * mean of the two turns (so 0, 1/6, ..., 1; a full match scores 1 under both rules):
 *   (a) exactly one "<think>" and one "</think>", the opening first;
 *   (b) turn 1: exactly one "<zoom>" and one "</zoom>", the opening first, and between them
 *       \s*\[\d+,\s*\d+,\s*\d+,\s*\d+\]\s* in full; turn 2: exactly one "<answer>" and one
 *       "</answer>", the opening first;
 *   (c) the full match above.
 *
 * ---- the ablation presets (--rewards) ------------------------------------------------
 * Which terms R sums, our reading of the paper's ablation rows (ergo-training.md: accuracy
 * only 53.5, region only 51.4, region + box 54.9, weighted 55.3, full 58.4); r_format is
 * in every row (it is VLM-R1's standard term, **open**):
 *   acc-only     r_acc + r_format                               (no judge)
 *   region-only  r_region + r_format                            (the whole-image shortcut)
 *   region-box   r_region + r_box + r_format                    (unweighted)
 *   weighted     alpha*r_region + beta*r_box + r_format
 *   full         alpha*r_region + beta*r_box + r_acc + r_format (the default)
 * The components are computed whatever the preset (r_region only when the preset needs the
 * judge), so every run logs the same columns.
 *
 *   reward_config rc; reward_config_default(&rc);
 *   reward_preset_parse("region-box", &rc.preset, &err);
 *   reward_rollout ro = {.item = "synth test 17 #3", .stage1_text = r1, .stage2_text = r2,
 *                        .label = "B", .width = W, .height = H, .crop_image = &crop,
 *                        .question = full_q, .gt_box = gt};
 *   ro.box_status = reward_box_of(r1, sx, sy, W, H, max_pixels, &ro.crop);
 *   reward_parts p;
 *   if (reward_score(&rc, judge, &ro, &p, &err)) ...;   // a NaN total, a judge failure
 *   if (!p.dropped) reward_stats_add(&stats, &p);        // p.total is R
 */
#ifndef ERGO_TRAIN_REWARD_H
#define ERGO_TRAIN_REWARD_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "image/image.h"
#include "pipeline/zoom.h"

struct judge; /* judge.h */

typedef enum reward_format_rule {
    REWARD_FORMAT_FULL_MATCH = 0, /* 0 or 1: both turns match in full */
    REWARD_FORMAT_PARTIAL,        /* the mean of the per-turn checks (a), (b), (c) */
} reward_format_rule;

typedef enum reward_preset {
    REWARD_FULL = 0,
    REWARD_ACC_ONLY,
    REWARD_REGION_ONLY,
    REWARD_REGION_BOX,
    REWARD_WEIGHTED,
} reward_preset;

typedef struct reward_config {
    double alpha;               /* r_region's weight where the preset weights it (1.0) */
    double beta;                /* r_box's weight where the preset weights it (0.5) */
    double gamma;               /* the largest crop area / image area that earns r_box (0.6) */
    reward_format_rule format;  /* REWARD_FORMAT_FULL_MATCH */
    reward_preset preset;       /* REWARD_FULL */
} reward_config;

void reward_config_default(reward_config *c);

/* alpha, beta finite and >= 0, gamma in (0, 1]; the message names the flag. */
ergo_status reward_config_check(const reward_config *c, ergo_error *err);

/* --rewards NAME: "acc-only", "region-only", "region-box", "weighted", "full". */
ergo_status reward_preset_parse(const char *s, reward_preset *out, ergo_error *err);
const char *reward_preset_name(reward_preset p);
/* --format-reward NAME: "full-match", "partial". */
ergo_status reward_format_parse(const char *s, reward_format_rule *out, ergo_error *err);
const char *reward_format_name(reward_format_rule f);

/* The weight of each term in R under c's preset (0 when the term is off). */
typedef struct reward_weights { double region, box, acc, format; } reward_weights;
void reward_weights_of(const reward_config *c, reward_weights *w);
/* 1 when the preset has r_region (the judge is needed). */
int reward_needs_judge(const reward_config *c);

/* ---- the four rewards ------------------------------------------------------------- */

/* The box of a stage-1 answer as inference reads it: zoom_parse, then zoom_map onto the
 * width x height original with sx = width / w1, sy = height / h1 and the crop's resize
 * budget (ERGO_FACTOR, ERGO_MIN_PIXELS, max_pixels = stage-1 budget * 28 * 28). */
zoom_status reward_box_of(const char *stage1_text, double sx, double sy, int width, int height,
                          int64_t max_pixels, zoom_crop *crop);

/* r_box: 1 when box_status is ZOOM_OK and the crop's area / (width * height) <= gamma.
 * *ratio (may be NULL) gets that ratio (0 without a usable box). */
int reward_box(zoom_status box_status, const zoom_crop *crop, int width, int height, double gamma,
               double *ratio);

/* r_acc / r_region: 1 when text (the policy's stage-2 answer / the judge's answer) is
 * label under the evaluation's letter rule (score_response), 0 when not or when text is
 * NULL, -1 when out of memory. */
int reward_letter_match(const char *text, const char *label);

/* One turn's format score (turn 1 or 2) under rule: 0 or 1 (full match), or the mean of
 * the three checks (partial). NULL text scores 0. */
double reward_format_turn(reward_format_rule rule, int turn, const char *text);
/* r_format of both turns. */
double reward_format(reward_format_rule rule, const char *stage1_text, const char *stage2_text);

/* ---- one rollout ------------------------------------------------------------------ */

typedef struct reward_rollout {
    const char *item;         /* names the item and rollout in messages ("synth test 17 #3") */
    const char *stage1_text;  /* o_region, decoded (special tokens skipped) */
    const char *stage2_text;  /* o_acc; NULL when stage 2 did not run */
    const char *label;        /* the right option's letter(s), "B" */
    zoom_status box_status;   /* reward_box_of(stage1_text, ...) */
    zoom_crop crop;           /* the crop in the original (box_status ZOOM_OK) */
    int width, height;        /* the original */
    /* what the judge is given (only read when the preset needs it and the box is usable): */
    const image *crop_image;  /* the crop as stage 2 sees it (the LANCZOS-resized crop) */
    const char *question;     /* the full multiple-choice question (ergo_full_question) */
    const int *gt_box;        /* ground-truth box [x1, y1, x2, y2] in the original (end
                                 exclusive) for an oracle judge; NULL when the item has none */
} reward_rollout;

typedef struct reward_parts {
    zoom_status box_status;
    int box_ok;               /* box_status == ZOOM_OK */
    double area_ratio;        /* crop area / original area, 0 without a usable box */
    int judge_asked;          /* the preset needs r_region and the box is usable */
    int judge_cached;         /* the judge's answer came from its cache */
    int dropped;              /* the judge could not answer: leave the rollout out */
    double r_region, r_box, r_acc, r_format;
    double total;             /* R under the preset (0 when dropped) */
} reward_parts;

/* The rollout's rewards given the judge's answer: judge_text NULL with judge_dropped 0
 * when the judge was not asked (or had no usable box), judge_dropped 1 when it could not
 * answer. Fails (naming r->item) when the total is not finite or out of memory. */
ergo_status reward_finish(const reward_config *c, const reward_rollout *r, const char *judge_text,
                          int judge_dropped, reward_parts *out, ergo_error *err);

/* reward_finish after asking the judge (j may be NULL when the preset has no r_region).
 * A judge failure other than a drop (judge.h) fails here, its message prefixed with
 * r->item. */
ergo_status reward_score(const reward_config *c, struct judge *j, const reward_rollout *r,
                         reward_parts *out, ergo_error *err);

/* ---- means for the log ------------------------------------------------------------- */

typedef struct reward_stats {
    int64_t n;                /* rollouts scored (dropped ones not included) */
    int64_t dropped;          /* rollouts the judge could not score */
    int64_t no_box;           /* scored rollouts without a usable box */
    int64_t judge_asked, judge_cached;
    double sum_region, sum_box, sum_acc, sum_format, sum_total;
    double sum_area;          /* over scored rollouts with a usable box */
} reward_stats;

void reward_stats_add(reward_stats *s, const reward_parts *p);

typedef struct reward_means {
    double region, box, acc, format, total; /* over scored rollouts (0 when none) */
    double no_box_rate;       /* no_box / n */
    double area_ratio;        /* mean crop area ratio over rollouts with a box */
    double drop_rate;         /* dropped / (n + dropped) */
} reward_means;

void reward_stats_means(const reward_stats *s, reward_means *m);

/* One fuzz input: turn 1, a NUL byte, turn 2 (reward_fuzz.c). Always 0. */
int reward_fuzz_one(const uint8_t *data, size_t size);

#endif
