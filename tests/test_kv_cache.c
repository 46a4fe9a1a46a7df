/* Tests of src/model/kv_cache.c (the block pool):
 *  - store / read round trip through kv_seq_tiles for f32 (exact) and bf16 (exactly
 *    torch's round to nearest even, ties included) at 1, 63, 64, 65, 130 rows,
 *    several layers and heads, head dim 8 and 128; the tile layout element by
 *    element; rows past the length zero; blocks 64-byte aligned;
 *  - growing never moves a block (pointers and data stable row by row);
 *  - fork shares every block (no byte allocated for 200 rows), the first write
 *    copies only the partial last block, the parent's rows stay, the other side then
 *    writes in place; forked and deep-copied sequences give identical attention
 *    outputs; truncate then append (also into a shared block);
 *  - reference counts back to zero after releasing everything (kv_pool_check);
 *  - prefix publish / attach: hit, partial hit, miss, different `extra` never
 *    matches, revival of cached blocks, bad arguments refused;
 *  - LRU eviction order (least recently released first, a sequence's tail before
 *    its head) under a small budget; a block in use is never evicted (reserve fails
 *    with ERGO_E_LIMIT and a message, nothing changes, nothing is evicted);
 *  - bf16's effect on an attention output against f32 storage (stated and bounded);
 *  - two threads forking, writing and releasing on one pool, then a consistency check. */
#include <pthread.h>

#include "check.h"
#include "base/half.h"
#include "model/kv_cache.h"

/* A deterministic f32 for (seed, layer, row, element): a full random mantissa,
 * and every 7th value an exact bf16 tie (low half 0x8000) so both tie directions
 * of round-to-nearest-even are exercised. */
static float val(uint32_t seed, int l, int row, int e) {
    uint32_t h = seed * 0x9e3779b1u ^ (uint32_t)l * 0x85ebca6bu ^ (uint32_t)row * 0xc2b2ae35u ^
                 (uint32_t)e * 0x27d4eb2fu;
    h ^= h >> 15;
    h *= 0x2c1b3c6du;
    h ^= h >> 12;
    h *= 0x297a2d39u;
    h ^= h >> 15;
    /* exponent in [-4, 3] around 1, random sign and mantissa */
    uint32_t u = (h & 0x80000000u) | ((uint32_t)(123 + (h >> 23) % 8) << 23) | (h & 0x7fffffu);
    if (h % 7 == 0) u = (u & 0xffff0000u) | 0x8000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The value the pool must hold for val(): itself (f32) or its bf16 rounding. */
static float held(kv_dtype t, float x) { return t == KV_BF16 ? bf16_to_f32_one(f32_to_bf16_one(x)) : x; }

static float tile_at(kv_dtype t, const void *tile, size_t i) {
    return t == KV_BF16 ? bf16_to_f32_one(((const uint16_t *)tile)[i]) : ((const float *)tile)[i];
}

/* Writes rows [row0, row0 + n) of every layer with val(seed, ...) (k = even
 * elements, v = odd ones). */
static void store_rows(kv_pool *p, kv_seq *s, uint32_t seed, int row0, int n) {
    int L = p->cfg.n_layers, W = p->cfg.n_kv_heads * p->cfg.head_dim;
    float *k = malloc(sizeof(float) * (size_t)(n ? n : 1) * W);
    float *v = malloc(sizeof(float) * (size_t)(n ? n : 1) * W);
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < n; i++)
            for (int e = 0; e < W; e++) {
                k[(size_t)i * W + e] = val(seed, l, row0 + i, 2 * e);
                v[(size_t)i * W + e] = val(seed, l, row0 + i, 2 * e + 1);
            }
        kv_seq_store(p, s, l, row0, n, k, v);
    }
    free(k);
    free(v);
}

/* Reserves, stores and commits rows [n_tokens, n_tokens + n). */
static ergo_status append_rows(kv_pool *p, kv_seq *s, uint32_t seed, int n, ergo_error *err) {
    ergo_status rc = kv_seq_reserve(p, s, s->n_tokens + n, err);
    if (rc != ERGO_OK) return rc;
    store_rows(p, s, seed, s->n_tokens, n);
    kv_seq_commit(s, s->n_tokens + n);
    return ERGO_OK;
}

/* Checks rows [row0, row0 + n) of s hold seed's values, through kv_seq_tiles (the
 * layout element by element) and kv_seq_read. Returns mismatches (first one
 * reported). */
