/*
 * bench_data.c - loaders for V*, HR-Bench and MME-RealWorld-lite (bench_data.h).
 *
 * Each mirrors one branch of the reference's main()/preprocess_data() (spec 1.2); the
 * comments quote what the Python does where ergo has to match it exactly.
 */
#include "bench_data.h"

#include <nettle/base64.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "parquet.h"

/* " Answer with the option's letter from the given choices directly." with its leading
 * space (HR-Bench and MME; V* carries its own postfix line, without the space). */
static const char HR_POSTFIX[] = " Answer with the option's letter from the given choices directly.";

#define MAX_FILES 4
#define MAX_LINE ((size_t)1 << 31) /* a TSV line holds a whole base64 8K image */

static const char *const VSTAR_CATS[] = {"direct_attributes", "relative_position"};
static const char *const HR_CATS[] = {"4k", "8k"};
/* The reference's loop: for c in [AD, DT, Mon, OCR, RS]: for t in [Perception, Reasoning]. */
static const char *const MME_CATS[] = {
    "Perception/Autonomous_Driving",        "Reasoning/Autonomous_Driving",
    "Perception/Diagram and Table",         "Reasoning/Diagram and Table",
    "Perception/Monitoring",                "Reasoning/Monitoring",
    "Perception/OCR with Complex Context",  "Reasoning/OCR with Complex Context",
    "Perception/Remote Sensing",            "Reasoning/Remote Sensing",
};

const char *const *bench_categories(bench_kind kind, int *n) {
    switch (kind) {
    case BENCH_VSTAR: *n = 2; return VSTAR_CATS;
    case BENCH_HRBENCH: *n = 2; return HR_CATS;
    case BENCH_MMERWL: *n = 10; return MME_CATS;
    }
    *n = 0;
    return NULL;
}

const char *bench_name(bench_kind kind) {
    switch (kind) {
    case BENCH_VSTAR: return "vstar";
    case BENCH_HRBENCH: return "hrbench";
    case BENCH_MMERWL: return "mmerwl";
    }
    return "?";
}

int bench_parse_name(const char *name) {
    for (int k = 0; k < 3; k++)
        if (strcmp(name, bench_name((bench_kind)k)) == 0) return k;
    return -1;
}

/* ---- small helpers ------------------------------------------------------------------ */

