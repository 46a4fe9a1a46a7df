/*
 * bpe.h - the BPE model of tokenizer.json ("model": {"type": "BPE", ...}) over
 * byte-level characters: a vocabulary (text <-> id) and ranked merges, both in
 * open-addressing hash tables so that loading and encoding stay fast.
 *
 * Building: bpe_init, bpe_add_token for every vocabulary entry, bpe_index_vocab,
 * then bpe_add_merge for every merge in rank order, then bpe_set_options.
 */
#ifndef ERGO_TOKENIZER_BPE_H
#define ERGO_TOKENIZER_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "tokenizer/tokenizer.h"

#define BPE_MAX_ID (1 << 22) /* ids above this are refused: a dense table is sized by them */

typedef struct bpe_span {
    uint32_t off, len; /* in bpe_model.pool; len == UINT32_MAX: no such id */
} bpe_span;

typedef struct bpe_merge_slot {
    uint64_t key;   /* (left id << 32 | right id) + 1; 0 = empty */
    uint32_t rank;  /* position in the merges list (the later duplicate wins, as in HF) */
    int32_t new_id; /* id of left text + right text */
} bpe_merge_slot;

typedef struct bpe_model {
    char *pool;             /* every token's text back to back */
    size_t pool_n, pool_cap;
    bpe_span *text;         /* (n_ids) text of each id */
    int32_t n_ids;          /* largest id + 1, e.g. 151643 for Qwen2.5 */
    size_t n_vocab;         /* vocabulary entries, e.g. 151643 */
    uint32_t *vslot;        /* (vmask + 1) id + 1 per slot, 0 = empty */
    size_t vmask;
    bpe_merge_slot *mslot;  /* (mmask + 1) */
    size_t mmask, n_merges;
    int32_t byte_id[256];   /* id of the byte-level character of each byte, -1: none */
    int32_t fallback[256][2]; /* byte_fallback ids of the character's UTF-8 bytes, -1: none */
    int32_t unk_id;         /* -1: no unk_token */
    int fuse_unk;           /* consecutive unknown characters become one unk */
    int byte_fallback;      /* unknown characters become <0xXX> tokens when they exist */
    int ignore_merges;      /* a word that is a vocabulary entry is taken whole */
    struct bpe_entry *entries; /* while building: vocabulary entries in file order */
    size_t n_entries, entries_cap;
} bpe_model;

/* Per-call scratch for bpe_encode_word (one per thread). */
typedef struct bpe_scratch {
    struct bpe_symbol *sym;
    size_t sym_cap;
    struct bpe_heap_item *heap;
    size_t heap_cap;
    tok_text mapped;
} bpe_scratch;

void bpe_init(bpe_model *m);
void bpe_free(bpe_model *m);
void bpe_scratch_free(bpe_scratch *s);

/* GPT-2's bytes_to_unicode: the character (UTF-8, 1-2 bytes) standing for byte b. */
size_t bpe_byte_char(uint8_t b, char out[4]);
/* The inverse over code points: the byte a character stands for, or -1. */
int bpe_char_byte(uint32_t cp);

ergo_status bpe_add_token(bpe_model *m, const char *text, size_t len, int64_t id, const char *what,
                          ergo_error *err);
/* Builds the id table and the text -> id hash; fails on duplicate ids. */
ergo_status bpe_index_vocab(bpe_model *m, size_t expected_merges, const char *what,
                            ergo_error *err);
/* rank = index in the merges list. */
ergo_status bpe_add_merge(bpe_model *m, const char *a, size_t alen, const char *b, size_t blen,
                          size_t rank, const char *what, ergo_error *err);
/* unk (may be NULL), fuse_unk, byte_fallback, ignore_merges; fills the byte tables. */
ergo_status bpe_set_options(bpe_model *m, const char *unk, size_t unk_len, int fuse_unk,
                            int byte_fallback, int ignore_merges, const char *what,
                            ergo_error *err);

/* The id of a vocabulary entry, or -1. */
int32_t bpe_lookup(const bpe_model *m, const char *text, size_t len);

/* Appends the ids of one pre-token (raw bytes, before byte-level mapping). */
ergo_status bpe_encode_word(const bpe_model *m, const uint8_t *bytes, size_t n, bpe_scratch *sc,
                            tok_ids *out, ergo_error *err);

#endif
