/*
 * lora_adapter.h - LoRA adapters as PEFT saves them (adapter_config.json +
 * adapter_model.safetensors), checked against a model's config and merged into its
 * weights: W' = round_to_stored_dtype(W + s * (B @ A)), in f32 as PEFT's
 * merge_and_unload computes it on an f32 model ((B @ A) first, then * s, then + W),
 * rounded once. s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
 *
 * Keys are base_model.model.<module>.lora_A.weight (r, in) and .lora_B.weight
 * (out, r), <module> in either name layout PEFT writes: transformers >= 4.52's
 * (model.language_model.layers.N..., model.visual.blocks.N...) or the older one
 * (model.layers.N..., visual.blocks.N...), whatever the base's own layout.
 * target_modules is PEFT's: a list (a module is selected when its name equals an
 * entry or ends with "." + entry), a string (a regex that must match the whole
 * name, Python re.fullmatch), or "all-linear" (every linear but the output head);
 * exclude_modules the same way. Any linear of the model can be adapted (the text
 * layers' seven, the vision blocks' qkv/proj/gate/up/down, the merger, an untied
 * lm_head); every selected linear must have both tensors and every tensor must
 * belong to a selected linear, so an adapter made for another model is refused by
 * name. Only plain LoRA is read: bias "none", fan_in_fan_out false, no
 * modules_to_save, DoRA, rank/alpha patterns, layers_to_transform or token
 * adapters; each refusal names the field.
 *
 *   lora_adapter a;
 *   char dir[1024], note[256];
 *   lora_adapter_resolve("runs/sft", dir, sizeof dir, note, sizeof note, &err);
 *   lora_adapter_load(&a, dir, &m.config, &err);    // a.hash: its content's SHA-256
 *   lora_adapter_apply(&m, &a, &err);               // before model_quantize
 *   lora_adapter_free(&a);
 */
#ifndef ERGO_LORA_ADAPTER_H
#define ERGO_LORA_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

typedef struct lora_module {
    char weight[128];  /* the adapted parameter's canonical (legacy) name, "...q_proj.weight" */
    int spec_index;    /* its index in weights_spec order */
    int out, in;       /* the weight's (rows, cols) */
    float *a;          /* (r, in), f32 (widened when stored as bf16/f16) */
    float *b;          /* (out, r) */
} lora_module;

typedef struct lora_adapter {
    char dir[1024];    /* the directory read */
    int rank;
    double alpha;
    int use_rslora;
    float scale;       /* f32(alpha / r) or f32(alpha / sqrt(r)), as torch rounds the scalar */
    int n_modules;
    lora_module *modules; /* in weights_spec order */
    uint8_t digest[32];   /* SHA-256 of adapter_config.json's then adapter_model.safetensors' bytes */
    char hash[65];        /* the same in hex */
} lora_adapter;

/* The adapter directory to read for `dir`: dir itself when it holds
 * adapter_config.json, else the newest checkpoint-<step> inside it that holds one
 * (the output of `ergo train sft --lora-rank R`; note then says which). Refuses a
 * missing directory, a full checkpoint (model.safetensors: that is a --model), and
 * a directory with neither, naming it. note may be NULL. */
ergo_status lora_adapter_resolve(const char *dir, char *out, size_t out_size, char *note,
                                 size_t note_size, ergo_error *err);

/* Reads and checks the adapter in dir (as resolved) against cfg: the config fields
 * above, every tensor's name, dtype (F32, BF16, F16) and shape. Errors name the file
 * and the field or the tensor. On failure a is empty (free is still safe). */
ergo_status lora_adapter_load(lora_adapter *a, const char *dir, const model_config *cfg,
                              ergo_error *err);
void lora_adapter_free(lora_adapter *a);

/* Elements [start, start + count) of a module's merged weight, in dt (BF16, F16 or
 * F32), from the stored weight src (dt, row-major (out, in)). */
void lora_merge_range(const lora_adapter *a, const lora_module *mod, dtype dt, const void *src,
                      int64_t start, int64_t count, void *out);

/* Merges every module into m: each adapted weight gets a copy owned by m (its
 * checkpoint) holding the merged values; the map is not written. m must not be
 * quantised yet, and must be the model (config) a was loaded against. */
ergo_status lora_adapter_apply(model *m, const lora_adapter *a, ergo_error *err);

/* The same from bytes in memory: adapter_config.json's, a NUL, then
 * adapter_model.safetensors' (messages name them memory/...). */
ergo_status lora_adapter_parse_bytes(lora_adapter *a, const uint8_t *data, size_t size,
                                     const model_config *cfg, ergo_error *err);

/* The libFuzzer entry point (fuzz/fuzz_lora_adapter.c; tests/fuzz_corpus/lora_adapter
 * replayed by tests/test_lora_adapter.c): lora_adapter_parse_bytes on data. Returns 0
 * (accepted, or refused with a one-line message naming the file); anything else is a
 * crash. */
int lora_adapter_fuzz_one(const uint8_t *data, size_t size, const model_config *cfg);

#endif
