/*
 * runner.c - runs every test suite, or those the arguments name.
 *
 *   ergo_tests [--tier fast|full] [NAME | =NAME | --exact NAME]...
 *
 * NAME selects the suites whose name contains it, =NAME (or --exact NAME) only
 * the suite called exactly NAME; several may be given (a suite runs once). A
 * name that selects no suite is an error (exit status 2, nothing runs).
 * --tier (default: ERGO_TEST_TIER, else full) picks the tier: the fast tier
 * announces its slow cases with SKIP (test_tier_full, check.h).
 *
 * Suites are the functions `void test_<name>(void)` of tests/test_<name>.c; the
 * Makefile lists them into build/suites.h, so adding a file adds a suite.
 * Each suite's line gives its counts and seconds; then the total time, the
 * skipped count when any, and last exactly "N passed, N failed". The exit
 * status is non-zero when anything failed.
 */
#define _XOPEN_SOURCE 700 /* nftw flags */
#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/file.h"
#include "check.h"

long check_passed, check_failed, check_skipped;
const char *check_suite = "";

static int tier_full = 1;

int test_tier_full(void) { return tier_full; }

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

#define N_SUITES (sizeof suites / sizeof suites[0])

static void usage(FILE *f) {
    fprintf(f, "usage: ergo_tests [--tier fast|full] [NAME | =NAME | --exact NAME]...\n"
               "  NAME: the suites whose name contains NAME; =NAME, --exact NAME: the suite NAME\n"
               "  --tier: fast skips (and announces) the slow cases; default ERGO_TEST_TIER, "
               "else full\nsuites:");
    for (size_t i = 0; i < N_SUITES; i++) fprintf(f, " %s", suites[i].name);
    fprintf(f, "\n");
}

static int parse_tier(const char *s, const char *where) {
    if (!strcmp(s, "full")) return 1;
    if (!strcmp(s, "fast")) return 0;
    fprintf(stderr, "ergo_tests: %s \"%s\" is not fast or full\n", where, s);
    return -1;
}

/* Marks in want[] the suites that name selects (by substring or exactly);
 * returns how many. */
static int select_suites(const char *name, int exact, unsigned char *want) {
    int n = 0;
    for (size_t i = 0; i < N_SUITES; i++)
        if (exact ? !strcmp(suites[i].name, name) : strstr(suites[i].name, name) != NULL) {
            want[i] = 1;
            n++;
        }
    return n;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* The parity tests hold the f32 path to the reference's f32 numbers: every test
     * (and every `ergo` it starts) computes in f32 unless it asks for bf16 itself. */
    setenv("ERGO_COMPUTE", "f32", 1);
    unsigned char want[N_SUITES];
    memset(want, 0, sizeof want);
    int any_filter = 0;
    const char *env = getenv("ERGO_TEST_TIER");
    if (env && *env && (tier_full = parse_tier(env, "ERGO_TEST_TIER")) < 0) return 2;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        int exact = 0;
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(arg, "--tier") || !strcmp(arg, "--exact")) {
            if (a + 1 >= argc) {
                fprintf(stderr, "ergo_tests: %s needs a value\n", arg);
                usage(stderr);
                return 2;
            }
            if (!strcmp(arg, "--tier")) {
                if ((tier_full = parse_tier(argv[++a], "--tier")) < 0) return 2;
                continue;
            }
            arg = argv[++a];
            exact = 1;
        } else if (!strncmp(arg, "--tier=", 7)) {
            if ((tier_full = parse_tier(arg + 7, "--tier")) < 0) return 2;
            continue;
        } else if (arg[0] == '=') {
            arg++;
            exact = 1;
        } else if (arg[0] == '-') {
            fprintf(stderr, "ergo_tests: unknown option %s\n", arg);
            usage(stderr);
            return 2;
        }
        any_filter = 1;
        if (!*arg || !select_suites(arg, exact, want)) {
            fprintf(stderr, "ergo_tests: no suite %s \"%s\"\n", exact ? "is named" : "contains",
                    arg);
            usage(stderr);
            return 2;
        }
    }
    printf("tier %s%s\n", tier_full ? "full" : "fast",
           tier_full ? "" : " (slow cases skipped; ERGO_TEST_TIER=full or --tier full runs them)");
    const double t_all = now_ms();
    for (size_t i = 0; i < N_SUITES; i++) {
        if (any_filter && !want[i]) continue;
        long p0 = check_passed, f0 = check_failed, s0 = check_skipped;
        check_suite = suites[i].name;
        const double t0 = now_ms();
        suites[i].run();
        const double sec = (now_ms() - t0) / 1e3;
        if (check_skipped > s0)
            printf("%-16s %ld passed, %ld failed, %ld skipped, %.1f s\n", suites[i].name,
                   check_passed - p0, check_failed - f0, check_skipped - s0, sec);
        else
            printf("%-16s %ld passed, %ld failed, %.1f s\n", suites[i].name, check_passed - p0,
                   check_failed - f0, sec);
    }
    if (scratch_path[0]) nftw(scratch_path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("total %.1f s\n", (now_ms() - t_all) / 1e3);
    if (check_skipped) printf("%ld skipped\n", check_skipped);
    printf("%ld passed, %ld failed\n", check_passed, check_failed);
    return check_failed != 0;
}
