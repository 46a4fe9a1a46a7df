/*
 * cmd_make_checkpoint.c - `ergo make-checkpoint`: write a random checkpoint
 * directory from a case description (src/io/random_checkpoint.h), for tests,
 * parity fixtures and benchmarks. Weights are never committed; this regenerates
 * them from the seed, bit for bit what tools/fixtures_checkpoint.py writes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"
#include "io/random_checkpoint.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo make-checkpoint --case CASE.json --out DIR [--tokenizer DIR]\n"
            "       ergo make-checkpoint --preset 7b [--text-layers N] [--vision-depth N]\n"
            "                            [--seed S] --out DIR [--tokenizer DIR]\n"
            "\n"
            "Writes config.json, generation_config.json and safetensors weights generated from\n"
            "the seed of a case description (tests/fixtures/checkpoints/cases/*.json), or for\n"
            "the real 7B widths with the given depths (default 28 text layers, 32 vision\n"
            "blocks; BF16, flat config, legacy names). --tokenizer copies tokenizer files.\n");
}

static int parse_int(const char *s, long *out) {
    char *end;
    *out = strtol(s, &end, 10);
    return *s && !*end;
}

int cmd_make_checkpoint(int argc, char **argv) {
    const char *case_path = NULL, *preset = NULL, *out = NULL, *tok = NULL;
    long text_layers = 28, vision_depth = 32, seed = 7;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--case") && has) case_path = argv[++i];
        else if (!strcmp(a, "--preset") && has) preset = argv[++i];
        else if (!strcmp(a, "--out") && has) out = argv[++i];
        else if (!strcmp(a, "--tokenizer") && has) tok = argv[++i];
        else if (!strcmp(a, "--text-layers") && has && parse_int(argv[i + 1], &text_layers)) i++;
        else if (!strcmp(a, "--vision-depth") && has && parse_int(argv[i + 1], &vision_depth)) i++;
        else if (!strcmp(a, "--seed") && has && parse_int(argv[i + 1], &seed)) i++;
        else {
            fprintf(stderr, "ergo make-checkpoint: unknown or incomplete option `%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!out || (!case_path == !preset) || (preset && strcmp(preset, "7b") != 0) ||
        text_layers < 1 || vision_depth < 1 || text_layers > 1000 || vision_depth > 1000 ||
        seed < 0) {
        fprintf(stderr, "ergo make-checkpoint: give --out and either --case or --preset 7b "
                        "(with positive depths)\n");
        usage(stderr);
        return 2;
    }
    ergo_error err = {0};
    ckpt_case c;
    ergo_status s = case_path ? ckpt_case_load(&c, case_path, &err)
                              : ckpt_case_7b(&c, (int)text_layers, (int)vision_depth,
                                             (uint64_t)seed, &err);
    if (s) {
        fprintf(stderr, "ergo make-checkpoint: %s\n", err.msg);
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    s = random_checkpoint_write(&c, out, tok, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (s) {
        fprintf(stderr, "ergo make-checkpoint: %s\n", err.msg);
        ckpt_case_free(&c);
        return 1;
    }
    printf("wrote %s (%s) in %.1f s\n", out, c.name,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    ckpt_case_free(&c);
    return 0;
}
