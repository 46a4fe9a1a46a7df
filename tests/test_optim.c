/* Tests of src/train/optim.c against torch 2.8 / transformers 4.56.2
 * (tests/fixtures/train/optim.json + optim.safetensors, tools/fixtures_train.py):
 *   - 5 steps of clip_grad_norm_(max_norm 1) + AdamW(lr 3e-3, wd 0.1 on some tensors)
 *     under the cosine schedule with 2 warm-up steps, on 7 tensors of odd sizes with
 *     given gradients: the norms, the clipped gradients, the lrs, and the weights and
 *     both moments after every step, run as a chain (our own state throughout) and
 *     step by step (from torch's state);
 *   - lr_at against transformers' LambdaLR for constant / linear / cosine schedules;
 *   - a NaN and an Inf gradient: the norm is returned as is and nothing is scaled.
 * Bounds are in ulps of float32: torch's f32 sqrt on this CPU is not correctly rounded
 * (1 value in 6 is 1 ulp off) and its vector_norm sums in another order, so we cannot
 * be bit-exact; everything else follows torch's operations and roundings. */
#include <stdint.h>

#include "train/optim.h"
#include "train_fixture.h"

/* Distance in representable floats (0 when equal; huge across NaN). */
static int64_t ulps(float a, float b) {
    if (a == b) return 0;
    if (isnan(a) || isnan(b)) return INT64_MAX;
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int64_t la = ia < 0 ? (int64_t)INT32_MIN - ia : ia, lb = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return la > lb ? la - lb : lb - la;
}

/* Max ulp distance of n floats, with the worst index; one CHECK against bound. */
static int64_t check_ulps(const float *got, const float *want, size_t n, int64_t bound,
                          const char *label) {
    int64_t worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t u = ulps(got[i], want[i]);
        if (u > worst) {
            worst = u;
            at = i;
        }
    }
    CHECK(worst <= bound, "%s: %lld ulps at %zu (got %.9g, want %.9g; bound %lld)", label,
          (long long)worst, at, (double)got[at], (double)want[at], (long long)bound);
    return worst;
}

enum { N_T = 16 };
/* norm: double sums vs torch's f32 cascade; clipped grad: the norm's ulp goes through
 * the clip coefficient and one product; one step: torch's sqrt. */
enum { ULP_NORM = 2, ULP_GRAD = 4, ULP_STEP = 2 };
/* The 5-step chain carries those ulps into the moments, where m = 0.9 m + 0.1 g cancels:
 * a few ulps of the inputs are many ulps of a small result. We bound the chain
 * relative to the tensor's scale instead: |err| <= 2^-20 (|want| + max |want|). */
#define CHAIN_REL 9.5367431640625e-07

/* The chain bound; returns the worst |err| / (|want| + max |want|). */
static double check_chain(const float *got, const float *want, size_t n, const char *label) {
    double scale = 0, worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)want[i]) > scale) scale = fabs((double)want[i]);
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]) / (fabs((double)want[i]) + scale);
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    CHECK(worst <= CHAIN_REL, "%s: relative error %.3g at %zu (got %.9g, want %.9g; bound %.3g)",
          label, worst, at, (double)got[at], (double)want[at], CHAIN_REL);
    return worst;
}

typedef struct opt_case {
    int n;
    char names[N_T][16];
    opt_param ps[N_T];
    float *store[N_T];
} opt_case;

static float *tensor_copy(const safetensors_file *st, const char *t, const char *what, int k,
                          size_t n) {
    char key[64];
    snprintf(key, sizeof key, "%s.%s%d", t, what, k);
    size_t m = 0;
    float *v = trf_read(st, key, &m);
    CHECK(!v || m == n, "%s: %zu elements, want %zu", key, m, n);
    return v && m == n ? v : (free(v), NULL);
}

