/*
 * cmd_download.c - `ergo download --model owner/name [--revision R]`: fetch a
 * checkpoint from the Hugging Face hub into the local cache (src/io/hub.c, the
 * layout huggingface_hub uses) and print the snapshot directory, which any
 * command accepts as --model DIR. `ergo run --model owner/name` does the same on
 * first use; this command only downloads, and refreshes a branch that moved.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "progress.h"
#include "io/hub.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo download -m|--model OWNER/NAME[@REVISION] [-r|--revision R] [-q|--quiet]\n"
            "\n"
            "Downloads the files ergo needs (config, generation config, tokenizer, processor\n"
            "config, chat template, safetensors weights and their index) from the Hugging Face\n"
            "hub into its cache, resuming interrupted downloads and checking each weight file's\n"
            "SHA-256, then prints the local snapshot directory. Files already cached are reused;\n"
            "the hub is asked for the revision's current commit even when the cache is complete\n"
            "(`ergo run --model OWNER/NAME` does not ask again once a snapshot is complete).\n"
            "\n"
            "environment:\n"
            "  HF_ENDPOINT     hub URL (default https://huggingface.co)\n"
            "  HF_TOKEN        access token for private or gated repositories\n"
            "  HF_HOME         cache root (models go to $HF_HOME/hub; HF_HUB_CACHE overrides)\n"
            "  HF_HUB_OFFLINE  1: use the cache only\n");
}

int cmd_download(int argc, char **argv) {
    const char *model = NULL, *revision = NULL;
    int quiet = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model, NULL, 0, 0, 0, 0, NULL},
        {"revision", 'r', CLI_STR, &revision, NULL, 0, 0, 0, 0, NULL},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("download", opts, 3, argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (quiet) progress_set_quiet(1);
    if (!model) return cli_usage_error("download", "%s", "--model OWNER/NAME is required");
    char arg[1024];
    if (revision) {
        if (strchr(model, '@')) {
            fprintf(stderr, "ergo download: give the revision either as --revision or after @, not both\n");
            return 2;
        }
        snprintf(arg, sizeof arg, "%s@%s", model, revision);
    } else {
        snprintf(arg, sizeof arg, "%s", model);
    }
    if (!hub_is_repo_id(arg)) {
        fprintf(stderr, "ergo download: `%s' is not a hub repository id (OWNER/NAME[@REVISION])\n", arg);
        return 2;
    }
    char dir[4096];
    ergo_error err = {0};
    /* hub.c reports no byte counts yet: one line for the whole download */
    progress p;
    progress_begin(&p, "download %s", arg);
    if (hub_download(arg, dir, sizeof dir, &err) != ERGO_OK) {
        progress_abort(&p);
        fprintf(stderr, "ergo download: %s\n", err.msg);
        return 1;
    }
    progress_end(&p, "%s", dir);
    printf("%s\n", dir);
    return 0;
}