static void sample_fail(bench_sample *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sample_fail(bench_sample *s, const char *fmt, ...) {
    if (s->failed) return; /* keep the first reason */
    s->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
}

static char *dup_n(const void *p, size_t n) {
    char *out = malloc(n + 1);
    if (!out) return NULL;
    if (n) memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

static char *dup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *dup_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *out = malloc((size_t)n + 1);
    if (!out) return NULL;
    va_start(ap, fmt);
    vsnprintf(out, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return out;
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

void bench_sample_free(bench_sample *s) {
    free(s->key);
    free(s->question_id);
    free(s->image_path);
    free(s->image);
    free(s->question);
    for (int i = 0; i < s->n_options; i++) free(s->options[i]);
    free(s->options);
    free(s->postfix);
    free(s->label);
    free(s->category);
    free(s->subcategory);
    memset(s, 0, sizeof *s);
}

uint8_t *bench_base64_decode(const char *src, size_t len, size_t max_out, size_t *out_len,
                             const char *what, ergo_error *err) {
    /* nettle skips ASCII white space and, like Python's b64decode, insists on complete
     * padding. Python's non-validating b64decode also discards other characters outside
     * the alphabet; nettle refuses them (image data never holds any). */
    *out_len = 0;
    size_t cap = BASE64_DECODE_LENGTH(len);
    if (cap > max_out + 3) {
        ergo_fail(err, ERGO_E_LIMIT, "%s: a base64 image of %zu characters is over the limit of %zu bytes", what, len, max_out);
        return NULL;
    }
    uint8_t *out = malloc(cap ? cap : 1);
    if (!out) {
        ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory for a %zu-byte image", what, cap);
        return NULL;
    }
    struct base64_decode_ctx ctx;
    base64_decode_init(&ctx);
    size_t n = 0;
    if (!base64_decode_update(&ctx, &n, out, len, src) || !base64_decode_final(&ctx)) {
        free(out);
        ergo_fail(err, ERGO_E_FORMAT, "%s: the image is not valid base64", what);
        return NULL;
    }
    if (n > max_out) {
        free(out);
        ergo_fail(err, ERGO_E_LIMIT, "%s: a decoded image of %zu bytes is over the limit of %zu", what, n, max_out);
        return NULL;
    }
    *out_len = n;
    return out;
}

ergo_status bench_split_vstar_text(const char *text, bench_sample *s, ergo_error *err) {
    /* lines = text.split("\n"); question = lines[0]; options = lines[1:-1];
     * postfix = lines[-1] (the same as the question when there is one line). */
    int n = 1;
    for (const char *p = text; *p; p++) n += *p == '\n';
    const char **starts = malloc((size_t)n * sizeof *starts);
    size_t *lens = malloc((size_t)n * sizeof *lens);
    if (!starts || !lens) goto nomem;
    {
        int k = 0;
        const char *p = text;
        for (;;) {
            const char *e = strchr(p, '\n');
            starts[k] = p;
            lens[k] = e ? (size_t)(e - p) : strlen(p);
            k++;
            if (!e) break;
            p = e + 1;
        }
    }
    if (!(s->question = dup_n(starts[0], lens[0]))) goto nomem;
    if (!(s->postfix = dup_n(starts[n - 1], lens[n - 1]))) goto nomem;
    if (n > 2) {
        if (!(s->options = calloc((size_t)(n - 2), sizeof *s->options))) goto nomem;
        for (int i = 1; i < n - 1; i++) {
            if (!(s->options[i - 1] = dup_n(starts[i], lens[i]))) goto nomem;
            s->n_options = i;
        }
    }
    free(starts);
    free(lens);
    return ERGO_OK;
nomem:
    free(starts);
    free(lens);
    return ergo_fail(err, ERGO_E_NOMEM, "out of memory splitting a question");
}

/* ---- the iterator --------------------------------------------------------------------- */

typedef enum { SRC_JSONL, SRC_PARQUET, SRC_TSV } src_kind;

struct bench_iter {
    bench_kind kind;
    bench_options opt;
    char *root;          /* data_root */
    char *vstar_dir;     /* data_root/vstar_bench */
    src_kind src;
    char *files[MAX_FILES];
    const char *file_cat[MAX_FILES]; /* HR-Bench: "4k"/"8k" */
    int n_files, cur;
    int64_t seq;
    /* the open file */
    FILE *fp;            /* JSONL, TSV */
    char *line;
    size_t line_cap;
    int64_t line_no;     /* 1-based, of the last line read */
    int64_t row;         /* 0-based data row of the file (TSV/parquet) */
    int tsv_col[9];      /* question, answer, category, A, B, C, D, image (TSV) */
    int tsv_ncols;
    pq_file *pf;
    pq_reader *pr;
    int64_t lost_next, lost_end; /* parquet rows of a failed row group still to report */
    char lost_msg[768];
    /* fuzzing: a JSONL held in memory */
    const uint8_t *mem;
    size_t mem_size;
};

static ergo_status check_not_lfs(const char *path, ergo_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ergo_fail(err, ERGO_E_IO, "%s: cannot open", path);
    char head[48] = {0};
    size_t n = fread(head, 1, sizeof head - 1, f);
    fclose(f);
    if (n >= 40 && strncmp(head, "version https://git-lfs.github.com/spec/", 40) == 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: a git-lfs pointer, not the data (run `git lfs install && git lfs pull` in its clone)", path);
    return ERGO_OK;
}

void bench_close(bench_iter *it) {
    if (!it) return;
    if (it->fp) fclose(it->fp);
    pq_reader_close(it->pr);
    pq_close(it->pf);
    free(it->line);
    for (int i = 0; i < it->n_files; i++) free(it->files[i]);
    free(it->root);
    free(it->vstar_dir);
    free(it);
}

static ergo_status add_file(bench_iter *it, const char *dir, const char *name, const char *cat, ergo_error *err) {
    char path[4096];
    ergo_status st = path_join(path, sizeof path, dir, name, err);
    if (st != ERGO_OK) return st;
    if (!file_exists(path)) return ergo_fail(err, ERGO_E_IO, "%s: missing (expected under --data-root %s)", path, it->root);
    if ((st = check_not_lfs(path, err)) != ERGO_OK) return st;
    if (!(it->files[it->n_files] = strdup(path))) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    it->file_cat[it->n_files++] = cat;
    return ERGO_OK;
}

ergo_status bench_open_jsonl(bench_iter **out, const char *path, const bench_options *opts,
                             ergo_error *err) {
    *out = NULL;
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else snprintf(dir, sizeof dir, ".");
    if (!dir[0]) snprintf(dir, sizeof dir, "/");
    bench_iter *it = calloc(1, sizeof *it);
    if (!it || !(it->root = strdup(dir)) || !(it->vstar_dir = strdup(dir))) {
        if (it) free(it->root);
        free(it);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    }
    it->kind = BENCH_VSTAR;
    if (opts) it->opt = *opts;
    if (!it->opt.max_image_bytes) it->opt.max_image_bytes = (size_t)256 << 20;
    it->cur = -1;
    it->src = SRC_JSONL;
    ergo_status st = ERGO_OK;
    if (!file_exists(path)) st = ergo_fail(err, ERGO_E_IO, "%s: no such file", path);
    if (!st) st = check_not_lfs(path, err);
    if (!st && !(it->files[it->n_files++] = strdup(path))) st = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (st) {
        bench_close(it);
        return st;
    }
    *out = it;
    return ERGO_OK;
}

ergo_status bench_open(bench_iter **out, bench_kind kind, const char *data_root,
                       const bench_options *opts, ergo_error *err) {
    *out = NULL;
    bench_iter *it = calloc(1, sizeof *it);
    if (!it || !(it->root = strdup(data_root))) {
        free(it);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    }
    it->kind = kind;
    if (opts) it->opt = *opts;
    if (!it->opt.max_image_bytes) it->opt.max_image_bytes = (size_t)256 << 20;
    it->cur = -1;
    ergo_status st = ERGO_OK;
    char dir[4096];
    if (!dir_exists(data_root)) {
        st = ergo_fail(err, ERGO_E_IO, "--data-root %s: not a directory", data_root);
        goto fail;
    }
    if (kind == BENCH_VSTAR) {
        it->src = SRC_JSONL;
        if ((st = path_join(dir, sizeof dir, data_root, "vstar_bench", err)) != ERGO_OK) goto fail;
        if (!(it->vstar_dir = strdup(dir))) goto nomem;
        if ((st = add_file(it, dir, "test_questions.jsonl", NULL, err)) != ERGO_OK) goto fail;
    } else if (kind == BENCH_HRBENCH) {
        if ((st = path_join(dir, sizeof dir, data_root, "HR-Bench", err)) != ERGO_OK) goto fail;
        char pq4[4200];
        snprintf(pq4, sizeof pq4, "%s/hr_bench_4k.parquet", dir);
        int use_tsv = it->opt.hr_source == BENCH_HR_TSV || (it->opt.hr_source == BENCH_HR_AUTO && !file_exists(pq4));
        it->src = use_tsv ? SRC_TSV : SRC_PARQUET;
        const char *ext = use_tsv ? "tsv" : "parquet";
        char name[64];
        snprintf(name, sizeof name, "hr_bench_4k.%s", ext);
        if ((st = add_file(it, dir, name, "4k", err)) != ERGO_OK) goto fail;
        snprintf(name, sizeof name, "hr_bench_8k.%s", ext);
        if ((st = add_file(it, dir, name, "8k", err)) != ERGO_OK) goto fail;
    } else if (kind == BENCH_MMERWL) {
        it->src = SRC_PARQUET;
        if ((st = path_join(dir, sizeof dir, data_root, "MME-RealWorld-lite-lmms-eval/data", err)) != ERGO_OK) goto fail;
        for (int k = 0; k < 4; k++) {
            char name[64];
            snprintf(name, sizeof name, "train-0000%d-of-00004.parquet", k);
            if ((st = add_file(it, dir, name, NULL, err)) != ERGO_OK) goto fail;
        }
    } else {
        st = ergo_fail(err, ERGO_E_ARG, "unknown benchmark %d", (int)kind);
        goto fail;
    }
    *out = it;
    return ERGO_OK;
nomem:
    st = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
fail:
    bench_close(it);
    return st;
}

/* Reads one line (without its '\n'); 0 at EOF. */
static int read_line(bench_iter *it, size_t *len, ergo_error *err, ergo_status *st) {
    *st = ERGO_OK;
    ssize_t n = getline(&it->line, &it->line_cap, it->fp);
    if (n < 0) {
        if (ferror(it->fp)) *st = ergo_fail(err, ERGO_E_IO, "%s: read error after line %lld", it->files[it->cur], (long long)it->line_no);
        return 0;
    }
    it->line_no++;
    if ((size_t)n > MAX_LINE) {
        *st = ergo_fail(err, ERGO_E_LIMIT, "%s:%lld: line of %zd bytes is too long", it->files[it->cur], (long long)it->line_no, n);
        return 0;
    }
    if (n > 0 && it->line[n - 1] == '\n') it->line[--n] = '\0';
    if (n > 0 && it->line[n - 1] == '\r') it->line[--n] = '\0';
    *len = (size_t)n;
    return 1;
}

static const char *const PQ_HR_COLS[] = {"question", "answer", "category", "A", "B", "C", "D", "image"};
static const char *const PQ_MME_COLS[] = {"question", "multi-choice options", "answer", "category", "bytes"};

/* Opens files[cur]. */
static ergo_status open_current(bench_iter *it, ergo_error *err) {
    const char *path = it->files[it->cur];
    it->line_no = 0;
    it->row = 0;
    it->lost_next = it->lost_end = 0;
    if (it->src == SRC_PARQUET) {
        ergo_status st = pq_open(&it->pf, path, NULL, err);
        if (st != ERGO_OK) return st;
        if (it->kind == BENCH_HRBENCH) return pq_reader_open(&it->pr, it->pf, PQ_HR_COLS, 8, err);
        return pq_reader_open(&it->pr, it->pf, PQ_MME_COLS, 5, err);
    }
    if (it->mem) it->fp = fmemopen((void *)it->mem, it->mem_size, "rb");
    else it->fp = fopen(path, "rb");
    if (!it->fp) return ergo_fail(err, ERGO_E_IO, "%s: cannot open", path);
    if (it->src == SRC_TSV) {
        size_t len;
        ergo_status st;
        if (!read_line(it, &len, err, &st)) return st != ERGO_OK ? st : ergo_fail(err, ERGO_E_FORMAT, "%s: empty (no header line)", path);
        for (int k = 0; k < 8; k++) it->tsv_col[k] = -1;
        int col = 0;
        char *p = it->line;
        for (;;) {
            char *t = strchr(p, '\t');
            if (t) *t = '\0';
            for (int k = 0; k < 8; k++)
                if (strcmp(p, PQ_HR_COLS[k]) == 0) it->tsv_col[k] = col;
            col++;
            if (!t) break;
            p = t + 1;
        }
        it->tsv_ncols = col;
        for (int k = 0; k < 8; k++)
            if (it->tsv_col[k] < 0) return ergo_fail(err, ERGO_E_FORMAT, "%s: no column `%s' in the header line", path, PQ_HR_COLS[k]);
    }
    return ERGO_OK;
}

static void close_current(bench_iter *it) {
    if (it->fp) fclose(it->fp);
    it->fp = NULL;
    pq_reader_close(it->pr);
    it->pr = NULL;
    pq_close(it->pf);
    it->pf = NULL;
}

/* ---- V* ------------------------------------------------------------------------------- */

static int path_is_safe(const char *rel) {
    if (rel[0] == '/' || rel[0] == '\0') return 0;
    for (const char *p = rel; *p;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') return 0;
        if (!e) break;
        p = e + 1;
    }
    return 1;
}

static ergo_status vstar_sample(bench_iter *it, const char *line, size_t len, bench_sample *s, ergo_error *err) {
    const char *file = base_name(it->files[it->cur]);
    ergo_error e = {0};
    json_t *j = json_load_bytes(line, len, "line", &e);
    if (!j) {
        sample_fail(s, "%s:%lld: malformed JSON (%s)", file, (long long)it->line_no, e.msg);
        return ERGO_OK;
    }
    ergo_status st = ERGO_OK;
    const char *img = NULL, *text = NULL, *cat = NULL, *label = NULL;
    json_t *qid = json_object_get(j, "question_id");
    if (!json_is_object(j)) {
        sample_fail(s, "%s:%lld: not a JSON object", file, (long long)it->line_no);
        goto done;
    }
    static const char *const keys[] = {"image", "text", "category", "label"};
    const char **dst[] = {&img, &text, &cat, &label};
    for (int k = 0; k < 4; k++) {
        json_t *v = json_object_get(j, keys[k]);
        if (!json_is_string(v)) {
            sample_fail(s, "%s:%lld: `%s' %s", file, (long long)it->line_no, keys[k], v ? "is not a string" : "missing");
            goto done;
        }
        *dst[k] = json_string_value(v);
    }
    if (json_is_integer(qid)) s->question_id = dup_printf("%lld", (long long)json_integer_value(qid));
    else if (json_is_string(qid)) s->question_id = strdup(json_string_value(qid));
    else {
        sample_fail(s, "%s:%lld: `question_id' %s", file, (long long)it->line_no, qid ? "is not an integer or string" : "missing");
        goto done;
    }
    if (!s->question_id) goto nomem;
    if ((st = bench_split_vstar_text(text, s, err)) != ERGO_OK) goto done;
    if (!(s->label = strdup(label)) || !(s->category = strdup(cat))) goto nomem;
    if (!path_is_safe(img)) {
        sample_fail(s, "%s:%lld: image path `%s' leaves vstar_bench/", file, (long long)it->line_no, img);
        goto done;
    }
    if (!(s->image_path = dup_printf("%s/%s", it->vstar_dir, img))) goto nomem;
    if (!it->mem && !file_exists(s->image_path))
        sample_fail(s, "%s:%lld: image %s is missing", file, (long long)it->line_no, s->image_path);
    json_t *bb = json_object_get(j, "bbox");
    if (bb && !json_is_null(bb)) {
        int ok = json_is_array(bb) && json_array_size(bb) == 4;
        for (size_t k = 0; ok && k < 4; k++) {
            json_t *x = json_array_get(bb, k);
            ok = json_is_number(x);
            if (ok) s->box[k] = json_number_value(x);
        }
        if (!ok) sample_fail(s, "%s:%lld: `bbox' is not [x1, y1, x2, y2]", file, (long long)it->line_no);
        else s->has_box = 1;
    }
    goto done;
nomem:
    st = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
done:
    json_decref(j);
    return st;
}

/* ---- HR-Bench / MME cells -------------------------------------------------------------- */

/* Copies a string cell; a null or non-bytes cell fails the sample. */
static char *cell_str(const pq_cell *c, const char *col, bench_sample *s) {
    if (c->kind != PQ_CELL_BYTES) {
        sample_fail(s, "%s: column `%s' is %s", s->key, col, c->kind == PQ_CELL_NULL ? "null" : "not a string");
        return NULL;
    }
    char *out = dup_n(c->ptr, c->len);
    if (!out) sample_fail(s, "%s: out of memory", s->key);
    return out;
}

static void set_image(bench_iter *it, bench_sample *s, const uint8_t *p, size_t n) {
    ergo_error e = {0};
    s->image = bench_base64_decode((const char *)p, n, it->opt.max_image_bytes, &s->image_size, s->key, &e);
    if (!s->image) sample_fail(s, "%s", e.msg);
}

/* HR-Bench: question, "A:"+A .. "D:"+D (no space), the leading-space postfix, answer,
 * category "4k"/"8k"; the dataset's single/cross becomes FSP/FCP. */
static void hr_fill(bench_iter *it, bench_sample *s, char *const v[8], const uint8_t *img, size_t img_len) {
    s->question = v[0];
    s->label = v[1];
    if (v[2]) {
        if (strcmp(v[2], "single") == 0) s->subcategory = strdup("FSP");
        else if (strcmp(v[2], "cross") == 0) s->subcategory = strdup("FCP");
        else s->subcategory = strdup(v[2]);
    }
    free(v[2]);
    s->options = calloc(4, sizeof *s->options);
    for (int k = 0; k < 4; k++) {
        if (s->options && v[3 + k]) {
            s->options[k] = dup_printf("%c:%s", 'A' + k, v[3 + k]);
            s->n_options = k + 1;
        }
        free(v[3 + k]);
    }
    s->postfix = strdup(HR_POSTFIX);
    s->category = strdup(it->file_cat[it->cur]);
    if (!s->options || s->n_options != 4 || !s->postfix || !s->category) sample_fail(s, "%s: incomplete row", s->key);
    if (img) set_image(it, s, img, img_len);
}

static void parquet_sample(bench_iter *it, bench_sample *s) {
    if (it->kind == BENCH_HRBENCH) {
        char *v[8] = {0};
        for (int k = 0; k < 7; k++) v[k] = cell_str(pq_reader_cell(it->pr, k), PQ_HR_COLS[k], s);
        const pq_cell *img = pq_reader_cell(it->pr, 7);
        if (img->kind != PQ_CELL_BYTES) sample_fail(s, "%s: column `image' is null", s->key);
        hr_fill(it, s, v, img->kind == PQ_CELL_BYTES ? img->ptr : NULL, img->len);
        return;
    }
    /* MME: question, the options list as given, answer, category, base64 in `bytes` */
    s->question = cell_str(pq_reader_cell(it->pr, 0), "question", s);
    const pq_cell *opts = pq_reader_cell(it->pr, 1);
    if (opts->kind != PQ_CELL_LIST) {
        sample_fail(s, "%s: column `multi-choice options' is %s", s->key, opts->kind == PQ_CELL_NULL ? "null" : "not a list");
    } else if (opts->n_items > 0) {
        s->options = calloc((size_t)opts->n_items, sizeof *s->options);
        for (int64_t i = 0; s->options && i < opts->n_items; i++) {
            char *o = cell_str(&opts->items[i], "multi-choice options", s);
            if (!o) break;
            s->options[s->n_options++] = o;
        }
        if (!s->options) sample_fail(s, "%s: out of memory", s->key);
    }
    s->label = cell_str(pq_reader_cell(it->pr, 2), "answer", s);
    s->category = cell_str(pq_reader_cell(it->pr, 3), "category", s);
    s->postfix = strdup(HR_POSTFIX);
    const pq_cell *img = pq_reader_cell(it->pr, 4);
    if (img->kind != PQ_CELL_BYTES) sample_fail(s, "%s: column `bytes' is null", s->key);
    else set_image(it, s, img->ptr, img->len);
}

static void tsv_sample(bench_iter *it, char *line, bench_sample *s) {
    /* split in place on tabs */
    char *fields[64];
    int n = 0;
    char *p = line;
    for (;;) {
        char *t = strchr(p, '\t');
        if (n < 64) fields[n++] = p;
        if (!t) break;
        *t = '\0';
        p = t + 1;
    }
    if (n != it->tsv_ncols) {
        sample_fail(s, "%s: %d fields, the header has %d", s->key, n, it->tsv_ncols);
        return;
    }
    char *v[8] = {0};
    for (int k = 0; k < 7; k++) v[k] = strdup(fields[it->tsv_col[k]]);
    const char *img = fields[it->tsv_col[7]];
    hr_fill(it, s, v, (const uint8_t *)img, strlen(img));
}

ergo_status bench_next(bench_iter *it, bench_sample *s, int *done, ergo_error *err) {
    memset(s, 0, sizeof *s);
    *done = 0;
    for (;;) {
        if (it->cur < 0 || (!it->fp && !it->pr)) {
            if (it->cur + 1 >= it->n_files) {
                *done = 1;
                return ERGO_OK;
            }
            it->cur++;
            ergo_status st = open_current(it, err);
            if (st != ERGO_OK) {
                close_current(it);
                it->cur = it->n_files; /* nothing after a broken file is readable in order */
                return st;
            }
        }
        const char *file = base_name(it->files[it->cur]);
        if (it->src == SRC_PARQUET) {
            if (it->lost_next < it->lost_end) { /* rows of a row group that failed */
                int64_t r = it->lost_next++;
                s->seq = it->seq++;
                s->key = dup_printf("%s:%lld", file, (long long)r);
                s->question_id = dup_printf("%lld", (long long)r);
                sample_fail(s, "%s", it->lost_msg);
                return ERGO_OK;
            }
            int have;
            ergo_error e = {0};
            if (pq_reader_next(it->pr, &have, &e) != ERGO_OK) {
                pq_reader_lost(it->pr, &it->lost_next, &it->lost_end);
                snprintf(it->lost_msg, sizeof it->lost_msg, "%s", e.msg);
                if (it->lost_next >= it->lost_end) { /* nothing to attribute it to: give up on the file */
                    close_current(it);
                    return ergo_fail(err, e.code, "%s", e.msg);
                }
                continue;
            }
            if (!have) {
                close_current(it);
                continue;
            }
            int64_t r = pq_reader_row(it->pr);
            s->seq = it->seq++;
            s->key = dup_printf("%s:%lld", file, (long long)r);
            s->question_id = dup_printf("%lld", (long long)r); /* the DataFrame row index */
            if (!s->key || !s->question_id) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
            parquet_sample(it, s);
            return ERGO_OK;
        }
        size_t len;
        ergo_status st;
        if (!read_line(it, &len, err, &st)) {
            close_current(it);
            if (st != ERGO_OK) {
                it->cur = it->n_files;
                return st;
            }
            continue;
        }
        if (it->src == SRC_JSONL) {
            size_t k = 0;
            while (k < len && (it->line[k] == ' ' || it->line[k] == '\t')) k++;
            if (k == len) continue; /* a blank line (the reference would stop on it) */
            s->seq = it->seq++;
            s->key = dup_printf("%s:%lld", file, (long long)it->line_no);
            if (!s->key) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
            return vstar_sample(it, it->line, len, s, err);
        }
        if (len == 0) continue;
        s->seq = it->seq++;
        s->key = dup_printf("%s:%lld", file, (long long)it->row);
        s->question_id = dup_printf("%lld", (long long)it->row);
        it->row++;
        if (!s->key || !s->question_id) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        tsv_sample(it, it->line, s);
        return ERGO_OK;
    }
}

int bench_fuzz_jsonl(const uint8_t *data, size_t size) {
    bench_iter it;
    memset(&it, 0, sizeof it);
    char name[] = "fuzz.jsonl", dir[] = "/nonexistent";
    char *files0 = name;
    it.kind = BENCH_VSTAR;
    it.src = SRC_JSONL;
    it.opt.max_image_bytes = 1 << 20;
    it.root = dir;
    it.vstar_dir = dir;
    it.files[0] = files0;
    it.n_files = 1;
    it.cur = -1;
    it.mem = data;
    it.mem_size = size;
    int good = 0;
    if (size == 0) return 0; /* fmemopen refuses an empty buffer */
    for (int guard = 0; guard < 100000; guard++) {
        bench_sample s;
        int done;
        ergo_error err = {0};
        if (bench_next(&it, &s, &done, &err) != ERGO_OK) {
            ERGO_ASSERT(err.msg[0] != '\0');
            break;
        }
        if (done) break;
        if (s.failed) {
            ERGO_ASSERT(strstr(s.error, "fuzz.jsonl:") != NULL);
        } else {
            ERGO_ASSERT(s.question && s.postfix && s.label && s.category && s.question_id && s.image_path);
            good++;
        }
        bench_sample_free(&s);
    }
    if (it.fp) fclose(it.fp);
    free(it.line);
    return good;
}
