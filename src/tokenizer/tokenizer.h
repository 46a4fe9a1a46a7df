/*
 * tokenizer.h - the byte-level BPE tokenizer of a tokenizer.json (Qwen2/2.5-VL),
 * with the semantics of tokenizers 0.22.1 as transformers' Qwen2TokenizerFast
 * uses it: added tokens are cut out of the raw text first; the rest is NFC
 * normalised, split by the pre-tokenizer regex, mapped byte to character
 * (GPT-2's bytes_to_unicode) and merged by BPE rank.
 *
 * tokenizer_load(dir) also reads dir/tokenizer_config.json when it is there
 * (tokenizer_config.h): clean_up_tokenization_spaces, split_special_tokens, the
 * special tokens it names and model_max_length; settings that would change
 * results in ways ergo does not implement are refused.
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

/* What tokenizer_config.json set (the defaults when there is none). */
typedef struct tokenizer_settings {
    int has_config;                   /* tokenizer_config.json was read */
    int clean_up_tokenization_spaces; /* decode applies transformers' clean_up_tokenization */
    int split_special_tokens;         /* special tokens in the text are encoded as plain text */
    int64_t model_max_length;         /* INT64_MAX when unset or larger (transformers then
                                         says int(1e30)); nothing here truncates */
} tokenizer_settings;

/* Loads dir/tokenizer.json and, when present, dir/tokenizer_config.json.
 * On success the caller owns *out (tokenizer_free). */
ergo_status tokenizer_load(tokenizer **out, const char *dir, ergo_error *err);
/* Loads one tokenizer.json, without any tokenizer_config.json. */
ergo_status tokenizer_load_file(tokenizer **out, const char *path, ergo_error *err);
/* Loads from memory (no tokenizer_config.json); `what` names the source in error messages. */
ergo_status tokenizer_load_bytes(tokenizer **out, const char *json, size_t len, const char *what,
                                 ergo_error *err);
/* The same with the text of a tokenizer_config.json (config NULL: none). */
ergo_status tokenizer_load_bytes_config(tokenizer **out, const char *json, size_t len,
                                        const char *config, size_t config_len, const char *what,
                                        ergo_error *err);
void tokenizer_free(tokenizer *tok);

const tokenizer_settings *tokenizer_get_settings(const tokenizer *tok);

/* Appends the ids of text[0..len) to ids. Text that is not valid UTF-8 fails
 * with "invalid UTF-8 at byte N". */
ergo_status tokenizer_encode(const tokenizer *tok, const char *text, size_t len, tok_ids *ids,
                             ergo_error *err);
/* The same with split_special_tokens given for this call (1: a special token spelled
 * in the text stays text, e.g. a user's "<|im_start|>"), not the tokenizer's setting. */
ergo_status tokenizer_encode_split(const tokenizer *tok, const char *text, size_t len,
                                   int split_special, tok_ids *ids, ergo_error *err);

/* Appends the text of ids to out, as tokenizer.decode(ids, skip_special_tokens)
 * does: bytes that do not form UTF-8 become U+FFFD (per maximal invalid subpart,
 * Rust's from_utf8_lossy), then clean_up_tokenization when the config asks for it.
 * Unlike the reference, which silently drops ids it does not know, an unknown id
 * is an error naming it. */
ergo_status tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                             tok_text *out, ergo_error *err);

/* The id of a token's exact text (vocabulary or added token), or -1. */
int32_t tokenizer_token_id(const tokenizer *tok, const char *text, size_t len);
/* The stored text of an id (byte-level characters for vocabulary tokens), or
 * NULL for an unknown id. */
const char *tokenizer_token_text(const tokenizer *tok, int32_t id, size_t *len);
/* Whether an id is a special added token (skipped by skip_special): "special": true
 * in tokenizer.json, or named as a special token by tokenizer_config.json. */
int tokenizer_is_special(const tokenizer *tok, int32_t id);
/* One more than the largest id. */
int32_t tokenizer_n_ids(const tokenizer *tok);

/* ---------------------------------------------------------------- streaming decode */

/* Decodes ids one at a time (e.g. while generating), emitting only complete
 * UTF-8; the concatenation of everything emitted, including tokenizer_stream_finish,
 * equals tokenizer_decode of all the ids. With clean_up_tokenization_spaces, text
 * that the clean-up of later text could still change is held back. */
typedef struct tokenizer_stream {
    const tokenizer *tok;
    int skip_special;
    uint8_t pending[4]; /* the start of a character whose remaining bytes may come */
    size_t n_pending;
    tok_text held;      /* decoded text not yet cleaned up and emitted */
} tokenizer_stream;

void tokenizer_stream_init(tokenizer_stream *s, const tokenizer *tok, int skip_special);
/* Appends the text that id completes to out (possibly nothing). */
ergo_status tokenizer_stream_push(tokenizer_stream *s, int32_t id, tok_text *out, ergo_error *err);
/* Flushes what is held and a dangling partial character (as U+FFFD, like the
 * one-shot decode), and releases the stream's memory. */
ergo_status tokenizer_stream_finish(tokenizer_stream *s, tok_text *out, ergo_error *err);
/* Releases the stream's memory without emitting anything (e.g. after an error). */
void tokenizer_stream_free(tokenizer_stream *s);

#endif
