/*
 * checkpoint.h - checkpoints of a training run, written so that a crash at any
 * moment leaves the previous one intact, and read back for a bit-exact resume.
 *
 * A run's output directory holds `checkpoint-<step>/` directories. Each one has:
 *   full training   model.safetensors in the base's published layout (its name
 *                   layout, legacy or new; every tensor in the base's stored dtype:
 *                   f32 masters rounded to nearest even as torch's .to() does, frozen
 *                   tensors copied byte for byte; metadata {"format": "pt"}), with
 *                   config.json, generation_config.json and the tokenizer and
 *                   processor files: the directory loads in transformers and in
 *                   `ergo run`;
 *   LoRA            adapter_model.safetensors + adapter_config.json as PEFT's
 *                   save_pretrained writes them (training.md section 3.3; keys
 *                   base_model.model.<module path>.lora_A.weight in the base's
 *                   layout, f32), with the tokenizer and processor files;
 *   both            trainer_state.safetensors (f32 masters and AdamW moments of
 *                   every trainable parameter: master/<name>, exp_avg/<name>,
 *                   exp_avg_sq/<name>) and trainer_state.json (step, epoch, data
 *                   position, RNG words, schedule position, losses, the run's config).
 *
 * Crash safety: everything is written into `checkpoint-<step>.tmp-<pid>/`, each file
 * and the directory fsynced, then renamed to `checkpoint-<step>` and the parent
 * fsynced. A directory named exactly checkpoint-<digits> is therefore complete;
 * older ones beyond the newest `keep` are deleted only after that rename.
 *
 *   train_run_state rs = {.step = 500, .epoch = 1, .data_pos = 1234, ...};
 *   train_checkpoint_save("runs/a", &tm, &base, "/models/base", &rs, 3, path, sizeof path, &err);
 *   ...
 *   train_checkpoint_latest("runs/a", path, sizeof path, &step, &err);   // "" when none
 *   train_checkpoint_load_state(path, &tm, &rs, &err);  ...  json_decref(rs.config);
 */
#ifndef ERGO_TRAIN_CHECKPOINT_H
#define ERGO_TRAIN_CHECKPOINT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "model/weights.h"
#include "train/train_model.h"

#define TRAIN_CKPT_MAX_RNG 16

/* What a resume needs besides the tensors. */
typedef struct train_run_state {
    int64_t step;          /* optimiser steps done; the checkpoint's number */
    int64_t epoch;         /* epochs completed */
    int64_t data_pos;      /* samples of the current epoch's order consumed */
    int64_t lr_step;       /* the learning-rate schedule's position (lr_at's step) */
    int n_rng;             /* words used in rng */
    uint64_t rng[TRAIN_CKPT_MAX_RNG]; /* the caller's generator states (opaque) */
    double last_loss;      /* NaN: none yet */
    double best_loss;      /* NaN: none yet */
    int64_t best_step;     /* step of best_loss, -1: none */
    json_t *config;        /* the run's configuration, a JSON object or NULL: borrowed by
                              save; a new reference after load (the caller json_decref's) */
} train_run_state;

/* Writes out_dir/checkpoint-<rs->step> (out_dir created if missing) as above.
 * base is the model tm was set up from; base_dir the directory it was loaded from,
 * whose config, tokenizer and processor files are copied (NULL: config.json and
 * generation_config.json are written from base's parsed configs and no tokenizer
 * file is copied; PEFT's base_model_name_or_path is then null). keep > 0 deletes
 * complete checkpoints beyond the newest `keep` (never the one just written).
 * On failure nothing but the temporary directory was touched, and that is removed.
 * path_out (may be NULL) receives the checkpoint's path. */
ergo_status train_checkpoint_save(const char *out_dir, const train_model *tm, const model *base,
                                  const char *base_dir, const train_run_state *rs, int keep,
                                  char *path_out, size_t path_size, ergo_error *err);

/* The newest complete checkpoint of out_dir into path_out and its step into *step
 * (may be NULL); path_out = "" and *step = -1 when there is none (or no out_dir).
 * Leftover checkpoint-*.tmp-<pid> directories of processes no longer alive are removed. */
ergo_status train_checkpoint_latest(const char *out_dir, char *path_out, size_t path_size,
                                    int64_t *step, ergo_error *err);

/* Restores the masters and AdamW moments of every trainable parameter of tm and the
 * run state from a checkpoint directory, checking that the parameter set, names,
 * shapes and dtypes match tm (full vs LoRA, rank, targets). Errors name the file
 * and the tensor or key. On failure tm may be partly overwritten (reload it). */
ergo_status train_checkpoint_load_state(const char *dir, train_model *tm, train_run_state *rs,
                                        ergo_error *err);

/* Test hook: when set, called at each stage of a save ("model", "adapter", "state",
 * "state_json", "files", "fsync", "rename"); a non-zero return fails the save there
 * as a write error would. NULL in normal runs. */
extern int (*train_checkpoint_fault)(const char *stage);

#endif
