/* Tests of src/kernels/gemm_backward.c, the two products of a linear layer's backward:
 * every ISA's kernels against the double-precision reference at odd sizes (every
 * weight dtype, the q8 / q4 twins against the reference on the dequantised f32
 * weight, accumulate 0 / 1, db NULL or not), the reference against the definition
 * (dx and dW are the gradients of L = sum(R * linear_forward(x)) for a random R, by
 * central differences, which are exact for a linear L up to f32 rounding), and the
 * same bits for 1 and 2 threads. */
#include <omp.h>
#include <stdlib.h>

#include "base/half.h"
#include "base/rng.h"
#include "check.h"
#include "kernels/backward.h"
#include "kernels/quant.h"

#define GUARD 16
static const float guard_value = -12345.678f;

/* the worst |fast - ref| / bound seen, printed once */
static double worst_ratio;

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(seed, i) * scale;
}

/* A weight (m, k) from f32 values: the dtype's array (rounded to it) in *store, and
 * the f32 values it holds in *vals (what the product must read). q = QUANT_Q8 / Q4
 * quantises the f32 values into *qm and releases data (NULL), as model_quantize may. */
typedef struct test_weight {
    kweight w;
    void *store;   /* f32 / bf16 / f16 array, or NULL for a twin */
    float *vals;   /* (m, k) the values the kernels read */
    qmatrix qm;
} test_weight;

static void weight_make(test_weight *tw, const float *src, int m, int k, kdtype dt,
                        quant_format q) {
    const size_t nn = (size_t)m * k;
    memset(tw, 0, sizeof *tw);
    tw->vals = malloc(nn * sizeof(float) + 4);
    tw->w = (kweight){dt, NULL, m, k, NULL};
    if (q != QUANT_NONE) {
        ergo_error err = {0};
        ERGO_ASSERT(quant_alloc(&tw->qm, q, m, k, &err) == ERGO_OK);
        quant_rows(&tw->qm, src, KDT_F32, 0, m);
        dequant_rows(tw->vals, &tw->qm, 0, m);
        tw->w = (kweight){KDT_F32, NULL, m, k, &tw->qm};
        return;
    }
    if (dt == KDT_F32) {
        float *f = malloc(nn * sizeof *f + 4);
        memcpy(f, src, nn * sizeof *f);
        memcpy(tw->vals, src, nn * sizeof *f);
        tw->store = f;
    } else {
        uint16_t *h = malloc(nn * sizeof *h + 2);
        for (size_t i = 0; i < nn; i++) {
            h[i] = dt == KDT_BF16 ? f32_to_bf16_one(src[i]) : f32_to_f16_one(src[i]);
            tw->vals[i] = kdtype_at(h, dt, i);
        }
        tw->store = h;
    }
    tw->w.data = tw->store;
}

static void weight_free(test_weight *tw) {
    free(tw->store);
    free(tw->vals);
    if (tw->w.q) quant_free(&tw->qm);
}

static const char *form_name(kdtype dt, quant_format q) {
    if (q == QUANT_Q8) return "q8";
    if (q == QUANT_Q4) return "q4";
    return dt == KDT_F32 ? "f32" : dt == KDT_BF16 ? "bf16" : "f16";
}

/* Checks got against want with |got - want| <= (K + 2) u scale[e] (u = 2^-24: an FMA
 * chain of K terms starting from a value) plus a tiny floor; scale[e] = sum |terms|
 * of element e. Reports the worst element. */
static int check_bound(const float *got, const float *want, const double *scale, size_t cnt,
                       int kk, const char *what) {
    const double u = 1.0 / 16777216.0;
    double worst = 0;
    size_t at = 0;
    int ok = 1;
    for (size_t e = 0; e < cnt; e++) {
        double bound = (kk + 2) * u * scale[e] + 1e-30;
        double d = fabs((double)got[e] - (double)want[e]);
        if (!(d <= bound)) ok = 0; /* NaN fails */
        if (d / bound > worst || d != d) {
            worst = d / bound;
            at = e;
        }
    }
    if (worst > worst_ratio) worst_ratio = worst;
    CHECK(ok, "%s: element %zu got %.9g want %.9g (|err| / bound = %.3g, sum|terms| %.6g)", what,
          at, (double)got[at], (double)want[at], worst, scale[at]);
    return ok;
}

static int guard_ok(const float *p, size_t cnt) {
    for (int i = 0; i < GUARD; i++)
        if (p[cnt + i] != guard_value) return 0;
    return 1;
}

static void set_guard(float *p, size_t cnt) {
    for (int i = 0; i < GUARD; i++) p[cnt + i] = guard_value;
}

/* ---- every ISA against the reference ---- */

