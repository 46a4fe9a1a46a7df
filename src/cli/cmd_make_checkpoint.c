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

#include "cli.h"
#include "commands.h"
#include "io/random_checkpoint.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo make-checkpoint --case CASE.json --out DIR [--init] [--tokenizer DIR]\n"
            "       ergo make-checkpoint --preset 7b|3b [--text-layers N] [--vision-layers N]\n"
            "                            [--seed S] [--init] --out DIR [--tokenizer DIR]\n"
            "       ergo make-checkpoint --preset tiny-a|tiny-b [--seed S] --out DIR\n"
            "                            [--tokenizer DIR]\n"
            "\n"
            "Writes config.json, generation_config.json and safetensors weights generated from\n"
            "the seed of a case description (tests/fixtures/checkpoints/cases/*.json), or for\n"
            "the real 7B / 3B widths with the given depths (default 28 text layers, 32 vision\n"
            "blocks; BF16, flat config, legacy names). --tokenizer copies tokenizer files.\n"
            "--vision-depth is an alias of --vision-layers (as `ergo bench model` names it).\n"
            "\n"
            "--init writes a freshly initialised model to train from scratch instead of test\n"
            "weights: the reference's initialisation (normal(0, initializer_range) weights and\n"
            "embeddings, zero biases, unit norms). The tiny-a / tiny-b presets are the small\n"
            "models trained here (text hidden 256 / 384, real vocabulary, F32) and always use it.\n");
}

int cmd_make_checkpoint(int argc, char **argv) {
    const char *case_path = NULL, *preset = NULL, *out = NULL, *tok = NULL;
    long long text_layers = 28, vision_layers = 32, seed = 7;
    int init = 0;
    const cli_opt opts[] = {
        {"case", 0, CLI_STR, &case_path, NULL, 0, 0, 0, 0, NULL},
        {"preset", 0, CLI_STR, &preset, NULL, 0, 0, 0, 0, NULL},
        {"out", 'o', CLI_STR, &out, NULL, 0, 0, 0, 0, NULL},
        {"tokenizer", 0, CLI_STR, &tok, NULL, 0, 0, 0, 0, NULL},
        {"text-layers", 0, CLI_INT, &text_layers, NULL, 1, 1000, 0, 0, NULL},
        {"vision-layers", 0, CLI_INT, &vision_layers, "vision-depth", 1, 1000, 0, 0, NULL},
        {"seed", 's', CLI_INT, &seed, NULL, 0, INT64_MAX, 0, 0, NULL},
        {"init", 0, CLI_FLAG, &init, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("make-checkpoint", opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (!out || (!case_path == !preset))
        return cli_usage_error("make-checkpoint", "%s",
                               "give --out DIR and either --case FILE or --preset NAME");
    static const char *const presets[] = {"7b", "3b", "tiny-a", "tiny-b"};
    int which = -1;
    for (int i = 0; preset && i < 4; i++)
        if (!strcmp(preset, presets[i])) which = i;
    if (preset && which < 0)
        return cli_usage_error("make-checkpoint", "--preset %.40s: known presets are 7b, 3b, "
                               "tiny-a and tiny-b", preset);
    ergo_error err = {0};
    ckpt_case c;
    ergo_status s;
    if (case_path) s = ckpt_case_load(&c, case_path, &err);
    else if (which == 0) s = ckpt_case_7b(&c, (int)text_layers, (int)vision_layers, (uint64_t)seed, &err);
    else if (which == 1) s = ckpt_case_3b(&c, (int)text_layers, (int)vision_layers, (uint64_t)seed, &err);
    else s = ckpt_case_tiny(&c, which == 2 ? 'a' : 'b', (uint64_t)seed, &err);
    if (!s && init) ckpt_case_set_reference_init(&c);
    if (s) {
        fprintf(stderr, "ergo make-checkpoint: %s\n", err.msg);
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    progress p; /* shown while the (possibly GB-sized) weights are written, on a terminal */
    progress_begin(&p, "write %s (%s)", out, c.name);
    s = random_checkpoint_write(&c, out, tok, &err);
    progress_abort(&p); /* the summary is the "wrote" line below */
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
