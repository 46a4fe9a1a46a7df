/* Tests of the bf16 compute path (kernels/gemm_bf16.c): the activations' rounding
 * bit for bit against f32_to_bf16_one, every bf16 tile kernel this CPU has against the
 * scalar definition, results independent of how the rows are split, and the
 * --compute selection. */
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "base/rng.h"
#include "check.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"

#define GUARD 16
static const float guard_value = -12345.678f;

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(seed, i) * scale;
}

static uint16_t *bf16_weights(size_t n, uint64_t seed, float scale) {
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16_one(rng_uniform(seed, i) * scale);
    return h;
}

/* Ties, denormals, infinities, NaNs and values that round up to infinity. */
static void test_rounding(void) {
    if (cpu_best_isa() < ISA_AVX512) {
        SKIP("no AVX-512: x_to_bf16_avx512 not run");
        return;
    }
    static const uint32_t special[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu,
                                       0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu,
                                       0xff7f8000u, 0x7f800000u, 0xff800000u, 0x7f800001u,
                                       0xffc00000u, 0x7fbfffffu, 0x00008000u, 0x00018000u};
    const int n = 7, k = 77;
    float *x = malloc((size_t)n * k * sizeof *x);
    fill(x, (size_t)n * k, 5, 3.0f);
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        memcpy(&x[i * 5], &special[i], 4);
    uint16_t *a = bf16_rows_alloc(n, k), *b = bf16_rows_alloc(n, k);
    size_t sz = (size_t)bf16_padded_rows(n) * bf16_padded_k(k);
    memset(a, 0xab, sz * 2), memset(b, 0xcd, sz * 2);
    x_to_bf16_ref(a, x, n, k);
    x_to_bf16_avx512(b, x, n, k);
    CHECK(memcmp(a, b, sz * 2) == 0, "x_to_bf16: AVX-512 differs from f32_to_bf16_one");
    int pad_ok = 1;
    for (int i = 0; i < bf16_padded_rows(n); i++)
        for (int t = 0; t < bf16_padded_k(k); t++)
            if (i >= n || t >= k) pad_ok &= a[(size_t)i * bf16_padded_k(k) + t] == 0;
    CHECK(pad_ok, "x_to_bf16: the padding is zero");
    CHECK(a[0] == 0 && a[5] == 0x8000 && a[10] == 0 && a[20] == 0x3f80 && a[25] == 0x3f82 &&
              a[35] == 0x7f80 && a[45] == 0x7f80 && (a[55] & 0x7fc0) == 0x7fc0,
          "x_to_bf16: ties to even, overflow to inf, quiet NaN (%04x %04x %04x %04x)", a[20],
          a[25], a[35], a[55]);
    free(x), free(a), free(b);
}

/* One kernel table's bf16 product against the definition, on shapes straddling the
 * 4 x 4 tile, the 32-element blocks and the 48-column blocks, and real widths. */
static void test_product(const kernel_table *t) {
    static const int shapes[][3] = {{1, 1, 1},    {4, 1, 3},     {5, 15, 4},   {7, 32, 7},
                                    {8, 33, 49},  {9, 31, 50},   {13, 64, 97}, {3, 65, 5},
                                    {17, 100, 53}, {37, 129, 47}, {6, 1280, 40}, {5, 3420, 13},
                                    {9, 3584, 7},  {131, 1280, 9}, {33, 1176, 52}, {9, 4097, 5},
                                    {6, 4200, 9},  {5, 18944, 6}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int n = shapes[c][0], k = shapes[c][1], m = shapes[c][2];
        float *x = malloc((size_t)n * k * sizeof *x);
        fill(x, (size_t)n * k, 77 + c, 2.0f);
        uint16_t *w = bf16_weights((size_t)m * k, 55 + c, 0.5f);
        uint16_t *bias = bf16_weights((size_t)m, 66 + c, 1.0f);
        float *want = malloc((size_t)n * m * sizeof *want), *f32 = malloc((size_t)n * m * 4);
        float *got = malloc(((size_t)n * m + GUARD) * sizeof *got);
        float *part = malloc(((size_t)n * m + GUARD) * sizeof *part);
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            const void *b = with_bias ? bias : NULL;
            for (size_t i = 0; i < (size_t)n * m + GUARD; i++) got[i] = part[i] = guard_value;
            matmul_bf16_ref(want, x, w, b, KDT_BF16, n, k, m);
            CHECK(matmul_bf16(t, got, x, w, b, KDT_BF16, n, k, m) == 0, "matmul_bf16 ran");
            char label[112];
            snprintf(label, sizeof label, "matmul_bf16 %s n=%d k=%d m=%d bias=%d",
                     cpu_isa_name(t->isa), n, k, m, with_bias);
            /* |x| <= 2, |w| <= 0.5: terms <= 1; only the order of the f32 sums differs */
            CHECK_CLOSE(got, want, (size_t)n * m, 2.5e-7 * k, 0, label);
            int guard_ok = 1;
            for (size_t i = (size_t)n * m; i < (size_t)n * m + GUARD; i++)
                guard_ok &= got[i] == guard_value;
            CHECK(guard_ok, "%s: wrote past the output", label);
            /* against the f32 product: x's rounding costs at most 2^-9 of each term */
            matmul_wt_ref(f32, x, w, KDT_BF16, b, KDT_BF16, n, k, m);
            CHECK_CLOSE(got, f32, (size_t)n * m, k * (1.0 / 512 + 2.5e-7), 0, label);
            /* rows in pieces (a prompt in chunks) give the same bits as all at once */
            for (int i0 = 0; i0 < n;) {
                int rows = 1 + (i0 * 7 + 3) % 6;
                rows = i0 + rows > n ? n - i0 : rows;
                matmul_bf16(t, part + (size_t)i0 * m, x + (size_t)i0 * k, w, b, KDT_BF16, rows, k,
                            m);
                i0 += rows;
            }
            CHECK(memcmp(part, got, (size_t)n * m * sizeof *got) == 0,
                  "%s: rows computed in pieces differ from the whole", label);
        }
        free(x), free(w), free(bias), free(want), free(f32), free(got), free(part);
    }
}

