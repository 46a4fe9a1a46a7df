/*
 * sample.h - choosing the next token from logits: greedy or sampling, with the
 * reference's logits processors in the reference's order.
 *
 * Mirrors GenerationMixin._get_logits_processor and _sample (transformers 4.56.2,
 * generation/utils.py, generation/logits_process.py) for what Qwen2.5-VL uses:
 *   1. RepetitionPenaltyLogitsProcessor (every token already in the sequence,
 *      prompt included, once: logit / p when positive, logit * p otherwise),
 *      applied in greedy and sampling mode alike when p != 1;
 *   then, only when sampling (do_sample):
 *   2. TemperatureLogitsWarper (when T != 1), 3. TopKLogitsWarper (when k != 0),
 *   4. TopPLogitsWarper (when p < 1), 5. MinPLogitsWarper (when min_p is set);
 *   6. softmax and one draw. Greedy is argmax (the first of equal maxima).
 * The draw uses the counter-based generator of base/rng.h (value number `step` of
 * the stream `seed`), so a seed gives the same tokens on every machine and thread
 * count; it cannot reproduce torch.multinomial's stream. With Qwen2.5-VL's
 * published config (top_k 1) sampling keeps one candidate and equals greedy.
 *
 *   sampler sp;  sampler_init(&sp, &cfg, vocab, &err);
 *   int32_t next = sampler_next(&sp, logits, history, n_history);  // logits modified
 *   sampler_free(&sp);
 */
#ifndef ERGO_SAMPLE_H
#define ERGO_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "model/config.h"

typedef struct sampler_config {
    int do_sample;            /* 0 = greedy */
    float temperature;        /* 1 = off; > 0 */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off; in (0, 1] */
    float min_p;              /* 0 = off (the reference's None); in [0, 1] */
    float repetition_penalty; /* 1 = off; > 0 */
    uint64_t seed;            /* stream of the draws */
} sampler_config;

/* The reference's defaults for a checkpoint: its generation_config.json
 * (GenerationConfig's defaults where a key is absent), seed 0. */
void sampler_config_from_generation(sampler_config *sc, const generation_config *g);

/* Refuses values the reference refuses (temperature <= 0 when sampling, top_p
 * outside (0, 1], top_k < 0, min_p outside [0, 1], penalty <= 0). */
ergo_status sampler_config_check(const sampler_config *sc, ergo_error *err);

/* A (logit, id) pair: the scratch the warpers sort and select in. */
typedef struct sample_pair {
    float value;
    int32_t id;
} sample_pair;

typedef struct sampler {
    sampler_config cfg;
    int vocab;          /* V */
    uint64_t step;      /* draws so far: the counter of the next draw */
    sample_pair *pairs; /* (V) scratch of the warpers and the draw */
    uint8_t *seen;      /* (V) tokens of the history (scratch, kept zeroed) */
} sampler;

ergo_status sampler_init(sampler *s, const sampler_config *cfg, int vocab, ergo_error *err);
void sampler_free(sampler *s);

/* RepetitionPenaltyLogitsProcessor on one row: each distinct id of history gets
 * logit / penalty (logit > 0) or logit * penalty (otherwise). seen (V) must be
 * zero on entry and is zero on return. */
void sample_repetition_penalty(float *logits, int vocab, const int32_t *history, size_t n,
                               float penalty, uint8_t *seen);

/* Processes logits (V, modified in place: penalty, then the warpers when sampling)
 * and returns the chosen id. history = every token of the sequence so far. */
int32_t sampler_next(sampler *s, float *logits, const int32_t *history, size_t n_history);

/* The warpers alone (temperature, top-k, top-p, min-p) on a row, filtered entries
 * set to -inf, as the reference's processors leave them (for tests). */
void sample_warp(const sampler_config *cfg, float *logits, int vocab, sample_pair *scratch);

#endif
