/*
 * run.h - the benchmark runner of `ergo eval`: every sample of a benchmark through
 * ERGO's two stages and/or the one-pass baseline at each vision-token budget, scored as
 * the reference does (score.h), one JSON line per (sample, mode, budget) appended and
 * fsynced to OUT/results.jsonl, then OUT/summary.json, summary.md and the plots.
 *
 * The summary is a function of the results file alone (records sorted by sample, mode
 * and budget), so a resumed run, a merge of shards and one uninterrupted process give
 * the same summary (apart from the measured times).
 *
 * In process, samples run one after another on one context (several samples per weight
 * pass is a later optimisation).
 *
 *   eval_config c; eval_config_default(&c); c.kind = ...; c.data_root = ...; c.out_dir = ...;
 *   eval_run(&c, ctx, &err);            // results.jsonl (+ summary)
 *   eval_summarize(c.out_dir, &c, &err); // summary.json, summary.md, plots
 */
#ifndef ERGO_EVAL_RUN_H
#define ERGO_EVAL_RUN_H

#include <stdint.h>

#include "base/status.h"
#include "eval/bench_data.h"
#include "pipeline/ergo.h"
#include "runtime/context.h"

#define EVAL_MAX_BUDGETS 8

enum { EVAL_MODE_ERGO = 1, EVAL_MODE_BASELINE = 2, EVAL_MODE_BOTH = 3 };

typedef enum eval_probe {
    EVAL_PROBE_NONE = 0,
    EVAL_PROBE_GT,    /* stage 2 sees the ground-truth box's region (resized like a crop) */
    EVAL_PROBE_NOISE, /* uniform noise of the size the gt crop would have */
    EVAL_PROBE_FULL,  /* the whole downsampled (stage-1) image */
} eval_probe;

typedef struct eval_config {
    bench_kind kind;
    const char *hr_only;       /* HR-Bench: "4k" or "8k" only (NULL: both files) */
    const char *data_root;
    const char *out_dir;
    int modes;                 /* EVAL_MODE_* bits */
    int budgets[EVAL_MAX_BUDGETS]; /* stage-1 max vision tokens (the baseline's image budget) */
    int n_budgets;
    int64_t limit;             /* the first `limit` samples (before sharding); 0 = all */
    int shard_i, shard_n;      /* samples with seq % shard_n == shard_i (n = 1: all) */
    int resume;                /* keep OUT/results.jsonl and skip what it holds */
    int reference_denominator; /* leave failed samples out of accuracies */
    eval_probe probe;
    ergo_options run;          /* the per-stage options (max new tokens, fixed tokens, ...) */
    int progress;              /* 1: a \r bar on stderr, 0: plain lines, -1: none */
    const char *endpoint;      /* set: the two requests go to this OpenAI-compatible URL */
    const char *api_key;       /* NULL: "EMPTY" as the reference */
    int concurrency;           /* endpoint: samples in flight, one request each (16) */
    int max_retries;           /* endpoint: attempts after the first on 429/5xx/connection */
    double retry_base_ms;      /* endpoint: first backoff, doubling */
} eval_config;

void eval_config_default(eval_config *c);

/* Runs the benchmark into c->out_dir (created) on ctx (NULL with c->endpoint).
 * Resumable: with c->resume, samples already in results.jsonl are skipped and a torn
 * last line is dropped and redone; without it an existing results.jsonl is refused.
 * Writes the summary at the end (shards: their own). */
ergo_status eval_run(const eval_config *c, context *ctx, ergo_error *err);

/* Reads dir/results.jsonl (a malformed line is refused with its number; a torn last
 * line is ignored) and writes dir/summary.json, summary.md, accuracy.png and
 * box_areas.png. *md (may be NULL) receives the Markdown (malloc'd). */
ergo_status eval_summarize(const char *dir, const eval_config *c, char **md, ergo_error *err);

/* `ergo eval merge`: the union of the shards' results (by key) into out_dir's
 * results.jsonl, sorted, then its summary. */
ergo_status eval_merge(const char *out_dir, const char *const *shard_dirs, int n,
                       const eval_config *c, ergo_error *err);

#endif