static void check_input(const linear_backward_kernels *t, cpu_isa isa, int n, int m, int k,
                        kdtype dt, quant_format q, int acc) {
    const size_t nx = (size_t)n * k, ny = (size_t)n * m;
    float *src = malloc((size_t)m * k * sizeof *src + 4), *dy = malloc(ny * sizeof *dy + 4);
    float *dx = malloc((nx + GUARD) * sizeof *dx), *want = malloc(nx * sizeof *want + 4);
    double *scale = malloc(nx * sizeof *scale + 8);
    fill(src, (size_t)m * k, 11 + m + 7 * k, 0.5f);
    fill(dy, ny, 12 + n + 3 * m, 1.0f);
    test_weight tw;
    weight_make(&tw, src, m, k, dt, q);
    /* the reference on the f32 values (for a twin: the dequantised weight) */
    kweight wf = {KDT_F32, tw.vals, m, k, NULL};
    fill(want, nx, 13 + k, 2.0f);
    memcpy(dx, want, nx * sizeof *dx);
    set_guard(dx, nx);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < k; c++) {
            double s = acc ? fabs((double)want[(size_t)i * k + c]) : 0.0;
            for (int j = 0; j < m; j++)
                s += fabs((double)dy[(size_t)i * m + j] * (double)tw.vals[(size_t)j * k + c]);
            scale[(size_t)i * k + c] = s;
        }
    linear_backward_input_ref(want, dy, &wf, n, acc);
    t->input(dx, dy, &tw.w, n, acc);
    char what[160];
    snprintf(what, sizeof what, "input %s n=%d m=%d k=%d %s acc=%d", cpu_isa_name(isa), n, m, k,
             form_name(dt, q), acc);
    check_bound(dx, want, scale, nx, m, what);
    CHECK(guard_ok(dx, nx), "%s: wrote past the end of dx", what);
    if (q != QUANT_NONE && isa == ISA_REF) {
        /* the reference reads a twin exactly as its dequantised values */
        float *a = calloc(nx + 1, sizeof *a), *b = calloc(nx + 1, sizeof *b);
        linear_backward_input_ref(a, dy, &tw.w, n, 0);
        linear_backward_input_ref(b, dy, &wf, n, 0);
        CHECK(!memcmp(a, b, nx * sizeof *a), "%s: ref on the twin != ref on dequantised f32", what);
        free(a);
        free(b);
    }
    weight_free(&tw);
    free(src);
    free(dy);
    free(dx);
    free(want);
    free(scale);
}

static void check_weight(const linear_backward_kernels *t, cpu_isa isa, int n, int m, int k,
                         int with_db) {
    const size_t nw = (size_t)m * k;
    float *dy = malloc((size_t)n * m * sizeof *dy + 4), *x = malloc((size_t)n * k * sizeof *x + 4);
    float *dw = malloc((nw + GUARD) * sizeof *dw), *want = malloc(nw * sizeof *want + 4);
    float *db = malloc((size_t)(m + GUARD) * sizeof *db), *dbw = malloc((size_t)m * sizeof *dbw + 4);
    double *scale = malloc(nw * sizeof *scale + 8), *bscale = malloc((size_t)m * sizeof *bscale + 8);
    fill(dy, (size_t)n * m, 21 + n + m, 1.0f);
    fill(x, (size_t)n * k, 22 + k, 1.5f);
    fill(want, nw, 23, 0.25f);
    fill(dbw, (size_t)m, 24, 0.25f);
    memcpy(dw, want, nw * sizeof *dw);
    memcpy(db, dbw, (size_t)m * sizeof *db);
    set_guard(dw, nw);
    set_guard(db, (size_t)m);
    for (int j = 0; j < m; j++) {
        for (int c = 0; c < k; c++) {
            double s = fabs((double)want[(size_t)j * k + c]);
            for (int i = 0; i < n; i++)
                s += fabs((double)dy[(size_t)i * m + j] * (double)x[(size_t)i * k + c]);
            scale[(size_t)j * k + c] = s;
        }
        double s = fabs((double)dbw[j]);
        for (int i = 0; i < n; i++) s += fabs((double)dy[(size_t)i * m + j]);
        bscale[j] = s;
    }
    linear_backward_weight_ref(want, with_db ? dbw : NULL, dy, x, n, m, k);
    t->weight(dw, with_db ? db : NULL, dy, x, n, m, k);
    char what[160];
    snprintf(what, sizeof what, "weight %s n=%d m=%d k=%d db=%d", cpu_isa_name(isa), n, m, k,
             with_db);
    check_bound(dw, want, scale, nw, n, what);
    CHECK(guard_ok(dw, nw), "%s: wrote past the end of dw", what);
    if (with_db) check_bound(db, dbw, bscale, (size_t)m, n, what);
    else {
        float *orig = malloc((size_t)m * sizeof *orig + 4);
        fill(orig, (size_t)m, 24, 0.25f);
        CHECK(!memcmp(db, orig, (size_t)m * sizeof *db), "%s: db NULL but db changed", what);
        free(orig);
    }
    CHECK(guard_ok(db, (size_t)m), "%s: wrote past the end of db", what);
    free(dy);
    free(x);
    free(dw);
    free(want);
    free(db);
    free(dbw);
    free(scale);
    free(bscale);
}

