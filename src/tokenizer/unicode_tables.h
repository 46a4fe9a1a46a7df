/*
 * unicode_tables.h - Unicode facts measured on the reference (tokenizers 0.22.1),
 * generated into unicode_tables.c by tools/tokenizer_tables.py. See that file's
 * header for what each table is and why ergo's libraries alone do not suffice.
 */
#ifndef ERGO_TOKENIZER_UNICODE_TABLES_H
#define ERGO_TOKENIZER_UNICODE_TABLES_H

#include <stddef.h>
#include <stdint.h>

extern const char unicode_tables_utf8proc_version[]; /* utf8proc's Unicode when generated */

extern const uint32_t onig_space[][2];  /* Oniguruma \s: sorted inclusive ranges */
extern const size_t onig_space_n;
extern const uint32_t onig_letter[][2]; /* Oniguruma \p{L} */
extern const size_t onig_letter_n;
extern const uint32_t onig_number[][2]; /* Oniguruma \p{N} */
extern const size_t onig_number_n;
extern const uint32_t nfc_inert[][2];   /* plain starters to the reference's NFC */
extern const size_t nfc_inert_n;
extern const uint32_t nfc_unstable[][2]; /* >= U+0300 and NFC may touch them or their neighbours */
extern const size_t nfc_unstable_n;

/* Whether cp lies in one of the n sorted inclusive ranges. */
static inline int unicode_in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

#endif
