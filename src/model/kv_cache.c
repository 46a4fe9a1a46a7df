/*
 * kv_cache.c - block pool, block tables, copy on write and the prefix cache
 * (see kv_cache.h for the layout and the ownership rules).
 *
 * A block is in exactly one of three states: used (refs > 0, in some block
 * tables), free (refs 0, unpublished, on the free list) or cached (refs 0,
 * published, on the LRU list). refs and published are atomics only so that a
 * sequence can ask "do I hold this block alone?" without the lock: both change
 * under the lock, and once a block is held alone and unpublished only its holder
 * can change that, so the answer cannot go stale under it.
 */
#include "kv_cache.h"

#include <limits.h>
#include <nettle/sha2.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "kernels/attention.h"

/* one block is one key tile of the attention kernel */
_Static_assert(KV_BLOCK == ATTN_KTILE, "KV_BLOCK must equal ATTN_KTILE");

#define CHUNK_LEN (1 << KV_CHUNK_SHIFT)

enum { KVB_USED = 1, KVB_FREE = 2, KVB_CACHED = 3 };

struct kv_block {
    uint8_t *data;             /* block_bytes, 64-byte aligned; never freed before the pool */
    _Atomic int32_t refs;      /* block tables holding it */
    _Atomic int32_t published; /* in the prefix table under key */
    int32_t prev, next;        /* LRU list (cached) or free list (next only) */
    int32_t hnext;             /* prefix table chain */
    int32_t where;             /* KVB_* */
    kv_key key;
};

static struct kv_block *blk(const kv_pool *p, int32_t id) {
    return &p->chunks[id >> KV_CHUNK_SHIFT][id & (CHUNK_LEN - 1)];
}

/* ---------------------------------------------------------------------------------
 * dtypes, keys, sizes */

const char *kv_dtype_name(kv_dtype t) { return t == KV_BF16 ? "bf16" : "f32"; }

size_t kv_dtype_size(kv_dtype t) { return t == KV_BF16 ? 2 : 4; }

ergo_status kv_dtype_parse(const char *s, kv_dtype *out, ergo_error *err) {
    if (s && (!strcmp(s, "f32") || !strcmp(s, "float32"))) {
        *out = KV_F32;
        return ERGO_OK;
    }
    if (s && (!strcmp(s, "bf16") || !strcmp(s, "bfloat16"))) {
        *out = KV_BF16;
        return ERGO_OK;
    }
    return ergo_fail(err, ERGO_E_ARG, "--kv-dtype: unknown value \"%s\" (expected f32 or bf16)",
                     s ? s : "(null)");
}

static void put_le(uint8_t *o, uint64_t x, int n) {
    for (int i = 0; i < n; i++) o[i] = (uint8_t)(x >> (8 * i));
}

void kv_block_key(kv_key *out, const kv_key *parent, const int32_t *tokens, int n,
                  const void *extra, size_t extra_len) {
    ERGO_ASSERT(n >= 0 && (tokens || n == 0) && (extra || extra_len == 0));
    struct sha256_ctx c;
    uint8_t buf[256], digest[SHA256_DIGEST_SIZE];
    sha256_init(&c);
    /* a tag, then a parent flag so "no parent" never equals some parent's key */
    static const char tag[16] = "ergo kv block 1";
    sha256_update(&c, sizeof tag, (const uint8_t *)tag);
    uint8_t head[1 + 16 + 4];
    head[0] = parent != NULL;
    memset(head + 1, 0, 16);
    if (parent) memcpy(head + 1, parent->b, 16);
    put_le(head + 17, (uint32_t)n, 4);
    sha256_update(&c, sizeof head, head);
    /* token ids as little-endian int32, whatever the host's byte order */
    for (int i = 0; i < n;) {
        int m = 0;
        for (; i < n && m + 4 <= (int)sizeof buf; i++, m += 4) put_le(buf + m, (uint32_t)tokens[i], 4);
        sha256_update(&c, (size_t)m, buf);
    }
    put_le(buf, (uint64_t)extra_len, 8);
    sha256_update(&c, 8, buf);
    if (extra_len) sha256_update(&c, extra_len, extra);
    sha256_digest(&c, sizeof digest, digest);
    memcpy(out->b, digest, 16);
}

