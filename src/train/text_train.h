/*
 * text_train.h - the language model for training: the forward of model/text.c over
 * one whole sequence (no KV cache), keeping what the backward needs, the
 * log-probabilities of the tokens that carry loss, and the backward that turns
 * dL/dlogp into the gradients of every trainable weight, of the LoRA adapters and of
 * the vision rows that replaced the image pads (training.md section 2.2).
 *
 * Mirrors Qwen2_5_VLTextModel.forward + lm_head (transformers 4.56.2) as text.c
 * does: embeddings with the image pads replaced by vision rows in order, per layer
 * RMSNorm -> q/k/v (+ LoRA) -> M-RoPE -> causal GQA (attn_train.h, saving the
 * log-sum-exp) -> o_proj -> residual -> RMSNorm -> SwiGLU -> residual; the final
 * norm and the head only on rows with a target (loss.h, chunked over the vocabulary
 * rows' logits).
 *
 *   text_train_state *ts;  text_train_state_new(&ts, &cfg.text, 2048, lora_rank, 0, &err);
 *   text_train_forward(ts, &w, lora, &sample, 1.0f, logp, &n_logp, &err);
 *   for (i..) g[i] = -1.0f / n_tokens;             // SFT: token-mean cross entropy
 *   text_train_backward(ts, &w, &grads, lora, g, d_vision);
 *
 * Memory: every layer's activations are kept, about (7 D + 2 H Dh + 2 KV Dh + 3 F)
 * floats per token per layer (for 7B ~ 380 KB/token/layer); with recompute only D floats
 * per token per layer plus one layer's worth, which is what long 7B sequences need.
 */
#ifndef ERGO_TEXT_TRAIN_H
#define ERGO_TEXT_TRAIN_H

#include <stdint.h>

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/lora.h"

/* One training sequence. targets[i] is the token position i must predict (the next
 * token of an assistant turn: HF's labels shifted by one), or -1 (no loss). */
typedef struct train_sample {
    const int32_t *ids;      /* (n) */
    const int32_t *pos[3];   /* (n) each: M-RoPE temporal, height, width ids */
    const int32_t *targets;  /* (n) */
    int n;
    const float *vision;     /* (n_vision, D) rows of the image pads, in order, or NULL */
    int n_vision;
    int32_t image_token_id;
} train_sample;

typedef struct text_train_state text_train_state; /* defined in text_train.c */

/* A state for sequences of up to max_tokens tokens and adapters of rank lora_rank
 * (0: no LoRA). recompute: keep only each layer's input and rebuild the layer's
 * activations in the backward (one more forward's compute for about 1/n_layers of
 * the activation memory); the gradients are bit-identical either way. */
ergo_status text_train_state_new(text_train_state **out, const text_config *cfg,
                                 int max_tokens, int lora_rank, int recompute,
                                 ergo_error *err);
void text_train_state_free(text_train_state *st);

/* The forward at temperature tau (the head's logits are divided by it): logp
 * (n_logp) of each target in position order, *n_logp = the number of positions with
 * a target. `lora` may be NULL (or disabled). Checks ids, the vision rows' count and
 * the length. */
ergo_status text_train_forward(text_train_state *st, const model_weights *w,
                               const lora_set *lora, const train_sample *s, float tau,
                               float *logp, int *n_logp, ergo_error *err);

/* The backward of the last forward: g (n_logp) = dL/dlogp. Accumulates into every
 * non-NULL gradient buffer of `grads` (grads.h) and into the adapters' ga/gb; writes
 * d_vision (n_vision, D) = dL/d(vision rows) when not NULL. */
void text_train_backward(text_train_state *st, const model_weights *w, model_weights *grads,
                         const lora_set *lora, const float *g, float *d_vision);

#endif
