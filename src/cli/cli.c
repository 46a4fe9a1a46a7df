#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/quantize.h"

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

ergo_status cli_quantize(const char *command, model *m, const char *weights, const char *cache,
                         const char *model_dir, ergo_error *err) {
    const int f = weights ? quant_format_parse(weights) : QUANT_NONE;
    if (f < 0)
        return ergo_fail(err, ERGO_E_ARG, "--weights %.40s: use bf16 (as stored), q8 or q4",
                         weights);
    if (f == QUANT_NONE) return ERGO_OK;
    char path[4096];
    quantize_opts qo = {.format = (quant_format)f, .release_source = 1};
    ergo_status s;
    if ((!cache || !strcmp(cache, "auto")) && model_dir) {
        if ((s = quant_cache_default_path(path, sizeof path, model_dir, qo.format, err))) return s;
        qo.cache_path = path;
    } else if (cache && strcmp(cache, "off") && strcmp(cache, "auto")) {
        qo.cache_path = cache;
    }
    quantize_report r;
    if ((s = model_quantize(m, &qo, &r, err))) return s;
    if (qo.cache_path && !r.from_cache && !r.cache_written)
        fprintf(stderr, "ergo %s: warning: %s\n", command, r.cache_note);
    return ERGO_OK;
}
