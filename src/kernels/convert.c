/*
 * convert.c - dtype conversions (bf16, f16 <-> f32): scalar references and SIMD paths.
 *
 * Widening conversions are exact, so every path must be bit-identical to _ref.
 */
#include <immintrin.h>
#include <string.h>

#include "base/half.h"
#include "kernels.h"

/* ---- scalar reference ------------------------------------------------------- */

void bf16_to_f32_ref(float *out, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32_one(in[i]);
}

void f16_to_f32_ref(float *out, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = f16_to_f32_one(in[i]);
}

/* ---- AVX2 ------------------------------------------------------------------ */

__attribute__((target("avx2"))) void bf16_to_f32_avx2(float *out, const uint16_t *in, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(in + i));
        __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(w));
    }
    for (; i < n; i++) out[i] = bf16_to_f32_one(in[i]);
}

__attribute__((target("avx2,f16c"))) void f16_to_f32_avx2(float *out, const uint16_t *in,
                                                          size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
    for (; i < n; i++) out[i] = f16_to_f32_one(in[i]);
}

/* ---- AVX-512 --------------------------------------------------------------- */

__attribute__((target("avx512f,avx512bw,avx512vl"))) void bf16_to_f32_avx512(float *out,
                                                                            const uint16_t *in,
                                                                            size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(in + i));
        __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        _mm512_storeu_ps(out + i, _mm512_castsi512_ps(w));
    }
    for (; i < n; i++) out[i] = bf16_to_f32_one(in[i]);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void f16_to_f32_avx512(float *out,
                                                                           const uint16_t *in,
                                                                           size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(in + i))));
    for (; i < n; i++) out[i] = f16_to_f32_one(in[i]);
}
