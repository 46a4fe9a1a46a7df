/*
 * main.c - the ergo command line: `ergo <command> [options]`.
 */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"tokenize", cmd_tokenize, "print the token ids of a text as a JSON array"},
    {"inspect", cmd_inspect, "print the architecture of a checkpoint directory"},
    {"preprocess", cmd_preprocess, "resize, normalise and patchify an image as the reference does"},
    {"make-checkpoint", cmd_make_checkpoint, "write a random test/benchmark checkpoint from a seed"},
    {"bench", cmd_bench, "time the input side (tokenizer, image pre-processing)"},
    {"generate", cmd_generate, "answer a prompt about images (chat template, vision, decoding)"},
    {"run", cmd_run, "ERGO's two-stage answer about an image (or the one-pass baseline)"},
    {"download", cmd_download, "fetch a checkpoint from the Hugging Face hub into the local cache"},
    {"synth", cmd_synth, "write the synthetic landmark-tag benchmark (V* layout, SFT split)"},
    {"serve", cmd_serve, "an OpenAI-compatible HTTP server (chat completions with images, streaming)"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: ergo <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`ergo <command> --help` describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "ergo: unknown command `%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
