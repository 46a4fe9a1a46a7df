/* Tests of src/kernels/attention.c: the reference against a naive softmax(QK^T)V in
 * double, every ISA this CPU has against the reference, on sizes that straddle the
 * key tile (64) and the row block (4), causal and not, keys as rows and as K^T;
 * guard values after every output row; the independence of each row's result from
 * how the rows are grouped (what chunked prefill and threads rely on); keys from a
 * paged cache (f32 and bf16 tiles) against the rows mode bit for bit, with junk in
 * the last tile; the exp. */
#include <float.h>
#include <stdlib.h>

#include "base/half.h"
#include "base/rng.h"
#include "check.h"
#include "kernels/attention.h"

#define GUARD 8
static const float guard_value = -12345.678f;

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

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

/* The same problem with its keys and values rounded to bf16 and widened back (q and
 * lim shared with p; free with free_rounded). */
static void make_rounded(problem *r, const problem *p) {
    *r = *p;
    r->k = malloc(sizeof(float) * (size_t)p->nk * p->ldkv);
    r->v = malloc(sizeof(float) * (size_t)p->nk * p->ldkv);
    r->kt = malloc(sizeof(float) * (size_t)p->dh * p->ldkt);
    for (size_t i = 0; i < (size_t)p->nk * p->ldkv; i++) {
        r->k[i] = bf16_to_f32_one(f32_to_bf16_one(p->k[i]));
        r->v[i] = bf16_to_f32_one(f32_to_bf16_one(p->v[i]));
    }
    for (size_t i = 0; i < (size_t)p->dh * p->ldkt; i++)
        r->kt[i] = bf16_to_f32_one(f32_to_bf16_one(p->kt[i]));
}

static void free_rounded(problem *r) { free(r->k), free(r->v), free(r->kt); }

/* A paged copy of a problem's keys and values (the layout of attention.h): each tile
 * its own allocation of exactly one block (so ASan sees any read past it), the keys
 * past nk in the last tile filled with junk that must not reach any result. */
typedef struct paged {
    void **tiles; /* (n) blocks of 2 * ATTN_KTILE * dh f32 or bf16 */
    int n, bf16;
} paged;

enum { JUNK_ZERO, JUNK_NAN, JUNK_INF, JUNK_HUGE, JUNK_BITS, N_JUNK };
static const char *const junk_name[N_JUNK] = {"zero", "NaN", "inf", "huge", "random bits"};

static uint32_t junk_bits(int kind, size_t i, int bf16) {
    float x = 0.0f;
    switch (kind) {
    case JUNK_NAN: x = i % 2 ? NAN : -NAN; break;
    case JUNK_INF: x = i % 2 ? INFINITY : -INFINITY; break;
    case JUNK_HUGE: x = i % 2 ? FLT_MAX : -3e38f; break;
    case JUNK_BITS: { /* any pattern, signalling NaNs and denormals included */
        uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        return bf16 ? (uint32_t)(h & 0xffff) : (uint32_t)h;
    }
    default: break;
    }
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return bf16 ? f32_to_bf16_one(x) : u;
}

static void make_paged(paged *pg, const problem *p, int bf16, int junk) {
    const size_t dh = (size_t)p->dh, T = ATTN_KTILE, n = 2 * T * dh;
    pg->n = (p->nk + ATTN_KTILE - 1) / ATTN_KTILE;
    pg->bf16 = bf16;
    pg->tiles = malloc(sizeof(void *) * (size_t)pg->n);
    for (int t = 0; t < pg->n; t++) {
        pg->tiles[t] = malloc(n * (bf16 ? sizeof(uint16_t) : sizeof(float)));
        for (size_t i = 0; i < n; i++) {
            const int kt = i < T * dh; /* K^T (dh, T) then V (T, dh) */
            const size_t j = kt ? i % T : (i - T * dh) / dh, d = kt ? i / T : (i - T * dh) % dh;
            const size_t key = (size_t)t * T + j;
            uint32_t u;
            if (key < (size_t)p->nk) {
                const float x = (kt ? p->k : p->v)[key * p->ldkv + d];
                memcpy(&u, &x, sizeof u);
                if (bf16) u = f32_to_bf16_one(x);
            } else {
                u = junk_bits(junk, i, bf16);
            }
            if (bf16) {
                ((uint16_t *)pg->tiles[t])[i] = (uint16_t)u;
            } else {
                memcpy((float *)pg->tiles[t] + i, &u, sizeof u);
            }
        }
    }
}

static void free_paged(paged *pg) {
    for (int t = 0; t < pg->n; t++) free(pg->tiles[t]);
    free(pg->tiles);
}

