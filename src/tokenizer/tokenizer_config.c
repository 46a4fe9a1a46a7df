/*
 * tokenizer_config.c - tokenizer_config.json (see tokenizer_config.h).
 *
 * Mirrors transformers 4.56.2 loading Qwen2TokenizerFast from a folder:
 * _from_pretrained builds added_tokens_decoder (from the config, else from
 * tokenizer.json), and PreTrainedTokenizerFast.__init__ then re-adds every one of
 * those tokens to the backend, with `special` set when the token's text is one of
 * the special tokens the config names (its hash check compares against the ids,
 * not the tokens, so it never skips one). Re-adding a token with the flags it
 * already has changes nothing; anything else would change the ids, so we refuse it.
 */
#include "tokenizer/tokenizer_config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"

/* Qwen2TokenizerFast's unk_token, eos_token and pad_token when the config omits them. */
static const char default_special[] = "<|endoftext|>";

void tokconfig_defaults(tokenizer_settings *s) {
    memset(s, 0, sizeof *s);
    s->model_max_length = INT64_MAX;
}

/* ---------------------------------------------------------------- clean-up */

/* tokenization_utils_base.py clean_up_tokenization: ten str.replace calls, in order. */
static const struct {
    const char *from, *to;
} cleanups[] = {{" .", "."},     {" ?", "?"},     {" !", "!"},     {" ,", ","},
                {" ' ", "'"},    {" n't", "n't"}, {" 'm", "'m"},   {" 's", "'s"},
                {" 've", "'ve"}, {" 're", "'re"}};

/* Every byte of the patterns above. */
static const char cleanup_bytes[] = " .?!,'ntmsver";

void tokconfig_clean_up(tok_text *t, size_t from) {
    for (size_t r = 0; r < sizeof cleanups / sizeof cleanups[0]; r++) {
        const char *pat = cleanups[r].from, *rep = cleanups[r].to;
        size_t pn = strlen(pat), rn = strlen(rep), w = from;
        /* Left to right, non-overlapping, as str.replace; the text only shrinks. */
        for (size_t i = from; i < t->n;) {
            if (t->n - i >= pn && memcmp(t->s + i, pat, pn) == 0) {
                memcpy(t->s + w, rep, rn);
                w += rn, i += pn;
            } else {
                t->s[w++] = t->s[i++];
            }
        }
        t->n = w;
    }
    if (t->s) t->s[t->n] = 0;
}

/* A match never contains a byte outside cleanup_bytes, so after such a byte the
 * replacements of every pass restart from scratch: cleaning the text up to it
 * and the rest separately gives the same as cleaning the whole. (Bytes >= 0x80
 * qualify, and end a character only at its last byte, so the cut is on a
 * character boundary.) */
size_t tokconfig_clean_up_stable(const char *s, size_t n) {
    while (n > 0 && memchr(cleanup_bytes, s[n - 1], sizeof cleanup_bytes - 1)) n--;
    return n;
}

/* ---------------------------------------------------------------- special tokens */

/* AddedToken(**d): the flags given, -1 where absent. */
typedef struct cfg_token {
    const char *content;
    size_t len;
    int single_word, lstrip, rstrip, normalized, special;
} cfg_token;

typedef struct reader {
    const char *what;
    added_vocab *added;
    uint8_t *named;  /* (added->n) the config names the token as a special token */
    uint8_t *listed; /* (added->n) the token is in the config's added_tokens_decoder */
    ergo_error *err;
} reader;

