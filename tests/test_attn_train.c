/* Tests of src/kernels/attn_train.c: the tiled forward and FlashAttention-2 backward
 * against the naive definitions (out, lse, dq, dk, dv) on every ISA this CPU has, at
 * sizes straddling the tiles (64) and the row blocks (4), causal or not, grouped-query
 * (H / KV = 1, 2, 7), one span or several of uneven lengths; errors bounded relative
 * to each element's sum of |terms| (computed here in double); guard values after
 * every output; the naive backward against finite differences of the naive forward
 * (L = sum R * out); the forward against the inference kernel (attention.c's tile
 * kernel per span and head); bit-identical results whatever the number of threads. */
#include <float.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/rng.h"
#include "check.h"
#include "kernels/attention.h"
#include "kernels/attn_train.h"
#include "kernels/kernels.h"

#define GUARD 16
static const float guard_value = -7777.25f;

static float *alloc_guarded(size_t n) {
    float *x = malloc(sizeof(float) * (n + GUARD));
    for (size_t i = 0; i < GUARD; i++) x[n + i] = guard_value;
    return x;
}

static int guards_ok(const float *x, size_t n) {
    for (size_t i = 0; i < GUARD; i++)
        if (x[n + i] != guard_value) return 0;
    return 1;
}

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(seed, i) * scale;
}

/* One problem: inputs, the reference's outputs, and each output element's sum of
 * |terms| (the f32 error bound is relative to it). */
typedef struct prob {
    attn_train_args a;
    int32_t spans[64];
    float *q, *k, *v, *dout;                   /* inputs: (N, H*Dh), (N, KV*Dh) x2, (N, H*Dh) */
    float *out, *lse, *dq, *dk, *dv;           /* reference outputs */
    double *m_out, *m_lse, *m_dq, *m_dk, *m_dv; /* sums of |terms| */
} prob;

static size_t nq_el(const prob *p) { return (size_t)p->a.n * p->a.heads * p->a.dh; }
static size_t nk_el(const prob *p) { return (size_t)p->a.n * p->a.kv_heads * p->a.dh; }

/* spans: pattern 0 = one span (NULL), 1 = uneven lengths cycling through `lens`
 * (windows of an image, packed sequences), the last one clipped */
static void make_spans(prob *p, int pattern) {
    static const int lens[] = {23, 1, 64, 7, 65, 3, 130, 17};
    p->a.spans = NULL;
    p->a.n_spans = 0;
    if (pattern == 0) return;
    int s0 = 0, m = 0;
    while (s0 < p->a.n && m < 32) {
        int len = lens[(m + pattern) % 8];
        if (len > p->a.n - s0 || m == 31) len = p->a.n - s0;
        p->spans[2 * m] = s0;
        p->spans[2 * m + 1] = len;
        s0 += len;
        m++;
    }
    p->a.spans = p->spans;
    p->a.n_spans = m;
}

/* Sums of |terms| per output element, in double, from the reference's p:
 *   as_ij = scale sum|q k| + |lse_i| + 1  (the error of s and so the relative error of p)
 *   out: sum_j p as |v|;  lse: sum_j p as;
 *   ds_ij error ~ p (as |dp - D| + sum|dO v| + sum|dO O|) =: ads
 *   dq: scale sum_j ads |k|;  dk: scale sum_{h,i} ads |q|;  dv: sum_{h,i} p as |dO|. */
