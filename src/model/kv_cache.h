/*
 * kv_cache.h - the language model's keys and values in fixed-size blocks, shared
 * between sequences: fork without copying, copy on write, a prefix cache with
 * least-recently-used eviction under a memory budget.
 *
 * It mirrors vLLM's paged KV cache ("PagedAttention": a block table per sequence,
 * reference-counted blocks, automatic prefix caching keyed by a hash chained over
 * the tokens). Why here: ERGO's two stages, GRPO's G rollouts of one prompt and the
 * server's repeated system prompts all start from a shared prefix; today
 * session_fork deep-copies the whole (L, KV, C, Dh) cache and growing reallocates
 * it. With blocks, growing never moves rows, a fork costs one reference per block,
 * and a finished request leaves its full blocks behind for the next one.
 *
 * Layout. A block holds KV_BLOCK = 64 rows (= ATTN_KTILE, so one block is exactly
 * one key tile of kernels/attention.h) for every layer and kv head. For layer l and
 * kv head g the block holds one tile at element offset (l*KV + g) * 2*Dh*64:
 *     K^T (Dh, 64): element d of key j at [d*64 + j]      (read in place, no transpose)
 *     V   (64, Dh): element d of value j at [64*Dh + j*Dh + d]
 * Elements are f32, or bf16 (round to nearest even of the f32 value, as torch's
 * .to(torch.bfloat16); half.h). Blocks are 64-byte aligned and zero-filled when
 * handed out; rows past a sequence's length are never read by the kernel.
 *
 * Who owns what. The kv_pool owns every block; it is shared by all sequences of
 * one model (any threads: allocation, reference counts and the prefix table are
 * under the pool's mutex). A kv_seq is one sequence's view (its block table) and
 * belongs to one thread at a time. A sequence writes only blocks it holds alone
 * (reference count 1, not published): kv_seq_reserve copies a shared or published
 * block before the first write into it (copy on write), so tile writes and reads
 * need no lock. A sequence that other threads fork from must not change meanwhile.
 *
 * Prefix cache. A full block can be published under a 128-bit key chained over
 * everything before it and in it (kv_block_key: the parent block's key, the 64
 * token ids, and `extra` bytes, e.g. the content hashes and grids of the images
 * whose tokens the block holds, since image tokens share one id). A later sequence
 * with the same keys attaches those blocks instead of recomputing them. A block
 * nobody references stays cached (if published) until its memory is needed: free
 * blocks first, then new memory within the budget, then the least recently
 * released cached block. A referenced block is never evicted. When the hit covers
 * the whole prompt the caller still needs the last token's logits: truncate to
 * n - 1 and run that token again (its block is copied, the published one stays).
 *
 *   kv_pool p;  kv_pool_init(&p, &(kv_pool_config){28, 4, 128, KV_BF16, (size_t)8 << 30}, &err);
 *   kv_seq s = {0};
 *   kv_key keys[8];  int n_full = ...;          // chained keys of the prompt's full blocks
 *   int hit = kv_seq_attach_prefix(&p, &s, keys, n_full, &err);  // rows [0, 64*hit) cached
 *   kv_seq_reserve(&p, &s, n_past + n, &err);   // rows [n_tokens, n_past + n) writable
 *   for each layer l: kv_seq_store(&p, &s, l, n_past, n, k, v);  // k, v (n, KV*Dh)
 *                     nb = kv_seq_tiles(&p, &s, l, g, n_past + n, tiles);  // attend
 *   kv_seq_commit(&s, n_past + n);
 *   kv_seq_publish(&p, &s, i, &keys[i], &err);  // each newly full block i
 *   kv_seq t = {0};  kv_seq_fork(&p, &t, &s, &err);  // t shares every block of s
 *   kv_seq_release(&p, &s);  kv_seq_release(&p, &t);
 *   kv_pool_free(&p);
 */
#ifndef ERGO_KV_CACHE_H
#define ERGO_KV_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define KV_BLOCK 64 /* rows per block (= ATTN_KTILE; kv_cache.c asserts it at compile time) */

typedef enum kv_dtype { KV_F32 = 0, KV_BF16 = 1 } kv_dtype;