static void test_optim_steps(const json_t *o, const safetensors_file *st) {
    const json_t *ts = json_object_get(o, "tensors");
    const json_t *oc = json_object_get(o, "optimizer");
    const json_t *sc = json_object_get(o, "schedule");
    const int steps = (int)json_integer_value(json_object_get(o, "steps"));
    const int n = (int)json_array_size(ts);
    if (n > N_T || n == 0) {
        CHECK(0, "optim.json: %d tensors", n);
        return;
    }
    const adamw_config cfg = {
        (float)json_number_value(json_array_get(json_object_get(oc, "betas"), 0)),
        (float)json_number_value(json_array_get(json_object_get(oc, "betas"), 1)),
        (float)json_number_value(json_object_get(oc, "eps")),
        (float)json_number_value(json_object_get(oc, "weight_decay"))};
    const float max_norm = (float)json_number_value(json_object_get(oc, "max_norm"));
    const lr_schedule sched = {LR_COSINE, (float)json_number_value(json_object_get(sc, "lr")),
                               json_integer_value(json_object_get(sc, "warmup")),
                               json_integer_value(json_object_get(sc, "total"))};
    opt_param chain[N_T], one[N_T];
    const char *names[N_T];
    for (int k = 0; k < n; k++) {
        const json_t *t = json_array_get(ts, (size_t)k);
        names[k] = trf_str(t, "name");
        size_t numel = 1;
        const json_t *sh = json_object_get(t, "shape");
        for (size_t d = 0; d < json_array_size(sh); d++)
            numel *= (size_t)json_integer_value(json_array_get(sh, d));
        const int decay = (int)json_integer_value(json_object_get(t, "decay"));
        chain[k] = (opt_param){tensor_copy(st, names[k], "w", 0, numel), NULL,
                               calloc(numel, sizeof(float)), calloc(numel, sizeof(float)), numel,
                               decay};
        one[k] = (opt_param){NULL, NULL, NULL, NULL, numel, decay};
        if (!chain[k].w) return;
    }
    const json_t *norms = json_object_get(o, "grad_norms"), *lrs = json_object_get(o, "lrs");
    int64_t worst_step = 0, worst_norm = 0, worst_grad = 0;
    double worst_chain = 0;
    for (int t = 0; t < steps; t++) {
        char label[96];
        /* the lr torch used at this step */
        const float lr = lr_at(&sched, t);
        const float lr_want = (float)json_number_value(json_array_get(lrs, (size_t)t));
        snprintf(label, sizeof label, "lr_at(cosine) step %d", t);
        check_ulps(&lr, &lr_want, 1, 0, label);
        /* chain: our clip of torch's raw gradient, then our step from our state */
        for (int k = 0; k < n; k++) chain[k].g = tensor_copy(st, names[k], "g", t, chain[k].n);
        const float norm = grad_clip_global_norm(chain, n, max_norm);
        const float norm_want = (float)json_number_value(json_array_get(norms, (size_t)t));
        snprintf(label, sizeof label, "grad norm step %d", t);
        int64_t u = check_ulps(&norm, &norm_want, 1, ULP_NORM, label);
        if (u > worst_norm) worst_norm = u;
        for (int k = 0; k < n; k++) {
            float *gc = tensor_copy(st, names[k], "gclip", t, chain[k].n);
            snprintf(label, sizeof label, "clipped grad %s step %d", names[k], t);
            if (gc) u = check_ulps(chain[k].g, gc, chain[k].n, ULP_GRAD, label);
            if (gc && u > worst_grad) worst_grad = u;
            free(gc);
        }
        adamw_step(chain, n, &cfg, t + 1, lr);
        /* one step from torch's state and torch's clipped gradient */
        for (int k = 0; k < n; k++) {
            one[k].w = tensor_copy(st, names[k], "w", t, one[k].n);
            one[k].g = tensor_copy(st, names[k], "gclip", t, one[k].n);
            one[k].m = t ? tensor_copy(st, names[k], "m", t, one[k].n) : calloc(one[k].n, 4);
            one[k].v = t ? tensor_copy(st, names[k], "v", t, one[k].n) : calloc(one[k].n, 4);
        }
        adamw_step(one, n, &cfg, t + 1, lr);
        for (int k = 0; k < n; k++) {
            static const char *const what[3] = {"w", "m", "v"};
            for (int q = 0; q < 3; q++) {
                float *want = tensor_copy(st, names[k], what[q], t + 1, one[k].n);
                if (!want) continue;
                const float *gc = q == 0 ? chain[k].w : q == 1 ? chain[k].m : chain[k].v;
                const float *go = q == 0 ? one[k].w : q == 1 ? one[k].m : one[k].v;
                snprintf(label, sizeof label, "chain %s.%s after step %d", names[k], what[q], t + 1);
                const double r = check_chain(gc, want, one[k].n, label);
                if (r > worst_chain) worst_chain = r;
                snprintf(label, sizeof label, "one step %s.%s after step %d", names[k], what[q],
                         t + 1);
                u = check_ulps(go, want, one[k].n, ULP_STEP, label);
                if (u > worst_step) worst_step = u;
                free(want);
            }
            free(one[k].w);
            free(one[k].g);
            free(one[k].m);
            free(one[k].v);
            free(chain[k].g);
        }
    }
    printf("  optim vs torch: norm %lld ulps, clipped grads %lld ulps, one step %lld ulps, "
           "5-step chain %.2g of the tensor scale\n",
           (long long)worst_norm, (long long)worst_grad, (long long)worst_step, worst_chain);
    for (int k = 0; k < n; k++) {
        free(chain[k].w);
        free(chain[k].m);
        free(chain[k].v);
    }
}

