/* libFuzzer target for the safetensors parser: `make fuzz`, then
 * build/fuzz/fuzz_safetensors tests/fuzz_corpus/safetensors */
#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return safetensors_fuzz_one(data, size);
}