/* "f32" / "bf16" (the --kv-dtype values). */
const char *kv_dtype_name(kv_dtype t);
ergo_status kv_dtype_parse(const char *s, kv_dtype *out, ergo_error *err);
/* Bytes of one element. */
size_t kv_dtype_size(kv_dtype t);

typedef struct kv_key {
    uint8_t b[16]; /* SHA-256 truncated to 128 bits */
} kv_key;

/* key = SHA-256(tag, parent key or "no parent", n, tokens (n int32, little endian),
 * extra_len, extra)[0:16]. Chain it block by block: keys[i] = kv_block_key(&keys[i-1],
 * tokens + 64*i, 64, ...). extra may be NULL when extra_len is 0. */
void kv_block_key(kv_key *out, const kv_key *parent, const int32_t *tokens, int n,
                  const void *extra, size_t extra_len);

typedef struct kv_pool_config {
    int n_layers;        /* L: 28 for 7B */
    int n_kv_heads;      /* KV: 4 */
    int head_dim;        /* Dh: 128 */
    kv_dtype dtype;      /* element type of K and V */
    size_t budget_bytes; /* block memory limit (0 = unlimited, up to KV_MAX_BLOCKS) */
} kv_pool_config;

/* Block ids are int32; metadata lives in chunks that never move, so a block's tile
 * pointer can be read without the lock while the pool grows. */
#define KV_CHUNK_SHIFT 10
#define KV_MAX_CHUNKS 4096
#define KV_MAX_BLOCKS (KV_MAX_CHUNKS << KV_CHUNK_SHIFT) /* 4M blocks */

struct kv_block; /* per-block bookkeeping (kv_cache.c) */

typedef struct kv_pool_stats {
    int64_t allocated;     /* blocks with memory = in_use + cached + free */
    int64_t in_use;        /* blocks referenced by some sequence */
    int64_t cached;        /* unreferenced published blocks (the LRU list) */
    int64_t free;          /* unreferenced unpublished blocks ready for reuse */
    int64_t published;     /* blocks in the prefix table (in use or cached) */
    size_t bytes;          /* allocated * block_bytes */
    size_t peak_bytes;     /* the most bytes ever allocated */
    int64_t peak_in_use;   /* the most blocks ever referenced at once */
    int64_t evictions;     /* cached blocks reused for other data */
    int64_t cow_copies;    /* blocks copied on write */
    int64_t prefix_hits;   /* blocks attached from the prefix table */
} kv_pool_stats;

typedef struct kv_pool {
    kv_pool_config cfg;
    size_t block_bytes;     /* L * KV * 2 * Dh * 64 * element size */
    size_t tile_elems;      /* 2 * Dh * 64: one (layer, head) tile */
    int max_blocks;         /* from the budget (KV_MAX_BLOCKS when unlimited) */
    /* bookkeeping below: under mu */
    pthread_mutex_t mu;
    struct kv_block *chunks[KV_MAX_CHUNKS]; /* (KV_MAX_CHUNKS, 1 << KV_CHUNK_SHIFT) */
    int n_blocks;           /* ids [0, n_blocks) exist (have memory) */
    int32_t free_head;      /* singly linked free list (-1 = empty) */
    int32_t lru_head, lru_tail; /* cached blocks, least recently released first */
    int32_t *buckets;       /* (n_buckets) prefix table: chains of block ids, -1 ends */
    int n_buckets;          /* power of two */
    kv_pool_stats st;
} kv_pool;

/* One sequence: rows [0, n_tokens) hold committed keys/values; block i covers rows
 * [64 i, 64 i + 64). Zero-initialise it (kv_seq s = {0}) before first use. */
typedef struct kv_seq {
    int32_t *blocks;  /* (cap) block ids; the first n_blocks are valid */
    int n_blocks;
    int cap;
    int n_tokens;     /* rows filled (kv_seq_commit) */
} kv_seq;

/* Checks the shape (positive sizes, budget >= one block) and sets up an empty pool. */
ergo_status kv_pool_init(kv_pool *p, const kv_pool_config *cfg, ergo_error *err);
/* Frees every block (sequences still holding blocks become invalid). */
void kv_pool_free(kv_pool *p);
/* Bytes of the blocks n_tokens rows take for this shape: ceil(n_tokens/64) blocks. */
size_t kv_pool_bytes_for(int n_layers, int n_kv_heads, int head_dim, kv_dtype dtype,
                         int n_tokens);
