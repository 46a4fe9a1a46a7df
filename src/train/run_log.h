/*
 * run_log.h - what every training loop (sft.c, grpo_train.c) writes beside its
 * checkpoints: a JSONL log of every step (appended, fsynced, cut back to the resumed
 * checkpoint's step), curves for the PNG plots, and the small helpers of a run's
 * terminal line.
 *
 *   run_log lg;  run_log_open(&lg, "runs/a/train_log.jsonl", resumed_step, &err);
 *   run_log_write(&lg, json_pack("{s:I, s:f}", "step", 1, "loss", 2.5), &err);
 *   run_log_close(&lg);
 */
#ifndef ERGO_TRAIN_RUN_LOG_H
#define ERGO_TRAIN_RUN_LOG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "train/train_model.h"

typedef struct run_log {
    int fd;                  /* -1: not open (other ranks) */
    char path[4096];
} run_log;

/* Opens path for appending. resumed_step >= 0: the run continues from that
 * checkpoint, so records of later steps (logged by the crashed run after its last
 * checkpoint) are dropped first; -1: a new run, the file is truncated. */
ergo_status run_log_open(run_log *lg, const char *path, int64_t resumed_step, ergo_error *err);
/* Appends rec (a JSON object; its reference is taken) as one line and fsyncs. A
 * closed log only drops rec. */
ergo_status run_log_write(run_log *lg, json_t *rec, ergo_error *err);
void run_log_close(run_log *lg);

/* A curve for plot.h: points appended as the run goes (a point that cannot be stored
 * is lost, never the run). */
typedef struct run_curve {
    double *x, *y;
    int n, cap;
} run_curve;

void run_curve_add(run_curve *c, double x, double y);
void run_curve_free(run_curve *c);

/* mkdir -p. */
ergo_status run_mkdir_p(const char *dir, ergo_error *err);

/* "1h02m", "3m05s", or "?" when unknown. */
void run_format_eta(char *buf, size_t n, double seconds);

/* The name of the first trainable tensor with a non-finite gradient, or NULL. */
const char *run_nonfinite_grad(const train_model *tm);

#endif
