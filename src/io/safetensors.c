/*
 * safetensors.c - parse (validate like safetensors 0.6.2) and write .safetensors files.
 *
 * Mirrors SafeTensors::read_metadata and Metadata::validate of the Rust crate
 * (safetensors/src/tensor.rs, 0.6.x), and serialize_to_file for the writer.
 * Every refusal is one line naming the file, and the tensor when there is one.
 */
#include "safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"

/* The crate's MAX_HEADER_SIZE: a header over 100 MB is refused as corrupt. */
#define ST_MAX_HEADER 100000000ull

static const struct {
    const char *name;
    int bits;
} dtype_info[DTYPE_COUNT] = {
    [DTYPE_BOOL] = {"BOOL", 8},       [DTYPE_F4] = {"F4", 4},
    [DTYPE_F6_E2M3] = {"F6_E2M3", 6}, [DTYPE_F6_E3M2] = {"F6_E3M2", 6},
    [DTYPE_U8] = {"U8", 8},           [DTYPE_I8] = {"I8", 8},
    [DTYPE_F8_E5M2] = {"F8_E5M2", 8}, [DTYPE_F8_E4M3] = {"F8_E4M3", 8},
    [DTYPE_F8_E8M0] = {"F8_E8M0", 8}, [DTYPE_I16] = {"I16", 16},
    [DTYPE_U16] = {"U16", 16},        [DTYPE_F16] = {"F16", 16},
    [DTYPE_BF16] = {"BF16", 16},      [DTYPE_I32] = {"I32", 32},
    [DTYPE_U32] = {"U32", 32},        [DTYPE_F32] = {"F32", 32},
    [DTYPE_F64] = {"F64", 64},        [DTYPE_I64] = {"I64", 64},
    [DTYPE_U64] = {"U64", 64},
};

const char *dtype_name(dtype t) {
    return (unsigned)t < DTYPE_COUNT ? dtype_info[t].name : NULL;
}

int dtype_from_name(const char *name) {
    for (int i = 0; i < DTYPE_COUNT; i++)
        if (!strcmp(name, dtype_info[i].name)) return i;
    return -1;
}

int dtype_bits(dtype t) {
    return (unsigned)t < DTYPE_COUNT ? dtype_info[t].bits : 0;
}

int dtype_is_weight(dtype t) {
    return t == DTYPE_BF16 || t == DTYPE_F16 || t == DTYPE_F32;
}

