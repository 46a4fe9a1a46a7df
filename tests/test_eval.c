/*
 * test_eval.c - the eval module's data side: the parquet reader against what pyarrow
 * wrote and read back (tests/fixtures/eval/edge/expect.json), every benchmark layout
 * (tests/fixtures/eval/data, written by tools/fixtures_eval.py), corrupt and refused
 * inputs, the scoring table computed by the reference's rules, and the fuzz corpora.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "eval/bench_data.h"
#include "eval/parquet.h"
#include "eval/score.h"

static char fx[1024]; /* tests/fixtures/eval */

static int cell_is_str(const pq_cell *c, const char *want) {
    return c->kind == PQ_CELL_BYTES && strlen(want) == c->len && memcmp(c->ptr, want, c->len) == 0;
}

/* Compares one cell with pyarrow's value (JSON null, integer, real, bool, string, list). */
static int cell_matches(const pq_cell *c, const json_t *v) {
    if (json_is_null(v)) return c->kind == PQ_CELL_NULL;
    if (json_is_boolean(v)) return c->kind == PQ_CELL_INT && c->i == (json_is_true(v) ? 1 : 0);
    if (json_is_integer(v)) return c->kind == PQ_CELL_INT && c->i == json_integer_value(v);
    if (json_is_real(v)) return c->kind == PQ_CELL_DOUBLE && c->d == json_real_value(v);
    if (json_is_string(v)) return cell_is_str(c, json_string_value(v));
    if (json_is_array(v)) {
        if (c->kind != PQ_CELL_LIST || c->n_items != (int64_t)json_array_size(v)) return 0;
        for (int64_t i = 0; i < c->n_items; i++)
            if (!cell_matches(&c->items[i], json_array_get(v, (size_t)i))) return 0;
        return 1;
    }
    return 0;
}

/* ---- parquet: types, nulls, lists, row groups, pages v1/v2, each codec ---- */

static void test_parquet_types(const json_t *expect) {
    static const char *const codecs[] = {"none", "snappy", "gzip", "zstd"};
    static const char *const cols[] = {"s", "i64", "i32", "b", "d", "l"};
    const json_t *rows = json_object_get(expect, "types");
    for (int c = 0; c < 4; c++) {
        for (int v = 1; v <= 2; v++) {
            char path[1200];
            snprintf(path, sizeof path, "%s/edge/types_%s_v%d.parquet", fx, codecs[c], v);
            ergo_error err = {0};
            pq_file *f;
            if (pq_open(&f, path, NULL, &err) != ERGO_OK) {
                CHECK(0, "%s", err.msg);
                continue;
            }
            CHECK_EQ_INT(pq_num_rows(f), 23, "num_rows");
            CHECK_EQ_INT(pq_num_row_groups(f), 3, "row groups");
            const pq_column *l = pq_column_at(f, pq_find_column(f, "l"));
            CHECK(l->is_list && l->is_string && l->max_def == 3 && l->max_rep == 1, "%s: list column shape def %d rep %d",
                  path, l->max_def, l->max_rep);
            pq_reader *r;
            if (pq_reader_open(&r, f, cols, 6, &err) != ERGO_OK) {
                CHECK(0, "%s", err.msg);
                pq_close(f);
                continue;
            }
            int have, n = 0, bad = 0;
            while (pq_reader_next(r, &have, &err) == ERGO_OK && have) {
                const json_t *row = json_array_get(rows, (size_t)n);
                for (int k = 0; k < 6; k++)
                    if (!row || !cell_matches(pq_reader_cell(r, k), json_object_get(row, cols[k]))) {
                        if (!bad) CHECK(0, "%s: row %d column %s differs from pyarrow", path, n, cols[k]);
                        bad++;
                    }
                n++;
            }
            CHECK(err.msg[0] == '\0', "%s: %s", path, err.msg);
            CHECK_EQ_INT(n, 23, path);
            CHECK_EQ_INT(bad, 0, path);
            pq_reader_close(r);
            pq_close(f);
        }
    }
}

