/*
 * normalize.c - NFC as tokenizers 0.22.1 does it (normalizers::NFC, which calls
 * the unicode-normalization-alignments crate, a Unicode 9-era table).
 *
 * utf8proc has newer tables. Characters that utf8proc decomposes or gives a
 * non-zero combining class but the reference does not (nfc_inert, found by
 * tools/tokenizer_tables.py probing both) are plain starters that never compose
 * to the reference; NFC of "a X b" is then NFC(a) X NFC(b), so we normalise
 * around them and copy them as they are.
 */
#include "tokenizer/normalize.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"

static ergo_status nfc_run(const char *s, size_t n, tok_text *out, ergo_error *err) {
    if (n == 0) return ERGO_OK;
    utf8proc_uint8_t *dst = NULL;
    /* Length-driven (no UTF8PROC_NULLTERM), so NUL characters pass through. */
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (r < 0) {
        free(dst);
        return ergo_fail(err, r == UTF8PROC_ERROR_NOMEM ? ERGO_E_NOMEM : ERGO_E_FORMAT,
                         "NFC normalisation failed: %s", utf8proc_errmsg(r));
    }
    ergo_status st = tok_text_append(out, (const char *)dst, (size_t)r, err);
    free(dst);
    return st;
}

/* What a code point means to NFC here. */
typedef enum nfc_class {
    NFC_STABLE,   /* a starter NFC never changes or composes onto what precedes it */
    NFC_INERT,    /* the same to the reference, but utf8proc must not see it */
    NFC_UNSTABLE, /* a mark, a decomposable character, or a composition's second part */
} nfc_class;

static nfc_class classify(uint32_t cp) {
    if (cp < 0x300) return NFC_STABLE;
    if (unicode_in_ranges(nfc_inert, nfc_inert_n, cp)) return NFC_INERT;
    return unicode_in_ranges(nfc_unstable, nfc_unstable_n, cp) ? NFC_UNSTABLE : NFC_STABLE;
}

ergo_status nfc_append(const char *s, size_t n, tok_text *out, ergo_error *err) {
    /* A stable starter S splits the text: NFC(x S y) = NFC(x) NFC(S y), since S
     * neither moves nor composes with anything before it. So only the stretches
     * from the stable starter before an unstable character up to the next stable
     * starter go through utf8proc; the rest (most text) is copied. */
    size_t done = 0;  /* bytes [0, done) are emitted */
    size_t start = 0; /* the last stable starter: where a region needing NFC begins */
    int dirty = 0;    /* [done, i) needs NFC */
    ergo_status st = ERGO_OK;
    size_t i = 0;
    while (i < n && st == ERGO_OK) {
        if ((uint8_t)s[i] < 0x80) { /* ASCII is stable */
            if (dirty) {
                st = nfc_run(s + done, i - done, out, err);
                done = i;
                dirty = 0;
            }
            start = i++;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_decode((const uint8_t *)s + i, &cp);
        nfc_class c = classify(cp);
        if (c != NFC_UNSTABLE && dirty) {
            st = nfc_run(s + done, i - done, out, err);
            done = i;
            dirty = 0;
        }
        if (c == NFC_STABLE) {
            start = i;
        } else if (c == NFC_INERT) {
            /* Copied through, never shown to utf8proc; nothing composes across it. */
            if (st == ERGO_OK) st = tok_text_append(out, s + done, i + len - done, err);
            done = start = i + len;
        } else if (!dirty) {
            if (st == ERGO_OK) st = tok_text_append(out, s + done, start - done, err);
            done = start;
            dirty = 1;
        }
        i += len;
    }
    if (st != ERGO_OK) return st;
    return dirty ? nfc_run(s + done, n - done, out, err) : tok_text_append(out, s + done, n - done, err);
}