int64_t shape_numel(const int64_t *shape, int n_dims) {
    int64_t n = 1;
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

char *shape_format(char *buf, size_t size, const int64_t *shape, int n_dims) {
    size_t len = 0;
    if (size == 0) return buf;
    buf[0] = '\0';
    len += (size_t)snprintf(buf + len, size - len, "(");
    for (int i = 0; i < n_dims && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (len < size) snprintf(buf + len, size - len, ")");
    return buf;
}

/* ---- parsing ---- */

static void st_clear(safetensors_file *st) {
    memset(st, 0, sizeof *st);
}

void safetensors_close(safetensors_file *st) {
    if (!st) return;
    free(st->path);
    free(st->tensors);
    free(st->by_name);
    free(st->metadata);
    if (st->json) json_decref((json_t *)st->json);
    file_unmap(&st->map);
    st_clear(st);
}

static int cmp_offsets(const void *a, const void *b) {
    const tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp((*(const tensor *const *)a)->name, (*(const tensor *const *)b)->name);
}

/* A JSON value that serde would read as a usize: a non-negative integer. */
static int json_usize(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return 0;
    json_int_t x = json_integer_value(v);
    if (x < 0) return 0;
    *out = (uint64_t)x;
    return 1;
}

/* Reads one header entry {dtype, shape, data_offsets} into t (offsets not yet checked
 * against the data region). Extra fields are ignored, as serde does. */
static ergo_status parse_entry(tensor *t, const char *name, const json_t *v, const char *path,
                               uint64_t *end_out, ergo_error *err) {
    if (!json_is_object(v))
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensor `%s': header entry is not an object {dtype, shape, "
                         "data_offsets}",
                         path, name);
    const json_t *jd = json_object_get(v, "dtype");
    const json_t *js = json_object_get(v, "shape");
    const json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s': header entry lacks `%s'", path,
                         name, !jd ? "dtype" : !js ? "shape" : "data_offsets");
    if (!json_is_string(jd))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s': dtype is not a string", path,
                         name);
    int d = dtype_from_name(json_string_value(jd));
    if (d < 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s': unknown dtype `%s'", path, name,
                         json_string_value(jd));
    t->name = name;
    t->dtype = (dtype)d;
    if (!json_is_array(js))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s': shape is not a list", path, name);
    size_t rank = json_array_size(js);
    if (rank > ST_MAX_DIMS)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: tensor `%s': %zu dimensions, over ergo's limit of %d", path, name,
                         rank, ST_MAX_DIMS);
    t->n_dims = (int)rank;
    /* numel * bits must not overflow 64 bits (the crate's ValidationOverflow). */
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < rank; i++) {
        uint64_t dim;
        if (!json_usize(json_array_get(js, i), &dim))
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: tensor `%s': shape entry %zu is not a non-negative integer",
                             path, name, i);
        t->shape[i] = (int64_t)dim;
        if (dim != 0 && numel > UINT64_MAX / dim) overflow = 1;
        numel *= dim;
    }
    uint64_t bits = (uint64_t)dtype_bits(t->dtype);
    if (overflow || numel > UINT64_MAX / bits || numel > (uint64_t)INT64_MAX)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensor `%s': shape overflows when counting its elements or bytes",
                         path, name);
    uint64_t nbits = numel * bits;
    if (nbits % 8 != 0)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensor `%s': %" PRIu64 " elements of %s do not fill whole bytes",
                         path, name, numel, dtype_name(t->dtype));
    t->numel = (int64_t)numel;
    uint64_t begin, end;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_usize(json_array_get(jo, 0), &begin) || !json_usize(json_array_get(jo, 1), &end))
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensor `%s': data_offsets is not a pair of non-negative integers",
                         path, name);
    if (end < begin)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensor `%s': data_offsets [%" PRIu64 ", %" PRIu64
                         "] end before they begin",
                         path, name, begin, end);
    if (end - begin != nbits / 8) {
        char sb[160];
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensor `%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                         " bytes but %s %s needs %" PRIu64,
                         path, name, begin, end, end - begin, dtype_name(t->dtype),
                         shape_format(sb, sizeof sb, t->shape, t->n_dims), nbits / 8);
    }
    t->offset = (size_t)begin;
    t->nbytes = (size_t)(end - begin);
    *end_out = end;
    return ERGO_OK;
}

static ergo_status parse_metadata(safetensors_file *st, const json_t *v, const char *path,
                                  ergo_error *err) {
    if (json_is_null(v)) return ERGO_OK;
    if (!json_is_object(v))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `__metadata__' is not a string-to-string map",
                         path);
    size_t n = json_object_size(v);
    st->metadata = calloc(n ? n : 1, sizeof *st->metadata);
    if (!st->metadata) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (!json_is_string(val))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: `__metadata__' value of `%s' is not a string",
                             path, key);
        st->metadata[st->n_metadata].key = key;
        st->metadata[st->n_metadata].value = json_string_value(val);
        st->n_metadata++;
    }
    return ERGO_OK;
}