size_t kv_pool_bytes_for(int n_layers, int n_kv_heads, int head_dim, kv_dtype dtype,
                         int n_tokens) {
    size_t nb = n_tokens > 0 ? ((size_t)n_tokens + KV_BLOCK - 1) / KV_BLOCK : 0;
    return nb * (size_t)n_layers * (size_t)n_kv_heads * 2 * (size_t)head_dim * KV_BLOCK *
           kv_dtype_size(dtype);
}

/* ---------------------------------------------------------------------------------
 * the pool */

ergo_status kv_pool_init(kv_pool *p, const kv_pool_config *cfg, ergo_error *err) {
    memset(p, 0, sizeof *p);
    if (cfg->n_layers < 1 || cfg->n_kv_heads < 1 || cfg->head_dim < 1 ||
        cfg->n_layers > 4096 || cfg->n_kv_heads > 4096 || cfg->head_dim > 4096)
        return ergo_fail(err, ERGO_E_ARG,
                         "kv cache: bad shape: %d layers, %d kv heads, head dim %d (each 1..4096)",
                         cfg->n_layers, cfg->n_kv_heads, cfg->head_dim);
    if (cfg->dtype != KV_F32 && cfg->dtype != KV_BF16)
        return ergo_fail(err, ERGO_E_ARG, "kv cache: unknown dtype %d", (int)cfg->dtype);
    p->cfg = *cfg;
    p->tile_elems = (size_t)2 * cfg->head_dim * KV_BLOCK;
    p->block_bytes = kv_pool_bytes_for(cfg->n_layers, cfg->n_kv_heads, cfg->head_dim,
                                       cfg->dtype, KV_BLOCK);
    size_t maxb = cfg->budget_bytes ? cfg->budget_bytes / p->block_bytes : (size_t)KV_MAX_BLOCKS;
    if (cfg->budget_bytes && maxb < 1)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "kv cache: budget of %zu bytes is smaller than one block (%zu bytes: "
                         "64 rows x %d layers x %d kv heads x K,V x %d x %s)",
                         cfg->budget_bytes, p->block_bytes, cfg->n_layers, cfg->n_kv_heads,
                         cfg->head_dim, kv_dtype_name(cfg->dtype));
    p->max_blocks = maxb > (size_t)KV_MAX_BLOCKS ? KV_MAX_BLOCKS : (int)maxb;
    p->free_head = p->lru_head = p->lru_tail = -1;
    p->n_buckets = 256;
    p->buckets = malloc(sizeof(int32_t) * (size_t)p->n_buckets);
    if (!p->buckets) return ergo_fail(err, ERGO_E_NOMEM, "kv cache: out of memory");
    for (int i = 0; i < p->n_buckets; i++) p->buckets[i] = -1;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p->buckets);
        p->buckets = NULL;
        return ergo_fail(err, ERGO_E_NOMEM, "kv cache: cannot create the pool's mutex");
    }
    return ERGO_OK;
}

void kv_pool_free(kv_pool *p) {
    if (!p->buckets) return; /* never initialised, or freed already */
    for (int i = 0; i < p->n_blocks; i++) free(blk(p, i)->data);
    for (int c = 0; c < KV_MAX_CHUNKS; c++) free(p->chunks[c]);
    free(p->buckets);
    pthread_mutex_destroy(&p->mu);
    memset(p, 0, sizeof *p);
}

void kv_pool_stats_get(kv_pool *p, kv_pool_stats *out) {
    pthread_mutex_lock(&p->mu);
    *out = p->st;
    pthread_mutex_unlock(&p->mu);
}

const void *kv_tile(const kv_pool *p, int block, int layer, int head) {
    ERGO_ASSERT(block >= 0 && block < KV_MAX_BLOCKS && layer >= 0 &&
                layer < p->cfg.n_layers && head >= 0 && head < p->cfg.n_kv_heads);
    return blk(p, block)->data +
           ((size_t)layer * p->cfg.n_kv_heads + head) * p->tile_elems * kv_dtype_size(p->cfg.dtype);
}