static void test_isas(void) {
    /* (n, m, k): odd sizes straddling the 6 x 16 tile and the 256-wide blocks */
    static const int shapes[][3] = {
        {1, 1, 1},    {1, 3, 17},   {3, 17, 1},    {17, 1, 33},  {3, 33, 17},   {33, 17, 67},
        {67, 67, 3},  {17, 130, 33}, {130, 33, 67}, {7, 67, 130}, {67, 130, 17}, {13, 300, 270},
        {200, 5, 262}, {6, 16, 16},  {12, 32, 48},  {2, 513, 9},
    };
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    for (int isa = ISA_REF; isa <= ISA_AVX512; isa++) {
        if ((cpu_isa)isa > cpu_best_isa()) {
            SKIP("this CPU has no %s: the backward products of that ISA were not run",
                 cpu_isa_name((cpu_isa)isa));
            continue;
        }
        linear_backward_kernels t;
        linear_backward_kernels_for(&t, (cpu_isa)isa);
        for (int s = 0; s < nshapes; s++) {
            const int n = shapes[s][0], m = shapes[s][1], k = shapes[s][2];
            for (int form = 0; form < 5; form++) {
                kdtype dt = form == 1 ? KDT_BF16 : form == 2 ? KDT_F16 : KDT_F32;
                quant_format q = form == 3 ? QUANT_Q8 : form == 4 ? QUANT_Q4 : QUANT_NONE;
                for (int acc = 0; acc < 2; acc++) check_input(&t, (cpu_isa)isa, n, m, k, dt, q, acc);
            }
            for (int bi = 0; bi < 2; bi++) check_weight(&t, (cpu_isa)isa, n, m, k, bi);
        }
    }
}

/* ---- the definition: gradients of L = sum(R * (x W^T + b)) ---- */

static double loss(const float *y, const float *r, size_t cnt) {
    double s = 0;
    for (size_t e = 0; e < cnt; e++) s += (double)y[e] * (double)r[e];
    return s;
}

static void test_definition(void) {
    const int n = 17, m = 33, k = 67;
    const size_t nx = (size_t)n * k, ny = (size_t)n * m, nw = (size_t)m * k;
    float *x = malloc(nx * sizeof *x), *r = malloc(ny * sizeof *r), *y = malloc(ny * sizeof *y);
    float *src = malloc(nw * sizeof *src), *bias = malloc((size_t)m * sizeof *bias);
    float *dx = malloc(nx * sizeof *dx), *dw = calloc(nw, sizeof *dw), *db = calloc((size_t)m, sizeof *db);
    float *dir = malloc(((nw > nx ? nw : nx) + (size_t)m) * sizeof *dir);
    float *xp = malloc(nx * sizeof *xp), *wp = malloc(nw * sizeof *wp), *bp = malloc((size_t)m * sizeof *bp);
    fill(x, nx, 31, 1.0f);
    fill(r, ny, 32, 1.0f);
    fill(src, nw, 33, 0.3f);
    fill(bias, (size_t)m, 34, 1.0f);
    kweight b = {KDT_F32, bias, 1, m, NULL};
    /* L is linear in x, in W and in b, so (L(+hD) - L(-hD)) / 2h = <grad, D> exactly
     * up to the f32 rounding of the forward; h = 0.5 keeps that rounding small. */
    const double h = 0.5, tol = 2e-5;
    for (int form = 0; form < 5; form++) {
        kdtype dt = form == 1 ? KDT_BF16 : form == 2 ? KDT_F16 : KDT_F32;
        quant_format q = form == 3 ? QUANT_Q8 : form == 4 ? QUANT_Q4 : QUANT_NONE;
        test_weight tw;
        weight_make(&tw, src, m, k, dt, q);
        linear_backward_input(dx, r, &tw.w, n, 0); /* dY = R */
        for (int trial = 0; trial < 3; trial++) {
            fill(dir, nx, 40 + trial, 1.0f);
            double lp, lm, g = 0, gabs = 0;
            for (size_t e = 0; e < nx; e++) xp[e] = x[e] + (float)h * dir[e];
            linear_forward(y, xp, &tw.w, &b, n);
            lp = loss(y, r, ny);
            for (size_t e = 0; e < nx; e++) xp[e] = x[e] - (float)h * dir[e];
            linear_forward(y, xp, &tw.w, &b, n);
            lm = loss(y, r, ny);
            for (size_t e = 0; e < nx; e++) {
                g += (double)dx[e] * (double)dir[e];
                gabs += fabs((double)dx[e] * (double)dir[e]);
            }
            double fd = (lp - lm) / (2 * h);
            CHECK(fabs(fd - g) <= tol * (gabs + 1.0),
                  "dx of linear_forward (%s, trial %d): <dx, D> = %.9g, central difference %.9g",
                  form_name(dt, q), trial, g, fd);
        }
        weight_free(&tw);
    }
    /* dW and db, on an f32 weight (so W + hD is representable as the forward reads it) */
    linear_backward_weight(dw, db, r, x, n, m, k);
    kweight w = {KDT_F32, wp, m, k, NULL}, bw = {KDT_F32, bp, 1, m, NULL};
    for (int trial = 0; trial < 3; trial++) {
        fill(dir, nw + (size_t)m, 50 + trial, 1.0f);
        const float *dirb = dir + nw;
        double val[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            float hs = sgn ? -(float)h : (float)h;
            for (size_t e = 0; e < nw; e++) wp[e] = src[e] + hs * dir[e];
            for (int j = 0; j < m; j++) bp[j] = bias[j] + hs * dirb[j];
            linear_forward(y, x, &w, &bw, n);
            val[sgn] = loss(y, r, ny);
        }
        double g = 0, gabs = 0;
        for (size_t e = 0; e < nw; e++) {
            g += (double)dw[e] * (double)dir[e];
            gabs += fabs((double)dw[e] * (double)dir[e]);
        }
        for (int j = 0; j < m; j++) {
            g += (double)db[j] * (double)dirb[j];
            gabs += fabs((double)db[j] * (double)dirb[j]);
        }
        double fd = (val[0] - val[1]) / (2 * h);
        CHECK(fabs(fd - g) <= tol * (gabs + 1.0),
              "dW, db of linear_forward (trial %d): <(dW, db), D> = %.9g, central difference %.9g",
              trial, g, fd);
    }
    free(x), free(r), free(y), free(src), free(bias), free(dx), free(dw), free(db), free(dir);
    free(xp), free(wp), free(bp);
}

