/*
 * rope.c - rotary tables and the rotate-half rotation (see rope.h).
 */
#include "rope.h"

#include "backward.h"

#include <math.h>

void rope_mrope_tables(float *cos, float *sin, const int32_t *const pos[3],
                       const int8_t *freq_axis, const float *inv_freq, int n, int half) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            float angle = (float)pos[freq_axis[j]][i] * inv_freq[j];
            cos[(size_t)i * half + j] = cosf(angle);
            sin[(size_t)i * half + j] = sinf(angle);
        }
}

void rope_apply(float *x, size_t ldx, int n, int heads, int dh, const float *cos,
                const float *sin) {
    const int half = dh / 2;
#pragma omp parallel for schedule(static) if (n > 64)
    for (int i = 0; i < n; i++) {
        const float *c = cos + (size_t)i * half, *s = sin + (size_t)i * half;
        for (int h = 0; h < heads; h++) {
            float *v = x + (size_t)i * ldx + (size_t)h * dh;
            for (int j = 0; j < half; j++) {
                const float a = v[j], b = v[j + half];
                v[j] = a * c[j] + (-b) * s[j];
                v[j + half] = b * c[j] + a * s[j];
            }
        }
    }
}

/* The transpose of rope_apply's rotation (rotation by -theta): the backward, and the
 * exact inverse up to the rounding of cos^2 + sin^2. */
void rope_apply_inverse(float *x, size_t ldx, int n, int heads, int dh, const float *cos,
                        const float *sin) {
    const int half = dh / 2;
#pragma omp parallel for schedule(static) if (n > 64)
    for (int i = 0; i < n; i++) {
        const float *c = cos + (size_t)i * half, *s = sin + (size_t)i * half;
        for (int h = 0; h < heads; h++) {
            float *v = x + (size_t)i * ldx + (size_t)h * dh;
            for (int j = 0; j < half; j++) {
                const float a = v[j], b = v[j + half];
                v[j] = a * c[j] + b * s[j];
                v[j + half] = b * c[j] + (-a) * s[j];
            }
        }
    }
}
