/*
 * lora.h - LoRA adapters on the language model's linears, as PEFT computes them
 * (training.md section 3.1): y = W x (+ b) + s * B (A x), A (r, in), B (out, r), no
 * bias, s = alpha / r (alpha / sqrt(r) with rsLoRA). A starts as PEFT's
 * kaiming_uniform_(a = sqrt(5)) (uniform in +-1/sqrt(in)), B as zeros, so the adapted
 * model starts equal to the base.
 *
 * Targets are per (layer, linear): the seven linears of each decoder layer; the
 * vision tower is not adapted (VLM-R1's recipe freezes everything named `visual`).
 *
 *   lora_set ls;
 *   lora_set_init(&ls, &cfg.text, 16, 32.0f, LORA_ALL_LINEARS, 0, seed, &err);
 *   lora_linear *q = lora_at(&ls, 3, LORA_Q);     // q->a (r, D) or NULL (not adapted)
 *   lora_set_free(&ls);
 */
#ifndef ERGO_LORA_H
#define ERGO_LORA_H

#include <stdint.h>

#include "base/status.h"
#include "model/config.h"

typedef enum lora_target {
    LORA_Q = 0, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_N_TARGETS
} lora_target;

/* Bit masks of targets. */
#define LORA_BIT(t) (1u << (t))
#define LORA_ALL_LINEARS ((1u << LORA_N_TARGETS) - 1u)

typedef struct lora_linear {
    int in, out;        /* the adapted linear's (cols, rows) */
    float *a;           /* (r, in), NULL when this linear is not adapted */
    float *b;           /* (out, r) */
    float *ga, *gb;     /* gradients of a and b, same shapes (accumulated) */
} lora_linear;

typedef struct lora_set {
    int rank;           /* r */
    float alpha;
    float scale;        /* alpha / r, or alpha / sqrt(r) (rsLoRA) */
    int use_rslora;
    unsigned targets;   /* LORA_BIT mask */
    int n_layers;
    lora_linear *linears; /* (n_layers, LORA_N_TARGETS) */
    int enabled;        /* 0: the forward skips every adapter (the GRPO reference model) */
} lora_set;

/* The module name of a target ("q_proj", ..., "down_proj") and its parent
 * ("self_attn" / "mlp"). */
const char *lora_target_name(lora_target t);
/* A comma list of targets (q, k, v, o, gate, up, down or q_proj, ...; "all") as
 * LORA_BIT bits; 0 when an entry is unknown. */
unsigned lora_targets_parse(const char *list);
const char *lora_target_parent(lora_target t);

/* Allocates adapters for every layer and every target in `targets`, A initialised
 * from the seeded generator as PEFT's kaiming_uniform_(a = sqrt(5)), B zero. */
ergo_status lora_set_init(lora_set *ls, const text_config *cfg, int rank, float alpha,
                          unsigned targets, int use_rslora, uint64_t seed, ergo_error *err);
void lora_set_free(lora_set *ls);
void lora_set_zero_grads(lora_set *ls);

static inline lora_linear *lora_at(const lora_set *ls, int layer, lora_target t) {
    if (!ls || !ls->enabled) return NULL;
    lora_linear *l = &ls->linears[(size_t)layer * LORA_N_TARGETS + t];
    return l->a ? l : NULL;
}

#endif
