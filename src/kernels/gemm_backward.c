/*
 * gemm_backward.c - the two products of a linear layer's backward (backward.h):
 *
 *   linear_backward_input:  dx (n, k) (+)= dy (n, m) @ W (m, k)      W as stored or its twin
 *   linear_backward_weight: dw (m, k) += dy^T (m, n) @ x (n, k),  db (m) += sum_rows dy
 *
 * The _ref versions are plain loops accumulating in double (the definition of
 * correct). The fast ones are one GEMM driver C (M, N) += A (M, K) @ B (K, N) in the
 * BLIS shape: B is packed a (KC x NC) panel at a time into strips of NR = 16 columns
 * (converting bf16 / f16 or dequantising the twin on the way), A a block of up to
 * MC rows into micro-panels of MR = 6 rows, and a 6 x 16 register tile (12 ymm
 * accumulators) walks them. Threads take (row block, column block) tiles of C;
 * the reduction over K stays inside one tile, in order.
 *
 * Determinism: every element of C is one FMA chain over p = 0, 1, ..., K-1 in
 * ascending order, starting from its initial value (0 for an overwritten dx, the
 * old value when accumulating), whatever tile, block or thread computes it (edge
 * tiles run the same FMAs on a copy). So results do not depend on the thread count,
 * on the blocking, or on where an element sits in a tile; they differ from the
 * reference only by f32 rounding along that chain: |fast - ref| <= ~K u sum|terms|.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "base/status.h"
#include "backward.h"
#include "quant.h"

/* ---- reference: plain loops, double accumulation ---- */

/* W (m, k) as f32 values: the stored array when it is f32 and has no twin, else a
 * malloc'd copy (bf16 / f16 converted, or the twin dequantised: what the products
 * read). *owned says whether to free it. */
static const void *ref_weight(const kweight *w, kdtype *wt, float **owned) {
    *owned = NULL;
    *wt = w->dt;
    if (!w->q) return w->data;
    ERGO_ASSERT(w->q->rows == w->rows && w->q->cols == w->cols);
    float *f = malloc((size_t)w->rows * (size_t)w->cols * sizeof *f + 1);
    ERGO_ASSERT(f);
    dequant_rows(f, w->q, 0, w->rows);
    *owned = f;
    *wt = KDT_F32;
    return f;
}

void linear_backward_input_ref(float *dx, const float *dy, const kweight *w, int n,
                               int accumulate) {
    const int m = w->rows, k = w->cols;
    kdtype wt;
    float *owned;
    const void *wd = ref_weight(w, &wt, &owned);
    for (int i = 0; i < n; i++)
        for (int t = 0; t < k; t++) {
            double s = accumulate ? (double)dx[(size_t)i * k + t] : 0.0;
            for (int j = 0; j < m; j++)
                s += (double)dy[(size_t)i * m + j] * (double)kdtype_at(wd, wt, (size_t)j * k + t);
            dx[(size_t)i * k + t] = (float)s;
        }
    free(owned);
}

void linear_backward_weight_ref(float *dw, float *db, const float *dy, const float *x, int n,
                                int m, int k) {
    for (int j = 0; j < m; j++) {
        for (int t = 0; t < k; t++) {
            double s = (double)dw[(size_t)j * k + t];
            for (int i = 0; i < n; i++)
                s += (double)dy[(size_t)i * m + j] * (double)x[(size_t)i * k + t];
            dw[(size_t)j * k + t] = (float)s;
        }
        if (db) {
            double s = (double)db[j];
            for (int i = 0; i < n; i++) s += (double)dy[(size_t)i * m + j];
            db[j] = (float)s;
        }
    }
}

/* ---- AVX2 + FMA: packed panels and a 6 x 16 register tile ---- */

#define T256 __attribute__((target("avx2,fma,f16c")))

#define MR 6       /* rows of C per tile: 6 x 2 accumulators + 2 of B + 1 broadcast = 15 ymm */
#define NR 16      /* columns of C per tile (two ymm) */
#define KC 256     /* depth of a packed panel: a 6 x KC micro-panel of A (6 KB) and a
                    * KC x 16 strip of B (16 KB) share L1 */
#define GB 128     /* columns of B packed at a time (KC x GB = 128 KB, in L2): QUANT_CHUNK,
                    * so a twin's column groups start on a chunk */
#define NC_MAX 1024 /* columns per block (a multiple of GB): the packed A block is
                    * reused over them */
#define MC_MAX 192 /* rows per block (multiple of MR): the packed A block, MC x KC
                    * (192 KB), stays in L2 beside B's group while the strips pass */

/* A (M, K) as read: A(r, p) = a[r * rs + p * cs] (dy for dx; dy^T for dw). */
typedef struct gemm_a {
    const float *a;
    size_t rs, cs;
} gemm_a;