static void make_mags(prob *p) {
    const attn_train_args *a = &p->a;
    const int n = a->n, H = a->heads, KV = a->kv_heads, dh = a->dh, rep = H / KV;
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh;
    const double sc = (double)a->scale;
    p->m_out = calloc(nq_el(p), sizeof(double));
    p->m_dq = calloc(nq_el(p), sizeof(double));
    p->m_dk = calloc(nk_el(p), sizeof(double));
    p->m_dv = calloc(nk_el(p), sizeof(double));
    p->m_lse = calloc((size_t)H * n, sizeof(double));
    const int nsp = a->spans ? a->n_spans : 1;
    for (int sp = 0; sp < nsp; sp++) {
        const int s0 = a->spans ? a->spans[2 * sp] : 0, len = a->spans ? a->spans[2 * sp + 1] : n;
        for (int i = s0; i < s0 + len; i++)
            for (int h = 0; h < H; h++) {
                const size_t qo = (size_t)i * ldq + (size_t)h * dh, ko = (size_t)(h / rep) * dh;
                const double L = (double)p->lse[(size_t)h * n + i];
                double D = 0, aD = 0;
                for (int d = 0; d < dh; d++) {
                    D += (double)p->dout[qo + d] * (double)p->out[qo + d];
                    aD += fabs((double)p->dout[qo + d] * (double)p->out[qo + d]);
                }
                const int lim = a->causal ? i + 1 : s0 + len;
                for (int j = s0; j < lim; j++) {
                    const float *kj = p->k + (size_t)j * ldk + ko, *vj = p->v + (size_t)j * ldk + ko;
                    double s = 0, as = 0, dp = 0, adp = 0;
                    for (int d = 0; d < dh; d++) {
                        s += (double)p->q[qo + d] * (double)kj[d];
                        as += fabs((double)p->q[qo + d] * (double)kj[d]);
                        dp += (double)p->dout[qo + d] * (double)vj[d];
                        adp += fabs((double)p->dout[qo + d] * (double)vj[d]);
                    }
                    as = as * sc + fabs(L) + 1;
                    const double pp = exp(s * sc - L);
                    const double ads = pp * (as * fabs(dp - D) + adp + aD);
                    p->m_lse[(size_t)h * n + i] += pp * as;
                    for (int d = 0; d < dh; d++) {
                        p->m_out[qo + d] += pp * as * fabs((double)vj[d]);
                        p->m_dq[qo + d] += sc * ads * fabs((double)kj[d]);
                        p->m_dk[(size_t)j * ldk + ko + d] += sc * ads * fabs((double)p->q[qo + d]);
                        p->m_dv[(size_t)j * ldk + ko + d] += pp * as * fabs((double)p->dout[qo + d]);
                    }
                }
            }
    }
}

static void prob_init(prob *p, int n, int H, int KV, int dh, int causal, int spans, float qscale,
                      uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->a = (attn_train_args){n, H, KV, dh, causal, NULL, 0, 1.0f / sqrtf((float)dh)};
    make_spans(p, spans);
    p->q = malloc(sizeof(float) * nq_el(p));
    p->dout = malloc(sizeof(float) * nq_el(p));
    p->k = malloc(sizeof(float) * nk_el(p));
    p->v = malloc(sizeof(float) * nk_el(p));
    fill(p->q, nq_el(p), seed + 1, qscale);
    fill(p->k, nk_el(p), seed + 2, 1.0f);
    fill(p->v, nk_el(p), seed + 3, 1.0f);
    fill(p->dout, nq_el(p), seed + 4, 1.0f);
    p->out = malloc(sizeof(float) * nq_el(p));
    p->dq = malloc(sizeof(float) * nq_el(p));
    p->lse = malloc(sizeof(float) * (size_t)H * n);
    p->dk = malloc(sizeof(float) * nk_el(p));
    p->dv = malloc(sizeof(float) * nk_el(p));
    attn_train_forward_ref(&p->a, p->out, p->lse, p->q, p->k, p->v);
    attn_train_backward_ref(&p->a, p->dq, p->dk, p->dv, p->dout, p->q, p->k, p->v, p->out, p->lse);
    make_mags(p);
}

static void prob_free(prob *p) {
    free(p->q), free(p->k), free(p->v), free(p->dout);
    free(p->out), free(p->lse), free(p->dq), free(p->dk), free(p->dv);
    free(p->m_out), free(p->m_lse), free(p->m_dq), free(p->m_dk), free(p->m_dv);
}

/* worst |got - want| / (sum of |terms| + tiny) over n elements; NaN counts as huge */
static double worst_ratio(const float *got, const float *want, const double *mag, size_t n,
                          size_t *at) {
    double w = 0;
    *at = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - (double)want[i]);
        const double r = isfinite(e) ? e / (mag[i] + 1e-30) : (double)INFINITY;
        if (r > w) w = r, *at = i;
    }
    return w;
}

/* f32 error allowed, relative to the sum of |terms|: 2^-23 per rounding, a few dozen
 * accumulated roundings (sums of up to 130 keys and 128 dims) */
#define TOL 1e-6

static void set_isa(cpu_isa isa) { kernels_table_for(&kern, isa); }

