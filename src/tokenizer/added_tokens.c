/*
 * added_tokens.c - finding added tokens in text.
 *
 * Mirrors tokenizers 0.22.1 tokenizer/added_vocabulary.rs: an Aho-Corasick
 * automaton with MatchKind::LeftmostLongest over the token contents (special
 * tokens first, then the others), and find_matches' handling of single_word,
 * lstrip and rstrip. A byte trie walked from each candidate position gives the
 * same leftmost-longest, non-overlapping matches; the handful of tokens of a
 * real tokenizer.json makes that as fast as an automaton.
 */
#include "tokenizer/added_tokens.h"

#include <stdlib.h>
#include <string.h>

#include "tokenizer/normalize.h"
#include "tokenizer/utf8.h"

/* ---------------------------------------------------------------- trie */

static ergo_status trie_init(added_trie *t, ergo_error *err) {
    memset(t, 0, sizeof *t);
    t->cap = 64;
    t->node = malloc(t->cap * sizeof *t->node);
    if (!t->node) return ergo_fail(err, ERGO_E_NOMEM, "added tokens: out of memory");
    t->node[0] = (added_node){-1, -1, -1, 0};
    t->n = 1;
    return ERGO_OK;
}

static void trie_free(added_trie *t) {
    free(t->node);
    memset(t, 0, sizeof *t);
}

static int32_t trie_child(const added_trie *t, int32_t at, uint8_t b) {
    for (int32_t c = t->node[at].child; c >= 0; c = t->node[c].sibling)
        if (t->node[c].byte == b) return c;
    return -1;
}

/* Inserts s with token index tok; an existing pattern keeps its first token
 * (Aho-Corasick reports the lowest pattern id among equal patterns). */
static ergo_status trie_insert(added_trie *t, const char *s, size_t n, int32_t tok, int32_t *prev,
                               ergo_error *err) {
    int32_t at = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = trie_child(t, at, b);
        if (c < 0) {
            if (t->n == t->cap) {
                added_node *nn = realloc(t->node, 2 * t->cap * sizeof *nn);
                if (!nn) return ergo_fail(err, ERGO_E_NOMEM, "added tokens: out of memory");
                t->node = nn, t->cap *= 2;
            }
            c = (int32_t)t->n++;
            t->node[c] = (added_node){-1, t->node[at].child, -1, b};
            t->node[at].child = c;
        }
        at = c;
    }
    if (n) t->first[(uint8_t)s[0]] = 1;
    if (prev) *prev = t->node[at].token;
    if (t->node[at].token < 0) t->node[at].token = tok;
    return ERGO_OK;
}

/* The longest pattern starting at s[0]: token index (or -1) and its length. */
static int32_t trie_longest(const added_trie *t, const char *s, size_t n, size_t *len) {
    int32_t at = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        at = trie_child(t, at, (uint8_t)s[i]);
        if (at < 0) break;
        if (t->node[at].token >= 0) best = t->node[at].token, *len = i + 1;
    }
    return best;
}

/* ---------------------------------------------------------------- vocabulary */

void added_init(added_vocab *av) { memset(av, 0, sizeof *av); }

void added_free(added_vocab *av) {
    for (size_t i = 0; i < av->n; i++) {
        if (av->tok[i].match != av->tok[i].content) free(av->tok[i].match);
        free(av->tok[i].content);
    }
    free(av->tok);
    trie_free(&av->exact);
    trie_free(&av->raw);
    trie_free(&av->norm);
    pcre2_code_free(av->word_char);
    pcre2_code_free(av->space_char);
    memset(av, 0, sizeof *av);
}

ergo_status added_add(added_vocab *av, const char *content, size_t len, int32_t id, int special,
                      int single_word, int lstrip, int rstrip, int normalized, int nfc,
                      const char *what, ergo_error *err) {
    ergo_status st;
    if (!av->exact.node && (st = trie_init(&av->exact, err))) return st;
    if (len == 0) return ergo_fail(err, ERGO_E_FORMAT, "%s: an added token has empty content", what);
    if (av->n == av->cap) {
        size_t cap = av->cap ? av->cap * 2 : 32;
        added_token *t = realloc(av->tok, cap * sizeof *t);
        if (!t) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
        av->tok = t, av->cap = cap;
    }
    int32_t prev = -1;
    if ((st = trie_insert(&av->exact, content, len, (int32_t)av->n, &prev, err))) return st;
    if (prev >= 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: added token \"%.*s\" is listed twice", what,
                         (int)(len > 64 ? 64 : len), content);
    added_token *t = &av->tok[av->n];
    memset(t, 0, sizeof *t);
    t->content = malloc(len + 1);
    if (!t->content) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    memcpy(t->content, content, len);
    t->content[len] = 0;
    t->len = len;
    t->match = t->content;
    t->match_len = len;
    t->id = id;
    t->special = (uint8_t)special, t->single_word = (uint8_t)single_word;
    t->lstrip = (uint8_t)lstrip, t->rstrip = (uint8_t)rstrip, t->normalized = (uint8_t)normalized;
    av->n++; /* counted now so that added_free releases it on any later failure */
    if (normalized && nfc) {
        /* Normalized tokens are searched for in their normalised form. */
        tok_text norm = {0};
        if ((st = nfc_append(content, len, &norm, err))) {
            tok_text_free(&norm);
            return st;
        }
        if (norm.n == 0) return ergo_fail(err, ERGO_E_FORMAT, "%s: empty added token", what);
        t->match = norm.s;
        t->match_len = norm.n;
    }
    return ERGO_OK;
}

