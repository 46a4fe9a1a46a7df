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

ergo_status generate_run(session *s, text_state *st, const tokenizer *tok,
                         const generate_params *p, float *logits, generate_text_fn on_text,
                         void *ctx, generate_result *out, ergo_error *err) {
    const int V = s->m->config.text.vocab_size;
    sampler sp;
    ergo_status r = sampler_init(&sp, &p->sampling, V, err);
    if (r) return r;
    if (p->max_new_tokens < 0) {
        sampler_free(&sp);
        return ergo_fail(err, ERGO_E_ARG, "max new tokens must be >= 0 (got %d)",
                         p->max_new_tokens);
    }
    tokenizer_stream shown, raw; /* what is printed; what stop strings see */
    tokenizer_stream_init(&shown, tok, 1);
    tokenizer_stream_init(&raw, tok, 0);
    tok_text piece = {0}, all_raw = {0};
    double t0 = now_ms();
    out->reason = STOP_NONE;
    for (int step = 0; out->reason == STOP_NONE; step++) {
        if (step == p->max_new_tokens) {
            out->reason = STOP_LENGTH;
            break;
        }
        /* logits processors + choice, over every token of the sequence so far */
        int32_t next = sampler_next(&sp, logits, s->tokens, (size_t)s->n_cached);
        if ((r = tok_ids_push(&out->tokens, next, err))) break;
        /* stream the text this token completes; ids past the tokenizer's vocabulary
         * (the embedding is padded to 152064, the tokenizer has 151665) have no text:
         * the reference's decode drops them */
        size_t text_len;
        const int known = next < tokenizer_n_ids(tok) && tokenizer_token_text(tok, next, &text_len);
        piece.n = 0;
        if (known && (r = tokenizer_stream_push(&shown, next, &piece, err))) break;
        if (piece.n) {
            if ((r = tok_text_append(&out->text, piece.s, piece.n, err))) break;
            if (on_text && on_text(ctx, piece.s, piece.n)) out->reason = STOP_CALLER;
        }
        /* stopping criteria: eos ids, stop strings, length, context */
        for (int k = 0; k < p->n_stop_ids; k++)
            if (next == p->stop_ids[k]) out->reason = STOP_EOS;
        if (p->n_stop_strings && out->reason == STOP_NONE && known) {
            size_t prev = all_raw.n;
            if ((r = tokenizer_stream_push(&raw, next, &all_raw, err))) break;
            if (all_raw.n > prev &&
                generate_stop_string_hit(all_raw.s, all_raw.n, prev, p->stop_strings,
                                         p->n_stop_strings))
                out->reason = STOP_STRING;
        }
        if (out->reason != STOP_NONE) break;
        if (step + 1 == p->max_new_tokens) {
            out->reason = STOP_LENGTH;
            break;
        }
        if (s->n_cached >= s->max_context) {
            out->reason = STOP_CONTEXT;
            break;
        }
        /* feed the token back: its logits choose the next one */
        if ((r = session_append(s, st, &next, 1, NULL, 0, NULL, logits, err))) break;
    }
    if (!r) {
        piece.n = 0;
        r = tokenizer_stream_finish(&shown, &piece, err);
        if (!r && piece.n) {
            r = tok_text_append(&out->text, piece.s, piece.n, err);
            if (!r && on_text) on_text(ctx, piece.s, piece.n);
        }
    }
    out->decode_ms = now_ms() - t0;
    tok_text_free(&piece);
    tok_text_free(&all_raw);
    sampler_free(&sp);
    return r;
}
