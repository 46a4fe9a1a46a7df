/*
 * reward.c - ERGO's rewards of one rollout and their means (reward.h).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "train/reward.h"

#include <math.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "eval/score.h"
#include "pipeline/ergo.h"
#include "train/judge.h"

void reward_config_default(reward_config *c) {
    c->alpha = 1.0;
    c->beta = 0.5;
    c->gamma = 0.6;
    c->format = REWARD_FORMAT_FULL_MATCH;
    c->preset = REWARD_FULL;
}

ergo_status reward_config_check(const reward_config *c, ergo_error *err) {
    if (!isfinite(c->alpha) || c->alpha < 0)
        return ergo_fail(err, ERGO_E_ARG, "--alpha %g: use a finite weight >= 0", c->alpha);
    if (!isfinite(c->beta) || c->beta < 0)
        return ergo_fail(err, ERGO_E_ARG, "--beta %g: use a finite weight >= 0", c->beta);
    if (!(c->gamma > 0 && c->gamma <= 1))
        return ergo_fail(err, ERGO_E_ARG, "--gamma %g: use an area ratio in (0, 1]", c->gamma);
    if ((unsigned)c->format > REWARD_FORMAT_PARTIAL || (unsigned)c->preset > REWARD_WEIGHTED)
        return ergo_fail(err, ERGO_E_ARG, "reward config: unknown format rule or preset");
    return ERGO_OK;
}

static const char *const preset_names[] = {"full", "acc-only", "region-only", "region-box", "weighted"};
static const char *const format_names[] = {"full-match", "partial"};

const char *reward_preset_name(reward_preset p) {
    return (unsigned)p <= REWARD_WEIGHTED ? preset_names[p] : "?";
}

const char *reward_format_name(reward_format_rule f) {
    return (unsigned)f <= REWARD_FORMAT_PARTIAL ? format_names[f] : "?";
}

ergo_status reward_preset_parse(const char *s, reward_preset *out, ergo_error *err) {
    for (int i = 0; i <= REWARD_WEIGHTED; i++)
        if (s && !strcmp(s, preset_names[i])) {
            *out = (reward_preset)i;
            return ERGO_OK;
        }
    return ergo_fail(err, ERGO_E_ARG, "--rewards %s: use acc-only, region-only, region-box, weighted or full",
                     s ? s : "(none)");
}

ergo_status reward_format_parse(const char *s, reward_format_rule *out, ergo_error *err) {
    for (int i = 0; i <= REWARD_FORMAT_PARTIAL; i++)
        if (s && !strcmp(s, format_names[i])) {
            *out = (reward_format_rule)i;
            return ERGO_OK;
        }
    return ergo_fail(err, ERGO_E_ARG, "--format-reward %s: use full-match or partial", s ? s : "(none)");
}

void reward_weights_of(const reward_config *c, reward_weights *w) {
    w->format = 1.0;
    switch (c->preset) {
    case REWARD_ACC_ONLY: w->region = 0, w->box = 0, w->acc = 1; break;
    case REWARD_REGION_ONLY: w->region = 1, w->box = 0, w->acc = 0; break;
    case REWARD_REGION_BOX: w->region = 1, w->box = 1, w->acc = 0; break;
    case REWARD_WEIGHTED: w->region = c->alpha, w->box = c->beta, w->acc = 0; break;
    case REWARD_FULL:
    default: w->region = c->alpha, w->box = c->beta, w->acc = 1; break;
    }
}

int reward_needs_judge(const reward_config *c) {
    return c->preset != REWARD_ACC_ONLY;
}

/* ---- the four rewards --------------------------------------------------------------- */

zoom_status reward_box_of(const char *stage1_text, double sx, double sy, int width, int height,
                          int64_t max_pixels, zoom_crop *crop) {
    memset(crop, 0, sizeof *crop);
    if (!stage1_text) return ZOOM_NONE;
    zoom_box box;
    zoom_status st = zoom_parse(stage1_text, strlen(stage1_text), &box);
    if (st == ZOOM_OK)
        st = zoom_map(&box, sx, sy, width, height, ERGO_FACTOR, ERGO_MIN_PIXELS, max_pixels, crop);
    return st;
}

