/*
 * tokenizer_json.c - the tokenizer.json reader (see tokenizer_json.h).
 *
 * A recursive-descent parser over the file's bytes. Values are built as jansson
 * values, except two: model.vocab (an object) is streamed into bpe_add_token
 * and model.merges (a list) into tj_doc.merges, leaving empty placeholders in
 * the tree. Strictness follows jansson's defaults as the rest of ergo uses them
 * (base/json.c): duplicate keys and \u0000 are errors.
 */
#include "tokenizer/tokenizer_json.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/utf8.h"

#define MAX_DEPTH 512 /* deeper nesting is refused rather than risking the stack */

typedef enum where { IN_OTHER, IN_ROOT, IN_MODEL } where;

typedef struct tj {
    const char *s, *p, *end; /* the text, the cursor, its end */
    const char *what;
    ergo_error *err;
    bpe_model *bpe;
    tj_doc *doc;
    tok_text str; /* the last decoded string */
    int depth;
} tj;

static ergo_status bad(tj *t, const char *why) {
    return ergo_fail(t->err, ERGO_E_FORMAT, "%s: invalid JSON at byte %zu: %s", t->what,
                     (size_t)(t->p - t->s), why);
}

static void ws(tj *t) {
    while (t->p < t->end && (*t->p == ' ' || *t->p == '\n' || *t->p == '\r' || *t->p == '\t')) t->p++;
}

static int hex4(const char *p, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return 0;
        *v = *v * 16 + (uint32_t)d;
    }
    return 1;
}