/* B (K, N): row p is row p of `data` (row stride ld, in dt), or of the twin q. */
typedef struct gemm_b {
    const void *data;
    kdtype dt;
    size_t ld;
    const qmatrix *q;
} gemm_b;

/* Per-thread packing buffers (static: the kernels never allocate). */
static _Thread_local _Alignas(64) float pack_a_buf[MC_MAX * KC];
static _Thread_local _Alignas(64) float pack_b_buf[KC * GB];
static _Thread_local _Alignas(64) float pack_row_buf[GB];

/* dst: ceil(mc / MR) micro-panels, each KC x MR ([p][r]), rows past mc zero. The
 * loops run along whichever of A's strides is 1. */
static void pack_a(float *dst, const gemm_a *A, int i0, int mc, int p0, int kc) {
    for (int u = 0; u * MR < mc; u++) {
        float *d = dst + (size_t)u * kc * MR;
        const int rows = mc - u * MR < MR ? mc - u * MR : MR;
        const float *s = A->a + (size_t)(i0 + u * MR) * A->rs + (size_t)p0 * A->cs;
        if (A->rs == 1) { /* dy^T: the MR values of one p are adjacent */
            for (int p = 0; p < kc; p++)
                for (int r = 0; r < MR; r++) d[(size_t)p * MR + r] = r < rows ? s[(size_t)p * A->cs + r] : 0.0f;
            continue;
        }
        for (int r = 0; r < MR; r++) {
            if (r >= rows) {
                for (int p = 0; p < kc; p++) d[(size_t)p * MR + r] = 0.0f;
                continue;
            }
            const float *sr = s + (size_t)r * A->rs;
            for (int p = 0; p < kc; p++) d[(size_t)p * MR + r] = sr[(size_t)p * A->cs];
        }
    }
}

/* Row `row` of B, columns [t0, t0 + nc), as f32: a pointer into B when it is f32,
 * else converted (exactly) or dequantised into pack_row_buf. */
T256 static const float *b_row(const gemm_b *B, int row, int t0, int nc) {
    float *o = pack_row_buf;
    if (B->q) {
        /* one row of the twin seen from column t0 (a multiple of QUANT_CHUNK, so the
         * q4 nibble layout and the scale blocks start afresh there: quant.h) */
        const qmatrix *q = B->q;
        qmatrix v = *q;
        v.rows = 1;
        v.cols = nc;
        v.cols_padded = quant_padded_cols(nc);
        v.q = q->q + (size_t)row * quant_row_bytes(q->format, q->cols) +
              (size_t)(q->format == QUANT_Q4 ? t0 / 2 : t0);
        v.scale = q->scale + (size_t)row * quant_scale_count(q->cols) + t0 / QUANT_BLOCK;
        dequant_rows_avx2(o, &v, 0, 1);
        return o;
    }
    if (B->dt == KDT_F32) return (const float *)B->data + (size_t)row * B->ld + t0;
    const uint16_t *h = (const uint16_t *)B->data + (size_t)row * B->ld + t0;
    int c = 0;
    for (; c + 8 <= nc; c += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(h + c));
        __m256 f = B->dt == KDT_BF16
                       ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
                       : _mm256_cvtph_ps(v);
        _mm256_storeu_ps(o + c, f);
    }
    for (; c < nc; c++) o[c] = kdtype_at(h, B->dt, (size_t)c);
    return o;
}

/* dst: ceil(nc / NR) strips, each KC x NR ([p][c]), columns past nc zero. */
T256 static void pack_b(float *dst, const gemm_b *B, int p0, int kc, int t0, int nc) {
    const int full = nc / NR, rest = nc % NR;
    for (int p = 0; p < kc; p++) {
        const float *s = b_row(B, p0 + p, t0, nc);
        for (int st = 0; st < full; st++) {
            float *d = dst + ((size_t)st * kc + p) * NR;
            _mm256_store_ps(d, _mm256_loadu_ps(s + st * NR));
            _mm256_store_ps(d + 8, _mm256_loadu_ps(s + st * NR + 8));
        }
        if (rest) {
            float *d = dst + ((size_t)full * kc + p) * NR;
            for (int c = 0; c < NR; c++) d[c] = c < rest ? s[full * NR + c] : 0.0f;
        }
    }
}

/* C (mr, nr) of stride ldc += the micro-panel a (kc x MR) times the strip b (kc x NR),
 * one FMA per term in ascending p. An edge tile runs the same FMAs on a copy. The
 * next tile's C rows (cnext) are prefetched meanwhile: C comes from beyond L2, and
 * every FMA chain starts with its load. */