static uint8_t *tile_mut(const kv_pool *p, int32_t block, int layer, int head) {
    return (uint8_t *)kv_tile(p, block, layer, head);
}

/* Held alone and unpublished: the holder may write it (lock-free, see the top). */
static int writable(const kv_pool *p, int32_t id) {
    const struct kv_block *b = blk(p, id);
    return atomic_load(&b->refs) == 1 && !atomic_load(&b->published);
}

/* ---- prefix table (under mu) ---- */

static uint32_t key_hash(const kv_key *k) {
    return (uint32_t)k->b[0] | (uint32_t)k->b[1] << 8 | (uint32_t)k->b[2] << 16 |
           (uint32_t)k->b[3] << 24;
}

static int32_t table_find(const kv_pool *p, const kv_key *k) {
    int32_t id = p->buckets[key_hash(k) & (uint32_t)(p->n_buckets - 1)];
    while (id >= 0 && memcmp(blk(p, id)->key.b, k->b, 16) != 0) id = blk(p, id)->hnext;
    return id;
}

static void table_link(kv_pool *p, int32_t id) {
    struct kv_block *b = blk(p, id);
    int32_t *head = &p->buckets[key_hash(&b->key) & (uint32_t)(p->n_buckets - 1)];
    b->hnext = *head;
    *head = id;
}

static void table_unlink(kv_pool *p, int32_t id) {
    int32_t *at = &p->buckets[key_hash(&blk(p, id)->key) & (uint32_t)(p->n_buckets - 1)];
    while (*at != id) {
        ERGO_ASSERT(*at >= 0);
        at = &blk(p, *at)->hnext;
    }
    *at = blk(p, id)->hnext;
}

/* Doubles the buckets when the table is as full as it is wide; on no memory the
 * chains just get longer. */
static void table_grow(kv_pool *p) {
    if (p->st.published < p->n_buckets || p->n_buckets >= (1 << 24)) return;
    int nn = p->n_buckets * 2;
    int32_t *nb = malloc(sizeof(int32_t) * (size_t)nn);
    if (!nb) return;
    free(p->buckets);
    p->buckets = nb;
    p->n_buckets = nn;
    for (int i = 0; i < nn; i++) nb[i] = -1;
    for (int32_t id = 0; id < p->n_blocks; id++)
        if (atomic_load(&blk(p, id)->published)) table_link(p, id);
}

/* ---- lists (under mu) ---- */

static void lru_unlink(kv_pool *p, int32_t id) {
    struct kv_block *b = blk(p, id);
    if (b->prev >= 0) blk(p, b->prev)->next = b->next;
    else p->lru_head = b->next;
    if (b->next >= 0) blk(p, b->next)->prev = b->prev;
    else p->lru_tail = b->prev;
    b->prev = b->next = -1;
    p->st.cached--;
}

static void lru_append(kv_pool *p, int32_t id) {
    struct kv_block *b = blk(p, id);
    b->prev = p->lru_tail;
    b->next = -1;
    if (p->lru_tail >= 0) blk(p, p->lru_tail)->next = id;
    else p->lru_head = id;
    p->lru_tail = id;
    b->where = KVB_CACHED;
    p->st.cached++;
}

static void mark_used(kv_pool *p, int32_t id) {
    struct kv_block *b = blk(p, id);
    b->where = KVB_USED;
    p->st.in_use++;
    if (p->st.in_use > p->st.peak_in_use) p->st.peak_in_use = p->st.in_use;
}

/* Blocks acquire_locked can hand out without failing on the budget. */
static int64_t available_locked(const kv_pool *p) {
    return p->st.free + (p->max_blocks - p->n_blocks) + p->st.cached;
}

/* New memory for one more block id, or -1 when malloc fails. */
static int32_t grow_locked(kv_pool *p) {
    int c = p->n_blocks >> KV_CHUNK_SHIFT;
    if (!p->chunks[c] && !(p->chunks[c] = calloc(CHUNK_LEN, sizeof(struct kv_block)))) return -1;
    uint8_t *data = aligned_alloc(64, p->block_bytes);
    if (!data) return -1;
    int32_t id = p->n_blocks++;
    blk(p, id)->data = data;
    p->st.allocated++;
    p->st.bytes += p->block_bytes;
    if (p->st.bytes > p->st.peak_bytes) p->st.peak_bytes = p->st.bytes;
    return id;
}