/* Decodes the string at the cursor (which is at '"') into t->str. */
static ergo_status string(tj *t) {
    t->str.n = 0;
    t->p++;
    ergo_status st;
    for (;;) {
        const char *q = t->p;
        while (q < t->end && *q != '"' && *q != '\\' && (uint8_t)*q >= 0x20) q++;
        if (q > t->p) {
            size_t n = (size_t)(q - t->p);
            size_t bad_at = utf8_first_invalid((const uint8_t *)t->p, n);
            if (bad_at != n) {
                t->p += bad_at;
                return bad(t, "invalid UTF-8 in a string");
            }
            if ((st = tok_text_append(&t->str, t->p, n, t->err))) return st;
            t->p = q;
        }
        if (t->p >= t->end) return bad(t, "unterminated string");
        char c = *t->p;
        if (c == '"') {
            t->p++;
            return tok_text_append(&t->str, "", 0, t->err);
        }
        if (c != '\\') return bad(t, "control character in a string");
        if (t->end - t->p < 2) return bad(t, "unterminated string");
        char e = t->p[1], out;
        switch (e) {
        case '"': out = '"'; break;
        case '\\': out = '\\'; break;
        case '/': out = '/'; break;
        case 'b': out = '\b'; break;
        case 'f': out = '\f'; break;
        case 'n': out = '\n'; break;
        case 'r': out = '\r'; break;
        case 't': out = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (t->end - t->p < 6 || !hex4(t->p + 2, &cp)) return bad(t, "invalid \\u escape");
            if (cp >= 0xDC00 && cp <= 0xDFFF) return bad(t, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (t->end - t->p < 12 || t->p[6] != '\\' || t->p[7] != 'u' ||
                    !hex4(t->p + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return bad(t, "lone high surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                t->p += 6;
            }
            if (cp == 0) return bad(t, "\\u0000 is not allowed");
            char buf[4];
            if ((st = tok_text_append(&t->str, buf, utf8_encode(cp, buf), t->err))) return st;
            t->p += 6;
            continue;
        }
        default: return bad(t, "invalid escape");
        }
        if ((st = tok_text_append(&t->str, &out, 1, t->err))) return st;
        t->p += 2;
    }
}

/* Scans a number; *is_int when it has no fraction or exponent. */
static ergo_status number(tj *t, const char **start, size_t *len, int *is_int) {
    const char *p = t->p;
    *start = p;
    *is_int = 1;
    if (p < t->end && *p == '-') p++;
    if (p >= t->end || *p < '0' || *p > '9') return bad(t, "invalid number");
    if (*p == '0') p++;
    else while (p < t->end && *p >= '0' && *p <= '9') p++;
    if (p < t->end && *p == '.') {
        *is_int = 0;
        p++;
        if (p >= t->end || *p < '0' || *p > '9') return bad(t, "invalid number");
        while (p < t->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < t->end && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        p++;
        if (p < t->end && (*p == '+' || *p == '-')) p++;
        if (p >= t->end || *p < '0' || *p > '9') return bad(t, "invalid number");
        while (p < t->end && *p >= '0' && *p <= '9') p++;
    }
    *len = (size_t)(p - *start);
    t->p = p;
    return ERGO_OK;
}

static int parse_int(const char *s, size_t n, int64_t *v) {
    char buf[32];
    if (n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    errno = 0;
    long long x = strtoll(buf, NULL, 10);
    if (errno) return 0;
    *v = x;
    return 1;
}

static ergo_status value(tj *t, json_t **out, where w);

static ergo_status literal(tj *t, const char *word, json_t *v, json_t **out) {
    size_t n = strlen(word);
    if ((size_t)(t->end - t->p) < n || memcmp(t->p, word, n) != 0) {
        json_decref(v);
        return bad(t, "unexpected character");
    }
    t->p += n;
    *out = v;
    return v ? ERGO_OK : ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
}

/* ---------------------------------------------------------------- the two tables */

/* model.vocab: {"token": id, ...} straight into the BPE builder. */
static ergo_status stream_vocab(tj *t) {
    ergo_status st;
    t->p++;
    ws(t);
    if (t->p < t->end && *t->p == '}') {
        t->p++;
        return ERGO_OK;
    }
    for (;;) {
        ws(t);
        if (t->p >= t->end || *t->p != '"') return bad(t, "expected a string key");
        if ((st = string(t))) return st;
        ws(t);
        if (t->p >= t->end || *t->p != ':') return bad(t, "expected ':'");
        t->p++;
        ws(t);
        const char *num;
        size_t len;
        int is_int;
        int64_t id;
        if (t->p >= t->end || !(*t->p == '-' || (*t->p >= '0' && *t->p <= '9')) ||
            (st = number(t, &num, &len, &is_int)) || !is_int || !parse_int(num, len, &id)) {
            if (st) return st;
            return ergo_fail(t->err, ERGO_E_FORMAT, "%s: vocabulary entry \"%.64s\" has no integer id",
                             t->what, t->str.s);
        }
        if ((st = bpe_add_token(t->bpe, t->str.s, t->str.n, id, t->what, t->err))) return st;
        ws(t);
        if (t->p < t->end && *t->p == ',') {
            t->p++;
            continue;
        }
        if (t->p < t->end && *t->p == '}') {
            t->p++;
            return ERGO_OK;
        }
        return bad(t, "expected ',' or '}'");
    }
}

static ergo_status pool_add(tj *t, uint32_t *off, uint32_t *len) {
    tj_doc *d = t->doc;
    if (d->pool_n + t->str.n > UINT32_MAX / 2)
        return ergo_fail(t->err, ERGO_E_LIMIT, "%s: merges are too large", t->what);
    if (d->pool_n + t->str.n > d->pool_cap) {
        size_t cap = d->pool_cap ? d->pool_cap : 1 << 16;
        while (cap < d->pool_n + t->str.n) cap *= 2;
        char *p = realloc(d->pool, cap);
        if (!p) return ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
        d->pool = p, d->pool_cap = cap;
    }
    if (t->str.n) memcpy(d->pool + d->pool_n, t->str.s, t->str.n);
    *off = (uint32_t)d->pool_n;
    *len = (uint32_t)t->str.n;
    d->pool_n += t->str.n;
    return ERGO_OK;
}

/* One merge: "a b", ["a", "b"], or any other value (kept as TJ_MERGE_OTHER). */
static ergo_status stream_merge(tj *t, tj_merge *m) {
    ergo_status st;
    memset(m, 0, sizeof *m);
    if (*t->p == '"') {
        m->kind = TJ_MERGE_STRING;
        if ((st = string(t))) return st;
        return pool_add(t, &m->a_off, &m->a_len);
    }
    if (*t->p == '[') {
        const char *save = t->p;
        size_t pool_save = t->doc->pool_n;
        t->p++;
        ws(t);
        if (t->p < t->end && *t->p == '"') {
            if ((st = string(t)) || (st = pool_add(t, &m->a_off, &m->a_len))) return st;
            ws(t);
            if (t->p < t->end && *t->p == ',') {
                t->p++;
                ws(t);
                if (t->p < t->end && *t->p == '"') {
                    if ((st = string(t)) || (st = pool_add(t, &m->b_off, &m->b_len))) return st;
                    ws(t);
                    if (t->p < t->end && *t->p == ']') {
                        t->p++;
                        m->kind = TJ_MERGE_PAIR;
                        return ERGO_OK;
                    }
                }
            }
        }
        t->p = save; /* not a pair of strings: read it as a plain value */
        t->doc->pool_n = pool_save;
    }
    json_t *v = NULL;
    m->kind = TJ_MERGE_OTHER;
    st = value(t, &v, IN_OTHER);
    json_decref(v);
    return st;
}

/* model.merges: [...] into tj_doc.merges. */
static ergo_status stream_merges(tj *t) {
    tj_doc *d = t->doc;
    ergo_status st;
    t->p++;
    ws(t);
    if (t->p < t->end && *t->p == ']') {
        t->p++;
        return ERGO_OK;
    }
    for (;;) {
        ws(t);
        if (t->p >= t->end) return bad(t, "unterminated list");
        if (d->n_merges == d->merges_cap) {
            size_t cap = d->merges_cap ? d->merges_cap * 2 : 1024;
            tj_merge *m = realloc(d->merges, cap * sizeof *m);
            if (!m) return ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
            d->merges = m, d->merges_cap = cap;
        }
        if ((st = stream_merge(t, &d->merges[d->n_merges]))) return st;
        d->n_merges++;
        ws(t);
        if (t->p < t->end && *t->p == ',') {
            t->p++;
            continue;
        }
        if (t->p < t->end && *t->p == ']') {
            t->p++;
            return ERGO_OK;
        }
        return bad(t, "expected ',' or ']'");
    }
}

/* ---------------------------------------------------------------- plain values */

static ergo_status object(tj *t, json_t **out, where w) {
    json_t *obj = json_object();
    if (!obj) return ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
    ergo_status st = ERGO_OK;
    t->p++;
    ws(t);
    if (t->p < t->end && *t->p == '}') {
        t->p++;
        *out = obj;
        return ERGO_OK;
    }
    for (;;) {
        ws(t);
        if (t->p >= t->end || *t->p != '"') {
            st = bad(t, "expected a string key");
            break;
        }
        if ((st = string(t))) break;
        if (json_object_get(obj, t->str.s)) {
            st = ergo_fail(t->err, ERGO_E_FORMAT, "%s: invalid JSON: duplicate key `%.64s'",
                           t->what, t->str.s);
            break;
        }
        char *key = strdup(t->str.s);
        if (!key) {
            st = ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
            break;
        }
        ws(t);
        if (t->p >= t->end || *t->p != ':') {
            free(key);
            st = bad(t, "expected ':'");
            break;
        }
        t->p++;
        ws(t);
        json_t *v = NULL;
        /* The two big tables of model are streamed, leaving a placeholder. */
        if (w == IN_MODEL && !strcmp(key, "vocab") && t->p < t->end && *t->p == '{') {
            st = stream_vocab(t);
            t->doc->vocab_streamed = 1;
            v = json_object();
        } else if (w == IN_MODEL && !strcmp(key, "merges") && t->p < t->end && *t->p == '[') {
            st = stream_merges(t);
            t->doc->merges_streamed = 1;
            v = json_array();
        } else {
            st = value(t, &v, w == IN_ROOT && !strcmp(key, "model") ? IN_MODEL : IN_OTHER);
        }
        if (st == ERGO_OK && (!v || json_object_set_new(obj, key, v))) {
            v = NULL;
            st = ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
        }
        if (st != ERGO_OK) json_decref(v);
        free(key);
        if (st) break;
        ws(t);
        if (t->p < t->end && *t->p == ',') {
            t->p++;
            continue;
        }
        if (t->p < t->end && *t->p == '}') {
            t->p++;
            *out = obj;
            return ERGO_OK;
        }
        st = bad(t, "expected ',' or '}'");
        break;
    }
    json_decref(obj);
    return st;
}

static ergo_status array(tj *t, json_t **out) {
    json_t *arr = json_array();
    if (!arr) return ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
    ergo_status st = ERGO_OK;
    t->p++;
    ws(t);
    if (t->p < t->end && *t->p == ']') {
        t->p++;
        *out = arr;
        return ERGO_OK;
    }
    for (;;) {
        json_t *v = NULL;
        ws(t);
        if ((st = value(t, &v, IN_OTHER))) break;
        if (json_array_append_new(arr, v)) {
            st = ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
            break;
        }
        ws(t);
        if (t->p < t->end && *t->p == ',') {
            t->p++;
            continue;
        }
        if (t->p < t->end && *t->p == ']') {
            t->p++;
            *out = arr;
            return ERGO_OK;
        }
        st = bad(t, "expected ',' or ']'");
        break;
    }
    json_decref(arr);
    return st;
}

static ergo_status value(tj *t, json_t **out, where w) {
    *out = NULL;
    ws(t);
    if (t->p >= t->end) return bad(t, "unexpected end of input");
    if (++t->depth > MAX_DEPTH) return bad(t, "nested too deeply");
    ergo_status st;
    switch (*t->p) {
    case '{': st = object(t, out, w); break;
    case '[': st = array(t, out); break;
    case '"':
        st = string(t);
        if (st == ERGO_OK && !(*out = json_stringn_nocheck(t->str.s, t->str.n)))
            st = ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
        break;
    case 't': st = literal(t, "true", json_true(), out); break;
    case 'f': st = literal(t, "false", json_false(), out); break;
    case 'n': st = literal(t, "null", json_null(), out); break;
    default: {
        const char *num;
        size_t len;
        int is_int;
        int64_t iv;
        if ((st = number(t, &num, &len, &is_int))) break;
        if (is_int) {
            if (!parse_int(num, len, &iv)) {
                t->p = num;
                st = bad(t, "integer out of range");
                break;
            }
            *out = json_integer(iv);
        } else {
            char buf[64];
            if (len >= sizeof buf) {
                t->p = num;
                st = bad(t, "number too long");
                break;
            }
            memcpy(buf, num, len);
            buf[len] = 0;
            *out = json_real(strtod(buf, NULL));
        }
        if (!*out) st = ergo_fail(t->err, ERGO_E_NOMEM, "%s: out of memory", t->what);
    }
    }
    t->depth--;
    return st;
}

ergo_status tj_parse(tj_doc *doc, const char *json, size_t len, bpe_model *bpe, const char *what,
                     ergo_error *err) {
    memset(doc, 0, sizeof *doc);
    tj t = {.s = json, .p = json, .end = json + len, .what = what, .err = err, .bpe = bpe, .doc = doc};
    ergo_status st = value(&t, &doc->root, IN_ROOT);
    if (st == ERGO_OK) {
        ws(&t);
        if (t.p != t.end) st = bad(&t, "text after the end of the document");
    }
    tok_text_free(&t.str);
    if (st != ERGO_OK) tj_free(doc);
    return st;
}

void tj_free(tj_doc *doc) {
    json_decref(doc->root);
    free(doc->pool);
    free(doc->merges);
    memset(doc, 0, sizeof *doc);
}
