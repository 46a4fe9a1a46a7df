/*
 * attn_train.c - attention for training (see attn_train.h): the naive definitions,
 * the tiled forward that saves each row's log-sum-exp, and FlashAttention-2's
 * backward (training.md section 2.2, arXiv 2307.08691 algorithm 2), scores
 * recomputed tile by tile from the lse.
 *
 * One tile driver for every ISA; what differs per ISA is a small table of
 * micro-kernels (at_ops): a 4-row register-blocked product, the row-wise softmax
 * pieces and the exp. ISA_REF runs the driver with scalar micro-kernels (the tiled
 * algorithm in plain C, tested like the SIMD one); AVX2 (and AVX-512 CPUs, which
 * run the AVX2 table: no AVX-512 variant yet) the vectorised ones when Dh is a
 * multiple of 8, else the scalar ones.
 *
 * Dimension letters: N = rows, H = query heads, KV = kv heads, Dh = head dim,
 * rep = H / KV; BQ, BK = query and key tile (64 each, both grids counted from the
 * start of each span, so causal tiles line up with the diagonal).
 *
 * Determinism: the forward and dQ run one work item per (span, head, query tile),
 * dK/dV one per (span, kv head, key tile); each item owns its outputs and sums
 * in a fixed order (heads, then query tiles, ascending), so no float atomics and
 * the bits do not depend on the number of threads or the schedule. The price of
 * not sharing dS between the two passes: the backward recomputes S, P and dP
 * twice (7 tile products instead of FlashAttention-2's 5).
 */
#include "attn_train.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/status.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"

#define BQ 64         /* query rows per tile */
#define BK ATTN_KTILE /* keys per tile (64) */

_Static_assert(BQ % 4 == 0 && BK % 16 == 0, "attn_train.c: tiles are blocks of 4 rows, 16 keys");

static int span_count(const attn_train_args *a) { return a->spans ? a->n_spans : 1; }

static void span_get(const attn_train_args *a, int s, int *start, int *len) {
    if (a->spans) {
        *start = a->spans[2 * s];
        *len = a->spans[2 * s + 1];
    } else {
        *start = 0;
        *len = a->n;
    }
}

/* ---- the naive definitions: one query row against all its keys, in double ---- */

void attn_train_forward_ref(const attn_train_args *a, float *out, float *lse, const float *q,
                            const float *k, const float *v) {
    const int n = a->n, H = a->heads, KV = a->kv_heads, dh = a->dh, rep = H / KV;
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh;
    double *s = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)); /* (span) scores, then p */
    double *acc = malloc(sizeof(double) * (size_t)dh);            /* (Dh) */
    ERGO_ASSERT(s && acc);
    for (int sp = 0; sp < span_count(a); sp++) {
        int s0, len;
        span_get(a, sp, &s0, &len);
        for (int i = s0; i < s0 + len; i++) {
            const int lim = a->causal ? i + 1 : s0 + len; /* keys [s0, lim) */
            for (int h = 0; h < H; h++) {
                const float *qi = q + (size_t)i * ldq + (size_t)h * dh;
                const size_t kof = (size_t)(h / rep) * dh;
                double mx = -(double)INFINITY, sum = 0;
                for (int j = s0; j < lim; j++) {
                    const float *kj = k + (size_t)j * ldk + kof;
                    double dot = 0;
                    for (int d = 0; d < dh; d++) dot += (double)qi[d] * (double)kj[d];
                    s[j - s0] = dot * (double)a->scale;
                    if (s[j - s0] > mx) mx = s[j - s0];
                }
                for (int d = 0; d < dh; d++) acc[d] = 0;
                for (int j = s0; j < lim; j++) {
                    const double p = exp(s[j - s0] - mx);
                    const float *vj = v + (size_t)j * ldk + kof;
                    sum += p;
                    for (int d = 0; d < dh; d++) acc[d] += p * (double)vj[d];
                }
                for (int d = 0; d < dh; d++) out[(size_t)i * ldq + (size_t)h * dh + d] = (float)(acc[d] / sum);
                lse[(size_t)h * n + i] = (float)(mx + log(sum));
            }
        }
    }
    free(s);
    free(acc);
}

/* P = exp(S scale - lse) from the saved lse, D = dO . O from the saved output (what
 * the tiled backward uses: the gradient of the forward that produced them) */
