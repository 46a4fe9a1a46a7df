/*
 * scheduler.h - many requests on one model: prompt prefills admitted in chunks and
 * every decoding request advanced by one token per tick, all in ONE batched forward
 * per tick (model/text.h), so decode reads the weights once for all requests and a
 * long prompt never freezes running streams.
 *
 * What vLLM's and llama.cpp's servers call continuous batching with chunked prefill,
 * cut to what ergo needs: the server's slots and GRPO's G rollouts sit on it. A
 * tick = (1) each decoding request chooses its next token (gen_request_choose), (2)
 * prompt rows are taken from the requests still prefilling, first come first served,
 * up to the tick's row budget, (3) one text_forward_batch carries all of them,
 * (4) requests whose prompt is complete start decoding from its logits. Every
 * request's tokens are exactly what it gives alone (tests/test_batch.c): the forward's
 * results do not depend on the batch or on where a prompt is cut into chunks.
 *
 * The scheduler owns nothing but its list: requests (and their sessions, results,
 * logits buffers) belong to the caller and must live until they are done or
 * cancelled. All sessions use the scheduler's model and KV pool. One thread drives
 * it (the server's scheduler thread; a trainer's rollout loop).
 *
 *   scheduler sc;  sched_init(&sc, &m, &st, &pool, 64);
 *   sched_request r = {.s = &sess, .tokens = ids, .n_tokens = n, .params = gp,
 *                      .logits = buf, .out = &res};
 *   sched_submit(&sc, &r, &err);
 *   while (sched_active(&sc)) sched_tick(&sc, &err);   // r.phase == SCHED_DONE: r.out
 *   sched_free(&sc);
 */
#ifndef ERGO_SCHEDULER_H
#define ERGO_SCHEDULER_H

#include <stdint.h>

#include "base/status.h"
#include "model/generate.h"
#include "model/session.h"
#include "model/text.h"
#include "tokenizer/tokenizer.h"

typedef enum sched_phase {
    SCHED_QUEUED = 0, /* not submitted */
    SCHED_PREFILL,    /* its prompt piece is being run, in chunks */
    SCHED_DECODE,     /* generating one token per tick */
    SCHED_DONE,       /* finished (out->reason), failed (status) or cancelled */
} sched_phase;

typedef struct sched_request {
    /* set by the caller */
    session *s;                 /* the conversation the piece is appended to */
    const int32_t *tokens;      /* (n_tokens) the prompt piece (n_tokens >= 1) */
    int n_tokens;
    const mrope_grid *grids;    /* (n_images) its images, or NULL */
    int n_images;
    const float *vision;        /* their vision rows (tokens, D), or NULL */
    const tokenizer *tok;
    generate_params params;     /* max_new_tokens 0: prefill only (logits, no decode) */
    generate_text_fn on_text;   /* streamed text, may be NULL */
    void *ctx;
    float *logits;              /* (V) scratch: the last logits */
    generate_result *out;       /* zeroed by the caller */
    /* the scheduler's */
    sched_phase phase;
    ergo_status status;         /* ERGO_OK or why it failed */
    ergo_error err;
    int prefilled;              /* rows of the piece run so far */
    text_seq piece;             /* the prepared piece (session_prepare) */
    gen_request g;
    double prefill_ms;          /* from submit to the end of its prompt */
    double t_submit;
} sched_request;

typedef struct scheduler {
    const model *m;
    text_state *st;
    kv_pool *pool;
    int tick_rows;              /* row budget of a tick (decode rows + prompt rows) */
    sched_request **reqs;       /* (n) submitted and not yet done */
    int n, cap;
    text_seq *seqs;             /* (cap) a tick's sequences */
    int *take, *who;            /* (cap) rows each request gives; request of each sequence */
    int64_t ticks, rows;        /* counters: ticks run, rows forwarded */
} scheduler;

/* tick_rows: rows per tick (e.g. the text_state's max_tokens); at least one prompt row
 * is admitted per tick whatever the number of decoding requests. */
void sched_init(scheduler *sc, const model *m, text_state *st, kv_pool *pool, int tick_rows);
void sched_free(scheduler *sc);

/* Prepares r's prompt piece on its session and queues it. Fails (r untouched, nothing
 * queued) when the piece is refused (context, images) or memory runs out. */
ergo_status sched_submit(scheduler *sc, sched_request *r, ergo_error *err);

/* One tick. Requests that end during it are SCHED_DONE and leave the list (their
 * streams flushed, out complete). Returns ERGO_OK unless the call itself is wrong;
 * a failed forward fails the requests it carried. */
ergo_status sched_tick(scheduler *sc, ergo_error *err);

/* Requests still prefilling or decoding. */
int sched_active(const scheduler *sc);

/* Ends r now (SCHED_DONE, out->reason STOP_CALLER; a half-run prompt is cut back so
 * the session is as before submit). */
void sched_cancel(scheduler *sc, sched_request *r);

#endif
