/*
 * cmd_bench.c - `ergo bench inputs`: how long the input side takes (and the entry
 * of `ergo bench model`, cmd_bench_model.c).
 *
 * Tokenizer load, encode and decode throughput over a text file, and the demo
 * photo's decode, ERGO stage-1 resize and processor time. Each figure is the
 * median of --reps runs, with the fastest and slowest beside it. Timings live
 * here and in BENCHMARKS.md, never in pass/fail tests.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "base/clock.h"
#include "base/file.h"
#include "base/half.h"
#include "cli.h"
#include "commands.h"
#include "base/rng.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "kernels/backward.h"
#include "kernels/kernels.h"
#include "kernels/probe.h"
#include "tokenizer/tokenizer.h"

#define BENCH_MAX_REPS 100

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct timing {
    double median, min, max; /* ms */
} timing;

static timing summarize(double *ms, int n) {
    qsort(ms, (size_t)n, sizeof *ms, cmp_double);
    timing t = {ms[n / 2], ms[0], ms[n - 1]};
    if (n % 2 == 0) t.median = 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
    return t;
}

static void print_timing(const char *what, timing t, double mb) {
    if (mb > 0)
        printf("%-34s %9.2f ms  (min %.2f, max %.2f)  %8.2f MB/s\n", what, t.median, t.min, t.max,
               mb / (t.median / 1e3));
    else
        printf("%-34s %9.2f ms  (min %.2f, max %.2f)\n", what, t.median, t.min, t.max);
}

static int fail(ergo_error *err) {
    fprintf(stderr, "ergo bench: %s\n", err->msg);
    return 1;
}

static int bench_tokenizer(const char *model_dir, const char *text_path, int reps) {
    ergo_error err = {0};
    double ms[BENCH_MAX_REPS];
    tokenizer *tok = NULL;
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        if (tokenizer_load(&tok, model_dir, &err) != ERGO_OK) return fail(&err);
        ms[r] = now_ms() - t0;
        if (r + 1 < reps) tokenizer_free(tok);
    }
    print_timing("tokenizer load", summarize(ms, reps), 0);
    if (!text_path) {
        tokenizer_free(tok);
        return 0;
    }
    char *text;
    size_t len;
    if (file_read_all(text_path, (size_t)1 << 30, &text, &len, &err) != ERGO_OK) {
        tokenizer_free(tok);
        return fail(&err);
    }
    double mb = (double)len / 1e6;
    tok_ids ids = {0};
    tok_text out = {0};
    int status = 0;
    for (int r = 0; r < reps && !status; r++) {
        ids.n = 0;
        double t0 = now_ms();
        if (tokenizer_encode(tok, text, len, &ids, &err) != ERGO_OK) status = fail(&err);
        ms[r] = now_ms() - t0;
    }
    if (!status) {
        printf("text: %s, %.2f MB, %zu tokens (%.2f bytes per token)\n", text_path, mb, ids.n,
               (double)len / (double)(ids.n ? ids.n : 1));
        print_timing("tokenizer encode", summarize(ms, reps), mb);
    }
    for (int r = 0; r < reps && !status; r++) {
        out.n = 0;
        double t0 = now_ms();
        if (tokenizer_decode(tok, ids.v, ids.n, 0, &out, &err) != ERGO_OK) status = fail(&err);
        ms[r] = now_ms() - t0;
    }
    if (!status) print_timing("tokenizer decode", summarize(ms, reps), mb);
    tok_ids_free(&ids);
    tok_text_free(&out);
    free(text);
    tokenizer_free(tok);
    return status;
}

