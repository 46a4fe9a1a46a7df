/* Tests of src/kernels/attention.c: the reference against a naive softmax(QK^T)V in
 * double, every ISA this CPU has against the reference, on sizes that straddle the
 * key tile (64) and the row block (4), causal and not, keys as rows and as K^T;
 * guard values after every output row; the independence of each row's result from
 * how the rows are grouped (what chunked prefill and threads rely on); the exp. */
#include <float.h>
#include <stdlib.h>

#include "base/rng.h"
#include "check.h"
#include "kernels/attention.h"

#define GUARD 8
static const float guard_value = -12345.678f;

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(seed, i) * scale;
}

/* out row i = softmax over keys j < limit[i] of (q_i . k_j) * scale, times V, in double */
static void naive(double *out, const float *q, const float *k, const float *v, size_t ld,
                  const int32_t *lim, int nq, int nk, int dh, float scale) {
    double *s = malloc(sizeof(double) * (size_t)nk);
    for (int i = 0; i < nq; i++) {
        const int n = lim ? lim[i] : nk;
        double mx = -(double)INFINITY, sum = 0;
        for (int j = 0; j < n; j++) {
            double d = 0;
            for (int t = 0; t < dh; t++) d += (double)q[(size_t)i * dh + t] * (double)k[(size_t)j * ld + t];
            s[j] = d * (double)scale;
            if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j < n; j++) sum += s[j] = exp(s[j] - mx);
        for (int t = 0; t < dh; t++) {
            double a = 0;
            for (int j = 0; j < n; j++) a += s[j] * (double)v[(size_t)j * ld + t];
            out[(size_t)i * dh + t] = a / sum;
        }
    }
    free(s);
}

typedef struct problem {
    int nq, nk, dh, causal;
    float qscale;
    float *q, *k, *kt, *v; /* q (nq, dh+3), k and v (nk, dh) or (nk, dh+4), kt (dh, nk+5) */
    int32_t *lim;
    size_t ldq, ldkt, ldkv;
} problem;

static void make_problem(problem *p, int nq, int nk, int dh, int causal, float qscale) {
    p->nq = nq, p->nk = nk, p->dh = dh, p->causal = causal, p->qscale = qscale;
    p->ldq = (size_t)dh + 3;
    p->ldkt = (size_t)nk + 5;
    p->ldkv = (size_t)dh + ((nq + nk) % 2 ? 4 : 0); /* strided keys/values half the time */
    p->q = calloc((size_t)nq * p->ldq, sizeof(float));
    p->k = malloc(sizeof(float) * (size_t)nk * p->ldkv);
    p->v = malloc(sizeof(float) * (size_t)nk * p->ldkv);
    p->kt = calloc((size_t)dh * p->ldkt, sizeof(float));
    p->lim = malloc(sizeof(int32_t) * (size_t)nq);
    for (int i = 0; i < nq; i++) fill(p->q + (size_t)i * p->ldq, (size_t)dh, 1000 + i, qscale);
    fill(p->k, (size_t)nk * p->ldkv, 7 + nk, 1.0f);
    fill(p->v, (size_t)nk * p->ldkv, 13 + nk, 1.0f);
    for (int j = 0; j < nk; j++)
        for (int d = 0; d < dh; d++) p->kt[(size_t)d * p->ldkt + j] = p->k[(size_t)j * p->ldkv + d];
    /* causal: the last query sees every key, earlier ones one fewer each; never below
     * 1 (a row sees at least itself), so no row is fully masked */
    for (int i = 0; i < nq; i++) {
        int l = nk - (nq - 1 - i);
        p->lim[i] = l < 1 ? 1 : l;
    }
}

static void free_problem(problem *p) {
    free(p->q), free(p->k), free(p->v), free(p->kt), free(p->lim);
}

/* Runs fn on p into out (nq rows of ldo = dh + GUARD, guards after each row and after
 * the scratch); returns 0 when a guard was overwritten. */
static int run(attn_block_fn fn, const problem *p, int use_kt, float *out, size_t ldo) {
    const size_t sn = attn_scratch_floats(p->nq, p->dh);
    float *scr = malloc(sizeof(float) * (sn + GUARD));
    for (size_t i = 0; i < (size_t)p->nq * ldo; i++) out[i] = guard_value;
    for (int i = 0; i < GUARD; i++) scr[sn + i] = guard_value;
    attn_keys kv = {.k = use_kt ? NULL : p->k, .ldk = p->ldkv, .kt = use_kt ? p->kt : NULL,
                    .ldkt = p->ldkt, .v = p->v, .ldv = p->ldkv, .nk = p->nk};
    fn(out, ldo, p->q, p->ldq, p->nq, p->causal ? p->lim : NULL, &kv, p->dh,
       1.0f / sqrtf((float)p->dh), scr);
    int ok = 1;
    for (int i = 0; i < p->nq; i++)
        for (size_t g = (size_t)p->dh; g < ldo; g++) ok &= out[(size_t)i * ldo + g] == guard_value;
    for (int i = 0; i < GUARD; i++) ok &= scr[sn + i] == guard_value;
    free(scr);
    return ok;
}

