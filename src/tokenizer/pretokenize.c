/*
 * pretokenize.c - tokenizers' Split pre-tokenizer (behavior Isolated) on PCRE2.
 *
 * Mirrors tokenizers 0.22.1 pre_tokenizers/split.rs + utils/pattern.rs (the
 * Oniguruma find_iter loop): matches are searched left to right; an empty match
 * right where the previous match ended is skipped by advancing one character.
 */
#include "tokenizer/pretokenize.h"

#include <stdio.h>
#include <string.h>

#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"

/* Oniguruma's defaults are generous; these only stop pathological patterns. */
#define MATCH_LIMIT 20000000u
#define DEPTH_LIMIT 1000000u

/* ---------------------------------------------------------------- translation */

static ergo_status put_ranges(tok_text *out, const uint32_t (*r)[2], size_t n, ergo_error *err) {
    char tmp[48];
    for (size_t i = 0; i < n; i++) {
        int len = r[i][0] == r[i][1]
                      ? snprintf(tmp, sizeof tmp, "\\x{%X}", (unsigned)r[i][0])
                      : snprintf(tmp, sizeof tmp, "\\x{%X}-\\x{%X}", (unsigned)r[i][0],
                                 (unsigned)r[i][1]);
        ergo_status st = tok_text_append(out, tmp, (size_t)len, err);
        if (st != ERGO_OK) return st;
    }
    return ERGO_OK;
}

/* Emits a measured class: as a bracket expression outside classes, as bare
 * ranges inside one. A negated escape cannot be spliced into a class. */
static ergo_status put_class(tok_text *out, const uint32_t (*r)[2], size_t n, int negated,
                             int in_class, const char *esc, ergo_error *err) {
    if (in_class && negated)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "pre-tokenizer pattern: %s inside a character class is not supported",
                         esc);
    ergo_status st = ERGO_OK;
    if (!in_class) st = tok_text_append(out, negated ? "[^" : "[", negated ? 2 : 1, err);
    if (st == ERGO_OK) st = put_ranges(out, r, n, err);
    if (st == ERGO_OK && !in_class) st = tok_text_append(out, "]", 1, err);
    return st;
}

ergo_status pretokenize_translate(const char *pat, size_t len, tok_text *out, ergo_error *err) {
    int in_class = 0;  /* inside [...] */
    int class_lead = 0; /* just after "[" or "[^": a "]" here is a literal */
    size_t i = 0;
    ergo_status st = ERGO_OK;
    while (i < len && st == ERGO_OK) {
        char c = pat[i];
        if (c == '\\') {
            if (i + 1 >= len)
                return ergo_fail(err, ERGO_E_FORMAT, "pre-tokenizer pattern ends with a backslash");
            char e = pat[i + 1];
            if (e == 's' || e == 'S') {
                st = put_class(out, onig_space, onig_space_n, e == 'S', in_class,
                               e == 'S' ? "\\S" : "\\s", err);
                i += 2;
            } else if ((e == 'p' || e == 'P') && i + 4 < len && pat[i + 2] == '{' &&
                       (pat[i + 3] == 'L' || pat[i + 3] == 'N') && pat[i + 4] == '}') {
                int letter = pat[i + 3] == 'L';
                char esc[8] = {'\\', e, '{', pat[i + 3], '}', 0};
                st = put_class(out, letter ? onig_letter : onig_number,
                               letter ? onig_letter_n : onig_number_n, e == 'P', in_class, esc,
                               err);
                i += 5;
            } else if ((e == 'p' || e == 'P') && (i + 2 >= len || pat[i + 2] != '{')) {
                /* Without braces Oniguruma reads \pL as the letters "pL"; PCRE2 as a class. */
                st = tok_text_append(out, e == 'p' ? "p" : "P", 1, err);
                i += 2;
            } else if (e == 'h' || e == 'H') {
                /* Oniguruma's \h is a hex digit; PCRE2's is horizontal space. */
                static const uint32_t hex[][2] = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};
                st = put_class(out, hex, 3, e == 'H', in_class, e == 'H' ? "\\H" : "\\h", err);
                i += 2;
            } else {
                st = tok_text_append(out, pat + i, 2, err);
                i += 2;
            }
            class_lead = 0;
            continue;
        }
        if (in_class) {
            if (c == ']' && !class_lead) {
                in_class = 0;
            } else if (c == '[') {
                /* POSIX [:name:] is common to both; Oniguruma's nested classes are not. */
                if (i + 1 < len && pat[i + 1] == ':') {
                    const char *end = NULL;
                    for (size_t j = i + 2; j + 1 < len; j++)
                        if (pat[j] == ':' && pat[j + 1] == ']') {
                            end = pat + j + 2;
                            break;
                        }
                    if (!end)
                        return ergo_fail(err, ERGO_E_FORMAT,
                                         "pre-tokenizer pattern: unterminated [: in a class");
                    st = tok_text_append(out, pat + i, (size_t)(end - (pat + i)), err);
                    i = (size_t)(end - pat);
                    class_lead = 0;
                    continue;
                }
                return ergo_fail(err, ERGO_E_UNSUPPORTED,
                                 "pre-tokenizer pattern: nested character classes (Oniguruma "
                                 "syntax) are not supported");
            } else if (c == '&' && i + 1 < len && pat[i + 1] == '&') {
                return ergo_fail(err, ERGO_E_UNSUPPORTED,
                                 "pre-tokenizer pattern: class intersection && is not supported");
            }
            class_lead = 0;
        } else if (c == '[') {
            in_class = 1;
            class_lead = 1;
            st = tok_text_append(out, pat + i, 1, err);
            i++;
            if (i < len && pat[i] == '^') {
                if (st == ERGO_OK) st = tok_text_append(out, "^", 1, err);
                i++;
            }
            continue;
        }
        if (st == ERGO_OK) st = tok_text_append(out, pat + i, 1, err);
        i++;
    }
    return st;
}

