/* Tests of src/kernels/quant.c and quant_simd.c: the q8 / q4 formats against their
 * definition (hand-checked cases, round-trip bounds), activation quantisation on
 * every ISA against the reference (bit for bit), the matrix-vector product on every
 * ISA against the reference (bit for bit where the kernel keeps the reference's
 * order, else within the f32 summation-order bound) and the reference against a
 * double-precision evaluation, and matmul_q's two paths. */
#include <omp.h>
#include <stdlib.h>

#include "base/half.h"
#include "base/rng.h"
#include "check.h"
#include "kernels/quant.h"

#define GUARD 16
static const float guard_value = -12345.678f;

/* worst figures seen, printed once at the end of the suite */
static double worst_rt, worst_mv, worst_mv_simd, worst_mm8, worst_mmp;

/* Whether isa's matvec_q keeps the reference's f32 order (same bits): all but the
 * AVX-512 VNNI q4 kernel, which accumulates blocks in 4 lanes (quant_simd.c). */
static int matvec_exact(cpu_isa isa, quant_format f) {
    return f != QUANT_Q4 || isa != ISA_AVX512 || !__builtin_cpu_supports("avx512vnni");
}

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(seed, i) * scale;
}

/* The stored unsigned value of element e of row j, read from the layout of quant.h. */
static int stored_u(const qmatrix *qm, int j, int e) {
    const uint8_t *row = qm->q + (size_t)j * quant_row_bytes(qm->format, qm->cols);
    if (qm->format == QUANT_Q8) return row[e];
    uint8_t b = row[(e / 128) * 64 + (e % 128) % 64];
    return (e % 128) < 64 ? (b & 15) : (b >> 4);
}

static int stored_q(const qmatrix *qm, int j, int e) {
    return stored_u(qm, j, e) - (qm->format == QUANT_Q8 ? 128 : 8);
}

static void test_names_and_sizes(void) {
    CHECK_EQ_STR(quant_format_name(QUANT_Q8), "q8", "name q8");
    CHECK_EQ_STR(quant_format_name(QUANT_Q4), "q4", "name q4");
    CHECK_EQ_STR(quant_format_name(QUANT_NONE), "none", "name none");
    CHECK_EQ_INT(quant_format_parse("q8"), QUANT_Q8, "parse q8");
    CHECK_EQ_INT(quant_format_parse("q4"), QUANT_Q4, "parse q4");
    CHECK_EQ_INT(quant_format_parse("bf16"), QUANT_NONE, "parse bf16");
    CHECK_EQ_INT(quant_format_parse("as-stored"), QUANT_NONE, "parse as-stored");
    CHECK_EQ_INT(quant_format_parse("q5"), -1, "parse q5");
    CHECK_EQ_INT(quant_format_parse(NULL), -1, "parse NULL");
    CHECK_EQ_INT(quant_padded_cols(1), 128, "kp(1)");
    CHECK_EQ_INT(quant_padded_cols(128), 128, "kp(128)");
    CHECK_EQ_INT(quant_padded_cols(3420), 3456, "kp(3420)");
    CHECK_EQ_INT(quant_padded_cols(1176), 1280, "kp(1176)");
    CHECK_EQ_INT(quant_row_bytes(QUANT_Q8, 3584), 3584, "q8 row bytes");
    CHECK_EQ_INT(quant_row_bytes(QUANT_Q4, 3420), 1728, "q4 row bytes");
    CHECK_EQ_INT(quant_scale_count(3420), 108, "scales per row");
    CHECK_EQ_INT(quant_matrix_bytes(QUANT_Q4, 10, 3584), 10 * (1792 + 112 * 4), "matrix bytes");
    qmatrix qm;
    ergo_error err = {0};
    CHECK(quant_alloc(&qm, QUANT_Q8, 4, QUANT_MAX_COLS + 1, &err) == ERGO_E_LIMIT,
          "too many columns refused: %s", err.msg);
    CHECK(quant_alloc(&qm, QUANT_Q8, 0, 16, &err) == ERGO_E_SHAPE, "empty shape refused");
    CHECK(quant_alloc(&qm, QUANT_NONE, 4, 16, &err) == ERGO_E_ARG, "format none refused");
    quant_free(&qm); /* a failed alloc leaves a freeable, empty matrix */
}

