/*
 * cli.h - what every subcommand shares: the one-line error on stderr, usage
 * errors, strict number parsing of option values, and the --weights options.
 */
#ifndef ERGO_CLI_H
#define ERGO_CLI_H

#include <stdio.h>

#include "base/status.h"
#include "progress.h"

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

/* --fixed-tokens "S1,S2,B": three counts in [0, 1<<20] into out; 0 when malformed. */
int cli_parse_fixed_tokens(const char *v, int out[3]);

#endif

/* ---------------------------------------------------------------- options
 * One table-driven parser for every command: `--name value`, `--name=value`,
 * short flags (`-n 8`, `-n8`), an alias per option (`--prompt` for `--question`),
 * repeated options, and one-line errors that name the option and the allowed
 * range (usage errors: exit 2). Positional arguments are refused unless the
 * table has a CLI_POSITIONAL entry. */
typedef enum cli_kind {
    CLI_FLAG,       /* no value: *(int *)out = 1 */
    CLI_STR,        /* *(const char **)out = value */
    CLI_INT,        /* *(long long *)out, within [lo, hi] */
    CLI_FLOAT,      /* *(double *)out, within [flo, fhi] */
    CLI_MULTI,      /* repeated: appended to a cli_multi */
    CLI_POSITIONAL, /* the one bare argument: *(const char **)out */
} cli_kind;

typedef struct cli_multi {
    const char **v; /* (max) */
    int n, max;
} cli_multi;

typedef struct cli_opt {
    const char *name;  /* long name without "--", e.g. "max-new-tokens" */
    char short_name;   /* 'n', or 0 */
    cli_kind kind;
    void *out;         /* see cli_kind */
    const char *alias; /* another long name, or NULL */
    long long lo, hi;  /* CLI_INT */
    double flo, fhi;   /* CLI_FLOAT */
    int *given;        /* set to 1 when the option appears (may be NULL) */
} cli_opt;

enum { CLI_OK = 0, CLI_HELP = -1 };

/* Parses argv[1..argc) against opts (n entries). Returns CLI_OK, CLI_HELP (-h or
 * --help seen: the caller prints its usage and exits 0), or 2 after printing
 * "ergo <command>: <what is wrong> (see --help)". */
int cli_parse(const char *command, const cli_opt *opts, int n, int argc, char **argv);

/* The text of --question-file FILE (or "-": stdin), NUL-terminated, malloc'd;
 * NULL with err set ("FILE: ...") when it cannot be read or is not UTF-8. */
char *cli_read_text(const char *path, ergo_error *err);

/* Checks that s is valid UTF-8; else ERGO_E_ARG "<what>: invalid UTF-8 at byte N". */
ergo_status cli_check_utf8(const char *what, const char *s, ergo_error *err);

/* v, the value of OMP_NUM_THREADS (NULL: unset), must be a positive integer
 * (libgomp would only warn and go on with all cores); returns 0 or prints ergo's
 * own one-line error and returns 2. */
int cli_check_omp_env(const char *command, const char *v);

/* The engine options every computing command shares: --threads (0 = all),
 * --weights/--weights-cache, --kv-dtype. */
ergo_status cli_engine_options(struct engine_options *eo, long long threads, const char *weights,
                               const char *cache, const char *kv, ergo_error *err);

/* DIR's processor config as engine_load will read it (the processor's defaults
 * without preprocessor_config.json), with the --min-pixels/--max-pixels overrides
 * (0: none): what the inputs are checked against before the model is loaded. */
struct preprocess_config;
struct image;
ergo_status cli_processor_config(struct preprocess_config *pc, const char *dir, long long min_px,
                                 long long max_px, ergo_error *err);

/* Decodes path into *img (the caller frees it with image_free, also after a
 * failure) and checks that the processor with pc accepts it: after ERGO's stage-1
 * resize to at most ergo_tokens vision tokens when ergo_tokens > 0, as it is
 * otherwise (aspect ratio at most 200, patch grid within max_pixels). Errors name
 * the file and its real size: "x.png (20000x20): ...". */
ergo_status cli_check_image(const char *path, const struct preprocess_config *pc,
                            int ergo_tokens, struct image *img, ergo_error *err);

/* engine_load with a progress line: "load DIR" (+ "quantise to q8, cache FILE"),
 * ending with what happened (mapped, quantised, cache written or not); the
 * engine's warning printed after it. */
ergo_status cli_load_engine(const char *command, struct engine *e, const char *dir,
                            const struct engine_options *eo, ergo_error *err);

/* The prompt fits the model's context before anything heavy is loaded: the chat
 * template's tokens for msgs (their CHAT_IMAGE parts' token counts filled here from
 * the decoded images under pc: the processor's smart_resize and merge) against
 * config.json's max_position_embeddings. Loads only DIR's config, tokenizer and
 * template. The messages are the ones a prefill would give, so a refusal reads the
 * same before and after the load. */
struct chat_message;
ergo_status cli_check_prompt_fits(const char *dir, struct chat_message *msgs, int n_msgs,
                                  const struct image *images, int n_images,
                                  const struct preprocess_config *pc, ergo_error *err);

/* --lora DIR checked before anything is loaded: the adapter directory resolves
 * (model/lora_adapter.h) and its adapter_config.json is JSON; the rest is checked
 * against the model at load. */
ergo_status cli_check_lora(const char *dir, ergo_error *err);

/* The help text of --lora, shared by the commands that take it. */
extern const char cli_lora_help[];

/* The decode loop's text callback (generate_text_fn) for the commands: streams the
 * text to `out` (NULL: no streaming) and, when nothing streams to a terminal,
 * draws the token count and rate; the end prints "decode: N tokens, X tokens/s". */
typedef struct cli_decode_progress {
    FILE *out;
    progress p;
    int max_new;
    long pieces;
} cli_decode_progress;
void cli_decode_progress_begin(cli_decode_progress *d, FILE *out, int max_new);
int cli_decode_progress_text(void *ctx, const char *text, size_t len);
void cli_decode_progress_end(cli_decode_progress *d, ergo_status s, size_t tokens, double ms);
