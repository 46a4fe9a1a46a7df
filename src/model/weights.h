/*
 * weights.h - the Qwen2.5-VL weights: per-layer structs of tensors, the exact
 * list of tensor names and shapes, and loading a checkpoint into them.
 *
 * Mirrors the parameters of Qwen2_5_VLForConditionalGeneration (transformers
 * 4.56.2, modeling_qwen2_5_vl.py); tests/fixtures/checkpoints records the
 * reference's state_dict names and shapes and the tests hold this list to it.
 * Canonical names are the legacy layout of the published checkpoints
 * (`model.layers.N.*`, `visual.*`); the newer layout (`model.language_model.*`,
 * `model.visual.*`) holds the same tensors under other names. Tensors point
 * into the checkpoint's memory maps (no copy) and keep their stored dtype
 * (BF16, F16 or F32, mixed allowed).
 *
 * Shapes in PyTorch order. D = text hidden, H = heads, KV = kv heads, Dh = head
 * dim, F = text ffn, V = vocab; Dv, Fv = vision hidden, ffn; C = channels,
 * Tp = temporal patch, P = patch, M = merge (M*M*Dv = merger hidden).
 *
 *   model m;
 *   if (model_load(&m, "/models/ergo-7b", &err) != ERGO_OK) ...
 *   m.weights.text.layers[0].q_w.k      // the kernels' view: (H*Dh, D), dtype, twin
 *   model_free(&m);
 */
#ifndef ERGO_WEIGHTS_H
#define ERGO_WEIGHTS_H

#include "base/status.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/config.h"

/* One parameter: the checkpoint's tensor (name, dtype, shape, bytes in the map) and
 * the kernels' view of it (kernels.h kweight), bound together once at load; the
 * forward passes hand `.k` to the kernels, model_quantize gives `.k` its twin. */
typedef struct weight {
    tensor t;
    kweight k;
} weight;

typedef struct vision_block_weights {
    weight norm1;          /* (Dv)          blocks.N.norm1 (RMSNorm) */
    weight qkv_w, qkv_b;   /* (3*Dv, Dv), (3*Dv)   attn.qkv */
    weight proj_w, proj_b; /* (Dv, Dv), (Dv)       attn.proj */
    weight norm2;          /* (Dv)          blocks.N.norm2 (RMSNorm) */
    weight gate_w, gate_b; /* (Fv, Dv), (Fv)       mlp.gate_proj */
    weight up_w, up_b;     /* (Fv, Dv), (Fv)       mlp.up_proj */
    weight down_w, down_b; /* (Dv, Fv), (Dv)       mlp.down_proj */
} vision_block_weights;

typedef struct vision_weights {
    weight patch_embed;          /* (Dv, C, Tp, P, P) = (1280, 3, 2, 14, 14), Conv3d, no bias */
    vision_block_weights *blocks; /* depth */
    weight merger_ln_q;          /* (Dv)            merger.ln_q (RMSNorm) */
    weight merger_fc1_w;         /* (M*M*Dv, M*M*Dv) merger.mlp.0 */
    weight merger_fc1_b;         /* (M*M*Dv) */
    weight merger_fc2_w;         /* (D, M*M*Dv)     merger.mlp.2 */
    weight merger_fc2_b;         /* (D) */
} vision_weights;

typedef struct text_layer_weights {
    weight input_norm;     /* (D)          input_layernorm */
    weight q_w, q_b;       /* (H*Dh, D), (H*Dh)    self_attn.q_proj */
    weight k_w, k_b;       /* (KV*Dh, D), (KV*Dh)  self_attn.k_proj */
    weight v_w, v_b;       /* (KV*Dh, D), (KV*Dh)  self_attn.v_proj */
    weight o_w;            /* (D, H*Dh)   self_attn.o_proj, no bias */
    weight post_norm;      /* (D)          post_attention_layernorm */
    weight gate_w;         /* (F, D)       mlp.gate_proj, no bias */
    weight up_w;           /* (F, D)       mlp.up_proj */
    weight down_w;         /* (D, F)       mlp.down_proj */
} text_layer_weights;

