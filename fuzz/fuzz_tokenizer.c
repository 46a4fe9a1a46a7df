/*
 * fuzz_tokenizer.c - libFuzzer target: the input is a tokenizer.json (and
 * optionally a tokenizer_config.json after a "#tokenizer_config.json" line); see
 * src/tokenizer/tokenizer_fuzz.c. Seeds: tests/fuzz_corpus/tokenizer/.
 */
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tokenizer_fuzz_one(data, size);
    return 0;
}
