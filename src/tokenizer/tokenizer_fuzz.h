/*
 * tokenizer_fuzz.h - the fuzzing entry point of the tokenizer: the bytes are a
 * tokenizer.json, optionally followed by a line "#tokenizer_config.json" and a
 * tokenizer_config.json (both parsed by jansson); when they load, text is encoded
 * and ids decoded (one-shot and streaming, which must agree). Used by fuzz/fuzz_tokenizer.c and by the test
 * that replays tests/fuzz_corpus/tokenizer/.
 */
#ifndef ERGO_TOKENIZER_FUZZ_H
#define ERGO_TOKENIZER_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* Returns 1 when the bytes loaded as a tokenizer, 0 when they were refused
 * (with a message). Aborts only when an invariant breaks. */
int tokenizer_fuzz_one(const uint8_t *data, size_t size);

#endif
