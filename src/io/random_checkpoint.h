/*
 * random_checkpoint.h - test and benchmark checkpoints generated from a seed.
 *
 * Weights are never committed: a case description (a small JSON: config.json
 * content, seed, dtypes, layouts, shards, scale multipliers) is, and both this
 * module and tools/fixtures_checkpoint.py regenerate the same values from the
 * counter-based generator shared with tools/ergo_random.py (src/base/rng.h):
 *
 *   value i of tensor `name` = round_to_dtype(scaled(u)),  u = rng_uniform(
 *       rng_stream_seed(seed, canonical_name), i)
 *
 * with canonical_name the legacy-layout name (so both layouts hold the same
 * values) and, in float32 arithmetic (one rounding per operation):
 *   embed    u * f32(1.0 * embed)                     model.embed_tokens.weight
 *   lm_head  u * f32(lm_head / sqrt(hidden))          lm_head.weight
 *   matrix   u * f32(<part>_matrix / sqrt(fan_in))    linear and conv weights
 *   bias     u * f32(0.02 * <part>_bias)              *.bias
 *   norm     1 + u * f32(0.1 * <part>_norm)           RMSNorm weights
 * where <part> is text or vision and the multipliers come from the case's
 * "scale" object (1.0 when absent); f32(x) rounds a double to float32. Rounding
 * to BF16 / F16 is round-to-nearest-even, as torch's .to(bfloat16).
 *
 * With "init": "reference" the case is a freshly initialised model for training
 * from scratch instead, drawn as the reference's _init_weights draws it (the
 * distribution, not torch's bits): every linear / conv weight, the embedding and an
 * untied head ~ normal(0, initializer_range) (Box-Muller on values 2i and 2i + 1 of
 * the tensor's stream), biases 0, RMSNorm weights 1, and the embedding's
 * pad_token_id row 0 when config.json names one. "scale" does not apply.
 *
 * Case JSON:
 *   {"name": "...", "seed": 1234, "config_layout": "flat"|"nested",
 *    "name_layout": "legacy"|"new", "shards": 1,
 *    "dtype": "bf16" | {"default": "bf16", "norm": "f32", "bias": "f32", ...},
 *    "init": "uniform" (default) | "reference",
 *    "scale": {"embed": 1, "lm_head": 1, "text_matrix": 1, "text_bias": 1, "text_norm": 1,
 *              "vision_matrix": 1, "vision_bias": 1, "vision_norm": 1},
 *    "generation_config": {...} | null (no generation_config.json),
 *    "config": {... config.json, written as is ...}}
 *
 *   ckpt_case c;
 *   ckpt_case_load(&c, "tests/fixtures/checkpoints/cases/tiny.json", &err);
 *   random_checkpoint_write(&c, dir, NULL, &err);   // or random_checkpoint_fill(&m, &c, &err)
 *   ckpt_case_free(&c);
 */
#ifndef ERGO_RANDOM_CHECKPOINT_H
#define ERGO_RANDOM_CHECKPOINT_H

#include <jansson.h>
#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

enum {
    SCALE_EMBED,
    SCALE_LM_HEAD,
    SCALE_TEXT_MATRIX,
    SCALE_TEXT_BIAS,
    SCALE_TEXT_NORM,
    SCALE_VISION_MATRIX,
    SCALE_VISION_BIAS,
    SCALE_VISION_NORM,
    SCALE_COUNT
};

typedef struct ckpt_case {
    char name[128];
    uint64_t seed;
    config_layout config_layout;  /* must match the layout of `config` */
    name_layout name_layout;
    int n_shards;                 /* 1 = model.safetensors, else an index + shards */
    dtype dtypes[WEIGHT_KIND_COUNT]; /* storage dtype per kind (BF16, F16 or F32) */
    double scale[SCALE_COUNT];
    int init_reference;           /* "init": "reference" (see above) */
    double init_std;              /* config's initializer_range (0.02 when absent) */
    int64_t pad_row;              /* config's pad_token_id, -1 when absent */
    json_t *config;               /* config.json content (owned) */
    json_t *generation;           /* generation_config.json content, NULL = no file (owned) */
    model_config parsed;          /* config parsed and validated */
} ckpt_case;

/* Parses a case description (root); `what` names it in messages. */
ergo_status ckpt_case_parse(ckpt_case *c, const json_t *root, const char *what, ergo_error *err);
ergo_status ckpt_case_load(ckpt_case *c, const char *path, ergo_error *err);
void ckpt_case_free(ckpt_case *c);

/* A case for the real 7B shapes with the given depths (benchmarks): flat config,
 * legacy names, BF16, the 7B-Instruct generation config. Vision blocks keep the
 * 7B full-attention indexes that fall inside the depth (block 0 when none do). */
ergo_status ckpt_case_7b(ckpt_case *c, int text_layers, int vision_depth, uint64_t seed,
                         ergo_error *err);

/* The same for Qwen2.5-VL-3B's shapes (hidden 2048, 36/16/2 heads, ffn 11008, vocab
 * 151936, tied embeddings; vision as 7B with out_hidden 2048). */
ergo_status ckpt_case_3b(ckpt_case *c, int text_layers, int vision_depth, uint64_t seed,
                         ergo_error *err);
/* The tiny models trained from scratch here (training.md section 5.7): variant 'a'
 * (text hidden 256, 4 layers, 4 x 64 heads, 2 kv, ffn 768; vision hidden 128, depth
 * 4, 2 x 64 heads, ffn 256, full attention in blocks 1 and 3) or 'b' (384, 6 layers,
 * 6 x 64, ffn 1152; vision 192, depth 6, 3 x 64, ffn 512, full in 2 and 5), with the
 * real vocabulary (152064, tied embeddings), F32 storage and "init": "reference". */
ergo_status ckpt_case_tiny(ckpt_case *c, char variant, uint64_t seed, ergo_error *err);

/* Switches a case to "init": "reference" (make-checkpoint --init). */
void ckpt_case_set_reference_init(ckpt_case *c);

/* The generator's value of element i of one parameter, as float32 before rounding. */
float random_weight_f32(const ckpt_case *c, const weight_spec *sp, uint64_t stream, int64_t i);

/* Writes config.json, generation_config.json (when the case has one), the
 * safetensors file(s) (+ index) into dir (created if needed). When tokenizer_dir
 * is not NULL its tokenizer files are copied too. */
ergo_status random_checkpoint_write(const ckpt_case *c, const char *dir,
                                    const char *tokenizer_dir, ergo_error *err);

/* Fills a model in memory (no file): the same values random_checkpoint_write
 * stores, bound exactly as model_load binds a directory. model_free releases it. */
ergo_status random_checkpoint_fill(model *m, const ckpt_case *c, ergo_error *err);

#endif
