/*
 * Tests of src/train/vision_train.c: the vision tower's training forward and backward.
 *
 * On a tiny random f32 tower built here (hidden 32, 2 heads of 16, ffn 56, out 48,
 * depth 2 with block 1 full-attention), for a 1 x 8 x 12 grid (two windows, the
 * second clipped to 4 x 2 units) and a 2 x 4 x 6 grid (two frames, one clipped
 * window each):
 *   (a) vision_train_forward's output equals vision_encode's (same weights) within
 *       1e-5 of the output's max-abs (only the attention's summation order differs);
 *   (b) for L = <R, out> with a random R, the gradient of every vision parameter
 *       (patch embed, norms, qkv, proj, mlp, merger ln_q / fc1 / fc2, every bias)
 *       against a central finite difference along one random direction per tensor
 *       (bounds below);
 *   (c) with some parameters frozen (NULL buffers) the others' gradients are the
 *       all-trainable ones, frozen slots stay NULL, the weights are not written, and a
 *       second backward accumulates (gradient x 2);
 * and the errors, thread-count independence.
 */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/rng.h"
#include "check.h"
#include "kernels/kernels.h"
#include "model/vision.h"
#include "train/grads.h"
#include "train/vision_train.h"

/* ---- a tiny f32 tower: a gradient-set-shaped model_weights holding weights ---- */

static int is_vision(const weight_spec *s, void *ctx) {
    (void)ctx;
    return s->part == PART_VISION;
}

typedef struct frozen_list {
    const char *const *names;
    int n;
} frozen_list;

static int vision_not_frozen(const weight_spec *s, void *ctx) {
    const frozen_list *f = ctx;
    if (s->part != PART_VISION) return 0;
    for (int i = 0; i < f->n; i++)
        if (!strcmp(s->name, f->names[i])) return 0;
    return 1;
}

static void tiny_config(model_config *cfg) {
    model_config_7b(cfg);
    cfg->text.n_layers = 1; /* text is not allocated (vision-only sets); keep its tables small */
    vision_config *v = &cfg->vision;
    v->depth = 2;
    v->hidden = 32;
    v->n_heads = 2;
    v->head_dim = 16;
    v->ffn = 56;
    v->out_hidden = 48;
    v->n_full_attn = 1;
    v->full_attn_blocks[0] = 1;
}

/* The vision parameters of cfg with their slots in w (n returned, specs owned). */
static int vision_specs(const model_config *cfg, model_weights *w, weight_spec **out) {
    int n = weights_spec(cfg, NULL, NULL);
    weight_spec *all = calloc((size_t)n, sizeof *all);
    weights_spec(cfg, all, w);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (all[i].part == PART_VISION) all[k++] = all[i];
    *out = all;
    return k;
}

/* Random weights: matrices u / sqrt(fan_in), biases 0.2 u, norms 1 + 0.3 u (u uniform
 * in [-1, 1)): biases and norm weights large enough that their gradients matter. */
