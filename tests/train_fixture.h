/*
 * train_fixture.h - reading tests/fixtures/train (written by tools/fixtures_train.py):
 * the manifest and its cases, the tiny f32 checkpoints regenerated in memory, int and
 * float arrays of JSON, and the safetensors files of gradients / weights / inputs, with
 * the comparison of a C f32 buffer against a named tensor (|got - want| <= atol +
 * rtol |want| everywhere; a failure names the tensor, the flat index, got and want).
 * Every function is static inline (no unused warnings), as tests/lm_fixture.h.
 *
 *   json_t *man = trf_manifest();
 *   const json_t *c = trf_case(man, "one_image");
 *   model m;  trf_model(&m, c);                       // the checkpoint the reference trained
 *   safetensors_file g;  trf_open(&g, json_string_value(json_object_get(c, "grads_file")));
 *   double atol, rtol;  trf_tol(man, "grad", &atol, &rtol);
 *   trf_check_tensor(my_grad, n, &g, "model.layers.0.self_attn.q_proj.weight", atol, rtol);
 *   safetensors_close(&g);  model_free(&m);  json_decref(man);
 */
#ifndef ERGO_TRAIN_FIXTURE_H
#define ERGO_TRAIN_FIXTURE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "check.h"
#include "io/random_checkpoint.h"
#include "io/safetensors.h"
#include "model/mrope.h"
#include "model/weights.h"

static inline const char *trf_path(const char *rel) {
    static char bufs[4][1024];
    static int k;
    char *p = bufs[k++ & 3];
    snprintf(p, 1024, "%s/train/%s", fixtures_dir(), rel);
    return p;
}

/* A JSON file of the train fixtures (caller json_decref's), or NULL after a failed CHECK. */
static inline json_t *trf_json(const char *rel) {
    ergo_error err = {0};
    json_t *j = json_load_path(trf_path(rel), &err);
    CHECK(j != NULL, "train fixtures: %s", err.msg);
    return j;
}

static inline json_t *trf_manifest(void) { return trf_json("manifest.json"); }

/* The case called name in the manifest's "cases", or NULL after a failed CHECK. */
static inline const json_t *trf_case(const json_t *man, const char *name) {
    const json_t *cases = json_object_get(man, "cases");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n && strcmp(n, name) == 0) return c;
    }
    CHECK(0, "train fixtures: no case \"%s\" in manifest.json", name);
    return NULL;
}

static inline const char *trf_str(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* tolerances.<key>.atol / .rtol of the manifest. */
static inline void trf_tol(const json_t *man, const char *key, double *atol, double *rtol) {
    const json_t *t = json_object_get(json_object_get(man, "tolerances"), key);
    CHECK(t != NULL, "train fixtures: no tolerance \"%s\"", key);
    *atol = json_number_value(json_object_get(t, "atol"));
    *rtol = json_number_value(json_object_get(t, "rtol"));
}

/* Regenerates a case's checkpoint in memory (the weights the reference started from);
 * `c` is a manifest case (its "case" key names cases/<checkpoint>.json). */
static inline int trf_model(model *m, const json_t *c) {
    ckpt_case cc;
    ergo_error err = {0};
    const char *rel = trf_str(c, "case");
    if (ckpt_case_load(&cc, trf_path(rel), &err) != ERGO_OK) {
        CHECK(0, "train case %s: %s", rel, err.msg);
        return 0;
    }
    ergo_status s = random_checkpoint_fill(m, &cc, &err);
    ckpt_case_free(&cc);
    CHECK(s == ERGO_OK, "train case %s: %s", rel, err.msg);
    return s == ERGO_OK;
}

/* An int array of JSON (malloc'd; at least one element allocated). */
static inline int32_t *trf_ints(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *v = malloc(sizeof *v * (size_t)(*n + 1));
    for (int i = 0; v && i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

/* A number array of JSON as float32 (malloc'd; at least one element allocated). */
static inline float *trf_floats(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    float *v = malloc(sizeof *v * (size_t)(*n + 1));
    for (int i = 0; v && i < *n; i++) v[i] = (float)json_number_value(json_array_get(arr, i));
    return v;
}

/* The case's "positions" (3 rows of n) as pos[a * n + i] (malloc'd), *n = tokens. */
static inline int32_t *trf_positions(const json_t *c, int *n) {
    const json_t *pos = json_object_get(c, "positions");
    *n = (int)json_array_size(json_array_get(pos, 0));
    int32_t *v = malloc(sizeof *v * 3 * (size_t)(*n + 1));
    for (int a = 0; a < 3 && v; a++)
        for (int i = 0; i < *n; i++)
            v[a * *n + i] =
                (int32_t)json_integer_value(json_array_get(json_array_get(pos, (size_t)a), (size_t)i));
    return v;
}

/* The case's image_grid_thw into g (at most max); returns the image count. */
static inline int trf_grids(const json_t *c, mrope_grid *g, int max) {
    const json_t *arr = json_object_get(c, "image_grid_thw");
    int n = (int)json_array_size(arr);
    for (int i = 0; i < n && i < max; i++) {
        const json_t *t = json_array_get(arr, (size_t)i);
        g[i].t = (int32_t)json_integer_value(json_array_get(t, 0));
        g[i].h = (int32_t)json_integer_value(json_array_get(t, 1));
        g[i].w = (int32_t)json_integer_value(json_array_get(t, 2));
    }
    return n;
}

/* 1 when name is a string of the JSON array arr. */
static inline int trf_in_list(const json_t *arr, const char *name) {
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        if (s && strcmp(s, name) == 0) return 1;
    }
    return 0;
}

/* Opens a safetensors file of the train fixtures (st is safe to close on failure). */
static inline int trf_open(safetensors_file *st, const char *rel) {
    ergo_error err = {0};
    ergo_status s = safetensors_open(st, trf_path(rel), &err);
    CHECK(s == ERGO_OK, "train fixtures: %s", err.msg);
    return s == ERGO_OK;
}

/* The named F32 tensor of st with `numel` elements (-1: any), or NULL after a failed CHECK. */
static inline const tensor *trf_find(const safetensors_file *st, const char *name, int64_t numel) {
    const tensor *t = safetensors_find(st, name);
    CHECK(t != NULL, "%s: no tensor %s", st->path, name);
    if (!t) return NULL;
    CHECK(t->dtype == DTYPE_F32, "%s: %s is %s, not F32", st->path, name, dtype_name(t->dtype));
    CHECK(numel < 0 || t->numel == numel, "%s: %s has %lld elements, want %lld", st->path, name,
          (long long)t->numel, (long long)numel);
    if (t->dtype != DTYPE_F32 || (numel >= 0 && t->numel != numel)) return NULL;
    return t;
}

/* A copy of the named F32 tensor (malloc'd, at least one float), *n its elements. */
static inline float *trf_read(const safetensors_file *st, const char *name, size_t *n) {
    const tensor *t = trf_find(st, name, -1);
    if (!t) return NULL;
    *n = (size_t)t->numel;
    float *v = malloc(sizeof *v * (*n + 1));
    if (v && t->nbytes) memcpy(v, t->data, t->nbytes);
    return v;
}

/* Compares got (n floats) with the named tensor: passes when |got - want| <= atol +
 * rtol |want| everywhere (NaN on either side fails). One CHECK; on failure it names
 * the tensor, the first failing flat index with got and want, and the max |err|.
 * Returns the max |err| (HUGE_VAL when the tensor is missing or of another size). */
static inline double trf_check_tensor(const float *got, size_t n, const safetensors_file *st,
                                      const char *name, double atol, double rtol) {
    size_t m = 0;
    float *want = trf_read(st, name, &m);
    if (!want) return HUGE_VAL;
    CHECK(m == n, "%s: %s has %zu elements, the C buffer %zu", st->path, name, m, n);
    if (m != n) {
        free(want);
        return HUGE_VAL;
    }
    double worst = 0;
    size_t bad = n, worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= atol + rtol * fabs((double)want[i])) && bad == n) bad = i;
        if (!(e <= worst)) { /* NaN propagates */
            worst = e;
            worst_i = i;
        }
    }
    if (bad < n)
        CHECK(0, "%s: %s differs at flat index %zu: got %.9g, want %.9g (max |err| %.3g at %zu; "
                 "atol %g, rtol %g)",
              st->path, name, bad, (double)got[bad], (double)want[bad], worst, worst_i, atol, rtol);
    else
        CHECK(1, "%s", name);
    free(want);
    return worst;
}