/* tiled (kern at `isa`) vs reference; returns the worst ratio seen */
static double check_tiled(const prob *p, cpu_isa isa, const char *what) {
    const size_t nq = nq_el(p), nk = nk_el(p), nl = (size_t)p->a.heads * p->a.n;
    float *out = alloc_guarded(nq), *lse = alloc_guarded(nl), *dq = alloc_guarded(nq),
          *dk = alloc_guarded(nk), *dv = alloc_guarded(nk);
    set_isa(isa);
    attn_train_forward(&p->a, out, lse, p->q, p->k, p->v);
    attn_train_backward(&p->a, dq, dk, dv, p->dout, p->q, p->k, p->v, out, lse);
    const float *got[5] = {out, lse, dq, dk, dv}, *want[5] = {p->out, p->lse, p->dq, p->dk, p->dv};
    const double *mag[5] = {p->m_out, p->m_lse, p->m_dq, p->m_dk, p->m_dv};
    const size_t cnt[5] = {nq, nl, nq, nk, nk};
    static const char *const name[5] = {"out", "lse", "dq", "dk", "dv"};
    double worst = 0;
    for (int t = 0; t < 5; t++) {
        size_t at;
        const double r = worst_ratio(got[t], want[t], mag[t], cnt[t], &at);
        if (r > worst) worst = r;
        CHECK(r <= TOL, "%s %s %s n=%d H=%d KV=%d dh=%d causal=%d spans=%d: |err|/sum|terms| %.3g > %g at %zu (got %.9g want %.9g)",
              cpu_isa_name(isa), what, name[t], p->a.n, p->a.heads, p->a.kv_heads, p->a.dh,
              p->a.causal, p->a.n_spans, r, TOL, at, (double)got[t][at], (double)want[t][at]);
        CHECK(guards_ok(got[t], cnt[t]), "%s %s %s: wrote past the end (n=%d dh=%d)",
              cpu_isa_name(isa), what, name[t], p->a.n, p->a.dh);
    }
    free(out), free(lse), free(dq), free(dk), free(dv);
    return worst;
}

/* ---- tiled vs reference on every ISA ---- */
static void test_tiled_vs_ref(void) {
    /* n, H, KV, dh, causal, spans, qscale */
    static const int cases[][7] = {
        {1, 2, 1, 16, 0, 0, 1},    {1, 7, 1, 80, 1, 0, 1},    {3, 2, 2, 16, 1, 0, 1},
        {3, 4, 2, 128, 0, 1, 2},   {17, 7, 1, 16, 1, 0, 3},   {17, 2, 1, 80, 0, 1, 1},
        {67, 2, 1, 16, 0, 0, 3},   {67, 2, 2, 80, 1, 0, 2},   {67, 7, 1, 128, 1, 1, 1},
        {130, 2, 1, 16, 1, 0, 3},  {130, 4, 2, 16, 0, 0, 1},  {130, 2, 1, 80, 0, 1, 2},
        {130, 2, 2, 128, 1, 1, 3}, {130, 7, 1, 16, 1, 1, 2},  {130, 1, 1, 128, 0, 0, 1},
        {67, 3, 3, 20, 1, 1, 1}, /* Dh not a multiple of 8: the scalar micro-kernels */
    };
    const int nc = (int)(sizeof cases / sizeof cases[0]);
    const kernel_table saved = kern;
    double worst[3] = {0, 0, 0};
    for (int c = 0; c < nc; c++) {
        const int *z = cases[c];
        prob p;
        prob_init(&p, z[0], z[1], z[2], z[3], z[4], z[5], (float)z[6], 1000 + 10 * (uint64_t)c);
        for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
            const double w = check_tiled(&p, (cpu_isa)isa, "tiled");
            if (w > worst[isa]) worst[isa] = w;
        }
        prob_free(&p);
    }
    kern = saved;
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++)
        printf("  attn_train: %s tiled vs ref, worst |err|/sum|terms| %.3g (bound %g)\n",
               cpu_isa_name((cpu_isa)isa), worst[isa], TOL);
    if (cpu_best_isa() < ISA_AVX512)
        SKIP("this CPU has no AVX-512: attn_train's avx512 dispatch (the AVX2 table) was not run");
}

/* ---- the reference backward against finite differences of the reference forward ---- */

