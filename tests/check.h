/*
 * check.h - the assertions of ergo's test suite.
 *
 * Each CHECK counts one passed or failed assertion; failures print file:line
 * and the numbers that failed. tests/runner.c prints the totals; its last line
 * is exactly "N passed, N failed" and it exits non-zero when anything failed.
 */
#ifndef ERGO_CHECK_H
#define ERGO_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

extern long check_passed, check_failed, check_skipped;
extern const char *check_suite;

void check_report_failure(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define CHECK(cond, ...)                                             \
    do {                                                             \
        if (cond) {                                                  \
            check_passed++;                                          \
        } else {                                                     \
            check_failed++;                                          \
            check_report_failure(__FILE__, __LINE__, __VA_ARGS__);   \
        }                                                            \
    } while (0)

#define CHECK_EQ_INT(got, want, label)                                                      \
    do {                                                                                    \
        long long g_ = (long long)(got), w_ = (long long)(want);                            \
        CHECK(g_ == w_, "%s: got %lld, want %lld", (label), g_, w_);                        \
    } while (0)

#define CHECK_EQ_STR(got, want, label)                                                      \
    do {                                                                                    \
        const char *g_ = (got), *w_ = (want);                                               \
        CHECK(g_ && w_ && strcmp(g_, w_) == 0, "%s: got \"%s\", want \"%s\"", (label),      \
              g_ ? g_ : "(null)", w_ ? w_ : "(null)");                                      \
    } while (0)

/* Says that one test could not run and why; counted and printed, never silent. */
#define SKIP(...)                                   \
    do {                                            \
        check_skipped++;                            \
        printf("  skip [%s] ", check_suite);        \
        printf(__VA_ARGS__);                        \
        printf("\n");                               \
    } while (0)

/* 1 in the full tier (CI, `make check`), 0 in the fast one (`make test`'s default;
 * tests/runner.c: --tier, ERGO_TEST_TIER). A slow case that the fast tier leaves
 * out says so, e.g.
 *   if (!test_tier_full()) { SKIP("7B-width accuracy: full tier"); return; }
 * and the fast tier keeps a reduced variant of it where one exists. */
int test_tier_full(void);

/* Compares n floats: passes when every |got-want| <= atol + rtol*|want| and
 * neither side holds NaN/Inf where the other does not. On failure it reports
 * the max abs error, max rel error, first bad index and its values. */
int check_close_f32(const float *got, const float *want, size_t n, double atol, double rtol,
                    const char *label, const char *file, int line);
#define CHECK_CLOSE(got, want, n, atol, rtol, label) \
    check_close_f32((got), (want), (n), (atol), (rtol), (label), __FILE__, __LINE__)

/* Compares n int32 values exactly; reports the first mismatch and its context. */
int check_eq_i32(const int32_t *got, const int32_t *want, size_t n_got, size_t n_want,
                 const char *label, const char *file, int line);
#define CHECK_EQ_I32(got, n_got, want, n_want, label) \
    check_eq_i32((got), (want), (n_got), (n_want), (label), __FILE__, __LINE__)

/* The directory holding tests/fixtures (ERGO_FIXTURES overrides; default
 * "tests/fixtures", relative to the repository root where `make test` runs). */
const char *fixtures_dir(void);

/* Calls fn(ctx, file name, bytes, size) for every file of tests/fuzz_corpus/<target>
 * (the seeds and any crash inputs saved there), so every normal run replays them
 * through the fuzz entry point. Returns the number of files, or -1 (after a failed
 * CHECK) when the folder or a file cannot be read. */
typedef void (*corpus_fn)(void *ctx, const char *name, const uint8_t *data, size_t size);
int for_each_corpus_file(const char *target, corpus_fn fn, void *ctx);

/* A fresh scratch directory for this process (removed by the runner at exit). */
const char *scratch_dir(void);

#endif
