/*
 * utf8.h - UTF-8 scanning shared by the tokenizer: strict validation of input
 * text, code point decoding, and the "maximal subpart" rule that Rust's
 * String::from_utf8_lossy uses to replace invalid bytes with U+FFFD (which the
 * reference's ByteLevel decoder applies to decoded token bytes).
 */
#ifndef ERGO_TOKENIZER_UTF8_H
#define ERGO_TOKENIZER_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Returns the offset of the first byte that does not start a well-formed UTF-8
 * sequence (overlongs, surrogates and > U+10FFFF are ill-formed), or n when
 * all n bytes are valid. */
size_t utf8_first_invalid(const uint8_t *s, size_t n);

/* Decodes the code point at s (which must be valid UTF-8); returns its length. */
size_t utf8_decode(const uint8_t *s, uint32_t *cp);

/* Writes cp as UTF-8 into out (4 bytes room); returns the length. */
size_t utf8_encode(uint32_t cp, char *out);

typedef enum utf8_unit {
    UTF8_CHAR,      /* a complete, valid character of *len bytes */
    UTF8_INVALID,   /* a maximal invalid subpart of *len bytes: one U+FFFD */
    UTF8_TRUNCATED, /* all n bytes are a proper prefix of a valid character */
} utf8_unit;

/* Classifies the bytes at the start of s[0..n) (n >= 1). */
utf8_unit utf8_next_unit(const uint8_t *s, size_t n, size_t *len);

#endif
