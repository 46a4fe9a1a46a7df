/*
 * fuzz_parquet.c - libFuzzer target for the parquet reader: `make fuzz`, then
 * build/fuzz/fuzz_parquet tests/fuzz_corpus/parquet. The work is in src/eval/parquet.c
 * (pq_fuzz_one) so the tests replay the corpus through it too.
 */
#include <stddef.h>
#include <stdint.h>

#include "eval/parquet.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pq_fuzz_one(data, size);
    return 0;
}
