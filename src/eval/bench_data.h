/*
 * bench_data.h - the paper's benchmarks in their published layouts, as the reference
 * evaluation (ERGO src/ergo/eval.py) reads them (spec eval-server.md sections 1.2 and 2).
 *
 * Under one data root, laid out as ERGO's data/README.md clones it:
 *   vstar_bench/test_questions.jsonl (+ the image files it names)
 *   HR-Bench/hr_bench_4k.parquet, HR-Bench/hr_bench_8k.parquet (or the .tsv copies)
 *   MME-RealWorld-lite-lmms-eval/data/train-0000{0,1,2,3}-of-00004.parquet
 *
 * Samples come one at a time, in the reference's order (V* file order; HR-Bench 4K then
 * 8K; MME shards 0..3), so an 8K parquet file is never decoded whole. A sample that cannot
 * be built (an image that is not valid base64, a null column, a bad page) comes back with
 * `failed` set and a one-line reason; only a missing file or column, or a malformed layout
 * that makes every later sample unreadable, stops the iteration.
 *
 *   bench_iter *it; bench_sample s; int done;
 *   bench_open(&it, BENCH_HRBENCH, "/data", NULL, &err);
 *   while (bench_next(it, &s, &done, &err) == ERGO_OK && !done) { ...; bench_sample_free(&s); }
 *   bench_close(it);
 */
#ifndef ERGO_EVAL_BENCH_DATA_H
#define ERGO_EVAL_BENCH_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef enum bench_kind {
    BENCH_VSTAR = 0,  /* `--dataset vstar` */
    BENCH_HRBENCH,    /* `--dataset hrbench` */
    BENCH_MMERWL,     /* `--dataset mmerwl` */
} bench_kind;

/* HR-Bench source files. AUTO: the parquet file when it exists, else the TSV. */
typedef enum bench_hr_source { BENCH_HR_AUTO = 0, BENCH_HR_PARQUET, BENCH_HR_TSV } bench_hr_source;

typedef struct bench_options {
    bench_hr_source hr_source;
    size_t max_image_bytes; /* decoded image size limit; 0 = 256 MiB */
} bench_options;

typedef struct bench_sample {
    int64_t seq;          /* 0-based position in the benchmark's iteration order */
    char *key;            /* unique and stable: "<file>:<row or line>", for results/resume */
    char *question_id;    /* the reference's question_id (V*: the line's; HR/MME: row index) */
    char *image_path;     /* V*: data_root/vstar_bench/<image>; NULL otherwise */
    uint8_t *image;       /* HR-Bench/MME: the decoded image file bytes (image_size) */
    size_t image_size;
    char *question;       /* stage-1 question */
    char **options;       /* (n_options) option lines, as the reference builds them */
    int n_options;
    char *postfix;        /* last line of the stage-2 question */
    char *label;          /* ground-truth letter */
    char *category;       /* the reference's category (V*: the line's; HR: "4k"/"8k"; MME: column) */
    char *subcategory;    /* HR-Bench: "FSP" (single) / "FCP" (cross) from the dataset's category
                           * column, else NULL */
    int has_box;          /* a ground-truth box (the JSONL's optional "bbox": [x1,y1,x2,y2]) */
    double box[4];        /* pixels of the original image */
    int failed;           /* 1: the sample could not be built; error says why */
    char error[768];
} bench_sample;

typedef struct bench_iter bench_iter;

/* Opens the benchmark's files under data_root (checks they exist; a git-lfs pointer file
 * is named as such). opts may be NULL. */
ergo_status bench_open(bench_iter **out, bench_kind kind, const char *data_root,
                       const bench_options *opts, ergo_error *err);

/* A file in V*'s line format anywhere (`ergo synth` output, GRPO's training items):
 * image paths are relative to the file's directory and may not leave it. */
ergo_status bench_open_jsonl(bench_iter **out, const char *path, const bench_options *opts,
                             ergo_error *err);

/* The next sample (*done = 0) or the end (*done = 1). Fails only when iteration cannot go
 * on; a bad sample is returned with s->failed set. bench_sample_free(s) after use. */
ergo_status bench_next(bench_iter *it, bench_sample *s, int *done, ergo_error *err);
void bench_sample_free(bench_sample *s);
void bench_close(bench_iter *it);

/* "vstar", "hrbench", "mmerwl" (the reference's --dataset names). */
const char *bench_name(bench_kind kind);
/* Parses a --dataset name; -1 when unknown. */
int bench_parse_name(const char *name);

/* The reference's per-category report rows (test_types), in its order. */
const char *const *bench_categories(bench_kind kind, int *n);

/* Decodes base64 (RFC 4648 alphabet, whitespace ignored, padding optional at the end).
 * Returns a malloc'd buffer, or NULL with a message in err (naming `what`). */
uint8_t *bench_base64_decode(const char *src, size_t len, size_t max_out, size_t *out_len,
                             const char *what, ergo_error *err);

/* Splits a V* `text` as the reference does: question = line 0, options = lines 1..-2,
 * postfix = the last line (text.split("\n")). Fills the sample's three fields. */
ergo_status bench_split_vstar_text(const char *text, bench_sample *s, ergo_error *err);

/* Fuzz entry point for the JSONL loader (fuzz/fuzz_eval_jsonl.c, tests/test_eval.c):
 * parses data as a test_questions.jsonl. Returns the number of good samples. */
int bench_fuzz_jsonl(const uint8_t *data, size_t size);

#endif
