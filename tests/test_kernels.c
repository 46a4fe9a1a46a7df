/* Tests of src/kernels: every ISA this CPU has against the scalar reference,
 * sizes straddling the vector widths, guard values after every output. */
#include <stdlib.h>

#include "base/half.h"
#include "base/rng.h"
#include "check.h"
#include "kernels/kernels.h"

static const size_t sizes[] = {0,  1,  2,  3,  7,   8,   15,  16,   17,   31,   32,  33,
                               63, 64, 65, 80, 127, 128, 129, 1023, 1280, 3420, 3584};
#define N_SIZES (sizeof sizes / sizeof sizes[0])
#define GUARD 16
static const float guard_value = -12345.678f;

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(seed, i) * scale;
}

static void test_isa_selection(void) {
    ergo_error err = {0};
    CHECK(kernels_init("bogus", &err) == ERGO_E_ARG && strstr(err.msg, "bogus"),
          "unknown ISA refused: %s", err.msg);
    CHECK(kernels_init("ref", &err) == ERGO_OK && kern.isa == ISA_REF, "ref forced");
    if (cpu_best_isa() < ISA_AVX512)
        CHECK(kernels_init("avx512", &err) == ERGO_E_UNSUPPORTED, "avx512 refused on this CPU");
    CHECK(kernels_init(NULL, &err) == ERGO_OK, "default");
}

static void test_dot(cpu_isa isa) {
    kernel_table t;
    kernels_table_for(&t, isa);
    float *a = malloc(4096 * sizeof *a), *b = malloc(4096 * sizeof *b);
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        for (int big = 0; big < 2; big++) {
            float scale = big ? 3.0e4f : 1.0f; /* large-magnitude set */
            fill(a, n, 11 + n, scale);
            fill(b, n, 97 + n, scale);
            float want = dot_f32_ref(a, b, n), got = t.dot_f32(a, b, n);
            double abs_sum = 0;
            for (size_t i = 0; i < n; i++) abs_sum += fabs((double)a[i] * (double)b[i]);
            double bound = 2.0 * (double)n * 1.2e-7 * abs_sum + 1e-30;
            CHECK(fabs((double)got - (double)want) <= bound,
                  "dot_f32 %s n=%zu scale=%g: got %.9g want %.9g (bound %.3g)", cpu_isa_name(isa),
                  n, (double)scale, (double)got, (double)want, bound);
        }
    }
    free(a);
    free(b);
}

static void test_conversions(cpu_isa isa) {
    kernel_table t;
    kernels_table_for(&t, isa);
    size_t max_n = 4096;
    uint16_t *in = malloc(max_n * sizeof *in);
    float *want = malloc((max_n + GUARD) * sizeof *want), *got = malloc((max_n + GUARD) * sizeof *got);
    for (int which = 0; which < 2; which++) {
        for (size_t s = 0; s < N_SIZES; s++) {
            size_t n = sizes[s];
            /* random bit patterns cover normals, subnormals, inf and NaN */
            for (size_t i = 0; i < n; i++) in[i] = (uint16_t)rng_u64(5 + n, i);
            for (size_t i = 0; i < n + GUARD; i++) got[i] = guard_value;
            if (which == 0) {
                bf16_to_f32_ref(want, in, n);
                t.bf16_to_f32(got, in, n);
            } else {
                f16_to_f32_ref(want, in, n);
                t.f16_to_f32(got, in, n);
            }
            CHECK(memcmp(got, want, n * sizeof(float)) == 0, "%s %s n=%zu: not bit-identical",
                  which ? "f16_to_f32" : "bf16_to_f32", cpu_isa_name(isa), n);
            int guard_ok = 1;
            for (size_t i = n; i < n + GUARD; i++) guard_ok &= got[i] == guard_value;
            CHECK(guard_ok, "%s %s n=%zu: wrote past the output",
                  which ? "f16_to_f32" : "bf16_to_f32", cpu_isa_name(isa), n);
        }
    }
    free(in);
    free(want);
    free(got);
}