void attn_train_backward_ref(const attn_train_args *a, float *dq, float *dk, float *dv,
                             const float *dout, const float *q, const float *k,
                             const float *v, const float *out, const float *lse) {
    const int n = a->n, H = a->heads, KV = a->kv_heads, dh = a->dh, rep = H / KV;
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh;
    const double scale = (double)a->scale;
    double *dkd = calloc((size_t)n * ldk + 1, sizeof(double)); /* (N, KV*Dh) */
    double *dvd = calloc((size_t)n * ldk + 1, sizeof(double)); /* (N, KV*Dh) */
    double *dqd = malloc(sizeof(double) * (size_t)dh);         /* (Dh) */
    ERGO_ASSERT(dkd && dvd && dqd);
    for (int sp = 0; sp < span_count(a); sp++) {
        int s0, len;
        span_get(a, sp, &s0, &len);
        for (int i = s0; i < s0 + len; i++) {
            const int lim = a->causal ? i + 1 : s0 + len;
            for (int h = 0; h < H; h++) {
                const size_t qof = (size_t)i * ldq + (size_t)h * dh, kof = (size_t)(h / rep) * dh;
                const float *qi = q + qof, *doi = dout + qof, *oi = out + qof;
                double D = 0;
                for (int d = 0; d < dh; d++) D += (double)doi[d] * (double)oi[d];
                const double L = (double)lse[(size_t)h * n + i];
                for (int d = 0; d < dh; d++) dqd[d] = 0;
                for (int j = s0; j < lim; j++) {
                    const float *kj = k + (size_t)j * ldk + kof, *vj = v + (size_t)j * ldk + kof;
                    double s = 0, dp = 0;
                    for (int d = 0; d < dh; d++) {
                        s += (double)qi[d] * (double)kj[d];
                        dp += (double)doi[d] * (double)vj[d];
                    }
                    const double p = exp(s * scale - L), ds = p * (dp - D);
                    double *dkj = dkd + (size_t)j * ldk + kof, *dvj = dvd + (size_t)j * ldk + kof;
                    for (int d = 0; d < dh; d++) {
                        dqd[d] += ds * (double)kj[d];
                        dkj[d] += ds * scale * (double)qi[d];
                        dvj[d] += p * (double)doi[d];
                    }
                }
                for (int d = 0; d < dh; d++) dq[qof + d] = (float)(dqd[d] * scale);
            }
        }
    }
    for (size_t e = 0; e < (size_t)n * ldk; e++) {
        dk[e] = (float)dkd[e];
        dv[e] = (float)dvd[e];
    }
    free(dkd);
    free(dvd);
    free(dqd);
}

/* ---- micro-kernels: scalar and AVX2 ---- */

typedef struct at_ops {
    /* C (rows, nc) = (accum ? C : 0) + A (rows, kd) B (kd, nc), the sum over k formed
     * first, in k order, then added: element (r, k) of A at a + r*ars + k*acs, row k
     * of B at b + k*ldb, row r of C at c + r*ldc. Blocks of rows past `rows` read
     * A's last row and write to `spare` (nc floats). nc a multiple of 8 in the SIMD
     * table. Each element's arithmetic depends only on its row of A and column of B
     * (not on the blocking), which the two backward schedules rely on. */
    void (*mm)(float *c, size_t ldc, int rows, const float *a, size_t ars, size_t acs,
               const float *b, size_t ldb, int kd, int nc, int accum, float *spare);
    /* forward, one score row (BK): s = s * scale, keys >= nv masked, the online max m
     * and sum l updated, s replaced by p = exp(s - m); returns the factor
     * exp(old m - new m) the row's accumulator must be multiplied by */
    float (*fwd_row)(float *s, int nv, float scale, float *m, float *l);
    /* backward, one score row (BK): s = exp(s * scale - lse), keys >= nv: 0 */
    void (*bwd_p)(float *s, int nv, float scale, float lse);
    /* dp (BK) = p (dp - D) (dS from dP) */
    void (*bwd_ds)(float *dp, const float *p, float D);
    float (*dot)(const float *x, const float *y, int n);
    void (*scale)(float *y, const float *x, int n, float c); /* y = x * c */
    /* dst (Dh, BK) = the transpose of jn rows x (jn, Dh) at stride ldx, columns
     * [jn, BK) zero (a K^T or V^T tile) */
    void (*pack_t)(float *dst, const float *x, size_t ldx, int jn, int dh);
} at_ops;

static void mm_scalar(float *c, size_t ldc, int rows, const float *a, size_t ars, size_t acs,
                      const float *b, size_t ldb, int kd, int nc, int accum, float *spare) {
    for (int r = 0; r < rows; r++)
        for (int col = 0; col < nc; col++) {
            float sum = 0.0f;
            for (int kk = 0; kk < kd; kk++)
                sum += a[(size_t)r * ars + (size_t)kk * acs] * b[(size_t)kk * ldb + col];
            float *cr = c + (size_t)r * ldc + col;
            *cr = accum ? *cr + sum : sum;
        }
}

static float fwd_row_scalar(float *s, int nv, float scale, float *m, float *l) {
    if (nv <= 0) { /* past this row's causal limit: p = 0, nothing changes */
        memset(s, 0, sizeof(float) * BK);
        return 1.0f;
    }
    float mt = -INFINITY;
    for (int j = 0; j < BK; j++) {
        s[j] = j < nv ? s[j] * scale : -INFINITY;
        if (s[j] > mt) mt = s[j];
    }
    const float mold = *m, mnew = mt > mold ? mt : mold;
    float sum = 0.0f;
    for (int j = 0; j < BK; j++) {
        s[j] = expf(s[j] - mnew);
        sum += s[j];
    }
    const float corr = expf(mold - mnew); /* 0 on the first tile */
    *l = *l * corr + sum;
    *m = mnew;
    return corr;
}

