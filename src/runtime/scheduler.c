/*
 * scheduler.c - continuous batching with chunked prefill (see scheduler.h).
 */
#include "runtime/scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "base/clock.h"

void sched_init(scheduler *sc, const model *m, text_state *st, kv_pool *pool, int tick_rows) {
    memset(sc, 0, sizeof *sc);
    sc->m = m;
    sc->st = st;
    sc->pool = pool;
    sc->tick_rows = tick_rows > 0 ? tick_rows : st->max_tokens;
}

void sched_free(scheduler *sc) {
    for (int i = 0; i < sc->n; i++) sched_cancel(sc, sc->reqs[i]);
    free(sc->reqs);
    free(sc->seqs);
    free(sc->take);
    free(sc->who);
    memset(sc, 0, sizeof *sc);
}

int sched_active(const scheduler *sc) { return sc->n; }

ergo_status sched_submit(scheduler *sc, sched_request *r, ergo_error *err) {
    if (!r->s || r->s->pool != sc->pool || r->s->m != sc->m || !r->logits || !r->out || !r->tok)
        return ergo_fail(err, ERGO_E_ARG,
                         "scheduler: a request needs a session of this model and pool, a "
                         "logits buffer, a tokenizer and a result");
    if (sc->n == sc->cap) { /* the tick's arrays grow with the list, never in a tick */
        const int cap = sc->cap ? 2 * sc->cap : 16;
        sched_request **q = realloc(sc->reqs, sizeof *q * (size_t)cap);
        if (q) sc->reqs = q;
        text_seq *sq = q ? realloc(sc->seqs, sizeof *sq * (size_t)cap) : NULL;
        if (sq) sc->seqs = sq;
        int *t = sq ? realloc(sc->take, sizeof *t * (size_t)cap) : NULL;
        if (t) sc->take = t;
        int *w = t ? realloc(sc->who, sizeof *w * (size_t)cap) : NULL;
        if (w) sc->who = w;
        if (!w) return ergo_fail(err, ERGO_E_NOMEM, "scheduler: out of memory");
        sc->cap = cap;
    }
    ergo_status s = session_prepare(r->s, r->tokens, r->n_tokens, r->grids, r->n_images,
                                    r->vision, r->logits, &r->piece, err);
    if (s) return s;
    r->phase = SCHED_PREFILL;
    r->status = ERGO_OK;
    r->prefilled = 0;
    r->t_submit = now_ms();
    sc->reqs[sc->n++] = r;
    return ERGO_OK;
}

/* Ends r: SCHED_DONE with its result complete. */
static void finish(sched_request *r) {
    if (r->phase == SCHED_DECODE) gen_request_finish(&r->g);
    else if (r->out->reason == STOP_NONE) r->out->reason = STOP_CALLER;
    if (r->phase == SCHED_DECODE && r->g.status && !r->status) {
        r->status = r->g.status;
        r->err = r->g.err;
    }
    r->phase = SCHED_DONE;
}

/* A prompt that stops half way: the session and its cache go back to before submit. */
static void abort_prefill(sched_request *r) {
    session_abort(r->s);
    kv_seq_truncate(r->s->pool, &r->s->kv, r->s->n_cached);
}

void sched_cancel(scheduler *sc, sched_request *r) {
    for (int i = 0; i < sc->n; i++)
        if (sc->reqs[i] == r) {
            if (r->phase == SCHED_PREFILL) abort_prefill(r);
            finish(r);
            sc->reqs[i] = sc->reqs[--sc->n];
            return;
        }
}