static ergo_status read_token_dict(reader *r, const json_t *d, int typed, const char *label,
                                   cfg_token *t) {
    static const char *const flags[] = {"single_word", "lstrip", "rstrip", "normalized", "special"};
    int *out[] = {&t->single_word, &t->lstrip, &t->rstrip, &t->normalized, &t->special};
    const char *key;
    const json_t *v;
    const json_t *content = json_object_get(d, "content");
    if (!json_is_string(content))
        return ergo_fail(r->err, ERGO_E_FORMAT, "%s: %s has no \"content\" string", r->what, label);
    t->content = json_string_value(content);
    t->len = json_string_length(content);
    for (int k = 0; k < 5; k++) *out[k] = -1;
    json_object_foreach((json_t *)d, key, v) {
        int k = 0;
        while (k < 5 && strcmp(key, flags[k])) k++;
        if (k < 5) {
            if (!json_is_boolean(v))
                return ergo_fail(r->err, ERGO_E_FORMAT, "%s: %s: `%s' is not a boolean", r->what,
                                 label, key);
            *out[k] = json_is_true(v);
        } else if (typed && !strcmp(key, "__type")) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "AddedToken"))
                return ergo_fail(r->err, ERGO_E_UNSUPPORTED, "%s: %s: __type is not AddedToken",
                                 r->what, label);
        } else if (strcmp(key, "content")) {
            /* AddedToken(**d) raises on a key it does not take. */
            return ergo_fail(r->err, ERGO_E_FORMAT, "%s: %s: unknown key `%s'", r->what, label,
                             key);
        }
    }
    if (typed && !json_object_get(d, "__type"))
        return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                         "%s: %s is a dict without \"__type\": \"AddedToken\" (transformers "
                         "refuses it)",
                         r->what, label);
    return ERGO_OK;
}

/* The index of the added token with this text, or a refusal: transformers would
 * add the text as a new token (or promote a vocabulary entry to an added token). */
static ergo_status find_added(reader *r, const char *label, const char *s, size_t n,
                              int32_t *idx) {
    *idx = added_find(r->added, s, n);
    if (*idx < 0)
        return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                         "%s: %s \"%.*s\" is not an added token of tokenizer.json (transformers "
                         "would add it as a new token; ergo does not)",
                         r->what, label, (int)(n > 64 ? 64 : n), s);
    return ERGO_OK;
}

/* Compares the flags a re-added token ends with to those it has in tokenizer.json. */
static ergo_status same_flags(reader *r, const char *label, const cfg_token *c, int32_t idx) {
    const added_token *t = &r->added->tok[idx];
    int special = c->special > 0 || r->named[idx];
    /* An AddedToken's unset `normalized` follows `special`, as tokenizers does. */
    int normalized = c->normalized >= 0 ? c->normalized : !special;
    if ((c->single_word > 0) != t->single_word || (c->lstrip > 0) != t->lstrip ||
        (c->rstrip > 0) != t->rstrip || normalized != t->normalized ||
        special != (t->special || r->named[idx]))
        return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                         "%s: %s \"%.64s\" has other flags than in tokenizer.json (transformers "
                         "would change the token; ergo does not)",
                         r->what, label, t->content);
    return ERGO_OK;
}

/* One special-token value: a string, an AddedToken dict or null. `strict`: a dict
 * is re-added with its own flags (additional_special_tokens, extra_special_tokens);
 * otherwise _from_pretrained swaps it for tokenizer.json's token of that text. */
static ergo_status read_special(reader *r, const json_t *v, const char *label, int strict,
                                cfg_token *strict_out, int32_t *strict_idx) {
    int32_t idx;
    ergo_status st;
    *strict_idx = -1;
    if (json_is_null(v)) return ERGO_OK;
    if (json_is_string(v)) {
        if ((st = find_added(r, label, json_string_value(v), json_string_length(v), &idx)))
            return st;
        r->named[idx] = 1;
        return ERGO_OK;
    }
    if (json_is_object(v)) {
        cfg_token c;
        if ((st = read_token_dict(r, v, 1, label, &c)) ||
            (st = find_added(r, label, c.content, c.len, &idx)))
            return st;
        r->named[idx] = 1;
        if (strict) *strict_out = c, *strict_idx = idx;
        return ERGO_OK;
    }
    return ergo_fail(r->err, ERGO_E_FORMAT, "%s: %s is neither a string nor an AddedToken",
                     r->what, label);
}

/* Strict dicts are checked once every name is known (their `special` depends on it). */
typedef struct strict_list {
    cfg_token tok[64];
    int32_t idx[64];
    char label[64][96];
    size_t n;
} strict_list;

static ergo_status read_one(reader *r, const json_t *v, const char *label, int strict,
                            strict_list *sl) {
    cfg_token c;
    int32_t idx;
    ergo_status st = read_special(r, v, label, strict, &c, &idx);
    if (st || idx < 0) return st;
    if (sl->n == sizeof sl->idx / sizeof sl->idx[0])
        return ergo_fail(r->err, ERGO_E_LIMIT, "%s: too many AddedToken special tokens", r->what);
    sl->tok[sl->n] = c, sl->idx[sl->n] = idx;
    snprintf(sl->label[sl->n], sizeof sl->label[0], "%s", label);
    sl->n++;
    return ERGO_OK;
}