/* ---------------------------------------------------------------- compile */

ergo_status pretokenize_compile(pretokenizer *p, const char *pattern, size_t len, int literal,
                                const char *what, ergo_error *err) {
    memset(p, 0, sizeof *p);
    if (utf8_first_invalid((const uint8_t *)pattern, len) != len)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: pre-tokenizer pattern is not valid UTF-8", what);
    if (literal && len == 0) {
        p->literal_empty = 1;
        return ERGO_OK;
    }
    tok_text pat = {0};
    ergo_status st = ERGO_OK;
    uint32_t opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK;
    if (literal) {
        opts |= PCRE2_LITERAL;
        st = tok_text_append(&pat, pattern, len, err);
    } else {
        /* Unicode classes; Ruby's line anchors; no \C (it could split a character). */
        opts |= PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NEVER_BACKSLASH_C;
        st = pretokenize_translate(pattern, len, &pat, err);
    }
    if (st != ERGO_OK) {
        tok_text_free(&pat);
        ergo_error_prefix(err, "%s: ", what);
        return st;
    }
    int code;
    PCRE2_SIZE off;
    p->re = pcre2_compile((PCRE2_SPTR)pat.s, pat.n, opts, &code, &off, NULL);
    tok_text_free(&pat);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: pre-tokenizer pattern does not compile with PCRE2: %s", what,
                         (const char *)msg);
    }
    /* JIT is a speed-up only: without it (e.g. no executable memory) we interpret. */
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE);
    p->mctx = pcre2_match_context_create(NULL);
    if (!p->mctx) {
        pretokenize_free(p);
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    }
    pcre2_set_match_limit(p->mctx, MATCH_LIMIT);
    pcre2_set_depth_limit(p->mctx, DEPTH_LIMIT);
    return ERGO_OK;
}

void pretokenize_free(pretokenizer *p) {
    pcre2_code_free(p->re);
    pcre2_match_context_free(p->mctx);
    memset(p, 0, sizeof *p);
}

/* ---------------------------------------------------------------- split */

static int search(const pretokenizer *p, pcre2_match_data *md, const char *s, size_t n,
                  size_t from) {
    int rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, p->mctx);
    /* The JIT stack (32 KiB) can run out where the interpreter's heap does not. */
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                         p->mctx);
    return rc;
}

ergo_status pretokenize_split(const pretokenizer *p, pcre2_match_data *md, const char *s, size_t n,
                              pretokenize_fn fn, void *ctx, ergo_error *err) {
    if (n == 0) return ERGO_OK;
    if (!p->re) return fn(ctx, s, n, err);
    size_t prev = 0;         /* end of the last emitted piece */
    size_t from = 0;         /* where the next search starts */
    size_t last_end = 0;     /* end of the last accepted match */
    int have_last = 0;
    ergo_status st = ERGO_OK;
    while (from <= n && st == ERGO_OK) {
        int rc = search(p, md, s, n, from);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ergo_fail(err, rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
                                          rc == PCRE2_ERROR_HEAPLIMIT
                                      ? ERGO_E_LIMIT
                                      : ERGO_E_FORMAT,
                             "pre-tokenizer regex failed at byte %zu: %s", from,
                             (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms > me) me = ms; /* \K in a lookahead can report end < start */
        if (ms == me && have_last && me == last_end) {
            /* Oniguruma's find_iter: no empty match right after the previous one. */
            if (from >= n) break;
            uint32_t cp;
            from += utf8_decode((const uint8_t *)s + from, &cp);
            continue;
        }
        if (ms > prev) st = fn(ctx, s + prev, ms - prev, err);
        if (st == ERGO_OK && me > ms) st = fn(ctx, s + ms, me - ms, err);
        prev = me > prev ? me : prev;
        from = me;
        last_end = me;
        have_last = 1;
    }
    if (st == ERGO_OK && prev < n) st = fn(ctx, s + prev, n - prev, err);
    return st;
}