static ergo_status parse_bytes(safetensors_file *st, const char *path, ergo_error *err) {
    const uint8_t *b = st->bytes;
    size_t size = st->size;
    if (size < 8)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: file is %zu bytes, too short for the 8-byte header length", path,
                         size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | b[i];
    if (n > ST_MAX_HEADER)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "%s: header length %" PRIu64 " is over the limit of %llu bytes", path, n,
                         ST_MAX_HEADER);
    if (n > size - 8)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
                         path, n, size);
    st->header_len = (size_t)n;
    st->data = b + 8 + n;
    st->data_size = size - 8 - (size_t)n;

    /* jansson checks UTF-8, refuses duplicate keys and anything but whitespace after
     * the value (serde_json's "trailing characters"). */
    json_error_t je;
    json_t *root = json_loadb((const char *)b + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: header is not valid JSON (byte %d): %s", path,
                         je.position, je.text);
    st->json = root;
    if (!json_is_object(root))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: header is not a JSON object", path);

    size_t n_entries = json_object_size(root);
    st->tensors = calloc(n_entries ? n_entries : 1, sizeof *st->tensors);
    st->by_name = calloc(n_entries ? n_entries : 1, sizeof *st->by_name);
    if (!st->tensors || !st->by_name) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);

    const char *key;
    json_t *val;
    uint64_t max_end = 0;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            ergo_status s = parse_metadata(st, val, path, err);
            if (s) return s;
            continue;
        }
        uint64_t end = 0;
        ergo_status s = parse_entry(&st->tensors[st->n_tensors], key, val, path, &end, err);
        if (s) return s;
        if (end > max_end) max_end = end;
        st->n_tensors++;
    }

    /* The crate sorts by data_offsets and demands that they tile [0, data_size). */
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, cmp_offsets);
    size_t start = 0;
    for (int i = 0; i < st->n_tensors; i++) {
        tensor *t = &st->tensors[i];
        if (t->offset > start)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: tensor `%s': data_offsets [%zu, %zu] leave a gap: bytes [%zu, "
                             "%zu) belong to no tensor",
                             path, t->name, t->offset, t->offset + t->nbytes, start, t->offset);
        if (t->offset < start)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: tensor `%s': data_offsets [%zu, %zu] overlap tensor `%s' "
                             "(which ends at %zu)",
                             path, t->name, t->offset, t->offset + t->nbytes, st->tensors[i - 1].name,
                             start);
        start = t->offset + t->nbytes;
    }
    if (max_end > st->data_size) {
        const tensor *t = &st->tensors[st->n_tensors - 1];
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensor `%s': data_offsets [%zu, %zu] run past the end of the data "
                         "(%zu bytes after the header)",
                         path, t->name, t->offset, t->offset + t->nbytes, st->data_size);
    }
    if (start != st->data_size)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: tensors cover %zu bytes of data but the file holds %zu after the "
                         "header (trailing bytes)",
                         path, start, st->data_size);
    for (int i = 0; i < st->n_tensors; i++) {
        tensor *t = &st->tensors[i];
        t->data = t->nbytes ? st->data + t->offset : NULL;
        st->by_name[i] = t;
    }
    qsort(st->by_name, (size_t)st->n_tensors, sizeof *st->by_name, cmp_names);
    return ERGO_OK;
}

ergo_status safetensors_parse(safetensors_file *st, const uint8_t *bytes, size_t size,
                              const char *label, ergo_error *err) {
    st_clear(st);
    st->path = strdup(label ? label : "memory");
    if (!st->path) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    st->bytes = bytes;
    st->size = size;
    ergo_status s = parse_bytes(st, st->path, err);
    if (s) safetensors_close(st);
    return s;
}

ergo_status safetensors_open(safetensors_file *st, const char *path, ergo_error *err) {
    st_clear(st);
    mapped_file mf;
    ergo_status s = file_map(&mf, path, err);
    if (s) return s;
    s = safetensors_parse(st, mf.data, mf.size, path, err);
    if (s) {
        file_unmap(&mf);
        return s;
    }
    st->map = mf;
    return ERGO_OK;
}

const tensor *safetensors_find(const safetensors_file *st, const char *name) {
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const tensor *t = st->by_name[mid];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

const char *safetensors_metadata(const safetensors_file *st, const char *key) {
    for (int i = 0; i < st->n_metadata; i++)
        if (!strcmp(st->metadata[i].key, key)) return st->metadata[i].value;
    return NULL;
}

/* ---- writing ---- */

static int cmp_write_order(const void *a, const void *b) {
    const st_write_entry *x = *(const st_write_entry *const *)a;
    const st_write_entry *y = *(const st_write_entry *const *)b;
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1; /* descending dtype */
    return strcmp(x->name, y->name);
}

ergo_status safetensors_write(const char *path, const st_write_entry *entries, int n,
                              const st_metadata_entry *metadata, int n_metadata, st_fill_fn fill,
                              void *ctx, ergo_error *err) {
    ergo_status s = ERGO_OK;
    const st_write_entry **order = malloc(sizeof *order * (size_t)(n ? n : 1));
    json_t *root = json_object();
    char *header = NULL;
    FILE *f = NULL;
    uint8_t *buf = NULL;
    if (!order || !root) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < n; i++) order[i] = &entries[i];
    qsort(order, (size_t)n, sizeof *order, cmp_write_order);

    if (n_metadata > 0) {
        json_t *m = json_object();
        for (int i = 0; i < n_metadata; i++)
            json_object_set_new(m, metadata[i].key, json_string(metadata[i].value));
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t offset = 0;
    for (int k = 0; k < n; k++) {
        const st_write_entry *e = order[k];
        int64_t numel = shape_numel(e->shape, e->n_dims);
        if (numel < 0 || dtype_bits(e->dtype) % 8 != 0) {
            s = ergo_fail(err, ERGO_E_ARG, "%s: cannot write tensor `%s'", path, e->name);
            goto done;
        }
        uint64_t nbytes = (uint64_t)numel * (uint64_t)(dtype_bits(e->dtype) / 8);
        json_t *t = json_object(), *shape = json_array(), *offs = json_array();
        for (int d = 0; d < e->n_dims; d++) json_array_append_new(shape, json_integer(e->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)offset));
        json_array_append_new(offs, json_integer((json_int_t)(offset + nbytes)));
        json_object_set_new(t, "dtype", json_string(dtype_name(e->dtype)));
        json_object_set_new(t, "shape", shape);
        json_object_set_new(t, "data_offsets", offs);
        json_object_set_new(root, e->name, t);
        offset += nbytes;
    }
    header = json_dumps(root, JSON_COMPACT);
    if (!header) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: cannot format the header", path);
        goto done;
    }
    size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8;
    f = fopen(path, "wb");
    if (!f) {
        s = ergo_fail(err, ERGO_E_IO, "%s: cannot create: %s", path, strerror(errno));
        goto done;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, hlen, f);
    for (size_t i = hlen; i < padded; i++) fputc(' ', f);

    enum { CHUNK_BYTES = 1 << 22 };
    buf = malloc(CHUNK_BYTES);
    if (!buf) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int k = 0; k < n; k++) {
        const st_write_entry *e = order[k];
        int64_t numel = shape_numel(e->shape, e->n_dims);
        int esize = dtype_bits(e->dtype) / 8;
        int64_t per_chunk = CHUNK_BYTES / esize;
        for (int64_t start = 0; start < numel; start += per_chunk) {
            int64_t count = numel - start < per_chunk ? numel - start : per_chunk;
            s = fill(ctx, (int)(e - entries), start, count, buf, err);
            if (s) goto done;
            if (fwrite(buf, (size_t)esize, (size_t)count, f) != (size_t)count) {
                s = ergo_fail(err, ERGO_E_IO, "%s: write error", path);
                goto done;
            }
        }
    }
    if (ferror(f)) s = ergo_fail(err, ERGO_E_IO, "%s: write error", path);
done:
    if (f && fclose(f) != 0 && !s) s = ergo_fail(err, ERGO_E_IO, "%s: write error", path);
    free(buf);
    free(header);
    if (root) json_decref(root);
    free(order);
    return s;
}