/* ---- the same bits whatever the number of threads ---- */

static void test_threads(void) {
    const int nt = omp_get_max_threads();
    /* several row and column blocks and K blocks, every edge */
    const int n = 203, m = 301, k = 530;
    const size_t nx = (size_t)n * k, nw = (size_t)m * k;
    float *src = malloc(nw * sizeof *src), *dy = malloc((size_t)n * m * sizeof *dy);
    float *x = malloc(nx * sizeof *x);
    fill(src, nw, 61, 0.5f);
    fill(dy, (size_t)n * m, 62, 1.0f);
    fill(x, nx, 63, 1.0f);
    for (int isa = ISA_AVX2; isa <= ISA_AVX512; isa++) {
        if ((cpu_isa)isa > cpu_best_isa()) continue; /* announced by test_isas */
        linear_backward_kernels t;
        linear_backward_kernels_for(&t, (cpu_isa)isa);
        float *out[2][4];
        for (int th = 0; th < 2; th++) {
            omp_set_num_threads(th + 1);
            for (int form = 0; form < 3; form++) {
                test_weight tw;
                weight_make(&tw, src, m, k, form == 1 ? KDT_BF16 : KDT_F32,
                            form == 2 ? QUANT_Q4 : QUANT_NONE);
                out[th][form] = malloc(nx * sizeof(float));
                fill(out[th][form], nx, 64, 1.0f);
                t.input(out[th][form], dy, &tw.w, n, form == 1);
                weight_free(&tw);
            }
            out[th][3] = malloc((nw + (size_t)m) * sizeof(float));
            fill(out[th][3], nw + (size_t)m, 65, 1.0f);
            t.weight(out[th][3], out[th][3] + nw, dy, x, n, m, k);
        }
        omp_set_num_threads(nt);
        static const char *names[4] = {"input f32", "input bf16 acc", "input q4", "weight+db"};
        for (int c = 0; c < 4; c++) {
            size_t cnt = c == 3 ? nw + (size_t)m : nx;
            CHECK(!memcmp(out[0][c], out[1][c], cnt * sizeof(float)),
                  "%s %s: 1 and 2 threads give different bits", cpu_isa_name((cpu_isa)isa),
                  names[c]);
            free(out[0][c]);
            free(out[1][c]);
        }
    }
    free(src);
    free(dy);
    free(x);
}

void test_backward_gemm(void) {
    test_isas();
    test_definition();
    test_threads();
    printf("  backward gemm: worst |fast - ref| / ((K+2) u sum|terms|) = %.3g\n", worst_ratio);
}