int reward_box(zoom_status box_status, const zoom_crop *crop, int width, int height, double gamma,
               double *ratio) {
    if (ratio) *ratio = 0;
    if (box_status != ZOOM_OK || width <= 0 || height <= 0) return 0;
    double r = (double)(crop->x2 - crop->x1) * (double)(crop->y2 - crop->y1) /
               ((double)width * (double)height);
    if (ratio) *ratio = r;
    return r <= gamma;
}

int reward_letter_match(const char *text, const char *label) {
    if (!text || !label) return 0;
    return score_response(text, label, NULL);
}

/* The three patterns of the rule, compiled once (matching a compiled pattern is
 * thread-safe; each call brings its own match data). T is possessive here (*+): it stops
 * at the first of the six tags, and no shorter T can be followed by a tag (else it would
 * have stopped there), so the match is the header's while the matcher keeps no
 * backtracking state per character of a long answer. */
#define FMT_T "(?:(?!</?(?:think|zoom|answer)>).)*+"
#define FMT_BOX "\\[\\d+,\\s*\\d+,\\s*\\d+,\\s*\\d+\\]"
static const char *const fmt_src[3] = {
    "\\A\\s*<think>" FMT_T "</think>\\s*<zoom>\\s*" FMT_BOX "\\s*</zoom>\\s*\\z",
    "\\A\\s*<think>" FMT_T "</think>\\s*<answer>" FMT_T "</answer>\\s*\\z",
    "\\A\\s*" FMT_BOX "\\s*\\z",
};
static pcre2_code *fmt_code[3];
static pthread_once_t fmt_once = PTHREAD_ONCE_INIT;

static void fmt_compile(void) {
    for (int i = 0; i < 3; i++) {
        int ec;
        PCRE2_SIZE off;
        fmt_code[i] = pcre2_compile((PCRE2_SPTR)fmt_src[i], PCRE2_ZERO_TERMINATED, PCRE2_DOTALL, &ec, &off, NULL);
        ERGO_ASSERT(fmt_code[i] != NULL); /* constant patterns */
    }
}

/* 1 when pattern k matches s[0, n) (anchored at both ends by \A and \z), 0 when not or
 * when PCRE2 gives up (its match limits: counted as no match). */
