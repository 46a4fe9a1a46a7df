/*
 * train_model.c - trainable parameters, masters, gradients and moments (train_model.h).
 */
#include "train_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "train/grads.h"

static const struct {
    const char *name;
    unsigned bit;
} PARTS[] = {{"vision", TRAIN_FREEZE_VISION}, {"merger", TRAIN_FREEZE_MERGER},
             {"embeddings", TRAIN_FREEZE_EMBED}, {"embed", TRAIN_FREEZE_EMBED},
             {"head", TRAIN_FREEZE_HEAD},     {"norms", TRAIN_FREEZE_NORMS},
             {"layers", TRAIN_FREEZE_LAYERS}, {"all", TRAIN_FREEZE_ALL}};

ergo_status train_freeze_parse(const char *list, unsigned *bits, ergo_error *err) {
    *bits = 0;
    const char *p = list;
    while (p && *p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        unsigned found = 0;
        for (size_t i = 0; i < sizeof PARTS / sizeof *PARTS; i++)
            if (strlen(PARTS[i].name) == len && !strncmp(PARTS[i].name, p, len)) found = PARTS[i].bit;
        if (!found)
            return ergo_fail(err, ERGO_E_ARG, "--freeze: unknown part '%.*s' (vision, merger, "
                             "embeddings, head, norms, layers, all)", (int)len, p);
        *bits |= found;
        p = e ? e + 1 : NULL;
    }
    return ERGO_OK;
}

/* The TRAIN_FREEZE_* bit that covers a parameter. */
static unsigned part_of(const weight_spec *s) {
    if (s->kind == WEIGHT_NORM && strncmp(s->name, "visual.merger.", 14)) return TRAIN_FREEZE_NORMS;
    if (!strncmp(s->name, "visual.merger.", 14)) return TRAIN_FREEZE_MERGER;
    if (s->part == PART_VISION) return TRAIN_FREEZE_VISION;
    if (s->kind == WEIGHT_EMBED) return TRAIN_FREEZE_EMBED;
    if (s->kind == WEIGHT_LM_HEAD) return TRAIN_FREEZE_HEAD;
    return TRAIN_FREEZE_LAYERS;
}

static int trainable(const weight_spec *s, void *ctx) {
    const unsigned freeze = *(const unsigned *)ctx;
    /* the vision tower's norms belong to the vision tower too */
    if (s->part == PART_VISION && strncmp(s->name, "visual.merger.", 14) &&
        (freeze & TRAIN_FREEZE_VISION))
        return 0;
    return !(part_of(s) & freeze);
}

/* transformers' Trainer: no weight decay on biases and norm weights. */
static int decays(const weight_spec *s) { return s->kind != WEIGHT_BIAS && s->kind != WEIGHT_NORM; }

void train_model_free(train_model *tm) {
    for (int i = 0; i < tm->n_opt; i++) {
        if (!tm->lora.linears) free(tm->opt[i].w); /* masters (adapters own theirs) */
        free(tm->opt[i].m);
        free(tm->opt[i].v);
    }
    free(tm->opt);
    free(tm->params);
    if (tm->g.text.layers) grads_free(&tm->g, &tm->cfg);
    weights_free(&tm->w);
    lora_set_free(&tm->lora);
    memset(tm, 0, sizeof *tm);
}

static ergo_status add_param(train_model *tm, int cap, const char *name, float *master,
                             float *grad, int64_t numel, int decay, ergo_error *err) {
    if (tm->n_opt >= cap) return ergo_fail(err, ERGO_E_ARG, "parameter table overflow");
    float *m = calloc((size_t)numel, sizeof(float)), *v = calloc((size_t)numel, sizeof(float));
    if (!m || !v) {
        free(m);
        free(v);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the AdamW moments of %s", name);
    }
    train_param *p = &tm->params[tm->n_opt];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->master = master;
    p->numel = numel;
    tm->opt[tm->n_opt++] = (opt_param){master, grad, m, v, (size_t)numel, decay};
    tm->n_trainable += numel;
    return ERGO_OK;
}