static void bwd_p_scalar(float *s, int nv, float scale, float lse) {
    for (int j = 0; j < BK; j++) s[j] = j < nv ? expf(s[j] * scale - lse) : 0.0f;
}

static void bwd_ds_scalar(float *dp, const float *p, float D) {
    for (int j = 0; j < BK; j++) dp[j] = p[j] * (dp[j] - D);
}

static float dot_scalar(const float *x, const float *y, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}

static void scale_scalar(float *y, const float *x, int n, float c) {
    for (int i = 0; i < n; i++) y[i] = x[i] * c;
}

static void pack_t_scalar(float *dst, const float *x, size_t ldx, int jn, int dh) {
    for (int d = 0; d < dh; d++) {
        float *row = dst + (size_t)d * BK;
        for (int j = 0; j < jn; j++) row[j] = x[(size_t)j * ldx + d];
        for (int j = jn; j < BK; j++) row[j] = 0.0f;
    }
}

static const at_ops ops_scalar = {mm_scalar,  fwd_row_scalar, bwd_p_scalar, bwd_ds_scalar,
                                  dot_scalar, scale_scalar,   pack_t_scalar};

#define T256 __attribute__((target("avx2,fma")))

T256 static inline __m256 mask_lt256(__m256 x, int n, __m256 fill) { /* lanes >= n -> fill */
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
    return _mm256_blendv_ps(fill, x, keep);
}

T256 static inline float hmax256(__m256 x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

T256 static inline float hsum256(__m256 x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 6 rows x 16 columns: 12 accumulators (two FMA pipes of latency 4 kept busy with
 * slack), 2 loads of B and 6 broadcasts of A per k. AP(r) is the address of A's
 * element (r, kk): written three ways so that the loop keeps one index (rows of A
 * contiguous: A = Q, P or dS), one pointer (columns contiguous: A = P^T or dS^T)
 * or, in the general case (a partial block of the latter), six. */
#define BLK6X16(AP, STEP)                                                          \
    do {                                                                           \
        __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, \
               c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00,   \
               c51 = c00;                                                          \
        for (int kk = 0; kk < kd; kk++, b += ldb) {                                \
            const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);     \
            __m256 x = _mm256_broadcast_ss(AP(0));                                 \
            c00 = _mm256_fmadd_ps(x, b0, c00);                                     \
            c01 = _mm256_fmadd_ps(x, b1, c01);                                     \
            x = _mm256_broadcast_ss(AP(1));                                        \
            c10 = _mm256_fmadd_ps(x, b0, c10);                                     \
            c11 = _mm256_fmadd_ps(x, b1, c11);                                     \
            x = _mm256_broadcast_ss(AP(2));                                        \
            c20 = _mm256_fmadd_ps(x, b0, c20);                                     \
            c21 = _mm256_fmadd_ps(x, b1, c21);                                     \
            x = _mm256_broadcast_ss(AP(3));                                        \
            c30 = _mm256_fmadd_ps(x, b0, c30);                                     \
            c31 = _mm256_fmadd_ps(x, b1, c31);                                     \
            x = _mm256_broadcast_ss(AP(4));                                        \
            c40 = _mm256_fmadd_ps(x, b0, c40);                                     \
            c41 = _mm256_fmadd_ps(x, b1, c41);                                     \
            x = _mm256_broadcast_ss(AP(5));                                        \
            c50 = _mm256_fmadd_ps(x, b0, c50);                                     \
            c51 = _mm256_fmadd_ps(x, b1, c51);                                     \
            STEP;                                                                  \
        }                                                                          \
        BLK_OUT(0, c00, c01);                                                      \
        BLK_OUT(1, c10, c11);                                                      \
        BLK_OUT(2, c20, c21);                                                      \
        BLK_OUT(3, c30, c31);                                                      \
        BLK_OUT(4, c40, c41);                                                      \
        BLK_OUT(5, c50, c51);                                                      \
    } while (0)

#define BLK_OUT(r, v0, v1)                                                         \
    do {                                                                           \
        if (accum) {                                                               \
            v0 = _mm256_add_ps(_mm256_loadu_ps(cr[r]), v0);                        \
            v1 = _mm256_add_ps(_mm256_loadu_ps(cr[r] + 8), v1);                    \
        }                                                                          \
        _mm256_storeu_ps(cr[r], v0);                                               \
        _mm256_storeu_ps(cr[r] + 8, v1);                                           \
    } while (0)

/* rows of A contiguous (acs = 1) */
T256 static void blk6x16_rows(float *const cr[6], const float *const ar[6], const float *b,
                              size_t ldb, int kd, int accum) {
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], *a5 = ar[5];
#define AP(r) (a##r + kk)
    BLK6X16(AP, (void)0);
#undef AP
}

/* columns of A contiguous (ars = 1) and the block whole: row r at p + r */
T256 static void blk6x16_cols(float *const cr[6], const float *p, size_t acs, const float *b,
                              size_t ldb, int kd, int accum) {
#define AP(r) (p + r)
    BLK6X16(AP, p += acs);
#undef AP
}