/* Small cases worked out by hand from the definition in quant.h. */
static void test_hand_cases(void) {
    ergo_error err = {0};
    qmatrix qm;
    /* q8, one row of 3: max 2 -> s = 2/127; 1 / s = 63.5 -> 64 (tie away from zero),
     * -2 -> -127, 0.5 / s = 31.75 -> 32 */
    float w8[3] = {1.0f, -2.0f, 0.5f};
    CHECK(quant_alloc(&qm, QUANT_Q8, 1, 3, &err) == ERGO_OK, "alloc: %s", err.msg);
    quant_rows(&qm, w8, KDT_F32, 0, 1);
    CHECK(qm.scale[0] == 2.0f / 127.0f && qm.scale[1] == 0.0f && qm.scale[3] == 0.0f,
          "q8 scales: %g %g", (double)qm.scale[0], (double)qm.scale[1]);
    CHECK(qm.q[0] == 128 + 64 && qm.q[1] == 128 - 127 && qm.q[2] == 128 + 32 && qm.q[3] == 128 &&
              qm.q[127] == 128,
          "q8 bytes: %d %d %d %d", qm.q[0], qm.q[1], qm.q[2], qm.q[3]);
    quant_free(&qm);
    /* q4: elements 0 (0.7), 1 (-0.15), 64 (-0.35) and 65 (0.05) in block 0 / 2:
     * block 0 extreme 0.7 -> s = 0.7 / -8 = -0.0875, 0.7 -> -8, -0.15 / s = 1.714 -> 2;
     * block 2 extreme -0.35 -> s = 0.04375, -0.35 -> -8, 0.05 / s = 1.143 -> 1.
     * Byte 0 = (-8+8)<<4 | (-8+8) = 0x00, byte 1 = (1+8)<<4 | (2+8) = 0x9a, other
     * bytes 0x88 (both nibbles zero). */
    float w4[66] = {0};
    w4[0] = 0.7f, w4[1] = -0.15f, w4[64] = -0.35f, w4[65] = 0.05f;
    CHECK(quant_alloc(&qm, QUANT_Q4, 1, 66, &err) == ERGO_OK, "alloc: %s", err.msg);
    quant_rows(&qm, w4, KDT_F32, 0, 1);
    CHECK(qm.scale[0] == 0.7f / -8.0f && qm.scale[1] == 0.0f && qm.scale[2] == -0.35f / -8.0f,
          "q4 scales %g %g %g", (double)qm.scale[0], (double)qm.scale[1], (double)qm.scale[2]);
    CHECK(qm.q[0] == 0x00 && qm.q[1] == 0x9a && qm.q[2] == 0x88 && qm.q[63] == 0x88,
          "q4 bytes: %02x %02x %02x", qm.q[0], qm.q[1], qm.q[2]);
    float back[66];
    dequant_rows(back, &qm, 0, 1);
    CHECK(back[0] == -8 * qm.scale[0] && back[64] == -8 * qm.scale[2] && back[2] == 0.0f,
          "q4 dequant %g %g", (double)back[0], (double)back[64]);
    /* a block of +-1 only: the first extreme (+1) decides, s = -1/8, -1 -> 8 clamps to 7 */
    float w1[4] = {1.0f, -1.0f, 0.0f, 0.0f};
    quant_free(&qm);
    CHECK(quant_alloc(&qm, QUANT_Q4, 1, 4, &err) == ERGO_OK, "alloc: %s", err.msg);
    quant_rows(&qm, w1, KDT_F32, 0, 1);
    CHECK(qm.scale[0] == -0.125f && (qm.q[0] & 15) == 0 && (qm.q[1] & 15) == 15,
          "q4 +-1: scale %g, nibbles %d %d", (double)qm.scale[0], qm.q[0] & 15, qm.q[1] & 15);
    quant_free(&qm);
    /* the activation: 63.5 rounds away from zero to 64, -63.5 to -64 */
    float x[3] = {127.0f, 63.5f, -63.5f};
    int8_t q[128];
    float s[4];
    int32_t sum[4];
    qact qa = {q, s, sum};
    quant_act_ref(&qa, x, 3);
    CHECK(s[0] == 1.0f && q[0] == 127 && q[1] == 64 && q[2] == -64 && q[3] == 0 && sum[0] == 127 &&
              s[1] == 0.0f && sum[1] == 0,
          "act: s %g q %d %d %d sum %d", (double)s[0], q[0], q[1], q[2], sum[0]);
}

static void *to_type(const float *w, size_t n, kdtype t) {
    if (t == KDT_F32) {
        float *o = malloc(n * sizeof *o);
        memcpy(o, w, n * sizeof *o);
        return o;
    }
    uint16_t *o = malloc(n * sizeof *o);
    for (size_t i = 0; i < n; i++) o[i] = t == KDT_BF16 ? f32_to_bf16_one(w[i]) : f32_to_f16_one(w[i]);
    return o;
}

