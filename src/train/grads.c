/*
 * grads.c - gradient sets (grads.h).
 */
#include "grads.h"

#include <stdlib.h>
#include <string.h>

int grads_trainable_all(const weight_spec *s, void *ctx) {
    (void)s;
    (void)ctx;
    return 1;
}

/* Calls fn on every parameter of cfg with its slot in g (the spec list's order). */
static ergo_status for_each_spec(model_weights *g, const model_config *cfg, ergo_error *err,
                                 ergo_status (*fn)(const weight_spec *, void *), void *ctx) {
    int n = weights_spec(cfg, NULL, NULL);
    weight_spec *specs = calloc((size_t)n, sizeof *specs);
    if (!specs) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the parameter list");
    weights_spec(cfg, specs, g);
    ergo_status s = ERGO_OK;
    for (int i = 0; i < n && !s; i++) s = fn(&specs[i], ctx);
    free(specs);
    return s;
}

typedef struct alloc_ctx {
    grads_trainable_fn trainable;
    void *ctx;
    ergo_error *err;
} alloc_ctx;

static ergo_status alloc_one(const weight_spec *s, void *p) {
    alloc_ctx *a = p;
    if (!a->trainable(s, a->ctx)) return ERGO_OK;
    float *buf = calloc((size_t)s->numel, sizeof *buf);
    if (!buf)
        return ergo_fail(a->err, ERGO_E_NOMEM, "out of memory for the gradient of %s (%lld floats)",
                         s->name, (long long)s->numel);
    int rows = (int)s->shape[0];
    s->slot->k = (kweight){KDT_F32, buf, s->n_dims > 1 ? rows : 1,
                           (int)(s->n_dims > 1 ? s->numel / rows : s->numel), NULL};
    return ERGO_OK;
}

ergo_status grads_alloc(model_weights *g, const model_config *cfg, grads_trainable_fn trainable,
                        void *ctx, ergo_error *err) {
    ergo_status s = weights_alloc(g, cfg, err);
    if (s) return s;
    alloc_ctx a = {trainable, ctx, err};
    s = for_each_spec(g, cfg, err, alloc_one, &a);
    /* weights_spec lists lm_head only when untied; tied, the head is the embedding */
    if (!s && cfg->text.tie_word_embeddings) g->text.lm_head = g->text.embed;
    if (s) grads_free(g, cfg);
    return s;
}

static ergo_status zero_one(const weight_spec *s, void *p) {
    (void)p;
    float *buf = train_grad(s->slot);
    if (buf) memset(buf, 0, (size_t)s->numel * sizeof *buf);
    return ERGO_OK;
}

void grads_zero(model_weights *g, const model_config *cfg) {
    for_each_spec(g, cfg, NULL, zero_one, NULL);
}

static ergo_status free_one(const weight_spec *s, void *p) {
    (void)p;
    free(train_grad(s->slot));
    s->slot->k.data = NULL;
    return ERGO_OK;
}

void grads_free(model_weights *g, const model_config *cfg) {
    if (g->text.layers && g->vision.blocks) for_each_spec(g, cfg, NULL, free_one, NULL);
    weights_free(g);
}