static void test_selection(void) {
    ergo_error err = {0};
    CHECK(kernels_init("ref", &err) == ERGO_OK, "ref");
    CHECK(kernels_set_compute("bogus", &err) == ERGO_E_ARG && strstr(err.msg, "bogus"),
          "unknown compute refused: %s", err.msg);
    CHECK(kernels_set_compute("bf16", &err) == ERGO_OK && kern.compute == COMPUTE_BF16,
          "the scalar table computes bf16 by the definition");
    CHECK(kernels_set_compute("f32", &err) == ERGO_OK && kern.compute == COMPUTE_F32, "f32");
    if (cpu_best_isa() >= ISA_AVX2) {
        CHECK(kernels_init("avx2", &err) == ERGO_OK, "avx2");
        CHECK(kernels_set_compute("bf16", &err) == ERGO_E_UNSUPPORTED &&
                  strstr(err.msg, "--compute f32"),
              "bf16 without a bf16 kernel refused: %s", err.msg);
        CHECK(kernels_set_compute("auto", &err) == ERGO_OK && kern.compute == COMPUTE_F32,
              "auto on AVX2 is f32");
    }
    /* matmul_wt takes the bf16 path for many rows of a bf16 weight when asked */
    CHECK(kernels_init(NULL, &err) == ERGO_OK, "default");
    if (kernels_set_compute("bf16", &err) == ERGO_OK) {
        const int n = 6, k = 70, m = 9;
        float x[6 * 70], y[6 * 9], z[6 * 9];
        fill(x, sizeof x / sizeof x[0], 3, 1.0f);
        uint16_t *w = bf16_weights((size_t)m * k, 4, 1.0f);
        matmul_wt(y, x, w, KDT_BF16, NULL, KDT_F32, n, k, m);
        matmul_bf16(&kern, z, x, w, NULL, KDT_F32, n, k, m);
        CHECK(memcmp(y, z, sizeof y) == 0, "matmul_wt under --compute bf16 is matmul_bf16");
        free(w);
    }
    CHECK(kernels_set_compute("f32", &err) == ERGO_OK, "back to f32");
}

/* q8 / q4 weights under --compute bf16 (prefill, vision): each dequantised panel is
 * rounded to bf16, so the product is matmul_bf16 of those bf16 rows. */
static void test_quantised_panels(void) {
    static const int shapes[][3] = {{4, 64, 5}, {9, 160, 50}, {37, 1280, 97}, {6, 3584, 13},
                                    {5, 18944, 9}};
    ergo_error err = {0};
    CHECK(kernels_init(NULL, &err) == ERGO_OK, "default");
    if (kernels_set_compute("bf16", &err) != ERGO_OK) return;
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (int f = QUANT_Q8; f <= QUANT_Q4; f++) {
            int n = shapes[c][0], k = shapes[c][1], m = shapes[c][2];
            uint16_t *w = bf16_weights((size_t)m * k, 21 + c, 0.5f);
            uint16_t *bias = bf16_weights((size_t)m, 22 + c, 1.0f);
            float *x = malloc((size_t)n * k * 4), *deq = malloc((size_t)m * k * 4);
            float *got = malloc((size_t)n * m * 4), *want = malloc((size_t)n * m * 4);
            uint16_t *wb = malloc((size_t)m * k * 2);
            fill(x, (size_t)n * k, 23 + c, 2.0f);
            qmatrix qm;
            CHECK(quant_alloc(&qm, (quant_format)f, m, k, &err) == ERGO_OK, "%s", err.msg);
            quant_rows(&qm, w, KDT_BF16, 0, m);
            dequant_rows(deq, &qm, 0, m);
            for (size_t i = 0; i < (size_t)m * k; i++) wb[i] = f32_to_bf16_one(deq[i]);
            matmul_bf16_ref(want, x, wb, bias, KDT_BF16, n, k, m);
            matmul_q_panels(got, x, &qm, bias, KDT_BF16, n);
            char label[96];
            snprintf(label, sizeof label, "matmul_q_panels --compute bf16 %s n=%d k=%d m=%d",
                     quant_format_name((quant_format)f), n, k, m);
            CHECK_CLOSE(got, want, (size_t)n * m, 2.5e-7 * k, 0, label);
            quant_free(&qm);
            free(w), free(bias), free(x), free(deq), free(got), free(want), free(wb);
        }
    kernels_set_compute("f32", &err);
}

void test_gemm_bf16(void) {
    test_rounding();
    int ran = 0;
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
        kernel_table t;
        kernels_table_for(&t, (cpu_isa)isa);
        if (!t.matmul_bf16_block) continue;
        test_product(&t);
        ran += isa != ISA_REF;
    }
    if (!ran) SKIP("this CPU has no AVX-512 BF16: the vdpbf16ps kernel was not run");
    test_selection();
    test_quantised_panels();
}