static double loss_of(const attn_train_args *a, const float *q, const float *k, const float *v,
                      const float *R, float *out, float *lse) {
    attn_train_forward_ref(a, out, lse, q, k, v);
    double L = 0;
    for (size_t i = 0; i < (size_t)a->n * a->heads * a->dh; i++) L += (double)R[i] * (double)out[i];
    return L;
}

static void test_finite_differences(void) {
    /* n, H, KV, dh, causal, spans */
    static const int cases[][6] = {{5, 2, 1, 4, 0, 0}, {6, 2, 2, 3, 1, 0}, {9, 4, 2, 4, 1, 1},
                                   {7, 3, 1, 5, 0, 1}};
    for (int c = 0; c < 4; c++) {
        const int *z = cases[c];
        prob p;
        memset(&p, 0, sizeof p);
        p.a = (attn_train_args){z[0], z[1], z[2], z[3], z[4], NULL, 0, 1.0f / sqrtf((float)z[3])};
        make_spans(&p, z[5] ? 3 : 0); /* lens 7, 65, ..: 2 spans of 7 and 2 */
        const size_t nq = nq_el(&p), nk = nk_el(&p);
        float *x[3], *g[3], *R = malloc(sizeof(float) * nq), *out = malloc(sizeof(float) * nq);
        float *lse = malloc(sizeof(float) * (size_t)p.a.heads * p.a.n);
        const size_t cnt[3] = {nq, nk, nk};
        for (int t = 0; t < 3; t++) {
            x[t] = malloc(sizeof(float) * cnt[t]);
            g[t] = malloc(sizeof(float) * cnt[t]);
            fill(x[t], cnt[t], 500 + 7 * (uint64_t)c + (uint64_t)t, 1.5f);
        }
        fill(R, nq, 600 + (uint64_t)c, 1.0f);
        loss_of(&p.a, x[0], x[1], x[2], R, out, lse);
        attn_train_backward_ref(&p.a, g[0], g[1], g[2], R, x[0], x[1], x[2], out, lse);
        static const char *const name[3] = {"dq", "dk", "dv"};
        const float hstep = 1e-2f;
        for (int t = 0; t < 3; t++) {
            double worst = 0;
            size_t at = 0;
            double fd_at = 0;
            for (size_t i = 0; i < cnt[t]; i++) {
                const float x0 = x[t][i];
                x[t][i] = x0 + hstep;
                const double lp = loss_of(&p.a, x[0], x[1], x[2], R, out, lse);
                x[t][i] = x0 - hstep;
                const double lm = loss_of(&p.a, x[0], x[1], x[2], R, out, lse);
                x[t][i] = x0;
                const double fd = (lp - lm) / (2 * (double)hstep);
                const double e = fabs(fd - (double)g[t][i]) / (1e-3 + 1e-2 * fabs(fd));
                if (!(e <= worst)) worst = e, at = i, fd_at = fd;
            }
            CHECK(worst <= 1.0, "finite differences n=%d H=%d KV=%d dh=%d causal=%d spans=%d %s[%zu]: analytic %.6g, fd %.6g",
                  p.a.n, p.a.heads, p.a.kv_heads, p.a.dh, p.a.causal, p.a.n_spans, name[t], at,
                  (double)g[t][at], fd_at);
        }
        for (int t = 0; t < 3; t++) free(x[t]), free(g[t]);
        free(R), free(out), free(lse);
    }
}