static float as_f32(const void *w, kdtype t, size_t i) {
    if (t == KDT_BF16) return bf16_to_f32_one(((const uint16_t *)w)[i]);
    if (t == KDT_F16) return f16_to_f32_one(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

/* |w - s q| <= |s|/2, the scale follows the format's rule, padding and zero rows are zero. */
static void test_round_trip(void) {
    static const int ks[] = {1, 31, 33, 100, 128, 129, 300, 1176, 3420};
    const int m = 5;
    for (int f = QUANT_Q8; f <= QUANT_Q4; f++)
        for (int t = KDT_F32; t <= KDT_F16; t++)
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                int k = ks[ki];
                float *w = malloc((size_t)m * k * sizeof *w);
                fill(w, (size_t)m * k, 7 + k + 13 * f, 2.0f);
                for (int e = 0; e < k; e++) w[2 * k + e] = 0.0f; /* row 2 all zero */
                if (k > 40) w[3 * k + 5] = 300.0f; /* one outlier in a block */
                void *src = to_type(w, (size_t)m * k, (kdtype)t);
                qmatrix qm;
                ergo_error err = {0};
                CHECK(quant_alloc(&qm, (quant_format)f, m, k, &err) == ERGO_OK, "alloc %s",
                      err.msg);
                quant_rows(&qm, src, (kdtype)t, 0, 2); /* two calls, as threads split rows */
                quant_rows(&qm, src, (kdtype)t, 2, m);
                float *back = malloc(((size_t)m * k + GUARD) * sizeof *back);
                for (int i = 0; i < GUARD; i++) back[(size_t)m * k + i] = guard_value;
                dequant_rows(back, &qm, 0, m);
                const int nb = qm.cols_padded / QUANT_BLOCK, qmax = f == QUANT_Q8 ? 127 : 7;
                const int qmin = f == QUANT_Q8 ? -127 : -8;
                int ok_bound = 1, ok_scale = 1, ok_pad = 1, ok_zero = 1, ok_range = 1, ok_deq = 1;
                double worst = 0;
                for (int j = 0; j < m; j++) {
                    for (int b = 0; b < nb; b++) {
                        float ext = 0;
                        for (int e = b * 32; e < (b + 1) * 32 && e < k; e++) {
                            const float v = as_f32(src, (kdtype)t, (size_t)j * k + e);
                            if (fabsf(v) > fabsf(ext)) ext = v;
                        }
                        const float want = f == QUANT_Q8 ? fabsf(ext) / 127.0f : ext / -8.0f;
                        ok_scale &= qm.scale[(size_t)j * nb + b] == want;
                    }
                    for (int e = 0; e < qm.cols_padded; e++) {
                        int q = stored_q(&qm, j, e);
                        ok_range &= q >= qmin && q <= qmax;
                        if (e >= k) {
                            ok_pad &= q == 0;
                            continue;
                        }
                        float s = qm.scale[(size_t)j * nb + e / 32];
                        double wv = (double)as_f32(src, (kdtype)t, (size_t)j * k + e);
                        double d = fabs(wv - (double)s * q);
                        /* q4: an element of the extreme's magnitude and opposite sign
                         * would be +8, clamped to 7 (error |s|) */
                        const double as = fabs((double)s);
                        ok_bound &= d <= 0.5 * as * (1 + 1e-5) || (q == qmax && d <= as * (1 + 1e-5));
                        if (as > 0 && d / as > worst) worst = d / as;
                        ok_deq &= back[(size_t)j * k + e] == s * (float)q;
                        if (j == 2) ok_zero &= q == 0 && s == 0.0f;
                    }
                }
                int guard_ok = 1;
                for (int i = 0; i < GUARD; i++) guard_ok &= back[(size_t)m * k + i] == guard_value;
                if (worst > worst_rt) worst_rt = worst;
                CHECK(ok_bound && ok_scale && ok_pad && ok_zero && ok_range && ok_deq && guard_ok,
                      "%s from %d k=%d: bound %d (worst |w-sq|/s %.4f) scale %d pad %d zero-row "
                      "%d range %d dequant %d guard %d",
                      quant_format_name((quant_format)f), t, k, ok_bound, worst, ok_scale, ok_pad,
                      ok_zero, ok_range, ok_deq, guard_ok);
                quant_free(&qm);
                free(w), free(src), free(back);
            }
}

/* the fast dequantisation of every ISA: the same bits as dequant_rows */
static void test_dequant(cpu_isa isa) {
    quant_kernels t;
    quant_kernels_for(&t, isa);
    static const int ks[] = {1, 7, 8, 15, 16, 17, 33, 100, 129, 300, 1176, 3420};
    for (int f = QUANT_Q8; f <= QUANT_Q4; f++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            int k = ks[ki], m = 3;
            float *w = malloc((size_t)m * k * sizeof *w);
            fill(w, (size_t)m * k, 50 + k, 1.5f);
            qmatrix qm;
            ergo_error err = {0};
            quant_alloc(&qm, (quant_format)f, m, k, &err);
            quant_rows(&qm, w, KDT_F32, 0, m);
            size_t n = (size_t)(m - 1) * k;
            float *want = malloc(n * sizeof *want), *got = malloc((n + GUARD) * sizeof *got);
            for (size_t i = 0; i < n + GUARD; i++) got[i] = guard_value;
            dequant_rows(want, &qm, 1, m);
            t.dequant(got, &qm, 1, m);
            int guard_ok = 1;
            for (size_t i = n; i < n + GUARD; i++) guard_ok &= got[i] == guard_value;
            CHECK(!memcmp(got, want, n * sizeof *got) && guard_ok,
                  "dequant %s %s k=%d: identical %d guard %d", cpu_isa_name(isa),
                  quant_format_name((quant_format)f), k, !memcmp(got, want, n * sizeof *got),
                  guard_ok);
            quant_free(&qm);
            free(w), free(want), free(got);
        }
}

static const int act_ks[] = {1, 5, 31, 32, 33, 64, 100, 127, 129, 200, 255, 300, 1176, 1280, 3420};

static void test_act(cpu_isa isa) {
    quant_kernels t, r;
    quant_kernels_for(&t, isa);
    quant_kernels_for(&r, ISA_REF);
    for (size_t ki = 0; ki < sizeof act_ks / sizeof act_ks[0]; ki++) {
        int k = act_ks[ki], kp = quant_padded_cols(k), nb = kp / 32;
        float *x = malloc((size_t)k * sizeof *x);
        fill(x, (size_t)k, 3 + k, 5.0f);
        if (k > 40) { /* exact ties: block 1 of max 127 has halves */
            for (int e = 32; e < 64 && e < k; e++) x[e] = (float)(e - 48) + 0.5f;
            x[33] = 127.0f;
        }
        if (k > 70) for (int e = 64; e < 96 && e < k; e++) x[e] = 0.0f; /* a zero block */
        int8_t *q0 = malloc((size_t)kp + GUARD), *q1 = malloc((size_t)kp + GUARD);
        float *s0 = malloc((size_t)(nb + GUARD) * 4), *s1 = malloc((size_t)(nb + GUARD) * 4);
        int32_t *u0 = malloc((size_t)(nb + GUARD) * 4), *u1 = malloc((size_t)(nb + GUARD) * 4);
        memset(q1, 0x5a, (size_t)kp + GUARD);
        for (int i = 0; i < nb + GUARD; i++) s1[i] = guard_value, u1[i] = 777;
        qact a0 = {q0, s0, u0}, a1 = {q1, s1, u1};
        r.act(&a0, x, k);
        t.act(&a1, x, k);
        int same = !memcmp(q0, q1, (size_t)kp) && !memcmp(s0, s1, (size_t)nb * 4) &&
                   !memcmp(u0, u1, (size_t)nb * 4);
        int guard_ok = 1;
        for (int i = 0; i < GUARD; i++)
            guard_ok &= q1[kp + i] == 0x5a && s1[nb + i] == guard_value && u1[nb + i] == 777;
        /* the reference against the definition: |x - s q| <= s/2, sums, padding */
        int def_ok = 1;
        for (int b = 0; b < nb; b++) {
            int32_t sum = 0;
            for (int e = b * 32; e < b * 32 + 32; e++) {
                sum += q0[e];
                if (e >= k) def_ok &= q0[e] == 0;
                else def_ok &= fabs((double)x[e] - (double)s0[b] * q0[e]) <= 0.5 * (double)s0[b] * (1 + 1e-5);
            }
            def_ok &= sum == u0[b];
        }
        if (k > 40) def_ok &= q0[32] == -16 && q0[33] == 127 && q0[63] == 16 && s0[1] == 1.0f;
        CHECK(same && guard_ok && def_ok, "quant_act %s k=%d: identical %d guard %d definition %d",
              cpu_isa_name(isa), k, same, guard_ok, def_ok);
        free(x), free(q0), free(q1), free(s0), free(s1), free(u0), free(u1);
    }
}

/* y (m) of the formula in double: sum_b sw sx (sum u qx - zp sumqx), and sum |terms|. */
static void matvec_double(double *y, double *abs_terms, const qmatrix *qm, const qact *qa) {
    const int nb = qm->cols_padded / 32, zp = qm->format == QUANT_Q8 ? 128 : 8;
    for (int j = 0; j < qm->rows; j++) {
        double s = 0, a = 0;
        for (int b = 0; b < nb; b++) {
            long isum = 0;
            for (int e = b * 32; e < b * 32 + 32; e++) isum += (long)stored_u(qm, j, e) * qa->q[e];
            isum -= (long)zp * qa->sum[b];
            double term = (double)qm->scale[(size_t)j * nb + b] * (double)qa->scale[b] * (double)isum;
            s += term;
            a += fabs(term);
        }
        y[j] = s, abs_terms[j] = a;
    }
}

/* The bound on |y - exact| of a kernel that adds each row's block terms
 * t_b = sw sx isum (isum exact) in any order with at most n f32 roundings on any
 * term's path: |err| <= gamma_n * sum_b |t_b|, gamma_n = n u / (1 - n u), u = 2^-24.
 * The AVX-512 q4 kernel: d = sw * sx (1 rounding), one FMA per chunk into one of 4
 * lanes (nb / 4 chained roundings), then 3 adds over the lanes (2 on any path):
 * n = nb / 4 + 3. The reference: d, the product, nb adds: n = nb + 2. */
static double order_bound(int n, double abs_terms) {
    const double u = 1.0 / 16777216.0;
    return n * u / (1 - n * u) * abs_terms;
}

/* Saturation corners: every weight at +-max (u = 255 / 1 or 15 / 1) against every
 * activation at +-127, same and opposite signs: the integer sums must stay exact. */
static void test_matvec_extremes(cpu_isa isa) {
    quant_kernels t;
    quant_kernels_for(&t, isa);
    const int k = 1280, m = 6, kp = quant_padded_cols(k);
    for (int f = QUANT_Q8; f <= QUANT_Q4; f++)
        for (int sx = -1; sx <= 1; sx += 2) {
            float *w = malloc((size_t)m * k * sizeof *w), *x = malloc((size_t)k * sizeof *x);
            for (int j = 0; j < m; j++)
                for (int e = 0; e < k; e++) w[(size_t)j * k + e] = j % 2 ? -1.0f : 1.0f;
            for (int e = 0; e < k; e++) x[e] = (float)sx * 3.0f;
            qmatrix qm;
            ergo_error err = {0};
            quant_alloc(&qm, (quant_format)f, m, k, &err);
            quant_rows(&qm, w, KDT_F32, 0, m);
            int8_t *q = malloc((size_t)kp);
            float *s = malloc((size_t)kp / 32 * 4), got[6], want[6];
            int32_t *sum = malloc((size_t)kp / 32 * 4);
            qact qa = {q, s, sum};
            quant_act_ref(&qa, x, k);
            matvec_q_ref(want, &qm, &qa, 0, m);
            t.matvec(got, &qm, &qa, 0, m);
            /* exactly: each row is +-k * (max|w| / QMAX * QMAX) * 3 / 127 * 127 */
            double ideal = (double)k * 3.0;
            /* the exact kernels give the reference's bits; every kernel is within
             * 1e-5 of the ideal (the sums are exact, the scales powers of 2 apart) */
            int ok = matvec_exact(isa, (quant_format)f) ? !memcmp(got, want, sizeof got) : 1;
            for (int j = 0; j < m; j++) {
                ok &= fabs((double)want[j] - (j % 2 ? -1 : 1) * sx * ideal) <= 1e-5 * ideal;
                ok &= fabs((double)got[j] - (j % 2 ? -1 : 1) * sx * ideal) <= 1e-5 * ideal;
            }
            CHECK(ok, "matvec_q %s %s extremes sign %d: got %.9g want %.9g (ideal %.9g)",
                  cpu_isa_name(isa), quant_format_name((quant_format)f), sx, (double)got[0],
                  (double)want[0], ideal * sx);
            /* the multi-row kernel's lanes at the same corners (3 copies of the row) */
            qact q3[3] = {qa, qa, qa};
            float got3[3][6];
            t.matvec_rows(&got3[0][0], 6, &qm, q3, 3, 0, m);
            CHECK(!memcmp(got3[0], got, sizeof got) && !memcmp(got3[1], got, sizeof got) &&
                      !memcmp(got3[2], got, sizeof got),
                  "matvec_rows %s %s extremes sign %d: row 0 %.9g, row 2 %.9g, matvec %.9g",
                  cpu_isa_name(isa), quant_format_name((quant_format)f), sx, (double)got3[0][0],
                  (double)got3[2][0], (double)got[0]);
            quant_free(&qm);
            free(w), free(x), free(q), free(s), free(sum);
        }
}

static const int mv_ks[] = {32, 33, 95, 127, 129, 200, 255, 300, 1176, 1280, 3420, 3584, 18944};
static const int mv_ms[] = {1, 3, 5, 7, 9};

static void test_matvec(cpu_isa isa) {
    quant_kernels t;
    quant_kernels_for(&t, isa);
    for (int f = QUANT_Q8; f <= QUANT_Q4; f++)
        for (size_t ki = 0; ki < sizeof mv_ks / sizeof mv_ks[0]; ki++)
            for (size_t mi = 0; mi < sizeof mv_ms / sizeof mv_ms[0]; mi++) {
                int k = mv_ks[ki], m = mv_ms[mi], kp = quant_padded_cols(k);
                float *w = malloc((size_t)m * k * sizeof *w), *x = malloc((size_t)k * sizeof *x);
                fill(w, (size_t)m * k, 100 + k + m, 0.5f);
                fill(x, (size_t)k, 200 + k, 3.0f);
                if (m > 3) for (int e = 0; e < k; e++) w[(size_t)1 * k + e] = 0.0f;
                qmatrix qm;
                ergo_error err = {0};
                quant_alloc(&qm, (quant_format)f, m, k, &err);
                quant_rows(&qm, w, KDT_F32, 0, m);
                int8_t *q = malloc((size_t)kp);
                float *s = malloc((size_t)kp / 32 * 4);
                int32_t *sum = malloc((size_t)kp / 32 * 4);
                qact qa = {q, s, sum};
                quant_act_ref(&qa, x, k);
                float *want = malloc((size_t)m * sizeof *want);
                float *got = malloc(((size_t)m + 1 + GUARD) * sizeof *got);
                for (int i = 0; i < m + 1 + GUARD; i++) got[i] = guard_value;
                matvec_q_ref(want, &qm, &qa, 0, m);
                /* two ranges (as threads split rows), output offset by one */
                int mid = m / 2;
                t.matvec(got + 1, &qm, &qa, 0, mid);
                t.matvec(got + 1, &qm, &qa, mid, m);
                int guard_ok = got[0] == guard_value;
                for (int i = m + 1; i < m + 1 + GUARD; i++) guard_ok &= got[i] == guard_value;
                if (matvec_exact(isa, (quant_format)f)) {
                    CHECK(!memcmp(got + 1, want, (size_t)m * sizeof *want) && guard_ok,
                          "matvec_q %s %s k=%d m=%d: bit-identical to ref %d (y0 %.9g vs %.9g), "
                          "guard %d",
                          cpu_isa_name(isa), quant_format_name((quant_format)f), k, m,
                          !memcmp(got + 1, want, (size_t)m * sizeof *want), (double)got[1],
                          (double)want[0], guard_ok);
                } else { /* summation order only: within its bound of the exact value */
                    double *yd = malloc((size_t)m * sizeof *yd), *ad = malloc((size_t)m * sizeof *ad);
                    matvec_double(yd, ad, &qm, &qa);
                    double worst = 0;
                    int ok = 1;
                    for (int j = 0; j < m; j++) {
                        double bound = order_bound(kp / 128 + 3, ad[j]), d = fabs((double)got[1 + j] - yd[j]);
                        ok &= d <= bound;
                        if (bound > 0 && d / bound > worst) worst = d / bound;
                    }
                    if (worst > worst_mv_simd) worst_mv_simd = worst;
                    CHECK(ok && guard_ok, "matvec_q %s %s k=%d m=%d: vs exact, worst err / "
                          "bound %.3g (y0 %.9g vs ref %.9g), guard %d",
                          cpu_isa_name(isa), quant_format_name((quant_format)f), k, m, worst,
                          (double)got[1], (double)want[0], guard_ok);
                    free(yd), free(ad);
                }
                if (isa == ISA_REF) { /* the reference against the formula in double */
                    double *yd = malloc((size_t)m * sizeof *yd), *ad = malloc((size_t)m * sizeof *ad);
                    matvec_double(yd, ad, &qm, &qa);
                    double worst = 0;
                    int ok = 1, nb = kp / 32;
                    for (int j = 0; j < m; j++) {
                        double bound = order_bound(nb + 2, ad[j]), d = fabs((double)want[j] - yd[j]);
                        ok &= d <= bound;
                        if (bound > 0 && d / bound > worst) worst = d / bound;
                    }
                    if (worst > worst_mv) worst_mv = worst;
                    CHECK(ok, "matvec_q_ref %s k=%d m=%d vs double: worst err / bound %.3g",
                          quant_format_name((quant_format)f), k, m, worst);
                    free(yd), free(ad);
                }
                quant_free(&qm);
                free(w), free(x), free(q), free(s), free(sum), free(want), free(got);
            }
}

/* The multi-row kernel: every row bit for bit what matvec of the same ISA gives for
 * it alone (so, transitively, the reference's bits where matvec has them), for any
 * nr, with the weight rows split in two ranges as threads do, each output row at
 * its own stride, nothing written outside [j0, j1) of the nr rows. */
static void test_matvec_rows(cpu_isa isa) {
    static const int ks[] = {32, 100, 128, 200, 3584}, ms[] = {1, 6, 37}, nrs[] = {1, 2, 3, 4, 5, 7, 8, 9, 16};
    enum { NR_MAX = 16 };
    quant_kernels t;
    quant_kernels_for(&t, isa);
    for (int f = QUANT_Q8; f <= QUANT_Q4; f++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                const int k = ks[ki], m = ms[mi], kp = quant_padded_cols(k), ldy = m + 3;
                float *w = malloc((size_t)m * k * sizeof *w), *x = malloc((size_t)k * sizeof *x);
                fill(w, (size_t)m * k, 500 + k + m, 0.5f);
                qmatrix qm;
                ergo_error err = {0};
                quant_alloc(&qm, (quant_format)f, m, k, &err);
                quant_rows(&qm, w, KDT_F32, 0, m);
                qact qa[NR_MAX];
                int8_t *q = malloc((size_t)NR_MAX * kp);
                float *s = malloc((size_t)NR_MAX * kp / 32 * 4);
                int32_t *sum = malloc((size_t)NR_MAX * kp / 32 * 4);
                float *alone = malloc((size_t)NR_MAX * m * sizeof *alone);
                for (int a = 0; a < NR_MAX; a++) {
                    /* different scales per row; row 3 all zero (scale 0 everywhere) */
                    fill(x, (size_t)k, 600 + k + a, a == 3 ? 0.0f : 0.5f + (float)a);
                    qa[a] = (qact){q + (size_t)a * kp, s + (size_t)a * kp / 32, sum + (size_t)a * kp / 32};
                    t.act(&qa[a], x, k);
                    t.matvec(alone + (size_t)a * m, &qm, &qa[a], 0, m);
                }
                const size_t ny = (size_t)NR_MAX * ldy + GUARD;
                float *y = malloc(ny * sizeof *y);
                for (size_t ni = 0; ni < sizeof nrs / sizeof nrs[0]; ni++) {
                    const int nr = nrs[ni];
                    for (int split = 0; split < 2; split++) {
                        for (size_t i = 0; i < ny; i++) y[i] = guard_value;
                        const int mid = split ? m / 2 : m; /* mid may be 0 or odd */
                        t.matvec_rows(y + 1, (size_t)ldy, &qm, qa, nr, 0, mid);
                        t.matvec_rows(y + 1, (size_t)ldy, &qm, qa, nr, mid, m);
                        int bad_row = -1, guard_ok = 1;
                        for (int a = 0; a < nr && bad_row < 0; a++)
                            if (memcmp(y + 1 + (size_t)a * ldy, alone + (size_t)a * m, (size_t)m * sizeof *y))
                                bad_row = a;
                        for (size_t i = 0; i < ny; i++) {
                            const long off = (long)i - 1;
                            const int inside = off >= 0 && off / ldy < nr && off % ldy < m;
                            if (!inside) guard_ok &= y[i] == guard_value;
                        }
                        CHECK(bad_row < 0 && guard_ok,
                              "matvec_rows %s %s k=%d m=%d nr=%d split %d: row %d differs from "
                              "matvec alone (y[0] %.9g vs %.9g), guard %d",
                              cpu_isa_name(isa), quant_format_name((quant_format)f), k, m, nr, split,
                              bad_row, bad_row < 0 ? 0.0 : (double)y[1 + (size_t)bad_row * ldy],
                              bad_row < 0 ? 0.0 : (double)alone[(size_t)bad_row * m], guard_ok);
                    }
                }
                /* ref vs this ISA through the multi-row kernel: the reference's bits
                 * where matvec keeps them (the bound of the reordered kernel is
                 * test_matvec's, on the same matvec) */
                if (matvec_exact(isa, (quant_format)f)) {
                    float *want = malloc((size_t)NR_MAX * m * sizeof *want);
                    matvec_rows_ref(want, (size_t)m, &qm, qa, NR_MAX, 0, m);
                    CHECK(!memcmp(want, alone, (size_t)NR_MAX * m * sizeof *want),
                          "matvec_rows_ref vs %s %s k=%d m=%d: not bit-identical",
                          cpu_isa_name(isa), quant_format_name((quant_format)f), k, m);
                    free(want);
                }
                quant_free(&qm);
                free(w), free(x), free(q), free(s), free(sum), free(alone), free(y);
            }
}

/* matmul_q_int8: n rows at once give each row's n = 1 bits, with bias or not, for 1
 * and 2 threads; n past a group (matmul_q_int8_rows) and past 8 (tiles) included.
 * And matmul_q_panels is matmul_q's many-row path. */
static void test_matmul_q_int8(void) {
    static const int ns[] = {1, 2, 3, 5, 8, 9, 16, 70};
    static const int kms[][2] = {{100, 7}, {200, 64}, {3584, 101}, {32768, 9}};
    int nt = omp_get_max_threads();
    for (int f = QUANT_Q8; f <= QUANT_Q4; f++)
        for (size_t c = 0; c < sizeof kms / sizeof kms[0]; c++) {
            const int k = kms[c][0], m = kms[c][1], nmax = 70;
            float *w = malloc((size_t)m * k * sizeof *w), *bias = malloc((size_t)m * sizeof *bias);
            fill(w, (size_t)m * k, 700 + k, 0.3f);
            fill(bias, (size_t)m, 701, 1.0f);
            uint16_t *bias16 = to_type(bias, (size_t)m, KDT_BF16);
            qmatrix qm;
            ergo_error err = {0};
            quant_alloc(&qm, (quant_format)f, m, k, &err);
            quant_rows(&qm, w, KDT_F32, 0, m);
            float *x = malloc((size_t)nmax * k * sizeof *x);
            fill(x, (size_t)nmax * k, 702 + k, 2.0f);
            float *y = malloc(((size_t)nmax * m + GUARD) * sizeof *y),
                  *one = malloc((size_t)nmax * m * sizeof *one);
            for (int bi = 0; bi < 2; bi++) {
                const void *b = bi ? (const void *)bias16 : NULL;
                omp_set_num_threads(1);
                for (int i = 0; i < nmax; i++)
                    matmul_q_int8(one + (size_t)i * m, x + (size_t)i * k, &qm, b, KDT_BF16, 1);
                for (int threads = 1; threads <= 2; threads++) {
                    omp_set_num_threads(threads);
                    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                        const int n = ns[ni];
                        if (k > 4096 && n > 16) continue; /* the 32768 case: groups of 16 */
                        const size_t ny = (size_t)n * m;
                        for (int i = 0; i < GUARD; i++) y[ny + i] = guard_value;
                        matmul_q_int8(y, x, &qm, b, KDT_BF16, n);
                        int bad = -1, guard_ok = 1;
                        for (int i = 0; i < n && bad < 0; i++)
                            if (memcmp(y + (size_t)i * m, one + (size_t)i * m, (size_t)m * sizeof *y)) bad = i;
                        for (int i = 0; i < GUARD; i++) guard_ok &= y[ny + i] == guard_value;
                        CHECK(bad < 0 && guard_ok,
                              "matmul_q_int8 %s k=%d m=%d n=%d bias=%d threads=%d: row %d differs "
                              "from its n = 1 call, guard %d",
                              quant_format_name((quant_format)f), k, m, n, bi, threads, bad, guard_ok);
                    }
                }
                omp_set_num_threads(nt);
                /* matmul_q: int8 below MATMUL_BLOCKED_MIN_N, panels from there */
                for (int n = 1; n <= MATMUL_BLOCKED_MIN_N + 1; n++) {
                    float *want = malloc((size_t)n * m * sizeof *want);
                    if (n < MATMUL_BLOCKED_MIN_N) matmul_q_int8(want, x, &qm, b, KDT_BF16, n);
                    else matmul_q_panels(want, x, &qm, b, KDT_BF16, n);
                    matmul_q(y, x, &qm, b, KDT_BF16, n);
                    CHECK(!memcmp(y, want, (size_t)n * m * sizeof *y),
                          "matmul_q %s k=%d m=%d n=%d: not its %s path's bits",
                          quant_format_name((quant_format)f), k, m, n,
                          n < MATMUL_BLOCKED_MIN_N ? "int8" : "panel");
                    free(want);
                }
            }
            quant_free(&qm);
            free(w), free(bias), free(bias16), free(x), free(y), free(one);
        }
    CHECK(matmul_q_int8_rows(32768) == QUANT_INT8_ROWS && matmul_q_int8_rows(3584) >= 64,
          "matmul_q_int8_rows: %d at k = 32768 (want %d), %d at 3584", matmul_q_int8_rows(32768),
          QUANT_INT8_ROWS, matmul_q_int8_rows(3584));
}

