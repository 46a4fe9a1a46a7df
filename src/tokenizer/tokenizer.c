/*
 * tokenizer.c - loading tokenizer.json, encoding and decoding.
 *
 * Mirrors tokenizers 0.22.1 (tokenizer/mod.rs encode_single_sequence and decode,
 * tokenizer/serialization.rs for loading) with the configuration Qwen2/2.5-VL
 * ships: added tokens -> NFC -> Split(regex, Isolated) -> ByteLevel -> BPE, and
 * the ByteLevel decoder. Anything else a tokenizer.json may hold that would
 * change the ids or the text is refused with a message naming it. The file is
 * parsed by jansson (base/json.h: strict, duplicate keys refused); loading a
 * folder also applies its tokenizer_config.json (tokenizer_config.c).
 */
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalize.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/utf8.h"

#define MAX_TOKENIZER_JSON (256u << 20) /* 256 MiB: far above any real tokenizer.json */

struct tokenizer {
    char what[512];        /* the file, for messages */
    int nfc;               /* the normalizer is NFC (else none) */
    pretokenizer pre;      /* Split step */
    bpe_model bpe;         /* vocabulary + merges */
    added_vocab added;     /* added / special tokens */
    int32_t n_ids;         /* largest id + 1 over vocabulary and added tokens */
    int32_t *added_of_id;  /* (n_ids) index into added.tok, -1: not an added token */
    int single_pre;        /* the pre_tokenizer is one step, not a Sequence */
    tokenizer_settings settings; /* from tokenizer_config.json */
};

/* ---------------------------------------------------------------- buffers */

ergo_status tok_ids_push(tok_ids *a, int32_t id, ergo_error *err) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for %zu token ids", cap);
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = id;
    return ERGO_OK;
}

void tok_ids_free(tok_ids *a) {
    free(a->v);
    memset(a, 0, sizeof *a);
}

ergo_status tok_text_append(tok_text *t, const char *s, size_t n, ergo_error *err) {
    if (t->n + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + n + 1) cap *= 2;
        char *p = realloc(t->s, cap);
        if (!p) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for %zu bytes of text", cap);
        t->s = p, t->cap = cap;
    }
    if (n) memcpy(t->s + t->n, s, n);
    t->n += n;
    t->s[t->n] = 0;
    return ERGO_OK;
}

