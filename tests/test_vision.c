/*
 * Tests of src/model/vision.c against the reference's model.visual(pixel_values,
 * grid_thw) (transformers 4.56.2, float32, SDPA), recorded by tools/fixtures_vision.py
 * in tests/fixtures/vision/.
 *
 * For every run: the checkpoint is regenerated in memory from its case description
 * (random_checkpoint_fill), each image is decoded and preprocessed in C and its
 * pixel_values must hash to the reference processor's bytes, then the encoder's
 * named intermediates (patch_embed, every block, merger) are compared as they are
 * produced, so a failure names the first diverging tensor, and finally the output
 * (max-abs error over max-abs of the reference <= 1e-4). Runs of several images are
 * encoded image by image and compared with the reference's batched call. Also: the
 * errors for bad grids and limits, thread-count independence and state reuse.
 *
 * ERGO_VISION_REPORT=1 prints the relative error of every run.
 */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/file.h"
#include "base/json.h"
#include "base/rng.h"
#include "base/sha256.h"
#include "check.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "io/random_checkpoint.h"
#include "kernels/kernels.h"
#include "model/vision.h"

#define MAX_TAPS 72

static int report;

static const char *fx(const char *rel) {
    static char buf[4][1024];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", fixtures_dir(), rel);
    return buf[i];
}