static ergo_status read_specials(reader *r, const json_t *root) {
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};
    strict_list *sl = calloc(1, sizeof *sl);
    if (!sl) return ergo_fail(r->err, ERGO_E_NOMEM, "%s: out of memory", r->what);
    ergo_status st = ERGO_OK;
    char label[96];
    for (size_t k = 0; k < sizeof keys / sizeof keys[0] && !st; k++) {
        const json_t *v = json_object_get(root, keys[k]);
        if (v) {
            st = read_one(r, v, keys[k], 0, sl);
        } else if (!strcmp(keys[k], "unk_token") || !strcmp(keys[k], "eos_token") ||
                   !strcmp(keys[k], "pad_token")) {
            int32_t idx;
            snprintf(label, sizeof label, "%s (Qwen2TokenizerFast's default)", keys[k]);
            st = find_added(r, label, default_special, sizeof default_special - 1, &idx);
            if (!st) r->named[idx] = 1;
        }
    }
    const json_t *list = json_object_get(root, "additional_special_tokens");
    if (!st && list && !json_is_null(list)) {
        size_t i;
        const json_t *v;
        if (!json_is_array(list))
            st = ergo_fail(r->err, ERGO_E_FORMAT, "%s: additional_special_tokens is not a list",
                           r->what);
        json_array_foreach(list, i, v) {
            if (st) break;
            snprintf(label, sizeof label, "additional_special_tokens[%zu]", i);
            st = read_one(r, v, label, 1, sl);
        }
    }
    const json_t *extra = json_object_get(root, "extra_special_tokens");
    if (!st && extra && !json_is_null(extra)) {
        const char *key;
        const json_t *v;
        if (!json_is_object(extra))
            st = ergo_fail(r->err, ERGO_E_FORMAT, "%s: extra_special_tokens is not an object",
                           r->what);
        json_object_foreach((json_t *)extra, key, v) {
            if (st) break;
            snprintf(label, sizeof label, "extra_special_tokens.%.60s", key);
            st = read_one(r, v, label, 1, sl);
        }
    }
    for (size_t i = 0; i < sl->n && !st; i++) {
        st = same_flags(r, sl->label[i], &sl->tok[i], sl->idx[i]);
        r->listed[sl->idx[i]] = 1; /* an AddedToken here is re-added too */
    }
    free(sl);
    return st;
}

/* added_tokens_decoder: {"id": {"content": ..., flags}}; each is re-added. */
static ergo_status read_decoder(reader *r, const json_t *dec) {
    if (!json_is_object(dec))
        return ergo_fail(r->err, ERGO_E_FORMAT, "%s: added_tokens_decoder is not an object",
                         r->what);
    const char *key;
    const json_t *v;
    ergo_status st;
    json_object_foreach((json_t *)dec, key, v) {
        char label[96], *end;
        snprintf(label, sizeof label, "added_tokens_decoder[%.40s]", key);
        long long id = strtoll(key, &end, 10);
        if (end == key || *end)
            return ergo_fail(r->err, ERGO_E_FORMAT, "%s: %s: the key is not an id", r->what,
                             label);
        if (!json_is_object(v))
            return ergo_fail(r->err, ERGO_E_FORMAT, "%s: %s is not an object", r->what, label);
        cfg_token c;
        int32_t idx;
        if ((st = read_token_dict(r, v, 0, label, &c)) ||
            (st = find_added(r, label, c.content, c.len, &idx)))
            return st;
        if (r->added->tok[idx].id != id)
            return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                             "%s: %s \"%.64s\" has id %d in tokenizer.json (transformers would "
                             "keep that id; the files disagree)",
                             r->what, label, c.content, r->added->tok[idx].id);
        if ((st = same_flags(r, label, &c, idx))) return st;
        r->listed[idx] = 1;
    }
    return ERGO_OK;
}

/* Without added_tokens_decoder, _from_pretrained reads these two files too. */
static ergo_status no_side_files(reader *r, const char *dir) {
    static const char *const names[] = {"special_tokens_map.json", "added_tokens.json"};
    for (int k = 0; k < 2 && dir; k++) {
        char path[4096];
        ergo_status st = path_join(path, sizeof path, dir, names[k], r->err);
        if (st) return st;
        if (file_exists(path))
            return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                             "%s: has no added_tokens_decoder, so transformers would read %s, "
                             "which ergo does not",
                             r->what, path);
    }
    return ERGO_OK;
}

