/*
 * runner.c - runs every test suite (or those whose name contains argv[1]).
 *
 * Suites are the functions `void test_<name>(void)` of tests/test_<name>.c; the
 * Makefile lists them into build/suites.h, so adding a file adds a suite.
 * The last line printed is exactly "N passed, N failed"; the exit status is
 * non-zero when anything failed.
 */
#define _XOPEN_SOURCE 700 /* nftw flags */
#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/file.h"
#include "check.h"

long check_passed, check_failed, check_skipped;
const char *check_suite = "";

void check_report_failure(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    printf("  FAIL [%s] %s:%d: ", check_suite, file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

int check_close_f32(const float *got, const float *want, size_t n, double atol, double rtol,
                    const char *label, const char *file, int line) {
    double max_abs = 0, max_rel = 0;
    size_t first_bad = (size_t)-1, n_bad = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        int ok;
        if (isnan(w) || isnan(g)) ok = isnan(w) && isnan(g);
        else if (isinf(w) || isinf(g)) ok = g == w;
        else {
            double d = fabs(g - w);
            if (d > max_abs) max_abs = d;
            if (w != 0 && d / fabs(w) > max_rel) max_rel = d / fabs(w);
            ok = d <= atol + rtol * fabs(w);
        }
        if (!ok) {
            if (first_bad == (size_t)-1) first_bad = i;
            n_bad++;
        }
    }
    if (n_bad == 0) {
        check_passed++;
        return 1;
    }
    check_failed++;
    check_report_failure(file, line,
                         "%s: %zu of %zu values off (atol %g, rtol %g); max abs %.3g, max rel "
                         "%.3g; first bad [%zu]: got %.9g want %.9g",
                         label, n_bad, n, atol, rtol, max_abs, max_rel, first_bad,
                         (double)got[first_bad], (double)want[first_bad]);
    return 0;
}

int check_eq_i32(const int32_t *got, const int32_t *want, size_t n_got, size_t n_want,
                 const char *label, const char *file, int line) {
    size_t n = n_got < n_want ? n_got : n_want;
    size_t i = 0;
    while (i < n && got[i] == want[i]) i++;
    if (i == n && n_got == n_want) {
        check_passed++;
        return 1;
    }
    check_failed++;
    if (i < n)
        check_report_failure(file, line, "%s: first mismatch at [%zu] of %zu/%zu: got %d want %d",
                             label, i, n_got, n_want, (int)got[i], (int)want[i]);
    else
        check_report_failure(file, line, "%s: length %zu, want %zu (equal up to %zu)", label,
                             n_got, n_want, n);
    return 0;
}

const char *fixtures_dir(void) {
    const char *d = getenv("ERGO_FIXTURES");
    return d && *d ? d : "tests/fixtures";
}

int for_each_corpus_file(const char *target, corpus_fn fn, void *ctx) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/../fuzz_corpus/%s", fixtures_dir(), target);
    DIR *d = opendir(dir);
    CHECK(d != NULL, "fuzz corpus %s cannot be opened", dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[2048], *bytes;
        size_t size;
        ergo_error err = {0};
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (file_read_all(path, (size_t)64 << 20, &bytes, &size, &err) != ERGO_OK) {
            CHECK(0, "fuzz corpus: %s", err.msg);
            n = -1;
            break;
        }
        fn(ctx, e->d_name, (const uint8_t *)bytes, size);
        free(bytes);
        n++;
    }
    closedir(d);
    return n;
}

static char scratch_path[256];

const char *scratch_dir(void) {
    if (!scratch_path[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(scratch_path, sizeof scratch_path, "%s/ergo-test-XXXXXX",
                 tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(scratch_path)) {
            perror("mkdtemp");
            abort();
        }
    }
    return scratch_path;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

#define SUITE(name) void test_##name(void);
#include "suites.h"
#undef SUITE

typedef struct suite {
    const char *name;
    void (*run)(void);
} suite;

static const suite suites[] = {
#define SUITE(name) {#name, test_##name},
#include "suites.h"
#undef SUITE
};

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        if (filter && !strstr(suites[i].name, filter)) continue;
        long p0 = check_passed, f0 = check_failed;
        check_suite = suites[i].name;
        suites[i].run();
        printf("%-16s %ld passed, %ld failed\n", suites[i].name, check_passed - p0,
               check_failed - f0);
    }
    if (scratch_path[0]) nftw(scratch_path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (check_skipped) printf("%ld skipped\n", check_skipped);
    printf("%ld passed, %ld failed\n", check_passed, check_failed);
    return check_failed != 0;
}