static long check_rows(const kv_pool *p, const kv_seq *s, uint32_t seed, int row0, int n,
                       const char *label) {
    int L = p->cfg.n_layers, KV = p->cfg.n_kv_heads, Dh = p->cfg.head_dim;
    kv_dtype t = p->cfg.dtype;
    int nrows = row0 + n;
    const void **tiles = malloc(sizeof(void *) * (size_t)(nrows / 64 + 1));
    float *k = malloc(sizeof(float) * (size_t)(n ? n : 1) * KV * Dh);
    float *v = malloc(sizeof(float) * (size_t)(n ? n : 1) * KV * Dh);
    long bad = 0;
    for (int l = 0; l < L; l++) {
        kv_seq_read(p, s, l, row0, n, k, v);
        for (int g = 0; g < KV; g++) {
            int nb = kv_seq_tiles(p, s, l, g, nrows, tiles);
            if (nb != (nrows + 63) / 64) {
                CHECK(0, "%s: %d tiles for %d rows", label, nb, nrows);
                bad++;
            }
            for (int r = row0; r < nrows; r++)
                for (int d = 0; d < Dh; d++) {
                    int j = r % 64, e = g * Dh + d;
                    const void *tl = tiles[r / 64];
                    float wk = held(t, val(seed, l, r, 2 * e)), wv = held(t, val(seed, l, r, 2 * e + 1));
                    float gk = tile_at(t, tl, (size_t)d * 64 + j);
                    float gv = tile_at(t, tl, (size_t)64 * Dh + (size_t)j * Dh + d);
                    float rk = k[(size_t)(r - row0) * KV * Dh + e], rv = v[(size_t)(r - row0) * KV * Dh + e];
                    if (memcmp(&gk, &wk, 4) || memcmp(&gv, &wv, 4) || memcmp(&rk, &wk, 4) ||
                        memcmp(&rv, &wv, 4)) {
                        if (!bad)
                            CHECK(0, "%s: layer %d head %d row %d d %d: tile k %.9g v %.9g, read "
                                     "k %.9g v %.9g, want k %.9g v %.9g",
                                  label, l, g, r, d, (double)gk, (double)gv, (double)rk,
                                  (double)rv, (double)wk, (double)wv);
                        bad++;
                    }
                }
        }
    }
    free(tiles);
    free(k);
    free(v);
    return bad;
}

static kv_pool_stats stats(kv_pool *p) {
    kv_pool_stats st;
    kv_pool_stats_get(p, &st);
    return st;
}

static void check_pool(kv_pool *p, const kv_seq *const *seqs, int n, const char *label) {
    ergo_error err = {0};
    CHECK(kv_pool_check(p, seqs, n, &err) == 0, "%s: pool inconsistent: %s", label, err.msg);
}

static void init_pool(kv_pool *p, int L, int KV, int Dh, kv_dtype t, size_t budget) {
    ergo_error err = {0};
    kv_pool_config c = {L, KV, Dh, t, budget};
    ERGO_ASSERT(kv_pool_init(p, &c, &err) == ERGO_OK);
}

/* Scalar softmax(q K^T / sqrt(Dh)) V over the first nk rows, read from the tiles
 * in place (what the attention kernel does with this layout). */
static void attend(const kv_pool *p, const kv_seq *s, int l, int g, const float *q, int nk,
                   float *out) {
    int Dh = p->cfg.head_dim;
    kv_dtype t = p->cfg.dtype;
    const void *tiles[64];
    ERGO_ASSERT(nk <= 64 * 64);
    kv_seq_tiles(p, s, l, g, nk, tiles);
    float *sc = malloc(sizeof(float) * (size_t)nk), mx = -INFINITY, sum = 0;
    for (int j = 0; j < nk; j++) {
        float a = 0;
        for (int d = 0; d < Dh; d++) a += q[d] * tile_at(t, tiles[j / 64], (size_t)d * 64 + j % 64);
        sc[j] = a / sqrtf((float)Dh);
        mx = fmaxf(mx, sc[j]);
    }
    for (int d = 0; d < Dh; d++) out[d] = 0;
    for (int j = 0; j < nk; j++) {
        float e = expf(sc[j] - mx);
        sum += e;
        for (int d = 0; d < Dh; d++)
            out[d] += e * tile_at(t, tiles[j / 64], (size_t)64 * Dh + (size_t)(j % 64) * Dh + d);
    }
    for (int d = 0; d < Dh; d++) out[d] /= sum;
    free(sc);
}

/* -------------------------------------------------------------------------------- */

