/*
 * attention_simd.h - the body of attn_block_<isa>, written once and included by
 * attention.c for each vector width (a template by macros: attention.c defines the
 * vector type V, its width VL, the target attribute TGT and the few operations
 * below, VWIDEN_BF16(dst, src, n) widening n (a multiple of VL) bf16 to f32
 * included, before each inclusion). Not a public header.
 *
 *   SB  key vectors per score sub-block (SB * VL keys, ATTN_ROWS rows at a time)
 *   CV  dim vectors per P V chunk (ATTN_ROWS * CV accumulators)
 */
#define ACAT2(a, b) a##_##b
#define ACAT(a, b) ACAT2(a, b)
#define AFN(x) ACAT(x, SUF)

#define NVT (ATTN_KTILE / VL) /* vectors per tile row */

/* PV_CHUNK below is written out for 4 rows and at most 4 dim vectors */
_Static_assert(ATTN_ROWS == 4 && CV <= 4 && NVT % SB == 0, "attention_simd.h: blocking");

/* Scores of ATTN_ROWS rows against one key tile: pt (ATTN_ROWS, ATTN_KTILE) =
 * (q . k) * scale, keys j >= nvalid[r] of row r set to -inf. */
TGT static inline __attribute__((always_inline)) void AFN(scores)(float *pt, const float *const *qr,
                                                                  const float *kt, size_t ldt,
                                                                  int dh, float scale,
                                                                  const int *nvalid) {
    const V sc = VSET1(scale);
    for (int kb = 0; kb < NVT; kb += SB) {
        V a[ATTN_ROWS][SB];
#pragma GCC unroll 4
        for (int r = 0; r < ATTN_ROWS; r++)
#pragma GCC unroll 4
            for (int c = 0; c < SB; c++) a[r][c] = VZERO();
        const float *kp = kt + (size_t)kb * VL;
        for (int d = 0; d < dh; d++, kp += ldt) {
            V kv[SB];
#pragma GCC unroll 4
            for (int c = 0; c < SB; c++) kv[c] = VLOADU(kp + c * VL);
#pragma GCC unroll 4
            for (int r = 0; r < ATTN_ROWS; r++) {
                const V b = VSET1(qr[r][d]);
#pragma GCC unroll 4
                for (int c = 0; c < SB; c++) a[r][c] = VFMA(b, kv[c], a[r][c]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < ATTN_ROWS; r++)
#pragma GCC unroll 4
            for (int c = 0; c < SB; c++) {
                const int j0 = (kb + c) * VL;
                VSTOREU(pt + (size_t)r * ATTN_KTILE + j0,
                        VMASK_LT(VMUL(a[r][c], sc), nvalid[r] - j0));
            }
    }
}

/* acc rows (ATTN_ROWS, dh) = acc * corr[r] + P[r] V over jn keys, dims [c0, c0 + NC*VL),
 * NC <= 4. Named variables, not arrays: gcc kept arrays of value vectors or
 * broadcasts on the stack. Unused ones (c >= NC) are dead code. */
#define PV_CHUNK(NC)                                                                      \
    do {                                                                                  \
        V a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33; \
        V x0, x1, x2, x3;                                                                 \
        {                                                                                 \
            const V cr = VSET1(corr[0]);                                                  \
            if (NC > 0) a00 = VMUL(VLOADU(acc + (size_t)0 * dh + c0 + 0 * VL), cr);       \
            if (NC > 1) a01 = VMUL(VLOADU(acc + (size_t)0 * dh + c0 + 1 * VL), cr);       \
            if (NC > 2) a02 = VMUL(VLOADU(acc + (size_t)0 * dh + c0 + 2 * VL), cr);       \
            if (NC > 3) a03 = VMUL(VLOADU(acc + (size_t)0 * dh + c0 + 3 * VL), cr);       \
        }                                                                                 \
        {                                                                                 \
            const V cr = VSET1(corr[1]);                                                  \
            if (NC > 0) a10 = VMUL(VLOADU(acc + (size_t)1 * dh + c0 + 0 * VL), cr);       \
            if (NC > 1) a11 = VMUL(VLOADU(acc + (size_t)1 * dh + c0 + 1 * VL), cr);       \
            if (NC > 2) a12 = VMUL(VLOADU(acc + (size_t)1 * dh + c0 + 2 * VL), cr);       \
            if (NC > 3) a13 = VMUL(VLOADU(acc + (size_t)1 * dh + c0 + 3 * VL), cr);       \
        }                                                                                 \
        {                                                                                 \
            const V cr = VSET1(corr[2]);                                                  \
            if (NC > 0) a20 = VMUL(VLOADU(acc + (size_t)2 * dh + c0 + 0 * VL), cr);       \
            if (NC > 1) a21 = VMUL(VLOADU(acc + (size_t)2 * dh + c0 + 1 * VL), cr);       \
            if (NC > 2) a22 = VMUL(VLOADU(acc + (size_t)2 * dh + c0 + 2 * VL), cr);       \
            if (NC > 3) a23 = VMUL(VLOADU(acc + (size_t)2 * dh + c0 + 3 * VL), cr);       \
        }                                                                                 \
        {                                                                                 \
            const V cr = VSET1(corr[3]);                                                  \
            if (NC > 0) a30 = VMUL(VLOADU(acc + (size_t)3 * dh + c0 + 0 * VL), cr);       \
            if (NC > 1) a31 = VMUL(VLOADU(acc + (size_t)3 * dh + c0 + 1 * VL), cr);       \
            if (NC > 2) a32 = VMUL(VLOADU(acc + (size_t)3 * dh + c0 + 2 * VL), cr);       \
            if (NC > 3) a33 = VMUL(VLOADU(acc + (size_t)3 * dh + c0 + 3 * VL), cr);       \
        }                                                                                 \
        const float *vp = v + c0;                                                         \
        for (int j = 0; j < jn; j++, vp += ldv) {                                         \
            if (NC > 0) {                                                                 \
                x0 = VLOADU(vp + 0 * VL);                                                 \
                __asm__("" : "+v"(x0)); /* keep it a register */                          \
            }                                                                             \
            if (NC > 1) {                                                                 \
                x1 = VLOADU(vp + 1 * VL);                                                 \
                __asm__("" : "+v"(x1)); /* keep it a register */                          \
            }                                                                             \
            if (NC > 2) {                                                                 \
                x2 = VLOADU(vp + 2 * VL);                                                 \
                __asm__("" : "+v"(x2)); /* keep it a register */                          \
            }                                                                             \
            if (NC > 3) {                                                                 \
                x3 = VLOADU(vp + 3 * VL);                                                 \
                __asm__("" : "+v"(x3)); /* keep it a register */                          \
            }                                                                             \
            {                                                                             \
                const V b = VSET1(pt[(size_t)0 * ATTN_KTILE + j]);                        \
                if (NC > 0) a00 = VFMA(b, x0, a00);                                       \
                if (NC > 1) a01 = VFMA(b, x1, a01);                                       \
                if (NC > 2) a02 = VFMA(b, x2, a02);                                       \
                if (NC > 3) a03 = VFMA(b, x3, a03);                                       \
            }                                                                             \
            {                                                                             \
                const V b = VSET1(pt[(size_t)1 * ATTN_KTILE + j]);                        \
                if (NC > 0) a10 = VFMA(b, x0, a10);                                       \
                if (NC > 1) a11 = VFMA(b, x1, a11);                                       \
                if (NC > 2) a12 = VFMA(b, x2, a12);                                       \
                if (NC > 3) a13 = VFMA(b, x3, a13);                                       \
            }                                                                             \
            {                                                                             \
                const V b = VSET1(pt[(size_t)2 * ATTN_KTILE + j]);                        \
                if (NC > 0) a20 = VFMA(b, x0, a20);                                       \
                if (NC > 1) a21 = VFMA(b, x1, a21);                                       \
                if (NC > 2) a22 = VFMA(b, x2, a22);                                       \
                if (NC > 3) a23 = VFMA(b, x3, a23);                                       \
            }                                                                             \
            {                                                                             \
                const V b = VSET1(pt[(size_t)3 * ATTN_KTILE + j]);                        \
                if (NC > 0) a30 = VFMA(b, x0, a30);                                       \
                if (NC > 1) a31 = VFMA(b, x1, a31);                                       \
                if (NC > 2) a32 = VFMA(b, x2, a32);                                       \
                if (NC > 3) a33 = VFMA(b, x3, a33);                                       \
            }                                                                             \
        }                                                                                 \
        if (NC > 0) VSTOREU(acc + (size_t)0 * dh + c0 + 0 * VL, a00);                     \
        if (NC > 1) VSTOREU(acc + (size_t)0 * dh + c0 + 1 * VL, a01);                     \
        if (NC > 2) VSTOREU(acc + (size_t)0 * dh + c0 + 2 * VL, a02);                     \
        if (NC > 3) VSTOREU(acc + (size_t)0 * dh + c0 + 3 * VL, a03);                     \
        if (NC > 0) VSTOREU(acc + (size_t)1 * dh + c0 + 0 * VL, a10);                     \
        if (NC > 1) VSTOREU(acc + (size_t)1 * dh + c0 + 1 * VL, a11);                     \
        if (NC > 2) VSTOREU(acc + (size_t)1 * dh + c0 + 2 * VL, a12);                     \
        if (NC > 3) VSTOREU(acc + (size_t)1 * dh + c0 + 3 * VL, a13);                     \
        if (NC > 0) VSTOREU(acc + (size_t)2 * dh + c0 + 0 * VL, a20);                     \
        if (NC > 1) VSTOREU(acc + (size_t)2 * dh + c0 + 1 * VL, a21);                     \
        if (NC > 2) VSTOREU(acc + (size_t)2 * dh + c0 + 2 * VL, a22);                     \
        if (NC > 3) VSTOREU(acc + (size_t)2 * dh + c0 + 3 * VL, a23);                     \
        if (NC > 0) VSTOREU(acc + (size_t)3 * dh + c0 + 0 * VL, a30);                     \
        if (NC > 1) VSTOREU(acc + (size_t)3 * dh + c0 + 1 * VL, a31);                     \
        if (NC > 2) VSTOREU(acc + (size_t)3 * dh + c0 + 2 * VL, a32);                     \
        if (NC > 3) VSTOREU(acc + (size_t)3 * dh + c0 + 3 * VL, a33);                     \
    } while (0)

/* Separate, not inlined: inside the big kernel gcc ran short of general registers,
 * parked them in vector registers and spilled the value vectors instead. */
TGT static __attribute__((noinline)) void AFN(pv_wide)(float *acc, const float *pt,
                                                      const float *corr, const float *v,
                                                      size_t ldv, int jn, int dh, int c0) {
    PV_CHUNK(CV);
}

TGT static __attribute__((noinline)) void AFN(pv_one)(float *acc, const float *pt,
                                                     const float *corr, const float *v,
                                                     size_t ldv, int jn, int dh, int c0) {
    PV_CHUNK(1);
}

TGT static void AFN(pv)(float *acc, const float *pt, const float *corr, const float *v, size_t ldv,
                        int jn, int dh) {
    int c0 = 0;
    for (; c0 + CV * VL <= dh; c0 += CV * VL) AFN(pv_wide)(acc, pt, corr, v, ldv, jn, dh, c0);
    for (; c0 < dh; c0 += VL) AFN(pv_one)(acc, pt, corr, v, ldv, jn, dh, c0);
}
#undef PV_CHUNK

/* Key tile t0 (jn keys): *kt (dh, KTILE) at stride *ldt, values (jn, dh) at stride
 * *ldv. The caller's K^T in place for a full tile, else the scratch kts (a copy, or
 * K transposed), zero past the last key; strided values gathered into vts. A paged
 * tile in place (f32) or widened into kts, vts (bf16), its keys past the last one
 * whatever they hold (their scores are masked, their values not read). */
TGT static inline void AFN(tile)(const float **kt, size_t *ldt, const float **vt, size_t *ldv,
                                 const attn_keys *kv, int t0, int jn, int dh, float *kts,
                                 float *vts) {
    if (kv->tiles) {
        const void *tile = kv->tiles[t0 / ATTN_KTILE];
        if (kv->tiles_bf16) { /* K^T whole, then the jn values: contiguous in the
                               * tile and in the scratch (vts follows kts) */
            VWIDEN_BF16(kts, (const uint16_t *)tile, (size_t)dh * ATTN_KTILE + (size_t)jn * dh);
            *kt = kts;
        } else {
            *kt = (const float *)tile;
        }
        *ldt = ATTN_KTILE;
        *vt = *kt + (size_t)dh * ATTN_KTILE;
        *ldv = (size_t)dh;
        return;
    }
    *kt = kts;
    *ldt = ATTN_KTILE;
    if (kv->kt && jn == ATTN_KTILE) {
        *kt = kv->kt + t0;
        *ldt = kv->ldkt;
    } else if (kv->kt) {
        for (int d = 0; d < dh; d++)
            memcpy(kts + (size_t)d * ATTN_KTILE, kv->kt + (size_t)d * kv->ldkt + t0,
                   sizeof(float) * (size_t)jn);
    } else {
        const float *k0 = kv->k + (size_t)t0 * kv->ldk;
        int j = 0;
        for (; j + 8 <= jn; j += 8)
            for (int d = 0; d < dh; d += 8)
                transpose8(kts + (size_t)d * ATTN_KTILE + j, ATTN_KTILE,
                           k0 + (size_t)j * kv->ldk + d, kv->ldk);
        for (; j < jn; j++)
            for (int d = 0; d < dh; d++) kts[(size_t)d * ATTN_KTILE + j] = k0[(size_t)j * kv->ldk + d];
    }
    if (jn < ATTN_KTILE)
        for (int d = 0; d < dh; d++)
            memset(kts + (size_t)d * ATTN_KTILE + jn, 0, sizeof(float) * (size_t)(ATTN_KTILE - jn));
    *vt = kv->v + (size_t)t0 * kv->ldv;
    *ldv = kv->ldv;
    if (*ldv != (size_t)dh) { /* gather strided value rows into a dense tile (rows a
                               * multiple of 1 KiB apart would share L1 sets) */
        for (int j = 0; j < jn; j++)
            memcpy(vts + (size_t)j * dh, *vt + (size_t)j * *ldv, sizeof(float) * (size_t)dh);
        *vt = vts;
        *ldv = (size_t)dh;
    }
}

TGT void AFN(attn_block)(float *o, size_t ldo, const float *q, size_t ldq, int nq,
                         const int32_t *limit, const attn_keys *kv, int dh, float scale,
                         float *scratch) {
    if (dh % VL != 0 || nq < 1) {
        if (nq >= 1) attn_block_ref(o, ldo, q, ldq, nq, limit, kv, dh, scale, scratch);
        return;
    }
    const int nk = kv->nk;
    const int nqp = (nq + ATTN_ROWS - 1) / ATTN_ROWS * ATTN_ROWS;
    float *kts = scratch;                              /* (dh, KTILE) transposed tile */
    float *vts = kts + (size_t)dh * ATTN_KTILE;        /* (KTILE, dh) value tile */
    float *pt = vts + (size_t)dh * ATTN_KTILE;         /* (ROWS, KTILE) scores, then p */
    float *acc = pt + (size_t)ATTN_ROWS * ATTN_KTILE;  /* (nqp, dh) unnormalised output */
    float *mx = acc + (size_t)nqp * dh;                /* (nqp) running max */
    float *sm = mx + nqp;                              /* (nqp) running sum */
    int lim_max = 0;
    for (int r = 0; r < nqp; r++) {
        mx[r] = -INFINITY;
        sm[r] = 0.0f;
        const int lr = limit ? limit[r < nq ? r : nq - 1] : nk;
        if (lr > lim_max) lim_max = lr;
    }
    memset(acc, 0, sizeof(float) * (size_t)nqp * dh);
    if (lim_max > nk) lim_max = nk;
    for (int t0 = 0; t0 < lim_max; t0 += ATTN_KTILE) {
        const int jn = nk - t0 < ATTN_KTILE ? nk - t0 : ATTN_KTILE;
        const float *kt, *vt;
        size_t ldt, ldv;
        AFN(tile)(&kt, &ldt, &vt, &ldv, kv, t0, jn, dh, kts, vts);
        for (int r0 = 0; r0 < nq; r0 += ATTN_ROWS) {
            const float *qr[ATTN_ROWS];
            int nvalid[ATTN_ROWS], any = 0;
            for (int r = 0; r < ATTN_ROWS; r++) {
                const int i = r0 + r < nq ? r0 + r : nq - 1; /* spare rows repeat the last */
                int lr = limit ? limit[i] : nk;
                if (lr > nk) lr = nk;
                qr[r] = q + (size_t)i * ldq;
                nvalid[r] = lr - t0;
                any |= nvalid[r] > 0;
            }
            if (!any) continue; /* past every row's limit: an exact no-op anyway */
            AFN(scores)(pt, qr, kt, ldt, dh, scale, nvalid);
            float corr[ATTN_ROWS];
            for (int r = 0; r < ATTN_ROWS; r++) {
                float *pr = pt + (size_t)r * ATTN_KTILE;
                V m = VLOADU(pr);
                for (int c = 1; c < NVT; c++) m = VMAX(m, VLOADU(pr + c * VL));
                const float mt = VHMAX(m);
                const float mold = mx[r0 + r];
                const float mnew = mt > mold ? mt : mold;
                const V mv = VSET1(mnew);
                V s = VZERO();
                for (int c = 0; c < NVT; c++) {
                    const V p = VEXP(VSUB(VLOADU(pr + c * VL), mv));
                    VSTOREU(pr + c * VL, p);
                    s = VADD(s, p);
                }
                corr[r] = expf(mold - mnew); /* 0 on the first tile, 1 when unchanged */
                sm[r0 + r] = sm[r0 + r] * corr[r] + VHSUM(s);
                mx[r0 + r] = mnew;
            }
            AFN(pv)(acc + (size_t)r0 * dh, pt, corr, vt, ldv, jn, dh);
        }
    }
    for (int r = 0; r < nq; r++) {
        const float inv = 1.0f / sm[r];
        const V iv = VSET1(inv);
        for (int c = 0; c < dh; c += VL)
            VSTOREU(o + (size_t)r * ldo + c, VMUL(VLOADU(acc + (size_t)r * dh + c), iv));
    }
}

#undef NVT
#undef AFN
#undef ACAT
#undef ACAT2
