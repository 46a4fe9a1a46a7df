/*
 * generate.c - the decode loop (GenerationMixin._sample with batch size 1,
 * transformers 4.56.2): logits processors, choice, stopping criteria, streaming.
 */
#include "base/clock.h"
#include "generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *stop_reason_name(stop_reason r) {
    switch (r) {
    case STOP_EOS: return "eos";
    case STOP_STRING: return "stop_string";
    case STOP_LENGTH: return "length";
    case STOP_CONTEXT: return "context";
    case STOP_CALLER: return "caller";
    case STOP_NONE: break;
    }
    return "none";
}

int generate_stop_string_hit(const char *text, size_t len, size_t prev_len,
                             const char *const *stops, int n_stops) {
    for (int k = 0; k < n_stops; k++) {
        size_t m = strlen(stops[k]);
        if (m == 0 || m > len) continue;
        /* occurrences ending after prev_len start at or after prev_len + 1 - m */
        size_t from = prev_len + 1 > m ? prev_len + 1 - m : 0;
        for (size_t i = from; i + m <= len; i++)
            if (memcmp(text + i, stops[k], m) == 0) return 1;
    }
    return 0;
}

void generate_result_free(generate_result *r) {
    if (!r) return;
    tok_ids_free(&r->tokens);
    tok_text_free(&r->text);
    memset(r, 0, sizeof *r);
}

ergo_status gen_request_init(gen_request *g, session *s, const tokenizer *tok,
                             const generate_params *p, float *logits, generate_text_fn on_text,
                             void *ctx, generate_result *out, ergo_error *err) {
    memset(g, 0, sizeof *g);
    if (p->max_new_tokens < 0)
        return ergo_fail(err, ERGO_E_ARG, "max new tokens must be >= 0 (got %d)",
                         p->max_new_tokens);
    ergo_status r = sampler_init(&g->sp, &p->sampling, s->m->config.text.vocab_size, err);
    if (r) return r;
    g->s = s;
    g->tok = tok;
    g->p = *p;
    g->logits = logits;
    g->on_text = on_text;
    g->ctx = ctx;
    g->out = out;
    tokenizer_stream_init(&g->shown, tok, 1);
    tokenizer_stream_init(&g->raw, tok, 0);
    g->t0 = now_ms();
    out->reason = STOP_NONE;
    return ERGO_OK;
}

void gen_request_finish(gen_request *g) {
    if (g->finalized) return;
    g->finalized = 1;
    if (g->status == ERGO_OK) {
        g->piece.n = 0;
        g->status = tokenizer_stream_finish(&g->shown, &g->piece, &g->err);
        if (!g->status && g->piece.n) {
            g->status = tok_text_append(&g->out->text, g->piece.s, g->piece.n, &g->err);
            if (!g->status && g->on_text) g->on_text(g->ctx, g->piece.s, g->piece.n);
        }
    }
    if (g->out->reason == STOP_NONE && g->status == ERGO_OK) g->out->reason = STOP_CALLER;
    g->out->decode_ms = now_ms() - g->t0;
    tok_text_free(&g->piece);
    tok_text_free(&g->all_raw);
    sampler_free(&g->sp);
}

static void finish_with(gen_request *g, stop_reason why) {
    g->out->reason = why;
    g->finished = 1;
}

static void fail_with(gen_request *g, ergo_status s, const ergo_error *e) {
    g->status = s;
    if (e != &g->err) g->err = *e;
    g->finished = 1;
}

void gen_request_fail(gen_request *g, ergo_status s, const ergo_error *e) { fail_with(g, s, e); }

/* Chooses, streams and checks one token of g: what one turn of
 * GenerationMixin._sample's loop does before the forward. Leaves g->next to append
 * unless g finished. */