static void test_round_trip(void) {
    static const int shapes[][3] = {{3, 2, 8}, {2, 2, 128}, {1, 4, 8}};
    static const int sizes[] = {1, 63, 64, 65, 130};
    for (int t = 0; t < 2; t++)
        for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
            for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
                int L = shapes[sh][0], KV = shapes[sh][1], Dh = shapes[sh][2], n = sizes[si];
                kv_dtype dt = t ? KV_BF16 : KV_F32;
                char label[96];
                snprintf(label, sizeof label, "round trip %s L%d KV%d Dh%d n%d", kv_dtype_name(dt),
                         L, KV, Dh, n);
                kv_pool p;
                init_pool(&p, L, KV, Dh, dt, 0);
                CHECK_EQ_INT(p.block_bytes, kv_pool_bytes_for(L, KV, Dh, dt, 64), label);
                CHECK_EQ_INT(p.block_bytes, (size_t)L * KV * 2 * Dh * 64 * (t ? 2 : 4), label);
                kv_seq s = {0};
                ergo_error err = {0};
                CHECK(kv_seq_reserve(&p, &s, n, &err) == ERGO_OK, "%s: %s", label, err.msg);
                /* two stores (row0 = 0 and row0 inside the sequence), one commit */
                int a = n / 3;
                store_rows(&p, &s, 7, 0, a);
                store_rows(&p, &s, 7, a, n - a);
                kv_seq_commit(&s, n);
                CHECK(check_rows(&p, &s, 7, 0, n, label) == 0, "%s: mismatches", label);
                /* layout: tile (l, g) at (l*KV + g) * 2*Dh*64 elements from the block's base,
                 * 64-byte aligned; rows past n are zero */
                long off_bad = 0, nonzero = 0;
                for (int b = 0; b < s.n_blocks; b++) {
                    const uint8_t *base = kv_tile(&p, s.blocks[b], 0, 0);
                    off_bad += ((uintptr_t)base & 63) != 0;
                    for (int l = 0; l < L; l++)
                        for (int g = 0; g < KV; g++) {
                            const uint8_t *tl = kv_tile(&p, s.blocks[b], l, g);
                            off_bad += tl != base + ((size_t)l * KV + g) * 2 * Dh * 64 * (t ? 2 : 4);
                            for (int j = 0; j < 64; j++) {
                                if (b * 64 + j < n) continue;
                                for (int d = 0; d < Dh; d++)
                                    nonzero += tile_at(dt, tl, (size_t)d * 64 + j) != 0 ||
                                               tile_at(dt, tl, (size_t)64 * Dh + (size_t)j * Dh + d) != 0;
                            }
                        }
                }
                CHECK(off_bad == 0, "%s: %ld tiles misplaced or misaligned", label, off_bad);
                CHECK(nonzero == 0, "%s: %ld elements past the length are not zero", label, nonzero);
                kv_pool_stats st = stats(&p);
                CHECK(st.in_use == (n + 63) / 64 && st.bytes == kv_pool_bytes_for(L, KV, Dh, dt, n),
                      "%s: %lld blocks in use, %zu bytes", label, (long long)st.in_use, st.bytes);
                kv_seq_release(&p, &s);
                const kv_seq *none[1] = {NULL};
                check_pool(&p, none, 0, label);
                kv_pool_free(&p);
            }
    /* bf16 is exactly round to nearest even, incl. ties both ways and a NaN */
    {
        kv_pool p;
        init_pool(&p, 1, 1, 8, KV_BF16, 0);
        kv_seq s = {0};
        ergo_error err = {0};
        CHECK(kv_seq_reserve(&p, &s, 1, &err) == ERGO_OK, "%s", err.msg);
        uint32_t bits[8] = {0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x3f807fffu,
                            0xbf808000u, 0x7f7fffffu, 0x00000001u, 0x7fc00001u};
        uint16_t want[8] = {0x3f80, 0x3f82, 0x3f81, 0x3f80, 0xbf80, 0x7f80, 0x0000, 0x7fc0};
        float k[8], v[8];
        memcpy(k, bits, sizeof k);
        memcpy(v, bits, sizeof v);
        kv_seq_store(&p, &s, 0, 0, 1, k, v);
        const uint16_t *tl = kv_tile(&p, s.blocks[0], 0, 0);
        for (int d = 0; d < 8; d++) {
            CHECK(tl[d * 64] == want[d], "bf16 k of %08x: %04x, want %04x", bits[d], tl[d * 64], want[d]);
            CHECK(tl[64 * 8 + d] == want[d], "bf16 v of %08x: %04x, want %04x", bits[d],
                  tl[64 * 8 + d], want[d]);
        }
        kv_seq_release(&p, &s);
        kv_pool_free(&p);
    }
}

