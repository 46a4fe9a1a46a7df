/*
 * score.h - scoring exactly as the reference evaluation (spec eval-server.md 1.6, 1.7).
 *
 *   model_answer_raw = extract_answer_text(r2) or r2     # empty answer -> whole response
 *   pred = "".join(re.findall(r"[a-zA-Z]", model_answer_raw))
 *   correct = gt.lower() == pred.lower()
 *
 * and its report: per category of test_types (samples of other categories are ignored),
 * then TOTAL over those categories. The reference silently drops samples whose request or
 * crop failed; ergo counts them (score_add with SCORE_FAILED) and scores them as wrong
 * unless the reference's denominator is asked for.
 *
 *   score_table t; score_table_init(&t, BENCH_VSTAR);
 *   score_add(&t, s.category, s.subcategory, score_response(r2, s.label, NULL) ? SCORE_CORRECT : SCORE_WRONG);
 *   char *txt = score_report(&t, 0); puts(txt); free(txt);
 */
#ifndef ERGO_EVAL_SCORE_H
#define ERGO_EVAL_SCORE_H

#include <stdint.h>

#include "bench_data.h"

/* model_answer_raw: the <answer> text (pipeline's ergo_extract_answer), or the whole
 * response when that is empty or absent. malloc'd; NULL when out of memory. */
char *score_extract(const char *response);

/* Every ASCII letter of s, in order. malloc'd. */
char *score_letters(const char *s);

/* 1 when the response is correct for label, 0 when not, -1 when out of memory. *pred
 * (if not NULL) receives the letters compared (malloc'd). */
int score_response(const char *response, const char *label, char **pred);

typedef enum score_outcome { SCORE_WRONG = 0, SCORE_CORRECT = 1, SCORE_FAILED = 2 } score_outcome;

typedef struct score_count {
    char name[64];
    int64_t correct, wrong, failed;
} score_count;

#define SCORE_MAX_ROWS 32

typedef struct score_table {
    bench_kind kind;
    score_count rows[SCORE_MAX_ROWS]; /* the reference's test_types, in order */
    int n_rows;
    score_count extra[SCORE_MAX_ROWS]; /* HR-Bench: 4k/FSP, 4k/FCP, 8k/FSP, 8k/FCP, FSP, FCP */
    int n_extra;
    score_count total;     /* over rows */
    int64_t ignored;       /* samples whose category is not a test_type (the reference skips them) */
} score_table;

void score_table_init(score_table *t, bench_kind kind);

/* Counts one sample. subcategory: HR-Bench's FSP/FCP (else NULL). */
void score_add(score_table *t, const char *category, const char *subcategory, score_outcome o);

/* Accuracy of a row: correct / (correct + wrong [+ failed]). reference_denominator = 1
 * leaves failed samples out, as the reference does. 0 when the count is 0. */
double score_accuracy(const score_count *c, int reference_denominator, int64_t *count);

/* The Wilson score interval for k successes of n at 95% (z = 1.959964); [0, 0] for n = 0.
 * Wilson rather than the normal approximation: it stays inside [0, 1] and behaves at
 * accuracies near 0 or 1 and small per-category counts. */
void score_wilson95(int64_t k, int64_t n, double *lo, double *hi);

/* The reference's report, byte for byte ("\n===== Accuracy Report =====", one
 * "%20s: %.2f%% (c/n)" line per test_type, 34 dashes, TOTAL), computed with the
 * reference's denominator; then, after a blank line, ergo's additions: the extra rows,
 * each row's 95% Wilson interval, and failed/ignored counts with failures scored wrong
 * (or left out when reference_denominator). malloc'd. */
char *score_report(const score_table *t, int reference_denominator);

#endif
