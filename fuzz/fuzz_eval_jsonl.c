/*
 * fuzz_eval_jsonl.c - libFuzzer target for the V* test_questions.jsonl loader: `make fuzz`,
 * then build/fuzz/fuzz_eval_jsonl tests/fuzz_corpus/eval_jsonl. The work is in
 * src/eval/bench_data.c (bench_fuzz_jsonl) so the tests replay the corpus through it too.
 */
#include <stddef.h>
#include <stdint.h>

#include "eval/bench_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    bench_fuzz_jsonl(data, size);
    return 0;
}