/* The scalar conversions against values whose encodings are known. */
static void test_scalar_conversions(void) {
    CHECK(f32_to_bf16_one(1.0f) == 0x3f80, "bf16(1)");
    CHECK(f32_to_bf16_one(1.00390625f) == 0x3f80, "bf16 tie to even (down)");
    CHECK(f32_to_bf16_one(1.01171875f) == 0x3f82, "bf16 tie to even (up)");
    CHECK(f32_to_bf16_one(-2.5f) == 0xc020, "bf16(-2.5)");
    CHECK(f32_to_f16_one(1.0f) == 0x3c00, "f16(1)");
    CHECK(f32_to_f16_one(65504.0f) == 0x7bff, "f16(max)");
    CHECK(f32_to_f16_one(65520.0f) == 0x7c00, "f16 overflow tie to inf");
    CHECK(f32_to_f16_one(5.9604645e-8f) == 0x0001, "f16 smallest subnormal");
    CHECK(f32_to_f16_one(1.0009765625f) == 0x3c01, "f16 1+2^-10");
    CHECK(f32_to_f16_one(1.00048828125f) == 0x3c00, "f16 tie to even");
    CHECK(f32_to_f16_one(2.98023223876953125e-08f) == 0x0000, "f16 half the smallest: tie to 0");
    CHECK(f32_to_f16_one(-6.103515625e-05f) == 0x8400, "f16 smallest normal, negative");
    uint32_t above_tie_bits = 0x3F808001u; /* one ulp above halfway between 0x3F80 and 0x3F81 */
    float above_tie;
    memcpy(&above_tie, &above_tie_bits, 4);
    CHECK(f32_to_bf16_one(above_tie) == 0x3f81, "bf16 just above a tie");
    /* round trip of every f16 that is not NaN */
    int ok = 1;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
        ok &= f32_to_f16_one(f16_to_f32_one((uint16_t)h)) == h;
    }
    CHECK(ok, "f16 -> f32 -> f16 round trip");
    ok = 1;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) continue;
        ok &= f32_to_bf16_one(bf16_to_f32_one((uint16_t)h)) == h;
    }
    CHECK(ok, "bf16 -> f32 -> bf16 round trip");
}

/* Weight rows in each stored type, filled from the generator. */
static void *make_weights(kdtype wt, size_t n, uint64_t seed, float scale) {
    if (wt == KDT_F32) {
        float *w = malloc(n * sizeof *w);
        fill(w, n, seed, scale);
        return w;
    }
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) {
        float v = rng_uniform(seed, i) * scale;
        h[i] = wt == KDT_BF16 ? f32_to_bf16_one(v) : f32_to_f16_one(v);
    }
    return h;
}

static const char *kdtype_name(kdtype t) {
    return t == KDT_F32 ? "f32" : t == KDT_BF16 ? "bf16" : "f16";
}

static void test_dot_wt(cpu_isa isa) {
    kernel_table t;
    kernels_table_for(&t, isa);
    float *x = malloc(4096 * sizeof *x);
    for (int wt = KDT_F32; wt <= KDT_F16; wt++)
        for (size_t s = 0; s < N_SIZES; s++) {
            size_t n = sizes[s];
            fill(x, n, 3 + n, 1.0f);
            void *w = make_weights((kdtype)wt, n, 9 + n, 1.0f);
            float want = dot_wt_ref(x, w, (kdtype)wt, n), got = t.dot_wt(x, w, (kdtype)wt, n);
            double bound = 2.0 * (double)n * 1.2e-7 * (double)n + 1e-30; /* |x|,|w| <= 1 */
            CHECK(fabs((double)got - (double)want) <= bound, "dot_wt %s %s n=%zu: got %.9g want %.9g",
                  kdtype_name((kdtype)wt), cpu_isa_name(isa), n, (double)got, (double)want);
            free(w);
        }
    free(x);
}