static void test_parquet_fallback(const json_t *expect) {
    char path[1200];
    snprintf(path, sizeof path, "%s/edge/fallback.parquet", fx);
    const json_t *want = json_object_get(json_object_get(expect, "fallback"), "s");
    ergo_error err = {0};
    pq_file *f;
    pq_reader *r;
    const char *cols[] = {"n", "s"};
    if (pq_open(&f, path, NULL, &err) != ERGO_OK || pq_reader_open(&r, f, cols, 2, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    int have, n = 0, bad = 0;
    while (pq_reader_next(r, &have, &err) == ERGO_OK && have) {
        const pq_cell *nc = pq_reader_cell(r, 0), *sc = pq_reader_cell(r, 1);
        if (nc->kind != PQ_CELL_INT || nc->i != n || !cell_is_str(sc, json_string_value(json_array_get(want, (size_t)n)))) {
            if (!bad) CHECK(0, "fallback.parquet: row %d differs", n);
            bad++;
        }
        n++;
    }
    CHECK(err.msg[0] == '\0', "%s", err.msg);
    CHECK(n == 400 && bad == 0, "fallback.parquet: %d rows, %d bad", n, bad);
    pq_reader_close(r);
    pq_close(f);
}

static void test_parquet_refusals(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/edge/unsupported.parquet", fx);
    ergo_error err = {0};
    pq_file *f;
    if (pq_open(&f, path, NULL, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    struct { const char *col, *says; } cases[] = {
        {"ts", "INT96"}, {"st", "nested type"}, {"ll", "deeper than one level"}, {"nope", "no column `nope'"}};
    for (int i = 0; i < 4; i++) {
        pq_reader *r;
        memset(&err, 0, sizeof err);
        ergo_status st = pq_reader_open(&r, f, &cases[i].col, 1, &err);
        CHECK(st != ERGO_OK && strstr(err.msg, cases[i].says) && strstr(err.msg, "unsupported.parquet"),
              "column %s: status %d, \"%s\"", cases[i].col, (int)st, err.msg);
        if (st == ERGO_OK) pq_reader_close(r);
    }
    /* DELTA_BINARY_PACKED is refused at its first page, by name */
    const char *dl = "dl", *ok = "ok";
    pq_reader *r;
    int have;
    if (pq_reader_open(&r, f, &dl, 1, &err) == ERGO_OK) {
        ergo_status st = pq_reader_next(r, &have, &err);
        CHECK(st == ERGO_E_UNSUPPORTED && strstr(err.msg, "DELTA_BINARY_PACKED"), "delta: %d \"%s\"", (int)st, err.msg);
        pq_reader_close(r);
    } else CHECK(0, "%s", err.msg);
    /* the readable column next to them reads */
    memset(&err, 0, sizeof err);
    if (pq_reader_open(&r, f, &ok, 1, &err) == ERGO_OK) {
        int64_t sum = 0;
        while (pq_reader_next(r, &have, &err) == ERGO_OK && have) sum += pq_reader_cell(r, 0)->i;
        CHECK(sum == 6 && !err.msg[0], "ok column: sum %lld, %s", (long long)sum, err.msg);
        pq_reader_close(r);
    } else CHECK(0, "%s", err.msg);
    pq_close(f);
}

static uint8_t *slurp(const char *path, size_t *n) {
    char *d;
    ergo_error err = {0};
    if (file_read_all(path, (size_t)1 << 26, &d, n, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    return (uint8_t *)d;
}

/* Reads every row of every readable column; returns the status of the first failure. */
static ergo_status read_all(const uint8_t *d, size_t n, ergo_error *err, int *rows) {
    pq_file *f;
    *rows = 0;
    ergo_status st = pq_open_bytes(&f, d, n, "corrupt.parquet", NULL, err);
    if (st != ERGO_OK) return st;
    const char *names[16];
    int k = 0;
    for (int i = 0; i < pq_num_columns(f) && k < 16; i++) names[k++] = pq_column_at(f, i)->name;
    pq_reader *r;
    if ((st = pq_reader_open(&r, f, names, k, err)) == ERGO_OK) {
        int have;
        while ((st = pq_reader_next(r, &have, err)) == ERGO_OK && have) (*rows)++;
        pq_reader_close(r);
    }
    pq_close(f);
    return st;
}

/* Offset of the compressed_page_size varint (field 3) of the page header at p. */
static size_t first_csize_at(const uint8_t *d, size_t n, size_t p, size_t *len) {
    for (int field = 1; field <= 3 && p < n; field++) {
        if (d[p] != 0x15) return 0; /* delta 1, i32 */
        p++;
        size_t start = p;
        while (p < n && (d[p] & 0x80)) p++;
        p++;
        if (field == 3) {
            *len = p - start;
            return start;
        }
    }
    return 0;
}

static void test_parquet_corrupt(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/data/HR-Bench/hr_bench_4k.parquet", fx);
    size_t n;
    uint8_t *d = slurp(path, &n), *m = d ? malloc(n) : NULL;
    if (!m) {
        free(d);
        return;
    }
    ergo_error err = {0};
    int rows;
    CHECK(read_all(d, n, &err, &rows) == ERGO_OK && rows == 8, "good file: %d rows, %s", rows, err.msg);

    memset(&err, 0, sizeof err);
    ergo_status st = read_all(d, n - 1, &err, &rows);
    CHECK(st == ERGO_E_FORMAT && strstr(err.msg, "corrupt.parquet: truncated"), "truncated: \"%s\"", err.msg);

    memcpy(m, d, n);
    m[n - 8] = 0xff, m[n - 7] = 0xff, m[n - 6] = 0xff, m[n - 5] = 0x7f;
    memset(&err, 0, sizeof err);
    st = read_all(m, n, &err, &rows);
    CHECK(st == ERGO_E_FORMAT && strstr(err.msg, "footer length"), "footer length: \"%s\"", err.msg);

    /* the footer cut short: its length says less than it is */
    memcpy(m, d, n);
    uint32_t flen = (uint32_t)d[n - 8] | (uint32_t)d[n - 7] << 8 | (uint32_t)d[n - 6] << 16 | (uint32_t)d[n - 5] << 24;
    flen /= 2;
    m[n - 8] = (uint8_t)flen, m[n - 7] = (uint8_t)(flen >> 8), m[n - 6] = (uint8_t)(flen >> 16), m[n - 5] = (uint8_t)(flen >> 24);
    memset(&err, 0, sizeof err);
    st = read_all(m, n, &err, &rows);
    CHECK(st == ERGO_E_FORMAT && strstr(err.msg, "corrupt.parquet: bad parquet footer"), "half footer: \"%s\"", err.msg);

    /* a page that claims more bytes than its column chunk */
    size_t vl, at = first_csize_at(d, n, 4, &vl);
    CHECK(at > 0 && vl >= 1, "first page header not found at offset 4");
    if (at) {
        memcpy(m, d, n);
        for (size_t i = 0; i + 1 < vl; i++) m[at + i] = 0xfe;
        m[at + vl - 1] = 0x3f;
        memset(&err, 0, sizeof err);
        st = read_all(m, n, &err, &rows);
        CHECK(st == ERGO_E_FORMAT && strstr(err.msg, "outside the column chunk") && strstr(err.msg, "column `index'"),
              "page size: \"%s\"", err.msg);
    }
    /* bad snappy bytes inside the image column's dictionary page */
    pq_file *pf;
    uint64_t qs = 0, qn = 0;
    memset(&err, 0, sizeof err);
    if (pq_open_bytes(&pf, d, n, "x", NULL, &err) == ERGO_OK) {
        pq_column_chunk_range(pf, 0, pq_find_column(pf, "image"), &qs, &qn);
        pq_close(pf);
    }
    CHECK(qn > 64, "image chunk: %llu bytes", (unsigned long long)qn);
    if (qn > 64) {
        /* the page header's uncompressed size (field 2) is also snappy's length preamble,
         * right after the header's two stop bytes: make the preamble disagree */
        size_t p = (size_t)qs + 1;
        while (p < n && (d[p] & 0x80)) p++;
        p += 2; /* field 2's header byte */
        uint64_t z = 0;
        for (int sh = 0; p < n; sh += 7) {
            z |= (uint64_t)(d[p] & 0x7f) << sh;
            if (!(d[p++] & 0x80)) break;
        }
        uint64_t usize = z >> 1;
        uint8_t pre[10];
        size_t np = 0;
        do {
            pre[np++] = (uint8_t)((usize & 0x7f) | (usize > 0x7f ? 0x80 : 0));
            usize >>= 7;
        } while (usize);
        size_t at2 = 0;
        for (size_t q = p; q + 2 + np < n && q < p + 64 && !at2; q++)
            if (d[q] == 0 && d[q + 1] == 0 && memcmp(d + q + 2, pre, np) == 0) at2 = q + 2;
        CHECK(at2 > 0, "snappy preamble of the image dictionary page not found");
        memcpy(m, d, n);
        if (at2) m[at2] ^= 0x01;
        memset(&err, 0, sizeof err);
        st = read_all(m, n, &err, &rows);
        CHECK(st == ERGO_E_FORMAT && strstr(err.msg, "corrupt.parquet: row group 0, column `image': bad snappy"),
              "bad snappy: \"%s\"", err.msg);
        /* and a broken copy tag inside the stream */
        memcpy(m, d, n);
        if (at2) memset(m + at2 + np, 0xff, 4);
        memset(&err, 0, sizeof err);
        st = read_all(m, n, &err, &rows);
        CHECK(st == ERGO_E_FORMAT && strstr(err.msg, "column `image': bad snappy"), "bad snappy tag: \"%s\"", err.msg);
    }
    /* footer offsets: point every byte of the footer elsewhere; no crash, clean messages */
    size_t fstart = n - 8 - (size_t)((uint32_t)d[n - 8] | (uint32_t)d[n - 7] << 8 | (uint32_t)d[n - 6] << 16 | (uint32_t)d[n - 5] << 24);
    int refused = 0, tried = 0, unnamed = 0;
    for (size_t i = fstart; i < n - 8; i += 3) {
        memcpy(m, d, n);
        m[i] ^= 0x5a;
        memset(&err, 0, sizeof err);
        if (read_all(m, n, &err, &rows) != ERGO_OK) {
            refused++;
            unnamed += strstr(err.msg, "corrupt.parquet") == NULL;
        }
        tried++;
    }
    CHECK(refused > 0 && unnamed == 0, "footer mutations: %d of %d refused, %d without the file name", refused, tried, unnamed);
    free(m);
    free(d);
}

/* Every single-byte change of a small shard through the fuzz entry point (ASan watches). */
static void test_parquet_mutations(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/data/MME-RealWorld-lite-lmms-eval/data/train-00003-of-00004.parquet", fx);
    size_t n;
    uint8_t *d = slurp(path, &n);
    if (!d) return;
    CHECK_EQ_INT(pq_fuzz_one(d, n), 1, "fuzz entry on the good shard");
    int full = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t old = d[i];
        d[i] = (uint8_t)(old + 0x41);
        full += pq_fuzz_one(d, n) == 1;
        d[i] = old;
    }
    for (size_t len = 0; len < n; len += 97) pq_fuzz_one(d, len);
    CHECK(full > 0 && full < (int)n, "mutations: %d of %zu still read", full, n);
    free(d);
}

/* ---- benchmark layouts ---- */

static int sample_image_equals(const bench_sample *s, const char *file) {
    size_t n;
    uint8_t *d = slurp(file, &n);
    int eq = d && s->image && s->image_size == n && memcmp(d, s->image, n) == 0;
    free(d);
    return eq;
}

static void test_vstar(void) {
    char root[1100];
    snprintf(root, sizeof root, "%s/data", fx);
    ergo_error err = {0};
    bench_iter *it;
    if (bench_open(&it, BENCH_VSTAR, root, NULL, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    bench_sample s;
    int done, n = 0;
    while (bench_next(it, &s, &done, &err) == ERGO_OK && !done) {
        if (n == 0) {
            CHECK(!s.failed, "vstar 0 failed: %s", s.error);
            CHECK_EQ_STR(s.question, "What is the color of the cup?", "vstar question");
            CHECK_EQ_INT(s.n_options, 4, "vstar options");
            if (s.n_options == 4) {
                CHECK_EQ_STR(s.options[0], "(A) red", "vstar option A");
                CHECK_EQ_STR(s.options[3], "(D) white", "vstar option D");
            }
            CHECK_EQ_STR(s.postfix, "Answer with the option's letter from the given choices directly.", "vstar postfix");
            CHECK_EQ_STR(s.label, "A", "vstar label");
            CHECK_EQ_STR(s.category, "direct_attributes", "vstar category");
            CHECK_EQ_STR(s.question_id, "0", "vstar question_id");
            CHECK(s.image_path && strstr(s.image_path, "vstar_bench/direct_attributes/sa_1.jpg") && !s.image,
                  "vstar image path %s", s.image_path ? s.image_path : "(null)");
            CHECK_EQ_STR(s.key, "test_questions.jsonl:1", "vstar key");
            CHECK(!s.has_box, "vstar 0 has no box");
        } else if (n == 1) {
            CHECK(s.has_box && s.box[0] == 1 && s.box[3] == 7, "vstar 1 box %d %g..%g", s.has_box, s.box[0], s.box[3]);
        } else if (n == 2) {
            CHECK(!s.failed && s.n_options == 2 && strcmp(s.category, "relative_position") == 0, "vstar 2: %d options", s.n_options);
        } else if (n == 3) {
            CHECK(s.failed && strstr(s.error, "test_questions.jsonl:4") && strstr(s.error, "missing"), "vstar 3: \"%s\"", s.error);
            CHECK(s.question && s.postfix && strcmp(s.question, "Only one line") == 0 &&
                      strcmp(s.postfix, "Only one line") == 0 && s.n_options == 0,
                  "one-line text splits as Python's split does");
        }
        bench_sample_free(&s);
        n++;
    }
    CHECK(err.msg[0] == '\0', "%s", err.msg);
    CHECK_EQ_INT(n, 4, "vstar samples");
    bench_close(it);
}

static void test_hrbench(void) {
    char root[1100], img0[1200], img3[1200];
    snprintf(root, sizeof root, "%s/data", fx);
    snprintf(img0, sizeof img0, "%s/data/vstar_bench/direct_attributes/sa_1.jpg", fx);       /* colour 0 */
    snprintf(img3, sizeof img3, "%s/data/vstar_bench/relative_position/sa_3.jpg", fx);      /* colour 2 */
    bench_sample first[2][16];
    int counts[2] = {0, 0};
    for (int src = 0; src < 2; src++) {
        bench_options o = {.hr_source = src ? BENCH_HR_TSV : BENCH_HR_PARQUET};
        ergo_error err = {0};
        bench_iter *it;
        if (bench_open(&it, BENCH_HRBENCH, root, &o, &err) != ERGO_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        int done;
        bench_sample s;
        while (bench_next(it, &s, &done, &err) == ERGO_OK && !done) {
            if (counts[src] < 16) first[src][counts[src]++] = s;
            else bench_sample_free(&s);
        }
        CHECK(err.msg[0] == '\0', "%s", err.msg);
        bench_close(it);
    }
    CHECK(counts[0] == 16 && counts[1] == 16, "hrbench samples: parquet %d, tsv %d", counts[0], counts[1]);
    if (counts[0] == 16) {
        bench_sample *s = &first[0][0];
        CHECK(!s->failed, "hr 0 failed: %s", s->error);
        CHECK_EQ_STR(s->question, "4k question 0: what colour is the sign?", "hr question");
        CHECK(s->n_options == 4 && strcmp(s->options[0], "A:red") == 0 && strcmp(s->options[3], "D:white") == 0,
              "hr options \"%s\"", s->n_options ? s->options[0] : "");
        CHECK_EQ_STR(s->postfix, " Answer with the option's letter from the given choices directly.", "hr postfix");
        CHECK_EQ_STR(s->label, "A", "hr label");
        CHECK_EQ_STR(s->category, "4k", "hr category");
        CHECK_EQ_STR(s->subcategory, "FSP", "hr subcategory");
        CHECK_EQ_STR(s->question_id, "0", "hr question_id");
        CHECK(sample_image_equals(s, img0), "hr 0: decoded image differs from the JPEG written");
        CHECK_EQ_STR(first[0][1].options[0], "A:green", "hr rotation");
        CHECK_EQ_STR(first[0][4].subcategory, "FCP", "hr cross");
        bench_sample *e = &first[0][8];
        CHECK(!e->failed && strcmp(e->category, "8k") == 0 && strcmp(e->question_id, "0") == 0 &&
                  strcmp(e->key, "hr_bench_8k.parquet:0") == 0,
              "hr 8k first: %s %s", e->category, e->key);
        CHECK(sample_image_equals(e, img3), "hr 8k: image (zstd, page v2, 3 row groups)");
        CHECK_EQ_STR(first[0][15].question_id, "7", "hr 8k last row");
    }
    if (counts[0] == 16 && counts[1] == 16) {
        int diff = -1;
        for (int i = 0; i < 16 && diff < 0; i++) {
            bench_sample *a = &first[0][i], *b = &first[1][i];
            int same = a->failed == b->failed && !strcmp(a->question, b->question) && !strcmp(a->label, b->label) &&
                       !strcmp(a->category, b->category) && !strcmp(a->subcategory, b->subcategory) &&
                       !strcmp(a->question_id, b->question_id) && a->n_options == b->n_options &&
                       a->image_size == b->image_size && !memcmp(a->image, b->image, a->image_size);
            for (int k = 0; same && k < a->n_options; k++) same = !strcmp(a->options[k], b->options[k]);
            if (!same) diff = i;
        }
        CHECK(diff < 0, "hrbench: TSV sample %d differs from parquet", diff);
    }
    for (int src = 0; src < 2; src++)
        for (int i = 0; i < counts[src]; i++) bench_sample_free(&first[src][i]);
}

static void test_mme(void) {
    char root[1100];
    snprintf(root, sizeof root, "%s/data", fx);
    ergo_error err = {0};
    bench_iter *it;
    if (bench_open(&it, BENCH_MMERWL, root, NULL, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    bench_sample s;
    int done, n = 0, bad = 0;
    while (bench_next(it, &s, &done, &err) == ERGO_OK && !done) {
        char q[64], opt[64];
        snprintf(q, sizeof q, "MME question %d?", n);
        int nopt = n % 2 == 0 ? 5 : 4;
        snprintf(opt, sizeof opt, "(%c) option %d of %d", 'A' + nopt - 1, nopt - 1, n);
        int ok = !s.failed && !strcmp(s.question, q) && s.n_options == nopt && !strcmp(s.options[nopt - 1], opt) &&
                 s.label[0] == "ABCDE"[n % nopt] && s.image_size > 100 && s.image[0] == 0xff && s.image[1] == 0xd8 &&
                 s.postfix[0] == ' ' && s.category && !s.subcategory;
        if (!ok && !bad++) CHECK(0, "mme sample %d (%s): %s", n, s.key ? s.key : "", s.failed ? s.error : "fields differ");
        if (n == 2) CHECK_EQ_STR(s.key, "train-00001-of-00004.parquet:0", "mme key (gzip shard)");
        if (n == 2) CHECK_EQ_STR(s.question_id, "0", "mme question_id is the row within the shard");
        if (n == 1) CHECK_EQ_STR(s.category, "Reasoning/Diagram and Table", "mme category");
        bench_sample_free(&s);
        n++;
    }
    CHECK(err.msg[0] == '\0', "%s", err.msg);
    CHECK_EQ_INT(n, 7, "mme samples");
    CHECK_EQ_INT(bad, 0, "mme bad samples");
    bench_close(it);
}

static void write_file(const char *path, const void *d, size_t n) {
    ergo_error err = {0};
    CHECK(file_write_all(path, d, n, &err) == ERGO_OK, "%s", err.msg);
}

static void test_bad_inputs(void) {
    char root[1100], dir[1200], path[1300];
    ergo_error err = {0};
    bench_iter *it;
    /* missing files are named */
    snprintf(root, sizeof root, "%s/eval_empty", scratch_dir());
    mkdir(root, 0755);
    for (int k = 0; k < 3; k++) {
        memset(&err, 0, sizeof err);
        static const char *const want[] = {"test_questions.jsonl: missing", "hr_bench_4k.tsv: missing",
                                           "train-00000-of-00004.parquet: missing"};
        ergo_status st = bench_open(&it, (bench_kind)k, root, NULL, &err);
        CHECK(st == ERGO_E_IO && strstr(err.msg, want[k]), "missing %d: \"%s\"", k, err.msg);
    }
    /* a malformed JSONL line names its line and does not stop the iteration */
    snprintf(root, sizeof root, "%s/eval_bad", scratch_dir());
    snprintf(dir, sizeof dir, "%s/vstar_bench", root);
    mkdir(root, 0755);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/test_questions.jsonl", dir);
    const char *jl =
        "{\"question_id\": 7, \"image\": \"a.jpg\", \"category\": \"direct_attributes\", \"text\": \"Q\\n(A) x\\nP\", \"label\": \"A\"}\n"
        "{\"question_id\": 8, \"image\": \"a.jpg\", \"categ\n"
        "\n"
        "{\"question_id\": 9, \"image\": \"../a.jpg\", \"category\": \"c\", \"text\": \"Q\", \"label\": \"A\"}\n"
        "{\"question_id\": \"x10\", \"image\": \"a.jpg\", \"category\": \"c\", \"text\": 5, \"label\": \"A\"}\n"
        "{\"question_id\": 11, \"image\": \"a.jpg\", \"category\": \"c\", \"text\": \"Q\", \"label\": \"B\"}";
    write_file(path, jl, strlen(jl));
    snprintf(path, sizeof path, "%s/a.jpg", dir);
    write_file(path, "x", 1);
    memset(&err, 0, sizeof err);
    if (bench_open(&it, BENCH_VSTAR, root, NULL, &err) == ERGO_OK) {
        bench_sample s;
        int done, n = 0;
        static const char *const want[] = {NULL, "test_questions.jsonl:2: malformed JSON", "test_questions.jsonl:4: image path",
                                           "test_questions.jsonl:5: `text' is not a string", NULL};
        while (bench_next(it, &s, &done, &err) == ERGO_OK && !done) {
            if (n < 5) {
                if (want[n]) CHECK(s.failed && strstr(s.error, want[n]), "jsonl sample %d: \"%s\"", n, s.error);
                else CHECK(!s.failed, "jsonl sample %d failed: %s", n, s.error);
            }
            if (n == 4) CHECK_EQ_STR(s.label, "B", "last line without a newline");
            n++;
            bench_sample_free(&s);
        }
        CHECK_EQ_INT(n, 5, "jsonl samples (the blank line skipped)");
        bench_close(it);
    } else CHECK(0, "%s", err.msg);

    /* a git-lfs pointer instead of the data */
    snprintf(dir, sizeof dir, "%s/HR-Bench", root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/hr_bench_4k.parquet", dir);
    const char *lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 430000000\n";
    write_file(path, lfs, strlen(lfs));
    memset(&err, 0, sizeof err);
    CHECK(bench_open(&it, BENCH_HRBENCH, root, NULL, &err) != ERGO_OK && strstr(err.msg, "git-lfs pointer"), "lfs: \"%s\"", err.msg);

    /* a bad page in HR-Bench 4K: its row group's samples fail, 8K still loads */
    char src[1200];
    size_t n;
    snprintf(src, sizeof src, "%s/data/HR-Bench/hr_bench_4k.parquet", fx);
    uint8_t *d = slurp(src, &n);
    size_t vl = 0, at = 0;
    pq_file *pf;
    uint64_t qstart = 0, qsize = 0;
    if (d && pq_open_bytes(&pf, d, n, "4k", NULL, &err) == ERGO_OK) {
        CHECK(pq_column_chunk_range(pf, 0, pq_find_column(pf, "question"), &qstart, &qsize) == 0, "question chunk");
        pq_close(pf);
        at = first_csize_at(d, n, (size_t)qstart, &vl);
    }
    CHECK(at > 0, "hr_bench_4k.parquet: question's first page header not found at %llu", (unsigned long long)qstart);
    if (at) {
        for (size_t i = 0; i + 1 < vl; i++) d[at + i] = 0xfe;
        d[at + vl - 1] = 0x3f;
        write_file(path, d, n);
        free(d);
        snprintf(src, sizeof src, "%s/data/HR-Bench/hr_bench_8k.parquet", fx);
        d = slurp(src, &n);
        snprintf(path, sizeof path, "%s/hr_bench_8k.parquet", dir);
        if (d) write_file(path, d, n);
        memset(&err, 0, sizeof err);
        if (bench_open(&it, BENCH_HRBENCH, root, NULL, &err) == ERGO_OK) {
            bench_sample s;
            int done, failed = 0, good = 0, named = 0;
            while (bench_next(it, &s, &done, &err) == ERGO_OK && !done) {
                failed += s.failed;
                good += !s.failed;
                named += s.failed && strstr(s.error, "hr_bench_4k.parquet") && strstr(s.error, "column `question'");
                bench_sample_free(&s);
            }
            CHECK(failed == 8 && good == 8 && named == 8, "bad page: %d failed (%d named), %d good; %s", failed, named, good, err.msg);
            bench_close(it);
        } else CHECK(0, "%s", err.msg);
    }
    free(d);

    /* a TSV without a needed column */
    snprintf(path, sizeof path, "%s/hr_bench_4k.tsv", dir);
    write_file(path, "index\tquestion\n0\tq\n", 18);
    snprintf(path, sizeof path, "%s/hr_bench_8k.tsv", dir);
    write_file(path, "index\tquestion\n0\tq\n", 18);
    bench_options o = {.hr_source = BENCH_HR_TSV};
    memset(&err, 0, sizeof err);
    if (bench_open(&it, BENCH_HRBENCH, root, &o, &err) == ERGO_OK) {
        bench_sample s;
        int done;
        ergo_status st = bench_next(it, &s, &done, &err);
        CHECK(st != ERGO_OK && strstr(err.msg, "hr_bench_4k.tsv: no column `answer'"), "tsv column: \"%s\"", err.msg);
        if (st == ERGO_OK) bench_sample_free(&s);
        bench_close(it);
    } else CHECK(0, "%s", err.msg);

    /* base64 */
    size_t got;
    uint8_t *b = bench_base64_decode("aGVs\nbG8=", 9, 100, &got, "t", &err);
    CHECK(b && got == 5 && memcmp(b, "hello", 5) == 0, "base64 with a newline");
    free(b);
    memset(&err, 0, sizeof err);
    b = bench_base64_decode("aGVsbG8", 7, 100, &got, "row 3", &err);
    CHECK(!b && strstr(err.msg, "row 3: the image is not valid base64"), "base64 without padding: \"%s\"", err.msg);
    free(b);
    b = bench_base64_decode("aGVsbG8=", 8, 4, &got, "row 4", &err);
    CHECK(!b && strstr(err.msg, "over the limit"), "base64 limit: \"%s\"", err.msg);
    free(b);
}

/* ---- scoring ---- */

static void test_scoring(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/score_cases.json", fx);
    ergo_error err = {0};
    json_t *cases = json_load_path(path, &err);
    if (!cases) {
        CHECK(0, "%s", err.msg);
        return;
    }
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *resp = json_string_value(json_object_get(c, "response"));
        const char *label = json_string_value(json_object_get(c, "label"));
        char *raw = score_extract(resp), *pred = NULL;
        int ok = score_response(resp, label, &pred);
        CHECK(raw && strcmp(raw, json_string_value(json_object_get(c, "extracted"))) == 0,
              "case %zu \"%s\": extracted \"%s\", want \"%s\"", i, resp, raw ? raw : "",
              json_string_value(json_object_get(c, "extracted")));
        CHECK(pred && strcmp(pred, json_string_value(json_object_get(c, "pred"))) == 0, "case %zu: pred \"%s\"", i,
              pred ? pred : "");
        CHECK(ok == json_is_true(json_object_get(c, "correct")), "case %zu \"%s\" vs %s: verdict %d", i, resp, label, ok);
        free(raw);
        free(pred);
    }
    CHECK(json_array_size(cases) >= 15, "score cases: %zu", json_array_size(cases));
    json_decref(cases);

    double lo, hi;
    score_wilson95(8, 10, &lo, &hi);
    CHECK(fabs(lo - 0.4901624) < 1e-6 && fabs(hi - 0.9433178) < 1e-6, "wilson 8/10: [%.7f, %.7f]", lo, hi);
    score_wilson95(0, 0, &lo, &hi);
    CHECK(lo == 0 && hi == 0, "wilson 0/0");
    score_wilson95(5, 5, &lo, &hi);
    CHECK(hi == 1.0 && lo > 0.5 && lo < 0.6, "wilson 5/5: [%g, %g]", lo, hi);

    score_table t;
    score_table_init(&t, BENCH_VSTAR);
    score_add(&t, "direct_attributes", NULL, SCORE_CORRECT);
    score_add(&t, "direct_attributes", NULL, SCORE_WRONG);
    score_add(&t, "relative_position", NULL, SCORE_CORRECT);
    score_add(&t, "relative_position", NULL, SCORE_FAILED);
    score_add(&t, "OCR", NULL, SCORE_CORRECT);
    char *rep = score_report(&t, 0);
    const char *want = "\n===== Accuracy Report =====\n"
                       "   direct_attributes: 50.00% (1/2)\n"
                       "   relative_position: 100.00% (1/1)\n"
                       "----------------------------------\n"
                       "               TOTAL: 66.67% (2/3)\n";
    CHECK(rep && strncmp(rep, want, strlen(want)) == 0, "report head:\n%s", rep ? rep : "(null)");
    CHECK(rep && strstr(rep, "relative_position:  50.00%") && strstr(rep, "ignored: 1"), "report tail:\n%s", rep ? rep : "");
    free(rep);
    int64_t cnt;
    CHECK(score_accuracy(&t.total, 0, &cnt) == 0.5 && cnt == 4, "ergo denominator counts the failed sample");

    score_table_init(&t, BENCH_HRBENCH);
    score_add(&t, "4k", "FSP", SCORE_CORRECT);
    score_add(&t, "8k", "FCP", SCORE_WRONG);
    CHECK(t.extra[0].correct == 1 && t.extra[3].wrong == 1 && t.extra[4].correct == 1 && t.extra[5].wrong == 1,
          "hr extra rows");
    score_table_init(&t, BENCH_MMERWL);
    CHECK(t.n_rows == 10 && strcmp(t.rows[1].name, "Reasoning/Autonomous_Driving") == 0 &&
              strcmp(t.rows[9].name, "Reasoning/Remote Sensing") == 0,
          "mme rows in the reference's order");
    rep = score_report(&t, 1);
    CHECK(rep && strstr(rep, "Reasoning/Remote Sensing: 0.00% (0/0)"), "zero rows print 0.00%% (0/0)");
    free(rep);
}

/* ---- fuzz corpora ---- */

static void replay_parquet(void *ctx, const char *name, const uint8_t *d, size_t n) {
    *(int *)ctx += pq_fuzz_one(d, n) > 0;
}
static void replay_jsonl(void *ctx, const char *name, const uint8_t *d, size_t n) {
    *(int *)ctx += bench_fuzz_jsonl(d, n) > 0;
}

static void test_fuzz_corpora(void) {
    int read = 0, n = for_each_corpus_file("parquet", replay_parquet, &read);
    CHECK(n >= 6 && read > 0 && read < n, "parquet corpus: %d files, %d read", n, read);
    read = 0;
    n = for_each_corpus_file("eval_jsonl", replay_jsonl, &read);
    CHECK(n >= 4 && read > 0 && read < n, "eval_jsonl corpus: %d files, %d with good samples", n, read);
}

void test_eval(void) {
    snprintf(fx, sizeof fx, "%s/eval", fixtures_dir());
    char path[1100];
    snprintf(path, sizeof path, "%s/edge/expect.json", fx);
    ergo_error err = {0};
    json_t *expect = json_load_path(path, &err);
    if (!expect) {
        CHECK(0, "eval fixtures: %s", err.msg);
        return;
    }
    test_parquet_types(expect);
    test_parquet_fallback(expect);
    json_decref(expect);
    test_parquet_refusals();
    test_parquet_corrupt();
    test_parquet_mutations();
    test_vstar();
    test_hrbench();
    test_mme();
    test_bad_inputs();
    test_scoring();
    test_fuzz_corpora();
}