T256 static void tile_6x16(int kc, const float *a, const float *b, float *c, size_t ldc, int mr,
                           int nr, const float *cnext) {
    for (int r = 0; r < MR; r++) {
        _mm_prefetch((const char *)(cnext + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(cnext + r * ldc + NR - 1), _MM_HINT_T0);
    }
    _Alignas(32) float tmp[MR * NR];
    float *cc = c;
    size_t ld = ldc;
    if (mr < MR || nr < NR) {
        for (int r = 0; r < MR; r++)
            for (int q = 0; q < NR; q++) tmp[r * NR + q] = r < mr && q < nr ? c[r * ldc + q] : 0.0f;
        cc = tmp;
        ld = NR;
    }
    __m256 c00 = _mm256_loadu_ps(cc), c01 = _mm256_loadu_ps(cc + 8);
    __m256 c10 = _mm256_loadu_ps(cc + ld), c11 = _mm256_loadu_ps(cc + ld + 8);
    __m256 c20 = _mm256_loadu_ps(cc + 2 * ld), c21 = _mm256_loadu_ps(cc + 2 * ld + 8);
    __m256 c30 = _mm256_loadu_ps(cc + 3 * ld), c31 = _mm256_loadu_ps(cc + 3 * ld + 8);
    __m256 c40 = _mm256_loadu_ps(cc + 4 * ld), c41 = _mm256_loadu_ps(cc + 4 * ld + 8);
    __m256 c50 = _mm256_loadu_ps(cc + 5 * ld), c51 = _mm256_loadu_ps(cc + 5 * ld + 8);
#pragma GCC unroll 4
    for (int p = 0; p < kc; p++) {
        const __m256 b0 = _mm256_load_ps(b + (size_t)p * NR), b1 = _mm256_load_ps(b + (size_t)p * NR + 8);
        const float *ap = a + (size_t)p * MR;
        __m256 av;
        av = _mm256_broadcast_ss(ap + 0);
        c00 = _mm256_fmadd_ps(av, b0, c00);
        c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(ap + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10);
        c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(ap + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20);
        c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(ap + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30);
        c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(ap + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40);
        c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(ap + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50);
        c51 = _mm256_fmadd_ps(av, b1, c51);
    }
    _mm256_storeu_ps(cc, c00), _mm256_storeu_ps(cc + 8, c01);
    _mm256_storeu_ps(cc + ld, c10), _mm256_storeu_ps(cc + ld + 8, c11);
    _mm256_storeu_ps(cc + 2 * ld, c20), _mm256_storeu_ps(cc + 2 * ld + 8, c21);
    _mm256_storeu_ps(cc + 3 * ld, c30), _mm256_storeu_ps(cc + 3 * ld + 8, c31);
    _mm256_storeu_ps(cc + 4 * ld, c40), _mm256_storeu_ps(cc + 4 * ld + 8, c41);
    _mm256_storeu_ps(cc + 5 * ld, c50), _mm256_storeu_ps(cc + 5 * ld + 8, c51);
    if (cc == tmp)
        for (int r = 0; r < mr; r++)
            for (int q = 0; q < nr; q++) c[r * ldc + q] = tmp[r * NR + q];
}

/* C (M, N) of stride ldc (+)= A (M, K) @ B (K, N); zero_c: C = A B instead. Threads
 * take (row block, column block) tiles of C; each walks K in order, packing its A
 * block once per KC and B a group of GB columns at a time just before use. The
 * blocking changes only the speed, never the bits (one FMA chain per element). */
static void gemm_avx2(float *c, size_t ldc, int M, int N, int K, const gemm_a *A,
                      const gemm_b *B, int zero_c) {
    if (M <= 0 || N <= 0) return;
    const int n_ib = (M + MC_MAX - 1) / MC_MAX;
    int mc = (M + n_ib - 1) / n_ib; /* even row blocks, rounded up to whole tiles */
    mc = (mc + MR - 1) / MR * MR;
    /* wide column blocks amortise A's packing; narrower when threads would idle */
    const int want = 4 * omp_get_max_threads();
    int nc = NC_MAX;
    while (nc > GB && (long)n_ib * ((N + nc - 1) / nc) < want) nc /= 2;
    const int n_tb = (N + nc - 1) / nc;
    const long blocks = (long)n_ib * n_tb;
#pragma omp parallel for schedule(dynamic, 1) if (blocks > 1 && (double)M * N * K > 262144.0)
    for (long bl = 0; bl < blocks; bl++) {
        const int ib = (int)(bl % n_ib), tb = (int)(bl / n_ib);
        const int i0 = ib * mc, t0 = tb * nc;
        if (i0 >= M) continue;
        const int rows = M - i0 < mc ? M - i0 : mc, cols = N - t0 < nc ? N - t0 : nc;
        if (zero_c)
            for (int i = 0; i < rows; i++)
                memset(c + (size_t)(i0 + i) * ldc + t0, 0, (size_t)cols * sizeof *c);
        float *pa = pack_a_buf, *pb = pack_b_buf;
        for (int p0 = 0; p0 < K; p0 += KC) {
            const int kc = K - p0 < KC ? K - p0 : KC;
            pack_a(pa, A, i0, rows, p0, kc);
            for (int g0 = 0; g0 < cols; g0 += GB) {
                const int gc = cols - g0 < GB ? cols - g0 : GB;
                pack_b(pb, B, p0, kc, t0 + g0, gc);
                for (int st = 0; st * NR < gc; st++) {
                    const int nr = gc - st * NR < NR ? gc - st * NR : NR;
                    const float *bs = pb + (size_t)st * kc * NR;
                    float *cs = c + (size_t)i0 * ldc + t0 + g0 + st * NR;
                    for (int u = 0; u * MR < rows; u++) {
                        const int mr = rows - u * MR < MR ? rows - u * MR : MR;
                        /* the next tile down, or the top of the next strip */
                        const float *nx = (u + 1) * MR < rows ? cs + (size_t)(u + 1) * MR * ldc
                                          : (st + 1) * NR < gc ? cs + NR
                                                               : cs;
                        tile_6x16(kc, pa + (size_t)u * kc * MR, bs, cs + (size_t)u * MR * ldc, ldc,
                                  mr, nr, nx);
                    }
                }
            }
        }
    }
}

/* db (m) += the column sums of dy (n, m), rows added in order. */
T256 static void colsum_avx2(float *db, const float *dy, int n, int m) {
    int j = 0;
    for (; j + 32 <= m; j += 32) {
        __m256 s0 = _mm256_loadu_ps(db + j), s1 = _mm256_loadu_ps(db + j + 8);
        __m256 s2 = _mm256_loadu_ps(db + j + 16), s3 = _mm256_loadu_ps(db + j + 24);
        for (int i = 0; i < n; i++) {
            const float *r = dy + (size_t)i * m + j;
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(r));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(r + 8));
            s2 = _mm256_add_ps(s2, _mm256_loadu_ps(r + 16));
            s3 = _mm256_add_ps(s3, _mm256_loadu_ps(r + 24));
        }
        _mm256_storeu_ps(db + j, s0), _mm256_storeu_ps(db + j + 8, s1);
        _mm256_storeu_ps(db + j + 16, s2), _mm256_storeu_ps(db + j + 24, s3);
    }
    for (; j < m; j++) {
        float s = db[j];
        for (int i = 0; i < n; i++) s += dy[(size_t)i * m + j];
        db[j] = s;
    }
}

