/*
 * fuzz_sft_line.c - libFuzzer target for the SFT data-line parser (one JSONL
 * conversation to a training example): `make fuzz`, then
 * build/fuzz/fuzz_sft_line tests/fuzz_corpus/sft_line. The work is in
 * src/train/sft_data.c (sft_fuzz_line) so the tests replay the corpus too.
 */
#include <stddef.h>
#include <stdint.h>

#include "train/sft_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sft_fuzz_line(data, size);
    return 0;
}
