/*
 * sample.c - greedy choice and sampling with the reference's logits processors
 * (transformers 4.56.2 generation/logits_process.py), in its order.
 */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"

void sampler_config_from_generation(sampler_config *sc, const generation_config *g) {
    sc->do_sample = g->do_sample;
    sc->temperature = (float)g->temperature;
    sc->top_k = g->top_k;
    sc->top_p = (float)g->top_p;
    sc->min_p = (float)g->min_p; /* GenerationConfig.min_p: None (0 here) turns it off */
    sc->repetition_penalty = (float)g->repetition_penalty;
    sc->seed = 0;
}

ergo_status sampler_config_check(const sampler_config *sc, ergo_error *err) {
    if (!(sc->repetition_penalty > 0.0f))
        return ergo_fail(err, ERGO_E_ARG, "repetition penalty must be > 0 (got %g)",
                         (double)sc->repetition_penalty);
    if (!sc->do_sample) return ERGO_OK;
    if (!(sc->temperature > 0.0f))
        return ergo_fail(err, ERGO_E_ARG, "temperature must be > 0 when sampling (got %g); "
                                          "use greedy decoding instead",
                         (double)sc->temperature);
    if (sc->top_k < 0) return ergo_fail(err, ERGO_E_ARG, "top-k must be >= 0 (got %d)", sc->top_k);
    if (!(sc->top_p > 0.0f && sc->top_p <= 1.0f))
        return ergo_fail(err, ERGO_E_ARG, "top-p must be in (0, 1] (got %g)", (double)sc->top_p);
    if (!(sc->min_p >= 0.0f && sc->min_p <= 1.0f))
        return ergo_fail(err, ERGO_E_ARG, "min-p must be in [0, 1] (got %g)", (double)sc->min_p);
    return ERGO_OK;
}

ergo_status sampler_init(sampler *s, const sampler_config *cfg, int vocab, ergo_error *err) {
    memset(s, 0, sizeof *s);
    ergo_status r = sampler_config_check(cfg, err);
    if (r) return r;
    s->cfg = *cfg;
    s->vocab = vocab;
    s->pairs = malloc((size_t)vocab * sizeof *s->pairs);
    s->seen = calloc((size_t)vocab, 1);
    if (!s->pairs || !s->seen) {
        sampler_free(s);
        return ergo_fail(err, ERGO_E_NOMEM, "sampler: out of memory");
    }
    return ERGO_OK;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->pairs);
    free(s->seen);
    memset(s, 0, sizeof *s);
}

void sample_repetition_penalty(float *logits, int vocab, const int32_t *history, size_t n,
                               float penalty, uint8_t *seen) {
    if (penalty == 1.0f) return;
    /* gather / where(score < 0, score * p, score / p) / scatter: once per distinct id */
    for (size_t i = 0; i < n; i++) {
        int32_t t = history[i];
        if (t < 0 || t >= vocab || seen[t]) continue;
        seen[t] = 1;
        float x = logits[t];
        logits[t] = x < 0.0f ? x * penalty : x / penalty;
    }
    for (size_t i = 0; i < n; i++)
        if (history[i] >= 0 && history[i] < vocab) seen[history[i]] = 0;
}

/* ---- the warpers ---- */

/* The k-th largest value of n pairs (1 <= k <= n), by quickselect (reorders a). */
static float kth_largest(sample_pair *a, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1; /* index in descending order */
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2].value;
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i].value > pivot) i++;
            while (a[j].value < pivot) j--;
            if (i <= j) {
                sample_pair t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return a[want].value;
}

/* Ascending by value; among exact ties the lower id sorts later, i.e. counts as the
 * larger one, as argmax prefers the first. (torch.sort's order of exact ties is its
 * own and is not reproduced; real logits rarely tie.) */
static int by_value_then_id(const void *pa, const void *pb) {
    const sample_pair *a = pa, *b = pb;
    if (a->value < b->value) return -1;
    if (a->value > b->value) return 1;
    return (a->id < b->id) - (a->id > b->id);
}

void sample_warp(const sampler_config *cfg, float *x, int vocab, sample_pair *pairs) {
    /* TemperatureLogitsWarper: scores / temperature */
    if (cfg->temperature != 1.0f)
        for (int i = 0; i < vocab; i++) x[i] = x[i] / cfg->temperature;
    /* TopKLogitsWarper: remove scores < the k-th largest (ties at the k-th stay) */
    if (cfg->top_k != 0 && cfg->top_k < vocab) {
        for (int i = 0; i < vocab; i++) pairs[i] = (sample_pair){x[i], i};
        float kth = kth_largest(pairs, vocab, cfg->top_k);
        for (int i = 0; i < vocab; i++)
            if (x[i] < kth) x[i] = -INFINITY;
    }
    /* TopPLogitsWarper: sort ascending, softmax, cumulative sum; remove entries whose
     * cumulative probability is <= 1 - top_p, always keeping the largest */
    if (cfg->top_p < 1.0f) {
        int n = 0;
        for (int i = 0; i < vocab; i++)
            if (x[i] > -INFINITY) pairs[n++] = (sample_pair){x[i], i};
        qsort(pairs, (size_t)n, sizeof *pairs, by_value_then_id);
        if (n > 0) {
            const float mx = pairs[n - 1].value;
            double sum = 0.0;
            for (int j = 0; j < n; j++) sum += (double)expf(pairs[j].value - mx);
            double cum = 0.0;
            const float limit = 1.0f - cfg->top_p;
            for (int j = 0; j < n - 1; j++) {
                cum += (double)expf(pairs[j].value - mx);
                if ((float)(cum / sum) <= limit) x[pairs[j].id] = -INFINITY;
            }
        }
    }
    /* MinPLogitsWarper: remove probabilities < min_p * the top probability, keeping
     * the top one; p_i < min_p * p_top  <=>  exp(x_i - max) < min_p */
    if (cfg->min_p > 0.0f) {
        float mx = -INFINITY;
        int top = -1;
        for (int i = 0; i < vocab; i++)
            if (x[i] > mx) mx = x[i], top = i;
        for (int i = 0; i < vocab; i++)
            if (i != top && x[i] > -INFINITY && expf(x[i] - mx) < cfg->min_p) x[i] = -INFINITY;
    }
}

int32_t sampler_next(sampler *s, float *logits, const int32_t *history, size_t n_history) {
    const int V = s->vocab;
    sample_repetition_penalty(logits, V, history, n_history, s->cfg.repetition_penalty, s->seen);
    if (!s->cfg.do_sample) {
        /* torch.argmax: the first of equal maxima */
        int best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    sample_warp(&s->cfg, logits, V, s->pairs);
    /* softmax over what is left, then one draw in id order with u in [0, 1) */
    float mx = -INFINITY;
    int n = 0;
    for (int i = 0; i < V; i++)
        if (logits[i] > -INFINITY) {
            s->pairs[n++].id = i;
            if (logits[i] > mx) mx = logits[i];
        }
    if (n == 0) return 0; /* every entry -inf or NaN: nothing to choose (torch raises) */
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        s->pairs[j].value = expf(logits[s->pairs[j].id] - mx);
        sum += (double)s->pairs[j].value;
    }
    double u = (double)(rng_u64(s->cfg.seed, s->step++) >> 11) * 0x1p-53 * sum, cum = 0.0;
    for (int j = 0; j < n; j++) {
        cum += (double)s->pairs[j].value;
        if (u < cum) return s->pairs[j].id;
    }
    return s->pairs[n - 1].id;
}