/* A block with refs = 1 (contents not cleared): the free list, else new memory
 * within the budget, else (also when malloc fails) the least recently released
 * cached block. -1 when none (*nomem set when it was memory, not the budget). */
static int32_t acquire_locked(kv_pool *p, int *nomem) {
    int32_t id = -1;
    if (p->free_head >= 0) {
        id = p->free_head;
        p->free_head = blk(p, id)->next;
        p->st.free--;
    } else if (p->n_blocks < p->max_blocks && (id = grow_locked(p)) < 0) {
        *nomem = 1;
    }
    if (id < 0) {
        if (p->lru_head < 0) return -1;
        id = p->lru_head;
        lru_unlink(p, id);
        table_unlink(p, id);
        atomic_store(&blk(p, id)->published, 0);
        p->st.published--;
        p->st.evictions++;
    }
    struct kv_block *b = blk(p, id);
    b->prev = b->next = b->hnext = -1;
    atomic_store(&b->refs, 1);
    mark_used(p, id);
    return id;
}

static void ref_locked(kv_pool *p, int32_t id) {
    struct kv_block *b = blk(p, id);
    if (atomic_load(&b->refs) == 0) { /* a cached block comes back */
        ERGO_ASSERT(b->where == KVB_CACHED);
        lru_unlink(p, id);
        mark_used(p, id);
    }
    atomic_fetch_add(&b->refs, 1);
}

static void unref_locked(kv_pool *p, int32_t id) {
    struct kv_block *b = blk(p, id);
    int32_t r = atomic_fetch_sub(&b->refs, 1) - 1;
    ERGO_ASSERT(r >= 0);
    if (r > 0) return;
    p->st.in_use--;
    if (atomic_load(&b->published)) {
        lru_append(p, id);
    } else {
        b->where = KVB_FREE;
        b->next = p->free_head;
        p->free_head = id;
        p->st.free++;
    }
}

/* ---------------------------------------------------------------------------------
 * sequences */

static ergo_status seq_grow(kv_seq *s, int n, ergo_error *err) {
    if (n <= s->cap) return ERGO_OK;
    int cap = s->cap ? s->cap : 16;
    while (cap < n) cap = cap > INT_MAX / 2 ? n : cap * 2;
    int32_t *b = realloc(s->blocks, sizeof(int32_t) * (size_t)cap);
    if (!b) return ergo_fail(err, ERGO_E_NOMEM, "kv cache: out of memory for a block table of %d", n);
    s->blocks = b;
    s->cap = cap;
    return ERGO_OK;
}

/* Copies rows [0, r) of every tile of src into dst (the rest of dst is zero). */
static void copy_rows(const kv_pool *p, int32_t dst, int32_t src, int r) {
    size_t es = kv_dtype_size(p->cfg.dtype), dh = (size_t)p->cfg.head_dim;
    for (int l = 0; l < p->cfg.n_layers; l++)
        for (int g = 0; g < p->cfg.n_kv_heads; g++) {
            uint8_t *o = tile_mut(p, dst, l, g);
            const uint8_t *i = kv_tile(p, src, l, g);
            for (size_t d = 0; d < dh; d++)
                memcpy(o + d * KV_BLOCK * es, i + d * KV_BLOCK * es, (size_t)r * es);
            memcpy(o + KV_BLOCK * dh * es, i + KV_BLOCK * dh * es, (size_t)r * dh * es);
        }
}

