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

#include "base/clock.h"
#include "base/file.h"
#include "cli.h"
#include "commands.h"
#include "image/image.h"
#include "image/preprocess.h"
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

/* `ergo bench model ...` (or `ergo bench --random 7b ...`): cmd_bench_model.c */
int bench_model_main(int argc, char **argv);

static void usage(FILE *f) {
    fprintf(f,
            "usage: ergo bench model (-m DIR | --random 7b|3b) [options]  (see ergo help bench model)\n"
            "       ergo bench inputs --model DIR [--text FILE] [--image FILE] [--reps N]\n"
            "  Times the input side: tokenizer load/encode/decode over FILE's text, and\n"
            "  an image's decode, ERGO stage-1 resize and processor (DIR needs\n"
            "  tokenizer.json and preprocessor_config.json). Medians of N runs (default 5).\n");
}

int cmd_bench(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *image_path = NULL;
    int reps = 5;
    if (argc >= 2 && !strcmp(argv[1], "model")) return bench_model_main(argc - 2, argv + 2);
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
