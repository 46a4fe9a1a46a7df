/*
 * utf8.c - UTF-8 validation and lossy scanning (see utf8.h).
 *
 * The lossy rule mirrors Rust's core::str::Utf8Chunks (used by from_utf8_lossy):
 * an ill-formed sequence is replaced by one U+FFFD per "maximal subpart", i.e.
 * the longest prefix of a well-formed sequence, or one byte when even the first
 * byte cannot start one (Unicode 15 §3.9, "U+FFFD substitution of maximal subparts").
 */
#include "utf8.h"

/* Number of bytes of the sequence a lead byte starts (0: cannot start one), and
 * the valid range of the second byte; later bytes are always 0x80..0xBF. */
static int lead_info(uint8_t b, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (b < 0x80) return 1;
    if (b < 0xC2) return 0;
    if (b < 0xE0) return 2;
    if (b < 0xF0) {
        if (b == 0xE0) *lo = 0xA0;      /* no overlongs */
        if (b == 0xED) *hi = 0x9F;      /* no surrogates */
        return 3;
    }
    if (b < 0xF5) {
        if (b == 0xF0) *lo = 0x90;      /* no overlongs */
        if (b == 0xF4) *hi = 0x8F;      /* nothing above U+10FFFF */
        return 4;
    }
    return 0;
}

utf8_unit utf8_next_unit(const uint8_t *s, size_t n, size_t *len) {
    uint8_t lo, hi;
    int need = lead_info(s[0], &lo, &hi);
    if (need == 0) {
        *len = 1;
        return UTF8_INVALID;
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) {
            *len = n;
            return UTF8_TRUNCATED;
        }
        uint8_t c = s[i];
        if (i == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) {
            *len = (size_t)i;
            return UTF8_INVALID;
        }
    }
    *len = (size_t)need;
    return UTF8_CHAR;
}

size_t utf8_first_invalid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) { /* ASCII runs are the common case */
            i++;
            continue;
        }
        size_t len;
        if (utf8_next_unit(s + i, n - i, &len) != UTF8_CHAR) return i;
        i += len;
    }
    return n;
}

size_t utf8_decode(const uint8_t *s, uint32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b < 0xE0) {
        *cp = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (b < 0xF0) {
        *cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}