/* A tiny f32 model with the real vocabulary, written to dir (path_out gets dir): text
 * hidden 32 (2 x 16 heads, 1 kv head), 2 layers; vision hidden 32, 2 blocks; the
 * reference's initialisation. What the SFT and GRPO loop tests train. */
static inline int trf_write_tiny_model(char *path_out, size_t size, const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/checkpoints/cases/flat_new_f32_tied.json", fixtures_dir());
    json_t *root = json_load_path(path, NULL);
    CHECK(root != NULL, "%s", path);
    if (!root) return 0;
    json_t *cfg = json_object_get(root, "config");
    json_object_set_new(cfg, "hidden_size", json_integer(32));
    json_object_set_new(cfg, "num_attention_heads", json_integer(2));
    json_object_set_new(cfg, "num_key_value_heads", json_integer(1));
    json_object_set_new(cfg, "intermediate_size", json_integer(64));
    json_t *vc = json_object_get(cfg, "vision_config");
    json_object_set_new(vc, "out_hidden_size", json_integer(32));
    json_object_set_new(vc, "depth", json_integer(2));
    json_object_set_new(vc, "fullatt_block_indexes", json_pack("[i]", 1));
    json_object_set_new(root, "dtype", json_string("f32"));
    json_object_set_new(root, "init", json_string("reference"));
    ckpt_case c;
    ergo_error err = {0};
    ergo_status s = ckpt_case_parse(&c, root, "tiny train case", &err);
    json_decref(root);
    CHECK(s == ERGO_OK, "tiny train case: %s", err.msg);
    if (s) return 0;
    snprintf(path_out, size, "%s", dir);
    s = random_checkpoint_write(&c, path_out, "assets/qwen2.5-vl-tokenizer", &err);
    ckpt_case_free(&c);
    CHECK(s == ERGO_OK, "writing the model: %s", err.msg);
    return s == ERGO_OK;
}

/* The f32 tensors of a safetensors file concatenated in name order (malloc'd; *n floats). */
static inline float *trf_read_all_f32(const char *path, size_t *n) {
    safetensors_file st;
    ergo_error err = {0};
    *n = 0;
    if (safetensors_open(&st, path, &err)) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    size_t total = 0;
    for (int i = 0; i < st.n_tensors; i++) total += st.tensors[i].nbytes;
    float *v = malloc(total + 4);
    size_t off = 0;
    for (int i = 0; v && i < st.n_tensors; i++) {
        memcpy((char *)v + off, st.tensors[i].data, st.tensors[i].nbytes);
        off += st.tensors[i].nbytes;
    }
    *n = total / 4;
    safetensors_close(&st);
    return v;
}

#endif