static int bench_image(const char *model_dir, const char *image_path, int reps) {
    ergo_error err = {0};
    char cfg_path[4096];
    preprocess_config cfg;
    if (path_join(cfg_path, sizeof cfg_path, model_dir, "preprocessor_config.json", &err) !=
            ERGO_OK ||
        preprocess_config_load(&cfg, cfg_path, &err) != ERGO_OK)
        return fail(&err);
    double dec[BENCH_MAX_REPS], rs[BENCH_MAX_REPS], pp[BENCH_MAX_REPS], full[BENCH_MAX_REPS];
    image im = {0}, small = {0};
    int h1 = 0, w1 = 0;
    const int64_t ergo_max_pixels = 1280 * 28 * 28, ergo_min_pixels = 4 * 28 * 28;
    for (int r = 0; r < reps; r++) {
        image_free(&im);
        image_free(&small);
        double t0 = now_ms();
        if (image_decode_file(&im, image_path, NULL, &err) != ERGO_OK) return fail(&err);
        double t1 = now_ms();
        if (smart_resize_ergo(im.height, im.width, 28, ergo_min_pixels, ergo_max_pixels, &h1, &w1,
                              &err) != ERGO_OK ||
            image_resize(&small, &im, w1, h1, IMAGE_FILTER_BICUBIC, &err) != ERGO_OK) {
            image_free(&im);
            return fail(&err);
        }
        double t2 = now_ms();
        preprocess_output po = {0};
        if (preprocess_image(&cfg, &small, &po, &err) != ERGO_OK) {
            image_free(&im);
            image_free(&small);
            return fail(&err);
        }
        double t3 = now_ms();
        preprocess_output_free(&po);
        double t4 = now_ms();
        if (preprocess_image(&cfg, &im, &po, &err) != ERGO_OK) {
            image_free(&im);
            image_free(&small);
            return fail(&err);
        }
        double t5 = now_ms();
        preprocess_output_free(&po);
        dec[r] = t1 - t0, rs[r] = t2 - t1, pp[r] = t3 - t2, full[r] = t5 - t4;
    }
    printf("image: %s, %dx%d; ERGO stage 1 at %d vision tokens: %dx%d\n", image_path, im.width,
           im.height, (int)(ergo_max_pixels / (28 * 28)), w1, h1);
    print_timing("image decode", summarize(dec, reps), 0);
    print_timing("ERGO stage-1 resize (BICUBIC)", summarize(rs, reps), 0);
    print_timing("processor on the stage-1 image", summarize(pp, reps), 0);
    print_timing("processor on the original", summarize(full, reps), 0);
    image_free(&im);
    image_free(&small);
    return 0;
}

/* ---- `ergo bench backward`: a linear layer's backward products (training) ----
 *
 * For each (m, k) weight shape and n rows: the forward y = x W^T (matmul_wt), the
 * input gradient dx = dy W (linear_backward_input) with W f32 and bf16, and the
 * weight gradient dW += dy^T x (linear_backward_weight), each 2 n m k FLOPs; the
 * best of --reps runs, as GFLOP/s and as a share of the f32 FMA peak the probe
 * measures with the same threads. Random data (timings do not depend on it). */

static void fill_random(float *x, size_t n, uint64_t seed) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(seed, i);
}

/* CPU time of the whole process (all threads), ms: on a shared machine the rate per
 * busy core (FLOPs / CPU seconds) is steadier than wall time. */
static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The core clock, GHz, from a chain of dependent adds (one cycle each) timed in CPU
 * time. */
static double clock_ghz(void) {
    uint64_t v = 0;
    const long iters = 25 * 1000 * 1000;
    double t0 = cpu_ms();
    for (long i = 0; i < iters; i++)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                         "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                         : "+r"(v));
    double ms = cpu_ms() - t0;
    return ms > 0 ? 8.0 * (double)iters / (ms * 1e6) : 0.0;
}

static double best_ms(const double *ms, int n) {
    double b = ms[0];
    for (int i = 1; i < n; i++) b = ms[i] < b ? ms[i] : b;
    return b;
}

/* ms: best wall time; cpu: the CPU ms of that run; core_peak: GFLOP/s of one core. */
static void print_gflops(const char *what, int n, int m, int k, double ms, double cpu,
                         double peak, double core_peak) {
    double flop = 2.0 * n * m * (double)k, gf = flop / (ms * 1e6), gc = flop / (cpu * 1e6);
    printf("  %-22s %8.1f ms %7.1f GFLOP/s", what, ms, gf);
    if (peak > 0) printf(" (%5.1f%% of probed peak)", 100.0 * gf / peak);
    printf("; per busy core %6.1f GFLOP/s = %5.1f%% of %.1f\n", gc, 100.0 * gc / core_peak,
           core_peak);
}

static void usage_backward(FILE *f) {
    fprintf(f, "usage: ergo bench backward [--rows N] [--shape MxK] [--reps N] [--threads N]\n"
               "  Times a linear layer's forward and backward products (linear_backward_input\n"
               "  with W f32 and bf16, linear_backward_weight) on N rows (default 512) for the\n"
               "  7B shapes (3584x3584, 18944x3584, 3584x18944) or one MxK; the best of N\n"
               "  runs (default 2), in GFLOP/s and against the probed f32 FMA peak.\n");
}