/* ---- the forward against the inference kernel (attention.c), per span and head ---- */
static void test_matches_inference(void) {
    static const int cases[][6] = {{130, 4, 2, 80, 1, 1}, {130, 2, 1, 128, 0, 0},
                                   {67, 7, 1, 16, 1, 0}, {130, 4, 4, 80, 0, 1}};
    const kernel_table saved = kern;
    for (int c = 0; c < 4; c++) {
        const int *z = cases[c];
        prob p;
        prob_init(&p, z[0], z[1], z[2], z[3], z[4], z[5], 2.0f, 2000 + 10 * (uint64_t)c);
        const attn_train_args *a = &p.a;
        const int H = a->heads, dh = a->dh, rep = H / a->kv_heads;
        const size_t ldq = (size_t)H * dh, ldk = (size_t)a->kv_heads * dh;
        float *inf = malloc(sizeof(float) * nq_el(&p)), *out = malloc(sizeof(float) * nq_el(&p));
        float *lse = malloc(sizeof(float) * (size_t)H * a->n);
        float *scr = malloc(sizeof(float) * attn_scratch_floats(a->n, dh));
        int32_t *lim = malloc(sizeof(int32_t) * (size_t)a->n);
        for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
            attention_kernels t;
            attention_kernels_for(&t, (cpu_isa)isa);
            const int nsp = a->spans ? a->n_spans : 1;
            for (int sp = 0; sp < nsp; sp++) {
                const int s0 = a->spans ? a->spans[2 * sp] : 0, len = a->spans ? a->spans[2 * sp + 1] : a->n;
                for (int i = 0; i < len; i++) lim[i] = i + 1;
                for (int h = 0; h < H; h++) {
                    const size_t ko = (size_t)s0 * ldk + (size_t)(h / rep) * dh;
                    const attn_keys kv = {.k = p.k + ko, .ldk = ldk, .v = p.v + ko, .ldv = ldk, .nk = len};
                    t.block(inf + (size_t)s0 * ldq + (size_t)h * dh, ldq, p.q + (size_t)s0 * ldq + (size_t)h * dh,
                            ldq, len, a->causal ? lim : NULL, &kv, dh, a->scale, scr);
                }
            }
            set_isa((cpu_isa)isa);
            attn_train_forward(a, out, lse, p.q, p.k, p.v);
            size_t at;
            const double r = worst_ratio(out, inf, p.m_out, nq_el(&p), &at);
            CHECK(r <= TOL, "%s forward vs attention.c n=%d H=%d KV=%d dh=%d causal=%d: %.3g > %g at %zu (%.9g vs %.9g)",
                  cpu_isa_name((cpu_isa)isa), a->n, H, a->kv_heads, dh, a->causal, r, TOL, at,
                  (double)out[at], (double)inf[at]);
        }
        free(inf), free(out), free(lse), free(scr), free(lim);
        prob_free(&p);
    }
    kern = saved;
}

/* ---- bit-identical whatever the number of threads ---- */
static void test_thread_determinism(void) {
#ifdef _OPENMP
    const kernel_table saved = kern;
    const int before = omp_get_max_threads();
    for (int c = 0; c < 2; c++) {
        prob p;
        prob_init(&p, 130, 4, 2, c ? 80 : 16, c, 1 - c, 2.0f, 3000 + (uint64_t)c);
        const size_t nq = nq_el(&p), nk = nk_el(&p), nl = (size_t)p.a.heads * p.a.n;
        float *r1[5] = {0};
        for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
            set_isa((cpu_isa)isa);
            for (int nt = 1; nt <= 3; nt++) {
                omp_set_num_threads(nt);
                float *o = malloc(sizeof(float) * nq), *l = malloc(sizeof(float) * nl),
                      *dq = malloc(sizeof(float) * nq), *dk = malloc(sizeof(float) * nk),
                      *dv = malloc(sizeof(float) * nk);
                attn_train_forward(&p.a, o, l, p.q, p.k, p.v);
                attn_train_backward(&p.a, dq, dk, dv, p.dout, p.q, p.k, p.v, o, l);
                float *cur[5] = {o, l, dq, dk, dv};
                const size_t cnt[5] = {nq, nl, nq, nk, nk};
                if (nt == 1) {
                    memcpy(r1, cur, sizeof r1);
                    continue;
                }
                int same = 1;
                for (int t = 0; t < 5; t++) same &= !memcmp(cur[t], r1[t], sizeof(float) * cnt[t]);
                CHECK(same, "%s %d threads differ from 1 thread (n=%d dh=%d causal=%d)",
                      cpu_isa_name((cpu_isa)isa), nt, p.a.n, p.a.dh, p.a.causal);
                for (int t = 0; t < 5; t++) free(cur[t]);
            }
            for (int t = 0; t < 5; t++) free(r1[t]);
        }
        prob_free(&p);
    }
    omp_set_num_threads(before);
    kern = saved;
#else
    SKIP("built without OpenMP: thread determinism not tested");
#endif
}

void test_attn_train(void) {
    test_tiled_vs_ref();
    test_finite_differences();
    test_matches_inference();
    test_thread_determinism();
}
