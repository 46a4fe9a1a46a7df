/*
 * cli.h - what every subcommand shares: the one-line error on stderr, usage
 * errors, strict number parsing of option values, and the --weights option.
 */
#ifndef ERGO_CLI_H
#define ERGO_CLI_H

#include "base/status.h"

/* Prints "ergo <command>: <msg>" as one line (control characters become spaces,
 * so a message quoting untrusted text cannot break the line) and returns 1. */
int cli_fail(const char *command, const char *msg);

/* Prints "ergo <command>: <fmt with arg> (see --help)" and returns 2. */
int cli_usage_error(const char *command, const char *fmt, const char *arg);

/* Parses a whole string as a base-10 integer in [lo, hi]; 0 when it is not one. */
int cli_parse_long(const char *s, long long lo, long long hi, long long *out);

/* --weights / --weights-cache: quantises m's linear weights (format "bf16" or
 * NULL: nothing), the cache "auto" (NULL) beside model_dir (none without a
 * directory), "off", or a path. A cache that could not be used or written is a
 * warning on stderr, not a failure. */
struct model;
ergo_status cli_quantize(const char *command, struct model *m, const char *weights,
                         const char *cache, const char *model_dir, ergo_error *err);

#endif