/* matmul_wt (threaded, dispatched) against matmul_wt_ref on odd and real shapes. */
static void test_matmul(void) {
    static const int shapes[][3] = {{1, 1, 1},   {1, 17, 3},   {3, 33, 5},  {7, 80, 31},
                                    {5, 128, 65}, {2, 1176, 40}, {4, 3584, 9}, {1, 129, 257}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int n = shapes[c][0], k = shapes[c][1], m = shapes[c][2];
        for (int wt = KDT_F32; wt <= KDT_F16; wt++) {
            float *x = malloc((size_t)n * k * sizeof *x);
            fill(x, (size_t)n * k, 77 + c, 2.0f);
            void *w = make_weights((kdtype)wt, (size_t)m * k, 55 + c, 0.5f);
            void *b = make_weights((kdtype)wt, (size_t)m, 66 + c, 1.0f);
            float *want = malloc((size_t)n * m * sizeof *want);
            float *got = malloc(((size_t)n * m + GUARD) * sizeof *got);
            for (size_t i = 0; i < (size_t)n * m + GUARD; i++) got[i] = guard_value;
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                const void *bias = with_bias ? b : NULL;
                matmul_wt_ref(want, x, w, (kdtype)wt, bias, (kdtype)wt, n, k, m);
                matmul_wt(got, x, w, (kdtype)wt, bias, (kdtype)wt, n, k, m);
                char label[96];
                snprintf(label, sizeof label, "matmul_wt %s n=%d k=%d m=%d bias=%d",
                         kdtype_name((kdtype)wt), n, k, m, with_bias);
                /* |x| <= 2, |w| <= 0.5: each dot's terms are <= 1 in magnitude */
                CHECK_CLOSE(got, want, (size_t)n * m, 2.5e-7 * k, 0, label);
                int guard_ok = 1;
                for (size_t i = (size_t)n * m; i < (size_t)n * m + GUARD; i++)
                    guard_ok &= got[i] == guard_value;
                CHECK(guard_ok, "%s: wrote past the output", label);
            }
            free(x), free(w), free(b), free(want), free(got);
        }
    }
}

/* The blocked many-row path of every ISA: within the summation-order bound of the
 * reference, and bit-identical to one dot_wt of the same ISA per element (so
 * prefill in chunks, decode and full prefill agree exactly). Shapes straddle the
 * tiles (4x3 / 2x3), the blocks (48 columns, rows per L2 budget) and the vector
 * widths; the last ones are real widths (vision 1280/3420, text 3584/18944). */
static void test_matmul_blocked(cpu_isa isa) {
    static const int shapes[][3] = {
        {4, 1, 3},     {5, 15, 4},     {7, 16, 7},     {8, 17, 49},    {9, 31, 50},
        {13, 32, 97},  {11, 33, 5},    {17, 47, 53},   {23, 63, 3},    {4, 65, 145},
        {37, 129, 47}, {97, 130, 2},   {6, 1280, 40},  {5, 3420, 13},  {9, 3584, 7},
        {4, 18944, 5}, {131, 1280, 7}, {33, 1176, 52}, {2, 40, 9},     {3, 17, 100}};
    kernel_table t;
    kernels_table_for(&t, isa);
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int n = shapes[c][0], k = shapes[c][1], m = shapes[c][2];
        for (int wt = KDT_F32; wt <= KDT_F16; wt++) {
            float *x = malloc((size_t)n * k * sizeof *x);
            fill(x, (size_t)n * k, 177 + c, 2.0f);
            void *w = make_weights((kdtype)wt, (size_t)m * k, 155 + c, 0.5f);
            void *b = make_weights((kdtype)wt, (size_t)m, 166 + c, 1.0f);
            float *want = malloc((size_t)n * m * sizeof *want);
            float *got = malloc(((size_t)n * m + GUARD) * sizeof *got);
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                const void *bias = with_bias ? b : NULL;
                for (size_t i = 0; i < (size_t)n * m + GUARD; i++) got[i] = guard_value;
                matmul_wt_ref(want, x, w, (kdtype)wt, bias, (kdtype)wt, n, k, m);
                matmul_wt_blocked(&t, got, x, w, (kdtype)wt, bias, (kdtype)wt, n, k, m);
                char label[112];
                snprintf(label, sizeof label, "matmul_wt_blocked %s %s n=%d k=%d m=%d bias=%d",
                         cpu_isa_name(isa), kdtype_name((kdtype)wt), n, k, m, with_bias);
                CHECK_CLOSE(got, want, (size_t)n * m, 2.5e-7 * k, 0, label);
                /* the same element by the ISA's dot product, compared bit for bit */
                size_t rb = (size_t)k * (wt == KDT_F32 ? 4 : 2), bad = 0, first = 0;
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < m; j++) {
                        float s = t.dot_wt(x + (size_t)i * k, (const char *)w + (size_t)j * rb,
                                           (kdtype)wt, (size_t)k);
                        if (bias) s += wt == KDT_F32 ? ((const float *)bias)[j]
                                       : wt == KDT_BF16 ? bf16_to_f32_one(((const uint16_t *)bias)[j])
                                                        : f16_to_f32_one(((const uint16_t *)bias)[j]);
                        if (memcmp(&s, &got[(size_t)i * m + j], sizeof s) != 0 && !bad++)
                            first = (size_t)i * m + j;
                    }
                CHECK(bad == 0,
                      "%s: %zu elements differ from dot_wt bit for bit (first [%zu]: blocked %.9g, "
                      "ref %.9g)",
                      label, bad, first, (double)got[first], (double)want[first]);
                int guard_ok = 1;
                for (size_t i = (size_t)n * m; i < (size_t)n * m + GUARD; i++)
                    guard_ok &= got[i] == guard_value;
                CHECK(guard_ok, "%s: wrote past the output", label);
            }
            free(x), free(w), free(b), free(want), free(got);
        }
    }
}

