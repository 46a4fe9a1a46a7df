/*
 * fuzz_openai.c - libFuzzer target for the chat request parser (JSON to a checked
 * conversation): `make fuzz`, then build/fuzz/fuzz_openai tests/fuzz_corpus/openai.
 * The work is in src/serve/openai.c (oai_fuzz_one) so the tests replay the corpus.
 */
#include <stddef.h>
#include <stdint.h>

#include "serve/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    oai_fuzz_one(data, size);
    return 0;
}