/* matmul_q against dequantised weights through the f32 kernels:
 *   n >= MATMUL_BLOCKED_MIN_N: bit-identical to matmul_wt on the dequantised rows;
 *   n < that: within the activation rounding, sum_i |w_i| s_x/2, of matmul_wt_ref.
 * Then the same with 1 thread, and bias. */
static void test_matmul_q(void) {
    static const int ns[] = {1, 2, 3, 4, 5, 9};
    static const int kms[][2] = {{33, 7}, {300, 50}, {1176, 37}, {3584, 101}};
    for (int f = QUANT_Q8; f <= QUANT_Q4; f++)
        for (size_t c = 0; c < sizeof kms / sizeof kms[0]; c++) {
            int k = kms[c][0], m = kms[c][1];
            float *w = malloc((size_t)m * k * sizeof *w), *bias = malloc((size_t)m * sizeof *bias);
            fill(w, (size_t)m * k, 300 + k, 0.3f);
            fill(bias, (size_t)m, 301, 1.0f);
            uint16_t *bias16 = to_type(bias, (size_t)m, KDT_BF16);
            qmatrix qm;
            ergo_error err = {0};
            quant_alloc(&qm, (quant_format)f, m, k, &err);
            quant_rows(&qm, w, KDT_F32, 0, m);
            float *deq = malloc((size_t)m * k * sizeof *deq);
            dequant_rows(deq, &qm, 0, m);
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                int n = ns[ni];
                float *x = malloc((size_t)n * k * sizeof *x);
                fill(x, (size_t)n * k, 400 + n + k, 2.0f);
                size_t ny = (size_t)n * m;
                float *y = malloc((ny + GUARD) * sizeof *y), *y1 = malloc(ny * sizeof *y1),
                      *want = malloc(ny * sizeof *want);
                for (int bi = 0; bi < 2; bi++) {
                    const void *b = bi ? (const void *)bias16 : NULL;
                    for (int i = 0; i < GUARD; i++) y[ny + i] = guard_value;
                    matmul_q(y, x, &qm, b, KDT_BF16, n);
                    int guard_ok = 1;
                    for (int i = 0; i < GUARD; i++) guard_ok &= y[ny + i] == guard_value;
                    int ok = 1;
                    double worst = 0;
                    if (n >= MATMUL_BLOCKED_MIN_N) {
                        /* the f32 reference within the summation-order bound ... */
                        matmul_wt_ref(want, x, deq, KDT_F32, b, KDT_BF16, n, k, m);
                        for (int i = 0; i < n; i++)
                            for (int j = 0; j < m; j++) {
                                double mag = fabs((double)(b ? bf16_to_f32_one(bias16[j]) : 0.0f));
                                for (int e = 0; e < k; e++)
                                    mag += fabs((double)x[(size_t)i * k + e] *
                                                (double)deq[(size_t)j * k + e]);
                                double bound = 2.0 * k * 6e-8 * mag + 1e-30;
                                double d = fabs((double)y[(size_t)i * m + j] -
                                                (double)want[(size_t)i * m + j]);
                                ok &= d <= bound;
                                if (d / bound > worst) worst = d / bound;
                            }
                        /* ... and bit for bit the f32 path of this ISA */
                        matmul_wt(want, x, deq, KDT_F32, b, KDT_BF16, n, k, m);
                        ok &= !memcmp(y, want, ny * sizeof *y);
                    } else {
                        matmul_wt_ref(want, x, deq, KDT_F32, b, KDT_BF16, n, k, m);
                        for (int i = 0; i < n; i++) {
                            const float *xi = x + (size_t)i * k;
                            for (int j = 0; j < m; j++) {
                                /* block by block: sum |w| * s_x / 2, plus f32 rounding */
                                double bound = 0, mag = 0;
                                for (int b0 = 0; b0 < k; b0 += 32) {
                                    double amax = 0, sw = 0;
                                    for (int e = b0; e < b0 + 32 && e < k; e++) {
                                        amax = fmax(amax, fabs((double)xi[e]));
                                        sw += fabs((double)deq[(size_t)j * k + e]);
                                        mag += fabs((double)xi[e] * (double)deq[(size_t)j * k + e]);
                                    }
                                    bound += sw * amax / 127.0 / 2.0 * (1 + 1e-5);
                                }
                                bound += 1e-5 * (mag + 1);
                                double d = fabs((double)y[(size_t)i * m + j] - (double)want[(size_t)i * m + j]);
                                ok &= d <= bound;
                                if (d / bound > worst) worst = d / bound;
                            }
                        }
                    }
                    double *wslot = n >= MATMUL_BLOCKED_MIN_N ? &worst_mmp : &worst_mm8;
                    if (worst > *wslot) *wslot = worst;
                    CHECK(ok && guard_ok, "matmul_q %s k=%d m=%d n=%d bias=%d: ok %d (worst err / "
                          "bound %.3g) guard %d",
                          quant_format_name((quant_format)f), k, m, n, bi, ok, worst, guard_ok);
                    /* thread count does not change a bit */
                    int nt = omp_get_max_threads();
                    omp_set_num_threads(1);
                    matmul_q(y1, x, &qm, b, KDT_BF16, n);
                    omp_set_num_threads(nt);
                    CHECK(!memcmp(y, y1, ny * sizeof *y), "matmul_q %s k=%d m=%d n=%d: 1 thread "
                          "differs from %d", quant_format_name((quant_format)f), k, m, n, nt);
                }
                free(x), free(y), free(y1), free(want);
            }
            quant_free(&qm);
            free(w), free(bias), free(bias16), free(deq);
        }
}