/* The row-wise ops against double-precision definitions. */
static void test_row_ops(void) {
    enum { N = 3, D = 1280 };
    float *x = malloc(N * D * sizeof *x), *y = malloc(N * D * sizeof *y);
    float *w = malloc(D * sizeof *w);
    fill(x, N * D, 1, 4.0f);
    fill(w, D, 2, 1.0f);
    kweight kw = {KDT_F32, w, 1, D, NULL};
    rmsnorm(y, x, &kw, N, D, 1e-6f);
    double max_err = 0;
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int t = 0; t < D; t++) ss += (double)x[i * D + t] * (double)x[i * D + t];
        double inv = 1.0 / sqrt(ss / D + 1e-6);
        for (int t = 0; t < D; t++) {
            double want = (double)w[t] * (double)x[i * D + t] * inv;
            max_err = fmax(max_err, fabs(want - (double)y[i * D + t]));
        }
    }
    CHECK(max_err < 2e-6, "rmsnorm max error %.3g", max_err);

    float v[7] = {-20.f, -3.f, -0.5f, 0.f, 0.5f, 3.f, 20.f}, u[7] = {1, 2, 3, 4, 5, 6, 7};
    float g[7], e[7];
    memcpy(g, v, sizeof v);
    silu_mul(g, u, 7);
    memcpy(e, v, sizeof v);
    gelu_erf(e, 7);
    int ok = 1;
    for (int i = 0; i < 7; i++) {
        double vi = v[i], silu = vi / (1.0 + exp(-vi)) * (double)u[i];
        double gelu = 0.5 * vi * (1.0 + erf(vi / sqrt(2.0)));
        ok &= fabs((double)g[i] - silu) <= 1e-6 * (1 + fabs(silu)) &&
              fabs((double)e[i] - gelu) <= 1e-6 * (1 + fabs(gelu));
    }
    CHECK(ok, "silu_mul and gelu_erf against double-precision definitions");

    float p[5] = {1000.f, 1001.f, 999.f, -1e30f, 1000.5f};
    softmax(p, 5);
    double sum = 0;
    for (int i = 0; i < 5; i++) sum += (double)p[i];
    CHECK(fabs(sum - 1) < 1e-6 && p[3] == 0.0f && p[1] > p[4] && p[4] > p[0],
          "softmax of large logits: sum %.9g", sum);
    free(x), free(y), free(w);
}

void test_kernels(void) {
    test_isa_selection();
    test_scalar_conversions();
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
        test_dot((cpu_isa)isa);
        test_conversions((cpu_isa)isa);
        test_dot_wt((cpu_isa)isa);
        test_matmul_blocked((cpu_isa)isa);
    }
    ergo_error err = {0};
    kernels_init(NULL, &err);
    test_matmul();
    test_row_ops();
    if (cpu_best_isa() < ISA_AVX512) SKIP("this CPU has no AVX-512: those paths were not run");
}
