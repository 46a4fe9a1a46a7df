/*
 * session.c - a conversation's KV cache, history and running M-RoPE position.
 *
 * The piecewise position rule (mrope.c) plus a cache that keeps every earlier
 * key/value is what makes appending a turn equal to prefilling the whole
 * conversation, as the reference's prefill (get_rope_index over everything) and
 * decode (cache_position + rope_deltas) do.
 */
#include "session.h"

#include <stdlib.h>
#include <string.h>

static ergo_status grow_history(session *s, int need, ergo_error *err) {
    if (need <= s->hist_cap) return ERGO_OK;
    int cap = s->hist_cap ? s->hist_cap : 256;
    while (cap < need) cap = cap > (1 << 29) ? need : cap * 2;
    int32_t *t = realloc(s->tokens, (size_t)cap * sizeof *t);
    if (!t) return ergo_fail(err, ERGO_E_NOMEM, "session: out of memory for %d tokens", cap);
    s->tokens = t;
    for (int a = 0; a < 3; a++) {
        int32_t *p = realloc(s->pos[a], (size_t)cap * sizeof *p);
        if (!p) return ergo_fail(err, ERGO_E_NOMEM, "session: out of memory for %d tokens", cap);
        s->pos[a] = p;
    }
    s->hist_cap = cap;
    return ERGO_OK;
}

static ergo_status grow_images(session *s, int need, ergo_error *err) {
    if (need <= s->image_cap) return ERGO_OK;
    int cap = s->image_cap ? s->image_cap * 2 : 8;
    if (cap < need) cap = need;
    mrope_grid *g = realloc(s->grids, (size_t)cap * sizeof *g);
    if (!g) return ergo_fail(err, ERGO_E_NOMEM, "session: out of memory");
    s->grids = g;
    int32_t *st = realloc(s->image_start, (size_t)cap * sizeof *st);
    if (!st) return ergo_fail(err, ERGO_E_NOMEM, "session: out of memory");
    s->image_start = st;
    s->image_cap = cap;
    return ERGO_OK;
}

ergo_status session_init(session *s, const model *m, kv_pool *pool, int max_context,
                         ergo_error *err) {
    memset(s, 0, sizeof *s);
    if (max_context < 1) return ergo_fail(err, ERGO_E_ARG, "session: context %d < 1", max_context);
    const text_config *t = &m->config.text;
    if (!pool || pool->cfg.n_layers != t->n_layers || pool->cfg.n_kv_heads != t->n_kv_heads ||
        pool->cfg.head_dim != t->head_dim)
        return ergo_fail(err, ERGO_E_ARG, "session: the KV pool has another shape than the model");
    s->m = m;
    s->pool = pool;
    s->ids = mrope_ids_from_config(&m->config);
    s->max_context = max_context;
    return ERGO_OK;
}

void session_free(session *s) {
    if (!s) return;
    if (s->pool) kv_seq_release(s->pool, &s->kv);
    free(s->tokens);
    for (int a = 0; a < 3; a++) free(s->pos[a]);
    free(s->grids);
    free(s->image_start);
    memset(s, 0, sizeof *s);
}

int32_t session_last_token(const session *s) {
    return s->n_cached ? s->tokens[s->n_cached - 1] : -1;
}

