/* Tests of src/io/safetensors.c: what the safetensors 0.6.2 crate accepts and
 * refuses (each refusal checked for the file name and the problem), the writer
 * against a file written by the reference, and the fuzz corpus replay. */
#include <dirent.h>
#include <stdlib.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "io/safetensors.h"

/* Writes an 8-byte length + header + data file into the scratch dir; returns its path. */
static const char *write_st(const char *name, const char *header, size_t hlen_override,
                            const void *data, size_t dlen) {
    static char path[512];
    ergo_error err = {0};
    path_join(path, sizeof path, scratch_dir(), name, &err);
    size_t hl = strlen(header);
    size_t n = 8 + hl + dlen;
    uint8_t *buf = malloc(n + 1);
    uint64_t len = hlen_override ? hlen_override : hl;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (dlen) memcpy(buf + 8 + hl, data, dlen);
    file_write_all(path, buf, n, &err);
    free(buf);
    return path;
}

/* Opens path, expects failure whose message names the file and holds `needle`. */
static void expect_refusal(const char *label, const char *path, const char *needle,
                           const char *needle2) {
    safetensors_file st;
    ergo_error err = {0};
    ergo_status s = safetensors_open(&st, path, &err);
    CHECK(s != ERGO_OK, "%s: accepted, want a refusal", label);
    CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", label,
          err.msg);
    CHECK(strstr(err.msg, needle) != NULL, "%s: message lacks \"%s\": %s", label, needle,
          err.msg);
    if (needle2)
        CHECK(strstr(err.msg, needle2) != NULL, "%s: message lacks \"%s\": %s", label, needle2,
              err.msg);
    CHECK(strchr(err.msg, '\n') == NULL, "%s: message is not one line", label);
    if (s == ERGO_OK) safetensors_close(&st);
}

static const uint8_t zeros[64];

