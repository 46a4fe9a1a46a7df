/*
 * main.c - the ergo command line: `ergo <command> [options]`, `ergo help
 * [COMMAND]`, `ergo --version`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "kernels/kernels.h"

/* Baked in by the Makefile (git describe at build time; the compiler flags). */
#ifndef ERGO_VERSION
#define ERGO_VERSION "0.1.0"
#endif
#ifndef ERGO_GIT_COMMIT
#define ERGO_GIT_COMMIT "unknown"
#endif
#ifndef ERGO_BUILD_FLAGS
#define ERGO_BUILD_FLAGS "unknown"
#endif

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

/* Offline: every command but download (and --model OWNER/NAME on first use). */
static const command commands[] = {
    {"run", cmd_run, "ERGO's two-stage answer about an image (or the one-pass baseline)"},
    {"generate", cmd_generate, "answer a prompt about images (chat template, vision, decoding)"},
    {"chat", cmd_chat, "talk with a model turn by turn on one session (/image FILE attaches)"},
    {"serve", cmd_serve, "an OpenAI-compatible HTTP server (chat completions with images, streaming)"},
    {"eval", cmd_eval, "score a benchmark (V*, HR-Bench, MME-RW-lite, synth) in process or on an endpoint"},
    {"download", cmd_download, "fetch a checkpoint from the Hugging Face hub into the local cache"},
    {"inspect", cmd_inspect, "print the architecture of a checkpoint directory"},
    {"tokenize", cmd_tokenize, "print the token ids of a text as a JSON array (or decode ids)"},
    {"preprocess", cmd_preprocess, "resize, normalise and patchify an image as the reference does"},
    {"lora", cmd_lora, "`lora merge`: write a base checkpoint with a LoRA adapter merged in"},
    {"train", cmd_train, "`train sft` / `train grpo`: fine-tune on conversations; ERGO's GRPO (resume; mpirun)"},
    {"bench", cmd_bench, "`bench model` / `bench train` / `bench backward` / `bench inputs`: speed vs the machine"},
    {"make-checkpoint", cmd_make_checkpoint, "write a random test/benchmark checkpoint from a seed"},
    {"synth", cmd_synth, "write the synthetic landmark-tag benchmark (V* layout, SFT split)"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out) {
    fprintf(out, "usage: ergo <command> [options]\n"
                 "       ergo help COMMAND | ergo COMMAND --help\n"
                 "       ergo --version\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-16s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\nOptions take `--name value` or `--name=value`. Commands that compute take\n"
            "--threads N (-t), -m/--model, and --quiet (no progress on stderr).\n"
            "Every command takes --compute f32|bf16|auto (or $ERGO_COMPUTE): how the\n"
            "many-row products (prefill, vision, batched decode) compute. f32 matches the\n"
            "reference's f32 numbers; bf16 rounds activations to bf16 and sums in f32, on\n"
            "the CPU's bf16 dot products (AVX-512 BF16), about twice as fast. auto (the\n"
            "default) is bf16 where the CPU has them, else f32; `ergo train` uses f32\n"
            "unless told. This CPU's auto: %s.\n"
            "Exit status: 0 done, 1 bad input or failure, 2 usage error.\n",
            compute_mode_name(compute_default()));
}

/* Takes `--compute X` / `--compute=X` out of argv (any position) into $ERGO_COMPUTE,
 * so every command's kernels_init sees it; checks it against this CPU at once.
 * Returns 0, or 2 after printing the usage error. */
static int take_compute_flag(int *argc, char **argv) {
    int out = 1;
    const char *value = NULL;
    for (int i = 1; i < *argc; i++) {
        if (!strcmp(argv[i], "--compute")) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "ergo: --compute needs a value (f32, bf16 or auto)\n");
                return 2;
            }
            value = argv[++i];
            continue;
        }
        if (!strncmp(argv[i], "--compute=", 10)) {
            value = argv[i] + 10;
            continue;
        }
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    *argc = out;
    if (value) setenv("ERGO_COMPUTE", value, 1);
    ergo_error err = {0};
    if (getenv("ERGO_COMPUTE") && kernels_init(NULL, &err) != ERGO_OK) {
        fprintf(stderr, "ergo: %s\n", err.msg);
        return 2;
    }
    return 0;
}

static void version(void) {
    const cpu_features *f = cpu_features_get();
    printf("ergo %s (commit %s)\n", ERGO_VERSION, ERGO_GIT_COMMIT);
    printf("compute: %s by default (--compute f32|bf16|auto)\n", compute_mode_name(compute_default()));
    printf("isa: %s (best this CPU supports; ERGO_ISA overrides)%s%s%s%s\n",
           cpu_isa_name(cpu_best_isa()), f->avx2 ? " avx2" : "", f->fma ? " fma" : "",
           f->avx512f ? " avx512f" : "", f->avx512bf16 ? " avx512bf16" : "");
    printf("build: %s\n", ERGO_BUILD_FLAGS);
}

/* A bad OMP_NUM_THREADS is hidden from libgomp, which parses the environment in its
 * constructor (before main) and would print its own warning and go on: functions in
 * an executable's .preinit_array run before any shared library's initialisers.
 * The variable is renamed in place (_MP_NUM_THREADS) and main reports it. */
static const char *bad_omp_threads;

static int omp_value_ok(const char *v) {
    long n = 0;
    int digits = 0;
    for (; *v && *v != ','; v++) {
        if (*v < '0' || *v > '9' || ++digits > 4) return 0;
        n = 10 * n + (*v - '0');
    }
    return n >= 1 && n <= 4096;
}

static void hide_bad_omp_threads(int argc, char **argv, char **envp) {
    static const char key[] = "OMP_NUM_THREADS=";
    for (char **e = envp; e && *e; e++) {
        size_t k = 0;
        while (key[k] && (*e)[k] == key[k]) k++;
        if (key[k] || omp_value_ok(*e + k)) continue;
        bad_omp_threads = *e + k;
        (*e)[0] = '_';
    }
}
__attribute__((section(".preinit_array"), used)) static void (*const preinit_omp)(
    int, char **, char **) = hide_bad_omp_threads;

static const command *find(const char *name) {
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(name, commands[i].name)) return &commands[i];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *a = argv[1];
    if (!strcmp(a, "--version") || !strcmp(a, "-V") || !strcmp(a, "version")) {
        version();
        return 0;
    }
    if (!strcmp(a, "--help") || !strcmp(a, "-h") || !strcmp(a, "help")) {
        if (argc >= 3 && strcmp(a, "help") == 0) {
            const command *c = find(argv[2]);
            if (!c) {
                fprintf(stderr, "ergo help: unknown command `%s'\n", argv[2]);
                usage(stderr);
                return 2;
            }
            char *sub[] = {argv[2], "--help", NULL};
            /* `ergo help bench model` asks the subcommand */
            if (argc >= 4) {
                char *sub3[] = {argv[2], argv[3], "--help", NULL};
                return c->run(3, sub3);
            }
            return c->run(2, sub);
        }
        usage(stdout);
        return 0;
    }
    const command *c = find(a);
    if (!c) {
        fprintf(stderr, "ergo: unknown command `%s'\n", a);
        usage(stderr);
        return 2;
    }
    if (bad_omp_threads && cli_check_omp_env(a, bad_omp_threads)) return 2;
    if (take_compute_flag(&argc, argv)) return 2;
    return c->run(argc - 1, argv + 1);
}
