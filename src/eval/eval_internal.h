/*
 * eval_internal.h - what run.c, summary.c and endpoint.c share (not a public API).
 */
#ifndef ERGO_EVAL_INTERNAL_H
#define ERGO_EVAL_INTERNAL_H

#include <jansson.h>
#include <stddef.h>

#include "eval/run.h"

/* The records of a results file (array of objects); a torn last line is left out and
 * *good_len (may be NULL) is the byte length of the good prefix. */
ergo_status eval_load_results(const char *path, json_t **out, long *good_len, ergo_error *err);
/* A record's common fields: id = "<key>|<mode>|<budget>". */
json_t *eval_record_base(const eval_config *c, const bench_sample *s, const char *mode, int budget);
void eval_record_fail(json_t *o, const char *msg);
/* status ok, correct, pred: the reference's scoring of response against label. */
void eval_record_score(json_t *o, const char *response, const char *label);
/* One line + fsync. */
ergo_status eval_append(int fd, json_t *rec, const char *path, ergo_error *err);
/* Creates out_dir, reads what results.jsonl holds (id -> record), opens it for append
 * (a torn last line cut off). */
ergo_status eval_open_results(const eval_config *c, char *path, size_t path_size, json_t **done,
                              int *fd, ergo_error *err);
int eval_takes(const eval_config *c, const bench_sample *s, int64_t *idx, int *stop);
int eval_n_modes(const eval_config *c, int modes[4]);
const char *eval_mode_name(const eval_config *c, int mode);
void eval_progress(const eval_config *c, int64_t done, int64_t total, int64_t correct,
                   int64_t scored, double t0, int64_t fresh, int final);
ergo_status eval_run_endpoint(const eval_config *c, ergo_error *err);

#endif
