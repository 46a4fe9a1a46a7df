/*
 * generate.h - the decode loop: choose a token, stream its text, stop or feed it
 * back into the session, as GenerationMixin._sample does (transformers 4.56.2).
 *
 * Stopping, checked after each token as the reference's stopping criteria are:
 * a stop id (eos_token_id, a list) -> "eos"; a stop string that the new token
 * completes (StopStringCriteria: the string must overlap the last token) ->
 * "stop_string"; max_new_tokens reached -> "length"; the session's context full
 * -> "context". The stopping token is part of the result (the reference returns
 * it too) but is not appended to the session: a caller that continues the
 * conversation appends what its template puts there.
 * Text is streamed as complete UTF-8 only (tokenizer_stream), special tokens
 * skipped, as processor.batch_decode(skip_special_tokens=True) prints it. Stop
 * strings are matched on the decoded text with special tokens kept.
 *
 * Batch first: a gen_request is one sequence being generated; generate_step advances
 * a set of them by one token each (choose, stream, check stops) and appends the
 * tokens of those that go on in ONE batched forward (text_forward_batch: the weights
 * are read once for all of them). Each request's tokens are exactly what it gives
 * alone. generate_run is the single-request loop on top.
 *
 *   generate_params gp = {sampling, 1024, eos, n_eos, NULL, 0};
 *   generate_result r = {0};
 *   generate_run(&sess, &st, tok, &gp, logits, print_piece, NULL, &r, &err);
 *   generate_result_free(&r);
 *
 *   gen_request g[B];  gen_request *set[B];   // B sessions prefilled, logits[b] each
 *   for b: gen_request_init(&g[b], &sess[b], tok, &gp, logits[b], NULL, NULL, &res[b], &err);
 *   int running = B;
 *   while (running) generate_step(set, B, &st, &running, &err);
 *   for b: gen_request_finish(&g[b]);   // then g[b].status, res[b]
 */
#ifndef ERGO_GENERATE_H
#define ERGO_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "model/sample.h"
#include "model/session.h"
#include "tokenizer/tokenizer.h"

typedef enum stop_reason {
    STOP_NONE = 0,
    STOP_EOS,     /* a stop token id was generated */
    STOP_STRING,  /* a stop string was completed */
    STOP_LENGTH,  /* max_new_tokens generated */
    STOP_CONTEXT, /* the session's context is full */
    STOP_CALLER,  /* the text callback asked to stop */
} stop_reason;

const char *stop_reason_name(stop_reason r); /* "eos", "stop_string", "length", ... */

typedef struct generate_params {
    sampler_config sampling;
    int max_new_tokens;               /* >= 0 */
    const int32_t *stop_ids;          /* (n_stop_ids), e.g. [151645, 151643] */
    int n_stop_ids;
    const char *const *stop_strings;  /* (n_stop_strings) UTF-8, non-empty */
    int n_stop_strings;
} generate_params;

/* Receives text as soon as the tokens complete it; a non-zero return stops. */
typedef int (*generate_text_fn)(void *ctx, const char *text, size_t len);

typedef struct generate_result {
    tok_ids tokens;    /* the generated ids, the stopping one included */
    tok_text text;     /* their text, special tokens skipped */
    stop_reason reason;
    double decode_ms;  /* time spent choosing tokens and running them (excludes prefill) */
} generate_result;

/* Requests per batched forward of generate_step (more run in groups of this many). */
#define GEN_STEP_MAX 64

/* One sequence being generated (fields below `out` are the loop's own). */
typedef struct gen_request {
    session *s;
    const tokenizer *tok;
    generate_params p;          /* copied; the strings and ids it points to must live on */
    float *logits;              /* (V) the last piece's logits; overwritten by each step */
    generate_text_fn on_text;   /* may be NULL */
    void *ctx;
    generate_result *out;       /* zeroed by the caller; filled as tokens come */
    ergo_status status;         /* ERGO_OK, or why this request stopped failing */
    ergo_error err;
    int finished;               /* out->reason is set (or status failed) */
    int step;                   /* tokens chosen so far */
    int32_t next;               /* the token the next forward appends */
    sampler sp;
    tokenizer_stream shown, raw; /* what is printed; what stop strings see */
    tok_text piece, all_raw;
    double t0;
    int finalized;
} gen_request;

/* Sets up one request on a session whose last appended piece gave `logits`. */
ergo_status gen_request_init(gen_request *g, session *s, const tokenizer *tok,
                             const generate_params *p, float *logits, generate_text_fn on_text,
                             void *ctx, generate_result *out, ergo_error *err);
/* Flushes the text streams into out, sets decode_ms, releases the loop's state
 * (call once per request, finished or not; a request cut short gets STOP_CALLER). */
void gen_request_finish(gen_request *g);

/* The first half of a step for one request (for schedulers that add other rows to the
 * step's forward): chooses, streams and checks its next token; 1 when that token
 * (g->next) must now be appended to its session (session_prepare with g->logits as
 * the logits, a batched forward, session_commit), 0 when the request finished. */
int gen_request_choose(gen_request *g);
/* Finishes a request with a failure (e.g. the forward that carried its token). */
void gen_request_fail(gen_request *g, ergo_status s, const ergo_error *e);

/* One token for every unfinished request of reqs (n of them), then one batched
 * forward for those that continue. *n_running = requests still unfinished. A failure
 * of one request (its callback, tokenizer) finishes it with its status; a failed
 * forward finishes every request it carried with that error. Returns ERGO_OK
 * unless the call itself is wrong. */
ergo_status generate_step(gen_request *const *reqs, int n, text_state *st, int *n_running,
                          ergo_error *err);

/* Generates from a session whose last appended piece gave `logits` (V floats; used
 * as scratch, overwritten). Appends each chosen token that does not stop the run
 * to the session. on_text may be NULL. out must be zeroed (free it with
 * generate_result_free). */
ergo_status generate_run(session *s, text_state *st, const tokenizer *tok,
                         const generate_params *p, float *logits, generate_text_fn on_text,
                         void *ctx, generate_result *out, ergo_error *err);
void generate_result_free(generate_result *r);

/* StopStringCriteria on decoded text: 1 when some stop string occurs in text and
 * ends after byte `prev_len` (i.e. overlaps the text the last token added). */
int generate_stop_string_hit(const char *text, size_t len, size_t prev_len,
                             const char *const *stops, int n_stops);

#endif
