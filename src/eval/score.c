/*
 * score.c - the reference's answer extraction, letter rule and report (score.h).
 */
#include "score.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/ergo.h"

char *score_extract(const char *response) {
    /* extract_answer_text(r2) or r2: None and "" both fall back to the whole response */
    char *a = ergo_extract_answer(response);
    if (a && a[0] == '\0') {
        free(a);
        a = strdup(response);
    }
    return a;
}

char *score_letters(const char *s) {
    size_t n = 0;
    for (const char *p = s; *p; p++)
        n += (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z');
    char *out = malloc(n + 1);
    if (!out) return NULL;
    char *o = out;
    for (const char *p = s; *p; p++)
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) *o++ = *p;
    *o = '\0';
    return out;
}

static char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c; }

int score_response(const char *response, const char *label, char **pred) {
    if (pred) *pred = NULL;
    char *raw = score_extract(response);
    if (!raw) return -1;
    char *letters = score_letters(raw);
    free(raw);
    if (!letters) return -1;
    /* gt.lower() == pred.lower(); pred is ASCII, so a label with other characters can
     * never match (Python's str.lower would map U+212A KELVIN SIGN to 'k'; no label has
     * one). */
    size_t nl = strlen(label), np = strlen(letters);
    int ok = nl == np;
    for (size_t i = 0; ok && i < nl; i++) ok = ascii_lower(label[i]) == ascii_lower(letters[i]);
    if (pred) *pred = letters;
    else free(letters);
    return ok;
}

static void row_init(score_count *c, const char *name) {
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
}

void score_table_init(score_table *t, bench_kind kind) {
    memset(t, 0, sizeof *t);
    t->kind = kind;
    int n;
    const char *const *cats = bench_categories(kind, &n);
    for (int i = 0; i < n && i < SCORE_MAX_ROWS; i++) row_init(&t->rows[t->n_rows++], cats[i]);
    if (kind == BENCH_HRBENCH) {
        static const char *const ex[] = {"4k/FSP", "4k/FCP", "8k/FSP", "8k/FCP", "FSP", "FCP"};
        for (int i = 0; i < 6; i++) row_init(&t->extra[t->n_extra++], ex[i]);
    }
    row_init(&t->total, "TOTAL");
}

static void bump(score_count *c, score_outcome o) {
    if (o == SCORE_CORRECT) c->correct++;
    else if (o == SCORE_FAILED) c->failed++;
    else c->wrong++;
}

static score_count *find(score_count *rows, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(rows[i].name, name) == 0) return &rows[i];
    return NULL;
}

void score_add(score_table *t, const char *category, const char *subcategory, score_outcome o) {
    score_count *r = category ? find(t->rows, t->n_rows, category) : NULL;
    if (!r) {
        t->ignored++; /* exact string equality with a test_type, as the reference */
        return;
    }
    bump(r, o);
    bump(&t->total, o);
    if (subcategory && t->n_extra) {
        char name[160];
        snprintf(name, sizeof name, "%s/%s", category, subcategory);
        score_count *e = find(t->extra, t->n_extra, name);
        if (e) bump(e, o);
        if ((e = find(t->extra, t->n_extra, subcategory))) bump(e, o);
    }
}

double score_accuracy(const score_count *c, int reference_denominator, int64_t *count) {
    int64_t n = c->correct + c->wrong + (reference_denominator ? 0 : c->failed);
    if (count) *count = n;
    return n ? (double)c->correct / (double)n : 0.0;
}

void score_wilson95(int64_t k, int64_t n, double *lo, double *hi) {
    if (n <= 0) {
        *lo = *hi = 0.0;
        return;
    }
    const double z = 1.959963984540054;
    double p = (double)k / (double)n, nn = (double)n, z2 = z * z;
    double den = 1.0 + z2 / nn;
    double mid = (p + z2 / (2.0 * nn)) / den;
    double half = z * sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)) / den;
    *lo = mid - half < 0.0 ? 0.0 : mid - half;
    *hi = mid + half > 1.0 ? 1.0 : mid + half;
}

typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + (size_t)n + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) { b->oom = 1; return; }
        b->s = s;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void ref_line(sbuf *b, const score_count *c) {
    int64_t n;
    double acc = score_accuracy(c, 1, &n);
    /* f"{test_type:>20}: {acc*100:.2f}% ({correct}/{count})" */
    sb_printf(b, "%20s: %.2f%% (%lld/%lld)\n", c->name, acc * 100.0, (long long)c->correct, (long long)n);
}

static void ergo_line(sbuf *b, const score_count *c, int refden) {
    int64_t n;
    double acc = score_accuracy(c, refden, &n), lo, hi;
    score_wilson95(c->correct, n, &lo, &hi);
    sb_printf(b, "%20s: %6.2f%% [%6.2f, %6.2f] (%lld/%lld, %lld failed)\n", c->name, acc * 100.0, lo * 100.0,
              hi * 100.0, (long long)c->correct, (long long)n, (long long)c->failed);
}

char *score_report(const score_table *t, int reference_denominator) {
    sbuf b = {0};
    sb_printf(&b, "\n===== Accuracy Report =====\n");
    for (int i = 0; i < t->n_rows; i++) ref_line(&b, &t->rows[i]);
    sb_printf(&b, "----------------------------------\n");
    ref_line(&b, &t->total);
    sb_printf(&b, "\n95%% Wilson intervals, failed samples %s:\n",
              reference_denominator ? "left out (the reference's denominator)" : "scored wrong");
    for (int i = 0; i < t->n_rows; i++) ergo_line(&b, &t->rows[i], reference_denominator);
    for (int i = 0; i < t->n_extra; i++) ergo_line(&b, &t->extra[i], reference_denominator);
    ergo_line(&b, &t->total, reference_denominator);
    sb_printf(&b, "%20s: %lld (categories outside the report, skipped as the reference does)\n", "ignored",
              (long long)t->ignored);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