static void test_growth(void) {
    kv_pool p;
    init_pool(&p, 2, 2, 8, KV_F32, 0);
    kv_seq s = {0};
    ergo_error err = {0};
    const void *first[4] = {0};
    long moved = 0;
    int64_t allocs = 0;
    for (int r = 0; r < 250; r++) {
        int64_t before = stats(&p).allocated;
        CHECK(append_rows(&p, &s, 3, 1, &err) == ERGO_OK, "growth row %d: %s", r, err.msg);
        allocs += stats(&p).allocated - before;
        if (r % 64 == 0) first[r / 64] = kv_tile(&p, s.blocks[r / 64], 1, 1);
        for (int b = 0; b <= r / 64; b++) moved += kv_tile(&p, s.blocks[b], 1, 1) != first[b];
    }
    CHECK(moved == 0, "growth: %ld block pointers moved", moved);
    CHECK_EQ_INT(allocs, 4, "growth: blocks allocated for 250 rows, one row at a time");
    CHECK(check_rows(&p, &s, 3, 0, 250, "growth data") == 0, "growth data changed");
    /* a reserve inside the last block allocates nothing */
    int64_t before = stats(&p).allocated;
    CHECK(kv_seq_reserve(&p, &s, 256, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(stats(&p).allocated - before, 0, "growth: reserve within the last block");
    kv_seq_release(&p, &s);
    kv_pool_stats st = stats(&p);
    CHECK(st.peak_bytes == 4 * p.block_bytes && st.peak_in_use == 4 && st.in_use == 0 &&
              st.free == 4 && st.bytes == 4 * p.block_bytes,
          "growth: peak %zu bytes / %lld blocks, after release %lld in use, %lld free, %zu bytes",
          st.peak_bytes, (long long)st.peak_in_use, (long long)st.in_use, (long long)st.free,
          st.bytes);
    /* 40 blocks at once, 10 rows filled, then a fork: the parent's next reserve copies
     * block 0 only and keeps its 39 reserved blocks */
    kv_seq big = {0}, f = {0};
    CHECK(kv_seq_reserve(&p, &big, 40 * 64, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(big.n_blocks, 40, "big reserve: blocks");
    store_rows(&p, &big, 5, 0, 10);
    kv_seq_commit(&big, 10);
    int32_t b1 = big.blocks[1];
    CHECK(kv_seq_fork(&p, &f, &big, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(f.n_blocks, 1, "fork of 10 rows: blocks shared");
    int64_t a0 = stats(&p).allocated, c0 = stats(&p).cow_copies;
    CHECK(append_rows(&p, &big, 6, 2000, &err) == ERGO_OK, "%s", err.msg);
    CHECK(stats(&p).allocated - a0 == 1 && stats(&p).cow_copies - c0 == 1 && big.blocks[1] == b1,
          "big reserve after a fork: %lld allocated, %lld copied (want 1, 1), block 1 kept %d",
          (long long)(stats(&p).allocated - a0), (long long)(stats(&p).cow_copies - c0),
          big.blocks[1] == b1);
    CHECK(check_rows(&p, &big, 5, 0, 10, "big: old rows") == 0, "big old rows");
    CHECK(check_rows(&p, &big, 6, 10, 2000, "big: new rows") == 0, "big new rows");
    CHECK(check_rows(&p, &f, 5, 0, 10, "big: fork's rows") == 0, "fork rows");
    kv_seq_release(&p, &big);
    kv_seq_release(&p, &f);
    check_pool(&p, (const kv_seq *const[1]){NULL}, 0, "big reserve");
    kv_pool_free(&p);
}

static void test_fork(kv_dtype dt) {
    char label[64];
    snprintf(label, sizeof label, "fork %s", kv_dtype_name(dt));
    kv_pool p;
    init_pool(&p, 2, 2, 16, dt, 0);
    ergo_error err = {0};
    kv_seq parent = {0}, child = {0}, deep = {0};
    CHECK(append_rows(&p, &parent, 11, 200, &err) == ERGO_OK, "%s: %s", label, err.msg);
    kv_pool_stats st0 = stats(&p);
    CHECK(kv_seq_fork(&p, &child, &parent, &err) == ERGO_OK, "%s: %s", label, err.msg);
    kv_pool_stats st1 = stats(&p);
    CHECK(st1.allocated == st0.allocated && st1.bytes == st0.bytes && st1.in_use == st0.in_use,
          "%s: a fork of 200 rows allocated: %lld -> %lld blocks, %zu -> %zu bytes", label,
          (long long)st0.allocated, (long long)st1.allocated, st0.bytes, st1.bytes);
    CHECK_EQ_INT(child.n_tokens, 200, label);
    for (int b = 0; b < 4; b++) CHECK(child.blocks[b] == parent.blocks[b], "%s: block %d not shared", label, b);
    const kv_seq *both[2] = {&parent, &child};
    check_pool(&p, both, 2, label);

    /* the deep copy (what session_fork does today): read every row, store it again */
    {
        int W = 2 * 16;
        float *k = malloc(sizeof(float) * 200 * W), *v = malloc(sizeof(float) * 200 * W);
        CHECK(kv_seq_reserve(&p, &deep, 200, &err) == ERGO_OK, "%s: %s", label, err.msg);
        for (int l = 0; l < 2; l++) {
            kv_seq_read(&p, &parent, l, 0, 200, k, v);
            kv_seq_store(&p, &deep, l, 0, 200, k, v);
        }
        kv_seq_commit(&deep, 200);
        free(k);
        free(v);
    }
    kv_pool_stats st2 = stats(&p);

    /* the child writes first: only the partial last block (rows 192..199) is copied */
    CHECK(append_rows(&p, &child, 12, 1, &err) == ERGO_OK, "%s: %s", label, err.msg);
    CHECK(append_rows(&p, &deep, 12, 1, &err) == ERGO_OK, "%s: %s", label, err.msg);
    kv_pool_stats st3 = stats(&p);
    CHECK(st3.allocated - st2.allocated == 1 && st3.cow_copies - st2.cow_copies == 1,
          "%s: first write after the fork: %lld blocks allocated, %lld copied (want 1, 1)", label,
          (long long)(st3.allocated - st2.allocated), (long long)(st3.cow_copies - st2.cow_copies));
    for (int b = 0; b < 3; b++)
        CHECK(child.blocks[b] == parent.blocks[b], "%s: full block %d copied", label, b);
    CHECK(child.blocks[3] != parent.blocks[3], "%s: partial block not copied", label);
    CHECK(check_rows(&p, &parent, 11, 0, 200, label) == 0, "%s: parent changed", label);
    CHECK(check_rows(&p, &child, 11, 0, 200, label) == 0, "%s: child's old rows", label);
    CHECK(check_rows(&p, &child, 12, 200, 1, label) == 0, "%s: child's new row", label);
    /* the parent now holds its last block alone: it writes in place */
    CHECK(append_rows(&p, &parent, 13, 1, &err) == ERGO_OK, "%s: %s", label, err.msg);
    kv_pool_stats st4 = stats(&p);
    CHECK(st4.allocated == st3.allocated && st4.cow_copies == st3.cow_copies,
          "%s: parent's write after the child's copy allocated %lld / copied %lld", label,
          (long long)(st4.allocated - st3.allocated), (long long)(st4.cow_copies - st3.cow_copies));
    CHECK(check_rows(&p, &parent, 13, 200, 1, label) == 0, "%s: parent's new row", label);
    CHECK(check_rows(&p, &child, 12, 200, 1, label) == 0, "%s: child's row after the parent's", label);

    /* forked and deep-copied give the same attention outputs, bit for bit */
    long diff = 0;
    for (int l = 0; l < 2; l++)
        for (int g = 0; g < 2; g++) {
            float q[16], o1[16], o2[16];
            for (int d = 0; d < 16; d++) q[d] = val(99, l, g, d);
            attend(&p, &child, l, g, q, 201, o1);
            attend(&p, &deep, l, g, q, 201, o2);
            diff += memcmp(o1, o2, sizeof o1) != 0;
        }
    CHECK(diff == 0, "%s: forked and deep-copied outputs differ in %ld (layer, head)s", label, diff);

    /* truncate then append; then truncate the child into a block it shares */
    kv_seq_truncate(&p, &deep, 70);
    CHECK_EQ_INT(deep.n_blocks, 2, "truncate to 70: blocks");
    CHECK(append_rows(&p, &deep, 14, 80, &err) == ERGO_OK, "%s: %s", label, err.msg);
    CHECK(check_rows(&p, &deep, 11, 0, 70, "truncate: kept rows") == 0, "%s", label);
    CHECK(check_rows(&p, &deep, 14, 70, 80, "truncate: appended rows") == 0, "%s", label);
    kv_seq_release(&p, &child);
    CHECK(kv_seq_fork(&p, &child, &parent, &err) == ERGO_OK, "%s", err.msg);
    kv_seq_truncate(&p, &child, 100); /* block 1 (rows 64..127) shared with the parent */
    int64_t cow = stats(&p).cow_copies;
    CHECK(append_rows(&p, &child, 15, 10, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(stats(&p).cow_copies - cow, 1, "truncate into a shared block, append: copies");
    CHECK(check_rows(&p, &child, 11, 0, 100, "truncated child") == 0, "%s", label);
    CHECK(check_rows(&p, &child, 15, 100, 10, "truncated child's append") == 0, "%s", label);
    CHECK(check_rows(&p, &parent, 11, 0, 200, "parent after the child's truncate") == 0, "%s", label);
    const kv_seq *all[3] = {&parent, &child, &deep};
    check_pool(&p, all, 3, label);

    kv_seq_release(&p, &parent);
    kv_seq_release(&p, &child);
    kv_seq_release(&p, &deep);
    kv_pool_stats st = stats(&p);
    CHECK(st.in_use == 0 && st.free == st.allocated && st.cached == 0,
          "%s: after releasing all: in_use %lld, free %lld of %lld", label, (long long)st.in_use,
          (long long)st.free, (long long)st.allocated);
    const kv_seq *none[1] = {NULL};
    check_pool(&p, none, 0, label);
    kv_pool_free(&p);
}

/* Chained keys of the full blocks of tokens[0..n), extra mixed into block `at`. */
static int chain_keys(kv_key *keys, const int32_t *tokens, int n, const char *extra, int at) {
    int nb = n / 64;
    for (int i = 0; i < nb; i++)
        kv_block_key(&keys[i], i ? &keys[i - 1] : NULL, tokens + 64 * i, 64,
                     i == at ? extra : NULL, i == at && extra ? strlen(extra) : 0);
    return nb;
}

static void test_prefix(void) {
    kv_pool p;
    init_pool(&p, 2, 1, 8, KV_BF16, 0);
    ergo_error err = {0};
    int32_t toks[256], other[256], first_diff[256];
    for (int i = 0; i < 256; i++) toks[i] = other[i] = first_diff[i] = 1000 + i;
    other[100] = 5;     /* differs in block 1 */
    first_diff[0] = 6;  /* differs in block 0 */
    kv_key keys[4], k_other[4], k_first[4], k_img_a[4], k_img_b[4], k_img_a2[4];
    CHECK_EQ_INT(chain_keys(keys, toks, 200, NULL, -1), 3, "prefix: full blocks of 200");
    chain_keys(k_other, other, 200, NULL, -1);
    chain_keys(k_first, first_diff, 200, NULL, -1);
    chain_keys(k_img_a, toks, 200, "image sha a", 1);
    chain_keys(k_img_b, toks, 200, "image sha b", 1);
    chain_keys(k_img_a2, toks, 200, "image sha a", 1);
    CHECK(memcmp(&keys[0], &k_other[0], 16) == 0 && memcmp(&keys[1], &k_other[1], 16) != 0 &&
              memcmp(&keys[2], &k_other[2], 16) != 0,
          "prefix: a change in block 1 must change keys 1, 2 (chained), not key 0");
    CHECK(memcmp(&k_img_a[1], &k_img_a2[1], 16) == 0, "prefix: keys not deterministic");
    kv_key nop, zp = {{0}};
    kv_block_key(&nop, NULL, toks, 64, NULL, 0);
    kv_block_key(&zp, &zp, toks, 64, NULL, 0);
    CHECK(memcmp(&nop, &zp, 16) != 0, "prefix: no parent equals an all-zero parent");

    kv_seq a = {0};
    CHECK(append_rows(&p, &a, 21, 200, &err) == ERGO_OK, "%s", err.msg);
    for (int i = 0; i < 3; i++)
        CHECK(kv_seq_publish(&p, &a, i, &keys[i], &err) == ERGO_OK, "publish %d: %s", i, err.msg);
    CHECK(kv_seq_publish(&p, &a, 3, &keys[3], &err) == ERGO_E_ARG, "publishing a partial block");
    CHECK(strstr(err.msg, "full") != NULL, "partial publish message: %s", err.msg);
    CHECK(kv_seq_publish(&p, &a, 0, &keys[0], &err) == ERGO_OK, "republishing the same key");
    CHECK(kv_seq_publish(&p, &a, 0, &keys[1], &err) == ERGO_E_ARG, "a second key for one block");
    CHECK_EQ_INT(stats(&p).published, 3, "prefix: published blocks");

    /* hit, partial hit, miss, other extra bytes */
    CHECK_EQ_INT(kv_pool_match_prefix(&p, keys, 3), 3, "match: same tokens");
    CHECK_EQ_INT(kv_pool_match_prefix(&p, k_other, 3), 1, "match: differs in block 1");
    CHECK_EQ_INT(kv_pool_match_prefix(&p, k_first, 3), 0, "match: differs in block 0");
    kv_seq b = {0}, c = {0}, d = {0};
    CHECK_EQ_INT(kv_seq_attach_prefix(&p, &b, keys, 3, &err), 3, "attach: hit");
    CHECK_EQ_INT(b.n_tokens, 192, "attach: rows");
    for (int i = 0; i < 3; i++) CHECK(b.blocks[i] == a.blocks[i], "attach: block %d not shared", i);
    CHECK(check_rows(&p, &b, 21, 0, 192, "attached rows") == 0, "attached rows");
    CHECK_EQ_INT(kv_seq_attach_prefix(&p, &c, k_other, 3, &err), 1, "attach: partial hit");
    CHECK_EQ_INT(c.n_tokens, 64, "attach: partial hit rows");
    CHECK_EQ_INT(kv_seq_attach_prefix(&p, &c, keys, 3, &err), -1, "attach to a non-empty sequence");
    CHECK(err.code == ERGO_E_ARG && strstr(err.msg, "empty"), "attach non-empty: %s", err.msg);
    CHECK_EQ_INT(kv_seq_attach_prefix(&p, &d, k_first, 3, &err), 0, "attach: miss");
    /* the image-keyed chain: a matches nothing published yet; publish a's block 1
     * under image a, then image b's keys never match it */
    kv_seq_release(&p, &d);
    CHECK_EQ_INT(kv_seq_attach_prefix(&p, &d, k_img_a, 3, &err), 1, "attach: image a before publish");
    CHECK(append_rows(&p, &d, 22, 64, &err) == ERGO_OK, "%s", err.msg);
    CHECK(kv_seq_publish(&p, &d, 1, &k_img_a[1], &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(kv_pool_match_prefix(&p, k_img_a2, 3), 2, "match: same image");
    CHECK_EQ_INT(kv_pool_match_prefix(&p, k_img_b, 3), 1, "match: other image bytes");
    /* the continuation after a full-prefix hit writes a new block, no copy */
    int64_t cow = stats(&p).cow_copies;
    CHECK(append_rows(&p, &b, 23, 10, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(stats(&p).cow_copies - cow, 0, "append after a full-block hit: copies");
    /* truncating into a published block and writing copies it (published blocks stay) */
    kv_seq_truncate(&p, &b, 150);
    CHECK(append_rows(&p, &b, 24, 5, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(stats(&p).cow_copies - cow, 1, "write into a published block: copies");
    CHECK(check_rows(&p, &a, 21, 0, 200, "owner after others wrote") == 0, "published block changed");
    const kv_seq *all[4] = {&a, &b, &c, &d};
    check_pool(&p, all, 4, "prefix");

    /* release everything: published blocks stay cached, then are revived */
    kv_seq_release(&p, &a);
    kv_seq_release(&p, &b);
    kv_seq_release(&p, &c);
    kv_seq_release(&p, &d);
    kv_pool_stats st = stats(&p);
    CHECK(st.in_use == 0 && st.cached == 4 && st.published == 4,
          "prefix: after release: in use %lld, cached %lld, published %lld (want 0, 4, 4)",
          (long long)st.in_use, (long long)st.cached, (long long)st.published);
    int64_t hits = st.prefix_hits;
    CHECK_EQ_INT(kv_seq_attach_prefix(&p, &a, keys, 3, &err), 3, "attach from the cache");
    st = stats(&p);
    CHECK(st.cached == 1 && st.in_use == 3 && st.prefix_hits - hits == 3,
          "revive: cached %lld, in use %lld, hits %lld", (long long)st.cached, (long long)st.in_use,
          (long long)(st.prefix_hits - hits));
    CHECK(check_rows(&p, &a, 21, 0, 192, "revived rows") == 0, "revived rows");
    const kv_seq *one[1] = {&a};
    check_pool(&p, one, 1, "revive");
    kv_seq_release(&p, &a);
    kv_pool_free(&p);
}

static void test_eviction(void) {
    ergo_error err = {0};
    kv_pool p;
    size_t bb = kv_pool_bytes_for(1, 1, 8, KV_F32, 64);
    init_pool(&p, 1, 1, 8, KV_F32, 4 * bb + 100); /* room for 4 blocks */
    CHECK_EQ_INT(p.max_blocks, 4, "budget: blocks");
    int32_t toks[3][64];
    kv_key k[3];
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < 64; i++) toks[s][i] = s * 100 + i;
        kv_block_key(&k[s], NULL, toks[s], 64, NULL, 0);
        kv_seq q = {0};
        CHECK(append_rows(&p, &q, 30 + s, 64, &err) == ERGO_OK, "%s", err.msg);
        CHECK(kv_seq_publish(&p, &q, 0, &k[s], &err) == ERGO_OK, "%s", err.msg);
        kv_seq_release(&p, &q); /* released in order 0, 1, 2 */
    }
    CHECK_EQ_INT(stats(&p).cached, 3, "eviction: cached");
    /* 2 blocks: one new (the 4th within budget), one evicted: the least recent, 0 */
    kv_seq x = {0};
    CHECK(kv_seq_reserve(&p, &x, 128, &err) == ERGO_OK, "%s", err.msg);
    CHECK(kv_pool_match_prefix(&p, &k[0], 1) == 0 && kv_pool_match_prefix(&p, &k[1], 1) == 1 &&
              kv_pool_match_prefix(&p, &k[2], 1) == 1,
          "eviction: the least recently released block (0) should go first");
    CHECK_EQ_INT(stats(&p).evictions, 1, "evictions");
    /* touch 1 (attach, release): now 2 is the least recent */
    kv_seq y = {0};
    CHECK_EQ_INT(kv_seq_attach_prefix(&p, &y, &k[1], 1, &err), 1, "attach 1");
    CHECK(check_rows(&p, &y, 31, 0, 64, "cached block 1") == 0, "cached data");
    kv_seq_release(&p, &y);
    CHECK(kv_seq_reserve(&p, &x, 129, &err) == ERGO_OK, "%s", err.msg);
    CHECK(kv_pool_match_prefix(&p, &k[1], 1) == 1 && kv_pool_match_prefix(&p, &k[2], 1) == 0,
          "eviction: after touching 1, block 2 should go first");
    /* the new block is zero-filled, not the evicted block's rows */
    {
        const float *t = kv_tile(&p, x.blocks[2], 0, 0);
        int nz = 0;
        for (int i = 0; i < 2 * 8 * 64; i++) nz += t[i] != 0;
        CHECK_EQ_INT(nz, 0, "evicted block reused: non-zero elements");
    }
    kv_seq_release(&p, &x);
    kv_pool_free(&p);

    /* a chain released as one sequence: its tail is evicted before its head */
    init_pool(&p, 1, 1, 8, KV_F32, 2 * bb);
    int32_t t2[128];
    for (int i = 0; i < 128; i++) t2[i] = i;
    kv_key kc[2];
    kv_block_key(&kc[0], NULL, t2, 64, NULL, 0);
    kv_block_key(&kc[1], &kc[0], t2 + 64, 64, NULL, 0);
    kv_seq q = {0};
    CHECK(append_rows(&p, &q, 40, 128, &err) == ERGO_OK, "%s", err.msg);
    kv_seq_publish(&p, &q, 0, &kc[0], &err);
    kv_seq_publish(&p, &q, 1, &kc[1], &err);
    kv_seq_release(&p, &q);
    CHECK(kv_seq_reserve(&p, &q, 1, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(kv_pool_match_prefix(&p, kc, 2), 1, "chain: the tail goes first, the head stays");
    kv_seq_release(&p, &q);
    kv_pool_free(&p);

    /* blocks in use are never evicted: fill the budget with referenced blocks */
    init_pool(&p, 1, 1, 8, KV_F32, 3 * bb);
    kv_seq a = {0}, b = {0}, f = {0};
    CHECK(append_rows(&p, &a, 50, 150, &err) == ERGO_OK, "%s", err.msg);
    kv_key ka[2];
    int32_t ta[128];
    for (int i = 0; i < 128; i++) ta[i] = 7 * i;
    kv_block_key(&ka[0], NULL, ta, 64, NULL, 0);
    kv_block_key(&ka[1], &ka[0], ta + 64, 64, NULL, 0);
    kv_seq_publish(&p, &a, 0, &ka[0], &err);
    kv_seq_publish(&p, &a, 1, &ka[1], &err);
    kv_pool_stats st0 = stats(&p);
    err = (ergo_error){0};
    CHECK(kv_seq_reserve(&p, &b, 1, &err) == ERGO_E_LIMIT, "reserve over a full budget");
    CHECK(strstr(err.msg, "budget") && strstr(err.msg, "in use"), "limit message: %s", err.msg);
    CHECK(b.n_blocks == 0 && b.n_tokens == 0, "failed reserve changed the sequence");
    /* a fork costs nothing; its write needs a copy, which fails cleanly */
    CHECK(kv_seq_fork(&p, &f, &a, &err) == ERGO_OK, "%s", err.msg);
    int32_t fb[3] = {f.blocks[0], f.blocks[1], f.blocks[2]};
    CHECK(kv_seq_reserve(&p, &f, 151, &err) == ERGO_E_LIMIT, "copy on write over a full budget");
    CHECK(f.n_blocks == 3 && f.n_tokens == 150 && f.blocks[0] == fb[0] && f.blocks[1] == fb[1] &&
              f.blocks[2] == fb[2],
          "failed copy on write changed the fork");
    /* asking for more than is free+cached+new fails before evicting anything */
    kv_seq_release(&p, &f);
    kv_seq_truncate(&p, &a, 128); /* frees block 2 (unpublished) */
    CHECK(kv_seq_reserve(&p, &b, 128, &err) == ERGO_E_LIMIT, "two blocks with one free");
    kv_pool_stats st1 = stats(&p);
    CHECK(st1.evictions == st0.evictions && st1.published == 2 && st1.free == 1,
          "a failed reserve evicted %lld / left %lld published, %lld free",
          (long long)(st1.evictions - st0.evictions), (long long)st1.published, (long long)st1.free);
    CHECK(check_rows(&p, &a, 50, 0, 128, "blocks in use after failed reserves") == 0, "corrupted");
    const kv_seq *live[2] = {&a, &b};
    check_pool(&p, live, 2, "in-use eviction");
    /* once released, the published blocks can be evicted (tail first) */
    kv_seq_release(&p, &a);
    CHECK(kv_seq_reserve(&p, &b, 128, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_INT(kv_pool_match_prefix(&p, ka, 2), 1, "after release: one evicted");
    kv_seq_release(&p, &b);
    check_pool(&p, (const kv_seq *const[1]){NULL}, 0, "eviction end");
    kv_pool_free(&p);

    /* bad configurations and arguments */
    kv_pool_config small = {1, 1, 8, KV_F32, bb - 1};
    CHECK(kv_pool_init(&p, &small, &err) == ERGO_E_LIMIT && strstr(err.msg, "smaller than one block"),
          "budget under one block: %s", err.msg);
    kv_pool_config bad = {0, 1, 8, KV_F32, 0};
    CHECK(kv_pool_init(&p, &bad, &err) == ERGO_E_ARG, "zero layers accepted");
    kv_dtype dt;
    CHECK(kv_dtype_parse("bf16", &dt, &err) == ERGO_OK && dt == KV_BF16, "parse bf16");
    CHECK(kv_dtype_parse("f32", &dt, &err) == ERGO_OK && dt == KV_F32, "parse f32");
    CHECK(kv_dtype_parse("fp8", &dt, &err) == ERGO_E_ARG && strstr(err.msg, "fp8"), "parse fp8: %s",
          err.msg);
}

/* bf16 storage against f32 on one attention output (Dh 128, 300 keys, elements of
 * magnitude 2^-4..16, queries scaled so that scores are O(1)): each element carries
 * <= 2^-9 relative error; the output's error is bounded by 1% of its magnitude. */
static void test_bf16_accuracy(void) {
    kv_pool pf, pb;
    init_pool(&pf, 1, 1, 128, KV_F32, 0);
    init_pool(&pb, 1, 1, 128, KV_BF16, 0);
    kv_seq sf = {0}, sb = {0};
    ergo_error err = {0};
    CHECK(append_rows(&pf, &sf, 61, 300, &err) == ERGO_OK, "%s", err.msg);
    CHECK(append_rows(&pb, &sb, 61, 300, &err) == ERGO_OK, "%s", err.msg);
    float q[128], of[128], ob[128];
    double worst = 0, scale = 0;
    for (int t = 0; t < 4; t++) {
        for (int d = 0; d < 128; d++) q[d] = val(62, t, 0, d) / 16; /* scores O(1) */
        attend(&pf, &sf, 0, 0, q, 300, of);
        attend(&pb, &sb, 0, 0, q, 300, ob);
        for (int d = 0; d < 128; d++) {
            worst = fmax(worst, fabs((double)of[d] - (double)ob[d]));
            scale = fmax(scale, fabs((double)of[d]));
        }
    }
    printf("  [kv_cache] bf16 K/V vs f32: attention output max |diff| %.2e (output max %.2e), "
           "element rel. error <= 2^-9 = %.2e\n", worst, scale, 1.0 / 512);
    CHECK(worst < 1e-2 * (scale > 1 ? scale : 1) && worst > 0,
          "bf16 attention error %.3e (bound 1e-2 x %.3e)", worst, scale);
    kv_seq_release(&pf, &sf);
    kv_seq_release(&pb, &sb);
    kv_pool_free(&pf);
    kv_pool_free(&pb);
}

typedef struct worker {
    kv_pool *p;
    const kv_seq *base;
    const kv_key *keys;
    int id;
    long failures;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    ergo_error err = {0};
    for (int it = 0; it < 150; it++) {
        kv_seq c = {0}, d = {0};
        if (kv_seq_fork(w->p, &c, w->base, &err) != ERGO_OK) w->failures++;
        int n = 1 + (it * 7 + w->id * 13) % 90;
        if (append_rows(w->p, &c, 100 + (uint32_t)w->id, n, &err) != ERGO_OK) {
            w->failures++;
        } else {
            /* our rows, the base's rows under them */
            w->failures += check_rows(w->p, &c, 100 + (uint32_t)w->id, 150, n, "thread rows") != 0;
            if (it % 10 == 0)
                w->failures += check_rows(w->p, &c, 70, 0, 150, "thread base rows") != 0;
        }
        if (it % 3 == 0) {
            if (kv_seq_attach_prefix(w->p, &d, w->keys, 2, &err) != 2) w->failures++;
            if (append_rows(w->p, &d, 200 + (uint32_t)w->id, 5, &err) != ERGO_OK) w->failures++;
            kv_seq_release(w->p, &d);
        }
        if (it % 2) kv_seq_truncate(w->p, &c, c.n_tokens / 2);
        kv_seq_release(w->p, &c);
    }
    return NULL;
}

static void test_threads(void) {
    kv_pool p;
    init_pool(&p, 2, 2, 8, KV_BF16, 0);
    ergo_error err = {0};
    kv_seq base = {0};
    CHECK(append_rows(&p, &base, 70, 150, &err) == ERGO_OK, "%s", err.msg);
    int32_t toks[128];
    for (int i = 0; i < 128; i++) toks[i] = i * 3;
    kv_key keys[2];
    chain_keys(keys, toks, 128, NULL, -1);
    kv_seq_publish(&p, &base, 0, &keys[0], &err);
    kv_seq_publish(&p, &base, 1, &keys[1], &err);
    worker w[2] = {{&p, &base, keys, 0, 0}, {&p, &base, keys, 1, 0}};
    pthread_t th[2];
    int started = 0;
    for (int i = 0; i < 2; i++) started += pthread_create(&th[i], NULL, work, &w[i]) == 0;
    if (started != 2) {
        SKIP("kv_cache threads: pthread_create failed");
        for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    } else {
        for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    }
    CHECK(w[0].failures == 0 && w[1].failures == 0, "threads: %ld and %ld failures", w[0].failures,
          w[1].failures);
    const kv_seq *one[1] = {&base};
    check_pool(&p, one, 1, "after threads");
    kv_pool_stats st = stats(&p);
    CHECK(st.in_use == 3 && st.cow_copies >= 2, "threads: in use %lld (want 3), copies %lld",
          (long long)st.in_use, (long long)st.cow_copies);
    CHECK(check_rows(&p, &base, 70, 0, 150, "base after threads") == 0, "base changed");
    kv_seq_release(&p, &base);
    check_pool(&p, (const kv_seq *const[1]){NULL}, 0, "threads end");
    kv_pool_free(&p);
}

void test_kv_cache(void) {
    test_round_trip();
    test_growth();
    test_fork(KV_F32);
    test_fork(KV_BF16);
    test_prefix();
    test_eviction();
    test_bf16_accuracy();
    test_threads();
}