/* Runs fn on p with keys kv into out (nq rows of ldo = dh + GUARD, guards after each
 * row and after the scratch); returns 0 when a guard was overwritten. */
static int run_kv(attn_block_fn fn, const problem *p, const attn_keys *kv, float *out,
                  size_t ldo) {
    const size_t sn = attn_scratch_floats(p->nq, p->dh);
    float *scr = malloc(sizeof(float) * (sn + GUARD));
    for (size_t i = 0; i < (size_t)p->nq * ldo; i++) out[i] = guard_value;
    for (int i = 0; i < GUARD; i++) scr[sn + i] = guard_value;
    fn(out, ldo, p->q, p->ldq, p->nq, p->causal ? p->lim : NULL, kv, p->dh,
       1.0f / sqrtf((float)p->dh), scr);
    int ok = 1;
    for (int i = 0; i < p->nq; i++)
        for (size_t g = (size_t)p->dh; g < ldo; g++) ok &= out[(size_t)i * ldo + g] == guard_value;
    for (int i = 0; i < GUARD; i++) ok &= scr[sn + i] == guard_value;
    free(scr);
    return ok;
}

/* keys as rows (use_kt = 0) or as K^T */
static int run(attn_block_fn fn, const problem *p, int use_kt, float *out, size_t ldo) {
    const attn_keys kv = {.k = use_kt ? NULL : p->k, .ldk = p->ldkv, .kt = use_kt ? p->kt : NULL,
                          .ldkt = p->ldkt, .v = p->v, .ldv = p->ldkv, .nk = p->nk};
    return run_kv(fn, p, &kv, out, ldo);
}