/* A consistent snapshot of the counters. */
void kv_pool_stats_get(kv_pool *p, kv_pool_stats *out);
/* Walks every list and reference count and checks them against the counters and,
 * when seqs is not NULL, against those sequences (every block's count must equal
 * how many of their tables hold it: pass all live sequences); 0 if consistent, else
 * -1 with the first mismatch in err. For tests (takes the lock). */
int kv_pool_check(kv_pool *p, const kv_seq *const *seqs, int n_seqs, ergo_error *err);

/* The (layer, head) tile of a block: K^T (Dh, 64) then V (64, Dh), of the pool's
 * dtype. Lock-free; the caller holds a reference to the block. */
const void *kv_tile(const kv_pool *p, int block, int layer, int head);

/* Makes rows [n_tokens, n_total) writable: copies every block from the one holding
 * row n_tokens on that is shared or published (a fresh block with the same valid
 * rows, the rest zero) and appends zeroed blocks up to ceil(n_total/64). Growing
 * never moves existing blocks. ERGO_E_LIMIT when the budget is exhausted and nothing
 * can be evicted, ERGO_E_NOMEM when memory runs out; on failure seq is unchanged. */
ergo_status kv_seq_reserve(kv_pool *p, kv_seq *s, int n_total, ergo_error *err);
/* Writes rows [row0, row0 + n) of one layer: k, v (n, KV*Dh) f32, heads concatenated
 * (the k/v projections' layout), converted to the pool's dtype. The rows must lie in
 * blocks reserved by kv_seq_reserve (asserted). Does not change n_tokens. */
void kv_seq_store(kv_pool *p, kv_seq *s, int layer, int row0, int n, const float *k,
                  const float *v);
/* Reads rows [row0, row0 + n) of one layer back as f32 (n, KV*Dh) (tests, deep copies,
 * the old flat layout). */
void kv_seq_read(const kv_pool *p, const kv_seq *s, int layer, int row0, int n, float *k,
                 float *v);
/* Marks rows [0, n_tokens) as filled: n_tokens must lie in [s->n_tokens, 64*n_blocks]. */
void kv_seq_commit(kv_seq *s, int n_tokens);
/* Fills tiles[i] (ceil(n_rows/64) pointers) with block i's (layer, head) tile and
 * returns their count; n_rows may include stored rows not committed yet (the chunk
 * being run), up to 64*n_blocks. */
int kv_seq_tiles(const kv_pool *p, const kv_seq *s, int layer, int head, int n_rows,
                 const void **tiles);
/* dst (empty) shares the blocks holding src's rows [0, n_tokens): one reference each,
 * no copy. Whichever of the two writes first into a shared partial block copies it.
 * Several threads may fork one src at once if nobody modifies it. */
ergo_status kv_seq_fork(kv_pool *p, kv_seq *dst, const kv_seq *src, ergo_error *err);
/* Keeps rows [0, n) (n <= n_tokens) and releases the blocks past ceil(n/64). */
void kv_seq_truncate(kv_pool *p, kv_seq *s, int n);
/* Drops every reference (last block first, so a cached prefix's tail is evicted
 * before its head) and empties s. */
void kv_seq_release(kv_pool *p, kv_seq *s);

/* Publishes full block i of s (64*(i+1) <= n_tokens) under key. A key already
 * published by another block keeps that block (first publisher wins; this one stays
 * private). ERGO_E_ARG if the block is not full or already published under another
 * key. A published block is never written again (writers copy it). */
ergo_status kv_seq_publish(kv_pool *p, kv_seq *s, int block_index, const kv_key *key,
                           ergo_error *err);
/* How many of keys[0..n) are published, counting from keys[0] (no side effects). */
int kv_pool_match_prefix(kv_pool *p, const kv_key *keys, int n);
/* s must be empty: attaches the longest run keys[0..m) of published blocks (one
 * reference each; cached ones leave the LRU list), sets n_tokens = 64*m and returns
 * m, or -1 (err set) on a bad argument or no memory. */
int kv_seq_attach_prefix(kv_pool *p, kv_seq *s, const kv_key *keys, int n, ergo_error *err);

#endif
