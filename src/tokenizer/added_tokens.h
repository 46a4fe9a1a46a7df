/*
 * added_tokens.h - the "added_tokens" of tokenizer.json (special tokens such as
 * <|im_start|> and other whole tokens), found in the text before normalisation
 * and BPE, with the flags tokenizers gives them:
 *   lstrip / rstrip  the token also swallows the whitespace on its left / right;
 *   single_word      a match counts only when no word character touches it;
 *   normalized       the token is matched in the NFC-normalised text (else raw);
 *   special          skipped by decode(skip_special_tokens=True).
 */
#ifndef ERGO_TOKENIZER_ADDED_TOKENS_H
#define ERGO_TOKENIZER_ADDED_TOKENS_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "base/status.h"
#include "tokenizer/tokenizer.h"

typedef struct added_token {
    char *content;       /* as in the file (NUL-terminated, owned) */
    size_t len;
    char *match;         /* what is searched: content, or its NFC when normalized */
    size_t match_len;
    int32_t id;
    uint8_t special, single_word, lstrip, rstrip, normalized;
} added_token;

typedef struct added_node {
    int32_t child, sibling; /* first child / next sibling, -1: none */
    int32_t token;          /* index of the token ending here, -1: none */
    uint8_t byte;
} added_node;

typedef struct added_trie {
    added_node *node;       /* node[0] is the root */
    size_t n, cap;
    uint8_t first[256];     /* bytes that start some pattern: a cheap skip */
} added_trie;

typedef struct added_vocab {
    added_token *tok;       /* in file order */
    size_t n, cap;
    added_trie exact;       /* every content: id lookups, duplicate checks */
    added_trie raw;         /* normalized == false: matched in the raw text */
    added_trie norm;        /* normalized == true: NFC content, matched after NFC */
    pcre2_code *word_char;  /* Rust regex \w, for single_word (NULL when unused) */
    pcre2_code *space_char; /* Rust regex \s, for lstrip/rstrip (NULL when unused) */
} added_vocab;

void added_init(added_vocab *av);
void added_free(added_vocab *av);

/* Adds one token (file order). Fails on empty or repeated content. */
ergo_status added_add(added_vocab *av, const char *content, size_t len, int32_t id, int special,
                      int single_word, int lstrip, int rstrip, int normalized, int nfc,
                      const char *what, ergo_error *err);
/* Builds the match tries once every token is added. */
ergo_status added_finish(added_vocab *av, const char *what, ergo_error *err);

/* The index of the token with exactly this content, or -1. */
int32_t added_find(const added_vocab *av, const char *s, size_t n);

/* Called for each piece of the split: id >= 0 for an added token, -1 for text. */
typedef ergo_status (*added_fn)(void *ctx, const char *s, size_t n, int32_t id, ergo_error *err);

/* Splits s[0..n) on the raw (normalized_stage == 0) or normalised (1) tokens,
 * as AddedVocabulary::find_matches does. With split_special (tokenizers'
 * encode_special_tokens), special tokens are skipped where they match. */
ergo_status added_split(const added_vocab *av, int normalized_stage, int split_special,
                        pcre2_match_data *md, const char *s, size_t n, added_fn fn, void *ctx,
                        ergo_error *err);

#endif
