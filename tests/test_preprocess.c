/*
 * Tests of src/image/preprocess.c (smart_resize, normalise, patchify) and of
 * `ergo preprocess`, against transformers 4.56.2 (Qwen2VLImageProcessorFast, the class
 * AutoProcessor loads) and ERGO's smart_resize, via tests/fixtures/image/.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "image_fixture.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "base/sha256.h"

#define MODEL_DIR "assets/qwen2.5-vl-tokenizer"

static json_t *manifest;

static int jarr(const json_t *o, const char *k, int i) {
    return (int)json_integer_value(json_array_get(json_object_get(o, k), (size_t)i));
}

/* Loads a float32 little-endian file (x86: native order). */
static float *load_f32(const char *path, size_t *n) {
    char *bytes;
    size_t size;
    ergo_error err = {0};
    if (file_read_all(path, (size_t)1 << 30, &bytes, &size, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    *n = size / 4;
    return (float *)(void *)bytes;
}

/* ------------------------------------------------------------------------------ */

static void test_smart_resize(void) {
    ergo_error err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/image/smart_resize.json", fixtures_dir());
    json_t *root = json_load_path(path, &err);
    if (!root) {
        CHECK(0, "%s", err.msg);
        return;
    }
    size_t i;
    json_t *c;
    int bad = 0, n = 0, noop_checked = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        int h = jint(c, "height"), w = jint(c, "width"), f = jint(c, "factor");
        int64_t mn = json_integer_value(json_object_get(c, "min_pixels"));
        int64_t mx = json_integer_value(json_object_get(c, "max_pixels"));
        for (int which = 0; which < 2; which++) {
            json_t *want = json_object_get(c, which ? "qwen" : "ergo");
            int oh = -1, ow = -1;
            ergo_status st = which ? smart_resize_qwen(h, w, f, mn, mx, &oh, &ow, &err)
                                   : smart_resize_ergo(h, w, f, mn, mx, &oh, &ow, &err);
            int ok = json_is_array(want)
                         ? st == ERGO_OK && oh == (int)json_integer_value(json_array_get(want, 0)) &&
                               ow == (int)json_integer_value(json_array_get(want, 1))
                         : st != ERGO_OK;
            n++;
            if (!ok && bad++ < 5)
                CHECK(0, "smart_resize_%s(%d, %d, %d, %lld, %lld): got %s %dx%d, reference %s",
                      which ? "qwen" : "ergo", h, w, f, (long long)mn, (long long)mx,
                      st == ERGO_OK ? "" : err.msg, oh, ow,
                      json_is_array(want) ? "a size" : json_string_value(want));
        }
        /* The processor keeps an image that ERGO's stage 1 already sized. */
        json_t *after = json_object_get(c, "qwen_after_ergo");
        json_t *e = json_object_get(c, "ergo");
        if (json_is_array(after) && json_is_array(e)) {
            int eh = (int)json_integer_value(json_array_get(e, 0));
            int ew = (int)json_integer_value(json_array_get(e, 1));
            int oh, ow;
            ergo_status st = smart_resize_qwen(eh, ew, 28, 3136, 12845056, &oh, &ow, &err);
            CHECK(st == ERGO_OK && oh == eh && ow == ew &&
                      oh == (int)json_integer_value(json_array_get(after, 0)) &&
                      ow == (int)json_integer_value(json_array_get(after, 1)),
                  "processor resizes ERGO's %dx%d (from %dx%d) to %dx%d", ew, eh, w, h, ow, oh);
            noop_checked++;
        }
    }
    CHECK(bad == 0, "smart_resize: %d of %d results differ from the reference", bad, n);
    CHECK(noop_checked > 300, "no-op property checked on %d ERGO sizes", noop_checked);
    json_decref(root);

    /* The tie named in the guides: 1582 / 28 = 56.5 -> 56 (Python), not 57 (C round). */
    int oh = 0, ow = 0;
    CHECK(smart_resize_ergo(1582, 2246, 28, 3136, 12845056, &oh, &ow, &err) == ERGO_OK &&
              oh == 1568 && ow == 2240,
          "ERGO smart_resize(1582, 2246) = %dx%d (h x w), want 1568x2240", oh, ow);
    CHECK(smart_resize_qwen(1582, 2246, 28, 3136, 12845056, &oh, &ow, &err) == ERGO_OK &&
              oh == 1568 && ow == 2240,
          "processor smart_resize(1582, 2246) = %dx%d, want 1568x2240", oh, ow);
    CHECK(smart_resize_qwen(50, 10001, 28, 3136, 12845056, &oh, &ow, &err) == ERGO_E_ARG &&
              strstr(err.msg, "aspect ratio"),
          "aspect ratio over 200 refused: %s", err.msg);
    CHECK(smart_resize_ergo(0, 5, 28, 3136, 12845056, &oh, &ow, &err) == ERGO_E_ARG,
          "zero side refused: %s", err.msg);
}

static void test_config(void) {
    preprocess_config cfg;
    ergo_error err = {0};
    CHECK(preprocess_config_load(&cfg, MODEL_DIR "/preprocessor_config.json", &err) == ERGO_OK,
          "load config: %s", err.msg);
    CHECK(cfg.min_pixels == 3136 && cfg.max_pixels == 12845056 && cfg.patch_size == 14 &&
              cfg.merge_size == 2 && cfg.temporal_patch_size == 2,
          "config values %lld %lld %d %d %d", (long long)cfg.min_pixels, (long long)cfg.max_pixels,
          cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    CHECK(cfg.image_mean[0] == 0.48145466f && cfg.image_std[2] == 0.27577711f, "mean/std read");
    json_t *ps = json_object_get(manifest, "processor_size");
    CHECK(cfg.min_pixels == json_integer_value(json_object_get(ps, "shortest_edge")) &&
              cfg.max_pixels == json_integer_value(json_object_get(ps, "longest_edge")),
          "limits are the ones the reference processor used");
    CHECK_EQ_STR(jstr(manifest, "processor_class"), "Qwen2VLImageProcessorFast",
                 "fixtures come from the fast processor");
    CHECK(preprocess_config_load(&cfg, "/nonexistent/preprocessor_config.json", &err) != ERGO_OK &&
              strstr(err.msg, "/nonexistent/preprocessor_config.json"),
          "missing config: %s", err.msg);
    char path[1024];
    snprintf(path, sizeof path, "%s/bad_pp.json", scratch_dir());
    file_write_all(path, "{\"patch_size\": \"14\"}", 20, &err);
    CHECK(preprocess_config_load(&cfg, path, &err) == ERGO_E_FORMAT && strstr(err.msg, "patch_size"),
          "non-integer patch_size refused: %s", err.msg);
}

static void check_pixel_values(const preprocess_output *po, const json_t *c, const char *label) {
    char wantf[1024];
    snprintf(wantf, sizeof wantf, "%s", fx(jstr(c, "pixel_values")));
    CHECK(po->n_patches == jarr(c, "shape", 0) && po->patch_dim == jarr(c, "shape", 1),
          "%s: shape (%lld, %d), want (%d, %d)", label, (long long)po->n_patches, po->patch_dim,
          jarr(c, "shape", 0), jarr(c, "shape", 1));
    CHECK(po->grid_t == jarr(c, "image_grid_thw", 0) && po->grid_h == jarr(c, "image_grid_thw", 1) &&
              po->grid_w == jarr(c, "image_grid_thw", 2),
          "%s: grid (%d, %d, %d)", label, po->grid_t, po->grid_h, po->grid_w);
    size_t n;
    float *want = load_f32(wantf, &n);
    if (!want) return;
    size_t m = (size_t)po->n_patches * (size_t)po->patch_dim;
    if (n == m) {
        CHECK_CLOSE(po->pixel_values, want, n, 1e-6, 0, label);
        CHECK(!memcmp(po->pixel_values, want, n * 4), "%s: not bit-identical to the processor", label);
    } else {
        CHECK(0, "%s: %zu values, reference %zu", label, m, n);
    }
    free(want);
}

static void test_processor_fixtures(void) {
    preprocess_config cfg;
    ergo_error err = {0};
    if (preprocess_config_load(&cfg, MODEL_DIR "/preprocessor_config.json", &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(manifest, "preprocess"), i, c) {
        image img = {0};
        preprocess_output po = {0};
        char label[256];
        snprintf(label, sizeof label, "pixel_values %s", jstr(c, "image"));
        if (image_decode_file(&img, fx(jstr(c, "image")), NULL, &err) != ERGO_OK ||
            preprocess_image(&cfg, &img, &po, &err) != ERGO_OK) {
            CHECK(0, "%s: %s", label, err.msg);
        } else {
            CHECK(po.resized == json_is_true(json_object_get(c, "processor_resizes")),
                  "%s: resized %d", label, po.resized);
            check_pixel_values(&po, c, label);
        }
        image_free(&img);
        preprocess_output_free(&po);
    }
}

/* The demo photo: straight to the processor, and after ERGO's stage-1 resize. */
static void test_demo(void) {
    preprocess_config cfg;
    ergo_error err = {0};
    image demo = {0}, st1 = {0};
    if (!file_exists("assets/demo.jpg")) {
        SKIP("assets/demo.jpg not found (run from the repository root)");
        return;
    }
    if (preprocess_config_load(&cfg, MODEL_DIR "/preprocessor_config.json", &err) != ERGO_OK ||
        image_decode_file(&demo, "assets/demo.jpg", NULL, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    for (int stage1 = 0; stage1 < 2; stage1++) {
        const json_t *c = json_object_get(manifest, stage1 ? "preprocess_demo_stage1" : "preprocess_demo");
        const image *src = &demo;
        const char *label = stage1 ? "demo after ERGO stage 1" : "demo through the processor";
        if (stage1) {
            int h, w;
            if (smart_resize_ergo(demo.height, demo.width, 28, 4 * 28 * 28, 1280 * 28 * 28, &h, &w,
                                  &err) != ERGO_OK ||
                image_resize(&st1, &demo, w, h, IMAGE_FILTER_BICUBIC, &err) != ERGO_OK) {
                CHECK(0, "%s: %s", label, err.msg);
                continue;
            }
            CHECK(w == jarr(c, "ergo_resize", 0) && h == jarr(c, "ergo_resize", 1),
                  "ERGO stage-1 size %dx%d", w, h);
            src = &st1;
        }
        preprocess_output po = {0};
        if (preprocess_image(&cfg, src, &po, &err) != ERGO_OK) {
            CHECK(0, "%s: %s", label, err.msg);
            continue;
        }
        CHECK(po.n_patches == jarr(c, "shape", 0) && po.grid_h == jarr(c, "image_grid_thw", 1) &&
                  po.grid_w == jarr(c, "image_grid_thw", 2),
              "%s: %lld patches, grid %dx%d", label, (long long)po.n_patches, po.grid_h, po.grid_w);
        CHECK(po.resized == !stage1, "%s: the processor resizes only the raw photo", label);
        char hex[65];
        size_t m = (size_t)po.n_patches * (size_t)po.patch_dim;
        sha256_hex(po.pixel_values, m * 4, hex);
        if (strcmp(hex, jstr(c, "pixel_values_sha256"))) {
            CHECK(0, "%s: pixel_values sha256 %s, reference %s", label, hex, jstr(c, "pixel_values_sha256"));
        } else {
            check_passed++;
        }
        /* the sampled rows say how far off a mismatch is */
        size_t n;
        float *want = load_f32(fx(jstr(c, "sampled_rows")), &n);
        int step = jint(c, "row_step");
        if (want && po.pixel_values) {
            size_t rows = n / (size_t)po.patch_dim;
            float *got = malloc(n * 4);
            for (size_t r = 0; r < rows && (int64_t)(r * step) < po.n_patches; r++)
                memcpy(got + r * po.patch_dim, po.pixel_values + r * step * (size_t)po.patch_dim,
                       (size_t)po.patch_dim * 4);
            CHECK_CLOSE(got, want, n, 1e-6, 0, label);
            free(got);
        }
        free(want);
        preprocess_output_free(&po);
    }
    image_free(&st1);
    image_free(&demo);
}

static void test_patchify_errors(void) {
    preprocess_config cfg;
    preprocess_config_default(&cfg);
    image img = {0};
    preprocess_output po = {0};
    ergo_error err = {0};
    CHECK(image_alloc(&img, 42, 28, &err) == ERGO_OK, "alloc");
    memset(img.rgb, 0, 42 * 28 * 3);
    CHECK(preprocess_patchify(&cfg, &img, &po, &err) == ERGO_E_SHAPE && strstr(err.msg, "42x28"),
          "42x28 is not a multiple of 28: %s", err.msg);
    image_free(&img);
    /* the processor refuses an aspect ratio over 200 (it raises ValueError) */
    CHECK(image_alloc(&img, 2010, 10, &err) == ERGO_OK, "alloc");
    memset(img.rgb, 0, 2010 * 10 * 3);
    CHECK(preprocess_image(&cfg, &img, &po, &err) == ERGO_E_ARG && po.pixel_values == NULL,
          "aspect ratio 201 refused: %s", err.msg);
    image_free(&img);
}

/* ------------------------------------------------------------------------------ */
/* The CLI (path in ERGO_BIN)                                                      */
/* ------------------------------------------------------------------------------ */

/* Runs `$ERGO_BIN args`, stdout and stderr to files; returns the exit status. */
static int run_cli(const char *args, char **out, char **errtext) {
    const char *bin = getenv("ERGO_BIN");
    char cmd[4096], o[1024], e[1024];
    snprintf(o, sizeof o, "%s/cli.out", scratch_dir());
    snprintf(e, sizeof e, "%s/cli.err", scratch_dir());
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s", bin, args, o, e);
    int rc = system(cmd);
    size_t n;
    ergo_error err = {0};
    *out = *errtext = NULL;
    file_read_all(o, 1 << 20, out, &n, &err);
    file_read_all(e, 1 << 20, errtext, &n, &err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int one_line(const char *s) {
    return s && !strncmp(s, "ergo preprocess: ", 17) && strchr(s, '\n') == s + strlen(s) - 1;
}

static void test_cli(void) {
    const char *bin = getenv("ERGO_BIN");
    if (!bin || !*bin) {
        SKIP("ERGO_BIN not set: `make test` sets it");
        return;
    }
    const json_t *c = NULL;
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(manifest, "preprocess"), i, x)
        if (strstr(jstr(x, "image"), "resized_90x60")) c = x;
    if (!c) {
        CHECK(0, "fixture resized_90x60 missing");
        return;
    }
    char args[4096], outbin[1024];
    char *out, *errtext;
    snprintf(outbin, sizeof outbin, "%s/pv.f32", scratch_dir());
    snprintf(args, sizeof args, "preprocess --model %s --image %s --out %s --sha256", MODEL_DIR,
             fx(jstr(c, "image")), outbin);
    int rc = run_cli(args, &out, &errtext);
    CHECK(rc == 0, "ergo %s: exit %d, stderr %s", args, rc, errtext ? errtext : "");
    ergo_error err = {0};
    json_t *j = out ? json_load_bytes(out, strlen(out), "ergo preprocess output", &err) : NULL;
    CHECK(j != NULL, "output is one JSON object: %s", out ? out : "(none)");
    if (j) {
        CHECK(jint(j, "width") == 84 && jint(j, "height") == 56 && jint(j, "source_width") == 90,
              "sizes %d x %d", jint(j, "width"), jint(j, "height"));
        CHECK(jarr(j, "grid_thw", 0) == jarr(c, "image_grid_thw", 0) &&
                  jarr(j, "grid_thw", 1) == jarr(c, "image_grid_thw", 1) &&
                  jarr(j, "grid_thw", 2) == jarr(c, "image_grid_thw", 2),
              "grid_thw [%d, %d, %d]", jarr(j, "grid_thw", 0), jarr(j, "grid_thw", 1),
              jarr(j, "grid_thw", 2));
        CHECK(jint(j, "vision_tokens") == jarr(c, "shape", 0) / 4, "vision_tokens %d",
              jint(j, "vision_tokens"));
        CHECK(json_is_true(json_object_get(j, "resized")) &&
                  jarr(json_object_get(j, "resize"), "to", 0) == 84,
              "the resize is reported");
        json_decref(j);
    }
    size_t n_got, n_want;
    float *got = load_f32(outbin, &n_got), *want = load_f32(fx(jstr(c, "pixel_values")), &n_want);
    if (got && want) {
        CHECK(n_got == n_want, "--out holds %zu floats, want %zu", n_got, n_want);
        if (n_got == n_want) CHECK_CLOSE(got, want, n_got, 1e-6, 0, "ergo preprocess --out");
    }
    free(got);
    free(want);
    free(out);
    free(errtext);

    /* error cases: one line on stderr, exit 1 (2 for usage) */
    char badimg[1024], emptydir[1024];
    snprintf(badimg, sizeof badimg, "%s/corrupt.jpg", scratch_dir());
    file_write_all(badimg, "\xff\xd8\xff\xe0garbage", 11, &err);
    snprintf(emptydir, sizeof emptydir, "%s/nomodel", scratch_dir());
    mkdir(emptydir, 0755);
    struct {
        const char *what, *args, *needle;
        int rc;
    } cases[] = {
        {"missing image", "--model " MODEL_DIR " --image /nonexistent/x.png", "/nonexistent/x.png", 1},
        {"corrupt image", NULL, "corrupt.jpg", 1},
        {"over the pixel limit", NULL, "limit", 1},
        {"no preprocessor_config.json", NULL, "preprocessor_config.json", 1},
        {"usage", "--model " MODEL_DIR, "--image", 2},
    };
    char buf[3][2048];
    snprintf(buf[0], sizeof buf[0], "--model %s --image %s", MODEL_DIR, badimg);
    snprintf(buf[1], sizeof buf[1], "--model %s --image %s --max-image-pixels 100", MODEL_DIR,
             fx(jstr(c, "image")));
    snprintf(buf[2], sizeof buf[2], "--model %s --image %s", emptydir, fx(jstr(c, "image")));
    cases[1].args = buf[0];
    cases[2].args = buf[1];
    cases[3].args = buf[2];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        snprintf(args, sizeof args, "preprocess %s", cases[k].args);
        rc = run_cli(args, &out, &errtext);
        CHECK(rc == cases[k].rc && errtext && strstr(errtext, cases[k].needle) &&
                  (rc == 2 || one_line(errtext)),
              "%s: exit %d (want %d), stderr \"%s\"", cases[k].what, rc, cases[k].rc,
              errtext ? errtext : "");
        free(out);
        free(errtext);
    }
}

void test_preprocess(void) {
    ergo_error err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/image/manifest.json", fixtures_dir());
    manifest = json_load_path(path, &err);
    if (!manifest) {
        CHECK(0, "image fixtures: %s", err.msg);
        return;
    }
    test_smart_resize();
    test_config();
    test_processor_fixtures();
    test_demo();
    test_patchify_errors();
    test_cli();
    json_decref(manifest);
    manifest = NULL;
}