ergo_status kv_seq_reserve(kv_pool *p, kv_seq *s, int n_total, ergo_error *err) {
    if (n_total < 0 || n_total > KV_MAX_BLOCKS * KV_BLOCK)
        return ergo_fail(err, ERGO_E_ARG, "kv cache: cannot reserve %d rows (0..%d)", n_total,
                         KV_MAX_BLOCKS * KV_BLOCK);
    if (n_total <= s->n_tokens) return ERGO_OK;
    int need = (n_total + KV_BLOCK - 1) / KV_BLOCK;
    int first = s->n_tokens / KV_BLOCK;
    int end = need < s->n_blocks ? need : s->n_blocks;
    int n_new = need > s->n_blocks ? need - s->n_blocks : 0;
    /* ids: (n_cow + n_new) blocks acquired, then cow_at: (n_cow) indices in s of the
     * blocks to copy before writing, found in one pass (another holder may let go of
     * one meanwhile; then we copy it anyway, which is harmless) */
    int span = end > first ? end - first : 0;
    int32_t small[32];
    int32_t *ids = 2 * span + n_new <= 32 ? small : malloc(sizeof(int32_t) * (size_t)(2 * span + n_new));
    if (!ids) return ergo_fail(err, ERGO_E_NOMEM, "kv cache: out of memory");
    int32_t *cow_at = ids + span + n_new;
    int n_cow = 0;
    for (int i = first; i < end; i++)
        if (!writable(p, s->blocks[i])) cow_at[n_cow++] = i;
    if (!n_cow && !n_new) {
        if (ids != small) free(ids);
        return ERGO_OK;
    }
    if (seq_grow(s, need, err) != ERGO_OK) {
        if (ids != small) free(ids);
        return err ? err->code : ERGO_E_NOMEM;
    }
    int n_get = n_cow + n_new;

    pthread_mutex_lock(&p->mu);
    int64_t avail = available_locked(p);
    if (avail < n_get) {
        kv_pool_stats st = p->st;
        pthread_mutex_unlock(&p->mu);
        if (ids != small) free(ids);
        return ergo_fail(err, ERGO_E_LIMIT,
                         "kv cache: memory budget of %zu bytes (%d blocks of %zu bytes) exhausted: "
                         "%lld blocks in use, %lld free or cached, %d more needed to reach %d rows",
                         p->cfg.budget_bytes, p->max_blocks, p->block_bytes,
                         (long long)st.in_use, (long long)avail, n_get, n_total);
    }
    int nomem = 0, got = 0;
    for (; got < n_get; got++) {
        ids[got] = acquire_locked(p, &nomem);
        if (ids[got] < 0) break;
    }
    if (got < n_get) {
        for (int k = 0; k < got; k++) unref_locked(p, ids[k]);
        pthread_mutex_unlock(&p->mu);
        if (ids != small) free(ids);
        return ergo_fail(err, nomem ? ERGO_E_NOMEM : ERGO_E_LIMIT,
                         "kv cache: %s while reserving %d rows (%zu bytes per block)",
                         nomem ? "out of memory" : "no block available", n_total, p->block_bytes);
    }
    pthread_mutex_unlock(&p->mu);

    /* fill outside the lock: the new blocks are ours alone, the old shared ones are
     * read-only for everybody */
    for (int k = 0; k < n_get; k++) memset(blk(p, ids[k])->data, 0, p->block_bytes);
    for (int k = 0; k < n_cow; k++) {
        int i = cow_at[k];
        int r = s->n_tokens - i * KV_BLOCK;
        r = r < 0 ? 0 : r > KV_BLOCK ? KV_BLOCK : r;
        int32_t old = s->blocks[i];
        copy_rows(p, ids[k], old, r);
        s->blocks[i] = ids[k];
        cow_at[k] = old; /* now: the reference to drop */
    }
    for (int k = 0; k < n_new; k++) s->blocks[s->n_blocks + k] = ids[n_cow + k];
    s->n_blocks += n_new;
    if (n_cow) {
        pthread_mutex_lock(&p->mu);
        for (int k = 0; k < n_cow; k++) unref_locked(p, cow_at[k]);
        p->st.cow_copies += n_cow;
        pthread_mutex_unlock(&p->mu);
    }
    if (ids != small) free(ids);
    return ERGO_OK;
}