/* Rows [c0, c0 + n) of a prepared piece, as one sequence of a forward. */
static text_seq slice(const scheduler *sc, const text_seq *piece, int c0, int n) {
    text_seq q = *piece;
    const text_input *in = &piece->in;
    int pads_before = 0, pads = 0;
    for (int i = 0; in->vision && i < c0 + n; i++)
        if (in->ids[i] == in->image_token_id) {
            if (i < c0) pads_before++;
            else pads++;
        }
    q.in.ids = in->ids + c0;
    for (int a = 0; a < 3; a++) q.in.pos[a] = in->pos[a] + c0;
    q.in.n = n;
    q.in.vision = pads ? in->vision + (size_t)pads_before * sc->m->config.text.hidden : NULL;
    q.in.n_vision = pads;
    q.n_logits = c0 + n == in->n ? 1 : 0; /* the last chunk gives the prompt's logits */
    q.done = q.vision_done = 0;
    return q;
}

ergo_status sched_tick(scheduler *sc, ergo_error *err) {
    if (!sc->n) return ERGO_OK;
    text_seq *seqs = sc->seqs;
    int *take = sc->take, *who = sc->who;
    int n_seqs = 0, rows = 0;
    /* 1. every decoding request chooses its next token */
    for (int i = 0; i < sc->n; i++) {
        sched_request *r = sc->reqs[i];
        take[i] = 0;
        if (r->phase != SCHED_DECODE || !gen_request_choose(&r->g)) continue;
        ergo_status s = session_prepare(r->s, &r->g.next, 1, NULL, 0, NULL, r->logits,
                                        &seqs[n_seqs], &r->g.err);
        if (s) {
            gen_request_fail(&r->g, s, &r->g.err);
            continue;
        }
        who[n_seqs++] = i;
        take[i] = 1;
        rows++;
    }
    /* 2. prompt rows, first come first served, within the tick's budget (at least one
     * row so prompts always progress) */
    int budget = sc->tick_rows - rows;
    if (budget < 1) budget = 1;
    for (int i = 0; i < sc->n && budget > 0; i++) {
        sched_request *r = sc->reqs[i];
        if (r->phase != SCHED_PREFILL) continue;
        int n = r->piece.in.n - r->prefilled;
        if (n > budget) n = budget;
        seqs[n_seqs] = slice(sc, &r->piece, r->prefilled, n);
        who[n_seqs++] = i;
        take[i] = n;
        budget -= n;
        rows += n;
    }
    /* 3. one forward for all of them */
    ergo_error ferr = {0};
    const ergo_status fs = n_seqs ? text_forward_batch(sc->m, sc->st, sc->pool, seqs, n_seqs, &ferr)
                                  : ERGO_OK;
    sc->ticks++;
    sc->rows += rows;
    /* 4. commit: decode tokens appended; prompts advanced, completed ones start decoding */
    for (int k = 0; k < n_seqs; k++) {
        sched_request *r = sc->reqs[who[k]];
        if (r->phase == SCHED_DECODE) {
            if (fs) {
                session_abort(r->s);
                gen_request_fail(&r->g, fs, &ferr);
            } else {
                session_commit(r->s);
            }
            continue;
        }
        if (fs) {
            abort_prefill(r);
            r->status = fs;
            r->err = ferr;
            r->phase = SCHED_DONE;
            continue;
        }
        r->prefilled += take[who[k]];
        if (r->prefilled < r->piece.in.n) continue;
        session_commit(r->s);
        r->prefill_ms = now_ms() - r->t_submit;
        ergo_status s = gen_request_init(&r->g, r->s, r->tok, &r->params, r->logits, r->on_text,
                                         r->ctx, r->out, &r->err);
        if (s) {
            r->status = s;
            r->phase = SCHED_DONE;
        } else {
            r->phase = SCHED_DECODE;
        }
    }
    /* requests that finished leave the list (in order, so first come stays first) */
    int kept = 0;
    for (int i = 0; i < sc->n; i++) {
        sched_request *r = sc->reqs[i];
        if (r->phase == SCHED_DECODE && r->g.finished) finish(r);
        if (r->phase != SCHED_DONE) sc->reqs[kept++] = r;
    }
    sc->n = kept;
    return ERGO_OK;
}
