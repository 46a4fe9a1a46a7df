/*
 * sft.h - supervised fine-tuning (`ergo train sft`): conversations of a JSONL file
 * (sft_data.h) through the training passes (step.h), AdamW with clipping and a
 * warm-up + decay schedule (optim.h), a held-out loss every N steps, checkpoints
 * every N steps with a bit-exact resume (checkpoint.h), a JSONL log of every step
 * (appended and fsynced), a PNG of the loss curves, and data parallelism over the
 * ranks of a train_comm (the CLI's Open MPI).
 *
 * One optimiser step takes batch * accum * ranks examples of the epoch order
 * (example k of a step goes to rank k % ranks); the loss is the token mean over the
 * whole global batch (transformers' num_items_in_batch semantics), so 2 ranks give
 * the same update as 1 up to the order of the gradient sums.
 *
 *   sft_options o;  sft_options_default(&o);
 *   o.data_path = "train.jsonl"; o.out_dir = "runs/a";
 *   sft_result r;   sft_run(&engine, "models/base", &o, NULL, &r, &err);
 */
#ifndef ERGO_SFT_H
#define ERGO_SFT_H

#include <stdint.h>

#include "base/status.h"
#include "runtime/engine.h"
#include "train/optim.h"
#include "train/train_model.h"

/* Data-parallel communication, supplied by the caller (NULL: one process). */
typedef struct train_comm {
    int rank, size;
    void *ctx;
    void (*sum_f32)(void *ctx, float *buf, size_t n);   /* in place, over the ranks */
    void (*sum_f64)(void *ctx, double *buf, size_t n);
} train_comm;

typedef struct sft_options {
    const char *data_path, *out_dir;
    int64_t epochs;          /* 1 */
    int64_t max_steps;       /* 0: the epochs decide */
    int batch, accum;        /* examples per micro-batch, micro-batches per step (1, 1) */
    float lr;                /* 3e-4 */
    lr_kind schedule;        /* LR_COSINE */
    int64_t warmup_steps;    /* -1: warmup_ratio of the steps */
    double warmup_ratio;     /* 0.03 */
    adamw_config adam;       /* 0.9, 0.999, 1e-8, weight decay 0 */
    float max_grad_norm;     /* 1.0; 0: no clipping */
    uint64_t seed;           /* data order, held-out split, adapters' init */
    train_config train;      /* what trains: freeze bits, LoRA */
    int max_tokens;          /* 4096: longer conversations are bad lines */
    int max_images;          /* 8 per conversation */
    int recompute;           /* recompute each layer in the backward (less memory) */
    int max_patches;         /* 4096 per image */
    int64_t heldout;         /* held-out records; -1: heldout_fraction of the file */
    double heldout_fraction; /* 0.05 */
    int64_t eval_every;      /* 50 steps (0: only at the end) */
    int64_t save_every;      /* 100 steps (0: only at the end) */
    int keep;                /* 3 checkpoints */
    int resume;              /* continue from the newest complete checkpoint of out_dir */
    int skip_bad_lines;      /* 0: a bad line stops the run (with file:line); 1: skip it */
    int progress;            /* 1 a line redrawn on a terminal, 0 a line per log_every, -1 none */
    int64_t log_every;       /* 10 steps between progress lines off a terminal */
} sft_options;

void sft_options_default(sft_options *o);

typedef struct sft_result {
    int64_t steps;           /* optimiser steps done (including resumed ones) */
    int64_t examples;        /* examples trained on by this run */
    int64_t bad_lines;       /* skipped */
    double first_heldout, last_heldout; /* NaN when never evaluated */
    double last_loss;
    char checkpoint[4096];   /* the last one written */
} sft_result;

/* Trains e->m (loaded from model_dir, whose tokenizer/processor files the checkpoints
 * copy) on o->data_path. comm may be NULL. */
ergo_status sft_run(const engine *e, const char *model_dir, const sft_options *o,
                    const train_comm *comm, sft_result *res, ergo_error *err);

#endif
