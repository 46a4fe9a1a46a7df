/*
 * attend.c - the attention drivers (see attend.h).
 */
#include "attend.h"

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention.h"

void attend_spans(const attend_span_args *a, const int32_t *work, int n_work, int head_major) {
    const int H = a->heads, Dh = a->dh, N = a->n_rows;
    const float scale = 1.0f / sqrtf((float)Dh); /* head_dim ** -0.5 */
    const int n_items = n_work * H;
#pragma omp parallel for schedule(dynamic, 1) num_threads(a->n_threads)
    for (int it = 0; it < n_items; it++) {
#ifdef _OPENMP
        float *scr = a->scratch + (size_t)omp_get_thread_num() * a->scratch_floats;
#else
        float *scr = a->scratch;
#endif
        const int h = head_major ? it / n_work : it % H;
        const int32_t *w = work + 3 * (head_major ? it % n_work : it / H);
        const int span0 = w[0], span_len = w[1], q0 = w[2];
        const int nq = span0 + span_len - q0 < a->qrows ? span0 + span_len - q0 : a->qrows;
        const attn_keys kv = {.kt = a->kt + (size_t)h * Dh * a->ldkt + span0, .ldkt = a->ldkt,
                              .v = a->v + ((size_t)h * N + span0) * Dh, .ldv = (size_t)Dh,
                              .nk = span_len};
        akern.block(a->out + (size_t)q0 * a->ldo + (size_t)h * Dh, a->ldo,
                    a->q + (size_t)q0 * a->ldq + (size_t)h * Dh, a->ldq, nq, NULL, &kv, Dh,
                    scale, scr);
    }
}

size_t attend_causal_scratch_floats(int heads, int kv_heads, int dh, int qtile) {
    const int rows = qtile * (heads / kv_heads);
    return 2 * (size_t)rows * (size_t)dh + attn_scratch_floats(rows, dh);
}

void attend_causal(const attend_causal_args *a, const attend_causal_seq *segs, int n_segs,
                   int layer) {
    const int H = a->heads, KV = a->kv_heads, dh = a->dh, rep = H / KV, QT = a->qtile;
    const float scale = 1.0f / sqrtf((float)dh); /* head_dim ** -0.5 */
    /* items: for each sequence, KV heads x ceil(n / QT) query tiles; the items of one
     * kv head are consecutive, so its keys and values stay in cache */
    int items = 0;
    for (int s = 0; s < n_segs; s++) items += KV * ((segs[s].n + QT - 1) / QT);
#pragma omp parallel for schedule(dynamic, 1) num_threads(a->n_threads) if (items > 1)
    for (int it = 0; it < items; it++) {
#ifdef _OPENMP
        const int th = omp_get_thread_num();
#else
        const int th = 0;
#endif
        int s = 0, rest = it;
        while (rest >= KV * ((segs[s].n + QT - 1) / QT)) rest -= KV * ((segs[s].n + QT - 1) / QT), s++;
        const attend_causal_seq *sq = &segs[s];
        const int n_qb = (sq->n + QT - 1) / QT, g = rest / n_qb, i0 = (rest % n_qb) * QT;
        const int nqi = sq->n - i0 < QT ? sq->n - i0 : QT, rows = nqi * rep;
        float *qg = a->scratch + (size_t)th * a->scratch_floats; /* (rows, Dh) */
        float *og = qg + (size_t)QT * rep * dh;                   /* (rows, Dh) */
        float *scr = og + (size_t)QT * rep * dh;
        int32_t *lim = a->limits + (size_t)th * QT * rep;
        const void **tiles = a->tiles + (size_t)th * a->max_tiles;
        /* row r = (query i, head g*rep + hh), r = i*rep + hh: the rep heads of query i
         * are contiguous in q */
        for (int i = 0; i < nqi; i++) {
            memcpy(qg + (size_t)i * rep * dh, sq->q + ((size_t)(i0 + i) * H + (size_t)g * rep) * dh,
                   sizeof(float) * (size_t)rep * dh);
            for (int hh = 0; hh < rep; hh++) lim[i * rep + hh] = sq->pos0 + i0 + i + 1;
        }
        const int nk = sq->pos0 + i0 + nqi, n_tiles = (nk + ATTN_KTILE - 1) / ATTN_KTILE;
        const size_t off = ((size_t)layer * KV + (size_t)g) * a->head_tile_bytes;
        for (int t = 0; t < n_tiles; t++) tiles[t] = sq->blocks[t] + off;
        const attn_keys keys = {.nk = nk, .tiles = tiles, .tiles_bf16 = a->kv_bf16};
        akern.block(og, (size_t)dh, qg, (size_t)dh, rows, lim, &keys, dh, scale, scr);
        for (int i = 0; i < nqi; i++)
            memcpy(sq->out + ((size_t)(i0 + i) * H + (size_t)g * rep) * dh, og + (size_t)i * rep * dh,
                   sizeof(float) * (size_t)rep * dh);
    }
}