static pcre2_code *compile_class(const char *pat) {
    int code;
    PCRE2_SIZE off;
    return pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                         &off, NULL);
}

ergo_status added_finish(added_vocab *av, const char *what, ergo_error *err) {
    ergo_status st;
    if (!av->exact.node && (st = trie_init(&av->exact, err))) return st;
    if ((st = trie_init(&av->raw, err)) || (st = trie_init(&av->norm, err))) return st;
    int need_word = 0, need_space = 0;
    /* Pattern order: special tokens, then the others, each in file order. */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < av->n; i++) {
            const added_token *t = &av->tok[i];
            if (t->special != (pass == 0)) continue;
            added_trie *trie = t->normalized ? &av->norm : &av->raw;
            if ((st = trie_insert(trie, t->match, t->match_len, (int32_t)i, NULL, err))) return st;
            need_word |= t->single_word;
            need_space |= t->lstrip | t->rstrip;
        }
    /* Rust regex's Unicode \w and \s, which HF's find_matches uses. */
    if (need_word &&
        !(av->word_char = compile_class("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]")))
        return ergo_fail(err, ERGO_E_NOMEM, "%s: cannot compile the word-character class", what);
    if (need_space && !(av->space_char = compile_class("\\p{White_Space}")))
        return ergo_fail(err, ERGO_E_NOMEM, "%s: cannot compile the whitespace class", what);
    return ERGO_OK;
}

int32_t added_find(const added_vocab *av, const char *s, size_t n) {
    if (!av->exact.node || n == 0) return -1;
    int32_t at = 0;
    for (size_t i = 0; i < n && at >= 0; i++) at = trie_child(&av->exact, at, (uint8_t)s[i]);
    return at < 0 ? -1 : av->exact.node[at].token;
}

/* ---------------------------------------------------------------- matching */

static int char_is(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n) {
    return pcre2_match(re, (PCRE2_SPTR)s, n, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md, NULL) > 0;
}

/* Length of the UTF-8 character that ends at s[n-1]. */
static size_t last_char_len(const char *s, size_t n) {
    size_t k = 1;
    while (k < n && k < 4 && ((uint8_t)s[n - k] & 0xC0) == 0x80) k++;
    return k;
}

ergo_status added_split(const added_vocab *av, int normalized_stage, int split_special,
                        pcre2_match_data *md, const char *s, size_t n, added_fn fn, void *ctx,
                        ergo_error *err) {
    const added_trie *trie = normalized_stage ? &av->norm : &av->raw;
    if (!trie->node || trie->node[0].child < 0) return n ? fn(ctx, s, n, -1, err) : ERGO_OK;
    size_t start_offset = 0, p = 0;
    ergo_status st = ERGO_OK;
    while (p < n && st == ERGO_OK) {
        if (!trie->first[(uint8_t)s[p]]) {
            p++;
            continue;
        }
        size_t mlen = 0;
        int32_t ti = trie_longest(trie, s + p, n - p, &mlen);
        if (ti < 0) {
            p++;
            continue;
        }
        const added_token *t = &av->tok[ti];
        size_t start = p, stop = p + mlen;
        p = stop; /* the automaton resumes after the match, whatever the flags do */
        /* A skipped special token is plain text, and nothing inside it is searched again. */
        if (split_special && t->special) continue;
        if (t->single_word) {
            int word_before = start > 0 && char_is(av->word_char, md, s + start - last_char_len(s, start),
                                                   last_char_len(s, start));
            int word_after = stop < n && char_is(av->word_char, md, s + stop, n - stop);
            if (word_before || word_after) continue;
        }
        if (t->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t k = last_char_len(s, ns);
                if (!char_is(av->space_char, md, s + ns - k, k)) break;
                ns -= k;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (t->rstrip) {
            while (stop < n && char_is(av->space_char, md, s + stop, n - stop)) {
                uint32_t cp;
                stop += utf8_decode((const uint8_t *)s + stop, &cp);
            }
        }
        if (start_offset < start) st = fn(ctx, s + start_offset, start - start_offset, -1, err);
        if (st == ERGO_OK) st = fn(ctx, s + start, stop - start, t->id, err);
        start_offset = stop;
    }
    if (st == ERGO_OK && start_offset < n) st = fn(ctx, s + start_offset, n - start_offset, -1, err);
    return st;
}
