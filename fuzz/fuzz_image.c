/*
 * fuzz_image.c - libFuzzer target for the JPEG/PNG decoder (and crop/resize of what it
 * decodes): `make fuzz`, then build/fuzz/fuzz_image tests/fuzz_corpus/image.
 * The work is in src/image/image_fuzz.c so tests replay the corpus through it too.
 */
#include <stddef.h>
#include <stdint.h>

#include "image/image_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    image_fuzz_one(data, size);
    return 0;
}
