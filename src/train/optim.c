/*
 * optim.c - AdamW, global-norm clipping and the learning-rate schedules (optim.h).
 *
 * We follow torch 2.8's CPU kernels operation by operation (adam.py
 * _single_tensor_adam with decoupled_weight_decay, clip_grad.py
 * _clip_grads_with_norm_, transformers optimization.py lambdas), so that the only
 * differences left are where torch itself is not correctly rounded: its f32 sqrt
 * (about 1 value in 6 is 1 ulp off the correctly rounded one on this CPU) and the
 * summation order of its vector_norm. The scalars torch computes from Python floats
 * (doubles) we compute in double from the decimal the float came from (see
 * decimal_of), then round to float where torch hands them to an f32 kernel.
 */
#include "optim.h"

#include "kernels/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* The double a user meant by a float: the shortest decimal that rounds to it (0.9f
 * -> 0.9, not 0.89999997615814). torch's hyperparameters are Python floats, so
 * 1 - beta1 is 1 - 0.9 in double (0.1f once rounded), where 1 - (double)0.9f would
 * round to 0.10000002f and bias every moment by an ulp. */
static double decimal_of(float f) {
    if (!isfinite(f) || f == 0.0f) return (double)f;
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f) return d;
    }
    return (double)f;
}

/* The f32 constants of one step, as torch rounds them. */
typedef struct adamw_scalars {
    float decay, w1, fb2, w2, neg_step, fbc2, feps;
} adamw_scalars;

/* Elements [i0, i1) of one parameter. Every element is independent, so any split over
 * threads gives the same bits. */
#define ADAMW_RANGE_BODY                                                              \
    for (size_t i = i0; i < i1; i++) {                                                \
        const float g = p->g[i];                                                      \
        float w = p->w[i];                                                            \
        if (dec) w = w * c->decay;                                                    \
        const float m = fmaf(c->w1, g - p->m[i], p->m[i]);                            \
        const float v = fmaf(c->w2 * g, g, p->v[i] * c->fb2);                         \
        const float denom = sqrtf(v) / c->fbc2 + c->feps;                             \
        p->m[i] = m;                                                                  \
        p->v[i] = v;                                                                  \
        p->w[i] = w + (c->neg_step * m) / denom;                                      \
    }

static void adamw_range(const adamw_scalars *c, opt_param *p, int dec, size_t i0, size_t i1) {
    ADAMW_RANGE_BODY
}

/* The same source compiled for FMA hardware: fmaf becomes one instruction instead of
 * a libm call (the result is the same: fma rounds once either way). */
__attribute__((target("avx2,fma"))) static void adamw_range_fma(const adamw_scalars *c,
                                                                 opt_param *p, int dec,
                                                                 size_t i0, size_t i1) {
    ADAMW_RANGE_BODY
}

void adamw_step(opt_param *ps, int n_params, const adamw_config *c, int64_t t, float lr) {
    const double lr_d = decimal_of(lr), b1 = decimal_of(c->beta1), b2 = decimal_of(c->beta2);
    const double eps = decimal_of(c->eps), wd = decimal_of(c->weight_decay);
    const double step = (double)t;
    adamw_scalars k;
    /* torch: param.mul_(1 - lr * wd): the factor rounded once to f32 */
    k.decay = (float)(1.0 - lr_d * wd);
    /* exp_avg.lerp_(grad, 1 - beta1): weight < 0.5, so start + w * (end - start), fused */
    k.w1 = (float)(1.0 - b1);
    /* exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) */
    k.fb2 = (float)b2, k.w2 = (float)(1.0 - b2);
    const double bc1 = 1.0 - pow(b1, step);
    const double bc2_sqrt = pow(1.0 - pow(b2, step), 0.5);
    /* param.addcdiv_(exp_avg, denom, value=-step_size) */
    k.neg_step = (float)(-(lr_d / bc1));
    k.fbc2 = (float)bc2_sqrt, k.feps = (float)eps;
    const int fma = kern.isa >= ISA_AVX2;
    for (int j = 0; j < n_params; j++) {
        opt_param *p = &ps[j];
        const int dec = p->decay && wd != 0.0;
        const size_t chunk = 1 << 16, n_chunks = (p->n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
        for (size_t q = 0; q < n_chunks; q++) {
            const size_t i0 = q * chunk, i1 = i0 + chunk < p->n ? i0 + chunk : p->n;
            if (fma) adamw_range_fma(&k, p, dec, i0, i1);
            else adamw_range(&k, p, dec, i0, i1);
        }
    }
}

float grad_clip_global_norm(opt_param *ps, int n_params, float max_norm) {
    /* torch: the f32 norm of each gradient, then the f32 norm of those norms. We sum
     * squares in double (torch's f32 cascade differs from it by an ulp or so). */
    double total = 0.0;
    for (int k = 0; k < n_params; k++) {
        const float *g = ps[k].g;
        const size_t n = ps[k].n;
        double s = 0.0;
        /* each thread sums whole fixed chunks, combined in chunk order: the same
         * double whatever the thread count */
        const size_t chunk = 1 << 16, n_chunks = (n + chunk - 1) / chunk;
        double part[64];
        for (size_t c0 = 0; c0 < n_chunks; c0 += 64) {
            const size_t nc = n_chunks - c0 < 64 ? n_chunks - c0 : 64;
#pragma omp parallel for schedule(static) if (nc > 1)
            for (size_t q = 0; q < nc; q++) {
                const size_t i0 = (c0 + q) * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
                double acc = 0.0;
                for (size_t i = i0; i < i1; i++) acc += (double)g[i] * (double)g[i];
                part[q] = acc;
            }
            for (size_t q = 0; q < nc; q++) s += part[q];
        }
        const float nk = (float)sqrt(s);
        total += (double)nk * (double)nk;
    }
    const float norm = (float)sqrt(total);
    if (!isfinite(norm) || !(max_norm > 0.0f)) return norm;
    /* clip_coef = max_norm / (total_norm + 1e-6): Tensor.__rtruediv__ is
     * reciprocal() * max_norm, in f32; clamped to 1 and always applied */
    float coef = (1.0f / (norm + 1e-6f)) * max_norm;
    if (coef > 1.0f) coef = 1.0f;
    if (coef == 1.0f) return norm; /* x * 1 is x */
    for (int k = 0; k < n_params; k++) {
        float *g = ps[k].g;
        const size_t n = ps[k].n;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
        for (size_t i = 0; i < n; i++) g[i] *= coef;
    }
    return norm;
}

float lr_at(const lr_schedule *s, int64_t step) {
    const double lr = decimal_of(s->lr);
    const double warm = (double)s->warmup;
    double f;
    if (step < s->warmup) {
        /* float(step) / float(max(1, warmup)) in every schedule */
        f = (double)step / (warm > 1.0 ? warm : 1.0);
    } else if (s->kind == LR_CONSTANT) {
        f = 1.0;
    } else {
        const int64_t span = s->total - s->warmup > 1 ? s->total - s->warmup : 1;
        if (s->kind == LR_LINEAR) {
            f = (double)(s->total - step) / (double)span;
        } else {
            /* num_cycles 0.5: cos(pi * 0.5 * 2 * progress); past `total` the cosine
             * rises again, as transformers' lambda does (it only clamps at 0) */
            const double progress = (double)(step - s->warmup) / (double)span;
            f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
        }
        if (f < 0.0) f = 0.0;
    }
    /* LambdaLR: base_lr * lambda(step) */
    return (float)(lr * f);
}