static int fmt_match(int k, const char *s, size_t n) {
    pthread_once(&fmt_once, fmt_compile);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(fmt_code[k], NULL);
    if (!md) return 0;
    int rc = pcre2_match(fmt_code[k], (PCRE2_SPTR)s, n, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

static int count_of(const char *s, const char *what) {
    int n = 0;
    size_t k = strlen(what);
    for (const char *p = strstr(s, what); p; p = strstr(p + k, what)) n++;
    return n;
}

/* Exactly one `open` and one `close`, the opening first; *inside gets the text between. */
static int one_pair(const char *s, const char *open, const char *close, const char **in_b,
                    const char **in_e) {
    if (count_of(s, open) != 1 || count_of(s, close) != 1) return 0;
    const char *a = strstr(s, open), *z = strstr(s, close);
    if (z < a + strlen(open)) return 0;
    if (in_b) *in_b = a + strlen(open), *in_e = z;
    return 1;
}

double reward_format_turn(reward_format_rule rule, int turn, const char *text) {
    if (!text) return 0;
    int full = fmt_match(turn == 1 ? 0 : 1, text, strlen(text));
    if (rule == REWARD_FORMAT_FULL_MATCH) return full;
    int think = one_pair(text, "<think>", "</think>", NULL, NULL);
    int tail;
    if (turn == 1) {
        const char *b = NULL, *e = NULL;
        tail = one_pair(text, "<zoom>", "</zoom>", &b, &e) && fmt_match(2, b, (size_t)(e - b));
    } else {
        tail = one_pair(text, "<answer>", "</answer>", NULL, NULL);
    }
    return (think + tail + full) / 3.0;
}

double reward_format(reward_format_rule rule, const char *stage1_text, const char *stage2_text) {
    double a = reward_format_turn(rule, 1, stage1_text), b = reward_format_turn(rule, 2, stage2_text);
    if (rule == REWARD_FORMAT_FULL_MATCH) return a == 1.0 && b == 1.0;
    return (a + b) / 2.0;
}

/* ---- one rollout -------------------------------------------------------------------- */

ergo_status reward_finish(const reward_config *c, const reward_rollout *r, const char *judge_text,
                          int judge_dropped, reward_parts *out, ergo_error *err) {
    const char *item = r->item ? r->item : "(unnamed item)";
    memset(out, 0, sizeof *out);
    out->box_status = r->box_status;
    out->box_ok = r->box_status == ZOOM_OK;
    out->r_box = reward_box(r->box_status, &r->crop, r->width, r->height, c->gamma, &out->area_ratio);
    out->judge_asked = reward_needs_judge(c) && out->box_ok;
    if (out->judge_asked && judge_dropped) {
        out->dropped = 1; /* left out of the group; never a wrong answer */
        return ERGO_OK;
    }
    int m = out->judge_asked ? reward_letter_match(judge_text, r->label) : 0;
    int a = reward_letter_match(r->stage2_text, r->label);
    if (m < 0 || a < 0) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory scoring the rewards", item);
    out->r_region = m;
    out->r_acc = a;
    out->r_format = reward_format(c->format, r->stage1_text, r->stage2_text);
    reward_weights w;
    reward_weights_of(c, &w);
    out->total = w.region * out->r_region + w.box * out->r_box + w.acc * out->r_acc + w.format * out->r_format;
    if (!isfinite(out->total))
        return ergo_fail(err, ERGO_E_ARG,
                         "%s: the reward is %g (r_region %g, r_box %g, r_acc %g, r_format %g; weights %g, %g, %g, %g)",
                         item, out->total, out->r_region, out->r_box, out->r_acc, out->r_format, w.region, w.box,
                         w.acc, w.format);
    return ERGO_OK;
}

ergo_status reward_score(const reward_config *c, judge *j, const reward_rollout *r, reward_parts *out,
                         ergo_error *err) {
    const char *item = r->item ? r->item : "(unnamed item)";
    judge_answer ans;
    memset(&ans, 0, sizeof ans);
    int ask = reward_needs_judge(c) && r->box_status == ZOOM_OK;
    if (ask) {
        if (!j) return ergo_fail(err, ERGO_E_ARG, "%s: --rewards %s needs a judge", item, reward_preset_name(c->preset));
        judge_query q = {r->crop_image, r->question, r->label, {r->crop.x1, r->crop.y1, r->crop.x2, r->crop.y2},
                         r->gt_box};
        ergo_status s = judge_ask(j, &q, &ans, err);
        if (s) {
            ergo_error_prefix(err, "%s: ", item);
            return s;
        }
    }
    ergo_status s = reward_finish(c, r, ans.text, ans.dropped, out, err);
    out->judge_cached = ans.cached;
    judge_answer_free(&ans);
    return s;
}

/* ---- means for the log -------------------------------------------------------------- */

void reward_stats_add(reward_stats *s, const reward_parts *p) {
    if (p->dropped) {
        s->dropped++;
        return;
    }
    s->n++;
    s->no_box += !p->box_ok;
    s->judge_asked += p->judge_asked;
    s->judge_cached += p->judge_cached;
    s->sum_region += p->r_region;
    s->sum_box += p->r_box;
    s->sum_acc += p->r_acc;
    s->sum_format += p->r_format;
    s->sum_total += p->total;
    if (p->box_ok) s->sum_area += p->area_ratio;
}

void reward_stats_means(const reward_stats *s, reward_means *m) {
    double n = (double)s->n;
    memset(m, 0, sizeof *m);
    if (s->n) {
        m->region = s->sum_region / n;
        m->box = s->sum_box / n;
        m->acc = s->sum_acc / n;
        m->format = s->sum_format / n;
        m->total = s->sum_total / n;
        m->no_box_rate = (double)s->no_box / n;
    }
    if (s->n > s->no_box) m->area_ratio = s->sum_area / (double)(s->n - s->no_box);
    if (s->n + s->dropped) m->drop_rate = (double)s->dropped / (double)(s->n + s->dropped);
}