static void test_optim_schedules(const json_t *o) {
    const json_t *sc = json_object_get(o, "schedules");
    CHECK(json_array_size(sc) >= 6, "optim.json: %zu schedules", json_array_size(sc));
    int checked = 0;
    for (size_t i = 0; i < json_array_size(sc); i++) {
        const json_t *s = json_array_get(sc, i);
        const char *kind = trf_str(s, "kind");
        lr_schedule ls = {strcmp(kind, "cosine") == 0   ? LR_COSINE
                          : strcmp(kind, "linear") == 0 ? LR_LINEAR
                                                        : LR_CONSTANT,
                          (float)json_number_value(json_object_get(s, "lr")),
                          json_integer_value(json_object_get(s, "warmup")),
                          json_integer_value(json_object_get(s, "total"))};
        const json_t *steps = json_object_get(s, "steps");
        int64_t worst = 0, at = -1;
        for (size_t k = 0; k < json_array_size(steps); k++) {
            const json_t *p = json_array_get(steps, k);
            const int64_t step = json_integer_value(json_array_get(p, 0));
            const float want = (float)json_number_value(json_array_get(p, 1));
            const float got = lr_at(&ls, step);
            int64_t u = ulps(got, want);
            if (u > worst) {
                worst = u;
                at = step;
            }
            checked++;
        }
        CHECK(worst == 0, "lr_at(%s, warmup %lld, total %lld): %lld ulps off at step %lld", kind,
              (long long)ls.warmup, (long long)ls.total, (long long)worst, (long long)at);
    }
    CHECK(checked > 50, "schedules: %d values", checked);
}

static void test_optim_nonfinite(const json_t *o) {
    const json_t *cases = json_object_get(o, "nan");
    CHECK(json_array_size(cases) == 2, "optim.json: %zu non-finite cases", json_array_size(cases));
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_object_get(json_array_get(cases, i), "grads");
        opt_param ps[2];
        int n0, n1;
        float *g0 = trf_floats(json_array_get(c, 0), &n0);
        float *g1 = trf_floats(json_array_get(c, 1), &n1);
        /* JSON has no NaN / Inf: jansson gives 0 for them, so we set the bad value here */
        const char *want = trf_str(json_array_get(cases, i), "norm");
        g1[n1 - 1] = i == 0 ? NAN : INFINITY;
        float w[4] = {0}, m[4] = {0}, v[4] = {0};
        ps[0] = (opt_param){w, g0, m, v, (size_t)n0, 0};
        ps[1] = (opt_param){w, g1, m, v, (size_t)n1, 0};
        const float norm = grad_clip_global_norm(ps, 2, 1.0f);
        /* torch returns the non-finite norm too (recorded as the string "nan" / "inf") */
        if (i == 0)
            CHECK(isnan(norm) && strcmp(want, "nan") == 0, "NaN gradient: norm %g, torch %s",
                  (double)norm, want);
        else
            CHECK(isinf(norm) && norm > 0 && strcmp(want, "inf") == 0,
                  "Inf gradient: norm %g, torch %s", (double)norm, want);
        int scaled = 0;
        for (int k = 0; k < n0; k++) scaled += g0[k] != 1.0f;
        scaled += g1[0] != 1.0f;
        CHECK(scaled == 0, "non-finite norm: %d gradient values were scaled", scaled);
        free(g0);
        free(g1);
    }
    /* max_norm 0 (no clipping): the norm is returned, nothing changes */
    float g[3] = {3, 4, 12}, w[3] = {0}, m[3] = {0}, v[3] = {0};
    opt_param p = {w, g, m, v, 3, 0};
    const float norm = grad_clip_global_norm(&p, 1, 0.0f);
    CHECK(norm == 13.0f && g[2] == 12.0f, "max_norm 0: norm %g, g %g", (double)norm, (double)g[2]);
    /* under max_norm: unchanged (torch multiplies by a clamped 1) */
    const float n2 = grad_clip_global_norm(&p, 1, 20.0f);
    CHECK(n2 == 13.0f && g[0] == 3.0f && g[2] == 12.0f, "under max_norm: norm %g", (double)n2);
    /* over: scaled by max_norm / (norm + 1e-6) */
    const float n3 = grad_clip_global_norm(&p, 1, 6.5f);
    CHECK(n3 == 13.0f && fabsf(g[2] - 6.0f) < 1e-5f, "clipped: norm %g, g %g", (double)n3,
          (double)g[2]);
}

void test_optim(void) {
    json_t *o = trf_json("optim.json");
    if (!o) return;
    safetensors_file st = {0};
    if (trf_open(&st, trf_str(o, "file"))) test_optim_steps(o, &st);
    safetensors_close(&st);
    test_optim_schedules(o);
    test_optim_nonfinite(o);
    json_decref(o);
}
