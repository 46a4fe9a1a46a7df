/*
 * session.h - one conversation with the language model: its KV cache, its token
 * history, its images and the running M-RoPE position.
 *
 * Two counters, because an image's tokens share positions: n_cached is the number
 * of tokens whose keys/values are cached (KV rows), next_pos the rotary position of
 * the next token (the running maximum position + 1, the reference's
 * cache_position + rope_deltas). Appending a piece (a new user turn with its image,
 * a generated token) runs only that piece through the model; the logits equal those
 * of one prefill of the whole conversation (tests/test_session.c holds this to
 * 1e-4). A session can be forked (its KV blocks shared, copied only when one side
 * writes into a shared one: sampling several answers from one prompt, ERGO's two
 * stages) and truncated back to a prefix (prefix reuse).
 *
 * The model is shared read-only; the KV pool (kv_cache.h) is shared by many sessions
 * and must outlive them; the text_state (scratch) is passed to each call and may
 * serve several sessions one at a time. Several sessions advance in one batched
 * forward with session_prepare (each), text_forward_batch, session_commit (each).
 *
 *   session s;  session_init(&s, &m, &pool, 32768, &err);
 *   session_append(&s, &st, ids, n, grids, n_images, vision_rows, logits, &err);
 *   session_append(&s, &st, &next_token, 1, NULL, 0, NULL, logits, &err);
 *   session_free(&s);
 */
#ifndef ERGO_SESSION_H
#define ERGO_SESSION_H

#include <stdint.h>

#include "base/status.h"
#include "model/kv_cache.h"
#include "model/mrope.h"
#include "model/text.h"
#include "model/weights.h"

typedef struct session {
    const model *m;         /* shared, read-only */
    mrope_ids ids;          /* the special ids the position rule needs */
    int max_context;        /* limit on n_cached (tokens) */
    kv_pool *pool;          /* where kv's blocks live (shared) */
    kv_seq kv;              /* the cache: kv.n_tokens == n_cached between calls */
    int n_cached;           /* tokens appended so far = KV rows filled */
    int32_t next_pos;       /* rotary position of the next token: running maximum + 1 */
    int32_t *tokens;        /* (n_cached) token history */
    int32_t *pos[3];        /* (n_cached) each: the t, h, w position ids of every token */
    int hist_cap;           /* allocated entries of tokens and pos */
    mrope_grid *grids;      /* (n_images) image_grid_thw of every image so far */
    int32_t *image_start;   /* (n_images) index of each image's first <|image_pad|> */
    int n_images, image_cap;
    /* a piece prepared but not committed yet (session_prepare) */
    int pending_n, pending_images;
    int32_t pending_next_pos;
} session;

/* An empty session for m whose cache lives in pool (its shape must be the model's),
 * refusing to grow past max_context tokens (>= 1). session_free releases it. */
ergo_status session_init(session *s, const model *m, kv_pool *pool, int max_context,
                         ergo_error *err);
void session_free(session *s);

/* Appends n tokens (n >= 1). The images among them (see mrope_positions: one per
 * <|vision_start|><|image_pad|> pair) have grids (n_images) and vision rows
 * (their merged tokens, in order, (sum of tokens, hidden)), as vision_encode gives
 * them. Writes the last token's logits (V floats) when logits is not NULL. On
 * failure the session is unchanged. Fails with ERGO_E_LIMIT when the tokens do
 * not fit in max_context. */
ergo_status session_append(session *s, text_state *st, const int32_t *tokens, int n,
                           const mrope_grid *grids, int n_images, const float *vision,
                           float *logits, ergo_error *err);

/* Prepares appending n tokens (as session_append) for a batched forward: checks them,
 * writes their positions and ids after the history (not committed) and fills *q
 * (the piece, its cache; n_logits = 1 into logits when logits is not NULL). Then
 * text_forward_batch, then session_commit (or session_abort if the forward failed).
 * The grids and vision rows must stay alive until then. */
ergo_status session_prepare(session *s, const int32_t *tokens, int n, const mrope_grid *grids,
                            int n_images, const float *vision, float *logits, text_seq *q,
                            ergo_error *err);
void session_commit(session *s);
void session_abort(session *s);

/* dst becomes a copy of src sharing its KV blocks (dst must not be initialised;
 * free both; either may append afterwards without changing the other). */
ergo_status session_fork(session *dst, const session *src, ergo_error *err);

/* Keeps the first n tokens (0 <= n <= n_cached); next_pos becomes their maximum
 * position + 1. Cutting through an image's tokens is refused. */
ergo_status session_truncate(session *s, int n, ergo_error *err);

/* The last token appended, or -1 when empty. */
int32_t session_last_token(const session *s);

#endif