static int bench_backward(int argc, char **argv) {
    long long rows = 512, reps = 2, threads = 0;
    const char *shape = NULL;
    const cli_opt opts[] = {
        {"rows", 'n', CLI_INT, &rows, NULL, 1, 1 << 16, 0, 0, NULL},
        {"shape", 0, CLI_STR, &shape, NULL, 0, 0, 0, 0, NULL},
        {"reps", 'r', CLI_INT, &reps, NULL, 1, BENCH_MAX_REPS, 0, 0, NULL},
        {"threads", 't', CLI_INT, &threads, NULL, 1, 1024, 0, 0, NULL},
    };
    int rc = cli_parse("bench backward", opts, 4, argc, argv);
    if (rc == CLI_HELP) {
        usage_backward(stdout);
        return 0;
    }
    if (rc) return rc;
    int shapes[3][2] = {{3584, 3584}, {18944, 3584}, {3584, 18944}}, n_shapes = 3;
    if (shape) {
        char *end;
        long a = strtol(shape, &end, 10), b = *end == 'x' ? strtol(end + 1, &end, 10) : 0;
        if (*end || a < 1 || b < 1 || a > 65536 || b > 65536) {
            fprintf(stderr, "ergo bench backward: --shape %s: expected MxK (e.g. 3584x18944)\n", shape);
            return 2;
        }
        shapes[0][0] = (int)a, shapes[0][1] = (int)b, n_shapes = 1;
    }
    ergo_error err = {0};
    if (kernels_init(NULL, &err) != ERGO_OK) return fail(&err);
    if (threads) omp_set_num_threads((int)threads);
    const int nt = omp_get_max_threads(), n = (int)rows;
    probe_limits lim = {0};
    probe_run(&lim, nt, 0.3);
    const double peak = lim.fma_avx512_gflops > 0 ? lim.fma_avx512_gflops : lim.fma_avx2_gflops;
    const double ghz = clock_ghz(), core_peak = 32.0 * ghz; /* 2 FMA ports x 8 lanes x 2 */
    printf("threads %d, isa %s, compute %s, rows %d; probed f32 FMA peak %.1f GFLOP/s, bf16 dot "
           "%.1f; clock %.2f GHz (CPU time), per-core AVX2 FMA peak %.1f GFLOP/s\n",
           nt, cpu_isa_name(kern.isa), compute_mode_name(kern.compute), n, peak,
           lim.bf16_dot_gflops, ghz, core_peak);
    for (int s = 0; s < n_shapes; s++) {
        const int m = shapes[s][0], k = shapes[s][1];
        const size_t nw = (size_t)m * k;
        float *w = malloc(nw * sizeof *w), *dw = calloc(nw, sizeof *dw);
        uint16_t *w16 = malloc(nw * sizeof *w16);
        float *x = malloc((size_t)n * k * sizeof *x), *dx = malloc((size_t)n * k * sizeof *dx);
        float *dy = malloc((size_t)n * m * sizeof *dy), *y = malloc((size_t)n * m * sizeof *y);
        if (!w || !dw || !w16 || !x || !dx || !dy || !y) {
            fprintf(stderr, "ergo bench backward: out of memory for the %dx%d shape\n", m, k);
            free(w), free(dw), free(w16), free(x), free(dx), free(dy), free(y);
            return 1;
        }
        fill_random(w, nw, 1);
        fill_random(x, (size_t)n * k, 2);
        fill_random(dy, (size_t)n * m, 3);
        /* touch the outputs once, so no run pays their page faults */
        memset(dw, 0, nw * sizeof *dw);
        memset(dx, 0, (size_t)n * k * sizeof *dx);
        memset(y, 0, (size_t)n * m * sizeof *y);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < nw; i++) w16[i] = f32_to_bf16_one(w[i]);
        printf("W (%d, %d), x (%d, %d):\n", m, k, n, k);
        double ms[BENCH_MAX_REPS], cpu[BENCH_MAX_REPS];
        for (int wt = 0; wt < 2; wt++) {
            const kweight W = {wt ? KDT_BF16 : KDT_F32, wt ? (const void *)w16 : w, m, k, NULL};
            char what[64];
            for (int r = 0; r < reps; r++) {
                double t0 = now_ms(), c0 = cpu_ms();
                matmul_wt(y, x, W.data, W.dt, NULL, KDT_F32, n, k, m);
                ms[r] = now_ms() - t0, cpu[r] = cpu_ms() - c0;
            }
            /* --compute bf16 runs a bf16 weight's forward on the bf16 dot products */
            const int on_bf16 = wt && kern.compute == COMPUTE_BF16 && n >= MATMUL_BLOCKED_MIN_N;
            snprintf(what, sizeof what, "forward (%s W%s)", wt ? "bf16" : "f32",
                     on_bf16 ? ", bf16 dot" : "");
            print_gflops(what, n, m, k, best_ms(ms, (int)reps), best_ms(cpu, (int)reps),
                         on_bf16 ? lim.bf16_dot_gflops : peak, on_bf16 ? 2 * core_peak : core_peak);
            for (int r = 0; r < reps; r++) {
                double t0 = now_ms(), c0 = cpu_ms();
                linear_backward_input(dx, dy, &W, n, 0);
                ms[r] = now_ms() - t0, cpu[r] = cpu_ms() - c0;
            }
            snprintf(what, sizeof what, "backward dx (%s W)", wt ? "bf16" : "f32");
            print_gflops(what, n, m, k, best_ms(ms, (int)reps), best_ms(cpu, (int)reps), peak,
                         core_peak);
        }
        for (int r = 0; r < reps; r++) {
            double t0 = now_ms(), c0 = cpu_ms();
            linear_backward_weight(dw, NULL, dy, x, n, m, k);
            ms[r] = now_ms() - t0, cpu[r] = cpu_ms() - c0;
        }
        print_gflops("backward dW", n, m, k, best_ms(ms, (int)reps), best_ms(cpu, (int)reps), peak,
                     core_peak);
        free(w), free(dw), free(w16), free(x), free(dx), free(dy), free(y);
    }
    return 0;
}