static int tiny_weights(model_weights *w, const model_config *cfg) {
    ergo_error err = {0};
    if (grads_alloc(w, cfg, is_vision, NULL, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    weight_spec *sp;
    int n = vision_specs(cfg, w, &sp);
    for (int i = 0; i < n; i++) {
        float *d = train_grad(sp[i].slot);
        const uint64_t s = rng_stream_seed(777, sp[i].name);
        for (int64_t j = 0; j < sp[i].numel; j++) {
            const float u = rng_uniform(s, (uint64_t)j);
            switch (sp[i].kind) {
            case WEIGHT_NORM: d[j] = 1.0f + 0.3f * u; break;
            case WEIGHT_BIAS: d[j] = 0.2f * u; break;
            default: d[j] = u / sqrtf((float)sp[i].fan_in); break;
            }
        }
    }
    free(sp);
    return 1;
}

typedef struct grid {
    int t, h, w;
} grid;

static float *random_array(size_t n, uint64_t seed, float scale) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = rng_uniform(seed, i) * scale;
    return p;
}

/* max |a - b| / max |b| */
static double rel_diff(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return (double)INFINITY;
        const double d = fabs((double)a[i] - (double)b[i]);
        if (d > num) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return den > 0 ? num / den : num;
}

typedef struct fixture {
    model_config cfg;
    model_weights w;
    vision_train_state *st;
    grid g;
    int N, NU, K;
    float *pix;   /* (N, K) */
    float *R;     /* (NU, Do) */
    float *out;   /* (NU, Do) */
} fixture;

/* L = <R, out> in double. */
static double loss_at(fixture *f) {
    ergo_error err = {0};
    ergo_status s = vision_train_forward(f->st, &f->w, f->pix, f->g.t, f->g.h, f->g.w, f->out, &err);
    if (s) {
        CHECK(0, "forward: %s", err.msg);
        return 0;
    }
    double L = 0;
    for (size_t i = 0; i < (size_t)f->NU * f->cfg.vision.out_hidden; i++)
        L += (double)f->R[i] * (double)f->out[i];
    return L;
}

/* Forward + backward of L into a fresh gradient set (trainable as fn/ctx). */
static int grads_of(fixture *f, model_weights *g, grads_trainable_fn fn, void *ctx) {
    ergo_error err = {0};
    if (grads_alloc(g, &f->cfg, fn, ctx, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    loss_at(f);
    vision_train_backward(f->st, &f->w, g, f->R);
    return 1;
}

/* ---- (a) the forward against vision_encode ---- */

static void test_forward(fixture *f) {
    ergo_error err = {0};
    const int Do = f->cfg.vision.out_hidden;
    const size_t n_out = (size_t)f->NU * Do;
    model m;
    memset(&m, 0, sizeof m);
    m.config = f->cfg;
    m.weights = f->w;
    vision_state vs;
    if (vision_state_init(&vs, &f->cfg.vision, f->N, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    float *want = calloc(n_out, sizeof *want);
    ergo_status s = vision_encode(&m, &vs, f->pix, f->g.t, f->g.h, f->g.w, want, &err);
    CHECK(s == ERGO_OK, "vision_encode: %s", err.msg);
    loss_at(f);
    const double e = rel_diff(f->out, want, n_out);
    CHECK(e <= 1e-5, "grid (%d,%d,%d): training forward differs from vision_encode by %.3g "
          "relative (max-abs err / max-abs; tol 1e-5)", f->g.t, f->g.h, f->g.w, e);
    vision_state_free(&vs);
    free(want);
}

/* ---- (b) directional finite differences ---- */

/* Central difference of L along a random d (entries uniform in [-1, 1) times the
 * tensor's rms, 0.1 for biases, so that eps = 1e-3 is a relative step) against
 * <grad, step actually taken in f32> / 2 eps, in double. The error allowed is
 * 1e-3 (|<grad, d>| + |grad| |d| / sqrt(numel)) (the second term is the size of
 * <grad, d> for a random direction, so a draw nearly orthogonal to the gradient is
 * not held to zero) plus the f32 rounding of L over 2 eps: 4e-7 sum |R out| / eps. */
static void test_fd(fixture *f) {
    model_weights g;
    if (!grads_of(f, &g, is_vision, NULL)) return;
    const int Do = f->cfg.vision.out_hidden;
    double sum_abs = 0;
    for (size_t i = 0; i < (size_t)f->NU * Do; i++)
        sum_abs += fabs((double)f->R[i] * (double)f->out[i]);
    weight_spec *sw, *sg;
    const int n = vision_specs(&f->cfg, &f->w, &sw);
    vision_specs(&f->cfg, &g, &sg);
    const double eps = 1e-3;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        float *wt = train_grad(sw[i].slot);
        const float *gr = train_grad(sg[i].slot);
        const size_t ne = (size_t)sw[i].numel;
        double rms = 0;
        for (size_t j = 0; j < ne; j++) rms += (double)wt[j] * (double)wt[j];
        rms = sqrt(rms / (double)ne);
        if (sw[i].kind == WEIGHT_BIAS || rms == 0) rms = 0.1;
        const uint64_t ds = rng_stream_seed(99 + (uint64_t)f->g.t, sw[i].name);
        float *saved = malloc(sizeof(float) * ne), *plus = malloc(sizeof(float) * ne),
              *minus = malloc(sizeof(float) * ne);
        memcpy(saved, wt, sizeof(float) * ne);
        double an = 0, gn = 0, dn = 0, step = 0;
        for (size_t j = 0; j < ne; j++) {
            const double d = (double)rng_uniform(ds, j) * rms;
            plus[j] = (float)((double)saved[j] + eps * d);
            minus[j] = (float)((double)saved[j] - eps * d);
            an += (double)gr[j] * d;
            gn += (double)gr[j] * (double)gr[j];
            dn += d * d;
            /* the step actually taken in f32: plus - minus as rounded */
            step += (double)gr[j] * ((double)plus[j] - (double)minus[j]);
        }
        memcpy(wt, plus, sizeof(float) * ne);
        const double lp = loss_at(f);
        memcpy(wt, minus, sizeof(float) * ne);
        const double lm = loss_at(f);
        memcpy(wt, saved, sizeof(float) * ne);
        const double fd = (lp - lm) / (2 * eps);
        const double an_taken = step / (2 * eps);
        const double typical = sqrt(gn * dn / (double)ne); /* E|<g, d>| scale for a random d */
        const double tol = 1e-3 * (fabs(an) + typical) + 4e-7 * sum_abs / eps;
        const double e = fabs(fd - an_taken);
        if (e / tol > worst) worst = e / tol;
        CHECK(e <= tol && gn > 0,
              "grid (%d,%d,%d): %s: finite difference %.9g vs <grad, d> %.9g (err %.3g, tol "
              "%.3g, |grad| %.3g)",
              f->g.t, f->g.h, f->g.w, sw[i].name, fd, an_taken, e, tol, sqrt(gn));
        free(saved);
        free(plus);
        free(minus);
    }
    if (getenv("ERGO_VT_REPORT"))
        printf("    grid (%d,%d,%d): %d tensors, worst fd err / tol %.3g\n", f->g.t, f->g.h,
               f->g.w, n, worst);
    free(sw);
    free(sg);
    grads_free(&g, &f->cfg);
}

/* ---- (c) frozen parameters, accumulation, weights untouched ---- */

static size_t weights_bytes_hash(const model_config *cfg, model_weights *w, uint64_t *h) {
    weight_spec *sp;
    const int n = vision_specs(cfg, w, &sp);
    uint64_t x = UINT64_C(0xcbf29ce484222325);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *b = (const uint8_t *)train_grad(sp[i].slot);
        for (size_t j = 0; j < (size_t)sp[i].numel * sizeof(float); j++)
            x = (x ^ b[j]) * UINT64_C(0x100000001b3);
        total += (size_t)sp[i].numel;
    }
    free(sp);
    *h = x;
    return total;
}

/* Frozen by `names`: every trainable gradient equals the all-trainable one, every
 * frozen one is still NULL. */
static void check_frozen(fixture *f, const model_weights *full, const char *label,
                         const char *const *names, int n_names) {
    frozen_list fl = {names, n_names};
    model_weights g;
    if (!grads_of(f, &g, vision_not_frozen, &fl)) return;
    weight_spec *sg, *sf;
    const int n = vision_specs(&f->cfg, &g, &sg);
    vision_specs(&f->cfg, (model_weights *)full, &sf);
    int n_frozen = 0;
    for (int i = 0; i < n; i++) {
        const float *a = train_grad(sg[i].slot), *b = train_grad(sf[i].slot);
        int frozen = 0;
        for (int k = 0; k < n_names; k++) frozen |= !strcmp(sg[i].name, names[k]);
        if (frozen) {
            n_frozen++;
            CHECK(a == NULL, "%s: frozen %s got a buffer", label, sg[i].name);
            continue;
        }
        char what[160];
        snprintf(what, sizeof what, "%s: gradient of %s with others frozen", label, sg[i].name);
        CHECK_CLOSE(a, b, (size_t)sg[i].numel, 0, 1e-6, what);
    }
    CHECK_EQ_INT(n_frozen, n_names, "frozen tensors found");
    free(sg);
    free(sf);
    grads_free(&g, &f->cfg);
}

static void test_frozen(fixture *f) {
    uint64_t h0, h1;
    weights_bytes_hash(&f->cfg, &f->w, &h0);
    model_weights full;
    if (!grads_of(f, &full, is_vision, NULL)) return;
    weights_bytes_hash(&f->cfg, &f->w, &h1);
    CHECK(h0 == h1, "forward + backward wrote into the weights");

    /* a second backward of the same forward accumulates: exactly twice */
    model_weights twice;
    if (grads_of(f, &twice, is_vision, NULL)) {
        vision_train_backward(f->st, &f->w, &twice, f->R);
        weight_spec *st, *sf;
        const int n = vision_specs(&f->cfg, &twice, &st);
        vision_specs(&f->cfg, &full, &sf);
        for (int i = 0; i < n; i++) {
            const float *a = train_grad(st[i].slot), *b = train_grad(sf[i].slot);
            float *b2 = malloc(sizeof(float) * (size_t)sf[i].numel);
            double scale = 0;
            for (int64_t j = 0; j < sf[i].numel; j++) b2[j] = 2 * b[j], scale = fmax(scale, fabs(b2[j]));
            char what[160];
            snprintf(what, sizeof what, "two backwards accumulate into %s", st[i].name);
            /* g + g' sums its partial products in another order than 2 g (the blocked
             * kernels add into the existing gradient): a few f32 roundings of the tensor's
             * largest magnitude, not of each (possibly tiny) element */
            CHECK_CLOSE(a, b2, (size_t)sf[i].numel, 1e-5 * scale, 1e-6, what);
            free(b2);
        }
        free(st);
        free(sf);
        grads_free(&twice, &f->cfg);
    }

    /* scattered frozen tensors, including a weight without its bias and vice versa */
    static const char *const mixed[] = {
        "visual.blocks.0.attn.qkv.weight", "visual.blocks.1.norm2.weight",
        "visual.blocks.1.mlp.up_proj.bias", "visual.merger.mlp.0.bias",
        "visual.blocks.0.mlp.down_proj.weight"};
    check_frozen(f, &full, "mixed", mixed, 5);
    /* only the merger trainable: the backward stops below ln_q */
    static const char *const tower[] = {
        "visual.patch_embed.proj.weight",       "visual.blocks.0.norm1.weight",
        "visual.blocks.0.attn.qkv.weight",      "visual.blocks.0.attn.qkv.bias",
        "visual.blocks.0.attn.proj.weight",     "visual.blocks.0.attn.proj.bias",
        "visual.blocks.0.norm2.weight",         "visual.blocks.0.mlp.gate_proj.weight",
        "visual.blocks.0.mlp.gate_proj.bias",   "visual.blocks.0.mlp.up_proj.weight",
        "visual.blocks.0.mlp.up_proj.bias",     "visual.blocks.0.mlp.down_proj.weight",
        "visual.blocks.0.mlp.down_proj.bias",   "visual.blocks.1.norm1.weight",
        "visual.blocks.1.attn.qkv.weight",      "visual.blocks.1.attn.qkv.bias",
        "visual.blocks.1.attn.proj.weight",     "visual.blocks.1.attn.proj.bias",
        "visual.blocks.1.norm2.weight",         "visual.blocks.1.mlp.gate_proj.weight",
        "visual.blocks.1.mlp.gate_proj.bias",   "visual.blocks.1.mlp.up_proj.weight",
        "visual.blocks.1.mlp.up_proj.bias",     "visual.blocks.1.mlp.down_proj.weight",
        "visual.blocks.1.mlp.down_proj.bias"};
    check_frozen(f, &full, "merger only", tower, 25);
    /* only the patch embed trainable: the gradient crosses every frozen block */
    static const char *const all_but_embed[] = {
        "visual.blocks.0.norm1.weight",         "visual.blocks.0.attn.qkv.weight",
        "visual.blocks.0.attn.qkv.bias",        "visual.blocks.0.attn.proj.weight",
        "visual.blocks.0.attn.proj.bias",       "visual.blocks.0.norm2.weight",
        "visual.blocks.0.mlp.gate_proj.weight", "visual.blocks.0.mlp.gate_proj.bias",
        "visual.blocks.0.mlp.up_proj.weight",   "visual.blocks.0.mlp.up_proj.bias",
        "visual.blocks.0.mlp.down_proj.weight", "visual.blocks.0.mlp.down_proj.bias",
        "visual.blocks.1.norm1.weight",         "visual.blocks.1.attn.qkv.weight",
        "visual.blocks.1.attn.qkv.bias",        "visual.blocks.1.attn.proj.weight",
        "visual.blocks.1.attn.proj.bias",       "visual.blocks.1.norm2.weight",
        "visual.blocks.1.mlp.gate_proj.weight", "visual.blocks.1.mlp.gate_proj.bias",
        "visual.blocks.1.mlp.up_proj.weight",   "visual.blocks.1.mlp.up_proj.bias",
        "visual.blocks.1.mlp.down_proj.weight", "visual.blocks.1.mlp.down_proj.bias",
        "visual.merger.ln_q.weight",            "visual.merger.mlp.0.weight",
        "visual.merger.mlp.0.bias",             "visual.merger.mlp.2.weight",
        "visual.merger.mlp.2.bias"};
    check_frozen(f, &full, "patch embed only", all_but_embed, 29);
    grads_free(&full, &f->cfg);
}

/* ---- thread-count independence ---- */

static void test_threads(fixture *f) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    if (saved < 2) {
        SKIP("vision_train thread-count independence: only 1 OpenMP thread available");
        return;
    }
    model_weights a, b;
    omp_set_num_threads(1);
    const int ok_a = grads_of(f, &a, is_vision, NULL);
    omp_set_num_threads(saved);
    const int ok_b = grads_of(f, &b, is_vision, NULL);
    if (ok_a && ok_b) {
        weight_spec *sa, *sb;
        const int n = vision_specs(&f->cfg, &a, &sa);
        vision_specs(&f->cfg, &b, &sb);
        int same = 1;
        for (int i = 0; i < n; i++)
            if (memcmp(train_grad(sa[i].slot), train_grad(sb[i].slot),
                       sizeof(float) * (size_t)sa[i].numel)) {
                CHECK(0, "gradient of %s depends on the thread count (1 vs %d)", sa[i].name,
                      saved);
                same = 0;
            }
        if (same) check_passed++;
        free(sa);
        free(sb);
    }
    if (ok_a) grads_free(&a, &f->cfg);
    if (ok_b) grads_free(&b, &f->cfg);
#else
    SKIP("vision_train thread-count independence: built without OpenMP");
#endif
}

/* ---- errors ---- */

static void test_errors(fixture *f) {
    ergo_error err = {0};
    vision_train_state *st = NULL;
    CHECK(vision_train_state_new(&st, &f->cfg.vision, 2, &err) == ERGO_E_ARG &&
              strstr(err.msg, "max_patches") && !st,
          "state below one unit: %s", err.msg);
    vision_config bad = f->cfg.vision;
    bad.head_dim = 6;
    bad.n_heads = 5;
    bad.hidden = 30;
    CHECK(vision_train_state_new(&st, &bad, 64, &err) == ERGO_E_ARG && strstr(err.msg, "head dim"),
          "bad head dim: %s", err.msg);
    CHECK(vision_train_state_new(&st, &f->cfg.vision, 1 << 30, &err) == ERGO_E_LIMIT,
          "huge state: %s", err.msg);
    const int Do = f->cfg.vision.out_hidden;
    float *out = calloc((size_t)f->NU * Do, sizeof *out);
    ergo_status s = vision_train_forward(f->st, &f->w, f->pix, 1, 3, 4, out, &err);
    CHECK(s == ERGO_E_SHAPE && strstr(err.msg, "3x4"), "odd grid: %d %s", (int)s, err.msg);
    s = vision_train_forward(f->st, &f->w, f->pix, 1, 20, 20, out, &err);
    CHECK(s == ERGO_E_LIMIT && strstr(err.msg, "400 patches"), "over the limit: %d %s", (int)s,
          err.msg);
    s = vision_train_forward(f->st, &f->w, NULL, 1, 4, 4, out, &err);
    CHECK(s == ERGO_E_ARG, "no pixels: %d %s", (int)s, err.msg);
    s = vision_train_forward(f->st, &f->w, f->pix, 0, 4, 4, out, &err);
    CHECK(s == ERGO_E_ARG && strstr(err.msg, "empty"), "empty grid: %d %s", (int)s, err.msg);
    /* weights of another config are refused, not overrun */
    model_weights other = f->w;
    other.vision.patch_embed.k.rows = 64;
    s = vision_train_forward(f->st, &other, f->pix, 1, 4, 4, out, &err);
    CHECK(s == ERGO_E_ARG && strstr(err.msg, "shapes"), "wrong weights: %d %s", (int)s, err.msg);
    /* after a failed forward there is nothing to backpropagate: a no-op */
    model_weights g;
    if (grads_alloc(&g, &f->cfg, is_vision, NULL, &err) == ERGO_OK) {
        vision_train_backward(f->st, &f->w, &g, f->R);
        const float *pe = train_grad(&g.vision.patch_embed);
        int zero = 1;
        for (int i = 0; i < f->cfg.vision.hidden * f->K; i++) zero &= pe[i] == 0;
        CHECK(zero, "backward after a failed forward changed a gradient");
        grads_free(&g, &f->cfg);
    }
    free(out);
}

static int fixture_init(fixture *f, const model_config *cfg, const model_weights *w, grid g) {
    memset(f, 0, sizeof *f);
    f->cfg = *cfg;
    f->w = *w;
    f->g = g;
    const vision_config *v = &cfg->vision;
    f->K = v->in_channels * v->temporal_patch * v->patch * v->patch;
    f->N = g.t * g.h * g.w;
    f->NU = f->N / (v->merge * v->merge);
    ergo_error err = {0};
    if (vision_train_state_new(&f->st, v, f->N, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    f->pix = random_array((size_t)f->N * f->K, 11 + (uint64_t)g.t, 2.0f);
    f->R = random_array((size_t)f->NU * v->out_hidden, 23 + (uint64_t)g.t, 1.0f);
    f->out = calloc((size_t)f->NU * v->out_hidden, sizeof(float));
    return 1;
}

static void fixture_free(fixture *f) {
    vision_train_state_free(f->st);
    free(f->pix);
    free(f->R);
    free(f->out);
}

void test_vision_train(void) {
    ergo_error err = {0};
    if (kernels_init(NULL, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    model_config cfg;
    tiny_config(&cfg);
    model_weights w;
    if (!tiny_weights(&w, &cfg)) return;
    const grid grids[2] = {{1, 8, 12}, {2, 4, 6}};
    for (int i = 0; i < 2; i++) {
        fixture f;
        if (!fixture_init(&f, &cfg, &w, grids[i])) continue;
        test_forward(&f);
        test_fd(&f);
        if (i == 0) {
            test_frozen(&f);
            test_threads(&f);
            test_errors(&f);
        }
        fixture_free(&f);
    }
    grads_free(&w, &cfg);
}
