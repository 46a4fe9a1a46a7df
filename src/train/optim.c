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

void adamw_step(opt_param *ps, int n_params, const adamw_config *c, int64_t t, float lr) {
    const double lr_d = decimal_of(lr), b1 = decimal_of(c->beta1), b2 = decimal_of(c->beta2);
    const double eps = decimal_of(c->eps), wd = decimal_of(c->weight_decay);
    const double step = (double)t;
    /* torch: param.mul_(1 - lr * wd): the factor rounded once to f32 */
    const float decay = (float)(1.0 - lr_d * wd);
    /* exp_avg.lerp_(grad, 1 - beta1): weight < 0.5, so start + w * (end - start), fused */
    const float w1 = (float)(1.0 - b1);
    /* exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) */
    const float fb2 = (float)b2, w2 = (float)(1.0 - b2);
    const double bc1 = 1.0 - pow(b1, step);
    const double bc2_sqrt = pow(1.0 - pow(b2, step), 0.5);
    /* param.addcdiv_(exp_avg, denom, value=-step_size) */
    const float neg_step = (float)(-(lr_d / bc1));
    const float fbc2 = (float)bc2_sqrt, feps = (float)eps;
    for (int k = 0; k < n_params; k++) {
        opt_param *p = &ps[k];
        const int dec = p->decay && wd != 0.0;
        for (size_t i = 0; i < p->n; i++) {
            const float g = p->g[i];
            float w = p->w[i];
            if (dec) w = w * decay;
            const float m = fmaf(w1, g - p->m[i], p->m[i]);
            const float v = fmaf(w2 * g, g, p->v[i] * fb2);
            const float denom = sqrtf(v) / fbc2 + feps;
            p->m[i] = m;
            p->v[i] = v;
            p->w[i] = w + (neg_step * m) / denom;
        }
    }
}

float grad_clip_global_norm(opt_param *ps, int n_params, float max_norm) {
    /* torch: the f32 norm of each gradient, then the f32 norm of those norms. We sum
     * squares in double (torch's f32 cascade differs from it by an ulp or so). */
    double total = 0.0;
    for (int k = 0; k < n_params; k++) {
        double s = 0.0;
        for (size_t i = 0; i < ps[k].n; i++) s += (double)ps[k].g[i] * (double)ps[k].g[i];
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
    for (int k = 0; k < n_params; k++)
        for (size_t i = 0; i < ps[k].n; i++) ps[k].g[i] *= coef;
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
