/*
 * tokenizer.h - the byte-level BPE tokenizer of a tokenizer.json (Qwen2/2.5-VL),
 * with the semantics of tokenizers 0.22.1 as transformers' Qwen2TokenizerFast
 * uses it: added tokens are cut out of the raw text first; the rest is NFC
 * normalised, split by the pre-tokenizer regex, mapped byte to character
 * (GPT-2's bytes_to_unicode) and merged by BPE rank.
 *
 * A tokenizer is immutable after loading and may be shared by threads.
 *
 *   tokenizer *tok;
 *   if (tokenizer_load(&tok, "assets/qwen2.5-vl-tokenizer", &err) != ERGO_OK) ...
 *   tok_ids ids = {0};
 *   tokenizer_encode(tok, text, strlen(text), &ids, &err);   // appends to ids
 *   tok_text out = {0};
 *   tokenizer_decode(tok, ids.v, ids.n, 0, &out, &err);       // appends to out
 *   tok_ids_free(&ids); tok_text_free(&out); tokenizer_free(tok);
 */
#ifndef ERGO_TOKENIZER_H
#define ERGO_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* ---------------------------------------------------------------- buffers */

/* A growable array of token ids; zero-initialise, free with tok_ids_free. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

/* A growable byte string, always NUL-terminated after s[n] once non-empty. */
typedef struct tok_text {
    char *s;
    size_t n, cap;
} tok_text;

ergo_status tok_ids_push(tok_ids *a, int32_t id, ergo_error *err);
void tok_ids_free(tok_ids *a);
ergo_status tok_text_append(tok_text *t, const char *s, size_t n, ergo_error *err);
void tok_text_free(tok_text *t);

/* ---------------------------------------------------------------- tokenizer */

typedef struct tokenizer tokenizer;

/* Loads dir/tokenizer.json. On success the caller owns *out (tokenizer_free). */
ergo_status tokenizer_load(tokenizer **out, const char *dir, ergo_error *err);
ergo_status tokenizer_load_file(tokenizer **out, const char *path, ergo_error *err);
/* Loads from memory; `what` names the source in error messages. */
ergo_status tokenizer_load_bytes(tokenizer **out, const char *json, size_t len, const char *what,
                                 ergo_error *err);
void tokenizer_free(tokenizer *tok);

/* Appends the ids of text[0..len) to ids. Text that is not valid UTF-8 fails
 * with "invalid UTF-8 at byte N". */
ergo_status tokenizer_encode(const tokenizer *tok, const char *text, size_t len, tok_ids *ids,
                             ergo_error *err);

/* Appends the text of ids to out, as tokenizer.decode(ids, skip_special_tokens)
 * does: bytes that do not form UTF-8 become U+FFFD (per maximal invalid subpart,
 * Rust's from_utf8_lossy). Unlike the reference, which silently drops ids it does
 * not know, an unknown id is an error naming it. */
ergo_status tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                             tok_text *out, ergo_error *err);

/* The id of a token's exact text (vocabulary or added token), or -1. */
int32_t tokenizer_token_id(const tokenizer *tok, const char *text, size_t len);
/* The stored text of an id (byte-level characters for vocabulary tokens), or
 * NULL for an unknown id. */
const char *tokenizer_token_text(const tokenizer *tok, int32_t id, size_t *len);
/* Whether an id is an added token with "special": true (skipped by skip_special). */
int tokenizer_is_special(const tokenizer *tok, int32_t id);
/* One more than the largest id. */
int32_t tokenizer_n_ids(const tokenizer *tok);

/* ---------------------------------------------------------------- streaming decode */

/* Decodes ids one at a time (e.g. while generating), emitting only complete
 * UTF-8; the concatenation of everything emitted, including tokenizer_stream_finish,
 * equals tokenizer_decode of all the ids. */
typedef struct tokenizer_stream {
    const tokenizer *tok;
    int skip_special;
    uint8_t pending[4]; /* the start of a character whose remaining bytes may come */
    size_t n_pending;
} tokenizer_stream;

void tokenizer_stream_init(tokenizer_stream *s, const tokenizer *tok, int skip_special);
/* Appends the text that id completes to out (possibly nothing). */
ergo_status tokenizer_stream_push(tokenizer_stream *s, int32_t id, tok_text *out, ergo_error *err);
/* Flushes a dangling partial character (as U+FFFD, like the one-shot decode). */
ergo_status tokenizer_stream_finish(tokenizer_stream *s, tok_text *out, ergo_error *err);

#endif
