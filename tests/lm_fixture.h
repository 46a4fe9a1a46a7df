/*
 * lm_fixture.h - reading tests/fixtures/text (written by tools/fixtures_text.py):
 * the manifest, float32 arrays, the tiny checkpoints regenerated in memory, and
 * the comparison of a logits row with what the reference recorded (every
 * `stride`-th entry, the top 64, and the whole row when it was stored).
 * Shared by test_mrope.c, test_text.c, test_session.c, test_sample.c and
 * test_generate_cli.c; every function is static inline (no unused warnings).
 */
#ifndef ERGO_LM_FIXTURE_H
#define ERGO_LM_FIXTURE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "io/random_checkpoint.h"
#include "kernels/kernels.h"
#include "model/mrope.h"
#include "model/text.h"
#include "model/weights.h"

static inline const char *lmf_path(const char *rel) {
    static char bufs[4][1024];
    static int k;
    char *p = bufs[k++ & 3];
    snprintf(p, 1024, "%s/text/%s", fixtures_dir(), rel);
    return p;
}

/* The manifest (caller json_decref's), or NULL after a failed CHECK. */
static inline json_t *lmf_manifest(void) {
    ergo_error err = {0};
    json_t *j = json_load_path(lmf_path("manifest.json"), &err);
    CHECK(j != NULL, "text fixtures: %s", err.msg);
    return j;
}

/* A float32 little-endian file of the fixtures (malloc'd), n = its floats. */
static inline float *lmf_read_f32(const char *rel, size_t *n) {
    ergo_error err = {0};
    char *buf = NULL;
    size_t size = 0;
    if (file_read_all(lmf_path(rel), (size_t)1 << 30, &buf, &size, &err) != ERGO_OK) {
        CHECK(0, "text fixtures: %s", err.msg);
        return NULL;
    }
    *n = size / sizeof(float);
    return (float *)buf;
}

/* Regenerates a case's checkpoint in memory (the bytes the reference loaded). */
static inline int lmf_model(model *m, const char *case_rel) {
    ckpt_case c;
    ergo_error err = {0};
    if (ckpt_case_load(&c, lmf_path(case_rel), &err) != ERGO_OK) {
        CHECK(0, "case %s: %s", case_rel, err.msg);
        return 0;
    }
    ergo_status s = random_checkpoint_fill(m, &c, &err);
    ckpt_case_free(&c);
    CHECK(s == ERGO_OK, "case %s: %s", case_rel, err.msg);
    return s == ERGO_OK;
}

/* An int array of JSON (malloc'd; at least one element allocated). */
/* An f32 KV pool without a budget for m's sessions (free with kv_pool_free). */
static inline kv_pool *lmf_pool(kv_pool *p, const model *m) {
    ergo_error err = {0};
    const kv_pool_config kc = text_kv_config(&m->config.text, KV_F32, 0);
    ergo_status s = kv_pool_init(p, &kc, &err);
    CHECK(s == ERGO_OK, "kv pool: %s", err.msg);
    return s ? NULL : p;
}

static inline int32_t *lmf_ints(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *v = malloc(sizeof *v * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

static inline int lmf_grids(const json_t *arr, mrope_grid *g, int max) {
    int n = (int)json_array_size(arr);
    for (int i = 0; i < n && i < max; i++) {
        const json_t *t = json_array_get(arr, i);
        g[i].t = (int32_t)json_integer_value(json_array_get(t, 0));
        g[i].h = (int32_t)json_integer_value(json_array_get(t, 1));
        g[i].w = (int32_t)json_integer_value(json_array_get(t, 2));
    }
    return n;
}

static inline double lmf_num(const json_t *o, const char *key) {
    return json_number_value(json_object_get(o, key));
}

/* Compares one logits row (V) with a recorded logits object; returns the max abs
 * error seen (and CHECKs it against tol). */
static inline double lmf_check_logits(const float *row, int V, const json_t *rec, double tol,
                                      const char *label) {
    int stride = (int)json_integer_value(json_object_get(rec, "stride"));
    size_t n = 0;
    float *want = lmf_read_f32(json_string_value(json_object_get(rec, "file")), &n);
    if (!want) return HUGE_VAL;
    double worst = 0;
    int bad = -1;
    size_t count = 0;
    for (size_t j = 0; j < n && (size_t)j * stride < (size_t)V; j++, count++) {
        double e = fabs((double)row[j * stride] - (double)want[j]);
        if (!(e <= worst)) {
            worst = e;
            bad = (int)(j * stride);
        }
    }
    CHECK(count == (size_t)(V + stride - 1) / stride, "%s: %zu strided logits for V %d", label,
          count, V);
    free(want);
    const json_t *top = json_object_get(rec, "top");
    for (size_t k = 0; k < json_array_size(top); k++) {
        const json_t *p = json_array_get(top, k);
        int id = (int)json_integer_value(json_array_get(p, 0));
        double e = fabs((double)row[id] - json_number_value(json_array_get(p, 1)));
        if (!(e <= worst)) {
            worst = e;
            bad = id;
        }
    }
    const json_t *full = json_object_get(rec, "full_file");
    if (full) {
        float *w = lmf_read_f32(json_string_value(full), &n);
        CHECK(w && n == (size_t)V, "%s: full logits row of %zu", label, n);
        for (size_t j = 0; w && j < n && j < (size_t)V; j++) {
            double e = fabs((double)row[j] - (double)w[j]);
            if (!(e <= worst)) {
                worst = e;
                bad = (int)j;
            }
        }
        free(w);
    }
    CHECK(worst <= tol, "%s: logits differ from the reference by %.3g (> %.1g) at id %d", label,
          worst, tol, bad);
    return worst;
}

/* The reference's greedy margin must be clear of the tolerance (a case whose
 * top-1/top-2 gap is below factor * tol cannot decide token identity). */
static inline int lmf_margin_ok(const json_t *manifest, double margin, const char *label) {
    double tol = lmf_num(manifest, "logit_tol");
    double factor = lmf_num(manifest, "min_margin_factor");
    CHECK(margin >= factor * tol, "%s: the fixture's smallest greedy margin %.3g is below "
                                  "%g x the logit tolerance: not a valid test", label, margin,
          factor);
    return margin >= factor * tol;
}

#endif
