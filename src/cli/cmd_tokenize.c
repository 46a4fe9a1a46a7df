/*
 * cmd_tokenize.c - `ergo tokenize`: text to token ids (a JSON array on one
 * line) or, with --decode, ids back to text; needs DIR/tokenizer.json and reads
 * DIR/tokenizer_config.json when it is there.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/file.h"
#include "cli.h"
#include "commands.h"
#include "tokenizer/tokenizer.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo tokenize --model DIR TEXT\n"
            "       ergo tokenize --model DIR --file PATH\n"
            "       ergo tokenize --model DIR --decode [--skip-special] IDS\n"
            "\n"
            "  --time   also print the load and encode times to stderr\n"
            "\n"
            "Prints the token ids of TEXT (or of the bytes of PATH) as a JSON array on one\n"
            "line, as the reference tokenizer (Qwen2TokenizerFast) gives them. With --decode,\n"
            "IDS (a JSON array or space-separated integers) are turned back into text.\n"
            "DIR needs tokenizer.json; tokenizer_config.json is read when present.\n");
}

static int fail(const char *msg) { return cli_fail("tokenize", msg); }

/* Reads integers separated by spaces, commas or brackets: "[1, 2]" or "1 2". */
static int parse_ids(const char *s, tok_ids *ids, ergo_error *err) {
    const char *p = s;
    while (*p) {
        if (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n' || *p == ']' || *p == '[') {
            p++;
            continue;
        }
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX) {
            ergo_fail(err, ERGO_E_ARG, "cannot read a token id at \"%.20s\"", p);
            return 0;
        }
        if (tok_ids_push(ids, (int32_t)v, err)) return 0;
        p = end;
    }
    return 1;
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *text = NULL;
    int decode = 0, skip_special = 0, timing = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model, NULL, 0, 0, 0, 0, NULL},
        {"file", 'f', CLI_STR, &file, NULL, 0, 0, 0, 0, NULL},
        {"decode", 'd', CLI_FLAG, &decode, NULL, 0, 0, 0, 0, NULL},
        {"skip-special", 0, CLI_FLAG, &skip_special, NULL, 0, 0, 0, 0, NULL},
        {"time", 0, CLI_FLAG, &timing, NULL, 0, 0, 0, 0, NULL},
        {"TEXT", 0, CLI_POSITIONAL, &text, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("tokenize", opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (!model || (!text == !file) || (decode && file)) {
        fprintf(stderr, "ergo tokenize: need --model DIR and exactly one of TEXT or --file PATH "
                        "(see --help)\n");
        return 2;
    }

    ergo_error err = {0};
    tokenizer *tok;
    double t0 = now_ms();
    if (tokenizer_load(&tok, model, &err)) return fail(err.msg);
    double t_load = now_ms() - t0;
    rc = 0;
    tok_ids ids = {0};
    if (decode) {
        tok_text out = {0};
        if (!parse_ids(text, &ids, &err) ||
            tokenizer_decode(tok, ids.v, ids.n, skip_special, &out, &err)) {
            rc = fail(err.msg);
        } else {
            fwrite(out.s, 1, out.n, stdout);
            fputc('\n', stdout);
        }
        tok_text_free(&out);
    } else {
        char *buf = NULL;
        size_t n = text ? strlen(text) : 0;
        if (file && file_read_all(file, (size_t)1 << 30, &buf, &n, &err)) {
            rc = fail(err.msg);
        } else {
            t0 = now_ms();
            if (tokenizer_encode(tok, file ? buf : text, n, &ids, &err)) {
                rc = fail(err.msg);
            } else {
                double t_enc = now_ms() - t0;
                if (timing)
                    fprintf(stderr,
                            "ergo tokenize: load %.1f ms; encode %.2f MB in %.1f ms (%.1f MB/s), "
                            "%zu ids\n",
                            t_load, n / 1e6, t_enc, t_enc > 0 ? n / 1e3 / t_enc : 0.0, ids.n);
                fputc('[', stdout);
                for (size_t i = 0; i < ids.n; i++) printf(i ? ", %d" : "%d", ids.v[i]);
                fputs("]\n", stdout);
            }
        }
        free(buf);
    }
    tok_ids_free(&ids);
    tokenizer_free(tok);
    if (fflush(stdout) != 0 && rc == 0) rc = fail("cannot write the output");
    return rc;
}