static double max_err(const float *got, size_t ldo, const double *want, int nq, int dh) {
    double e = 0;
    for (int i = 0; i < nq; i++)
        for (int d = 0; d < dh; d++) {
            double x = fabs((double)got[(size_t)i * ldo + d] - want[(size_t)i * dh + d]);
            if (!(x <= e)) e = x; /* NaN sticks */
        }
    return e;
}

static const int nqs[] = {1, 2, 3, 4, 5, 7, 9, 17, 33, 70};
static const int nks[] = {1, 2, 5, 63, 64, 65, 127, 129, 300};
static const int dhs[] = {80, 128, 64, 72, 20};

static void test_against_naive(void) {
    double worst[2] = {0, 0};
    for (size_t a = 0; a < sizeof nqs / sizeof *nqs; a++)
        for (size_t b = 0; b < sizeof nks / sizeof *nks; b++)
            for (size_t c = 0; c < sizeof dhs / sizeof *dhs; c++)
                for (int causal = 0; causal < 2; causal++) {
                    const int nq = nqs[a], nk = nks[b], dh = dhs[c];
                    const float qs = (a + b) % 3 == 0 ? 8.0f : 1.0f; /* peaked softmax too */
                    problem p;
                    make_problem(&p, nq, nk, dh, causal, qs);
                    double *want = malloc(sizeof(double) * (size_t)nq * dh);
                    const float *qc = p.q;
                    float *qd = malloc(sizeof(float) * (size_t)nq * dh); /* dense copy */
                    for (int i = 0; i < nq; i++)
                        memcpy(qd + (size_t)i * dh, qc + (size_t)i * p.ldq, sizeof(float) * dh);
                    naive(want, qd, p.k, p.v, p.ldkv, causal ? p.lim : NULL, nq, nk, dh,
                          1.0f / sqrtf((float)dh));
                    const size_t ldo = (size_t)dh + GUARD;
                    float *ref = malloc(sizeof(float) * (size_t)nq * ldo);
                    float *got = malloc(sizeof(float) * (size_t)nq * ldo);
                    CHECK(run(attn_block_ref, &p, 0, ref, ldo), "ref guards nq=%d nk=%d dh=%d", nq,
                          nk, dh);
                    /* outputs are convex combinations of values in [-1, 1]: absolute
                     * bounds; the peaked case carries the scores' rounding * 8 */
                    const double tol = qs > 1 ? 2e-5 : 4e-6;
                    double e = max_err(ref, ldo, want, nq, dh);
                    if (e > worst[0]) worst[0] = e;
                    CHECK(e <= tol, "ref vs naive nq=%d nk=%d dh=%d causal=%d q*%g: max err %.3g",
                          nq, nk, dh, causal, (double)qs, e);
                    for (int isa = ISA_AVX2; isa <= (int)cpu_best_isa(); isa++) {
                        attention_kernels t;
                        attention_kernels_for(&t, (cpu_isa)isa);
                        for (int use_kt = 0; use_kt < 2; use_kt++) {
                            CHECK(run(t.block, &p, use_kt, got, ldo),
                                  "%s guards nq=%d nk=%d dh=%d kt=%d", cpu_isa_name(isa), nq, nk,
                                  dh, use_kt);
                            double eg = max_err(got, ldo, want, nq, dh);
                            if (eg > worst[1]) worst[1] = eg;
                            CHECK(eg <= tol,
                                  "%s vs naive nq=%d nk=%d dh=%d causal=%d kt=%d q*%g: max err "
                                  "%.3g",
                                  cpu_isa_name(isa), nq, nk, dh, causal, use_kt, (double)qs, eg);
                        }
                    }
                    free(ref), free(got), free(want), free(qd);
                    free_problem(&p);
                }
    printf("  attention: max |err| vs double: ref %.3g, simd %.3g\n", worst[0], worst[1]);
}

/* Each row computed in one block equals, bit for bit, the same row computed alone
 * with only the keys up to its limit (chunked prefill / decode) and in other
 * groupings (threads): rows never influence each other. */
