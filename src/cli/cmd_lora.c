/*
 * cmd_lora.c - `ergo lora merge`: a base checkpoint with a PEFT LoRA adapter merged
 * into it, written as a full checkpoint directory in the published layout (what
 * PEFT's merge_and_unload + save_pretrained give), loadable by `ergo run` and by
 * transformers.
 */
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/file.h"
#include "cli.h"
#include "commands.h"
#include "io/hub.h"
#include "model/lora_adapter.h"
#include "model/model_save.h"
#include "model/weights.h"
#include "progress.h"

#define NAME "lora merge"

static void usage(FILE *out) {
    fputs(
"usage: ergo lora merge -m|--model BASE --lora DIR -o|--out OUT [--force] [-t|--threads N]\n"
"                       [-q|--quiet]\n"
"\n"
"Merges the LoRA adapter in DIR into the base checkpoint BASE (a directory or a hub id)\n"
"and writes the result to OUT as a full checkpoint: model.safetensors in BASE's tensor-name\n"
"layout, every tensor in BASE's stored dtype (an adapted weight W becomes W + s * B @ A,\n"
"computed in f32 and rounded once, as `--lora DIR` merges it at load; s = lora_alpha / r,\n"
"or lora_alpha / sqrt(r) with use_rslora), and BASE's config, generation config,\n"
"tokenizer, processor and chat-template files copied. OUT loads in `ergo run --model OUT`\n"
"and in transformers' from_pretrained.\n"
"\n"
"DIR is PEFT's save_pretrained layout (adapter_config.json + adapter_model.safetensors, keys\n"
"base_model.model.<module>.lora_A/B.weight in either name layout) or an `ergo train sft\n"
"--lora-rank R` output directory (its newest checkpoint). The adapter is checked against\n"
"BASE's config before anything is written (every tensor's name and shape; bias \"none\",\n"
"no modules_to_save, no DoRA).\n"
"\n"
"Written atomically: into OUT.tmp-PID, each file fsynced, then renamed to OUT. An existing\n"
"OUT is refused unless --force (then replaced only once the new one is complete).\n"
"Exit status: 0 written, 1 bad input or failure, 2 usage error.\n", out);
}

static int fail(const char *msg) { return cli_fail(NAME, msg); }

/* 1 when a and b name the same existing directory. */
static int same_dir(const char *a, const char *b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    return realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

static int merge(int argc, char **argv) {
    const char *model_arg = NULL, *lora = NULL, *out = NULL;
    long long threads = 0;
    int force = 0, quiet = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_arg, NULL, 0, 0, 0, 0, NULL},
        {"lora", 0, CLI_STR, &lora, NULL, 0, 0, 0, 0, NULL},
        {"out", 'o', CLI_STR, &out, NULL, 0, 0, 0, 0, NULL},
        {"force", 0, CLI_FLAG, &force, NULL, 0, 0, 0, 0, NULL},
        {"threads", 't', CLI_INT, &threads, NULL, 1, 1024, 0, 0, NULL},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse(NAME, opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (quiet) progress_set_quiet(1);
    if (!model_arg || !lora || !out)
        return cli_usage_error(NAME, "%s", "--model BASE, --lora DIR and --out OUT are required");
    ergo_error err = {0};
    char dir[4096], adapter[1024], note[256];
    if (lora_adapter_resolve(lora, adapter, sizeof adapter, note, sizeof note, &err))
        return fail(err.msg);
    if (dir_exists(out) && !force) {
        ergo_fail(&err, ERGO_E_ARG, "%s exists (--force replaces it)", out);
        return fail(err.msg);
    }
    if (hub_resolve_model(model_arg, dir, sizeof dir, &err)) return fail(err.msg);
    if (same_dir(out, dir) || same_dir(out, adapter)) {
        ergo_fail(&err, ERGO_E_ARG, "--out %s is the base or the adapter directory itself", out);
        return fail(err.msg);
    }
    if (threads > 0) omp_set_num_threads((int)threads);
    if (note[0] && !quiet) fprintf(stderr, "ergo %s: note: %s\n", NAME, note);
    model m;
    lora_adapter a = {0};
    progress p;
    progress_begin(&p, "load %s + check %s", dir, adapter);
    ergo_status s = model_load(&m, dir, &err);
    if (s) {
        progress_abort(&p);
        return fail(err.msg);
    }
    if ((s = lora_adapter_load(&a, adapter, &m.config, &err))) {
        progress_abort(&p);
        model_free(&m);
        return fail(err.msg);
    }
    progress_end(&p, "%d linears adapted (r %d, scale %g)", a.n_modules, a.rank, (double)a.scale);
    const double t0 = now_ms();
    progress_begin(&p, "merge and write %s", out);
    s = model_save_dir(&m, &a, dir, out, force, &err);
    if (s) progress_abort(&p);
    else progress_end(&p, "%.1f s", (now_ms() - t0) / 1e3);
    if (!s)
        printf("wrote %s: %s with %s merged into %d linears (adapter sha256 %.16s)\n", out, dir,
               adapter, a.n_modules, a.hash);
    lora_adapter_free(&a);
    model_free(&m);
    return s ? fail(err.msg) : 0;
}

int cmd_lora(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "merge")) return merge(argc - 1, argv + 1);
    FILE *f = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? stdout : stderr;
    usage(f);
    if (f == stderr) {
        if (argc >= 2) fprintf(stderr, "ergo lora: unknown subcommand `%s' (merge)\n", argv[1]);
        return 2;
    }
    return 0;
}
