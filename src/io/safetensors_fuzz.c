/*
 * safetensors_fuzz.c - the fuzzing entry point of the safetensors parser.
 *
 * fuzz/fuzz_safetensors.c hands libFuzzer's inputs to safetensors_fuzz_one, and
 * tests/test_safetensors.c replays tests/fuzz_corpus/safetensors/ through it in
 * every normal run. An accepted file must be self-consistent: we re-check the
 * invariants the parser promises and touch every byte a tensor claims.
 */
#include <string.h>

#include "safetensors.h"

int safetensors_fuzz_one(const uint8_t *data, size_t size) {
    safetensors_file st;
    ergo_error err = {0};
    if (safetensors_parse(&st, data, size, "fuzz.safetensors", &err) != ERGO_OK) {
        /* A refusal must say something and name the source. */
        ERGO_ASSERT(err.msg[0] != '\0' && strstr(err.msg, "fuzz.safetensors") != NULL);
        return 0;
    }
    size_t covered = 0;
    volatile uint8_t sink = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const tensor *t = &st.tensors[i];
        ERGO_ASSERT(t->offset == covered);
        ERGO_ASSERT((uint64_t)t->numel * (uint64_t)dtype_bits(t->dtype) == (uint64_t)t->nbytes * 8);
        covered += t->nbytes;
        if (t->nbytes) sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
        ERGO_ASSERT(safetensors_find(&st, t->name) == t);
    }
    ERGO_ASSERT(covered == st.data_size && 8 + st.header_len + st.data_size == size);
    for (int i = 0; i < st.n_metadata; i++)
        ERGO_ASSERT(safetensors_metadata(&st, st.metadata[i].key) != NULL);
    (void)sink;
    safetensors_close(&st);
    return 0;
}