void kv_seq_store(kv_pool *p, kv_seq *s, int layer, int row0, int n, const float *k,
                  const float *v) {
    const int KV = p->cfg.n_kv_heads, Dh = p->cfg.head_dim;
    const size_t ld = (size_t)KV * Dh;
    ERGO_ASSERT(layer >= 0 && layer < p->cfg.n_layers && row0 >= 0 && n >= 0 &&
                row0 + n <= s->n_blocks * KV_BLOCK);
    for (int r = row0; r < row0 + n;) {
        int bi = r / KV_BLOCK, j0 = r % KV_BLOCK;
        int cnt = KV_BLOCK - j0 < row0 + n - r ? KV_BLOCK - j0 : row0 + n - r;
        int32_t id = s->blocks[bi];
        ERGO_ASSERT(writable(p, id)); /* kv_seq_reserve first */
        const float *kr = k + (size_t)(r - row0) * ld, *vr = v + (size_t)(r - row0) * ld;
        for (int g = 0; g < KV; g++) {
            uint8_t *t = tile_mut(p, id, layer, g);
            if (p->cfg.dtype == KV_F32) {
                float *kt = (float *)t, *vt = (float *)t + (size_t)KV_BLOCK * Dh;
                for (int d = 0; d < Dh; d++)
                    for (int j = 0; j < cnt; j++)
                        kt[(size_t)d * KV_BLOCK + j0 + j] = kr[(size_t)j * ld + (size_t)g * Dh + d];
                for (int j = 0; j < cnt; j++)
                    memcpy(vt + (size_t)(j0 + j) * Dh, vr + (size_t)j * ld + (size_t)g * Dh,
                           sizeof(float) * (size_t)Dh);
            } else {
                uint16_t *kt = (uint16_t *)t, *vt = (uint16_t *)t + (size_t)KV_BLOCK * Dh;
                for (int d = 0; d < Dh; d++)
                    for (int j = 0; j < cnt; j++)
                        kt[(size_t)d * KV_BLOCK + j0 + j] =
                            f32_to_bf16_one(kr[(size_t)j * ld + (size_t)g * Dh + d]);
                for (int j = 0; j < cnt; j++)
                    for (int d = 0; d < Dh; d++)
                        vt[(size_t)(j0 + j) * Dh + d] =
                            f32_to_bf16_one(vr[(size_t)j * ld + (size_t)g * Dh + d]);
            }
        }
        r += cnt;
    }
}

void kv_seq_read(const kv_pool *p, const kv_seq *s, int layer, int row0, int n, float *k,
                 float *v) {
    const int KV = p->cfg.n_kv_heads, Dh = p->cfg.head_dim;
    const size_t ld = (size_t)KV * Dh;
    ERGO_ASSERT(layer >= 0 && layer < p->cfg.n_layers && row0 >= 0 && n >= 0 &&
                row0 + n <= s->n_blocks * KV_BLOCK);
    for (int i = 0; i < n; i++) {
        int r = row0 + i, j = r % KV_BLOCK;
        for (int g = 0; g < KV; g++) {
            const uint8_t *t = kv_tile(p, s->blocks[r / KV_BLOCK], layer, g);
            float *ko = k + (size_t)i * ld + (size_t)g * Dh, *vo = v + (size_t)i * ld + (size_t)g * Dh;
            for (int d = 0; d < Dh; d++) {
                size_t kat = (size_t)d * KV_BLOCK + j, vat = (size_t)KV_BLOCK * Dh + (size_t)j * Dh + d;
                if (p->cfg.dtype == KV_F32) {
                    ko[d] = ((const float *)t)[kat];
                    vo[d] = ((const float *)t)[vat];
                } else {
                    ko[d] = bf16_to_f32_one(((const uint16_t *)t)[kat]);
                    vo[d] = bf16_to_f32_one(((const uint16_t *)t)[vat]);
                }
            }
        }
    }
}

void kv_seq_commit(kv_seq *s, int n_tokens) {
    ERGO_ASSERT(n_tokens >= s->n_tokens && n_tokens <= s->n_blocks * KV_BLOCK);
    s->n_tokens = n_tokens;
}