void linear_backward_input_avx2(float *dx, const float *dy, const kweight *w, int n,
                                int accumulate) {
    const int m = w->rows, k = w->cols;
    if (w->q) ERGO_ASSERT(w->q->rows == m && w->q->cols == k);
    else ERGO_ASSERT(w->data || (size_t)m * (size_t)k == 0);
    const gemm_a A = {dy, (size_t)m, 1};               /* A(i, j) = dy[i, j] */
    const gemm_b B = {w->data, w->dt, (size_t)k, w->q}; /* B(j, t) = W[j, t] */
    gemm_avx2(dx, (size_t)k, n, k, m, &A, &B, !accumulate);
}

void linear_backward_weight_avx2(float *dw, float *db, const float *dy, const float *x, int n,
                                 int m, int k) {
    const gemm_a A = {dy, 1, (size_t)m};           /* A(j, i) = dy[i, j] */
    const gemm_b B = {x, KDT_F32, (size_t)k, NULL}; /* B(i, t) = x[i, t] */
    gemm_avx2(dw, (size_t)k, m, k, n, &A, &B, 0);
    if (db && n > 0) colsum_avx2(db, dy, n, m);
}

/* ---- dispatch ---- */

void linear_backward_kernels_for(linear_backward_kernels *t, cpu_isa isa) {
    if (isa == ISA_REF) {
        t->input = linear_backward_input_ref;
        t->weight = linear_backward_weight_ref;
    } else {
        t->input = linear_backward_input_avx2;
        t->weight = linear_backward_weight_avx2;
    }
}

void linear_backward_input(float *dx, const float *dy, const kweight *w, int n, int accumulate) {
    linear_backward_kernels t;
    linear_backward_kernels_for(&t, kern.isa);
    t.input(dx, dy, w, n, accumulate);
}

void linear_backward_weight(float *dw, float *db, const float *dy, const float *x, int n, int m,
                            int k) {
    linear_backward_kernels t;
    linear_backward_kernels_for(&t, kern.isa);
    t.weight(dw, db, dy, x, n, m, k);
}