T256 static void blk6x16_any(float *const cr[6], const float *const ar[6], size_t acs,
                             const float *b, size_t ldb, int kd, int accum) {
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], *a5 = ar[5];
    size_t ak = 0;
#define AP(r) (a##r + ak)
    BLK6X16(AP, ak += acs);
#undef AP
}
#undef BLK_OUT
#undef BLK6X16

/* 6 rows x 8 columns (the tail of Dh = 8 mod 16) */
T256 static void blk6x8(float *const cr[6], const float *const ar[6], size_t acs, const float *b,
                        size_t ldb, int kd, int accum) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    size_t ak = 0;
    for (int kk = 0; kk < kd; kk++, b += ldb, ak += acs) {
        const __m256 b0 = _mm256_loadu_ps(b);
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[0] + ak), b0, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[1] + ak), b0, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[2] + ak), b0, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[3] + ak), b0, c3);
        c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[4] + ak), b0, c4);
        c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[5] + ak), b0, c5);
    }
    __m256 cv[6] = {c0, c1, c2, c3, c4, c5};
    for (int r = 0; r < 6; r++) {
        if (accum) cv[r] = _mm256_add_ps(_mm256_loadu_ps(cr[r]), cv[r]);
        _mm256_storeu_ps(cr[r], cv[r]);
    }
}

/* column panels outer (a panel of B, kd x 16, stays in L1 while every row block
 * passes), blocks of 6 rows inner */
T256 static void mm_avx2(float *c, size_t ldc, int rows, const float *a, size_t ars, size_t acs,
                         const float *b, size_t ldb, int kd, int nc, int accum, float *spare) {
    for (int n0 = 0; n0 < nc; n0 += 16) {
        for (int r0 = 0; r0 < rows; r0 += 6) {
            const float *ar[6];
            float *cr[6];
            for (int r = 0; r < 6; r++) {
                const int i = r0 + r < rows ? r0 + r : rows - 1;
                ar[r] = a + (size_t)i * ars;
                cr[r] = r0 + r < rows ? c + (size_t)(r0 + r) * ldc + n0 : spare;
            }
            if (nc - n0 < 16) blk6x8(cr, ar, acs, b + n0, ldb, kd, accum);
            else if (acs == 1) blk6x16_rows(cr, ar, b + n0, ldb, kd, accum);
            else if (ars == 1 && r0 + 6 <= rows) blk6x16_cols(cr, ar[0], acs, b + n0, ldb, kd, accum);
            else blk6x16_any(cr, ar, acs, b + n0, ldb, kd, accum);
        }
    }
}

T256 static float fwd_row_avx2(float *s, int nv, float scale, float *m, float *l) {
    if (nv <= 0) {
        memset(s, 0, sizeof(float) * BK);
        return 1.0f;
    }
    const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    __m256 mx = ninf;
    for (int j = 0; j < BK; j += 8) {
        const __m256 x = mask_lt256(_mm256_mul_ps(_mm256_loadu_ps(s + j), sc), nv - j, ninf);
        _mm256_storeu_ps(s + j, x);
        mx = _mm256_max_ps(mx, x);
    }
    const float mt = hmax256(mx), mold = *m, mnew = mt > mold ? mt : mold;
    const __m256 mv = _mm256_set1_ps(mnew);
    for (int j = 0; j < BK; j += 8) _mm256_storeu_ps(s + j, _mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
    exp_f32_avx2(s, s, BK);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < BK; j += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(s + j));
    const float corr = expf(mold - mnew);
    *l = *l * corr + hsum256(sum);
    *m = mnew;
    return corr;
}

T256 static void bwd_p_avx2(float *s, int nv, float scale, float lse) {
    const __m256 sc = _mm256_set1_ps(scale), lv = _mm256_set1_ps(lse),
                 ninf = _mm256_set1_ps(-INFINITY);
    for (int j = 0; j < BK; j += 8)
        _mm256_storeu_ps(s + j, mask_lt256(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(s + j), sc), lv),
                                           nv - j, ninf));
    exp_f32_avx2(s, s, BK); /* exp(-inf) = 0 */
}

T256 static void bwd_ds_avx2(float *dp, const float *p, float D) {
    const __m256 dv = _mm256_set1_ps(D);
    for (int j = 0; j < BK; j += 8)
        _mm256_storeu_ps(dp + j, _mm256_mul_ps(_mm256_loadu_ps(p + j),
                                               _mm256_sub_ps(_mm256_loadu_ps(dp + j), dv)));
}

T256 static float dot_avx2(const float *x, const float *y, int n) { /* n % 8 == 0 */
    __m256 s = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s);
    return hsum256(s);
}

T256 static void scale_avx2(float *y, const float *x, int n, float c) { /* n % 8 == 0 */
    const __m256 cv = _mm256_set1_ps(c);
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), cv));
}

