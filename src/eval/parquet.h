/*
 * parquet.h - a streaming reader for the subset of Apache Parquet that the benchmarks'
 * files use (HR-Bench, MME-RealWorld-lite; spec eval-server.md section 4.3). Debian has no
 * Arrow/Parquet C library, so this is our own.
 *
 * Supported: the footer and its Thrift compact-protocol FileMetaData; data pages v1 and
 * v2, dictionary pages (one per column chunk, before the data pages), index pages
 * (skipped); value encodings PLAIN, PLAIN_DICTIONARY and RLE_DICTIONARY, the RLE/bit-packed
 * hybrid for levels and dictionary indices (and RLE booleans), a dictionary column that falls back to PLAIN
 * pages; physical types BOOLEAN, INT32, INT64, FLOAT, DOUBLE, BYTE_ARRAY and
 * FIXED_LEN_BYTE_ARRAY; required and optional top-level columns and one level of LIST
 * (the 3-level form pyarrow writes, and the 2-level legacy form); codecs UNCOMPRESSED,
 * SNAPPY, GZIP and ZSTD; any number of row groups.
 * Refused by name: encryption, other encodings (DELTA_*, BYTE_STREAM_SPLIT, BIT_PACKED
 * levels), other codecs (LZO, BROTLI, LZ4), INT96, maps, structs, lists nested deeper than
 * one level, column chunks stored in other files. A column that is refused is only an
 * error when it is selected: a file may hold columns we never read.
 *
 * Memory: the file is mapped, never read whole. A column chunk is read page by page; a
 * page is decompressed into one buffer (uncompressed pages are used in place), so a
 * dictionary page of hundreds of MB is held once, decompressed, for its row group.
 * Every length, offset and count from the file is checked against the file size and the
 * limits in pq_limits before it is used.
 *
 *   pq_file *f; pq_reader *r; int have;
 *   pq_open(&f, "hr_bench_4k.parquet", NULL, &err);
 *   const char *cols[] = {"question", "image"};
 *   pq_reader_open(&r, f, cols, 2, &err);
 *   while (pq_reader_next(r, &have, &err) == ERGO_OK && have) {
 *       const pq_cell *q = pq_reader_cell(r, 0);  // valid until the next pq_reader_next
 *   }
 *   pq_reader_close(r); pq_close(f);
 */
#ifndef ERGO_PARQUET_H
#define ERGO_PARQUET_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* Physical types (parquet.thrift `Type`). */
typedef enum pq_type {
    PQ_BOOLEAN = 0,
    PQ_INT32 = 1,
    PQ_INT64 = 2,
    PQ_INT96 = 3,
    PQ_FLOAT = 4,
    PQ_DOUBLE = 5,
    PQ_BYTE_ARRAY = 6,
    PQ_FIXED_LEN_BYTE_ARRAY = 7,
} pq_type;

typedef enum pq_kind {
    PQ_CELL_NULL = 0,
    PQ_CELL_INT,    /* BOOLEAN (0/1), INT32, INT64: in .i */
    PQ_CELL_DOUBLE, /* FLOAT, DOUBLE: in .d */
    PQ_CELL_BYTES,  /* BYTE_ARRAY, FIXED_LEN_BYTE_ARRAY: .ptr, .len (not NUL-terminated) */
    PQ_CELL_LIST,   /* a list: .n_items cells in .items (each NULL, INT, DOUBLE or BYTES) */
} pq_kind;

typedef struct pq_cell {
    pq_kind kind;
    int64_t i;
    double d;
    const uint8_t *ptr; /* (len) bytes */
    size_t len;
    int64_t n_items;
    const struct pq_cell *items; /* (n_items) */
} pq_cell;

/* Bounds on what a file may ask us to allocate; 0 fields take the defaults. */
typedef struct pq_limits {
    size_t max_page_bytes;  /* one decompressed page; default 1 GiB (an 8K dictionary page) */
    int64_t max_list_items; /* items in one list cell; default 1<<20 */
} pq_limits;

/* One top-level column (field) of the schema. */
typedef struct pq_column {
    char *name;        /* the top-level field name */
    pq_type type;      /* the leaf's physical type */
    int type_length;   /* FIXED_LEN_BYTE_ARRAY width */
    int is_list;       /* one level of LIST */
    int is_string;     /* logical/converted type String/UTF8 on the leaf */
    int max_def, max_rep;
    int def_list;      /* list: def level at or above which the list is not null */
    int def_item;      /* list: def level at or above which an item exists */
    int leaf;          /* index of the leaf among the file's leaf columns */
    const char *unsupported; /* NULL, or why this column cannot be read (static string) */
} pq_column;

typedef struct pq_file pq_file;

/* Maps and parses path. limits may be NULL. */
ergo_status pq_open(pq_file **out, const char *path, const pq_limits *limits, ergo_error *err);

/* Parses size bytes held by the caller (kept until pq_close); name appears in messages. */
ergo_status pq_open_bytes(pq_file **out, const uint8_t *data, size_t size, const char *name,
                          const pq_limits *limits, ergo_error *err);
void pq_close(pq_file *f);

const char *pq_name(const pq_file *f);
int64_t pq_num_rows(const pq_file *f);
int pq_num_row_groups(const pq_file *f);
int64_t pq_row_group_rows(const pq_file *f, int g);
int pq_num_columns(const pq_file *f);
const pq_column *pq_column_at(const pq_file *f, int i);
/* Index of the top-level column called name, or -1. */
int pq_find_column(const pq_file *f, const char *name);
const char *pq_created_by(const pq_file *f); /* "" when absent */
/* The checked byte range of column col's chunk in row group g (diagnostics, tests);
 * -1 when the chunk has no usable metadata. */
int pq_column_chunk_range(const pq_file *f, int g, int col, uint64_t *start, uint64_t *size);

/* Iterates the rows of the named columns, in file order. Missing or unsupported columns
 * fail here with one line naming the file and the column. */
typedef struct pq_reader pq_reader;
ergo_status pq_reader_open(pq_reader **out, pq_file *f, const char *const *names, int n,
                           ergo_error *err);

/* Advances to the next row: *have = 1 and the cells are ready, or *have = 0 at the end.
 * On a bad page it fails naming the file, row group, column and problem; the rest of
 * that row group is then lost, and the next call carries on with the next row group
 * (pq_reader_lost says which rows were lost). */
ergo_status pq_reader_next(pq_reader *r, int *have, ergo_error *err);

/* The k-th selected column of the current row; valid until the next pq_reader_next. */
const pq_cell *pq_reader_cell(const pq_reader *r, int k);

/* Index of the current row in the file (0-based), or of the failed row after an error. */
int64_t pq_reader_row(const pq_reader *r);

/* After a failed pq_reader_next: the rows [*first, *end) that will never be delivered. */
void pq_reader_lost(const pq_reader *r, int64_t *first, int64_t *end);
void pq_reader_close(pq_reader *r);

/* Fuzz entry point (fuzz/fuzz_parquet.c, tests/test_eval.c): parses data as a parquet
 * file with small limits and reads every supported column of every row. Returns the
 * number of rows read (0 when refused). */
int pq_fuzz_one(const uint8_t *data, size_t size);

#endif
