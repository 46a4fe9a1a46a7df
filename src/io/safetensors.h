/*
 * safetensors.h - reading and writing .safetensors files.
 *
 * Mirrors the validation of the safetensors 0.6.2 Rust crate (tensor.rs,
 * SafeTensors::read_metadata + Metadata::validate): 8-byte little-endian header
 * length (at most 100,000,000), a UTF-8 JSON object whose entries are
 * `{dtype, shape, data_offsets}` plus an optional `__metadata__` string map;
 * tensors sorted by offset must tile the data region exactly (no gap, no
 * overlap, the last one ending at the end of the file), and each byte count
 * must equal numel * dtype size with no overflow. We are stricter in two ways:
 * duplicate tensor names are refused (the crate silently keeps the last one) and
 * a tensor has at most ST_MAX_DIMS dimensions.
 *
 * A parsed file keeps pointers into the bytes it was given (the memory map of
 * the file for safetensors_open): tensors are views, nothing is copied.
 *
 *   safetensors_file st;
 *   if (safetensors_open(&st, "model.safetensors", &err) != ERGO_OK) ...
 *   const tensor *t = safetensors_find(&st, "lm_head.weight");
 *   safetensors_close(&st);
 */
#ifndef ERGO_SAFETENSORS_H
#define ERGO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/file.h"
#include "base/status.h"

/* The crate's Dtype enum, in its order (increasing alignment; the writer sorts
 * tensors by this order, descending, as the crate does). */
typedef enum dtype {
    DTYPE_BOOL,
    DTYPE_F4,
    DTYPE_F6_E2M3,
    DTYPE_F6_E3M2,
    DTYPE_U8,
    DTYPE_I8,
    DTYPE_F8_E5M2,
    DTYPE_F8_E4M3,
    DTYPE_F8_E8M0,
    DTYPE_I16,
    DTYPE_U16,
    DTYPE_F16,
    DTYPE_BF16,
    DTYPE_I32,
    DTYPE_U32,
    DTYPE_F32,
    DTYPE_F64,
    DTYPE_I64,
    DTYPE_U64,
    DTYPE_COUNT
} dtype;

/* "BF16" etc., as written in headers; NULL for an invalid value. */
const char *dtype_name(dtype t);
/* Parses a header dtype name (exact, case-sensitive like the crate); -1 if unknown. */
int dtype_from_name(const char *name);
/* Size of one element in bits (4 for F4, 6 for F6_*, 8..64 otherwise). */
int dtype_bits(dtype t);
/* 1 for the dtypes ergo computes with as weights: BF16, F16, F32. */
int dtype_is_weight(dtype t);

#define ST_MAX_DIMS 8

/* A view of one tensor: shape in PyTorch order, data little-endian, row-major. */
typedef struct tensor {
    const char *name;        /* owned by the file (or table) it came from */
    dtype dtype;
    int n_dims;              /* 0 for a scalar */
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;        /* nbytes bytes; NULL when nbytes == 0 */
    size_t nbytes;
    size_t offset;           /* begin offset inside the file's data region */
} tensor;

typedef struct st_metadata_entry {
    const char *key, *value;
} st_metadata_entry;

typedef struct safetensors_file {
    char *path;                  /* label used in messages (a path or "memory") */
    mapped_file map;             /* owned mapping; empty for safetensors_parse */
    const uint8_t *bytes;        /* the whole file */
    size_t size;
    size_t header_len;           /* N, the JSON length */
    const uint8_t *data;         /* start of the data region (bytes + 8 + N) */
    size_t data_size;
    int n_tensors;
    tensor *tensors;             /* sorted by offset */
    tensor **by_name;            /* the same tensors, sorted by name (for lookups) */
    int n_metadata;
    st_metadata_entry *metadata; /* the `__metadata__` map, may be empty */
    void *json;                  /* the parsed header (owns names and metadata strings) */
} safetensors_file;

/* Maps and parses a file. On failure st is left empty (safe to close). */
ergo_status safetensors_open(safetensors_file *st, const char *path, ergo_error *err);

/* Parses size bytes already in memory; they must outlive st. `label` names the
 * source in messages (the file path, or anything for fuzzing). */
ergo_status safetensors_parse(safetensors_file *st, const uint8_t *bytes, size_t size,
                              const char *label, ergo_error *err);

void safetensors_close(safetensors_file *st);

/* The tensor called name, or NULL. */
const tensor *safetensors_find(const safetensors_file *st, const char *name);

/* The `__metadata__` value for key, or NULL. */
const char *safetensors_metadata(const safetensors_file *st, const char *key);

/* Number of elements of a shape, or -1 when it overflows int64. */
int64_t shape_numel(const int64_t *shape, int n_dims);

/* Formats a shape as "(3584, 1280)" into buf; returns buf. */
char *shape_format(char *buf, size_t size, const int64_t *shape, int n_dims);

/* ---- writing ---- */

/* One tensor to write: its data comes from `fill` in chunks (so a 1 GB tensor
 * never needs to be held in memory at once). */
typedef struct st_write_entry {
    const char *name;
    dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
} st_write_entry;

/* Writes elements [start, start + count) of entry `index` into out (count
 * elements of the entry's dtype). Returns ERGO_OK or fills err. */
typedef ergo_status (*st_fill_fn)(void *ctx, int index, int64_t start, int64_t count, void *out,
                                  ergo_error *err);

/* Writes a safetensors file the way the crate's serialize_to_file does: tensors
 * sorted by dtype (descending) then name, contiguous offsets, header padded with
 * spaces to a multiple of 8. `metadata` holds n_metadata key/value pairs (may be 0).
 * Whole-byte dtypes only. */
ergo_status safetensors_write(const char *path, const st_write_entry *entries, int n,
                              const st_metadata_entry *metadata, int n_metadata, st_fill_fn fill,
                              void *ctx, ergo_error *err);

/* The libFuzzer entry point (src/io/safetensors_fuzz.c, fuzz/fuzz_safetensors.c):
 * parses size bytes as a file and walks every tensor. Returns 0 (accepted or
 * refused cleanly); anything else is a crash the sanitizers report. */
int safetensors_fuzz_one(const uint8_t *data, size_t size);

#endif