/* dst[c * ldd + r] = src[r * lds + c] for r, c < 8 */
T256 static inline void transpose8(float *dst, size_t ldd, const float *src, size_t lds) {
    __m256 r[8], t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)i * lds);
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) {
        u[i + 0] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + (size_t)i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (size_t)(i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}

T256 static void pack_t_avx2(float *dst, const float *x, size_t ldx, int jn, int dh) { /* dh % 8 == 0 */
    int j = 0;
    for (; j + 8 <= jn; j += 8)
        for (int d = 0; d < dh; d += 8) transpose8(dst + (size_t)d * BK + j, BK, x + (size_t)j * ldx + d, ldx);
    for (; j < jn; j++)
        for (int d = 0; d < dh; d++) dst[(size_t)d * BK + j] = x[(size_t)j * ldx + d];
    if (jn < BK)
        for (int d = 0; d < dh; d++) memset(dst + (size_t)d * BK + jn, 0, sizeof(float) * (size_t)(BK - jn));
}

static const at_ops ops_avx2 = {mm_avx2,  fwd_row_avx2, bwd_p_avx2, bwd_ds_avx2,
                                dot_avx2, scale_avx2,   pack_t_avx2};

/* The table for kern's ISA (kernels_init's choice; tests set kern per ISA). */
static const at_ops *ops_pick(int dh) {
    if (kern.isa >= ISA_AVX2 && dh % 8 == 0) return &ops_avx2;
    return &ops_scalar;
}

/* ---- the tile driver ---- */

/* What every tile function reads. */
typedef struct at_ctx {
    const attn_train_args *a;
    const at_ops *o;
    int n, H, KV, dh, rep;
    size_t ldq, ldk;    /* H*Dh, KV*Dh */
} at_ctx;

/* The operands of the products are copied into dense per-thread tiles (K^T and V^T
 * transposed on the way): read in place, rows of K^T (or of Q, dO) thousands of
 * bytes apart put every step of a product on another page and the tiles out of L1. */
static void pack_rows(float *dst, const float *src, size_t ld, int rows, int dh) {
    for (int r = 0; r < rows; r++) memcpy(dst + (size_t)r * dh, src + (size_t)r * ld, sizeof(float) * (size_t)dh);
}

/* valid keys of tile j0 (jn keys) for span row i (span-relative) */
static inline int tile_valid(int causal, int i, int j0, int jn) {
    if (!causal) return jn;
    const int nv = i - j0 + 1;
    return nv < jn ? nv : jn;
}

static inline int imin(int x, int y) { return x < y ? x : y; }

/* Work items: (span start, span length, head or kv head, tile start) */
typedef struct at_item {
    int s0, len, h, t0;
} at_item;

/* items of every span: heads x tiles of `tile` rows (tile 0: one per head, the
 * whole span); causal ones with the most work first (a query tile's cost grows with
 * its start, a key tile's shrinks) */
static at_item *items_make(const attn_train_args *a, int heads, int tile, int late_first,
                           int *count) {
    int total = 0;
    for (int sp = 0; sp < span_count(a); sp++) {
        int s0, len;
        span_get(a, sp, &s0, &len);
        total += heads * (tile ? (len + tile - 1) / tile : 1);
    }
    at_item *it = malloc(sizeof(at_item) * (size_t)(total > 0 ? total : 1));
    ERGO_ASSERT(it);
    int m = 0;
    for (int sp = 0; sp < span_count(a); sp++) {
        int s0, len;
        span_get(a, sp, &s0, &len);
        const int nt = tile ? (len + tile - 1) / tile : 1;
        for (int t = 0; t < nt; t++)
            for (int h = 0; h < heads; h++) {
                const int tt = a->causal && late_first ? nt - 1 - t : t;
                it[m++] = (at_item){s0, len, h, tt * tile};
            }
    }
    *count = m;
    return it;
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* per-thread scratch of the forward: S (BQ, BK), acc (BQ, Dh), m, l (BQ), K^T tile
 * (Dh, BK), V tile (BK, Dh), a spare row (max(BK, Dh)) */
static size_t fwd_scratch(int dh) {
    return (size_t)BQ * BK + (size_t)BQ * dh + 2 * BQ + 2 * (size_t)BK * dh + (size_t)(dh > BK ? dh : BK);
}

/* Forward of one (span, head, query tile). */
static void forward_tile(const at_ctx *c, const at_item *w, float *out, float *lse,
                         const float *q, const float *k, const float *v, float *scr) {
    const at_ops *o = c->o;
    const int dh = c->dh, h = w->h, g = h / c->rep, i0 = w->t0;
    const int nq = imin(w->len - i0, BQ);
    float *S = scr, *acc = S + BQ * BK, *m = acc + (size_t)BQ * dh, *l = m + BQ;
    float *ktp = l + BQ, *vp = ktp + (size_t)dh * BK, *spare = vp + (size_t)BK * dh;
    const float *qs = q + (size_t)(w->s0 + i0) * c->ldq + (size_t)h * dh;
    memset(acc, 0, sizeof(float) * (size_t)BQ * dh);
    for (int r = 0; r < BQ; r++) m[r] = -INFINITY, l[r] = 0.0f;
    const int jend = c->a->causal ? i0 + nq : w->len;
    for (int j0 = 0; j0 < jend; j0 += BK) {
        const int jn = imin(w->len - j0, BK);
        const size_t koff = (size_t)(w->s0 + j0) * c->ldk + (size_t)g * dh;
        o->pack_t(ktp, k + koff, c->ldk, jn, dh);
        pack_rows(vp, v + koff, c->ldk, jn, dh);
        o->mm(S, BK, nq, qs, c->ldq, 1, ktp, BK, dh, BK, 0, spare); /* S = Q K^T */
        for (int r = 0; r < nq; r++) {
            const float corr = o->fwd_row(S + (size_t)r * BK, tile_valid(c->a->causal, i0 + r, j0, jn),
                                          c->a->scale, &m[r], &l[r]);
            if (corr != 1.0f) o->scale(acc + (size_t)r * dh, acc + (size_t)r * dh, dh, corr);
        }
        o->mm(acc, dh, nq, S, BK, 1, vp, dh, jn, dh, 1, spare); /* acc += P V */
    }
    for (int r = 0; r < nq; r++) {
        const int i = w->s0 + i0 + r;
        o->scale(out + (size_t)i * c->ldq + (size_t)h * dh, acc + (size_t)r * dh, dh, 1.0f / l[r]);
        lse[(size_t)h * c->n + i] = m[r] + logf(l[r]);
    }
}

void attn_train_forward(const attn_train_args *a, float *out, float *lse, const float *q,
                        const float *k, const float *v) {
    if (a->n <= 0) return;
    at_ctx c = {.a = a, .o = ops_pick(a->dh), .n = a->n, .H = a->heads, .KV = a->kv_heads,
                .dh = a->dh, .rep = a->heads / a->kv_heads};
    c.ldq = (size_t)c.H * c.dh;
    c.ldk = (size_t)c.KV * c.dh;
    const int nth = max_threads();
    const size_t per = fwd_scratch(c.dh);
    float *scr = calloc(per * (size_t)nth, sizeof(float));
    ERGO_ASSERT(scr);
    int n_items;
    at_item *items = items_make(a, c.H, BQ, 1, &n_items);
#pragma omp parallel for schedule(dynamic, 1)
    for (int it = 0; it < n_items; it++)
        forward_tile(&c, &items[it], out, lse, q, k, v, scr + per * (size_t)thread_num());
    free(items);
    free(scr);
}

/* ---- the backward ----
 *
 * Per (query tile of head h, key tile) the same recomputation: S = Q K^T, P = exp(S
 * scale - lse), dP = dO V^T, dS = P (dP - D). Then dV += P^T dO, dK += dS^T Q (the
 * key tile's rows) and dQ += dS K (the query tile's rows), dK and dQ scaled once at
 * the end. Two schedules with the same arithmetic per element, so the same bits:
 *   fused: one item per (span, kv head): key tiles ascending, then the kv head's
 *     query heads, then the query tiles; dQ accumulates in place in dq (the item
 *     owns those rows and heads), each (head, query tile) receiving its key tiles in
 *     ascending order. 5 tile products per pair.
 *   two passes: items (span, kv head, key tile) for dK, dV; then (span, head, query
 *     tile) for dQ, key tiles ascending. 7 products per pair, but many more items.
 * The fused one is taken when its items keep every thread busy. */

/* per-thread scratch: P, dS (BQ, BK); dK, dV (BK, Dh); K^T, V^T tiles (Dh, BK); K
 * tile (BK, Dh); Q, dO tiles (BQ, Dh); dQ (BQ, Dh); a spare row */
static size_t bwd_scratch(int dh) {
    return 2 * (size_t)BQ * BK + 8 * (size_t)BK * dh + (size_t)(dh > BK ? dh : BK);
}

typedef struct bwd_tiles {
    float *P, *dS, *dK, *dV, *ktp, *vtp, *kp, *qp, *dop, *dQ, *spare;
} bwd_tiles;

static bwd_tiles bwd_tiles_at(float *s, int dh) {
    bwd_tiles t;
    const size_t td = (size_t)BK * dh;
    t.P = s;
    t.dS = t.P + BQ * BK;
    t.dK = t.dS + BQ * BK;
    t.dV = t.dK + td;
    t.ktp = t.dV + td;
    t.vtp = t.ktp + td;
    t.kp = t.vtp + td;
    t.qp = t.kp + td;
    t.dop = t.qp + td;
    t.dQ = t.dop + td;
    t.spare = t.dQ + td;
    return t;
}

/* K^T, V^T and K of key tile j0 (jn keys) of kv head g into the scratch */
static void pack_keys(const at_ctx *c, const bwd_tiles *t, const at_item *w, int g, int j0, int jn,
                      const float *k, const float *v) {
    const size_t off = (size_t)(w->s0 + j0) * c->ldk + (size_t)g * c->dh;
    c->o->pack_t(t->ktp, k + off, c->ldk, jn, c->dh);
    c->o->pack_t(t->vtp, v + off, c->ldk, jn, c->dh);
    pack_rows(t->kp, k + off, c->ldk, jn, c->dh);
}

/* Q and dO of query rows [i0, i0 + nq) of head h into the scratch */
static void pack_queries(const at_ctx *c, const bwd_tiles *t, const at_item *w, int h, int i0,
                         int nq, const float *q, const float *dout) {
    const size_t off = (size_t)(w->s0 + i0) * c->ldq + (size_t)h * c->dh;
    pack_rows(t->qp, q + off, c->ldq, nq, c->dh);
    pack_rows(t->dop, dout + off, c->ldq, nq, c->dh);
}

/* P and dS of the packed query and key tiles (query rows [i0, i0 + nq) of head h,
 * key tile j0 of jn keys) */
static void tile_p_ds(const at_ctx *c, const bwd_tiles *t, const at_item *w, int h, int i0, int nq,
                      int j0, int jn, const float *lse, const float *Dv) {
    const at_ops *o = c->o;
    const int dh = c->dh;
    o->mm(t->P, BK, nq, t->qp, dh, 1, t->ktp, BK, dh, BK, 0, t->spare);   /* S = Q K^T */
    o->mm(t->dS, BK, nq, t->dop, dh, 1, t->vtp, BK, dh, BK, 0, t->spare); /* dP = dO V^T */
    const float *lr = lse + (size_t)h * c->n + w->s0 + i0, *dr = Dv + (size_t)h * c->n + w->s0 + i0;
    for (int r = 0; r < nq; r++) {
        o->bwd_p(t->P + (size_t)r * BK, tile_valid(c->a->causal, i0 + r, j0, jn), c->a->scale, lr[r]);
        o->bwd_ds(t->dS + (size_t)r * BK, t->P + (size_t)r * BK, dr[r]);
    }
}

/* dK, dV += the pair's share (packed tiles); rows jn of the key tile */
static void pair_dkdv(const at_ctx *c, const bwd_tiles *t, int nq, int jn) {
    const int dh = c->dh;
    c->o->mm(t->dV, dh, jn, t->P, 1, BK, t->dop, dh, nq, dh, 1, t->spare);  /* dV += P^T dO */
    c->o->mm(t->dK, dh, jn, t->dS, 1, BK, t->qp, dh, nq, dh, 1, t->spare);  /* dK += dS^T Q */
}

/* dk = dK scale, dv = dV for the jn keys of tile j0 */
static void store_dkdv(const at_ctx *c, const bwd_tiles *t, const at_item *w, int g, int j0, int jn,
                       float *dk, float *dv) {
    for (int j = 0; j < jn; j++) {
        const size_t off = (size_t)(w->s0 + j0 + j) * c->ldk + (size_t)g * c->dh;
        c->o->scale(dk + off, t->dK + (size_t)j * c->dh, c->dh, c->a->scale);
        memcpy(dv + off, t->dV + (size_t)j * c->dh, sizeof(float) * (size_t)c->dh);
    }
}

/* The fused schedule: everything of one (span, kv head). */
static void backward_group(const at_ctx *c, const at_item *w, float *dq, float *dk, float *dv,
                           const float *dout, const float *q, const float *k, const float *v,
                           const float *lse,
                           const float *Dv, float *scr) {
    const int dh = c->dh, g = w->h;
    const bwd_tiles t = bwd_tiles_at(scr, dh);
    for (int i = w->s0; i < w->s0 + w->len; i++)
        memset(dq + (size_t)i * c->ldq + (size_t)g * c->rep * dh, 0, sizeof(float) * (size_t)c->rep * dh);
    for (int j0 = 0; j0 < w->len; j0 += BK) {
        const int jn = imin(w->len - j0, BK);
        pack_keys(c, &t, w, g, j0, jn, k, v);
        memset(t.dK, 0, sizeof(float) * 2 * (size_t)BK * dh); /* dK, dV */
        const int istart = c->a->causal ? j0 / BQ * BQ : 0; /* earlier rows see none of these keys */
        for (int hh = 0; hh < c->rep; hh++) {
            const int h = g * c->rep + hh;
            for (int i0 = istart; i0 < w->len; i0 += BQ) {
                const int nq = imin(w->len - i0, BQ);
                pack_queries(c, &t, w, h, i0, nq, q, dout);
                tile_p_ds(c, &t, w, h, i0, nq, j0, jn, lse, Dv);
                pair_dkdv(c, &t, nq, jn);
                c->o->mm(dq + (size_t)(w->s0 + i0) * c->ldq + (size_t)h * dh, c->ldq, nq, t.dS, BK, 1,
                         t.kp, dh, jn, dh, 1, t.spare); /* dQ += dS K */
            }
        }
        store_dkdv(c, &t, w, g, j0, jn, dk, dv);
    }
    for (int i = w->s0; i < w->s0 + w->len; i++) {
        float *r = dq + (size_t)i * c->ldq + (size_t)g * c->rep * dh;
        c->o->scale(r, r, c->rep * dh, c->a->scale);
    }
}

/* Two passes, first: dK, dV of one (span, kv head, key tile). */
static void backward_kv_tile(const at_ctx *c, const at_item *w, float *dk, float *dv,
                             const float *dout, const float *q, const float *k, const float *v,
                             const float *lse,
                             const float *Dv, float *scr) {
    const int dh = c->dh, g = w->h, j0 = w->t0, jn = imin(w->len - j0, BK);
    const bwd_tiles t = bwd_tiles_at(scr, dh);
    pack_keys(c, &t, w, g, j0, jn, k, v);
    memset(t.dK, 0, sizeof(float) * 2 * (size_t)BK * dh);
    const int istart = c->a->causal ? j0 / BQ * BQ : 0;
    for (int hh = 0; hh < c->rep; hh++) {
        const int h = g * c->rep + hh;
        for (int i0 = istart; i0 < w->len; i0 += BQ) {
            const int nq = imin(w->len - i0, BQ);
            pack_queries(c, &t, w, h, i0, nq, q, dout);
            tile_p_ds(c, &t, w, h, i0, nq, j0, jn, lse, Dv);
            pair_dkdv(c, &t, nq, jn);
        }
    }
    store_dkdv(c, &t, w, g, j0, jn, dk, dv);
}

/* Two passes, second: dQ of one (span, head, query tile). */
static void backward_q_tile(const at_ctx *c, const at_item *w, float *dq, const float *dout,
                            const float *q, const float *k, const float *v, const float *lse,
                            const float *Dv,
                            float *scr) {
    const int dh = c->dh, h = w->h, g = h / c->rep, i0 = w->t0, nq = imin(w->len - i0, BQ);
    const bwd_tiles t = bwd_tiles_at(scr, dh);
    memset(t.dQ, 0, sizeof(float) * (size_t)BQ * dh);
    pack_queries(c, &t, w, h, i0, nq, q, dout);
    const int jend = c->a->causal ? i0 + nq : w->len;
    for (int j0 = 0; j0 < jend; j0 += BK) {
        const int jn = imin(w->len - j0, BK);
        pack_keys(c, &t, w, g, j0, jn, k, v);
        tile_p_ds(c, &t, w, h, i0, nq, j0, jn, lse, Dv);
        c->o->mm(t.dQ, dh, nq, t.dS, BK, 1, t.kp, dh, jn, dh, 1, t.spare); /* dQ += dS K */
    }
    for (int r = 0; r < nq; r++)
        c->o->scale(dq + (size_t)(w->s0 + i0 + r) * c->ldq + (size_t)h * dh, t.dQ + (size_t)r * dh, dh,
                    c->a->scale);
}

void attn_train_backward(const attn_train_args *a, float *dq, float *dk, float *dv,
                         const float *dout, const float *q, const float *k, const float *v,
                         const float *out, const float *lse) {
    if (a->n <= 0) return;
    at_ctx c = {.a = a, .o = ops_pick(a->dh), .n = a->n, .H = a->heads, .KV = a->kv_heads,
                .dh = a->dh, .rep = a->heads / a->kv_heads};
    c.ldq = (size_t)c.H * c.dh;
    c.ldk = (size_t)c.KV * c.dh;
    float *Dv = malloc(sizeof(float) * (size_t)c.H * (size_t)c.n); /* (H, N) dO . O */
    const int nth = max_threads();
    const size_t per = bwd_scratch(c.dh);
    float *scr = calloc(per * (size_t)nth, sizeof(float));
    ERGO_ASSERT(Dv && scr);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < c.n; i++)
        for (int h = 0; h < c.H; h++) {
            const size_t off = (size_t)i * c.ldq + (size_t)h * c.dh;
            Dv[(size_t)h * c.n + i] = c.o->dot(dout + off, out + off, c.dh);
        }
    /* fused when its items fill the threads' rounds to 75% (they cost 5/7 of the
     * two passes' work) */
    const int n_groups = span_count(a) * c.KV;
    const int rounds = (n_groups + nth - 1) / nth;
    if (4 * n_groups >= 3 * rounds * nth) {
        int n_g;
        at_item *gi = items_make(a, c.KV, 0, 0, &n_g);
#pragma omp parallel for schedule(dynamic, 1)
        for (int it = 0; it < n_g; it++)
            backward_group(&c, &gi[it], dq, dk, dv, dout, q, k, v, lse, Dv, scr + per * (size_t)thread_num());
        free(gi);
    } else {
        int n_kv, n_q;
        at_item *kvi = items_make(a, c.KV, BK, 0, &n_kv);
        at_item *qi = items_make(a, c.H, BQ, 1, &n_q);
#pragma omp parallel
        {
            float *s = scr + per * (size_t)thread_num();
#pragma omp for schedule(dynamic, 1)
            for (int it = 0; it < n_kv; it++)
                backward_kv_tile(&c, &kvi[it], dk, dv, dout, q, k, v, lse, Dv, s);
#pragma omp for schedule(dynamic, 1)
            for (int it = 0; it < n_q; it++) backward_q_tile(&c, &qi[it], dq, dout, q, k, v, lse, Dv, s);
        }
        free(kvi);
        free(qi);
    }
    free(scr);
    free(Dv);
}
