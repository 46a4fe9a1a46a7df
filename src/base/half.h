/*
 * half.h - scalar conversions between f32 and bf16 / IEEE half (raw uint16 bits).
 *
 * Widening is exact. Narrowing rounds to nearest, ties to even, as torch's
 * .to(torch.bfloat16) / .to(torch.float16) do; NaNs stay NaN (made quiet, as the
 * F16C instructions do, so scalar and SIMD paths agree bit for bit).
 * The vectorised versions live in src/kernels/convert.c.
 */
#ifndef ERGO_HALF_H
#define ERGO_HALF_H

#include <stdint.h>

float bf16_to_f32_one(uint16_t h);
uint16_t f32_to_bf16_one(float f);
float f16_to_f32_one(uint16_t h);
uint16_t f32_to_f16_one(float f);

#endif
