/*
 * parquet.c - the streaming parquet reader of parquet.h.
 *
 * Layout of a file: "PAR1", column chunks (pages), FileMetaData (Thrift compact),
 * its length (4 bytes LE), "PAR1". Each page starts with a PageHeader (Thrift compact).
 * Field numbers below are those of parquet.thrift (apache/parquet-format).
 */
#include "parquet.h"

#include <limits.h>
#include <snappy-c.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "base/file.h"

#define PQ_MAX_SCHEMA 4096     /* schema elements */
#define PQ_MAX_ROW_GROUPS 1000000
#define PQ_MAX_DEPTH 32        /* Thrift nesting while skipping */

enum { ENC_PLAIN = 0, ENC_PLAIN_DICT = 2, ENC_RLE = 3, ENC_BIT_PACKED = 4, ENC_RLE_DICT = 8 };
enum { CODEC_NONE = 0, CODEC_SNAPPY = 1, CODEC_GZIP = 2, CODEC_ZSTD = 6 };
enum { PAGE_DATA = 0, PAGE_INDEX = 1, PAGE_DICT = 2, PAGE_DATA_V2 = 3 };

static const char *encoding_name(int e) {
    static const char *names[] = {"PLAIN", "GROUP_VAR_INT", "PLAIN_DICTIONARY", "RLE", "BIT_PACKED",
                                  "DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY",
                                  "DELTA_BYTE_ARRAY", "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
    return e >= 0 && e < 10 ? names[e] : "unknown";
}

static const char *codec_name(int c) {
    static const char *names[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD",
                                  "LZ4_RAW"};
    return c >= 0 && c < 8 ? names[c] : "unknown";
}

/* ---- Thrift compact protocol ---------------------------------------------------- */

typedef struct tin {
    const uint8_t *p, *end;
    int bad; /* sticky: any read past the end or malformed value */
} tin;

static uint64_t t_varint(tin *t) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (t->p >= t->end) { t->bad = 1; return 0; }
        uint8_t b = *t->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
    }
    t->bad = 1;
    return 0;
}

