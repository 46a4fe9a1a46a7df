/*
 * loss.h - log-probabilities of chosen tokens under the language-model head, at the
 * rows that carry loss only, and their backward (training.md sections 1.7, 2.2).
 *
 * The head has 152k rows in the 7B: its (rows, V) logits are never materialised for
 * a whole sequence. Rows are taken HEAD_CHUNK_ROWS at a time (scratch holds one
 * chunk's logits); the backward recomputes them from h and the saved log-sum-exp.
 * At temperature tau (1 for SFT; GRPO scores rollouts at their sampling temperature):
 *
 *   logp_i = z_{i,t_i}/tau - lse_i,   lse_i = logsumexp_j(z_ij/tau),   z_i = h_i W^T
 *   given g_i = dL/dlogp_i:  dz_ij = g_i (onehot_ij - p_ij) / tau,  p_i = softmax(z_i/tau)
 *   dh (n, D) = dz W;  dW (V, D) += dz^T h   (NULL: frozen head)
 *
 * SFT's token-mean cross entropy over N rows is L = -mean logp, so g_i = -1/N.
 *
 *   float *scratch = malloc(head_scratch_floats(V) * sizeof(float));
 *   head_logprob_forward(logp, lse, h, &lm_head, targets, n, 1.0f, scratch);
 *   head_logprob_backward(dh, dW, g, h, &lm_head, targets, lse, n, 1.0f, scratch);
 */
#ifndef ERGO_LOSS_H
#define ERGO_LOSS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#define HEAD_CHUNK_ROWS 32

/* Floats of scratch the two calls need for a head of `vocab` rows. */
size_t head_scratch_floats(int vocab);

/* h (n, D) final-normed hidden rows; w (V, D) the head (lm_head or the tied
 * embedding, as stored or quantised); targets (n) in [0, V); logp, lse (n). */
void head_logprob_forward(float *logp, float *lse, const float *h, const kweight *w,
                          const int32_t *targets, int n, float tau, float *scratch);
/* g (n) = dL/dlogp; dh (n, D) overwritten; dw (V, D) accumulated or NULL. */
void head_logprob_backward(float *dh, float *dw, const float *g, const float *h,
                           const kweight *w, const int32_t *targets, const float *lse, int n,
                           float tau, float *scratch);

#endif