void tok_text_free(tok_text *t) {
    free(t->s);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------- loading */

static const char *type_of(const json_t *obj) {
    const json_t *t = json_object_get(obj, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

static ergo_status load_normalizer(tokenizer *tok, const json_t *n, ergo_error *err) {
    if (!n || json_is_null(n)) return ERGO_OK;
    const char *type = type_of(n);
    if (type && !strcmp(type, "NFC")) {
        tok->nfc = 1;
        return ERGO_OK;
    }
    /* A Sequence holding only NFC is NFC. */
    const json_t *list = json_object_get(n, "normalizers");
    if (type && !strcmp(type, "Sequence") && json_is_array(list) && json_array_size(list) <= 1) {
        if (json_array_size(list) == 0) return ERGO_OK;
        return load_normalizer(tok, json_array_get(list, 0), err);
    }
    return ergo_fail(err, ERGO_E_UNSUPPORTED,
                     "%s: normalizer %s is not supported (ergo implements NFC)", tok->what,
                     type ? type : "(without a type)");
}

/* GPT-2's pre-tokenizer regex, which ByteLevel applies when use_regex is true. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static ergo_status load_bytelevel(tokenizer *tok, const json_t *bl, int *has_split,
                                  ergo_error *err) {
    int prefix = 0, use_regex = 1;
    ergo_status st;
    if ((st = json_opt_bool(bl, "add_prefix_space", &prefix, tok->what, err)) ||
        (st = json_opt_bool(bl, "use_regex", &use_regex, tok->what, err)))
        return st;
    if (prefix)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: ByteLevel pre-tokenizer with add_prefix_space is not supported",
                         tok->what);
    if (use_regex) {
        if (*has_split)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "%s: a Split step and a ByteLevel regex together are not supported",
                             tok->what);
        *has_split = 1;
        return pretokenize_compile(&tok->pre, gpt2_pattern, sizeof gpt2_pattern - 1, 0, tok->what,
                                   err);
    }
    return ERGO_OK;
}

static ergo_status load_split(tokenizer *tok, const json_t *sp, int *has_split, ergo_error *err) {
    const json_t *pat = json_object_get(sp, "pattern");
    const json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
    const json_t *beh = json_object_get(sp, "behavior");
    int invert = 0;
    ergo_status st = json_opt_bool(sp, "invert", &invert, tok->what, err);
    if (st) return st;
    if (!json_is_string(re) && !json_is_string(lit))
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: Split pre-tokenizer needs a pattern {\"Regex\": ...} or "
                         "{\"String\": ...}",
                         tok->what);
    if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") || invert)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: Split pre-tokenizer with behavior %s%s is not supported (ergo "
                         "implements Isolated, not inverted)",
                         tok->what, json_is_string(beh) ? json_string_value(beh) : "(missing)",
                         invert ? ", inverted" : "");
    if (*has_split)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: more than one Split pre-tokenizer is not supported", tok->what);
    *has_split = 1;
    const json_t *p = re ? re : lit;
    return pretokenize_compile(&tok->pre, json_string_value(p), json_string_length(p), re == NULL,
                               tok->what, err);
}

static ergo_status load_pre_tokenizer(tokenizer *tok, const json_t *pt, ergo_error *err) {
    const char *type = pt ? type_of(pt) : NULL;
    int has_split = 0, has_bytelevel = 0;
    ergo_status st = ERGO_OK;
    const json_t *steps = NULL;
    json_t *single = NULL;
    if (type && !strcmp(type, "Sequence")) {
        steps = json_object_get(pt, "pretokenizers");
        if (!json_is_array(steps))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: pre_tokenizer Sequence without a list",
                             tok->what);
    } else if (type) {
        tok->single_pre = 1;
        single = json_array();
        if (!single || json_array_append(single, (json_t *)pt))
            return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        steps = single;
    }
    size_t i;
    const json_t *step;
    json_array_foreach(steps, i, step) {
        const char *t = type_of(step);
        if (t && !strcmp(t, "Split") && !has_bytelevel) {
            st = load_split(tok, step, &has_split, err);
        } else if (t && !strcmp(t, "ByteLevel") && !has_bytelevel) {
            has_bytelevel = 1;
            st = load_bytelevel(tok, step, &has_split, err);
        } else {
            st = ergo_fail(err, ERGO_E_UNSUPPORTED,
                           "%s: pre-tokenizer step %s is not supported here (ergo implements "
                           "Split then ByteLevel)",
                           tok->what, t ? t : "(without a type)");
        }
        if (st) break;
    }
    json_decref(single);
    if (st) return st;
    if (!has_bytelevel)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: the pre-tokenizer has no ByteLevel step (ergo implements byte-level "
                         "BPE only)",
                         tok->what);
    return ERGO_OK;
}

static ergo_status load_post_and_decoder(tokenizer *tok, const json_t *root, ergo_error *err) {
    const json_t *pp = json_object_get(root, "post_processor");
    /* The ByteLevel post-processor only adjusts offsets; anything else adds ids. */
    if (pp && !json_is_null(pp) && (!type_of(pp) || strcmp(type_of(pp), "ByteLevel")))
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: post_processor %s is not supported",
                         tok->what, type_of(pp) ? type_of(pp) : "(without a type)");
    const json_t *dec = json_object_get(root, "decoder");
    if (!dec || !type_of(dec) || strcmp(type_of(dec), "ByteLevel"))
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: decoder %s is not supported (ergo implements ByteLevel)", tok->what,
                         dec && type_of(dec) ? type_of(dec) : "(missing)");
    const json_t *tr = json_object_get(root, "truncation"), *pad = json_object_get(root, "padding");
    if ((tr && !json_is_null(tr)) || (pad && !json_is_null(pad)))
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: truncation/padding settings are not supported",
                         tok->what);
    return ERGO_OK;
}