int kv_seq_tiles(const kv_pool *p, const kv_seq *s, int layer, int head, int n_rows,
                 const void **tiles) {
    ERGO_ASSERT(n_rows >= 0 && n_rows <= s->n_blocks * KV_BLOCK);
    int nb = (n_rows + KV_BLOCK - 1) / KV_BLOCK;
    for (int i = 0; i < nb; i++) tiles[i] = kv_tile(p, s->blocks[i], layer, head);
    return nb;
}

ergo_status kv_seq_fork(kv_pool *p, kv_seq *dst, const kv_seq *src, ergo_error *err) {
    ERGO_ASSERT(dst != src && dst->n_blocks == 0 && dst->n_tokens == 0);
    int nb = (src->n_tokens + KV_BLOCK - 1) / KV_BLOCK;
    if (seq_grow(dst, nb, err) != ERGO_OK) return err ? err->code : ERGO_E_NOMEM;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < nb; i++) {
        ref_locked(p, src->blocks[i]);
        dst->blocks[i] = src->blocks[i];
    }
    pthread_mutex_unlock(&p->mu);
    dst->n_blocks = nb;
    dst->n_tokens = src->n_tokens;
    return ERGO_OK;
}

void kv_seq_truncate(kv_pool *p, kv_seq *s, int n) {
    ERGO_ASSERT(n >= 0 && n <= s->n_tokens);
    int keep = (n + KV_BLOCK - 1) / KV_BLOCK;
    if (keep < s->n_blocks) {
        pthread_mutex_lock(&p->mu);
        for (int i = s->n_blocks - 1; i >= keep; i--) unref_locked(p, s->blocks[i]);
        pthread_mutex_unlock(&p->mu);
        s->n_blocks = keep;
    }
    s->n_tokens = n;
}