ergo_status train_model_init(train_model *tm, const model *base, const train_config *tc,
                             ergo_error *err) {
    memset(tm, 0, sizeof *tm);
    tm->cfg = base->config;
    unsigned freeze = tc->lora_rank > 0 ? TRAIN_FREEZE_ALL : tc->freeze;
    ergo_status s;
    if ((s = weights_alloc(&tm->w, &tm->cfg, err))) return s;
    if ((s = grads_alloc(&tm->g, &tm->cfg, trainable, &freeze, err))) goto fail;
    const int n = weights_spec(&tm->cfg, NULL, NULL);
    weight_spec *bs = calloc((size_t)n, sizeof *bs), *ws = calloc((size_t)n, sizeof *ws),
                *gs = calloc((size_t)n, sizeof *gs);
    int cap = n + (tc->lora_rank > 0 ? 2 * tm->cfg.text.n_layers * LORA_N_TARGETS : 0);
    tm->params = calloc((size_t)cap, sizeof *tm->params);
    tm->opt = calloc((size_t)cap, sizeof *tm->opt);
    if (!bs || !ws || !gs || !tm->params || !tm->opt) {
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for the parameter tables");
        goto done;
    }
    weights_spec(&tm->cfg, bs, (model_weights *)&base->weights);
    weights_spec(&tm->cfg, ws, &tm->w);
    weights_spec(&tm->cfg, gs, &tm->g);
    for (int i = 0; i < n; i++) {
        float *grad = train_grad(gs[i].slot);
        *ws[i].slot = *bs[i].slot; /* frozen: the base's weight as loaded */
        if (!grad) continue;
        const kweight *bk = &bs[i].slot->k;
        if (!bk->data) {
            s = ergo_fail(err, ERGO_E_ARG, "%s: cannot train a parameter whose stored values "
                          "were released (quantised base): freeze it or use LoRA", bs[i].name);
            goto done;
        }
        float *master = malloc((size_t)bs[i].numel * sizeof(float));
        if (!master) {
            s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for the master copy of %s", bs[i].name);
            goto done;
        }
        load_row_f32(master, bk->data, bk->dt, 0, (size_t)bs[i].numel);
        ws[i].slot->k = (kweight){KDT_F32, master, bk->rows, bk->cols, NULL};
        ws[i].slot->t.data = master;
        if ((s = add_param(tm, cap, bs[i].name, master, grad, bs[i].numel, decays(&bs[i]), err))) {
            free(master);
            goto done;
        }
    }
    if (tm->cfg.text.tie_word_embeddings) tm->w.text.lm_head = tm->w.text.embed;
    if (tc->lora_rank > 0) {
        if ((s = lora_set_init(&tm->lora, &tm->cfg.text, tc->lora_rank, tc->lora_alpha,
                               tc->lora_targets, tc->use_rslora, tc->seed, err)))
            goto done;
        for (int l = 0; l < tm->lora.n_layers; l++)
            for (int t = 0; t < LORA_N_TARGETS; t++) {
                lora_linear *x = &tm->lora.linears[(size_t)l * LORA_N_TARGETS + t];
                if (!x->a) continue;
                char name[96];
                const int r = tm->lora.rank;
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.lora_A.weight", l,
                         lora_target_parent((lora_target)t), lora_target_name((lora_target)t));
                if ((s = add_param(tm, cap, name, x->a, x->ga, (int64_t)r * x->in, 1, err)))
                    goto done;
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.lora_B.weight", l,
                         lora_target_parent((lora_target)t), lora_target_name((lora_target)t));
                if ((s = add_param(tm, cap, name, x->b, x->gb, (int64_t)x->out * r, 1, err)))
                    goto done;
            }
    }
done:
    free(bs);
    free(ws);
    free(gs);
    if (!s) return ERGO_OK;
fail:
    train_model_free(tm);
    return s;
}

void train_model_zero_grads(train_model *tm) {
    grads_zero(&tm->g, &tm->cfg);
    if (tm->lora.linears) lora_set_zero_grads(&tm->lora);
}
