/*
 * rng.h - the counter-based random generator shared with tools/ergo_random.py.
 *
 * Test and benchmark checkpoints are not committed: both the Python fixture
 * script and ergo regenerate them from (seed, tensor name, element index), so
 * a value depends only on its coordinates, never on generation order or on
 * threads. Value i of a stream is splitmix64's output mixer applied to
 * seed + (i + 1) * golden-gamma; floats take the top 24 bits, so every value is
 * exact in float32 and numpy reproduces it bit for bit.
 *
 *   uint64_t s = rng_stream_seed(42, "model.layers.0.mlp.up_proj.weight");
 *   float w = rng_uniform(s, i) * 0.02f;   // in [-0.02, 0.02)
 */
#ifndef ERGO_RNG_H
#define ERGO_RNG_H

#include <stdint.h>

/* splitmix64 value number i (0-based) of the stream `seed`. */
static inline uint64_t rng_u64(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1) on a grid of 2^-23: (top 24 bits - 2^23) / 2^23. */
static inline float rng_uniform(uint64_t seed, uint64_t i) {
    int32_t k = (int32_t)(rng_u64(seed, i) >> 40) - (1 << 23);
    return (float)k * (1.0f / 8388608.0f);
}

/* FNV-1a 64 of a NUL-terminated string. */
static inline uint64_t rng_fnv1a(const char *s) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (; *s; s++) h = (h ^ (uint8_t)*s) * UINT64_C(0x100000001b3);
    return h;
}

/* Seed of a named stream (e.g. a tensor's canonical name) under a global seed. */
static inline uint64_t rng_stream_seed(uint64_t seed, const char *name) {
    return rng_u64(seed, rng_fnv1a(name));
}

#endif
