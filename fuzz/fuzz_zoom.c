/*
 * fuzz_zoom.c - libFuzzer target for the <zoom> box parser and crop mapping:
 * `make fuzz`, then build/fuzz/fuzz_zoom tests/fuzz_corpus/zoom. The work is in
 * src/pipeline/zoom_fuzz.c so the tests replay the corpus through it too.
 */
#include <stddef.h>
#include <stdint.h>

#include "pipeline/zoom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return zoom_fuzz_one(data, size);
}