/* `ergo bench model ...` (or `ergo bench --random 7b ...`): cmd_bench_model.c */
int bench_model_main(int argc, char **argv);
/* `ergo bench train ...`: cmd_bench_train.c */
int cmd_bench_train(int argc, char **argv);

static void usage(FILE *f) {
    fprintf(f,
            "usage: ergo bench model (-m DIR | --random 7b|3b) [options]  (see ergo help bench model)\n"
            "       ergo bench train [--preset tiny-a|tiny-b|7b] [options]  (see ergo bench train --help)\n"
            "       ergo bench inputs --model DIR [--text FILE] [--image FILE] [--reps N]\n"
            "       ergo bench backward [--rows N] [--shape MxK] [--reps N] [--threads N]\n"
            "  Times the input side: tokenizer load/encode/decode over FILE's text, and\n"
            "  an image's decode, ERGO stage-1 resize and processor (DIR needs\n"
            "  tokenizer.json and preprocessor_config.json). Medians of N runs (default 5).\n");
}

int cmd_bench(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *image_path = NULL;
    int reps = 5;
    if (argc >= 2 && !strcmp(argv[1], "model")) return bench_model_main(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "backward")) return bench_backward(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "train")) return cmd_bench_train(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--random") || !strcmp(argv[1], "--model")))
        return bench_model_main(argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "inputs") != 0) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            usage(stdout);
            return 0;
        }
        usage(stderr);
        return 2;
    }
    long long n_reps = reps;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model, NULL, 0, 0, 0, 0, NULL},
        {"text", 0, CLI_STR, &text, NULL, 0, 0, 0, 0, NULL},
        {"image", 'i', CLI_STR, &image_path, NULL, 0, 0, 0, 0, NULL},
        {"reps", 'r', CLI_INT, &n_reps, NULL, 1, BENCH_MAX_REPS, 0, 0, NULL},
    };
    int rc = cli_parse("bench inputs", opts, 4, argc - 1, argv + 1);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    reps = (int)n_reps;
    if (!model) {
        fprintf(stderr, "ergo bench: --model DIR is required\n");
        return 2;
    }
    int status = bench_tokenizer(model, text, reps);
    if (!status && image_path) status = bench_image(model, image_path, reps);
    return status;
}
