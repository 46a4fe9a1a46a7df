#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/quant.h"
#include "runtime/engine.h"

int cli_fail(const char *command, const char *msg) {
    fprintf(stderr, "ergo %s: ", command);
    for (const char *p = msg; *p; p++) fputc((unsigned char)*p < 0x20 ? ' ' : *p, stderr);
    fputc('\n', stderr);
    return 1;
}

int cli_usage_error(const char *command, const char *fmt, const char *arg) {
    fprintf(stderr, "ergo %s: ", command);
    fprintf(stderr, fmt, arg);
    fputs(" (see --help)\n", stderr);
    return 2;
}

int cli_parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

ergo_status cli_weights_options(engine_options *eo, const char *weights, const char *cache,
                                ergo_error *err) {
    const int f = weights ? quant_format_parse(weights) : QUANT_NONE;
    if (f < 0)
        return ergo_fail(err, ERGO_E_ARG, "--weights %.40s: use bf16 (as stored), q8 or q4",
                         weights);
    eo->weights = (quant_format)f;
    eo->weights_cache = cache;
    return ERGO_OK;
}

const char cli_kv_help[] =
    "--kv-dtype f32|bf16: how the KV cache keeps keys and values (f32, the default: the\n"
    "reference's numbers; bf16 halves the cache's memory and what decode reads at long\n"
    "context, at the accuracy tests/test_quant_model.c states).\n";

ergo_status cli_kv_options(engine_options *eo, const char *name, ergo_error *err) {
    eo->kv_dtype = KV_F32;
    return name ? kv_dtype_parse(name, &eo->kv_dtype, err) : ERGO_OK;
}

void cli_engine_warning(const char *command, const engine *e) {
    if (e->warning[0]) fprintf(stderr, "ergo %s: warning: %s\n", command, e->warning);
}
