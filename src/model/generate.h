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
 *   generate_params gp = {sampling, 1024, eos, n_eos, NULL, 0};
 *   generate_result r = {0};
 *   generate_run(&sess, &st, tok, &gp, logits, print_piece, NULL, &r, &err);
 *   generate_result_free(&r);
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