/* Splits a legacy "a b" merge at its only space, as tokenizers does (exactly two parts). */
static ergo_status merge_parts(const json_t *m, size_t rank, const char **a, size_t *alen,
                               const char **b, size_t *blen, const char *what, ergo_error *err) {
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: merge %zu \"%.*s\" is not two tokens separated by one space", what,
                             rank, (int)(n > 64 ? 64 : n), s);
        *a = s, *alen = (size_t)(sp - s), *b = sp + 1, *blen = n - *alen - 1;
        return ERGO_OK;
    }
    const json_t *x = json_array_get(m, 0), *y = json_array_get(m, 1);
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(x) && json_is_string(y)) {
        *a = json_string_value(x), *alen = json_string_length(x);
        *b = json_string_value(y), *blen = json_string_length(y);
        return ERGO_OK;
    }
    return ergo_fail(err, ERGO_E_FORMAT,
                     "%s: merge %zu is neither a \"a b\" string nor a [\"a\", \"b\"] pair", what,
                     rank);
}

/* model.vocab, {"token": id, ...}, in file order (jansson keeps insertion order). */
static ergo_status load_vocab(tokenizer *tok, json_t *vocab, ergo_error *err) {
    const char *key;
    size_t key_len;
    json_t *id;
    json_object_keylen_foreach(vocab, key, key_len, id) {
        if (!json_is_integer(id))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: vocabulary entry \"%.64s\" has no integer id",
                             tok->what, key);
        ergo_status st = bpe_add_token(&tok->bpe, key, key_len, (int64_t)json_integer_value(id),
                                       tok->what, err);
        if (st != ERGO_OK) return st;
    }
    return ERGO_OK;
}

