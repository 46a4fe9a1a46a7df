/*
 * checkpoint.h - a checkpoint directory: config.json, generation_config.json and
 * the safetensors files holding the tensors (one model.safetensors, or shards
 * listed by model.safetensors.index.json).
 *
 * Mirrors what transformers' from_pretrained reads from a local directory
 * (4.56.2): the index's weight_map names the shard of every tensor; we check
 * that each named shard exists and that each tensor is in the shard the index
 * says, and refuse a tensor stored twice. Tensors are views into the memory
 * maps; the checkpoint owns the maps. This module knows nothing of Qwen2.5-VL:
 * src/model/weights.c binds names to the model's weight structs.
 *
 *   checkpoint ck;
 *   if (checkpoint_open(&ck, "/models/ergo-7b", &err) != ERGO_OK) ...
 *   const tensor *t = checkpoint_find(&ck, "lm_head.weight");
 *   checkpoint_close(&ck);
 */
#ifndef ERGO_CHECKPOINT_H
#define ERGO_CHECKPOINT_H

#include <jansson.h>

#include "base/status.h"
#include "io/safetensors.h"

typedef struct checkpoint {
    char *dir;
    json_t *config;            /* config.json */
    json_t *generation;        /* generation_config.json, NULL when absent */
    char config_path[1024];    /* for messages */
    char generation_path[1024];
    int sharded;               /* 1 when read through model.safetensors.index.json */
    int n_files;
    safetensors_file *files;   /* n_files open safetensors files */
    int n_tensors;
    tensor *tensors;           /* every tensor of every file (views, or copies when misaligned) */
    int *file_of;              /* file index of tensors[i]; -1 for in-memory tensors */
    tensor **by_name;          /* sorted by name, for checkpoint_find */
    size_t tensor_bytes;       /* sum of tensor sizes */
    int n_copies;              /* tensors copied because their data was misaligned */
    void **owned;              /* buffers to free: copies, in-memory weights, names */
    int n_owned, cap_owned;
} checkpoint;

/* Opens a checkpoint directory (see above). On failure ck is left closed. */
ergo_status checkpoint_open(checkpoint *ck, const char *dir, ergo_error *err);
void checkpoint_close(checkpoint *ck);

/* The tensor called name, or NULL. */
const tensor *checkpoint_find(const checkpoint *ck, const char *name);

/* Builds the by-name index after tensors were filled in by hand (in-memory
 * checkpoints); refuses duplicate names. `what` names the source in messages. */
ergo_status checkpoint_build_index(checkpoint *ck, const char *what, ergo_error *err);

/* Hands buf to ck, which frees it in checkpoint_close. */
ergo_status checkpoint_adopt(checkpoint *ck, void *buf, ergo_error *err);

/* Name of the shard file number i (model-00001-of-00003.safetensors ...). */
const char *checkpoint_file_name(const checkpoint *ck, int i);

#endif