/* keys from pg; p gives nk (<= what pg holds), q and the limits */
static int run_paged(attn_block_fn fn, const problem *p, const paged *pg, float *out, size_t ldo) {
    const attn_keys kv = {.nk = p->nk, .tiles = (const void *const *)pg->tiles,
                          .tiles_bf16 = pg->bf16};
    return run_kv(fn, p, &kv, out, ldo);
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
                    paged pg; /* f32 tiles, junk past nk */
                    make_paged(&pg, &p, 0, JUNK_NAN);
                    CHECK(run_paged(attn_block_ref, &p, &pg, got, ldo),
                          "ref paged guards nq=%d nk=%d dh=%d", nq, nk, dh);
                    e = max_err(got, ldo, want, nq, dh);
                    if (e > worst[0]) worst[0] = e;
                    CHECK(e <= tol,
                          "ref paged vs naive nq=%d nk=%d dh=%d causal=%d q*%g: max err %.3g", nq,
                          nk, dh, causal, (double)qs, e);
                    for (int isa = ISA_AVX2; isa <= (int)cpu_best_isa(); isa++) {
                        attention_kernels t;
                        attention_kernels_for(&t, (cpu_isa)isa);
                        for (int use_kt = 0; use_kt < 3; use_kt++) { /* rows, K^T, paged */
                            CHECK(use_kt < 2 ? run(t.block, &p, use_kt, got, ldo)
                                             : run_paged(t.block, &p, &pg, got, ldo),
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
                    free_paged(&pg);
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

/* The paged modes against the rows mode, bit for bit, on every ISA (the same tile
 * grid and arithmetic): f32 tiles against the rows, bf16 tiles against the rows
 * rounded to bf16 and widened; the last tile's keys past nk hold junk (zero, NaN,
 * inf, huge, random bits, in turn), which must change nothing. */
static void test_paged_exact(void) {
    static const int pnks[] = {1, 2, 5, 63, 64, 65, 127, 128, 129, 200, 300};
    /* 72, 20, 17 are not multiples of 16, 20 and 17 not of 8: the ref fallbacks */
    static const int pdhs[] = {80, 128, 64, 72, 20, 17};
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
        attention_kernels t;
        attention_kernels_for(&t, (cpu_isa)isa);
        long cases[2] = {0, 0}, bad[2] = {0, 0}, guards = 0, junk_cases[N_JUNK] = {0};
        char first[2][200] = {"", ""};
        int n = 0;
        for (size_t a = 0; a < sizeof nqs / sizeof *nqs; a++)
            for (size_t b = 0; b < sizeof pnks / sizeof *pnks; b++)
                for (size_t c = 0; c < sizeof pdhs / sizeof *pdhs; c++)
                    for (int causal = 0; causal < 2; causal++, n++) {
                        const int nq = nqs[a], nk = pnks[b], dh = pdhs[c];
                        const int junk = n % N_JUNK;
                        if (nk % ATTN_KTILE) junk_cases[junk]++;
                        problem p, r;
                        make_problem(&p, nq, nk, dh, causal, (a + b) % 3 == 0 ? 8.0f : 1.0f);
                        make_rounded(&r, &p);
                        const size_t ldo = (size_t)dh + GUARD;
                        float *want = malloc(sizeof(float) * (size_t)nq * ldo);
                        float *got = malloc(sizeof(float) * (size_t)nq * ldo);
                        for (int bf16 = 0; bf16 < 2; bf16++) {
                            paged pg;
                            make_paged(&pg, &p, bf16, junk);
                            run(t.block, bf16 ? &r : &p, 0, want, ldo);
                            guards += !run_paged(t.block, &p, &pg, got, ldo);
                            cases[bf16]++;
                            for (int i = 0; i < nq; i++) {
                                const size_t at = (size_t)i * ldo;
                                if (!memcmp(got + at, want + at, sizeof(float) * (size_t)dh))
                                    continue;
                                if (!bad[bf16]++) {
                                    int d = 0;
                                    while (bits(got[at + d]) == bits(want[at + d])) d++;
                                    snprintf(first[bf16], sizeof first[bf16],
                                             "nq=%d nk=%d dh=%d causal=%d junk=%s: row %d dim %d "
                                             "%.9g vs rows mode %.9g",
                                             nq, nk, dh, causal, junk_name[junk], i, d,
                                             (double)got[at + d], (double)want[at + d]);
                                }
                                break;
                            }
                            free_paged(&pg);
                        }
                        free(want), free(got);
                        free_rounded(&r);
                        free_problem(&p);
                    }
        CHECK(guards == 0, "%s paged: %ld calls wrote past an output row or the scratch",
              cpu_isa_name(isa), guards);
        CHECK(bad[0] == 0, "%s paged f32 != rows mode in %ld of %ld cases, first %s",
              cpu_isa_name(isa), bad[0], cases[0], first[0]);
        CHECK(bad[1] == 0,
              "%s paged bf16 != rows mode on widened bf16 in %ld of %ld cases, first %s",
              cpu_isa_name(isa), bad[1], cases[1], first[1]);
        int all_junk = 1;
        for (int j = 0; j < N_JUNK; j++) all_junk &= junk_cases[j] > 0;
        CHECK(all_junk, "paged: some junk kind never met a partial last tile");
    }
}

/* Regrouping invariance with paged keys, f32 and bf16: a row alone (nk cut at its
 * limit, so the keys past it are invalid content of the same tiles) and rows in
 * groups of 3 from 1 equal the block of 70 bit for bit. */
static void test_paged_regrouping(void) {
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
        attention_kernels t;
        attention_kernels_for(&t, (cpu_isa)isa);
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int dh = 80; dh <= 128; dh += 48) {
                problem p;
                make_problem(&p, 70, 300, dh, 1, 2.0f);
                paged pg;
                make_paged(&pg, &p, bf16, JUNK_BITS);
                const size_t ldo = (size_t)dh + GUARD;
                float *all = malloc(sizeof(float) * 70 * ldo);
                float *one = malloc(sizeof(float) * 70 * ldo);
                run_paged(t.block, &p, &pg, all, ldo);
                int bad = -1;
                for (int i = 0; i < p.nq && bad < 0; i++) {
                    problem r = p;
                    r.q = p.q + (size_t)i * p.ldq;
                    r.nq = 1;
                    r.lim = p.lim + i;
                    r.nk = p.lim[i];
                    run_paged(t.block, &r, &pg, one, ldo);
                    if (memcmp(one, all + (size_t)i * ldo, sizeof(float) * dh)) bad = i;
                }
                CHECK(bad < 0, "%s paged %s dh=%d: row %d alone differs from the block",
                      cpu_isa_name(isa), bf16 ? "bf16" : "f32", dh, bad);
                bad = -1;
                for (int i0 = 1; i0 < p.nq; i0 += 3) {
                    problem r = p;
                    r.q = p.q + (size_t)i0 * p.ldq;
                    r.nq = p.nq - i0 < 3 ? p.nq - i0 : 3;
                    r.lim = p.lim + i0;
                    run_paged(t.block, &r, &pg, one, ldo);
                    if (memcmp(one, all + (size_t)i0 * ldo, sizeof(float) * ((size_t)r.nq * ldo)) &&
                        bad < 0)
                        bad = i0;
                }
                CHECK(bad < 0, "%s paged %s dh=%d: rows from %d regrouped differ",
                      cpu_isa_name(isa), bf16 ? "bf16" : "f32", dh, bad);
                free(all), free(one);
                free_paged(&pg);
                free_problem(&p);
            }
    }
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

/* --compute bf16's block (q, k, v, p rounded to bf16 for the products): against the
 * double-precision softmax in every key mode, within a stated bound, and each row
 * independent of its grouping, bit for bit, as for the f32 kernels. */
static void test_bf16_block(void) {
    attention_kernels t;
    attention_kernels_for_compute(&t, cpu_best_isa(), COMPUTE_BF16);
    if (t.block != attn_block_avx512bf16) {
        SKIP("no AVX-512 BF16: the bf16 attention block was not run");
        return;
    }
    double worst[2] = {0, 0};
    for (size_t a = 0; a < sizeof nqs / sizeof *nqs; a++)
        for (size_t b = 0; b < sizeof nks / sizeof *nks; b++)
            for (size_t c = 0; c < sizeof dhs / sizeof *dhs; c++)
                for (int causal = 0; causal < 2; causal++) {
                    const int nq = nqs[a], nk = nks[b], dh = dhs[c];
                    const float qs = (a + b) % 3 == 0 ? 8.0f : 1.0f;
                    problem p;
                    make_problem(&p, nq, nk, dh, causal, qs);
                    double *want = malloc(sizeof(double) * (size_t)nq * dh);
                    float *qd = malloc(sizeof(float) * (size_t)nq * dh);
                    for (int i = 0; i < nq; i++)
                        memcpy(qd + (size_t)i * dh, p.q + (size_t)i * p.ldq, sizeof(float) * dh);
                    naive(want, qd, p.k, p.v, p.ldkv, causal ? p.lim : NULL, nq, nk, dh,
                          1.0f / sqrtf((float)dh));
                    const size_t ldo = (size_t)dh + GUARD;
                    float *got = malloc(sizeof(float) * (size_t)nq * ldo);
                    /* values in [-1, 1] rounded to bf16 (2^-9) and scores of |q.k| up to
                     * ~dh * qs / sqrt(dh) carrying 2^-8 of it through the softmax */
                    const double tol = qs > 1 ? 0.03 : 0.01;
                    for (int mode = 0; mode < 4; mode++) { /* rows, K^T, paged f32, paged bf16 */
                        paged pg = {0};
                        if (mode >= 2) make_paged(&pg, &p, mode == 3, JUNK_NAN);
                        CHECK(mode < 2 ? run(t.block, &p, mode, got, ldo)
                                       : run_paged(t.block, &p, &pg, got, ldo),
                              "bf16 block guards nq=%d nk=%d dh=%d mode=%d", nq, nk, dh, mode);
                        double e = max_err(got, ldo, want, nq, dh);
                        if (e > worst[qs > 1]) worst[qs > 1] = e;
                        CHECK(e <= tol, "bf16 block vs naive nq=%d nk=%d dh=%d causal=%d mode=%d "
                              "q*%g: max err %.3g", nq, nk, dh, causal, mode, (double)qs, e);
                        if (mode >= 2) free_paged(&pg);
                    }
                    free(got), free(want), free(qd);
                    free_problem(&p);
                }
    printf("  attention: --compute bf16 block max |err| vs double: %.3g (q*1), %.3g (q*8, "
           "peaked)\n", worst[0], worst[1]);
    for (int dh = 80; dh <= 128; dh += 48) { /* rows alone and regrouped: the same bits */
        problem p;
        make_problem(&p, 70, 300, dh, 1, 2.0f);
        const size_t ldo = (size_t)dh + GUARD;
        float *all = malloc(sizeof(float) * 70 * ldo), *one = malloc(sizeof(float) * 70 * ldo);
        run(t.block, &p, 0, all, ldo);
        int bad = -1;
        for (int i = 0; i < p.nq && bad < 0; i++) {
            problem r = p;
            r.q = p.q + (size_t)i * p.ldq;
            r.nq = 1;
            r.lim = p.lim + i;
            r.nk = p.lim[i];
            run(t.block, &r, 0, one, ldo);
            if (memcmp(one, all + (size_t)i * ldo, sizeof(float) * dh)) bad = i;
        }
        for (int i0 = 1; i0 < p.nq && bad < 0; i0 += 3) {
            problem r = p;
            r.q = p.q + (size_t)i0 * p.ldq;
            r.nq = p.nq - i0 < 3 ? p.nq - i0 : 3;
            r.lim = p.lim + i0;
            run(t.block, &r, 0, one, ldo);
            if (memcmp(one, all + (size_t)i0 * ldo, sizeof(float) * ((size_t)r.nq * ldo))) bad = i0;
        }
        CHECK(bad < 0, "bf16 block dh=%d: rows from %d alone or regrouped differ", dh, bad);
        free(all), free(one);
        free_problem(&p);
    }
}

void test_attention(void) {
    test_exp();
    test_bf16_block();
    test_against_naive();
    test_row_independence();
    test_paged_exact();
    test_paged_regrouping();
    if (cpu_best_isa() < ISA_AVX512) SKIP("this CPU has no AVX-512: those paths were not run");
}
