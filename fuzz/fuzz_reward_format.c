/*
 * fuzz_reward_format.c - libFuzzer target for the GRPO format reward and the box
 * reward: `make fuzz`, then build/fuzz/fuzz_reward_format tests/fuzz_corpus/reward_format.
 * The work is in src/train/reward_fuzz.c so the tests replay the corpus through it too.
 */
#include <stddef.h>
#include <stdint.h>

#include "train/reward.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return reward_fuzz_one(data, size);
}
