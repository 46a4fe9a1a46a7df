/*
 * lora.c - LoRA adapter sets (lora.h).
 */
#include "lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"

static const char *const NAMES[LORA_N_TARGETS] = {"q_proj",    "k_proj",  "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};

const char *lora_target_name(lora_target t) { return t < LORA_N_TARGETS ? NAMES[t] : "?"; }
const char *lora_target_parent(lora_target t) { return t <= LORA_O ? "self_attn" : "mlp"; }

/* (out, in) of a target's linear. */
static void target_shape(const text_config *c, lora_target t, int *out, int *in) {
    const int D = c->hidden, HD = c->n_heads * c->head_dim, KVD = c->n_kv_heads * c->head_dim;
    switch (t) {
    case LORA_Q: *out = HD, *in = D; break;
    case LORA_K:
    case LORA_V: *out = KVD, *in = D; break;
    case LORA_O: *out = D, *in = HD; break;
    case LORA_GATE:
    case LORA_UP: *out = c->ffn, *in = D; break;
    default: *out = D, *in = c->ffn; break;
    }
}

ergo_status lora_set_init(lora_set *ls, const text_config *cfg, int rank, float alpha,
                          unsigned targets, int use_rslora, uint64_t seed, ergo_error *err) {
    memset(ls, 0, sizeof *ls);
    if (rank < 1 || rank > 4096)
        return ergo_fail(err, ERGO_E_ARG, "LoRA rank %d: must be in 1..4096", rank);
    if (!(alpha > 0.0f))
        return ergo_fail(err, ERGO_E_ARG, "LoRA alpha %g: must be positive", (double)alpha);
    if (!(targets & LORA_ALL_LINEARS))
        return ergo_fail(err, ERGO_E_ARG, "LoRA: no target modules");
    ls->rank = rank;
    ls->alpha = alpha;
    ls->use_rslora = use_rslora;
    ls->scale = use_rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    ls->targets = targets & LORA_ALL_LINEARS;
    ls->n_layers = cfg->n_layers;
    ls->enabled = 1;
    ls->linears = calloc((size_t)cfg->n_layers * LORA_N_TARGETS, sizeof *ls->linears);
    if (!ls->linears) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for LoRA adapters");
    for (int l = 0; l < cfg->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            lora_linear *x = &ls->linears[(size_t)l * LORA_N_TARGETS + t];
            target_shape(cfg, (lora_target)t, &x->out, &x->in);
            if (!(ls->targets & LORA_BIT(t))) continue;
            const size_t na = (size_t)rank * x->in, nb = (size_t)x->out * rank;
            x->a = malloc(na * sizeof(float));
            x->b = calloc(nb, sizeof(float));
            x->ga = calloc(na, sizeof(float));
            x->gb = calloc(nb, sizeof(float));
            if (!x->a || !x->b || !x->ga || !x->gb) {
                lora_set_free(ls);
                return ergo_fail(err, ERGO_E_NOMEM, "out of memory for LoRA adapters (rank %d)",
                                 rank);
            }
            /* kaiming_uniform_(a=sqrt(5)) on (r, in): bound = gain * sqrt(3 / fan_in) with
             * gain = sqrt(2 / (1 + 5)), i.e. 1 / sqrt(in) */
            char name[64];
            snprintf(name, sizeof name, "lora.%d.%s.A", l, NAMES[t]);
            const uint64_t s = rng_stream_seed(seed, name);
            const float bound = 1.0f / sqrtf((float)x->in);
            for (size_t i = 0; i < na; i++) x->a[i] = rng_uniform(s, i) * bound;
        }
    return ERGO_OK;
}

void lora_set_zero_grads(lora_set *ls) {
    for (int i = 0; i < ls->n_layers * LORA_N_TARGETS; i++) {
        lora_linear *x = &ls->linears[i];
        if (!x->a) continue;
        memset(x->ga, 0, (size_t)ls->rank * x->in * sizeof(float));
        memset(x->gb, 0, (size_t)x->out * ls->rank * sizeof(float));
    }
}

void lora_set_free(lora_set *ls) {
    if (ls->linears)
        for (int i = 0; i < ls->n_layers * LORA_N_TARGETS; i++) {
            free(ls->linears[i].a);
            free(ls->linears[i].b);
            free(ls->linears[i].ga);
            free(ls->linears[i].gb);
        }
    free(ls->linears);
    memset(ls, 0, sizeof *ls);
}

unsigned lora_targets_parse(const char *list) {
    if (!strcmp(list, "all")) return LORA_ALL_LINEARS;
    unsigned bits = 0;
    static const char *const short_names[LORA_N_TARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        unsigned found = 0;
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const char *full = lora_target_name((lora_target)t);
            if ((strlen(short_names[t]) == len && !strncmp(short_names[t], p, len)) ||
                (strlen(full) == len && !strncmp(full, p, len)))
                found = LORA_BIT(t);
        }
        if (!found) return 0;
        bits |= found;
        if (!e) break;
        p = e + 1;
    }
    return bits;
}