ergo_status session_prepare(session *s, const int32_t *tokens, int n, const mrope_grid *grids,
                            int n_images, const float *vision, float *logits, text_seq *q,
                            ergo_error *err) {
    ERGO_ASSERT(s->pending_n == 0);
    if (n < 1 || !tokens) return ergo_fail(err, ERGO_E_ARG, "session: nothing to append");
    if (n > s->max_context - s->n_cached)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "%d tokens do not fit in the context: %d of %d already used", n,
                         s->n_cached, s->max_context);
    if (n_images > 0 && !vision)
        return ergo_fail(err, ERGO_E_ARG, "session: %d image(s) but no vision rows", n_images);
    ergo_status r = grow_history(s, s->n_cached + n, err);
    if (!r) r = grow_images(s, s->n_images + n_images, err);
    if (r) return r;

    /* the 3-D position ids of the new tokens, written after the history */
    const int base = s->n_cached;
    int32_t next = s->next_pos;
    int64_t n_vision = 0;
    for (int k = 0; k < n_images; k++) {
        ergo_status g = mrope_check_grid(&grids[k], s->ids.merge, "image", err);
        if (g) return g;
        n_vision += mrope_grid_tokens(&grids[k], s->ids.merge);
    }
    /* positions (3, n), then copied to the history's three arrays */
    int32_t *tmp = malloc((size_t)3 * n * sizeof *tmp);
    if (!tmp) return ergo_fail(err, ERGO_E_NOMEM, "session: out of memory");
    r = mrope_positions(&s->ids, tokens, n, session_last_token(s), grids, n_images, &next, tmp, n,
                        err);
    if (!r) {
        for (int a = 0; a < 3; a++) memcpy(s->pos[a] + base, tmp + (size_t)a * n, n * sizeof *tmp);
    }
    free(tmp);
    if (r) return r;
    memcpy(s->tokens + base, tokens, (size_t)n * sizeof *tokens);
    /* the images, registered after the committed ones (counted in at commit) */
    int pad = 0;
    for (int k = 0; k < n_images; k++) {
        while (pad < n && tokens[pad] != s->ids.image_token_id) pad++;
        s->grids[s->n_images + k] = grids[k];
        s->image_start[s->n_images + k] = base + pad;
        pad += (int)mrope_grid_tokens(&grids[k], s->ids.merge);
    }
    *q = (text_seq){&s->kv,
                    {s->tokens + base, {s->pos[0] + base, s->pos[1] + base, s->pos[2] + base}, n,
                     n_images ? vision : NULL, (int)n_vision, s->ids.image_token_id},
                    logits ? 1 : 0, logits, text_piece_int8(n), 0, 0};
    s->pending_n = n;
    s->pending_images = n_images;
    s->pending_next_pos = next;
    return ERGO_OK;
}

void session_commit(session *s) {
    s->n_cached += s->pending_n;
    s->n_images += s->pending_images;
    s->next_pos = s->pending_next_pos;
    s->pending_n = s->pending_images = 0;
    ERGO_ASSERT(s->kv.n_tokens == s->n_cached);
}

void session_abort(session *s) { s->pending_n = s->pending_images = 0; }

ergo_status session_append(session *s, text_state *st, const int32_t *tokens, int n,
                           const mrope_grid *grids, int n_images, const float *vision,
                           float *logits, ergo_error *err) {
    text_seq q;
    ergo_status r = session_prepare(s, tokens, n, grids, n_images, vision, logits, &q, err);
    if (r) return r;
    /* run the new tokens; keys/values land at rows n_cached .. n_cached+n-1 */
    r = text_forward_batch(s->m, st, s->pool, &q, 1, err);
    if (r) session_abort(s);
    else session_commit(s);
    return r;
}

ergo_status session_fork(session *dst, const session *src, ergo_error *err) {
    ERGO_ASSERT(src->pending_n == 0);
    ergo_status r = session_init(dst, src->m, src->pool, src->max_context, err);
    if (!r) r = grow_history(dst, src->n_cached, err);
    if (!r) r = grow_images(dst, src->n_images, err);
    if (!r) r = kv_seq_fork(src->pool, &dst->kv, &src->kv, err);
    if (r) {
        session_free(dst);
        return r;
    }
    if (src->n_cached) {
        memcpy(dst->tokens, src->tokens, (size_t)src->n_cached * sizeof *src->tokens);
        for (int a = 0; a < 3; a++)
            memcpy(dst->pos[a], src->pos[a], (size_t)src->n_cached * sizeof *src->pos[a]);
    }
    if (src->n_images) {
        memcpy(dst->grids, src->grids, (size_t)src->n_images * sizeof *src->grids);
        memcpy(dst->image_start, src->image_start, (size_t)src->n_images * sizeof(int32_t));
    }
    dst->n_cached = src->n_cached;
    dst->next_pos = src->next_pos;
    dst->n_images = src->n_images;
    return ERGO_OK;
}

ergo_status session_truncate(session *s, int n, ergo_error *err) {
    if (n < 0 || n > s->n_cached)
        return ergo_fail(err, ERGO_E_ARG, "session: cannot keep %d of %d tokens", n, s->n_cached);
    int keep_images = 0;
    for (int k = 0; k < s->n_images; k++) {
        int start = s->image_start[k];
        int end = start + (int)mrope_grid_tokens(&s->grids[k], s->ids.merge);
        if (n > start && n < end)
            return ergo_fail(err, ERGO_E_ARG,
                             "session: keeping %d tokens would cut image %d (tokens %d..%d)", n,
                             k, start, end - 1);
        if (start < n) keep_images = k + 1;
    }
    int32_t mx = -1;
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < n; i++)
            if (s->pos[a][i] > mx) mx = s->pos[a][i];
    kv_seq_truncate(s->pool, &s->kv, n);
    s->n_cached = n;
    s->n_images = keep_images;
    s->next_pos = mx + 1;
    return ERGO_OK;
}