static int64_t t_zigzag(tin *t) {
    uint64_t v = t_varint(t);
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

static int32_t t_i32(tin *t) {
    int64_t v = t_zigzag(t);
    if (v < INT32_MIN || v > INT32_MAX) { t->bad = 1; return 0; }
    return (int32_t)v;
}

static uint8_t t_byte(tin *t) {
    if (t->p >= t->end) { t->bad = 1; return 0; }
    return *t->p++;
}

/* A binary/string: length and pointer into the buffer. */
static const uint8_t *t_binary(tin *t, size_t *len) {
    uint64_t n = t_varint(t);
    if (t->bad || n > (uint64_t)(t->end - t->p)) { t->bad = 1; *len = 0; return NULL; }
    const uint8_t *s = t->p;
    t->p += n;
    *len = (size_t)n;
    return s;
}

static char *t_string(tin *t) {
    size_t n;
    const uint8_t *s = t_binary(t, &n);
    if (t->bad) return NULL;
    char *out = malloc(n + 1);
    if (!out) { t->bad = 1; return NULL; }
    memcpy(out, s, n);
    out[n] = '\0';
    return out;
}

/* Reads a field header; returns 0 at the struct's stop byte. *type is the compact
 * type (1/2 = bool true/false, 3 byte, 4 i16, 5 i32, 6 i64, 7 double, 8 binary, 9 list,
 * 10 set, 11 map, 12 struct). */
static int t_field(tin *t, int *last_id, int *id, int *type) {
    uint8_t b = t_byte(t);
    if (t->bad || b == 0) return 0;
    int delta = b >> 4;
    *type = b & 0x0f;
    if (delta) *id = *last_id + delta;
    else *id = (int)t_zigzag(t);
    *last_id = *id;
    return !t->bad;
}

/* List header: element count and element type. */
static uint64_t t_list(tin *t, int *etype) {
    uint8_t b = t_byte(t);
    uint64_t n = b >> 4;
    *etype = b & 0x0f;
    if (n == 15) n = t_varint(t);
    /* every element takes at least one byte, except bools in some writers (one byte too) */
    if (n > (uint64_t)(t->end - t->p)) t->bad = 1;
    return t->bad ? 0 : n;
}

static void t_skip(tin *t, int type, int depth) {
    if (depth > PQ_MAX_DEPTH) { t->bad = 1; return; }
    switch (type) {
    case 1: case 2: return;             /* bool in the field header */
    case 3: t_byte(t); return;
    case 4: case 5: case 6: t_varint(t); return;
    case 7:
        if (t->end - t->p < 8) t->bad = 1; else t->p += 8;
        return;
    case 8: { size_t n; t_binary(t, &n); return; }
    case 9: case 10: {
        int et;
        uint64_t n = t_list(t, &et);
        for (uint64_t i = 0; i < n && !t->bad; i++) {
            if (et == 1 || et == 2) t_byte(t); /* bools inside lists are one byte each */
            else t_skip(t, et, depth + 1);
        }
        return;
    }
    case 11: {
        uint64_t n = t_varint(t);
        if (n == 0) return;
        if (n > (uint64_t)(t->end - t->p)) { t->bad = 1; return; }
        uint8_t kv = t_byte(t);
        for (uint64_t i = 0; i < n && !t->bad; i++) {
            int kt = kv >> 4, vt = kv & 0x0f;
            if (kt == 1 || kt == 2) t_byte(t); else t_skip(t, kt, depth + 1);
            if (vt == 1 || vt == 2) t_byte(t); else t_skip(t, vt, depth + 1);
        }
        return;
    }
    case 12: {
        int last = 0, id, ft;
        while (!t->bad && t_field(t, &last, &id, &ft)) t_skip(t, ft, depth + 1);
        return;
    }
    default: t->bad = 1; return;
    }
}

static int t_bool(int type) { return type == 1; }

/* ---- metadata ------------------------------------------------------------------- */

typedef struct schema_el {
    int type;  /* -1 for groups */
    int type_length;
    int repetition; /* 0 required, 1 optional, 2 repeated; -1 absent */
    char *name;
    int num_children;
    int converted; /* -1 absent */
    int logical;   /* field id of the LogicalType union member, 0 absent */
} schema_el;

typedef struct chunk_meta {
    int type;
    int codec;
    int64_t num_values;
    int64_t total_compressed;
    int64_t data_page_offset;
    int64_t dict_page_offset; /* -1 absent */
    int has_meta, external, encrypted;
    uint64_t start, size; /* checked byte range of the chunk */
} chunk_meta;

typedef struct row_group {
    int64_t num_rows;
    int64_t first_row;
    chunk_meta *chunks; /* (n_leaves) */
} row_group;

struct pq_file {
    char *name;
    mapped_file mf;
    int mapped;
    const uint8_t *data;
    size_t size;
    pq_limits lim;
    char *created_by;
    int64_t num_rows;
    int n_leaves;
    pq_column *cols; /* (n_cols) top-level columns */
    int n_cols;
    row_group *groups; /* (n_groups) */
    int n_groups;
};

static ergo_status bad_meta(pq_file *f, ergo_error *err, const char *what) {
    return ergo_fail(err, ERGO_E_FORMAT, "%s: bad parquet footer: %s", f->name, what);
}

static int read_schema_el(tin *t, schema_el *s) {
    memset(s, 0, sizeof *s);
    s->type = -1;
    s->repetition = -1;
    s->converted = -1;
    int last = 0, id, ft;
    while (!t->bad && t_field(t, &last, &id, &ft)) {
        if (id == 1 && ft == 5) s->type = t_i32(t);
        else if (id == 2 && ft == 5) s->type_length = t_i32(t);
        else if (id == 3 && ft == 5) s->repetition = t_i32(t);
        else if (id == 4 && ft == 8) { free(s->name); s->name = t_string(t); }
        else if (id == 5 && ft == 5) s->num_children = t_i32(t);
        else if (id == 6 && ft == 5) s->converted = t_i32(t);
        else if (id == 10 && ft == 12) {
            /* LogicalType is a union: the member's field id names it (1 STRING, 3 LIST). */
            int l2 = 0, id2, ft2;
            while (!t->bad && t_field(t, &l2, &id2, &ft2)) {
                s->logical = id2;
                t_skip(t, ft2, 1);
            }
        } else t_skip(t, ft, 1);
    }
    return !t->bad && s->name != NULL;
}

static int read_column_meta(tin *t, chunk_meta *c) {
    int last = 0, id, ft;
    c->has_meta = 1;
    while (!t->bad && t_field(t, &last, &id, &ft)) {
        if (id == 1 && ft == 5) c->type = t_i32(t);
        else if (id == 4 && ft == 5) c->codec = t_i32(t);
        else if (id == 5 && ft == 6) c->num_values = t_zigzag(t);
        else if (id == 7 && ft == 6) c->total_compressed = t_zigzag(t);
        else if (id == 9 && ft == 6) c->data_page_offset = t_zigzag(t);
        else if (id == 11 && ft == 6) c->dict_page_offset = t_zigzag(t);
        else t_skip(t, ft, 1);
    }
    return !t->bad;
}

static int read_chunk(tin *t, chunk_meta *c) {
    memset(c, 0, sizeof *c);
    c->dict_page_offset = -1;
    c->type = -1;
    int last = 0, id, ft;
    while (!t->bad && t_field(t, &last, &id, &ft)) {
        if (id == 1 && ft == 8) { size_t n; t_binary(t, &n); c->external = 1; }
        else if (id == 3 && ft == 12) read_column_meta(t, c);
        else if ((id == 8 || id == 9)) { c->encrypted = 1; t_skip(t, ft, 1); }
        else t_skip(t, ft, 1);
    }
    return !t->bad;
}

static void free_file_parts(pq_file *f) {
    for (int i = 0; i < f->n_cols; i++) free(f->cols[i].name);
    free(f->cols);
    for (int g = 0; g < f->n_groups; g++) free(f->groups[g].chunks);
    free(f->groups);
    free(f->created_by);
}

void pq_close(pq_file *f) {
    if (!f) return;
    free_file_parts(f);
    if (f->mapped) file_unmap(&f->mf);
    free(f->name);
    free(f);
}

/* Turns the flattened schema into top-level columns; *pos walks the elements. */
static ergo_status build_columns(pq_file *f, schema_el *s, int n, ergo_error *err) {
    if (n < 1 || s[0].num_children < 0 || s[0].num_children > n - 1)
        return bad_meta(f, err, "the schema root is malformed");
    int nc = s[0].num_children;
    f->cols = calloc((size_t)(nc ? nc : 1), sizeof *f->cols);
    if (!f->cols) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", f->name);
    int pos = 1, leaf = 0;
    for (int c = 0; c < nc; c++) {
        if (pos >= n) return bad_meta(f, err, "the schema has fewer elements than its root says");
        pq_column *col = &f->cols[f->n_cols++];
        schema_el *e = &s[pos];
        col->name = strdup(e->name);
        if (!col->name) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", f->name);
        col->leaf = leaf;
        /* Count the leaves of this subtree and find its shape. */
        int opt0 = e->repetition == 1;
        if (e->num_children == 0) {
            if (e->type < 0 || e->type > 7) return bad_meta(f, err, "a leaf without a physical type");
            col->type = (pq_type)e->type;
            col->type_length = e->type_length;
            col->is_string = e->logical == 1 || e->converted == 0;
            col->max_def = opt0;
            if (e->repetition == 2) {
                /* a bare repeated primitive: a list of required items */
                col->is_list = 1;
                col->max_rep = 1;
                col->max_def = 1;
                col->def_list = 0;
                col->def_item = 1;
            }
            pos++;
            leaf++;
        } else {
            /* One level of LIST: group (LIST) { repeated group { one leaf } } or the 2-level
             * group (LIST) { repeated leaf }. Anything else is a nested type we refuse. */
            int is_list_group = e->converted == 3 || e->logical == 3;
            int sub_start = pos, sub_leaves = 0, need = e->num_children;
            int k = pos + 1;
            /* walk the subtree */
            while (need > 0) {
                if (k >= n) return bad_meta(f, err, "the schema ends inside a group");
                if (s[k].num_children < 0 || s[k].num_children > n) return bad_meta(f, err, "bad num_children");
                need += s[k].num_children - 1;
                if (s[k].num_children == 0) sub_leaves++;
                k++;
                if (k - sub_start > n) return bad_meta(f, err, "the schema loops");
            }
            pos = k;
            col->leaf = leaf;
            leaf += sub_leaves;
            schema_el *r = &s[sub_start + 1];
            if (!is_list_group || e->num_children != 1 || e->repetition == 2 || r->repetition != 2) {
                col->unsupported = "a nested type (struct, map or repeated group) other than one level of LIST";
                continue;
            }
            schema_el *item = NULL;
            int item_opt = 0;
            if (r->num_children == 0) {
                item = r; /* 2-level list: the repeated field is the item */
            } else if (r->num_children == 1 && s[sub_start + 2].num_children == 0 &&
                       s[sub_start + 2].repetition != 2) {
                item = &s[sub_start + 2];
                item_opt = item->repetition == 1;
            } else {
                col->unsupported = "a list nested deeper than one level, or a list of structs";
                continue;
            }
            if (item->type < 0 || item->type > 7) return bad_meta(f, err, "a leaf without a physical type");
            col->type = (pq_type)item->type;
            col->type_length = item->type_length;
            col->is_string = item->logical == 1 || item->converted == 0;
            col->is_list = 1;
            col->max_rep = 1;
            col->def_list = opt0;
            col->def_item = opt0 + 1;
            col->max_def = opt0 + 1 + item_opt;
        }
        if (col->type == PQ_INT96) col->unsupported = "physical type INT96";
        else if (col->type == PQ_FIXED_LEN_BYTE_ARRAY && (col->type_length <= 0 || col->type_length > (1 << 24)))
            col->unsupported = "FIXED_LEN_BYTE_ARRAY without a sane type_length";
    }
    if (pos != n) return bad_meta(f, err, "the schema has more elements than its root says");
    f->n_leaves = leaf;
    return ERGO_OK;
}

static ergo_status parse_footer(pq_file *f, ergo_error *err) {
    if (f->size < 12) return ergo_fail(err, ERGO_E_FORMAT, "%s: not a parquet file (%zu bytes, too short)", f->name, f->size);
    if (f->size >= 7 && memcmp(f->data, "version", 7) == 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: a git-lfs pointer, not the data (run `git lfs pull`)", f->name);
    if (memcmp(f->data, "PAR1", 4) != 0) return ergo_fail(err, ERGO_E_FORMAT, "%s: not a parquet file (no PAR1 at the start)", f->name);
    const uint8_t *tail = f->data + f->size - 8;
    if (memcmp(tail + 4, "PARE", 4) == 0)
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: encrypted parquet (PARE footer) is not supported", f->name);
    if (memcmp(tail + 4, "PAR1", 4) != 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: truncated parquet file (no PAR1 at the end)", f->name);
    uint32_t flen = (uint32_t)tail[0] | (uint32_t)tail[1] << 8 | (uint32_t)tail[2] << 16 | (uint32_t)tail[3] << 24;
    if (flen > f->size - 12)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: footer length %u is more than the file holds (%zu bytes)", f->name, flen, f->size);
    tin t = {tail - flen, tail, 0};
    uint64_t data_end = f->size - 8 - flen;

    schema_el *schema = NULL;
    uint64_t n_schema = 0;
    ergo_status st = ERGO_OK;
    int last = 0, id, ft, encrypted = 0, have_rows = 0;
    while (!t.bad && t_field(&t, &last, &id, &ft)) {
        if (id == 2 && ft == 9) {
            int et;
            uint64_t n = t_list(&t, &et);
            if (t.bad || et != 12 || n > PQ_MAX_SCHEMA || schema) { st = bad_meta(f, err, "schema list"); goto out; }
            schema = calloc(n ? n : 1, sizeof *schema);
            if (!schema) { st = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", f->name); goto out; }
            for (n_schema = 0; n_schema < n && !t.bad;) {
                if (!read_schema_el(&t, &schema[n_schema++])) t.bad = 1;
            }
        } else if (id == 3 && ft == 6) {
            f->num_rows = t_zigzag(&t);
            have_rows = 1;
        } else if (id == 4 && ft == 9) {
            int et;
            uint64_t n = t_list(&t, &et);
            if (t.bad || et != 12 || n > PQ_MAX_ROW_GROUPS || f->groups) { st = bad_meta(f, err, "row group list"); goto out; }
            f->groups = calloc(n ? n : 1, sizeof *f->groups);
            if (!f->groups) { st = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", f->name); goto out; }
            for (uint64_t g = 0; g < n && !t.bad; g++) {
                row_group *rg = &f->groups[f->n_groups++];
                int l2 = 0, id2, ft2;
                while (!t.bad && t_field(&t, &l2, &id2, &ft2)) {
                    if (id2 == 1 && ft2 == 9 && !rg->chunks) {
                        int et2;
                        uint64_t nc = t_list(&t, &et2);
                        if (t.bad || et2 != 12 || nc > PQ_MAX_SCHEMA) { t.bad = 1; break; }
                        rg->chunks = calloc(nc ? nc : 1, sizeof *rg->chunks);
                        if (!rg->chunks) { st = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", f->name); goto out; }
                        /* stash the count in first_row until checked below */
                        rg->first_row = (int64_t)nc;
                        for (uint64_t c = 0; c < nc && !t.bad; c++) read_chunk(&t, &rg->chunks[c]);
                    } else if (id2 == 3 && ft2 == 6) {
                        rg->num_rows = t_zigzag(&t);
                    } else t_skip(&t, ft2, 1);
                }
                if (!rg->chunks) t.bad = 1;
            }
        } else if (id == 6 && ft == 8) {
            free(f->created_by);
            f->created_by = t_string(&t);
        } else if (id == 8 || id == 9) {
            encrypted = 1;
            t_skip(&t, ft, 1);
        } else t_skip(&t, ft, 1);
    }
    if (t.bad) { st = bad_meta(f, err, "the Thrift metadata is truncated or malformed"); goto out; }
    if (encrypted) { st = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: encrypted parquet (encryption_algorithm in the footer) is not supported", f->name); goto out; }
    if (!schema || !have_rows || !f->groups) { st = bad_meta(f, err, "schema, num_rows or row_groups missing"); goto out; }
    if ((st = build_columns(f, schema, (int)n_schema, err)) != ERGO_OK) goto out;

    int64_t rows = 0;
    for (int g = 0; g < f->n_groups; g++) {
        row_group *rg = &f->groups[g];
        if (rg->first_row != f->n_leaves) {
            st = ergo_fail(err, ERGO_E_FORMAT, "%s: row group %d has %lld column chunks, the schema %d leaves",
                           f->name, g, (long long)rg->first_row, f->n_leaves);
            goto out;
        }
        if (rg->num_rows < 0 || rg->num_rows > INT64_MAX - rows) { st = bad_meta(f, err, "a row group's num_rows"); goto out; }
        rg->first_row = rows;
        rows += rg->num_rows;
        for (int c = 0; c < f->n_leaves; c++) {
            chunk_meta *cm = &rg->chunks[c];
            if (!cm->has_meta || cm->external || cm->encrypted) continue; /* refused when selected */
            int64_t start = cm->data_page_offset;
            if (cm->dict_page_offset > 0 && cm->dict_page_offset < start) start = cm->dict_page_offset;
            if (start < 4 || cm->total_compressed <= 0 || (uint64_t)start > data_end ||
                (uint64_t)cm->total_compressed > data_end - (uint64_t)start) {
                st = ergo_fail(err, ERGO_E_FORMAT,
                               "%s: row group %d, column chunk %d: byte range %lld+%lld is outside the data (%llu bytes)",
                               f->name, g, c, (long long)start, (long long)cm->total_compressed,
                               (unsigned long long)data_end);
                goto out;
            }
            if (cm->num_values < 0) { st = bad_meta(f, err, "a negative num_values"); goto out; }
            cm->start = (uint64_t)start;
            cm->size = (uint64_t)cm->total_compressed;
        }
    }
    if (rows != f->num_rows) {
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: num_rows %lld but the row groups hold %lld", f->name,
                       (long long)f->num_rows, (long long)rows);
        goto out;
    }
out:
    for (uint64_t i = 0; i < n_schema; i++) free(schema[i].name);
    free(schema);
    return st;
}

ergo_status pq_open_bytes(pq_file **out, const uint8_t *data, size_t size, const char *name,
                          const pq_limits *limits, ergo_error *err) {
    *out = NULL;
    pq_file *f = calloc(1, sizeof *f);
    if (!f || !(f->name = strdup(name))) {
        free(f);
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", name);
    }
    f->data = data;
    f->size = size;
    if (limits) f->lim = *limits;
    if (!f->lim.max_page_bytes) f->lim.max_page_bytes = (size_t)1 << 30;
    if (!f->lim.max_list_items) f->lim.max_list_items = 1 << 20;
    ergo_status st = parse_footer(f, err);
    if (st != ERGO_OK) {
        pq_close(f);
        return st;
    }
    *out = f;
    return ERGO_OK;
}

ergo_status pq_open(pq_file **out, const char *path, const pq_limits *limits, ergo_error *err) {
    *out = NULL;
    mapped_file mf;
    ergo_status st = file_map(&mf, path, err);
    if (st != ERGO_OK) return st;
    st = pq_open_bytes(out, mf.data, mf.size, path, limits, err);
    if (st != ERGO_OK) {
        file_unmap(&mf);
        return st;
    }
    (*out)->mf = mf;
    (*out)->mapped = 1;
    return ERGO_OK;
}

const char *pq_name(const pq_file *f) { return f->name; }
int64_t pq_num_rows(const pq_file *f) { return f->num_rows; }
int pq_num_row_groups(const pq_file *f) { return f->n_groups; }
int64_t pq_row_group_rows(const pq_file *f, int g) { return f->groups[g].num_rows; }
int pq_num_columns(const pq_file *f) { return f->n_cols; }
const pq_column *pq_column_at(const pq_file *f, int i) { return &f->cols[i]; }
const char *pq_created_by(const pq_file *f) { return f->created_by ? f->created_by : ""; }

int pq_column_chunk_range(const pq_file *f, int g, int col, uint64_t *start, uint64_t *size) {
    if (g < 0 || g >= f->n_groups || col < 0 || col >= f->n_cols) return -1;
    const chunk_meta *cm = &f->groups[g].chunks[f->cols[col].leaf];
    if (!cm->has_meta || cm->external || cm->encrypted) return -1;
    *start = cm->start;
    *size = cm->size;
    return 0;
}

int pq_find_column(const pq_file *f, const char *name) {
    for (int i = 0; i < f->n_cols; i++)
        if (strcmp(f->cols[i].name, name) == 0) return i;
    return -1;
}

/* ---- RLE / bit-packed hybrid ------------------------------------------------------ */

typedef struct rle_dec {
    const uint8_t *p, *end;
    int bw;                /* bit width, 0..32 */
    uint64_t run_left;     /* values left in the current RLE run */
    uint32_t run_val;
    uint64_t packed_left;  /* values left in the current bit-packed run */
    const uint8_t *bp;     /* its bytes */
    size_t bp_bytes;
    uint64_t bitpos;
} rle_dec;

static void rle_init(rle_dec *d, const uint8_t *p, size_t n, int bw) {
    memset(d, 0, sizeof *d);
    d->p = p;
    d->end = p + n;
    d->bw = bw;
}

/* Returns 0 on success, -1 when the data ends or is malformed. */
static int rle_next(rle_dec *d, uint32_t *out) {
    while (!d->run_left && !d->packed_left) {
        tin t = {d->p, d->end, 0};
        uint64_t h = t_varint(&t);
        if (t.bad) return -1;
        d->p = t.p;
        if (h & 1) {
            uint64_t groups = h >> 1;
            if (groups == 0 || groups > ((uint64_t)1 << 40)) return -1;
            uint64_t bytes = groups * (uint64_t)d->bw;
            size_t avail = (size_t)(d->end - d->p);
            /* the last run may be cut short by some writers: take what is there */
            d->bp = d->p;
            d->bp_bytes = bytes < avail ? (size_t)bytes : avail;
            d->p += d->bp_bytes;
            d->packed_left = groups * 8;
            d->bitpos = 0;
        } else {
            d->run_left = h >> 1;
            int nb = (d->bw + 7) / 8;
            if (d->end - d->p < nb) return -1;
            uint32_t v = 0;
            for (int i = 0; i < nb; i++) v |= (uint32_t)d->p[i] << (8 * i);
            d->p += nb;
            if (d->bw < 32 && (v >> d->bw)) return -1;
            d->run_val = v;
        }
    }
    if (d->run_left) {
        d->run_left--;
        *out = d->run_val;
        return 0;
    }
    if (d->bitpos + (uint64_t)d->bw > (uint64_t)d->bp_bytes * 8) return -1;
    uint64_t v = 0;
    for (int i = 0; i < d->bw; i++) {
        uint64_t b = d->bitpos + (uint64_t)i;
        v |= (uint64_t)((d->bp[b >> 3] >> (b & 7)) & 1) << i;
    }
    d->bitpos += (uint64_t)d->bw;
    d->packed_left--;
    *out = (uint32_t)v;
    return 0;
}

static int bit_width(int max_level) {
    int w = 0;
    while ((1 << w) <= max_level) w++;
    return w;
}

/* ---- column cursors ---------------------------------------------------------------- */

typedef struct cursor {
    const pq_column *col;
    int leaf;
    /* chunk */
    const chunk_meta *cm;
    uint64_t pos, end;     /* next page header, chunk end (file offsets) */
    int64_t values_left;   /* from the chunk's num_values */
    /* dictionary of this chunk */
    uint8_t *dict_buf;     /* owned decompressed dictionary page, or NULL if in place */
    pq_cell *dict;         /* (n_dict) */
    int64_t n_dict;
    /* current data page */
    uint8_t *page_buf;     /* owned decompressed page, or NULL if in place */
    int64_t page_left;     /* values left in the page */
    rle_dec rep, def;
    int dict_encoded;
    int bool_rle;          /* BOOLEAN values RLE-encoded (in idx) */
    rle_dec idx;
    const uint8_t *vp, *vend; /* PLAIN values */
    uint64_t bool_bit;
    /* one entry of look-ahead for lists */
    int have_peek;
    int peek_rep, peek_def;
    pq_cell peek_val;
    /* the current cell and its list storage */
    pq_cell cell;
    pq_cell *items;
    int64_t items_cap;
    uint8_t *arena;       /* list item bytes */
    size_t arena_len, arena_cap;
} cursor;

struct pq_reader {
    pq_file *f;
    cursor *cur; /* (n) */
    int n;
    int group;         /* current row group */
    int64_t in_group;  /* rows delivered from it */
    int64_t row;       /* file row of the current row */
    int failed;
    int64_t lost_first, lost_end;
};

static ergo_status cur_fail(pq_reader *r, cursor *c, ergo_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static ergo_status cur_fail(pq_reader *r, cursor *c, ergo_error *err, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return ergo_fail(err, ERGO_E_FORMAT, "%s: row group %d, column `%s': %s", r->f->name, r->group,
                     c->col->name, what);
}

static void cur_drop_pages(cursor *c) {
    free(c->dict_buf);
    c->dict_buf = NULL;
    free(c->dict);
    c->dict = NULL;
    c->n_dict = 0;
    free(c->page_buf);
    c->page_buf = NULL;
    c->page_left = 0;
    c->have_peek = 0;
}

static ergo_status cur_start_chunk(pq_reader *r, cursor *c, ergo_error *err) {
    cur_drop_pages(c);
    c->cm = &r->f->groups[r->group].chunks[c->leaf];
    if (!c->cm->has_meta) return cur_fail(r, c, err, "the column chunk has no metadata");
    if (c->cm->external) return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: column `%s': column chunks in other files are not supported", r->f->name, c->col->name);
    if (c->cm->encrypted) return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: column `%s': encrypted columns are not supported", r->f->name, c->col->name);
    if (c->cm->type != (int)c->col->type) return cur_fail(r, c, err, "chunk type %d differs from the schema's %d", c->cm->type, (int)c->col->type);
    int codec = c->cm->codec;
    if (codec != CODEC_NONE && codec != CODEC_SNAPPY && codec != CODEC_GZIP && codec != CODEC_ZSTD)
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: column `%s': codec %s (%d) is not supported (UNCOMPRESSED, SNAPPY, GZIP, ZSTD are)",
                         r->f->name, c->col->name, codec_name(codec), codec);
    c->pos = c->cm->start;
    c->end = c->cm->start + c->cm->size;
    c->values_left = c->cm->num_values;
    return ERGO_OK;
}

/* Decompresses (or points at) n compressed bytes into exactly `want` bytes. */
static ergo_status decompress(pq_reader *r, cursor *c, const uint8_t *src, size_t n, size_t want,
                              uint8_t **owned, const uint8_t **out, ergo_error *err) {
    *owned = NULL;
    if (want > r->f->lim.max_page_bytes)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: row group %d, column `%s': a page of %zu bytes is over the limit of %zu",
                         r->f->name, r->group, c->col->name, want, r->f->lim.max_page_bytes);
    int codec = c->cm->codec;
    if (codec == CODEC_NONE) {
        if (n != want) return cur_fail(r, c, err, "uncompressed page of %zu bytes says %zu", n, want);
        *out = src;
        return ERGO_OK;
    }
    uint8_t *buf = malloc(want ? want : 1);
    if (!buf) return ergo_fail(err, ERGO_E_NOMEM, "%s: column `%s': out of memory for a page of %zu bytes", r->f->name, c->col->name, want);
    if (codec == CODEC_SNAPPY) {
        size_t len;
        if (snappy_uncompressed_length((const char *)src, n, &len) != SNAPPY_OK || len != want) {
            free(buf);
            return cur_fail(r, c, err, "bad snappy data (header length does not match the page's %zu bytes)", want);
        }
        len = want;
        if (snappy_uncompress((const char *)src, n, (char *)buf, &len) != SNAPPY_OK || len != want) {
            free(buf);
            return cur_fail(r, c, err, "bad snappy data");
        }
    } else if (codec == CODEC_ZSTD) {
        size_t got = ZSTD_decompress(buf, want, src, n);
        if (ZSTD_isError(got) || got != want) {
            free(buf);
            return cur_fail(r, c, err, "bad zstd data (%s)", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong size");
        }
    } else { /* GZIP: a gzip stream (zlib headers accepted too) */
        z_stream z;
        memset(&z, 0, sizeof z);
        if (inflateInit2(&z, 15 + 32) != Z_OK) {
            free(buf);
            return ergo_fail(err, ERGO_E_NOMEM, "%s: zlib init failed", r->f->name);
        }
        int zr = Z_OK;
        const uint8_t *p = src;
        size_t left = n, produced = 0;
        while (zr != Z_STREAM_END) {
            z.next_in = (Bytef *)p;
            z.avail_in = left > UINT_MAX ? UINT_MAX : (uInt)left;
            z.next_out = buf + produced;
            z.avail_out = want - produced > UINT_MAX ? UINT_MAX : (uInt)(want - produced);
            uInt in0 = z.avail_in, out0 = z.avail_out;
            zr = inflate(&z, Z_NO_FLUSH);
            p += in0 - z.avail_in;
            left -= in0 - z.avail_in;
            produced += out0 - z.avail_out;
            if (zr != Z_OK && zr != Z_STREAM_END) break;
            if (zr == Z_OK && in0 == z.avail_in && out0 == z.avail_out) { zr = Z_DATA_ERROR; break; }
        }
        inflateEnd(&z);
        if (zr != Z_STREAM_END || produced != want) {
            free(buf);
            return cur_fail(r, c, err, "bad gzip data (%s)", zr == Z_STREAM_END ? "wrong size" : "inflate failed");
        }
    }
    *owned = buf;
    *out = buf;
    return ERGO_OK;
}

/* Decodes one PLAIN value of the column's type from [*p, end). */
static int plain_value(const pq_column *col, const uint8_t **p, const uint8_t *end, uint64_t *bool_bit,
                       const uint8_t *bool_base, pq_cell *v) {
    size_t avail = (size_t)(end - *p);
    memset(v, 0, sizeof *v);
    switch (col->type) {
    case PQ_BOOLEAN: {
        uint64_t b = *bool_bit;
        if ((b >> 3) >= (uint64_t)(end - bool_base)) return -1;
        v->kind = PQ_CELL_INT;
        v->i = (bool_base[b >> 3] >> (b & 7)) & 1;
        *bool_bit = b + 1;
        return 0;
    }
    case PQ_INT32: {
        if (avail < 4) return -1;
        uint32_t u = (uint32_t)(*p)[0] | (uint32_t)(*p)[1] << 8 | (uint32_t)(*p)[2] << 16 | (uint32_t)(*p)[3] << 24;
        v->kind = PQ_CELL_INT;
        v->i = (int32_t)u;
        *p += 4;
        return 0;
    }
    case PQ_INT64: {
        if (avail < 8) return -1;
        uint64_t u = 0;
        for (int i = 0; i < 8; i++) u |= (uint64_t)(*p)[i] << (8 * i);
        v->kind = PQ_CELL_INT;
        v->i = (int64_t)u;
        *p += 8;
        return 0;
    }
    case PQ_FLOAT: {
        if (avail < 4) return -1;
        float x;
        memcpy(&x, *p, 4);
        v->kind = PQ_CELL_DOUBLE;
        v->d = (double)x;
        *p += 4;
        return 0;
    }
    case PQ_DOUBLE: {
        if (avail < 8) return -1;
        memcpy(&v->d, *p, 8);
        v->kind = PQ_CELL_DOUBLE;
        *p += 8;
        return 0;
    }
    case PQ_BYTE_ARRAY: {
        if (avail < 4) return -1;
        uint32_t n = (uint32_t)(*p)[0] | (uint32_t)(*p)[1] << 8 | (uint32_t)(*p)[2] << 16 | (uint32_t)(*p)[3] << 24;
        if (n > avail - 4) return -1;
        v->kind = PQ_CELL_BYTES;
        v->ptr = *p + 4;
        v->len = n;
        *p += 4 + (size_t)n;
        return 0;
    }
    case PQ_FIXED_LEN_BYTE_ARRAY: {
        size_t n = (size_t)col->type_length;
        if (avail < n) return -1;
        v->kind = PQ_CELL_BYTES;
        v->ptr = *p;
        v->len = n;
        *p += n;
        return 0;
    }
    default: return -1;
    }
}

static ergo_status read_dict_page(pq_reader *r, cursor *c, const uint8_t *data, size_t n, int64_t count,
                                  int enc, ergo_error *err) {
    if (enc != ENC_PLAIN && enc != ENC_PLAIN_DICT)
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: column `%s': dictionary encoding %s is not supported",
                         r->f->name, c->col->name, encoding_name(enc));
    if (c->col->type == PQ_BOOLEAN) return cur_fail(r, c, err, "a dictionary page for BOOLEAN values");
    /* every entry takes at least 4 bytes (8 for INT64/DOUBLE), so a count larger than
     * the page can hold is a lie and must not size an allocation; what is left is at most
     * 14 bytes of cells per page byte, within max_page_bytes */
    uint64_t min = c->col->type == PQ_INT64 || c->col->type == PQ_DOUBLE ? 8
                 : c->col->type == PQ_FIXED_LEN_BYTE_ARRAY       ? (uint64_t)c->col->type_length
                                                                  : 4;
    if (count < 0 || (uint64_t)count > n / min)
        return cur_fail(r, c, err, "dictionary page says %lld values in %zu bytes", (long long)count, n);
    c->dict = malloc(((size_t)count ? (size_t)count : 1) * sizeof *c->dict);
    if (!c->dict) return ergo_fail(err, ERGO_E_NOMEM, "%s: column `%s': out of memory for the dictionary", r->f->name, c->col->name);
    const uint8_t *p = data, *end = data + n;
    uint64_t bb = 0;
    for (int64_t i = 0; i < count; i++)
        if (plain_value(c->col, &p, end, &bb, data, &c->dict[i]) != 0)
            return cur_fail(r, c, err, "dictionary page ends at entry %lld of %lld", (long long)i, (long long)count);
    c->n_dict = count;
    return ERGO_OK;
}

/* Reads page headers until a data page is loaded. Returns ERGO_OK with *end = 1 when
 * the chunk holds no more pages. */
static ergo_status cur_next_page(pq_reader *r, cursor *c, int *at_end, ergo_error *err) {
    const uint8_t *fd = r->f->data;
    *at_end = 0;
    for (;;) {
        free(c->page_buf);
        c->page_buf = NULL;
        if (c->pos >= c->end || c->values_left <= 0) {
            *at_end = 1;
            return ERGO_OK;
        }
        tin t = {fd + c->pos, fd + c->end, 0};
        int last = 0, id, ft;
        int32_t type = -1, usize = -1, csize = -1;
        int32_t nv = -1, enc = -1, denc = ENC_RLE, renc = ENC_RLE, nnulls = 0, nrows = 0;
        int32_t dlen = -1, rlen = -1;
        int is_compressed = 1, have_sub = 0;
        while (!t.bad && t_field(&t, &last, &id, &ft)) {
            if (id == 1 && ft == 5) type = t_i32(&t);
            else if (id == 2 && ft == 5) usize = t_i32(&t);
            else if (id == 3 && ft == 5) csize = t_i32(&t);
            else if ((id == 5 || id == 7 || id == 8) && ft == 12) {
                have_sub = id;
                int l2 = 0, id2, ft2;
                while (!t.bad && t_field(&t, &l2, &id2, &ft2)) {
                    if (id2 == 1 && ft2 == 5) nv = t_i32(&t);
                    else if (id == 5 && id2 == 2 && ft2 == 5) enc = t_i32(&t);
                    else if (id == 5 && id2 == 3 && ft2 == 5) denc = t_i32(&t);
                    else if (id == 5 && id2 == 4 && ft2 == 5) renc = t_i32(&t);
                    else if (id == 7 && id2 == 2 && ft2 == 5) enc = t_i32(&t);
                    else if (id == 8 && id2 == 2 && ft2 == 5) nnulls = t_i32(&t);
                    else if (id == 8 && id2 == 3 && ft2 == 5) nrows = t_i32(&t);
                    else if (id == 8 && id2 == 4 && ft2 == 5) enc = t_i32(&t);
                    else if (id == 8 && id2 == 5 && ft2 == 5) dlen = t_i32(&t);
                    else if (id == 8 && id2 == 6 && ft2 == 5) rlen = t_i32(&t);
                    else if (id == 8 && id2 == 7 && (ft2 == 1 || ft2 == 2)) is_compressed = t_bool(ft2);
                    else t_skip(&t, ft2, 2);
                }
            } else t_skip(&t, ft, 1);
        }
        (void)nnulls;
        (void)nrows;
        if (t.bad) return cur_fail(r, c, err, "page header at offset %llu is truncated or malformed", (unsigned long long)c->pos);
        uint64_t body = (uint64_t)(t.p - fd);
        if (usize < 0 || csize < 0 || (uint64_t)csize > c->end - body)
            return cur_fail(r, c, err, "page at offset %llu: compressed size %d is outside the column chunk",
                            (unsigned long long)c->pos, csize);
        const uint8_t *src = fd + body;
        c->pos = body + (uint64_t)csize;
        if (type == PAGE_INDEX) continue;
        if (type == PAGE_DICT) {
            if (have_sub != 7 || nv < 0) return cur_fail(r, c, err, "dictionary page without its header");
            if (c->dict) return cur_fail(r, c, err, "a second dictionary page");
            const uint8_t *data;
            ergo_status st = decompress(r, c, src, (size_t)csize, (size_t)usize, &c->dict_buf, &data, err);
            if (st != ERGO_OK) return st;
            st = read_dict_page(r, c, data, (size_t)usize, nv, enc, err);
            if (st != ERGO_OK) return st;
            continue;
        }
        if (type != PAGE_DATA && type != PAGE_DATA_V2)
            return cur_fail(r, c, err, "unknown page type %d", type);
        if ((type == PAGE_DATA && have_sub != 5) || (type == PAGE_DATA_V2 && have_sub != 8) || nv < 0)
            return cur_fail(r, c, err, "data page without its header");
        if (nv > c->values_left) return cur_fail(r, c, err, "a page of %d values; the chunk has %lld left", nv, (long long)c->values_left);
        int bool_rle = enc == ENC_RLE && c->col->type == PQ_BOOLEAN; /* pyarrow's v2 pages */
        if (enc != ENC_PLAIN && enc != ENC_PLAIN_DICT && enc != ENC_RLE_DICT && !bool_rle)
            return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: row group %d, column `%s': value encoding %s (%d) is not supported (PLAIN, PLAIN_DICTIONARY, RLE_DICTIONARY are)",
                             r->f->name, r->group, c->col->name, encoding_name(enc), enc);
        int dict_enc = enc == ENC_PLAIN_DICT || enc == ENC_RLE_DICT;
        if (dict_enc && !c->dict) return cur_fail(r, c, err, "a dictionary-encoded page without a dictionary page");
        const uint8_t *data, *lv_rep = NULL, *lv_def = NULL, *vals;
        size_t n_rep = 0, n_def = 0, n_vals;
        int rbw = bit_width(c->col->max_rep), dbw = bit_width(c->col->max_def);
        if (type == PAGE_DATA) {
            if ((c->col->max_rep && renc != ENC_RLE) || (c->col->max_def && denc != ENC_RLE))
                return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: column `%s': level encoding %s is not supported (RLE is)",
                                 r->f->name, c->col->name, encoding_name(c->col->max_rep && renc != ENC_RLE ? renc : denc));
            ergo_status st = decompress(r, c, src, (size_t)csize, (size_t)usize, &c->page_buf, &data, err);
            if (st != ERGO_OK) return st;
            const uint8_t *p = data, *end = data + usize;
            if (c->col->max_rep) {
                if (end - p < 4) return cur_fail(r, c, err, "page too short for its repetition levels");
                uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                p += 4;
                if (n > (size_t)(end - p)) return cur_fail(r, c, err, "repetition levels of %u bytes overrun the page", n);
                lv_rep = p;
                n_rep = n;
                p += n;
            }
            if (c->col->max_def) {
                if (end - p < 4) return cur_fail(r, c, err, "page too short for its definition levels");
                uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                p += 4;
                if (n > (size_t)(end - p)) return cur_fail(r, c, err, "definition levels of %u bytes overrun the page", n);
                lv_def = p;
                n_def = n;
                p += n;
            }
            vals = p;
            n_vals = (size_t)(end - p);
        } else {
            if (dlen < 0 || rlen < 0 || (int64_t)dlen + rlen > csize || (int64_t)dlen + rlen > usize)
                return cur_fail(r, c, err, "v2 page level lengths %d+%d do not fit the page", rlen, dlen);
            lv_rep = src;
            n_rep = (size_t)rlen;
            lv_def = src + rlen;
            n_def = (size_t)dlen;
            const uint8_t *vsrc = src + rlen + dlen;
            size_t vc = (size_t)csize - (size_t)rlen - (size_t)dlen, vu = (size_t)usize - (size_t)rlen - (size_t)dlen;
            if (!is_compressed) {
                if (vc != vu) return cur_fail(r, c, err, "uncompressed v2 page sizes differ");
                vals = vsrc;
            } else if (vu == 0 && vc == 0) {
                vals = vsrc; /* all nulls: nothing was compressed */
            } else {
                ergo_status st = decompress(r, c, vsrc, vc, vu, &c->page_buf, &vals, err);
                if (st != ERGO_OK) return st;
            }
            n_vals = vu;
        }
        rle_init(&c->rep, lv_rep ? lv_rep : vals, n_rep, rbw);
        rle_init(&c->def, lv_def ? lv_def : vals, n_def, dbw);
        c->dict_encoded = dict_enc;
        c->bool_rle = bool_rle;
        if (bool_rle) {
            /* RLE-encoded booleans: a 4-byte length, then the hybrid at bit width 1 */
            if (n_vals < 4) return cur_fail(r, c, err, "RLE boolean page too short");
            uint32_t n = (uint32_t)vals[0] | (uint32_t)vals[1] << 8 | (uint32_t)vals[2] << 16 | (uint32_t)vals[3] << 24;
            if (n > n_vals - 4) return cur_fail(r, c, err, "RLE booleans of %u bytes overrun the page", n);
            rle_init(&c->idx, vals + 4, n, 1);
        } else if (dict_enc) {
            if (n_vals == 0) {
                rle_init(&c->idx, vals, 0, 0); /* only nulls; any index read fails */
            } else {
                int ibw = vals[0];
                if (ibw > 32) return cur_fail(r, c, err, "dictionary index bit width %d", ibw);
                rle_init(&c->idx, vals + 1, n_vals - 1, ibw);
            }
        } else {
            c->vp = vals;
            c->vend = vals + n_vals;
            c->bool_bit = 0;
        }
        c->page_left = nv;
        c->values_left -= nv;
        if (nv > 0) return ERGO_OK;
    }
}

/* Reads one (rep, def, value) entry. *at_end = 1 when the chunk is exhausted. */
static ergo_status cur_entry(pq_reader *r, cursor *c, int *rep, int *def, pq_cell *v, int *at_end,
                             ergo_error *err) {
    *at_end = 0;
    if (c->have_peek) {
        c->have_peek = 0;
        *rep = c->peek_rep;
        *def = c->peek_def;
        *v = c->peek_val;
        return ERGO_OK;
    }
    if (c->page_left <= 0) {
        ergo_status st = cur_next_page(r, c, at_end, err);
        if (st != ERGO_OK || *at_end) return st;
    }
    uint32_t rl = 0, dl = 0;
    if (c->col->max_rep && rle_next(&c->rep, &rl) != 0) return cur_fail(r, c, err, "repetition levels end early");
    if (c->col->max_def && rle_next(&c->def, &dl) != 0) return cur_fail(r, c, err, "definition levels end early");
    if ((int)rl > c->col->max_rep || (int)dl > c->col->max_def || rl > 1 || dl > 8)
        return cur_fail(r, c, err, "level %u/%u above the maximum %d/%d", rl, dl, c->col->max_rep, c->col->max_def);
    c->page_left--;
    *rep = (int)rl;
    *def = (int)dl;
    memset(v, 0, sizeof *v);
    if ((int)dl == c->col->max_def) {
        if (c->bool_rle) {
            uint32_t b;
            if (rle_next(&c->idx, &b) != 0) return cur_fail(r, c, err, "RLE boolean values end early");
            v->kind = PQ_CELL_INT;
            v->i = b;
        } else if (c->dict_encoded) {
            uint32_t k;
            if (rle_next(&c->idx, &k) != 0) return cur_fail(r, c, err, "dictionary indices end early");
            if ((int64_t)k >= c->n_dict) return cur_fail(r, c, err, "dictionary index %u of %lld entries", k, (long long)c->n_dict);
            *v = c->dict[k];
        } else if (plain_value(c->col, &c->vp, c->vend, &c->bool_bit, c->vp, v) != 0) {
            return cur_fail(r, c, err, "page values end early");
        }
    }
    return ERGO_OK;
}

static ergo_status cur_push_item(pq_reader *r, cursor *c, const pq_cell *v, ergo_error *err) {
    if (c->cell.n_items >= r->f->lim.max_list_items)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: column `%s': a list of more than %lld items", r->f->name,
                         c->col->name, (long long)r->f->lim.max_list_items);
    if (c->cell.n_items == c->items_cap) {
        int64_t cap = c->items_cap ? c->items_cap * 2 : 8;
        pq_cell *it = realloc(c->items, (size_t)cap * sizeof *it);
        if (!it) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", r->f->name);
        c->items = it;
        c->items_cap = cap;
    }
    pq_cell *dst = &c->items[c->cell.n_items++];
    *dst = *v;
    if (v->kind == PQ_CELL_BYTES) {
        /* copy: the item's page may be freed before the record ends; pointers are fixed
         * up once the record is complete (the arena may move) */
        if (v->len > r->f->lim.max_page_bytes || c->arena_len + v->len < c->arena_len)
            return ergo_fail(err, ERGO_E_LIMIT, "%s: column `%s': list items too large", r->f->name, c->col->name);
        if (c->arena_len + v->len > c->arena_cap) {
            size_t cap = c->arena_cap ? c->arena_cap : 256;
            while (cap < c->arena_len + v->len) cap *= 2;
            uint8_t *a = realloc(c->arena, cap);
            if (!a) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", r->f->name);
            c->arena = a;
            c->arena_cap = cap;
        }
        if (v->len) memcpy(c->arena + c->arena_len, v->ptr, v->len);
        dst->ptr = (const uint8_t *)(uintptr_t)c->arena_len; /* an offset until fixed up */
        c->arena_len += v->len;
    }
    return ERGO_OK;
}

/* Reads the next record of one column into c->cell. */
static ergo_status cur_record(pq_reader *r, cursor *c, ergo_error *err) {
    int rep, def, at_end;
    pq_cell v;
    ergo_status st = cur_entry(r, c, &rep, &def, &v, &at_end, err);
    if (st != ERGO_OK) return st;
    if (at_end) return cur_fail(r, c, err, "the column chunk ends before the row group's %lld rows",
                                (long long)r->f->groups[r->group].num_rows);
    if (rep != 0) return cur_fail(r, c, err, "a record starts with repetition level %d", rep);
    memset(&c->cell, 0, sizeof c->cell);
    if (!c->col->is_list) {
        c->cell = v; /* kind NULL when def < max_def */
        return ERGO_OK;
    }
    if (def < c->col->def_list) {
        c->cell.kind = PQ_CELL_NULL;
    } else {
        c->cell.kind = PQ_CELL_LIST;
        c->arena_len = 0;
        if (def >= c->col->def_item) {
            for (;;) {
                if ((st = cur_push_item(r, c, &v, err)) != ERGO_OK) return st;
                st = cur_entry(r, c, &rep, &def, &v, &at_end, err);
                if (st != ERGO_OK) return st;
                if (at_end) break;
                if (rep == 0) {
                    c->have_peek = 1;
                    c->peek_rep = rep;
                    c->peek_def = def;
                    c->peek_val = v;
                    break;
                }
                if (def < c->col->def_item) return cur_fail(r, c, err, "an empty list entry inside a list");
            }
        }
        for (int64_t i = 0; i < c->cell.n_items; i++)
            if (c->items[i].kind == PQ_CELL_BYTES) c->items[i].ptr = c->arena + (uintptr_t)c->items[i].ptr;
        c->cell.items = c->items;
        return ERGO_OK;
    }
    /* a null list is one entry; the next record starts with the next entry */
    return ERGO_OK;
}

ergo_status pq_reader_open(pq_reader **out, pq_file *f, const char *const *names, int n, ergo_error *err) {
    *out = NULL;
    pq_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->cur = calloc((size_t)(n > 0 ? n : 1), sizeof *r->cur))) {
        free(r);
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", f->name);
    }
    r->f = f;
    r->n = n;
    r->row = -1;
    for (int k = 0; k < n; k++) {
        int i = pq_find_column(f, names[k]);
        if (i < 0) {
            char have[256] = "";
            size_t used = 0;
            for (int j = 0; j < f->n_cols && used + 4 < sizeof have; j++) {
                int w = snprintf(have + used, sizeof have - used, "%s%s", j ? ", " : "", f->cols[j].name);
                if (w < 0 || (size_t)w >= sizeof have - used) break;
                used += (size_t)w;
            }
            pq_reader_close(r);
            return ergo_fail(err, ERGO_E_FORMAT, "%s: no column `%s' (it has: %s)", f->name, names[k], have);
        }
        if (f->cols[i].unsupported) {
            ergo_status st = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: column `%s': %s is not supported", f->name,
                                       names[k], f->cols[i].unsupported);
            pq_reader_close(r);
            return st;
        }
        r->cur[k].col = &f->cols[i];
        r->cur[k].leaf = f->cols[i].leaf;
    }
    *out = r;
    return ERGO_OK;
}

ergo_status pq_reader_next(pq_reader *r, int *have, ergo_error *err) {
    *have = 0;
    if (r->failed) {
        /* skip what is left of the group that failed */
        r->failed = 0;
        r->group++;
        r->in_group = 0;
    }
    while (r->group < r->f->n_groups && r->in_group >= r->f->groups[r->group].num_rows) {
        r->group++;
        r->in_group = 0;
    }
    if (r->group >= r->f->n_groups) return ERGO_OK;
    const row_group *g = &r->f->groups[r->group];
    r->row = g->first_row + r->in_group;
    ergo_status st = ERGO_OK;
    for (int k = 0; k < r->n && st == ERGO_OK; k++) {
        cursor *c = &r->cur[k];
        if (r->in_group == 0) st = cur_start_chunk(r, c, err);
        if (st == ERGO_OK) st = cur_record(r, c, err);
    }
    if (st != ERGO_OK) {
        r->failed = 1;
        r->lost_first = r->row;
        r->lost_end = g->first_row + g->num_rows;
        for (int k = 0; k < r->n; k++) cur_drop_pages(&r->cur[k]);
        return st;
    }
    r->in_group++;
    *have = 1;
    return ERGO_OK;
}

const pq_cell *pq_reader_cell(const pq_reader *r, int k) { return &r->cur[k].cell; }
int64_t pq_reader_row(const pq_reader *r) { return r->row; }

void pq_reader_lost(const pq_reader *r, int64_t *first, int64_t *end) {
    *first = r->lost_first;
    *end = r->lost_end;
}

void pq_reader_close(pq_reader *r) {
    if (!r) return;
    for (int k = 0; k < r->n; k++) {
        cur_drop_pages(&r->cur[k]);
        free(r->cur[k].items);
        free(r->cur[k].arena);
    }
    free(r->cur);
    free(r);
}

/* ---- fuzz entry ------------------------------------------------------------------ */

int pq_fuzz_one(const uint8_t *data, size_t size) {
    pq_limits lim = {.max_page_bytes = 1 << 22, .max_list_items = 1 << 12};
    pq_file *f;
    ergo_error err = {0};
    if (pq_open_bytes(&f, data, size, "fuzz.parquet", &lim, &err) != ERGO_OK) {
        ERGO_ASSERT(err.msg[0] != '\0' && strstr(err.msg, "fuzz.parquet") != NULL);
        return 0;
    }
    const char *names[64];
    int n = 0;
    for (int i = 0; i < pq_num_columns(f) && n < 64; i++)
        if (!pq_column_at(f, i)->unsupported) names[n++] = pq_column_at(f, i)->name;
    pq_reader *r;
    int rows = 0;
    if (pq_reader_open(&r, f, names, n, &err) == ERGO_OK) {
        volatile uint8_t sink = 0;
        int have, fails = 0;
        for (;;) {
            ergo_status st = pq_reader_next(r, &have, &err);
            if (st != ERGO_OK) {
                ERGO_ASSERT(strstr(err.msg, "fuzz.parquet") != NULL);
                if (++fails > 64) break;
                continue;
            }
            if (!have) break;
            rows++;
            for (int k = 0; k < n; k++) {
                const pq_cell *c = pq_reader_cell(r, k);
                if (c->kind == PQ_CELL_BYTES && c->len) sink ^= c->ptr[0] ^ c->ptr[c->len - 1];
                for (int64_t i = 0; c->kind == PQ_CELL_LIST && i < c->n_items; i++)
                    if (c->items[i].kind == PQ_CELL_BYTES && c->items[i].len)
                        sink ^= c->items[i].ptr[c->items[i].len - 1];
            }
            if (rows > 100000) break;
        }
        (void)sink;
        pq_reader_close(r);
    }
    pq_close(f);
    return rows;
}
