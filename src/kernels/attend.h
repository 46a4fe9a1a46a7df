/*
 * attend.h - the attention drivers: how each tower hands its queries, keys and values
 * to the tiled kernel (attention.h), threaded over independent work items.
 *
 * Spans (the vision encoder): every query attends to the keys of its span only (a
 * window, or a whole frame in the full-attention blocks, as the reference's
 * cu_seqlens), keys transposed per head (K^T) and values per head in rows. One work
 * item = (head, up to `qrows` queries of a span); each item is computed alone, so
 * the output does not depend on the number of threads.
 *
 * Causal grouped-query attention (the language model): the new queries of several
 * sequences, each against its own paged KV cache (model/kv_cache.h: one block per
 * 64 keys, the tile layout of attention.h). Query heads h share kv head h / rep
 * (repeat_kv), so one work item = (sequence, kv head, up to `qtile` queries): its
 * rep heads x queries go to the tiled kernel as one block of rows, and each K/V tile
 * is read once for all of them. Decode is the same with one query per sequence.
 * Items are independent and each row's result depends only on itself, its causal
 * limit and the tile grid from key 0: a sequence gives the same bits whatever other
 * sequences share the call and however its queries are chunked.
 *
 *   attend_spans(&a, work, n_work, head_major);
 *   attend_causal(&c, segs, n_segs, layer);
 */
#ifndef ERGO_ATTEND_H
#define ERGO_ATTEND_H

#include <stddef.h>
#include <stdint.h>

/* The operands of span attention; h = head, d < Dh, p = patch (N rows). */
typedef struct attend_span_args {
    float *out;        /* (N, ldo): head h of row p at out + p*ldo + h*Dh */
    size_t ldo;
    const float *q;    /* query head h of row p at q + p*ldq + h*Dh */
    size_t ldq;
    const float *kt;   /* (H, Dh, ldkt): K^T per head */
    size_t ldkt;
    const float *v;    /* (H, N, Dh): values per head, rows contiguous */
    int n_rows;        /* N */
    int heads, dh;     /* H, Dh */
    int qrows;         /* queries per work item */
    float *scratch;    /* (n_threads, scratch_floats) */
    size_t scratch_floats; /* >= attn_scratch_floats(qrows, dh) */
    int n_threads;
} attend_span_args;

/* work (n_work, 3): (span start, span length, first query) per item (positions.h
 * order); head_major runs the items of one head consecutively (its K^T and V stay
 * in the shared cache: full attention), else the heads of one item consecutively
 * (they share the item's rows of q and out: windows, measured 20% faster). */
void attend_spans(const attend_span_args *a, const int32_t *work, int n_work, int head_major);

/* One sequence's queries in a causal call. */
typedef struct attend_causal_seq {
    float *out;                /* (n, H*Dh) attention output, heads concatenated */
    const float *q;            /* (n, H*Dh) rotated queries */
    int n;                     /* queries */
    int pos0;                  /* cache row of the first query: query i sees rows 0 .. pos0+i */
    const uint8_t *const *blocks; /* (ceil((pos0+n)/ATTN_KTILE)) base of each KV block of the sequence */
} attend_causal_seq;

typedef struct attend_causal_args {
    int heads, kv_heads, dh;   /* H, KV, Dh */
    int qtile;                 /* queries per work item */
    int kv_bf16;               /* blocks hold bf16 (else f32) */
    size_t head_tile_bytes;    /* bytes of one (layer, head) tile in a block: 2*Dh*64*elem */
    float *scratch;            /* (n_threads, scratch_floats) */
    size_t scratch_floats;     /* >= 2*qtile*rep*Dh + attn_scratch_floats(qtile*rep, Dh) */
    int32_t *limits;           /* (n_threads, qtile*rep) */
    const void **tiles;        /* (n_threads, max_tiles) */
    int max_tiles;             /* blocks a sequence may have */
    int n_threads;
} attend_causal_args;

/* Scratch floats per thread for a causal call (see scratch_floats). */
size_t attend_causal_scratch_floats(int heads, int kv_heads, int dh, int qtile);

/* Layer `layer` (the tile of (layer, kv head g) is at block + (layer*KV + g) *
 * head_tile_bytes) of every sequence. */
void attend_causal(const attend_causal_args *a, const attend_causal_seq *segs, int n_segs,
                   int layer);

#endif