static void choose_token(gen_request *g) {
    const generate_params *p = &g->p;
    session *s = g->s;
    if (g->step == p->max_new_tokens) {
        finish_with(g, STOP_LENGTH);
        return;
    }
    /* logits processors + choice, over every token of the sequence so far */
    const int32_t next = sampler_next(&g->sp, g->logits, s->tokens, (size_t)s->n_cached);
    ergo_status r = tok_ids_push(&g->out->tokens, next, &g->err);
    if (r) {
        fail_with(g, r, &g->err);
        return;
    }
    g->step++;
    /* stream the text this token completes; ids past the tokenizer's vocabulary
     * (the embedding is padded to 152064, the tokenizer has 151665) have no text:
     * the reference's decode drops them */
    size_t text_len;
    const int known =
        next < tokenizer_n_ids(g->tok) && tokenizer_token_text(g->tok, next, &text_len);
    g->piece.n = 0;
    if (known) r = tokenizer_stream_push(&g->shown, next, &g->piece, &g->err);
    if (!r && g->piece.n) r = tok_text_append(&g->out->text, g->piece.s, g->piece.n, &g->err);
    if (r) {
        fail_with(g, r, &g->err);
        return;
    }
    if (g->piece.n && g->on_text && g->on_text(g->ctx, g->piece.s, g->piece.n)) {
        finish_with(g, STOP_CALLER);
        return;
    }
    /* stopping criteria: eos ids, stop strings, length, context */
    for (int k = 0; k < p->n_stop_ids; k++)
        if (next == p->stop_ids[k]) {
            finish_with(g, STOP_EOS);
            return;
        }
    if (p->n_stop_strings && known) {
        const size_t prev = g->all_raw.n;
        if ((r = tokenizer_stream_push(&g->raw, next, &g->all_raw, &g->err))) {
            fail_with(g, r, &g->err);
            return;
        }
        if (g->all_raw.n > prev && generate_stop_string_hit(g->all_raw.s, g->all_raw.n, prev,
                                                            p->stop_strings, p->n_stop_strings)) {
            finish_with(g, STOP_STRING);
            return;
        }
    }
    if (g->step == p->max_new_tokens) finish_with(g, STOP_LENGTH);
    else if (s->n_cached >= s->max_context) finish_with(g, STOP_CONTEXT);
    else g->next = next;
}

int gen_request_choose(gen_request *g) {
    if (!g->finished) choose_token(g);
    return !g->finished;
}

/* One batched forward appending each fed request's token; failures finish them. */
static void feed(gen_request *const *fed, text_seq *seqs, int n_fed, text_state *st) {
    if (!n_fed) return;
    ergo_error ferr = {0};
    const ergo_status r = text_forward_batch(fed[0]->s->m, st, fed[0]->s->pool, seqs, n_fed, &ferr);
    for (int k = 0; k < n_fed; k++) {
        if (r) {
            session_abort(fed[k]->s);
            gen_request_fail(fed[k], r, &ferr);
        } else {
            session_commit(fed[k]->s);
        }
    }
}

ergo_status generate_step(gen_request *const *reqs, int n, text_state *st, int *n_running,
                          ergo_error *err) {
    if (n < 0 || (n && !reqs)) return ergo_fail(err, ERGO_E_ARG, "generate_step: no requests");
    text_seq seqs[GEN_STEP_MAX];
    gen_request *fed[GEN_STEP_MAX];
    for (int i0 = 0; i0 < n; i0 += GEN_STEP_MAX) {
        const int i1 = i0 + GEN_STEP_MAX < n ? i0 + GEN_STEP_MAX : n;
        int n_fed = 0;
        for (int i = i0; i < i1; i++) {
            gen_request *g = reqs[i];
            if (!gen_request_choose(g)) continue;
            ergo_status r = session_prepare(g->s, &g->next, 1, NULL, 0, NULL, g->logits,
                                            &seqs[n_fed], &g->err);
            if (r) gen_request_fail(g, r, &g->err);
            else fed[n_fed++] = g;
        }
        /* feed the tokens back: their logits choose the next ones */
        feed(fed, seqs, n_fed, st);
    }
    int running = 0;
    for (int i = 0; i < n; i++) running += !reqs[i]->finished;
    *n_running = running;
    return ERGO_OK;
}

ergo_status generate_run(session *s, text_state *st, const tokenizer *tok,
                         const generate_params *p, float *logits, generate_text_fn on_text,
                         void *ctx, generate_result *out, ergo_error *err) {
    gen_request g;
    ergo_status r = gen_request_init(&g, s, tok, p, logits, on_text, ctx, out, err);
    if (r) return r;
    gen_request *set[1] = {&g};
    int running = 1;
    while (running && !(r = generate_step(set, 1, st, &running, err))) {
    }
    gen_request_finish(&g);
    if (!r && g.status) {
        r = g.status;
        *err = g.err;
    }
    return r;
}