static ergo_status load_model(tokenizer *tok, const json_t *model, ergo_error *err) {
    const char *what = tok->what;
    if (!json_is_object(model))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: key `model' is missing or not an object", what);
    /* The vocabulary first: its entries are checked before anything else in the file. */
    json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    ergo_status st;
    if (json_is_object(vocab) && (st = load_vocab(tok, vocab, err))) return st;
    const char *type = type_of(model);
    if (json_object_get(model, "type") && (!type || strcmp(type, "BPE")))
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: model type %s is not supported (ergo implements BPE)", what,
                         type ? type : "(not a string)");
    if (!json_is_object(vocab))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: model.vocab is missing or not an object", what);
    if (!json_is_array(merges))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: model.merges is missing or not a list", what);

    /* Options that change results and that ergo does not implement. */
    const json_t *drop = json_object_get(model, "dropout");
    if (drop && !json_is_null(drop) && !(json_is_number(drop) && json_number_value(drop) == 0))
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: BPE dropout is not supported", what);
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const json_t *v = json_object_get(model, affix[k]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: BPE %s is not supported", what,
                             affix[k]);
    }
    int fuse_unk = 0, byte_fallback = 0, ignore_merges = 0;
    if ((st = json_opt_bool(model, "fuse_unk", &fuse_unk, what, err)) ||
        (st = json_opt_bool(model, "byte_fallback", &byte_fallback, what, err)) ||
        (st = json_opt_bool(model, "ignore_merges", &ignore_merges, what, err)))
        return st;
    const json_t *unk = json_object_get(model, "unk_token");
    if (unk && !json_is_null(unk) && !json_is_string(unk))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: model.unk_token is not a string", what);

    size_t n_merges = json_array_size(merges);
    if ((st = bpe_index_vocab(&tok->bpe, n_merges, what, err))) return st;
    int legacy = n_merges > 0 && json_is_string(json_array_get(merges, 0));
    for (size_t i = 0; i < n_merges; i++) {
        const json_t *m = json_array_get(merges, i);
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        /* tokenizers accepts a list of one form only. */
        if (i > 0 && json_is_string(m) != legacy)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: merges mix \"a b\" strings and [\"a\", \"b\"] pairs", what);
        if ((st = merge_parts(m, i, &a, &alen, &b, &blen, what, err)) ||
            (st = bpe_add_merge(&tok->bpe, a, alen, b, blen, i, what, err)))
            return st;
    }
    return bpe_set_options(&tok->bpe, json_is_string(unk) ? json_string_value(unk) : NULL,
                           json_is_string(unk) ? json_string_length(unk) : 0, fuse_unk,
                           byte_fallback, ignore_merges, what, err);
}

/* tokenizers does not take an added token's id from the file: it gives the
 * token its vocabulary id, or the next free id (serialization.rs, then
 * AddedVocabulary::add_tokens), and only warns when that differs from the file.
 * We refuse such a file rather than silently renumber. */
static ergo_status load_added(tokenizer *tok, const json_t *list, ergo_error *err) {
    const char *what = tok->what;
    if (!list || json_is_null(list)) return added_finish(&tok->added, what, err);
    if (!json_is_array(list))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: added_tokens is not a list", what);
    int64_t max_added = -1;
    int64_t vocab_size = (int64_t)tok->bpe.n_vocab; /* entries, not largest id + 1 */
    size_t i;
    const json_t *t;
    ergo_status st;
    json_array_foreach(list, i, t) {
        int64_t id;
        const char *content;
        int special = 0, single_word = 0, lstrip = 0, rstrip = 0, normalized = 1;
        if (!json_is_object(t))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: added_tokens[%zu] is not an object", what, i);
        if ((st = json_get_int(t, "id", &id, what, err)) ||
            (st = json_get_string(t, "content", &content, what, err)) ||
            (st = json_opt_bool(t, "special", &special, what, err)) ||
            (st = json_opt_bool(t, "single_word", &single_word, what, err)) ||
            (st = json_opt_bool(t, "lstrip", &lstrip, what, err)) ||
            (st = json_opt_bool(t, "rstrip", &rstrip, what, err)) ||
            (st = json_opt_bool(t, "normalized", &normalized, what, err)))
            return st;
        size_t len = json_string_length(json_object_get(t, "content"));
        int64_t expect = bpe_lookup(&tok->bpe, content, len);
        if (expect < 0)
            expect = max_added < 0 ? vocab_size
                     : (max_added >= vocab_size || vocab_size == 0) ? max_added + 1
                                                                     : vocab_size;
        if (id != expect)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "%s: added token \"%.64s\" has id %lld, but tokenizers would number "
                             "it %lld",
                             what, content, (long long)id, (long long)expect);
        if (id >= BPE_MAX_ID)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: added token id %lld is out of range", what,
                             (long long)id);
        if (id > max_added) max_added = id;
        if ((st = added_add(&tok->added, content, len, (int32_t)id, special, single_word, lstrip,
                            rstrip, normalized, tok->nfc, what, err)))
            return st;
    }
    return added_finish(&tok->added, what, err);
}

static ergo_status load_root(tokenizer *tok, const json_t *root, ergo_error *err) {
    if (!json_is_object(root))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", tok->what);
    const json_t *ver = json_object_get(root, "version");
    if (ver && (!json_is_string(ver) || strcmp(json_string_value(ver), "1.0")))
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: unknown tokenizer.json version (want 1.0)",
                         tok->what);
    ergo_status st;
    if ((st = load_model(tok, json_object_get(root, "model"), err)) ||
        (st = load_normalizer(tok, json_object_get(root, "normalizer"), err)) ||
        (st = load_pre_tokenizer(tok, json_object_get(root, "pre_tokenizer"), err)) ||
        (st = load_post_and_decoder(tok, root, err)) ||
        (st = load_added(tok, json_object_get(root, "added_tokens"), err)))
        return st;
    tok->n_ids = tok->bpe.n_ids;
    for (size_t i = 0; i < tok->added.n; i++)
        if (tok->added.tok[i].id + 1 > tok->n_ids) tok->n_ids = tok->added.tok[i].id + 1;
    tok->added_of_id = malloc((tok->n_ids ? (size_t)tok->n_ids : 1) * sizeof *tok->added_of_id);
    if (!tok->added_of_id) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", tok->what);
    for (int32_t i = 0; i < tok->n_ids; i++) tok->added_of_id[i] = -1;
    for (size_t i = 0; i < tok->added.n; i++) tok->added_of_id[tok->added.tok[i].id] = (int32_t)i;
    return ERGO_OK;
}

ergo_status tokenizer_load_bytes(tokenizer **out, const char *json, size_t len, const char *what,
                                 ergo_error *err) {
    *out = NULL;
    tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    snprintf(tok->what, sizeof tok->what, "%s", what);
    tokconfig_defaults(&tok->settings);
    bpe_init(&tok->bpe);
    added_init(&tok->added);
    json_t *root = json_load_bytes(json, len, what, err);
    ergo_status st = root ? load_root(tok, root, err) : ERGO_E_FORMAT;
    json_decref(root); /* the tokenizer keeps its own copies of everything it uses */
    if (st != ERGO_OK) {
        tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return ERGO_OK;
}

ergo_status tokenizer_load_bytes_config(tokenizer **out, const char *json, size_t len,
                                        const char *config, size_t config_len, const char *what,
                                        ergo_error *err) {
    tokenizer *tok;
    ergo_status st = tokenizer_load_bytes(&tok, json, len, what, err);
    if (st == ERGO_OK && config &&
        (st = tokconfig_apply(config, config_len, what, NULL, &tok->added, tok->single_pre,
                              &tok->settings, err)))
        tokenizer_free(tok), tok = NULL;
    *out = tok;
    return st;
}

ergo_status tokenizer_load_file(tokenizer **out, const char *path, ergo_error *err) {
    *out = NULL;
    char *buf;
    size_t n;
    ergo_status st = file_read_all(path, MAX_TOKENIZER_JSON, &buf, &n, err);
    if (st != ERGO_OK) return st;
    st = tokenizer_load_bytes(out, buf, n, path, err);
    free(buf);
    return st;
}

/* dir/tokenizer_config.json, when there is one, over the loaded tokenizer.json. */
static ergo_status load_config(tokenizer *tok, const char *dir, ergo_error *err) {
    char path[4096];
    ergo_status st = path_join(path, sizeof path, dir, "tokenizer_config.json", err);
    if (st != ERGO_OK || !file_exists(path)) return st;
    char *buf;
    size_t n;
    if ((st = file_read_all(path, MAX_TOKENIZER_JSON, &buf, &n, err))) return st;
    st = tokconfig_apply(buf, n, path, dir, &tok->added, tok->single_pre, &tok->settings, err);
    free(buf);
    return st;
}

ergo_status tokenizer_load(tokenizer **out, const char *dir, ergo_error *err) {
    *out = NULL;
    char path[4096];
    ergo_status st = path_join(path, sizeof path, dir, "tokenizer.json", err);
    if (st != ERGO_OK) return st;
    if (!dir_exists(dir)) return ergo_fail(err, ERGO_E_IO, "%s: no such directory", dir);
    if (!file_exists(path)) return ergo_fail(err, ERGO_E_IO, "%s: no such file", path);
    tokenizer *tok;
    if ((st = tokenizer_load_file(&tok, path, err))) return st;
    if ((st = load_config(tok, dir, err))) {
        tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return ERGO_OK;
}

void tokenizer_free(tokenizer *tok) {
    if (!tok) return;
    pretokenize_free(&tok->pre);
    bpe_free(&tok->bpe);
    added_free(&tok->added);
    free(tok->added_of_id);
    free(tok);
}

/* ---------------------------------------------------------------- lookups */

int32_t tokenizer_n_ids(const tokenizer *tok) { return tok->n_ids; }

const tokenizer_settings *tokenizer_get_settings(const tokenizer *tok) { return &tok->settings; }

int32_t tokenizer_token_id(const tokenizer *tok, const char *text, size_t len) {
    int32_t a = added_find(&tok->added, text, len);
    return a >= 0 ? tok->added.tok[a].id : bpe_lookup(&tok->bpe, text, len);
}

const char *tokenizer_token_text(const tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_ids) return NULL;
    int32_t a = tok->added_of_id[id];
    if (a >= 0) {
        *len = tok->added.tok[a].len;
        return tok->added.tok[a].content;
    }
    if (id >= tok->bpe.n_ids || tok->bpe.text[id].len == UINT32_MAX) return NULL;
    *len = tok->bpe.text[id].len;
    return tok->bpe.pool + tok->bpe.text[id].off;
}

int tokenizer_is_special(const tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids && tok->added_of_id[id] >= 0 &&
           tok->added.tok[tok->added_of_id[id]].special;
}

/* ---------------------------------------------------------------- encoding */

/* Long texts repeat their words: a per-call cache of word -> ids (HF keeps a
 * similar one in the model) skips most BPE work. Per call, so the tokenizer
 * itself stays immutable and shareable. */
#define CACHE_MIN_TEXT 4096 /* shorter texts are not worth the table */
#define CACHE_MAX_WORD 48   /* bytes; longer words are rare and not cached */

typedef struct cache_slot {
    uint64_t hash;    /* 0 = empty */
    uint32_t key_off; /* word bytes in word_cache.keys */
    uint32_t ids_off; /* its ids in word_cache.ids */
    uint16_t key_len, n_ids;
} cache_slot;

typedef struct word_cache {
    cache_slot *slot; /* (mask + 1), NULL when the cache is off */
    size_t mask, used;
    tok_text keys;
    tok_ids ids;
} word_cache;

typedef struct encode_ctx {
    const tokenizer *tok;
    int split_special;    /* special tokens in the text stay text */
    tok_ids *ids;
    pcre2_match_data *md;
    bpe_scratch bpe;
    tok_text norm;
    word_cache cache;
} encode_ctx;

static uint64_t word_hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a; never 0 for the short words we cache */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h | 1;
}

static ergo_status on_word(void *vctx, const char *s, size_t n, ergo_error *err) {
    encode_ctx *c = vctx;
    word_cache *wc = &c->cache;
    if (!wc->slot || n > CACHE_MAX_WORD)
        return bpe_encode_word(&c->tok->bpe, (const uint8_t *)s, n, &c->bpe, c->ids, err);
    uint64_t h = word_hash(s, n);
    size_t i = h & wc->mask;
    for (; wc->slot[i].hash; i = (i + 1) & wc->mask) {
        const cache_slot *e = &wc->slot[i];
        if (e->hash == h && e->key_len == n && memcmp(wc->keys.s + e->key_off, s, n) == 0) {
            for (uint16_t k = 0; k < e->n_ids; k++) {
                ergo_status st = tok_ids_push(c->ids, wc->ids.v[e->ids_off + k], err);
                if (st) return st;
            }
            return ERGO_OK;
        }
    }
    size_t start = c->ids->n;
    ergo_status st = bpe_encode_word(&c->tok->bpe, (const uint8_t *)s, n, &c->bpe, c->ids, err);
    if (st || 2 * (wc->used + 1) > wc->mask + 1 || wc->keys.n > UINT32_MAX / 2) return st;
    cache_slot e = {h, (uint32_t)wc->keys.n, (uint32_t)wc->ids.n, (uint16_t)n,
                    (uint16_t)(c->ids->n - start)};
    if ((st = tok_text_append(&wc->keys, s, n, err))) return st;
    for (size_t k = start; k < c->ids->n; k++)
        if ((st = tok_ids_push(&wc->ids, c->ids->v[k], err))) return st;
    wc->slot[i] = e;
    wc->used++;
    return ERGO_OK;
}

static ergo_status on_normalized_piece(void *vctx, const char *s, size_t n, int32_t id,
                                       ergo_error *err) {
    encode_ctx *c = vctx;
    if (id >= 0) return tok_ids_push(c->ids, id, err);
    return pretokenize_split(&c->tok->pre, c->md, s, n, on_word, c, err);
}

static ergo_status on_raw_piece(void *vctx, const char *s, size_t n, int32_t id, ergo_error *err) {
    encode_ctx *c = vctx;
    if (id >= 0) return tok_ids_push(c->ids, id, err);
    const char *t = s;
    size_t tn = n;
    if (c->tok->nfc) {
        c->norm.n = 0;
        ergo_status st = nfc_append(s, n, &c->norm, err);
        if (st != ERGO_OK) return st;
        t = c->norm.s ? c->norm.s : "", tn = c->norm.n;
    }
    return added_split(&c->tok->added, 1, c->split_special, c->md, t, tn, on_normalized_piece,
                       c, err);
}

ergo_status tokenizer_encode(const tokenizer *tok, const char *text, size_t len, tok_ids *ids,
                             ergo_error *err) {
    return tokenizer_encode_split(tok, text, len, tok->settings.split_special_tokens, ids, err);
}

ergo_status tokenizer_encode_split(const tokenizer *tok, const char *text, size_t len,
                                   int split_special, tok_ids *ids, ergo_error *err) {
    size_t bad = utf8_first_invalid((const uint8_t *)text, len);
    if (bad != len) return ergo_fail(err, ERGO_E_ARG, "invalid UTF-8 at byte %zu", bad);
    encode_ctx c = {.tok = tok, .split_special = split_special, .ids = ids};
    c.md = pcre2_match_data_create(1, NULL);
    if (!c.md) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (len >= CACHE_MIN_TEXT) {
        size_t cap = 1024;
        while (cap < len / 16 && cap < ((size_t)1 << 16)) cap <<= 1;
        c.cache.slot = calloc(cap, sizeof *c.cache.slot); /* no cache if this fails */
        c.cache.mask = cap - 1;
    }
    /* The raw-text pass: added tokens first, the gaps are normalised and split. */
    ergo_status st = added_split(&tok->added, 0, split_special, c.md, text, len, on_raw_piece,
                                 &c, err);
    pcre2_match_data_free(c.md);
    bpe_scratch_free(&c.bpe);
    tok_text_free(&c.norm);
    free(c.cache.slot);
    tok_text_free(&c.cache.keys);
    tok_ids_free(&c.cache.ids);
    return st;
}

/* ---------------------------------------------------------------- decoding */

/* The ByteLevel decoder's bytes for one token: each character back to its byte;
 * a token holding any character outside the byte map keeps its UTF-8 text as is
 * (decoders/byte_level.rs decode_chain). Returns 0 for an unknown id. */
static int token_bytes(const tokenizer *tok, int32_t id, int skip_special, tok_text *out,
                       ergo_error *err, ergo_status *st) {
    size_t len;
    const char *s = tokenizer_token_text(tok, id, &len);
    *st = ERGO_OK;
    if (!s) return 0;
    if (skip_special && tokenizer_is_special(tok, id)) return 1;
    size_t start = out->n;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i += utf8_decode((const uint8_t *)s + i, &cp);
        int b = bpe_char_byte(cp);
        if (b < 0) {
            out->n = start; /* this token falls back to its raw text */
            *st = tok_text_append(out, s, len, err);
            return 1;
        }
        char c = (char)b;
        if ((*st = tok_text_append(out, &c, 1, err))) return 1;
    }
    return 1;
}

static ergo_status unknown_id(int32_t id, const tokenizer *tok, ergo_error *err) {
    return ergo_fail(err, ERGO_E_ARG, "token id %d is not in the vocabulary (ids 0..%d)", id,
                     tok->n_ids - 1);
}

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* Appends bytes[0..n) as from_utf8_lossy would, except that a trailing proper
 * prefix of a character is left unconsumed when `hold` (streaming). Returns the
 * number of bytes consumed. */
static size_t lossy_append(const uint8_t *b, size_t n, int hold, tok_text *out, ergo_error *err,
                           ergo_status *st) {
    size_t i = 0, run = 0; /* run: start of pending valid bytes */
    *st = ERGO_OK;
    while (i < n) {
        size_t len;
        utf8_unit u = b[i] < 0x80 ? (len = 1, UTF8_CHAR) : utf8_next_unit(b + i, n - i, &len);
        if (u == UTF8_CHAR) {
            i += len;
            continue;
        }
        if ((*st = tok_text_append(out, (const char *)b + run, i - run, err))) return i;
        if (u == UTF8_TRUNCATED && hold) return i;
        if ((*st = tok_text_append(out, replacement, 3, err))) return i;
        i += len;
        run = i;
    }
    *st = tok_text_append(out, (const char *)b + run, i - run, err);
    return i;
}

ergo_status tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                             tok_text *out, ergo_error *err) {
    tok_text bytes = {0};
    ergo_status st = ERGO_OK;
    for (size_t i = 0; i < n && st == ERGO_OK; i++)
        if (!token_bytes(tok, ids[i], skip_special, &bytes, err, &st)) st = unknown_id(ids[i], tok, err);
    if (st == ERGO_OK) {
        size_t start = out->n;
        if (!out->s && (st = tok_text_append(out, "", 0, err))) goto done;
        lossy_append((const uint8_t *)bytes.s, bytes.n, 0, out, err, &st);
        if (st == ERGO_OK && tok->settings.clean_up_tokenization_spaces) tokconfig_clean_up(out, start);
    }
done:
    tok_text_free(&bytes);
    return st;
}

void tokenizer_stream_init(tokenizer_stream *s, const tokenizer *tok, int skip_special) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->skip_special = skip_special;
}

/* Emits the held text that the clean-up of later text cannot change (all of it
 * when `all`), cleaned up. */
static ergo_status flush_held(tokenizer_stream *s, int all, tok_text *out, ergo_error *err) {
    size_t cut = all ? s->held.n : tokconfig_clean_up_stable(s->held.s, s->held.n);
    if (cut == 0) return ERGO_OK;
    size_t start = out->n;
    ergo_status st = tok_text_append(out, s->held.s, cut, err);
    if (st) return st;
    tokconfig_clean_up(out, start);
    memmove(s->held.s, s->held.s + cut, s->held.n - cut);
    s->held.n -= cut;
    s->held.s[s->held.n] = 0;
    return ERGO_OK;
}

ergo_status tokenizer_stream_push(tokenizer_stream *s, int32_t id, tok_text *out, ergo_error *err) {
    int clean = s->tok->settings.clean_up_tokenization_spaces;
    tok_text *dst = clean ? &s->held : out;
    tok_text bytes = {0};
    ergo_status st = tok_text_append(&bytes, (const char *)s->pending, s->n_pending, err);
    if (st == ERGO_OK && !token_bytes(s->tok, id, s->skip_special, &bytes, err, &st))
        st = unknown_id(id, s->tok, err);
    if (st == ERGO_OK && (st = tok_text_append(out, "", 0, err)) == ERGO_OK &&
        (st = tok_text_append(dst, "", 0, err)) == ERGO_OK) {
        size_t used = lossy_append((const uint8_t *)bytes.s, bytes.n, 1, dst, err, &st);
        /* What is left is a proper prefix of a character: at most 3 bytes. */
        s->n_pending = st == ERGO_OK ? bytes.n - used : 0;
        if (s->n_pending) memcpy(s->pending, bytes.s + used, s->n_pending);
    }
    if (st == ERGO_OK && clean) st = flush_held(s, 0, out, err);
    tok_text_free(&bytes);
    return st;
}

ergo_status tokenizer_stream_finish(tokenizer_stream *s, tok_text *out, ergo_error *err) {
    ergo_status st = tok_text_append(out, "", 0, err);
    tok_text *dst = s->tok->settings.clean_up_tokenization_spaces ? &s->held : out;
    if (st == ERGO_OK && s->n_pending) st = tok_text_append(dst, replacement, 3, err);
    if (st == ERGO_OK && dst != out) st = flush_held(s, 1, out, err);
    tokenizer_stream_free(s);
    return st;
}

void tokenizer_stream_free(tokenizer_stream *s) {
    tok_text_free(&s->held);
    s->n_pending = 0;
}