void kv_seq_release(kv_pool *p, kv_seq *s) {
    if (s->n_blocks) {
        pthread_mutex_lock(&p->mu);
        for (int i = s->n_blocks - 1; i >= 0; i--) unref_locked(p, s->blocks[i]);
        pthread_mutex_unlock(&p->mu);
    }
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------------------------
 * prefix cache */

ergo_status kv_seq_publish(kv_pool *p, kv_seq *s, int block_index, const kv_key *key,
                           ergo_error *err) {
    if (block_index < 0 || block_index >= s->n_blocks ||
        (int64_t)(block_index + 1) * KV_BLOCK > s->n_tokens)
        return ergo_fail(err, ERGO_E_ARG,
                         "kv cache: cannot publish block %d of a sequence of %d rows (only full "
                         "blocks: rows [64 i, 64 i + 64) committed)",
                         block_index, s->n_tokens);
    int32_t id = s->blocks[block_index];
    ergo_status rc = ERGO_OK;
    pthread_mutex_lock(&p->mu);
    struct kv_block *b = blk(p, id);
    if (atomic_load(&b->published)) {
        if (memcmp(b->key.b, key->b, 16) != 0)
            rc = ergo_fail(err, ERGO_E_ARG,
                           "kv cache: block %d is already published under another key",
                           block_index);
    } else if (table_find(p, key) < 0) { /* first publisher wins */
        b->key = *key;
        atomic_store(&b->published, 1);
        p->st.published++;
        table_link(p, id);
        table_grow(p);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int kv_pool_match_prefix(kv_pool *p, const kv_key *keys, int n) {
    pthread_mutex_lock(&p->mu);
    int m = 0;
    while (m < n && table_find(p, &keys[m]) >= 0) m++;
    pthread_mutex_unlock(&p->mu);
    return m;
}

int kv_seq_attach_prefix(kv_pool *p, kv_seq *s, const kv_key *keys, int n, ergo_error *err) {
    if (s->n_blocks != 0 || s->n_tokens != 0) {
        ergo_fail(err, ERGO_E_ARG, "kv cache: attach a prefix only to an empty sequence (this "
                                   "one has %d rows)", s->n_tokens);
        return -1;
    }
    if (n < 0 || n > KV_MAX_BLOCKS / 2 || (n && !keys)) {
        ergo_fail(err, ERGO_E_ARG, "kv cache: bad prefix of %d keys", n);
        return -1;
    }
    if (seq_grow(s, n, err) != ERGO_OK) return -1;
    pthread_mutex_lock(&p->mu);
    int m = 0;
    for (; m < n; m++) {
        int32_t id = table_find(p, &keys[m]);
        if (id < 0) break;
        ref_locked(p, id);
        s->blocks[m] = id;
    }
    p->st.prefix_hits += m;
    pthread_mutex_unlock(&p->mu);
    s->n_blocks = m;
    s->n_tokens = m * KV_BLOCK;
    return m;
}

/* ---------------------------------------------------------------------------------
 * consistency check (tests) */

int kv_pool_check(kv_pool *p, const kv_seq *const *seqs, int n_seqs, ergo_error *err) {
    int rc = -1;
    pthread_mutex_lock(&p->mu);
    int32_t *held = calloc((size_t)p->n_blocks + 1, sizeof(int32_t));
    if (!held) {
        ergo_fail(err, ERGO_E_NOMEM, "kv_pool_check: out of memory");
        goto out;
    }
    for (int q = 0; q < n_seqs; q++)
        for (int i = 0; i < seqs[q]->n_blocks; i++) {
            int32_t id = seqs[q]->blocks[i];
            if (id < 0 || id >= p->n_blocks) {
                ergo_fail(err, ERGO_E_FORMAT, "sequence %d block %d: id %d out of range", q, i, id);
                goto out;
            }
            held[id]++;
        }
    int64_t used = 0, pub = 0, nfree = 0, ncached = 0;
    for (int32_t id = 0; id < p->n_blocks; id++) {
        const struct kv_block *b = blk(p, id);
        int32_t r = atomic_load(&b->refs);
        if (seqs && r != held[id]) {
            ergo_fail(err, ERGO_E_FORMAT, "block %d: refcount %d, held by %d tables", id, r, held[id]);
            goto out;
        }
        int want = r > 0 ? KVB_USED : atomic_load(&b->published) ? KVB_CACHED : KVB_FREE;
        if (b->where != want) {
            ergo_fail(err, ERGO_E_FORMAT, "block %d: state %d, expected %d", id, b->where, want);
            goto out;
        }
        used += r > 0;
        if (atomic_load(&b->published)) {
            pub++;
            if (table_find(p, &b->key) != id) {
                ergo_fail(err, ERGO_E_FORMAT, "block %d: published but not found by its key", id);
                goto out;
            }
        }
    }
    for (int32_t id = p->free_head; id >= 0; id = blk(p, id)->next) {
        if (blk(p, id)->where != KVB_FREE || ++nfree > p->n_blocks) {
            ergo_fail(err, ERGO_E_FORMAT, "free list: block %d is not free (or a cycle)", id);
            goto out;
        }
    }
    for (int32_t id = p->lru_head, prev = -1; id >= 0; prev = id, id = blk(p, id)->next) {
        if (blk(p, id)->where != KVB_CACHED || blk(p, id)->prev != prev || ++ncached > p->n_blocks) {
            ergo_fail(err, ERGO_E_FORMAT, "lru list: block %d is not cached or badly linked", id);
            goto out;
        }
        if (blk(p, id)->next < 0 && p->lru_tail != id) {
            ergo_fail(err, ERGO_E_FORMAT, "lru list: tail %d, last block %d", p->lru_tail, id);
            goto out;
        }
    }
    const kv_pool_stats *st = &p->st;
    if (used != st->in_use || pub != st->published || nfree != st->free || ncached != st->cached ||
        st->allocated != p->n_blocks || st->in_use + st->cached + st->free != st->allocated ||
        st->bytes != (size_t)st->allocated * p->block_bytes) {
        ergo_fail(err, ERGO_E_FORMAT,
                  "counters: in_use %lld (walk %lld), published %lld (%lld), free %lld (%lld), "
                  "cached %lld (%lld), allocated %lld (%d blocks), bytes %zu",
                  (long long)st->in_use, (long long)used, (long long)st->published, (long long)pub,
                  (long long)st->free, (long long)nfree, (long long)st->cached,
                  (long long)ncached, (long long)st->allocated, p->n_blocks, st->bytes);
        goto out;
    }
    rc = 0;
out:
    free(held);
    pthread_mutex_unlock(&p->mu);
    return rc;
}
