/*
 * train_model.h - a model being trained: which parameters train (everything, some
 * parts frozen, or LoRA adapters over a frozen base), their f32 master copies,
 * gradients and AdamW moments, and the weights the training passes read.
 *
 * Full training copies every trainable parameter to an f32 master (whatever the
 * checkpoint stores) and points the passes at it; frozen parameters are read from
 * the loaded base as stored (bf16, f16, f32, or a q8/q4 twin). With LoRA the whole
 * base is frozen and only the adapters train (training.md section 3).
 *
 *   train_config tc = {.freeze = TRAIN_FREEZE_VISION | TRAIN_FREEZE_MERGER};
 *   train_model tm;  train_model_init(&tm, &base, &tc, &err);
 *   ... forward/backward into tm.g (and tm.lora) ...
 *   grad_clip_global_norm(tm.opt, tm.n_opt, 1.0f);  adamw_step(tm.opt, tm.n_opt, ...);
 *   train_model_zero_grads(&tm);
 */
#ifndef ERGO_TRAIN_MODEL_H
#define ERGO_TRAIN_MODEL_H

#include <stdint.h>

#include "base/status.h"
#include "model/weights.h"
#include "train/lora.h"
#include "train/optim.h"

/* Parts that can be frozen (--freeze a,b,...). */
enum {
    TRAIN_FREEZE_VISION = 1u << 0,  /* visual.patch_embed and visual.blocks */
    TRAIN_FREEZE_MERGER = 1u << 1,  /* visual.merger */
    TRAIN_FREEZE_EMBED = 1u << 2,   /* model.embed_tokens (and a tied head with it) */
    TRAIN_FREEZE_HEAD = 1u << 3,    /* an untied lm_head */
    TRAIN_FREEZE_NORMS = 1u << 4,   /* every RMSNorm weight */
    TRAIN_FREEZE_LAYERS = 1u << 5,  /* the decoder layers' linears */
    TRAIN_FREEZE_ALL = (1u << 6) - 1u
};

typedef struct train_config {
    unsigned freeze;        /* TRAIN_FREEZE_* bits (LoRA freezes the whole base) */
    int lora_rank;          /* 0: no adapters */
    float lora_alpha;
    unsigned lora_targets;  /* LORA_BIT mask */
    int use_rslora;
    uint64_t seed;          /* the adapters' initialisation */
} train_config;

/* Parses a comma list of part names (vision, merger, embeddings, head, norms, layers,
 * all) into TRAIN_FREEZE_* bits. */
ergo_status train_freeze_parse(const char *list, unsigned *bits, ergo_error *err);

/* One trainable parameter. */
typedef struct train_param {
    char name[96];          /* canonical name (weights_spec), or the adapter's PEFT key */
    float *master;          /* (numel) f32 values the passes read */
    int64_t numel;
} train_param;

typedef struct train_model {
    model_config cfg;
    model_weights w;        /* what the passes read: masters of trainable parameters,
                               the base's weights for frozen ones */
    model_weights g;        /* gradients (grads.h): NULL buffers for frozen parameters */
    train_param *params;    /* (n_opt) trainable parameters, in opt's order */
    opt_param *opt;         /* (n_opt) master, gradient, moments, decay flag */
    int n_opt;
    lora_set lora;          /* adapters when lora_rank > 0 (lora.linears NULL otherwise) */
    int64_t n_trainable;    /* trainable scalars */
} train_model;

/* Sets up training of `base` (which must outlive tm: frozen weights are read from it). */
ergo_status train_model_init(train_model *tm, const model *base, const train_config *tc,
                             ergo_error *err);
void train_model_free(train_model *tm);
void train_model_zero_grads(train_model *tm);

#endif
