/*
 * normalize.h - the NFC normalizer of tokenizer.json ({"type": "NFC"}), as
 * tokenizers 0.22.1 applies it: utf8proc's NFC, except that the characters the
 * reference's older Unicode table does not know stay untouched (nfc_inert).
 */
#ifndef ERGO_TOKENIZER_NORMALIZE_H
#define ERGO_TOKENIZER_NORMALIZE_H

#include "base/status.h"
#include "tokenizer/tokenizer.h"

/* Appends the NFC form of s[0..n) (valid UTF-8, may hold NUL) to out. */
ergo_status nfc_append(const char *s, size_t n, tok_text *out, ergo_error *err);

#endif