typedef struct text_weights {
    weight embed;               /* (V, D)  embed_tokens */
    text_layer_weights *layers; /* n_layers */
    weight norm;                /* (D)     final RMSNorm */
    weight lm_head;             /* (V, D)  the same data as embed when tied */
} text_weights;

typedef struct model_weights {
    text_weights text;
    vision_weights vision;
} model_weights;

typedef enum name_layout { NAMES_LEGACY = 0, NAMES_NEW = 1 } name_layout;

typedef enum weight_kind {
    WEIGHT_EMBED,   /* model.embed_tokens.weight */
    WEIGHT_LM_HEAD, /* lm_head.weight */
    WEIGHT_MATRIX,  /* linear and conv weights (fan_in = product of all but dim 0) */
    WEIGHT_BIAS,    /* *.bias */
    WEIGHT_NORM,    /* RMSNorm weights (1-D *.weight) */
    WEIGHT_KIND_COUNT
} weight_kind;

typedef enum weight_part { PART_TEXT = 0, PART_VISION = 1 } weight_part;

/* One parameter of the model, as the reference names and shapes it. */
typedef struct weight_spec {
    char name[96];          /* canonical (legacy layout) name */
    weight_kind kind;
    weight_part part;
    int n_dims;
    int64_t shape[5];
    int64_t numel;
    int64_t fan_in;         /* WEIGHT_MATRIX / WEIGHT_LM_HEAD: elements per output row */
    weight *slot;           /* where it binds in a model_weights (NULL if none given) */
} weight_spec;

/* Lists the parameters of cfg in the reference's state_dict order (lm_head.weight
 * only when not tied). Fills out[0..n) when out is not NULL and returns n;
 * slots point into w when w is not NULL (w's layer arrays must be allocated). */
int weights_spec(const model_config *cfg, weight_spec *out, model_weights *w);

/* Allocates w's per-layer arrays for cfg (zeroed tensors). */
ergo_status weights_alloc(model_weights *w, const model_config *cfg, ergo_error *err);
void weights_free(model_weights *w);

/* The name of a canonical tensor in a layout (legacy names are unchanged). */
void weights_layout_name(char *out, size_t size, const char *canonical, name_layout layout);
const char *name_layout_label(name_layout l); /* "legacy" / "new" */

/* Binds every parameter of cfg to the checkpoint's tensor of that name, checking
 * shape and dtype. Detects the name layout (from the embedding's name) into
 * *layout. A tied head binds lm_head to the embedding. */
ergo_status weights_bind(model_weights *w, const model_config *cfg, const checkpoint *ck,
                         name_layout *layout, ergo_error *err);

/* The kernels' element type of a bound weight (weights_bind accepts only BF16, F16, F32). */
kdtype tensor_kdtype(const tensor *t);
/* The kernels' view of a bound tensor: (shape[0], the rest) or (1, n) for a vector. */
kweight kweight_of_tensor(const tensor *t);

/* A loaded checkpoint: the maps the weights point into, its configs, its weights. */
typedef struct model {
    checkpoint ckpt;
    model_config config;
    generation_config generation;
    name_layout names;      /* detected tensor-name layout */
    model_weights weights;
    struct model_quant *quant; /* --weights q8/q4 twins (model/quantize.h), or NULL */
} model;

/* Opens dir, parses and validates both configs, binds and checks every weight. */
ergo_status model_load(model *m, const char *dir, ergo_error *err);
void model_free(model *m);

/* Parameter counts (the tied head counted once, as torch's num_parameters). */
typedef struct param_counts {
    int64_t total, text, vision;
    size_t bytes;           /* bytes of the bound weights (the tied head once) */
} param_counts;
void weights_count(const model_weights *w, const model_config *cfg, param_counts *out);

#endif