/* ---------------------------------------------------------------- the file */

static ergo_status read_settings(reader *r, const json_t *root, int single_pre,
                                 tokenizer_settings *s) {
    const char *what = r->what;
    const json_t *cls = json_object_get(root, "tokenizer_class");
    if (cls && !json_is_null(cls) &&
        (!json_is_string(cls) || (strcmp(json_string_value(cls), "Qwen2Tokenizer") &&
                                  strcmp(json_string_value(cls), "Qwen2TokenizerFast"))))
        return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                         "%s: tokenizer_class %s is not supported (ergo implements "
                         "Qwen2TokenizerFast)",
                         what, json_is_string(cls) ? json_string_value(cls) : "(not a string)");
    /* Either would make transformers build the tokenizer from other files. */
    int from_slow = 0;
    ergo_status st;
    if ((st = json_opt_bool(root, "from_slow", &from_slow, what, r->err))) return st;
    if (json_object_get(root, "tokenizer_file") || from_slow)
        return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                         "%s: %s is not supported (ergo reads the tokenizer.json next to it)", what,
                         from_slow ? "from_slow" : "tokenizer_file");
    int prefix = 0;
    if ((st = json_opt_bool(root, "clean_up_tokenization_spaces", &s->clean_up_tokenization_spaces,
                            what, r->err)) ||
        (st = json_opt_bool(root, "split_special_tokens", &s->split_special_tokens, what, r->err)) ||
        (st = json_opt_bool(root, "add_prefix_space", &prefix, what, r->err)))
        return st;
    /* transformers sets add_prefix_space on a single pre-tokenizer that has it
     * (ByteLevel); a Sequence has no such field and is left alone. */
    if (prefix && single_pre)
        return ergo_fail(r->err, ERGO_E_UNSUPPORTED,
                         "%s: add_prefix_space true on a single ByteLevel pre-tokenizer is not "
                         "supported",
                         what);
    /* model_max_length (or, without it, the old max_len); null means int(1e30). */
    const char *mk = json_object_get(root, "model_max_length") ? "model_max_length" : "max_len";
    const json_t *mml = json_object_get(root, mk);
    if (mml && !json_is_null(mml)) {
        double d = json_is_number(mml) ? json_number_value(mml) : -1;
        if (!(d >= 0) || (d < 9.2e18 && (double)(int64_t)d != d))
            return ergo_fail(r->err, ERGO_E_FORMAT, "%s: %s is not a non-negative integer", what,
                             mk);
        s->model_max_length = d < 9.2e18 ? (int64_t)d : INT64_MAX;
    }
    return ERGO_OK;
}

ergo_status tokconfig_apply(const char *json, size_t len, const char *what, const char *dir,
                            added_vocab *added, int single_pre, tokenizer_settings *s,
                            ergo_error *err) {
    tokconfig_defaults(s);
    /* Integers as reals: configs saved by transformers may hold model_max_length =
     * int(1e30), which is beyond jansson's integers. Duplicate keys are refused. */
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &je);
    if (!root)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: invalid JSON at byte %d: %s", what, je.position,
                         je.text);
    reader r = {.what = what, .added = added, .err = err};
    r.named = calloc(added->n + 1, 1);
    r.listed = calloc(added->n + 1, 1);
    ergo_status st = ERGO_OK;
    if (!r.named || !r.listed) st = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    if (!st && !json_is_object(root)) st = ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", what);
    if (!st) st = read_settings(&r, root, single_pre, s);
    if (!st) st = read_specials(&r, root);
    const json_t *dec = json_object_get(root, "added_tokens_decoder");
    int has_decoder = dec && !json_is_null(dec);
    if (!st) st = has_decoder ? read_decoder(&r, dec) : no_side_files(&r, dir);
    if (!st) {
        /* The re-added tokens (the config's list, else all of tokenizer.json's)
         * become special when the config names them. */
        for (size_t i = 0; i < added->n; i++)
            if (r.named[i] && (r.listed[i] || !has_decoder)) added->tok[i].special = 1;
        s->has_config = 1;
    }
    free(r.named);
    free(r.listed);
    json_decref(root);
    return st;
}
