/*
 * model_save.h - writing a loaded model (optionally with a LoRA adapter merged into
 * it on the way) as a checkpoint directory in the published layout, the one
 * transformers' save_pretrained writes and model_load / from_pretrained read:
 * model.safetensors (the base's name layout, each tensor in its stored dtype, a
 * tied head left out, metadata {"format": "pt"}), and the base directory's
 * config.json, generation_config.json, tokenizer, processor and chat-template files
 * copied byte for byte.
 *
 * Atomic: everything goes into `<out>.tmp-<pid>/`, each file and the directory are
 * fsynced, then it is renamed to `out` (exchanged with an existing `out` when
 * replacing, the old one removed after) and the parent fsynced. On failure `out` is
 * untouched and the temporary directory removed.
 *
 *   model m;  model_load(&m, base, &err);
 *   lora_adapter a;  lora_adapter_load(&a, adapter_dir, &m.config, &err);
 *   model_save_dir(&m, &a, base, "/models/merged", 0, &err);
 */
#ifndef ERGO_MODEL_SAVE_H
#define ERGO_MODEL_SAVE_H

#include <jansson.h>

#include "base/status.h"
#include "model/lora_adapter.h"
#include "model/weights.h"

/* Writes m to out_dir as above. a (may be NULL) is merged into the tensors it adapts
 * as lora_adapter_apply would (the same values), computed while writing. src_dir
 * (may be NULL) holds the files to copy; config.json (and generation_config.json)
 * are written from m's parsed JSON when it has none. An existing out_dir is refused
 * unless replace. */
ergo_status model_save_dir(const model *m, const lora_adapter *a, const char *src_dir,
                           const char *out_dir, int replace, ergo_error *err);

/* model.safetensors alone, at path (fsynced): every tensor of m in its stored dtype,
 * named in m's layout. f32_values (may be NULL) gives, per weights_spec index, values
 * to write instead (NULL entries: as stored), rounded to the stored dtype to nearest
 * even as torch's .to() does: a training run's f32 masters. a (may be NULL) is merged
 * into the tensors it adapts (none of which may have f32_values). */
ergo_status model_write_safetensors(const char *path, const model *m,
                                   const float *const *f32_values, const lora_adapter *a,
                                   ergo_error *err);

/* Copies src_dir's config, generation config (both only when with_configs), tokenizer,
 * processor and chat-template files into dir, each fsynced; with_configs and no
 * config.json (generation_config.json) in src_dir (or no src_dir): written from m's
 * parsed JSON. */
ergo_status model_copy_files(const char *dir, const model *m, const char *src_dir,
                             int with_configs, ergo_error *err);

/* dir/name written and fsynced (the files of an atomic checkpoint directory); the JSON
 * one indented by 2. Shared with train/checkpoint.c. */
ergo_status model_save_file(const char *dir, const char *name, const void *data, size_t n,
                            ergo_error *err);
ergo_status model_save_json(const char *dir, const char *name, const json_t *j, ergo_error *err);

#endif
