/*
 * summary.c - summary.json, summary.md and the plots from a results file (run.h), and
 * the merge of shards. Everything is computed from the records sorted by (sample,
 * mode, budget), so the order they were written in does not matter.
 */
#include <gd.h>
#include <gdfonts.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

#include "base/file.h"
#include "eval/eval_internal.h"
#include "eval/score.h"

static const char *str(const json_t *o, const char *k) {
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static int mode_rank(const char *m) {
    return !strcmp(m, "ergo") ? 0 : !strcmp(m, "baseline") ? 1 : 2;
}

static int cmp_rec(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    json_int_t sx = json_integer_value(json_object_get(x, "seq")),
               sy = json_integer_value(json_object_get(y, "seq"));
    if (sx != sy) return sx < sy ? -1 : 1;
    int c = strcmp(str(x, "key"), str(y, "key"));
    if (c) return c;
    int mx = mode_rank(str(x, "mode")), my = mode_rank(str(y, "mode"));
    if (mx != my) return mx < my ? -1 : 1;
    if ((c = strcmp(str(x, "mode"), str(y, "mode")))) return c;
    json_int_t bx = json_integer_value(json_object_get(x, "budget")),
               by = json_integer_value(json_object_get(y, "budget"));
    return bx < by ? -1 : bx > by;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* numpy's default percentile (linear between closest ranks) of sorted v. */
static double pct(const double *v, size_t n, double p) {
    if (!n) return 0;
    double r = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(r), hi = lo + 1 < n ? lo + 1 : lo;
    return v[lo] + (v[hi] - v[lo]) * (r - (double)lo);
}

static json_t *dist_json(double *v, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    qsort(v, n, sizeof *v, cmp_d);
    return json_pack("{s:I, s:f, s:f, s:f}", "n", (json_int_t)n, "mean", n ? sum / (double)n : 0.0,
                     "p50", pct(v, n, 50), "p90", pct(v, n, 90));
}

static double num(const json_t *a, size_t i) { return json_number_value(json_array_get(a, i)); }

/* The two-sided exact McNemar p-value for b and c discordant pairs. */
static double mcnemar(int64_t b, int64_t c) {
    int64_t n = b + c, k = b < c ? b : c;
    if (n == 0) return 1.0;
    double p = 0;
    for (int64_t i = 0; i <= k; i++)
        p += exp(lgamma((double)n + 1) - lgamma((double)i + 1) - lgamma((double)(n - i) + 1) -
                 (double)n * log(2.0));
    p *= 2;
    return p > 1 ? 1 : p;
}

typedef struct group {
    char mode[64];
    int budget;
    json_t *recs; /* array (borrowed references) */
    double acc, lo, hi, vis_total;
} group;

static group *find_group(group *g, int *n, int cap, const char *mode, int budget) {
    for (int i = 0; i < *n; i++)
        if (!strcmp(g[i].mode, mode) && g[i].budget == budget) return &g[i];
    if (*n >= cap) return NULL;
    group *x = &g[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->mode, sizeof x->mode, "%s", mode);
    x->budget = budget;
    x->recs = json_array();
    return x;
}

static int cmp_group(const void *a, const void *b) {
    const group *x = a, *y = b;
    int mx = mode_rank(x->mode), my = mode_rank(y->mode);
    if (mx != my) return mx < my ? -1 : 1;
    int c = strcmp(x->mode, y->mode);
    if (c) return c;
    return x->budget < y->budget ? -1 : x->budget > y->budget;
}

/* --------------------------------------------------------------------- plots */

static ergo_status write_gd(gdImagePtr g, const char *dir, const char *name, ergo_error *err) {
    char path[4096];
    ergo_status s = path_join(path, sizeof path, dir, name, err);
    int size = 0;
    void *png = s ? NULL : gdImagePngPtr(g, &size);
    if (!s && !png) s = ergo_fail(err, ERGO_E_IO, "cannot encode %s", name);
    if (!s) s = file_write_all(path, png, (size_t)size, err);
    if (png) gdFree(png);
    return s;
}

static ergo_status plot_accuracy(const char *dir, const group *g, int n, ergo_error *err) {
    const int W = 640, H = 420, L = 60, R = 20, T = 30, B = 50;
    gdImagePtr im = gdImageCreateTrueColor(W, H);
    if (!im) return ergo_fail(err, ERGO_E_NOMEM, "out of memory (plot)");
    int white = gdTrueColor(255, 255, 255), black = gdTrueColor(0, 0, 0), grey = gdTrueColor(210, 210, 210);
    int colours[4] = {gdTrueColor(220, 40, 40), gdTrueColor(40, 80, 220), gdTrueColor(30, 150, 60),
                      gdTrueColor(160, 60, 160)};
    gdImageFilledRectangle(im, 0, 0, W - 1, H - 1, white);
    double xmax = 1;
    for (int i = 0; i < n; i++) if (g[i].vis_total > xmax) xmax = g[i].vis_total;
    xmax *= 1.1;
    gdImageLine(im, L, H - B, W - R, H - B, black);
    gdImageLine(im, L, T, L, H - B, black);
    char buf[128];
    for (int k = 0; k <= 10; k += 2) {
        int y = H - B - (H - B - T) * k / 10;
        gdImageLine(im, L + 1, y, W - R, y, grey);
        snprintf(buf, sizeof buf, "%d%%", k * 10);
        gdImageString(im, gdFontGetSmall(), 8, y - 6, (unsigned char *)buf, black);
    }
    for (int k = 0; k <= 4; k++) {
        int x = L + (W - R - L) * k / 4;
        snprintf(buf, sizeof buf, "%.0f", xmax * k / 4);
        gdImageString(im, gdFontGetSmall(), x - 10, H - B + 6, (unsigned char *)buf, black);
    }
    gdImageString(im, gdFontGetSmall(), W / 2 - 80, H - 18,
                  (unsigned char *)"mean vision tokens per sample", black);
    gdImageString(im, gdFontGetSmall(), L, 8, (unsigned char *)"accuracy (95% Wilson interval)", black);
    int legend = 0, px = -1, py = -1;
    const char *prev = "";
    for (int i = 0; i < n; i++) {
        int c = colours[mode_rank(g[i].mode) + (mode_rank(g[i].mode) == 2 && strstr(g[i].mode, "noise")) +
                        (mode_rank(g[i].mode) == 2 && strstr(g[i].mode, "full") ? 1 : 0)];
        int x = L + (int)((W - R - L) * g[i].vis_total / xmax);
        int y = H - B - (int)((H - B - T) * g[i].acc);
        int ylo = H - B - (int)((H - B - T) * g[i].lo), yhi = H - B - (int)((H - B - T) * g[i].hi);
        if (strcmp(prev, g[i].mode)) {
            gdImageString(im, gdFontGetSmall(), W - R - 140, T + 14 * legend++, (unsigned char *)g[i].mode, c);
            px = -1;
        } else if (px >= 0) {
            gdImageLine(im, px, py, x, y, c);
        }
        gdImageLine(im, x, ylo, x, yhi, c);
        gdImageFilledRectangle(im, x - 3, y - 3, x + 3, y + 3, c);
        snprintf(buf, sizeof buf, "%d", g[i].budget);
        gdImageString(im, gdFontGetSmall(), x + 5, y - 14, (unsigned char *)buf, c);
        px = x, py = y, prev = g[i].mode;
    }
    ergo_status s = write_gd(im, dir, "accuracy.png", err);
    gdImageDestroy(im);
    return s;
}

static ergo_status plot_areas(const char *dir, const double *a, size_t n, ergo_error *err) {
    enum { BINS = 20 };
    const int W = 640, H = 360, L = 50, R = 20, T = 30, B = 50;
    int64_t hist[BINS] = {0}, mx = 1;
    for (size_t i = 0; i < n; i++) {
        int b = (int)(a[i] * BINS);
        b = b < 0 ? 0 : b >= BINS ? BINS - 1 : b;
        if (++hist[b] > mx) mx = hist[b];
    }
    gdImagePtr im = gdImageCreateTrueColor(W, H);
    if (!im) return ergo_fail(err, ERGO_E_NOMEM, "out of memory (plot)");
    int white = gdTrueColor(255, 255, 255), black = gdTrueColor(0, 0, 0), red = gdTrueColor(220, 40, 40);
    gdImageFilledRectangle(im, 0, 0, W - 1, H - 1, white);
    gdImageLine(im, L, H - B, W - R, H - B, black);
    gdImageLine(im, L, T, L, H - B, black);
    char buf[128];
    for (int b = 0; b < BINS; b++) {
        int x0 = L + (W - R - L) * b / BINS, x1 = L + (W - R - L) * (b + 1) / BINS - 2;
        int y = H - B - (int)((H - B - T) * (double)hist[b] / (double)mx);
        if (hist[b]) gdImageFilledRectangle(im, x0 + 1, y, x1, H - B - 1, red);
    }
    for (int k = 0; k <= 4; k++) {
        snprintf(buf, sizeof buf, "%.2f", k / 4.0);
        gdImageString(im, gdFontGetSmall(), L + (W - R - L) * k / 4 - 10, H - B + 6, (unsigned char *)buf, black);
    }
    snprintf(buf, sizeof buf, "%lld", (long long)mx);
    gdImageString(im, gdFontGetSmall(), 8, T - 6, (unsigned char *)buf, black);
    snprintf(buf, sizeof buf, "ERGO box area / image area (%zu boxes)", n);
    gdImageString(im, gdFontGetSmall(), L, 8, (unsigned char *)buf, black);
    ergo_status s = write_gd(im, dir, "box_areas.png", err);
    gdImageDestroy(im);
    return s;
}

/* --------------------------------------------------------------------- summary */

static void strbuf_add(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#include <stdarg.h>
static void strbuf_add(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (*buf && *len + (size_t)n < *cap) { *len += (size_t)n; return; }
        size_t nc = (*cap + (size_t)n + 1) * 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return;
        *buf = nb, *cap = nc;
    }
}

#define MAX_GROUPS 64

ergo_status eval_summarize(const char *dir, const eval_config *c, char **md_out, ergo_error *err) {
    char path[4096];
    ergo_status s = path_join(path, sizeof path, dir, "results.jsonl", err);
    json_t *recs = NULL;
    if (!s) s = eval_load_results(path, &recs, NULL, err);
    if (s) return s;
    size_t n = json_array_size(recs);
    json_t **v = malloc((n ? n : 1) * sizeof *v);
    group *g = calloc(MAX_GROUPS, sizeof *g);
    double *areas = malloc((n ? n : 1) * sizeof *areas);
    if (!v || !g || !areas) {
        free(v), free(g), free(areas), json_decref(recs);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory (summary)");
    }
    for (size_t i = 0; i < n; i++) v[i] = json_array_get(recs, i);
    qsort(v, n, sizeof *v, cmp_rec);
    bench_kind kind = c->kind;
    if (n && bench_parse_name(str(v[0], "bench")) >= 0) kind = (bench_kind)bench_parse_name(str(v[0], "bench"));
    int ng = 0, refd = c->reference_denominator;
    for (size_t i = 0; i < n; i++) {
        group *x = find_group(g, &ng, MAX_GROUPS, str(v[i], "mode"),
                              (int)json_integer_value(json_object_get(v[i], "budget")));
        if (x) json_array_append(x->recs, v[i]);
    }
    qsort(g, (size_t)ng, sizeof *g, cmp_group);

    json_t *root = json_object(), *groups = json_array();
    char *md = NULL;
    size_t ml = 0, mc = 0;
    strbuf_add(&md, &ml, &mc, "# ergo eval: %s\n\n", bench_name(kind));
    strbuf_add(&md, &ml, &mc, "Failed samples are %s (the reference drops them silently).\n\n",
               refd ? "left out of the accuracies (--reference-denominator)" : "scored wrong");
    strbuf_add(&md, &ml, &mc,
               "| mode | budget | samples | failed | accuracy | 95%% CI | vision tokens s1 / s2 / total "
               "| prompt tok | generated tok | time s1 p50 / p90 ms | time s2 p50 / p90 ms | box area "
               "(mean) | no box | fallback |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    size_t n_areas = 0;
    char *reports = NULL;
    size_t rl = 0, rc = 0;
    for (int k = 0; k < ng; k++) {
        group *x = &g[k];
        size_t m = json_array_size(x->recs);
        score_table t;
        score_table_init(&t, kind);
        double *t1 = calloc(m + 1, sizeof *t1), *t2 = calloc(m + 1, sizeof *t2),
               *tt = calloc(m + 1, sizeof *tt), *ar = calloc(m + 1, sizeof *ar);
        double vis[3] = {0}, prompt = 0, gen = 0;
        int64_t n_ok = 0, n_fail = 0, no_box = 0, fallback = 0, n_box = 0, n_ergo = 0;
        for (size_t i = 0; i < m; i++) {
            const json_t *r = json_array_get(x->recs, i);
            int ok = !strcmp(str(r, "status"), "ok");
            const char *sub = json_string_value(json_object_get(r, "subcategory"));
            score_add(&t, str(r, "category"), sub,
                      !ok || (refd && json_is_true(json_object_get(r, "reference_dropped"))) ? SCORE_FAILED : json_is_true(json_object_get(r, "correct")) ? SCORE_CORRECT
                                                                                      : SCORE_WRONG);
            if (!ok) { n_fail++; continue; }
            const json_t *vt = json_object_get(r, "vision_tokens"), *pt = json_object_get(r, "prompt_tokens"),
                         *gt = json_object_get(r, "generated_tokens"), *tm = json_object_get(r, "time_ms");
            vis[0] += num(vt, 0), vis[1] += num(vt, 1), vis[2] += num(vt, 0) + num(vt, 1);
            prompt += num(pt, 0) + num(pt, 1), gen += num(gt, 0) + num(gt, 1);
            t1[n_ok] = num(tm, 0), t2[n_ok] = num(tm, 1), tt[n_ok] = num(tm, 0) + num(tm, 1);
            n_ok++;
            const json_t *box = json_object_get(r, "box");
            if (box) {
                n_ergo++;
                if (!strcmp(str(box, "status"), "none")) no_box++;
                if (strcmp(str(r, "view"), "crop")) fallback++;
                const json_t *af = json_object_get(box, "area_fraction");
                if (af) {
                    ar[n_box++] = json_number_value(af);
                    if (!strcmp(x->mode, "ergo")) areas[n_areas++] = json_number_value(af);
                }
            }
        }
        int64_t cnt = 0;
        x->acc = score_accuracy(&t.total, refd, &cnt);
        score_wilson95(t.total.correct, cnt, &x->lo, &x->hi);
        double dn = n_ok ? (double)n_ok : 1;
        x->vis_total = vis[2] / dn;
        json_t *cats = json_array();
        for (int r = 0; r < t.n_rows + t.n_extra; r++) {
            const score_count *sc = r < t.n_rows ? &t.rows[r] : &t.extra[r - t.n_rows];
            int64_t cn = 0;
            double a = score_accuracy(sc, refd, &cn), lo, hi;
            score_wilson95(sc->correct, cn, &lo, &hi);
            json_array_append_new(cats, json_pack("{s:s, s:I, s:I, s:I, s:f, s:[f,f]}", "name", sc->name,
                                                  "correct", (json_int_t)sc->correct, "wrong",
                                                  (json_int_t)sc->wrong, "failed", (json_int_t)sc->failed,
                                                  "accuracy", a, "ci95", lo, hi));
        }
        double ba = 0;
        for (int64_t i = 0; i < n_box; i++) ba += ar[i];
        json_t *dt1 = dist_json(t1, (size_t)n_ok), *dt2 = dist_json(t2, (size_t)n_ok),
               *dtt = dist_json(tt, (size_t)n_ok), *dar = dist_json(ar, (size_t)n_box);
        json_t *gj = json_pack(
            "{s:s, s:i, s:I, s:I, s:I, s:I, s:f, s:[f,f], s:o, s:{s:f, s:f, s:f}, s:f, s:f, "
            "s:{s:o, s:o, s:o}}",
            "mode", x->mode, "budget", x->budget, "samples", (json_int_t)m, "scored", (json_int_t)cnt,
            "correct", (json_int_t)t.total.correct, "failed", (json_int_t)n_fail, "accuracy", x->acc,
            "ci95", x->lo, x->hi, "categories", cats, "vision_tokens_mean", "stage1", vis[0] / dn,
            "stage2", vis[1] / dn, "total", vis[2] / dn, "prompt_tokens_mean", prompt / dn,
            "generated_tokens_mean", gen / dn, "time_ms", "stage1", dt1, "stage2", dt2, "total", dtt);
        if (n_ergo) {
            json_object_set_new(gj, "box_area_fraction", dar);
            json_object_set_new(gj, "no_box_rate", json_real((double)no_box / (double)n_ergo));
            json_object_set_new(gj, "fallback_rate", json_real((double)fallback / (double)n_ergo));
        } else {
            json_decref(dar);
        }
        json_array_append_new(groups, gj);
        const json_t *j1 = json_object_get(json_object_get(gj, "time_ms"), "stage1"),
                     *j2 = json_object_get(json_object_get(gj, "time_ms"), "stage2");
        char boxs[64] = "-", nbs[32] = "-", fbs[32] = "-";
        if (n_ergo) {
            snprintf(boxs, sizeof boxs, "%.3f", n_box ? ba / (double)n_box : 0.0);
            snprintf(nbs, sizeof nbs, "%.1f%%", 100.0 * (double)no_box / (double)n_ergo);
            snprintf(fbs, sizeof fbs, "%.1f%%", 100.0 * (double)fallback / (double)n_ergo);
        }
        strbuf_add(&md, &ml, &mc,
                   "| %s | %d | %zu | %lld | %.2f%% | %.1f-%.1f%% | %.0f / %.0f / %.0f | %.0f | %.1f | "
                   "%.0f / %.0f | %.0f / %.0f | %s | %s | %s |\n",
                   x->mode, x->budget, m, (long long)n_fail, 100 * x->acc, 100 * x->lo, 100 * x->hi,
                   vis[0] / dn, vis[1] / dn, vis[2] / dn, prompt / dn, gen / dn,
                   json_number_value(json_object_get(j1, "p50")), json_number_value(json_object_get(j1, "p90")),
                   json_number_value(json_object_get(j2, "p50")), json_number_value(json_object_get(j2, "p90")),
                   boxs, nbs, fbs);
        char *rep = score_report(&t, refd);
        strbuf_add(&reports, &rl, &rc, "\n## %s, budget %d\n\n```%s\n```\n", x->mode, x->budget,
                   rep ? rep : "");
        free(rep);
        free(t1), free(t2), free(tt), free(ar);
    }
    if (reports) strbuf_add(&md, &ml, &mc, "%s", reports);
    free(reports);

    /* paired: every other mode against ERGO at the same budget, on samples both scored */
    json_t *paired = json_array();
    int header = 0;
    for (int k = 0; k < ng; k++) {
        if (!strcmp(g[k].mode, "ergo")) continue;
        const group *e = NULL;
        for (int j = 0; j < ng; j++)
            if (!strcmp(g[j].mode, "ergo") && g[j].budget == g[k].budget) e = &g[j];
        if (!e) continue;
        json_t *byk = json_object();
        size_t i;
        json_t *r;
        json_array_foreach(e->recs, i, r) json_object_set(byk, str(r, "key"), r);
        int64_t both = 0, eo = 0, oo = 0, neither = 0, vis_e = 0, vis_o = 0;
        json_array_foreach(g[k].recs, i, r) {
            const json_t *er = json_object_get(byk, str(r, "key"));
            if (!er || strcmp(str(r, "status"), "ok") || strcmp(str(er, "status"), "ok")) continue;
            int a = json_is_true(json_object_get(er, "correct")), b = json_is_true(json_object_get(r, "correct"));
            both += a && b, eo += a && !b, oo += !a && b, neither += !a && !b;
            const json_t *ve = json_object_get(er, "vision_tokens"), *vo = json_object_get(r, "vision_tokens");
            vis_e += (int64_t)(num(ve, 0) + num(ve, 1)), vis_o += (int64_t)(num(vo, 0) + num(vo, 1));
        }
        json_decref(byk);
        int64_t np = both + eo + oo + neither;
        double d = np ? (double)(eo - oo) / (double)np : 0, p = mcnemar(eo, oo);
        json_array_append_new(paired, json_pack("{s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f}",
                                                "other", g[k].mode, "budget", g[k].budget, "pairs",
                                                (json_int_t)np, "both_correct", (json_int_t)both,
                                                "ergo_only", (json_int_t)eo, "other_only", (json_int_t)oo,
                                                "neither", (json_int_t)neither, "accuracy_delta", d,
                                                "mcnemar_p", p, "vision_token_ratio",
                                                vis_o ? (double)vis_e / (double)vis_o : 0.0));
        if (!header++)
            strbuf_add(&md, &ml, &mc,
                       "\n## Paired with ERGO (same samples, both scored)\n\n| other | budget | pairs | "
                       "both | ERGO only | other only | neither | ERGO - other | McNemar p | vision "
                       "tokens ERGO / other |\n|---|---|---|---|---|---|---|---|---|---|\n");
        strbuf_add(&md, &ml, &mc, "| %s | %d | %lld | %lld | %lld | %lld | %lld | %+.2f%% | %.3g | %.3f |\n",
                   g[k].mode, g[k].budget, (long long)np, (long long)both, (long long)eo, (long long)oo,
                   (long long)neither, 100 * d, p, vis_o ? (double)vis_e / (double)vis_o : 0.0);
    }
    json_object_set_new(root, "bench", json_string(bench_name(kind)));
    json_object_set_new(root, "records", json_integer((json_int_t)n));
    json_object_set_new(root, "reference_denominator", json_boolean(refd));
    json_object_set_new(root, "groups", groups);
    json_object_set_new(root, "paired", paired);

    char *txt = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(10));
    if (!txt || !md) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory (summary)");
    if (!s) s = path_join(path, sizeof path, dir, "summary.json", err);
    if (!s) s = file_write_all(path, txt, strlen(txt), err);
    if (!s) s = path_join(path, sizeof path, dir, "summary.md", err);
    if (!s) s = file_write_all(path, md, ml, err);
    if (!s) s = plot_accuracy(dir, g, ng, err);
    if (!s) s = plot_areas(dir, areas, n_areas, err);
    free(txt);
    if (md_out && !s) *md_out = md;
    else free(md);
    for (int k = 0; k < ng; k++) json_decref(g[k].recs);
    json_decref(root);
    free(v), free(g), free(areas);
    json_decref(recs);
    return s;
}

ergo_status eval_merge(const char *out_dir, const char *const *shard_dirs, int n_shards,
                       const eval_config *c, ergo_error *err) {
    json_t *all = json_object();
    ergo_status s = ERGO_OK;
    char path[4096];
    for (int i = 0; i < n_shards && !s; i++) {
        json_t *recs = NULL;
        if (!(s = path_join(path, sizeof path, shard_dirs[i], "results.jsonl", err)) && !file_exists(path))
            s = ergo_fail(err, ERGO_E_IO, "%s: no results.jsonl (not an eval output)", shard_dirs[i]);
        if (!s) s = eval_load_results(path, &recs, NULL, err);
        size_t j;
        json_t *r;
        if (!s) json_array_foreach(recs, j, r) json_object_set(all, str(r, "id"), r);
        json_decref(recs);
    }
    eval_config mc = *c;
    mc.out_dir = out_dir;
    mc.resume = 1;
    json_t *done = NULL;
    int fd = -1;
    if (!s) {
        /* out_dir's own results are replaced by the union */
        if (!(s = path_join(path, sizeof path, out_dir, "results.jsonl", err))) unlink(path);
    }
    if (!s) s = eval_open_results(&mc, path, sizeof path, &done, &fd, err);
    if (!s) {
        size_t n = json_object_size(all), k = 0;
        json_t **v = malloc((n ? n : 1) * sizeof *v);
        const char *key;
        json_t *r;
        if (!v) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory (merge)");
        else {
            json_object_foreach(all, key, r) v[k++] = r;
            qsort(v, n, sizeof *v, cmp_rec);
            for (k = 0; k < n && !s; k++) s = eval_append(fd, v[k], path, err);
            free(v);
        }
        close(fd);
        json_decref(done);
    }
    json_decref(all);
    if (!s) s = eval_summarize(out_dir, c, NULL, err);
    return s;
}