void test_quant(void) {
    test_names_and_sizes();
    test_hand_cases();
    test_round_trip();
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
        test_act((cpu_isa)isa);
        test_dequant((cpu_isa)isa);
        test_matvec((cpu_isa)isa);
        test_matvec_extremes((cpu_isa)isa);
        test_matvec_rows((cpu_isa)isa);
    }
    if (cpu_best_isa() == ISA_AVX512 && !__builtin_cpu_supports("avx512vnni"))
        SKIP("AVX-512 without VNNI: the q8/q4 AVX-512 kernels fall back to AVX2 and were not run");
    /* matmul_q through the global tables of every ISA, then back to the default */
    ergo_error err = {0};
    for (int isa = ISA_REF; isa <= (int)cpu_best_isa(); isa++) {
        kernels_init(cpu_isa_name((cpu_isa)isa), &err);
        test_matmul_q();
        test_matmul_q_int8();
    }
    kernels_init(NULL, &err);
    printf("  quant: worst |w - s q| / |s| %.4f (bound 0.5, 1.0 at a clamped q4 +8); matvec_q vs double, err / order "
           "bound: ref %.3g, reordered SIMD %.3g; matmul_q vs f32 ref: int8 path err / bound "
           "%.3g, panel path %.3g\n",
           worst_rt, worst_mv, worst_mv_simd, worst_mm8, worst_mmp);
}