static void test_refusals(void) {
    const char *p;
    p = write_st("short.safetensors", "", 0, NULL, 0);
    {   /* 5 bytes: shorter than the length field */
        ergo_error err = {0};
        file_write_all(p, "\x08\0\0\0\0", 5, &err);
    }
    expect_refusal("truncated file", p, "too short", NULL);

    p = write_st("past.safetensors", "{}", 100, NULL, 0);
    expect_refusal("header length past the file", p, "header length 100", "past the end");

    p = write_st("huge.safetensors", "{}", 100000001, NULL, 0);
    expect_refusal("header over the cap", p, "over the limit", NULL);

    p = write_st("notjson.safetensors", "{\"a\": {dtype", 0, NULL, 0);
    expect_refusal("header not JSON", p, "not valid JSON", NULL);

    p = write_st("trailing.safetensors", "{} x", 0, NULL, 0);
    expect_refusal("trailing characters after the header", p, "not valid JSON", NULL);

    p = write_st("array.safetensors", "[1, 2]", 0, NULL, 0);
    expect_refusal("header not an object", p, "not a JSON object", NULL);

    p = write_st("badutf8.safetensors", "{\"\xff\": 1}", 0, NULL, 0);
    expect_refusal("header not UTF-8", p, "not valid JSON", NULL);

    p = write_st("dtype.safetensors",
                 "{\"w\":{\"dtype\":\"F8_E4M3FNUZ\",\"shape\":[4],\"data_offsets\":[0,4]}}", 0,
                 zeros, 4);
    expect_refusal("unknown dtype", p, "unknown dtype `F8_E4M3FNUZ'", "`w'");

    p = write_st("lower.safetensors",
                 "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, zeros, 4);
    expect_refusal("lower-case dtype", p, "unknown dtype", NULL);

    p = write_st("bytes.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, zeros, 8);
    expect_refusal("shape/byte-count mismatch", p, "`w'", "needs 12");

    p = write_st("neg.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 0, zeros, 4);
    expect_refusal("negative shape", p, "shape entry 0", "non-negative integer");

    p = write_st("float.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 0, zeros,
                 4);
    expect_refusal("non-integer shape", p, "shape entry 0", NULL);

    p = write_st("negoff.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 0, zeros, 4);
    expect_refusal("negative offset", p, "data_offsets", "non-negative");

    p = write_st("threeoff.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 0, zeros,
                 4);
    expect_refusal("three offsets", p, "data_offsets is not a pair", NULL);

    p = write_st("backwards.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 0, zeros, 4);
    expect_refusal("offsets backwards", p, "end before they begin", NULL);

    p = write_st("overflow.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                 "\"data_offsets\":[0,4]}}",
                 0, zeros, 4);
    expect_refusal("element count overflow", p, "overflows", "`w'");

    p = write_st("overflow2.safetensors",
                 "{\"w\":{\"dtype\":\"F64\",\"shape\":[3000000000000000000],"
                 "\"data_offsets\":[0,4]}}",
                 0, zeros, 4);
    expect_refusal("byte size overflow", p, "overflows", NULL);

    p = write_st("range.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 0, zeros, 8);
    expect_refusal("offsets out of range", p, "run past the end of the data", "`w'");

    p = write_st("overlap.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 0, zeros, 8);
    expect_refusal("overlapping offsets", p, "overlap tensor `a'", "`b'");

    p = write_st("gap.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                 0, zeros, 12);
    expect_refusal("gap between tensors", p, "gap", "`b'");

    p = write_st("extra.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, zeros, 8);
    expect_refusal("bytes after the last tensor", p, "trailing bytes", NULL);

    p = write_st("dup.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 0, zeros, 8);
    expect_refusal("duplicate tensor", p, "duplicate", "\"a\"");

    p = write_st("meta.safetensors",
                 "{\"__metadata__\":{\"format\":1},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                 0, zeros, 4);
    expect_refusal("metadata not a string map", p, "__metadata__", NULL);

    p = write_st("notobj.safetensors", "{\"a\":1}", 0, NULL, 0);
    expect_refusal("tensor entry not an object", p, "`a'", "not an object");

    p = write_st("noshape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 0,
                 zeros, 4);
    expect_refusal("missing shape", p, "lacks `shape'", NULL);

    p = write_st("f4.safetensors",
                 "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 0, zeros, 1);
    expect_refusal("sub-byte dtype not filling whole bytes", p, "whole bytes", NULL);

    p = write_st("rank.safetensors",
                 "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                 0, zeros, 1);
    expect_refusal("rank over ergo's limit", p, "9 dimensions", NULL);

    {
        safetensors_file st;
        ergo_error err = {0};
        CHECK(safetensors_open(&st, "/nonexistent/m.safetensors", &err) == ERGO_E_IO &&
                  strstr(err.msg, "/nonexistent/m.safetensors"),
              "missing file: %s", err.msg);
    }
}

static void test_accepts(void) {
    /* what the crate accepts: metadata (null too), scalars, empty tensors, any order
     * in the header, leading whitespace, sub-byte dtypes on byte boundaries */
    float vals[3] = {1.5f, -2.0f, 3.25f};
    uint8_t data[16];
    memcpy(data, vals, 12);
    data[12] = 7;
    data[13] = 0x21;
    data[14] = data[15] = 0;
    const char *p = write_st(
        "ok.safetensors",
        "  {\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"},"
        "\"z\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[14,16]},"
        "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[12,12]},"
        "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[12,13],\"extra\":[1]},"
        "\"f4\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[13,14]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
        0, data, 16);
    safetensors_file st;
    ergo_error err = {0};
    CHECK(safetensors_open(&st, p, &err) == ERGO_OK, "valid file refused: %s", err.msg);
    if (err.msg[0]) return;
    CHECK_EQ_INT(st.n_tensors, 5, "tensor count");
    CHECK_EQ_STR(safetensors_metadata(&st, "format"), "pt", "metadata format");
    CHECK_EQ_STR(safetensors_metadata(&st, "x"), "y", "metadata x");
    CHECK(safetensors_metadata(&st, "nope") == NULL, "absent metadata");
    const tensor *a = safetensors_find(&st, "a");
    CHECK(a && a->dtype == DTYPE_F32 && a->n_dims == 1 && a->shape[0] == 3 && a->numel == 3 &&
              a->nbytes == 12,
          "tensor a");
    if (a) CHECK(!memcmp(a->data, vals, 12), "tensor a data points into the file");
    const tensor *z = safetensors_find(&st, "z");
    CHECK(z && z->n_dims == 0 && z->numel == 1 && z->nbytes == 2, "scalar");
    const tensor *e = safetensors_find(&st, "e");
    CHECK(e && e->numel == 0 && e->nbytes == 0 && e->data == NULL, "empty tensor");
    const tensor *f4 = safetensors_find(&st, "f4");
    CHECK(f4 && f4->dtype == DTYPE_F4 && f4->nbytes == 1, "F4 pair");
    CHECK(safetensors_find(&st, "zz") == NULL && safetensors_find(&st, "") == NULL, "absent");
    CHECK(st.tensors[0].offset == 0 && st.tensors[st.n_tensors - 1].offset == 14,
          "tensors sorted by offset");
    safetensors_close(&st);

    /* every dtype name of the 0.6.2 crate, with its size */
    static const char *names[] = {"BOOL", "F4",  "F6_E2M3", "F6_E3M2", "U8",  "I8",  "F8_E5M2",
                                  "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32",
                                  "U32",  "F32", "F64", "I64", "U64"};
    static const int bits[] = {8, 4, 6, 6, 8, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64};
    CHECK_EQ_INT(sizeof names / sizeof names[0], DTYPE_COUNT, "dtype count");
    for (int i = 0; i < DTYPE_COUNT; i++) {
        CHECK(dtype_from_name(names[i]) == i && dtype_bits((dtype)i) == bits[i] &&
                  !strcmp(dtype_name((dtype)i), names[i]),
              "dtype %s", names[i]);
        char hdr[160];
        snprintf(hdr, sizeof hdr, "{\"t\":{\"dtype\":\"%s\",\"shape\":[4],\"data_offsets\":[0,%d]}}",
                 names[i], bits[i] / 2);
        const char *q = write_st("dt.safetensors", hdr, 0, zeros, (size_t)bits[i] / 2);
        CHECK(safetensors_open(&st, q, &err) == ERGO_OK, "dtype %s refused: %s", names[i],
              err.msg);
        safetensors_close(&st);
    }
    CHECK(dtype_is_weight(DTYPE_BF16) && dtype_is_weight(DTYPE_F16) &&
              dtype_is_weight(DTYPE_F32) && !dtype_is_weight(DTYPE_F64) &&
              !dtype_is_weight(DTYPE_I8),
          "weight dtypes");
}

/* ---- the writer against the reference writer ---- */

static ergo_status golden_fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                               ergo_error *err) {
    /* element k of entry i: the byte pattern (i * 31 + k) per byte, as the fixture wrote */
    const st_write_entry *e = &((const st_write_entry *)ctx)[index];
    int es = dtype_bits(e->dtype) / 8;
    for (int64_t k = 0; k < count * es; k++)
        ((uint8_t *)out)[k] = (uint8_t)((index * 31 + start * es + k) & 0xFF);
    (void)err;
    return ERGO_OK;
}

static void test_writer(void) {
    char gpath[512], mpath[512], wpath[512];
    ergo_error err = {0};
    snprintf(gpath, sizeof gpath, "%s/checkpoints/writer_golden.safetensors", fixtures_dir());
    snprintf(mpath, sizeof mpath, "%s/checkpoints/writer_golden.json", fixtures_dir());
    json_t *m = json_load_path(mpath, &err);
    CHECK(m != NULL, "writer manifest: %s", err.msg);
    if (!m) return;
    /* the manifest lists the entries in the order the fixture script defined them */
    const json_t *ents = json_object_get(m, "entries");
    int n = (int)json_array_size(ents);
    st_write_entry entries[16];
    CHECK(n > 0 && n <= 16, "writer entries %d", n);
    for (int i = 0; i < n && i < 16; i++) {
        const json_t *e = json_array_get(ents, (size_t)i);
        entries[i].name = json_string_value(json_object_get(e, "name"));
        entries[i].dtype = (dtype)dtype_from_name(json_string_value(json_object_get(e, "dtype")));
        const json_t *sh = json_object_get(e, "shape");
        entries[i].n_dims = (int)json_array_size(sh);
        for (int d = 0; d < entries[i].n_dims; d++)
            entries[i].shape[d] = json_integer_value(json_array_get(sh, (size_t)d));
    }
    st_metadata_entry meta[1] = {{"format", "pt"}};
    path_join(wpath, sizeof wpath, scratch_dir(), "written.safetensors", &err);
    CHECK(safetensors_write(wpath, entries, n, meta, 1, golden_fill, entries, &err) == ERGO_OK,
          "write: %s", err.msg);
    char *want, *got;
    size_t nw = 0, ng = 0;
    CHECK(file_read_all(gpath, 1 << 20, &want, &nw, &err) == ERGO_OK, "golden: %s", err.msg);
    CHECK(file_read_all(wpath, 1 << 20, &got, &ng, &err) == ERGO_OK, "written: %s", err.msg);
    CHECK(nw == ng && !memcmp(want, got, nw),
          "writer output (%zu bytes) differs from the reference writer's (%zu bytes)", ng, nw);
    free(want);
    free(got);
    json_decref(m);
}

/* ---- fuzz corpus replay ---- */

static void check_fuzz_input(void *ctx, const char *name, const uint8_t *data, size_t size) {
    CHECK_EQ_INT(safetensors_fuzz_one(data, size), 0, name);
}

static void test_fuzz_corpus(void) {
    int n = for_each_corpus_file("safetensors", check_fuzz_input, NULL);
    CHECK(n >= 10, "fuzz corpus has only %d inputs", n);
}

void test_safetensors(void) {
    test_refusals();
    test_accepts();
    test_writer();
    test_fuzz_corpus();
}
