/*
 * config.h - the Qwen2.5-VL configuration: text_config, vision_config and
 * generation_config, parsed from config.json / generation_config.json and validated.
 *
 * Mirrors Qwen2_5_VLConfig, Qwen2_5_VLTextConfig and Qwen2_5_VLVisionConfig
 * (transformers 4.56.2, configuration_qwen2_5_vl.py), including their defaults
 * for absent keys, and GenerationConfig for generation_config.json. Both layouts
 * are read: the flat one (text fields at the top level, `vision_config` nested,
 * as Qwen2.5-VL was published) and the nested one (`text_config` + `vision_config`,
 * as transformers >= 4.52 saves it). Values that would make the reference fail
 * or that ergo does not implement are refused here, once, with a message
 * naming the file and the key.
 *
 *   model_config cfg;
 *   json_t *j = json_load_path("config.json", &err);
 *   if (model_config_parse(&cfg, j, "config.json", &err) != ERGO_OK) ...
 */
#ifndef ERGO_CONFIG_H
#define ERGO_CONFIG_H

#include <jansson.h>
#include <stdint.h>

#include "base/status.h"

#define VISION_MAX_FULL_ATTN 64
#define GEN_MAX_EOS 16

typedef enum config_layout { CONFIG_FLAT = 0, CONFIG_NESTED = 1 } config_layout;

typedef struct text_config {
    int vocab_size;       /* 152064 */
    int hidden;           /* hidden_size, 3584 */
    int ffn;              /* intermediate_size, 18944 */
    int n_layers;         /* num_hidden_layers, 28 */
    int n_heads;          /* num_attention_heads, 28 */
    int n_kv_heads;       /* num_key_value_heads, 4 */
    int head_dim;         /* hidden / n_heads, 128 (the reference ignores any head_dim key) */
    double rms_eps;       /* rms_norm_eps, 1e-6 */
    double rope_theta;    /* 1e6 */
    int mrope_section[3]; /* rope_scaling.mrope_section, [16, 24, 24]; sums to head_dim / 2 */
    int max_position_embeddings; /* 128000 */
    int tie_word_embeddings;     /* 0 for 7B (lm_head.weight stored), 1 for 3B */
} text_config;

typedef struct vision_config {
    int depth;              /* 32 */
    int hidden;             /* hidden_size, 1280 */
    int n_heads;            /* num_heads, 16 */
    int head_dim;           /* hidden / n_heads, 80 */
    int ffn;                /* intermediate_size, 3420 */
    int in_channels;        /* 3 */
    int patch;              /* patch_size, 14 */
    int temporal_patch;     /* temporal_patch_size, 2 */
    int merge;              /* spatial_merge_size, 2 */
    int window;             /* window_size in pixels, 112 */
    int out_hidden;         /* out_hidden_size, 3584 = text hidden */
    int tokens_per_second;  /* 2 (video only) */
    double rms_eps;         /* 1e-6, fixed in the reference's vision blocks and merger */
    int n_full_attn;        /* number of full-attention blocks, 4 */
    int full_attn_blocks[VISION_MAX_FULL_ATTN]; /* fullatt_block_indexes, [7, 15, 23, 31] */
} vision_config;

typedef struct model_config {
    config_layout layout;   /* which config.json layout was read */
    text_config text;
    vision_config vision;
    int image_token_id;     /* 151655 */
    int video_token_id;     /* 151656 */
    int vision_start_token_id; /* 151652, -1 when absent */
    int vision_end_token_id;   /* 151653, -1 when absent */
} model_config;

/* Sampling defaults of generation_config.json (GenerationConfig defaults when absent). */
typedef struct generation_config {
    int from_file;          /* 1 when generation_config.json was read */
    int do_sample;          /* default 0 */
    double temperature;     /* default 1.0 */
    int top_k;              /* default 50 */
    double top_p;           /* default 1.0 */
    double min_p;           /* default None, stored as 0 (off) */
    double repetition_penalty; /* default 1.0 */
    int max_new_tokens;     /* -1 = unset (default) */
    int max_length;         /* default 20 */
    int n_eos;              /* eos_token_id: an int or a list */
    int eos_token_ids[GEN_MAX_EOS];
    int pad_token_id;       /* -1 = unset */
    int bos_token_id;       /* -1 = unset */
} generation_config;

/* Parses and validates config.json (root = its JSON); `path` names it in messages. */
ergo_status model_config_parse(model_config *cfg, const json_t *root, const char *path,
                               ergo_error *err);

/* Checks the invariants the model code relies on (called by model_config_parse;
 * exposed for configs built in code). */
ergo_status model_config_validate(const model_config *cfg, const char *path, ergo_error *err);

/* Parses generation_config.json (gen_root, may be NULL when the file is absent).
 * When it is absent, transformers builds the generation config from the model
 * config (GenerationConfig.from_model_config): so do we, from config_root's
 * top level and then its text_config. */
ergo_status generation_config_parse(generation_config *gen, const json_t *gen_root,
                                    const json_t *config_root, const char *path,
                                    ergo_error *err);

/* 1 when vision block l attends over the whole image (l in fullatt_block_indexes). */
int vision_layer_is_full_attention(const vision_config *v, int l);

/* The 7B shapes (config.json of Qwen2.5-VL-7B-Instruct), for benchmarks and tests. */
void model_config_7b(model_config *cfg);

/* Writes cfg as config.json content in the given layout (caller json_decref's). */
json_t *model_config_to_json(const model_config *cfg, config_layout layout, int rope_type_default);

#endif
