/*
 * tokenizer_json.h - a strict JSON reader for tokenizer.json that streams the
 * two big tables (model.vocab: 150k entries, model.merges: 150k pairs) straight
 * into the BPE builder and builds everything else as jansson values.
 *
 * Why not jansson for all of it: building 450k small jansson values and a
 * 150k-key object takes ~300 ms (and ~80 ms to free) for Qwen's 5 MB file;
 * streaming the tables takes a fraction of that. The grammar is RFC 8259,
 * checked strictly (jansson's rules: no duplicate keys, no \u0000, valid UTF-8).
 */
#ifndef ERGO_TOKENIZER_JSON_H
#define ERGO_TOKENIZER_JSON_H

#include <jansson.h>

#include "base/status.h"
#include "tokenizer/bpe.h"

typedef enum tj_merge_kind {
    TJ_MERGE_STRING, /* "a b": a = the whole string */
    TJ_MERGE_PAIR,   /* ["a", "b"] */
    TJ_MERGE_OTHER,  /* anything else (an error for the loader to report) */
} tj_merge_kind;

typedef struct tj_merge {
    uint32_t a_off, a_len, b_off, b_len; /* in tj_doc.pool */
    tj_merge_kind kind;
} tj_merge;

typedef struct tj_doc {
    json_t *root;        /* the document; model.vocab / model.merges hold empty placeholders
                            when they were streamed (vocab_streamed / merges_streamed) */
    int vocab_streamed;  /* model.vocab was an object: its entries went to bpe_add_token */
    int merges_streamed; /* model.merges was a list: its items are in merges[] */
    char *pool;          /* merge strings */
    size_t pool_n, pool_cap;
    tj_merge *merges;
    size_t n_merges, merges_cap;
} tj_doc;

/* Parses json[0..len); vocabulary entries are added to bpe (ids must be integers). */
ergo_status tj_parse(tj_doc *doc, const char *json, size_t len, bpe_model *bpe, const char *what,
                     ergo_error *err);
void tj_free(tj_doc *doc);

#endif
