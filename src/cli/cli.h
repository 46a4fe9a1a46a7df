/*
 * cli.h - what every subcommand shares: the one-line error on stderr, usage
 * errors, strict number parsing of option values, and the --weights options.
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

/* --weights / --weights-cache into engine options: the format "bf16" or NULL (as
 * stored), "q8", "q4"; the cache as given (NULL or "auto": beside the checkpoint,
 * "off", or a path). A bad format is refused with a message naming --weights. */
struct engine_options;
struct engine;
ergo_status cli_weights_options(struct engine_options *eo, const char *weights, const char *cache,
                                ergo_error *err);

/* --kv-dtype f32|bf16 (NULL: f32) into engine options; refused by name otherwise. */
ergo_status cli_kv_options(struct engine_options *eo, const char *name, ergo_error *err);

/* The help text of --kv-dtype, shared by the commands that take it. */
extern const char cli_kv_help[];

/* Prints "ergo <command>: warning: ..." when loading e left a note (a weights cache
 * that could not be used or written: not a failure). */
void cli_engine_warning(const char *command, const struct engine *e);

#endif