static void test_row_independence(void) {
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
        attention_kernels t;
        attention_kernels_for(&t, (cpu_isa)isa);
        for (int dh = 80; dh <= 128; dh += 48) {
            problem p;
            make_problem(&p, 70, 300, dh, 1, 2.0f);
            const size_t ldo = (size_t)dh + GUARD;
            float *all = malloc(sizeof(float) * 70 * ldo), *one = malloc(sizeof(float) * 70 * ldo);
            run(t.block, &p, 0, all, ldo);
            int bad = -1;
            /* row i alone, with nk cut at its limit (absent keys instead of masked ones) */
            for (int i = 0; i < p.nq && bad < 0; i++) {
                problem r = p;
                r.q = p.q + (size_t)i * p.ldq;
                r.nq = 1;
                r.lim = p.lim + i;
                r.nk = p.lim[i];
                run(t.block, &r, 0, one, ldo);
                if (memcmp(one, all + (size_t)i * ldo, sizeof(float) * dh)) bad = i;
            }
            CHECK(bad < 0, "%s dh=%d: row %d alone differs from the block", cpu_isa_name(isa), dh,
                  bad);
            /* rows in groups of 3 starting at 1 (another row-block alignment) */
            bad = -1;
            for (int i0 = 1; i0 < p.nq; i0 += 3) {
                problem r = p;
                r.q = p.q + (size_t)i0 * p.ldq;
                r.nq = p.nq - i0 < 3 ? p.nq - i0 : 3;
                r.lim = p.lim + i0;
                run(t.block, &r, 0, one, ldo);
                if (memcmp(one, all + (size_t)i0 * ldo, sizeof(float) * ((size_t)r.nq * ldo)) &&
                    bad < 0)
                    bad = i0;
            }
            CHECK(bad < 0, "%s dh=%d: rows from %d regrouped differ", cpu_isa_name(isa), dh, bad);
            free(all), free(one);
            free_problem(&p);
        }
    }
}

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static void test_exp(void) {
    enum { N = 200003 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * (N + GUARD));
    const float lo = -87.3f, hi = 88.7f;
    for (int i = 0; i < N; i++) x[i] = lo + (hi - lo) * (float)i / (float)(N - 1);
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 1e-8f, x[3] = -1e-8f, x[4] = 0.5f * 0.693147f;
    for (int isa = ISA_AVX2; isa <= (int)cpu_best_isa(); isa++) {
        attention_kernels t;
        attention_kernels_for(&t, (cpu_isa)isa);
        for (int g = 0; g < GUARD; g++) y[N + g] = guard_value;
        t.exp_f32(y, x, N);
        long max_ulp = 0;
        int at = 0;
        for (int i = 0; i < N; i++) {
            long d = labs((long)bits(y[i]) - (long)bits(expf(x[i])));
            if (d > max_ulp) max_ulp = d, at = i;
        }
        int guards = 1;
        for (int g = 0; g < GUARD; g++) guards &= y[N + g] == guard_value;
        CHECK(guards, "%s exp wrote past the end", cpu_isa_name(isa));
        CHECK(max_ulp <= 2, "%s exp: %ld ulp from expf at x = %.9g (%.9g vs %.9g)",
              cpu_isa_name(isa), max_ulp, (double)x[at], (double)y[at], (double)expf(x[at]));
        printf("  attention: %s exp max %ld ulp over [%g, %g]\n", cpu_isa_name(isa), max_ulp,
               (double)lo, (double)hi);
        /* the special values softmax relies on, and the edges */
        const float sx[] = {-INFINITY, 0.0f, -200.0f, -104.5f, -103.0f, -95.0f, -88.0f, 88.72f,
                            89.5f, INFINITY, 1.0f, -1.0f};
        float sy[sizeof sx / sizeof *sx];
        const size_t ns = sizeof sx / sizeof *sx;
        t.exp_f32(sy, sx, ns);
        CHECK(sy[0] == 0.0f && bits(sy[1]) == bits(1.0f) && sy[2] == 0.0f && sy[3] == 0.0f,
              "%s exp(-inf)=%g exp(0)=%.9g exp(-200)=%g exp(-104.5)=%g", cpu_isa_name(isa),
              (double)sy[0], (double)sy[1], (double)sy[2], (double)sy[3]);
        for (size_t i = 4; i < 7; i++) /* below FLT_MIN: absolute agreement only */
            CHECK(fabsf(sy[i] - expf(sx[i])) <= FLT_MIN, "%s exp(%g) = %g vs %g", cpu_isa_name(isa),
                  (double)sx[i], (double)sy[i], (double)expf(sx[i]));
        CHECK(isfinite(sy[7]) && isinf(sy[8]) && isinf(sy[9]), "%s exp overflow edges %g %g %g",
              cpu_isa_name(isa), (double)sy[7], (double)sy[8], (double)sy[9]);
        CHECK(labs((long)bits(sy[10]) - (long)bits(expf(1.0f))) <= 1 &&
                  labs((long)bits(sy[11]) - (long)bits(expf(-1.0f))) <= 1,
              "%s exp(+-1) %.9g %.9g", cpu_isa_name(isa), (double)sy[10], (double)sy[11]);
        /* odd lengths (tail handling) */
        for (size_t n = 1; n < 40; n += 3) {
            for (int g = 0; g < GUARD; g++) y[n + g] = guard_value;
            t.exp_f32(y, x + 5, n);
            int ok = 1;
            for (size_t i = 0; i < n; i++) ok &= labs((long)bits(y[i]) - (long)bits(expf(x[5 + i]))) <= 2;
            for (int g = 0; g < GUARD; g++) ok &= y[n + g] == guard_value;
            CHECK(ok, "%s exp n=%zu tail or guards", cpu_isa_name(isa), n);
        }
    }
    free(x), free(y);
}

void test_attention(void) {
    test_exp();
    test_against_naive();
    test_row_independence();
    if (cpu_best_isa() < ISA_AVX512) SKIP("this CPU has no AVX-512: those paths were not run");
}
