#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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
