/*
 * pretokenize.h - the Split pre-tokenizer of tokenizer.json, compiled with PCRE2.
 *
 * tokenizers runs the pattern with Oniguruma; pretokenize_compile translates the
 * escapes whose meaning differs (\s, \S, \p{L}, \P{L}, \p{N}, \P{N}; \h / \H, a hex
 * digit to Oniguruma; \p / \P without braces, plain letters to Oniguruma) into
 * explicit classes measured on the reference (unicode_tables.c) and compiles with Ruby's
 * defaults (^ and $ match at line breaks). Other constructs keep PCRE2's meaning;
 * Oniguruma-only syntax that PCRE2 would read differently (nested classes, &&) is
 * refused. The split follows behavior "Isolated": every match and every gap
 * between matches is a piece.
 */
#ifndef ERGO_TOKENIZER_PRETOKENIZE_H
#define ERGO_TOKENIZER_PRETOKENIZE_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "base/status.h"
#include "tokenizer/tokenizer.h"

typedef struct pretokenizer {
    pcre2_code *re;              /* NULL when the file has no Split step */
    pcre2_match_context *mctx;   /* match limits: a hostile pattern fails, never hangs */
    int literal_empty;           /* {"String": ""}: the reference never splits */
} pretokenizer;

/* Compiles the Oniguruma pattern (or a literal string when `literal`). `what`
 * names the file in messages. */
ergo_status pretokenize_compile(pretokenizer *p, const char *pattern, size_t len, int literal,
                                const char *what, ergo_error *err);
void pretokenize_free(pretokenizer *p);

/* Translates an Oniguruma pattern into the PCRE2 pattern we compile (exposed for tests). */
ergo_status pretokenize_translate(const char *pattern, size_t len, tok_text *out,
                                  ergo_error *err);

/* Called for each non-empty piece, in order. */
typedef ergo_status (*pretokenize_fn)(void *ctx, const char *s, size_t n, ergo_error *err);

/* Splits s[0..n) (valid UTF-8) into pieces. md is scratch from
 * pcre2_match_data_create(1, NULL), one per thread. */
ergo_status pretokenize_split(const pretokenizer *p, pcre2_match_data *md, const char *s, size_t n,
                              pretokenize_fn fn, void *ctx, ergo_error *err);

#endif
