/*
 * grads.h - a gradient set: one f32 buffer per trainable parameter, held in a
 * model_weights of the same shapes so that the backward passes name a gradient the
 * way the forward names its weight (g->text.layers[l].q_w beside w->text.layers[l].q_w).
 * A frozen parameter has no buffer (k.data == NULL) and its gradient is not computed.
 *
 *   model_weights g;
 *   grads_alloc(&g, &cfg, grads_trainable_all, NULL, &err);
 *   float *dq = train_grad(&g.text.layers[0].q_w);   // (H*Dh, D) or NULL
 *   grads_zero(&g, &cfg);  ...  grads_free(&g, &cfg);
 */
#ifndef ERGO_GRADS_H
#define ERGO_GRADS_H

#include <stdint.h>

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"

/* The f32 gradient buffer of a weight of a gradient set, or NULL (frozen). */
static inline float *train_grad(const weight *g) { return (float *)(uintptr_t)g->k.data; }

/* Whether a parameter (canonical name, weights_spec) gets a gradient. */
typedef int (*grads_trainable_fn)(const weight_spec *s, void *ctx);
int grads_trainable_all(const weight_spec *s, void *ctx);

/* Allocates g's tables and a zeroed f32 buffer for each parameter `trainable`
 * accepts (the tied head shares the embedding's buffer, as its weight does). */
ergo_status grads_alloc(model_weights *g, const model_config *cfg, grads_trainable_fn trainable,
                        void *ctx, ergo_error *err);
void grads_zero(model_weights *g, const model_config *cfg);
void grads_free(model_weights *g, const model_config *cfg);

#endif