static const char *jstr(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

static int jint(const json_t *o, const char *k) {
    return (int)json_integer_value(json_object_get(o, k));
}

static int jarr(const json_t *o, const char *k, int i) {
    return (int)json_integer_value(json_array_get(json_object_get(o, k), (size_t)i));
}

/* A float32 little-endian fixture file of exactly n values (x86: native order). */
static float *load_f32(const char *rel, size_t n) {
    char *bytes;
    size_t size;
    ergo_error err = {0};
    if (file_read_all(fx(rel), (size_t)1 << 28, &bytes, &size, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    if (size != n * sizeof(float)) {
        CHECK(0, "%s: %zu bytes, want %zu floats", rel, size, n);
        free(bytes);
        return NULL;
    }
    return (float *)(void *)bytes;
}

/* max |got - want| / max |want|, the measure; +inf when got holds NaN/Inf. */
/* The bound on --compute bf16's vision output: bf16 rounding of each product's input
 * (2^-9 relative) through a few blocks and the merger, with margin. */
#define VISION_BF16_TOL 1e-2

static double rel_error(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return (double)INFINITY;
        double d = fabs((double)got[i] - (double)want[i]);
        if (d > num) num = d;
        if (fabs((double)want[i]) > den) den = fabs((double)want[i]);
    }
    return den > 0 ? num / den : num;
}

/* ---- intermediates: compared inside the trace callback, in the order produced ---- */

typedef struct tap {
    char name[32];
    float *want;     /* (stored_rows, cols) */
    int rows, stored_rows, cols;
    int seen;
} tap;

typedef struct tap_set {
    const char *run;
    double tol;
    tap taps[MAX_TAPS];
    int n;
    int first_bad;   /* index in production order of the first tensor over tol, -1 */
    int produced;
    double worst;
} tap_set;

static void on_trace(void *ctx, const char *name, const float *data, int rows, int cols) {
    tap_set *ts = ctx;
    int order = ts->produced++;
    for (int i = 0; i < ts->n; i++) {
        tap *t = &ts->taps[i];
        if (strcmp(t->name, name) != 0) continue;
        t->seen = 1;
        if (rows != t->rows || cols != t->cols) {
            CHECK(0, "%s: %s is (%d, %d), want (%d, %d)", ts->run, name, rows, cols, t->rows,
                  t->cols);
            return;
        }
        double e = rel_error(data, t->want, (size_t)t->stored_rows * (size_t)t->cols);
        if (e > ts->worst) ts->worst = e;
        CHECK(e <= ts->tol, "%s: intermediate %s (%d of %d rows) off by %.3g relative (tol %g)%s",
              ts->run, name, t->stored_rows, t->rows, e, ts->tol,
              ts->first_bad < 0 ? "  <- first diverging tensor" : "");
        if (e > ts->tol && ts->first_bad < 0) ts->first_bad = order;
        if (report) printf("    %-12s %-14s rel %.3g\n", ts->run, name, e);
        return;
    }
}

static void tap_set_free(tap_set *ts) {
    for (int i = 0; i < ts->n; i++) free(ts->taps[i].want);
    ts->n = 0;
}

/* ---- one run of the manifest ---- */

typedef struct loaded_model {
    char case_path[512];
    model m;
    int ok;
} loaded_model;

static int ensure_model(loaded_model *lm, const char *case_rel) {
    if (lm->ok && !strcmp(lm->case_path, case_rel)) return 1;
    if (lm->ok) model_free(&lm->m);
    lm->ok = 0;
    ergo_error err = {0};
    ckpt_case c;
    if (ckpt_case_load(&c, fx(case_rel), &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    ergo_status s = random_checkpoint_fill(&lm->m, &c, &err);
    ckpt_case_free(&c);
    if (s != ERGO_OK) {
        CHECK(0, "%s: %s", case_rel, err.msg);
        return 0;
    }
    snprintf(lm->case_path, sizeof lm->case_path, "%s", case_rel);
    lm->ok = 1;
    return 1;
}

/* Several-frame inputs (grid_t > 1, as a video gives) have no image: their values come
 * from the generator shared with tools/ergo_random.py, value i = 2 * uniform(stream, i). */
static ergo_status synthetic_pixels(const json_t *syn, const json_t *im, preprocess_output *po,
                                    ergo_error *err) {
    po->grid_t = jarr(im, "grid_thw", 0);
    po->grid_h = jarr(im, "grid_thw", 1);
    po->grid_w = jarr(im, "grid_thw", 2);
    po->patch_dim = jarr(im, "pixel_values_shape", 1);
    po->n_patches = (int64_t)po->grid_t * po->grid_h * po->grid_w;
    const size_t n = (size_t)po->n_patches * (size_t)po->patch_dim;
    po->pixel_values = malloc(sizeof(float) * (n ? n : 1));
    if (!po->pixel_values) return ergo_fail(err, ERGO_E_NOMEM, "synthetic pixels: out of memory");
    const uint64_t stream = rng_stream_seed((uint64_t)json_integer_value(json_object_get(syn, "seed")),
                                            jstr(syn, "stream"));
    const float scale = (float)json_number_value(json_object_get(syn, "scale"));
    for (size_t i = 0; i < n; i++) po->pixel_values[i] = rng_uniform(stream, i) * scale;
    return ERGO_OK;
}

/* Decodes and preprocesses the run's images; checks grids and pixel_values bytes
 * against the reference processor. Returns the concatenated pixel_values (owned). */
static float *run_pixels(const json_t *run, const preprocess_config *pcfg, int32_t *grid_thw,
                         int *n_images, int *max_patches, size_t *total_patches) {
    const json_t *imgs = json_object_get(run, "images");
    const char *name = jstr(run, "name");
    *n_images = (int)json_array_size(imgs);
    *max_patches = 0;
    *total_patches = 0;
    float *all = NULL;
    size_t idx;
    const json_t *im;
    json_array_foreach(imgs, idx, im) {
        ergo_error err = {0};
        char rel[512];
        preprocess_output po = {0};
        ergo_status s;
        const json_t *syn = json_object_get(im, "synthetic");
        if (syn) {
            snprintf(rel, sizeof rel, "synthetic pixels %d", (int)idx);
            s = synthetic_pixels(syn, im, &po, &err);
        } else {
            snprintf(rel, sizeof rel, "vision/%s", jstr(im, "file"));
            image img = {0};
            if (image_decode_file(&img, fx(rel), NULL, &err) != ERGO_OK) {
                CHECK(0, "%s", err.msg);
                free(all);
                return NULL;
            }
            s = preprocess_image(pcfg, &img, &po, &err);
            image_free(&img);
        }
        if (s != ERGO_OK) {
            CHECK(0, "%s: %s", rel, err.msg);
            free(all);
            return NULL;
        }
        int gt = jarr(im, "grid_thw", 0), gh = jarr(im, "grid_thw", 1), gw = jarr(im, "grid_thw", 2);
        CHECK(po.grid_t == gt && po.grid_h == gh && po.grid_w == gw,
              "%s: %s: grid (%d, %d, %d), the reference's (%d, %d, %d)", name, rel, po.grid_t,
              po.grid_h, po.grid_w, gt, gh, gw);
        /* the encoder's input must be the reference's, byte for byte, before anything else */
        char hex[65];
        size_t nbytes = (size_t)po.n_patches * (size_t)po.patch_dim * sizeof(float);
        sha256_hex(po.pixel_values, nbytes, hex);
        if (strcmp(hex, jstr(im, "pixel_values_sha256")) != 0) {
            double sum = 0;
            for (size_t k = 0; k < (size_t)po.n_patches * (size_t)po.patch_dim; k++)
                sum += (double)po.pixel_values[k];
            CHECK(0, "%s: %s: pixel_values differ from the reference processor's (sum %.9g, "
                  "want %.9g)", name, rel, sum,
                  json_real_value(json_object_get(im, "pixel_values_sum")));
        } else {
            check_passed++;
        }
        size_t n = (size_t)po.n_patches * (size_t)po.patch_dim;
        float *grown = realloc(all, (*total_patches * (size_t)po.patch_dim + n) * sizeof(float));
        if (!grown) {
            preprocess_output_free(&po);
            free(all);
            CHECK(0, "out of memory");
            return NULL;
        }
        all = grown;
        memcpy(all + *total_patches * (size_t)po.patch_dim, po.pixel_values, n * sizeof(float));
        grid_thw[3 * idx] = po.grid_t;
        grid_thw[3 * idx + 1] = po.grid_h;
        grid_thw[3 * idx + 2] = po.grid_w;
        *total_patches += (size_t)po.n_patches;
        if (po.n_patches > *max_patches) *max_patches = (int)po.n_patches;
        preprocess_output_free(&po);
    }
    return all;
}

static void load_taps(tap_set *ts, const json_t *run, const float *ref_out, int out_rows,
                      int out_cols) {
    size_t i;
    const json_t *e;
    json_array_foreach(json_object_get(run, "intermediates"), i, e) {
        const char *file = jstr(e, "file");
        if (!*file || ts->n >= MAX_TAPS - 1) continue;
        tap *t = &ts->taps[ts->n];
        snprintf(t->name, sizeof t->name, "%s", jstr(e, "name"));
        t->rows = jint(e, "rows");
        t->cols = jint(e, "cols");
        t->stored_rows = jint(e, "stored_rows");
        char rel[512];
        snprintf(rel, sizeof rel, "vision/%s", file);
        t->want = load_f32(rel, (size_t)t->stored_rows * (size_t)t->cols);
        if (t->want) ts->n++;
    }
    /* the merger's output in window order = the reference output gathered by window_index */
    const json_t *wi = json_object_get(run, "window_index");
    if ((int)json_array_size(wi) != out_rows) return;
    tap *t = &ts->taps[ts->n];
    snprintf(t->name, sizeof t->name, "merger");
    t->rows = t->stored_rows = out_rows;
    t->cols = out_cols;
    t->want = malloc(sizeof(float) * (size_t)out_rows * (size_t)out_cols);
    for (int r = 0; r < out_rows; r++)
        memcpy(t->want + (size_t)r * out_cols,
               ref_out + (size_t)json_integer_value(json_array_get(wi, (size_t)r)) * out_cols,
               sizeof(float) * (size_t)out_cols);
    ts->n++;
}

static void check_run(const json_t *run, const preprocess_config *pcfg, loaded_model *lm,
                      double tol) {
    const char *name = jstr(run, "name");
    int32_t grid_thw[3 * 16];
    const json_t *imgs = json_object_get(run, "images");
    if (json_array_size(imgs) > 16) {
        CHECK(0, "%s: too many images", name);
        return;
    }
    int n_images, max_patches;
    size_t total_patches;
    float *pix = run_pixels(run, pcfg, grid_thw, &n_images, &max_patches, &total_patches);
    if (!pix) return;
    if (!ensure_model(lm, jstr(run, "case"))) {
        free(pix);
        return;
    }
    const model *m = &lm->m;
    const vision_config *vc = &m->config.vision;
    const int U = vc->merge * vc->merge, Do = vc->out_hidden;
    const int out_rows = jarr(json_object_get(run, "output"), "shape", 0);
    CHECK_EQ_INT(out_rows, (int)(total_patches / (size_t)U), "output rows");
    CHECK_EQ_INT(jarr(json_object_get(run, "output"), "shape", 1), Do, "output cols");
    char rel[512];
    snprintf(rel, sizeof rel, "vision/%s", jstr(json_object_get(run, "output"), "file"));
    float *ref = load_f32(rel, (size_t)out_rows * (size_t)Do);
    float *out = calloc((size_t)out_rows * (size_t)Do, sizeof *out);
    ergo_error err = {0};
    vision_state st;
    if (!ref || !out || vision_state_init(&st, vc, max_patches, &err) != ERGO_OK) {
        CHECK(0, "%s: setup: %s", name, err.msg);
        free(ref);
        free(out);
        free(pix);
        return;
    }
    /* a single image: compare every intermediate as it is produced */
    tap_set *ts = calloc(1, sizeof *ts);
    ts->run = name;
    ts->tol = tol;
    ts->first_bad = -1;
    if (n_images == 1) {
        load_taps(ts, run, ref, out_rows, Do);
        st.trace = on_trace;
        st.trace_ctx = ts;
    }
    ergo_status s = vision_encode_batch(m, &st, pix, grid_thw, n_images, out, &err);
    CHECK(s == ERGO_OK, "%s: vision_encode_batch: %s", name, err.msg);
    for (int i = 0; i < ts->n; i++)
        CHECK(ts->taps[i].seen, "%s: intermediate %s was never produced", name, ts->taps[i].name);
    double e = rel_error(out, ref, (size_t)out_rows * (size_t)Do);
    CHECK(e <= tol, "%s: vision output off by %.3g relative (max-abs err / max-abs ref; tol %g)",
          name, e, tol);
    if (report)
        printf("  vision %-16s %-22s grids %d  output (%d, %d)  rel err %.3g\n", name,
               lm->case_path + (strncmp(lm->case_path, "checkpoints/cases/", 18) ? 13 : 18),
               n_images, out_rows, Do, e);

    /* several images: each one alone, in reverse order through the same state, gives
     * the same bytes as its slice of the batch (no state leaks between calls) */
    if (n_images > 1) {
        st.trace = NULL;
        size_t row = 0, tok = 0;
        size_t rows_of[16], tok_of[16];
        for (int i = 0; i < n_images; i++) {
            rows_of[i] = row;
            tok_of[i] = tok;
            size_t n = (size_t)grid_thw[3 * i] * grid_thw[3 * i + 1] * grid_thw[3 * i + 2];
            row += n;
            tok += n / (size_t)U;
        }
        const size_t K = (size_t)vc->in_channels * vc->temporal_patch * vc->patch * vc->patch;
        float *one = calloc((size_t)out_rows * (size_t)Do, sizeof *one);
        for (int i = n_images - 1; i >= 0; i--) {
            s = vision_encode(m, &st, pix + rows_of[i] * K, grid_thw[3 * i], grid_thw[3 * i + 1],
                              grid_thw[3 * i + 2], one + tok_of[i] * (size_t)Do, &err);
            CHECK(s == ERGO_OK, "%s: image %d alone: %s", name, i, err.msg);
        }
        CHECK(memcmp(one, out, sizeof(float) * (size_t)out_rows * (size_t)Do) == 0,
              "%s: images encoded one by one differ from vision_encode_batch", name);
        free(one);
    }
    /* --compute bf16 (activations rounded to bf16 at each product, f32 sums): its
     * error against the reference is stated and bounded; f32 above is the parity */
    st.trace = NULL;
    if (kernels_set_compute("bf16", &err) == ERGO_OK) {
        float *b16 = calloc((size_t)out_rows * (size_t)Do, sizeof *b16);
        s = vision_encode_batch(m, &st, pix, grid_thw, n_images, b16, &err);
        kernels_set_compute("f32", &err);
        double eb = s == ERGO_OK ? rel_error(b16, ref, (size_t)out_rows * (size_t)Do) : (double)INFINITY;
        printf("  [vision] %-18s --compute bf16: rel err %.3g (max-abs err / max-abs ref; f32 %.3g)\n",
               name, eb, e);
        CHECK(eb <= VISION_BF16_TOL, "%s: --compute bf16 off by %.3g relative (bound %g)", name,
              eb, VISION_BF16_TOL);
        free(b16);
    }
    tap_set_free(ts);
    free(ts);
    vision_state_free(&st);
    free(ref);
    free(out);
    free(pix);
}

/* ---- errors and invariants on a tiny model ---- */

static void test_errors(const model *m) {
    ergo_error err = {0};
    vision_state st;
    const vision_config *vc = &m->config.vision;
    CHECK(vision_state_init(&st, vc, 2, &err) == ERGO_E_ARG && strstr(err.msg, "max_patches"),
          "state below one unit: %s", err.msg);
    if (vision_state_init(&st, vc, 64, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const int K = vc->in_channels * vc->temporal_patch * vc->patch * vc->patch;
    float *pix = calloc((size_t)128 * K, sizeof *pix);
    float *out = calloc((size_t)32 * vc->out_hidden, sizeof *out);
    ergo_status s = vision_encode(m, &st, pix, 1, 3, 4, out, &err);
    CHECK(s == ERGO_E_SHAPE && strstr(err.msg, "3x4") && strstr(err.msg, "multiple"),
          "odd grid: %d %s", (int)s, err.msg);
    /* a 4x6 grid, its intermediates dumped as raw float32 files (ERGO_TRACE style) */
    st.trace = vision_trace_dump;
    st.trace_ctx = (void *)scratch_dir();
    s = vision_encode(m, &st, pix, 1, 4, 6, out, &err);
    CHECK(s == ERGO_OK, "4x6 grid: %s", err.msg);
    st.trace = NULL;
    const char *dumps[3] = {"patch_embed", "blocks.3", "merger"};
    const size_t dump_floats[3] = {(size_t)24 * vc->hidden, (size_t)24 * vc->hidden,
                                   (size_t)6 * vc->out_hidden};
    for (int i = 0; i < 3; i++) {
        char path[1024], *bytes = NULL;
        size_t size = 0;
        snprintf(path, sizeof path, "%s/vision.%s.f32", scratch_dir(), dumps[i]);
        ergo_status r = file_read_all(path, (size_t)1 << 24, &bytes, &size, &err);
        CHECK(r == ERGO_OK && size == dump_floats[i] * sizeof(float),
              "trace dump %s: %zu bytes, want %zu (%s)", path, size,
              dump_floats[i] * sizeof(float), r ? err.msg : "ok");
        free(bytes);
    }
    s = vision_encode(m, &st, NULL, 1, 4, 6, out, &err);
    CHECK(s == ERGO_E_ARG, "no pixel_values: %d %s", (int)s, err.msg);
    s = vision_encode(m, &st, pix, 1, 8, 10, out, &err);
    CHECK(s == ERGO_E_LIMIT && strstr(err.msg, "80 patches") && strstr(err.msg, "64"),
          "over the state's limit: %d %s", (int)s, err.msg);
    s = vision_encode(m, &st, pix, 2, 4, 10, out, &err);
    CHECK(s == ERGO_E_LIMIT, "two frames over the limit: %d %s", (int)s, err.msg);
    s = vision_encode(m, &st, pix, 0, 4, 4, out, &err);
    CHECK(s == ERGO_E_ARG && strstr(err.msg, "empty"), "empty grid: %d %s", (int)s, err.msg);
    s = vision_encode(m, &st, pix, 1, 1000000, 1000000, out, &err);
    CHECK(s == ERGO_E_LIMIT, "huge grid (overflow-safe): %d %s", (int)s, err.msg);
    const int32_t grids[6] = {1, 4, 4, 1, 5, 4};
    s = vision_encode_batch(m, &st, pix, grids, 2, out, &err);
    CHECK(s == ERGO_E_SHAPE && strstr(err.msg, "image 2 of 2"), "batch, bad 2nd image: %s",
          err.msg);
    /* a state sized for another vision config is refused, not overrun */
    vision_config other = *vc;
    other.hidden *= 2;
    other.head_dim *= 2;
    vision_state st2;
    if (vision_state_init(&st2, &other, 64, &err) == ERGO_OK) {
        s = vision_encode(m, &st2, pix, 1, 4, 4, out, &err);
        CHECK(s == ERGO_E_ARG && strstr(err.msg, "another vision config"), "wrong state: %s",
              err.msg);
        vision_state_free(&st2);
    } else {
        CHECK(0, "%s", err.msg);
    }
    free(pix);
    free(out);
    vision_state_free(&st);
}

/* The same image with 1 thread and with all of them: every output element is computed
 * by one thread in a fixed order, so the bytes must not depend on the thread count. */
static void test_threads(const model *m, const float *pix, int gt, int gh, int gw) {
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    if (saved < 2) {
        SKIP("vision thread-count independence: only 1 OpenMP thread available");
        return;
    }
    ergo_error err = {0};
    const vision_config *vc = &m->config.vision;
    size_t n = (size_t)gt * gh * gw / (size_t)(vc->merge * vc->merge) * (size_t)vc->out_hidden;
    float *a = calloc(n, sizeof *a), *b = calloc(n, sizeof *b);
    vision_state st;
    omp_set_num_threads(1);
    ergo_status s1 = vision_state_init(&st, vc, gt * gh * gw, &err);
    if (!s1) s1 = vision_encode(m, &st, pix, gt, gh, gw, a, &err);
    vision_state_free(&st);
    omp_set_num_threads(saved);
    ergo_status s2 = vision_state_init(&st, vc, gt * gh * gw, &err);
    if (!s2) s2 = vision_encode(m, &st, pix, gt, gh, gw, b, &err);
    vision_state_free(&st);
    CHECK(!s1 && !s2 && memcmp(a, b, n * sizeof *a) == 0,
          "vision output depends on the thread count (1 vs %d)", saved);
    free(a);
    free(b);
#else
    SKIP("vision thread-count independence: built without OpenMP");
#endif
}

void test_vision(void) {
    report = getenv("ERGO_VISION_REPORT") != NULL;
    ergo_error err = {0};
    if (kernels_init(NULL, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    json_t *man = json_load_path(fx("vision/manifest.json"), &err);
    if (!man) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const json_t *proc = json_object_get(man, "processor");
    CHECK_EQ_STR(jstr(proc, "class"), "Qwen2VLImageProcessorFast", "processor class");
    preprocess_config pcfg;
    preprocess_config_default(&pcfg);
    pcfg.min_pixels = json_integer_value(json_object_get(proc, "min_pixels"));
    pcfg.max_pixels = json_integer_value(json_object_get(proc, "max_pixels"));
    double tol = json_real_value(json_object_get(json_object_get(man, "tolerance"), "output_rel"));
    CHECK(tol > 0 && tol <= 1e-4, "tolerance %g", tol);

    loaded_model lm = {0};
    size_t i;
    const json_t *run;
    json_array_foreach(json_object_get(man, "runs"), i, run) check_run(run, &pcfg, &lm, tol);

    /* errors and thread independence on the tiny bf16 checkpoint */
    if (ensure_model(&lm, "checkpoints/cases/flat_legacy_bf16.json")) {
        test_errors(&lm.m);
        const int gt = 1, gh = 8, gw = 12;
        const int K = 1176;
        float *pix = malloc(sizeof(float) * (size_t)gt * gh * gw * K);
        for (size_t k = 0; k < (size_t)gt * gh * gw * K; k++)
            pix[k] = (float)((k * 2654435761u) % 1000) / 250.0f - 2.0f;
        test_threads(&lm.m, pix, gt, gh, gw);
        free(pix);
    }
    if (lm.ok) model_free(&lm.m);
    json_decref(man);
}
