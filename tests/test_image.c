/*
 * Tests of src/image decoding, cropping and resizing against Pillow 11.3 / torchvision
 * 0.23 fixtures (tools/fixtures_image.py -> tests/fixtures/image/manifest.json).
 *
 * Every comparison is exact (the implementation aims at bit-exactness); on a mismatch
 * the failure prints the max difference, the share of equal values and the first
 * differing pixel, so "within 1, >= 99.9% equal" can be read off directly.
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "image_fixture.h"
#include "image/convert.h"
#include "image/image.h"
#include "image/image_fuzz.h"
#include "base/sha256.h"

static json_t *manifest;

static void rgb_sha(const image *im, char hex[65]) {
    sha256_hex(im->rgb, (size_t)im->width * im->height * 3, hex);
}

/* Compares two images value by value: exact equality is the check; the message gives
 * the max abs difference, the fraction of equal values and the first difference. */
static int compare_images(const image *got, const image *want, const char *label) {
    if (got->width != want->width || got->height != want->height) {
        CHECK(0, "%s: size %dx%d, want %dx%d", label, got->width, got->height, want->width,
              want->height);
        return 0;
    }
    size_t n = (size_t)got->width * got->height * 3, n_diff = 0, first = (size_t)-1;
    int max = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got->rgb[i] - (int)want->rgb[i]);
        if (d) {
            n_diff++;
            if (first == (size_t)-1) first = i;
            if (d > max) max = d;
        }
    }
    CHECK(n_diff == 0,
          "%s: %zu of %zu values differ (%.5f%% equal), max abs diff %d; first at x=%zu y=%zu "
          "c=%zu: got %d want %d",
          label, n_diff, n, 100.0 * (double)(n - n_diff) / (double)n, max,
          first == (size_t)-1 ? 0 : first / 3 % (size_t)got->width,
          first == (size_t)-1 ? 0 : first / 3 / (size_t)got->width, first == (size_t)-1 ? 0 : first % 3,
          first == (size_t)-1 ? 0 : got->rgb[first], first == (size_t)-1 ? 0 : want->rgb[first]);
    return n_diff == 0;
}

/* Decodes an expected-result PNG and checks it is the one the manifest fingerprints. */
static int load_expected(image *im, const char *rel, const char *sha) {
    ergo_error err = {0};
    if (image_decode_file(im, fx(rel), NULL, &err) != ERGO_OK) {
        CHECK(0, "decode expected %s: %s", rel, err.msg);
        return 0;
    }
    char hex[65];
    rgb_sha(im, hex);
    CHECK(!strcmp(hex, sha), "expected image %s: sha256 %s, manifest says %s", rel, hex, sha);
    return 1;
}

/* Compares every row_step-th row of got with a PNG of those rows. */
static void compare_rows(const image *got, const char *rows_png, int step, const char *label) {
    image rows = {0}, sub = {0};
    ergo_error err = {0};
    if (image_decode_file(&rows, fx(rows_png), NULL, &err) != ERGO_OK) {
        CHECK(0, "%s: %s", label, err.msg);
        return;
    }
    int n = (got->height + step - 1) / step;
    if (image_alloc(&sub, got->width, n, &err) == ERGO_OK) {
        for (int i = 0; i < n; i++)
            memcpy(sub.rgb + (size_t)i * got->width * 3,
                   got->rgb + (size_t)i * step * got->width * 3, (size_t)got->width * 3);
        compare_images(&sub, &rows, label);
    }
    image_free(&sub);
    image_free(&rows);
}

/* ------------------------------------------------------------------------------ */

static void test_sha256_vectors(void) {
    char hex[65];
    sha256_hex("abc", 3, hex);
    CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "sha256(abc)");
    sha256_hex("", 0, hex);
    CHECK_EQ_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256()");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(m, strlen(m), hex);
    CHECK_EQ_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", "sha256(448 bits)");
}

static void test_decode_modes(void) {
    json_t *cases = json_object_get(manifest, "decode");
    size_t i;
    json_t *c;
    int n_ok = 0;
    json_array_foreach(cases, i, c) {
        const char *file = jstr(c, "file");
        image got = {0}, want = {0};
        ergo_error err = {0};
        if (image_decode_file(&got, fx(file), NULL, &err) != ERGO_OK) {
            CHECK(0, "decode %s (Pillow mode %s): %s", file, jstr(c, "pillow_mode"), err.msg);
            continue;
        }
        char hex[65], label[512];
        rgb_sha(&got, hex);
        snprintf(label, sizeof label, "decode %s (Pillow mode %s)", file, jstr(c, "pillow_mode"));
        CHECK(got.width == jint(c, "width") && got.height == jint(c, "height"), "%s: size %dx%d",
              label, got.width, got.height);
        if (!strcmp(hex, jstr(c, "rgb_sha256"))) {
            check_passed++;
            n_ok++;
        } else if (load_expected(&want, jstr(c, "expect_png"), jstr(c, "rgb_sha256"))) {
            compare_images(&got, &want, label);
        }
        image_free(&got);
        image_free(&want);
    }
    printf("  image: %d of %zu decode fixtures identical to Pillow's convert(\"RGB\")\n", n_ok,
           json_array_size(cases));
}

static void test_decode_memory_and_errors(void) {
    ergo_error err = {0};
    const char *path = fx("decode/png_rgb16.png");
    char *bytes;
    size_t n;
    image a = {0}, b = {0};
    CHECK(file_read_all(path, 1 << 20, &bytes, &n, &err) == ERGO_OK, "read %s", path);
    CHECK(image_decode_memory(&a, (const uint8_t *)bytes, n, "mem", NULL, &err) == ERGO_OK,
          "decode from memory: %s", err.msg);
    CHECK(image_decode_file(&b, path, NULL, &err) == ERGO_OK, "decode from file: %s", err.msg);
    CHECK(a.rgb && b.rgb && a.width == b.width && a.height == b.height &&
              !memcmp(a.rgb, b.rgb, (size_t)a.width * a.height * 3),
          "memory and file decodes agree");
    image_free(&a);
    image_free(&b);

    /* missing file, unknown format, empty input: errors that name the source */
    CHECK(image_decode_file(&a, "/nonexistent/photo.jpg", NULL, &err) == ERGO_E_IO &&
              strstr(err.msg, "/nonexistent/photo.jpg"),
          "missing file: %s", err.msg);
    const char gif[] = "GIF89a\x01\x00\x01\x00";
    CHECK(image_decode_memory(&a, (const uint8_t *)gif, sizeof gif - 1, "x.gif", NULL, &err) ==
                  ERGO_E_UNSUPPORTED &&
              strstr(err.msg, "x.gif") && strstr(err.msg, "cannot identify"),
          "unknown format: %s", err.msg);
    CHECK(image_decode_memory(&a, (const uint8_t *)"", 0, "empty.png", NULL, &err) != ERGO_OK &&
              strstr(err.msg, "empty.png"),
          "empty input: %s", err.msg);
    CHECK(a.rgb == NULL && a.width == 0, "failed decode leaves an empty image");

    /* pixel limit: exactly at the limit passes, one pixel less fails, from the header */
    image_limits lim = {.max_pixels = 37 * 23};
    const char *jpg = fx("decode/jpeg_baseline_420.jpg");
    CHECK(image_decode_file(&a, jpg, &lim, &err) == ERGO_OK, "37x23 at a limit of 851: %s",
          err.msg);
    image_free(&a);
    lim.max_pixels = 37 * 23 - 1;
    CHECK(image_decode_file(&a, jpg, &lim, &err) == ERGO_E_LIMIT && strstr(err.msg, "limit") &&
              strstr(err.msg, "jpeg_baseline_420.jpg"),
          "37x23 over a limit of 850: %s", err.msg);
    lim.max_pixels = 27 * 19 - 1;
    CHECK(image_decode_file(&a, fx("decode/png_rgb8_interlaced.png"), &lim, &err) == ERGO_E_LIMIT,
          "PNG over the limit: %s", err.msg);
    free(bytes);
}

/* A PNG header (+ one empty IDAT) of the given size, CRCs right. */
static size_t png_header(uint8_t *buf, uint32_t w, uint32_t h);

static uint32_t crc_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static size_t png_header(uint8_t *buf, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(buf, sig, 8);
    put32(buf + 8, 13);
    memcpy(buf + 12, "IHDR", 4);
    put32(buf + 16, w);
    put32(buf + 20, h);
    buf[24] = 8, buf[25] = 2, buf[26] = 0, buf[27] = 0, buf[28] = 0;
    put32(buf + 29, crc_of(buf + 12, 17));
    put32(buf + 33, 0);
    memcpy(buf + 37, "IDAT", 4);
    put32(buf + 41, crc_of(buf + 37, 4));
    return 45;
}

static void test_decode_limits_from_header(void) {
    uint8_t buf[64];
    ergo_error err = {0};
    image im = {0};
    /* Pillow: DecompressionBombError above 2 * 89,478,485 pixels, not at it. */
    size_t n = png_header(buf, 178956971u, 1);
    CHECK(image_decode_memory(&im, buf, n, "bomb.png", NULL, &err) == ERGO_E_LIMIT &&
              strstr(err.msg, "178956970"),
          "one pixel over the default limit: %s", err.msg);
    n = png_header(buf, 178956970u, 1);
    CHECK(image_decode_memory(&im, buf, n, "edge.png", NULL, &err) == ERGO_E_FORMAT,
          "at the default limit the header passes (then the data is missing): %s", err.msg);
    n = png_header(buf, 0x7fffffffu, 0x7fffffffu);
    CHECK(image_decode_memory(&im, buf, n, "huge.png", NULL, &err) == ERGO_E_LIMIT,
          "2^31-1 squared refused before allocating: %s", err.msg);
    /* A JPEG whose SOF says 65500x65500: refused from the header. */
    static const uint8_t jpg[] = {0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0xFF, 0xDC, 0xFF, 0xDC,
                                  0x01, 0x01, 0x11, 0x00, 0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00,
                                  0x00, 0x3F, 0x00};
    int st = image_decode_memory(&im, jpg, sizeof jpg, "bomb.jpg", NULL, &err);
    CHECK(st == ERGO_E_LIMIT || st == ERGO_E_FORMAT, "huge JPEG header refused: %s", err.msg);
    image_limits lim = {.max_pixels = 1000};
    st = image_decode_memory(&im, jpg, sizeof jpg, "bomb.jpg", &lim, &err);
    CHECK(im.rgb == NULL, "no image from a refused header");
}

static void test_decode_truncated(void) {
    json_t *cases = json_object_get(manifest, "truncated");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *file = jstr(c, "file");
        char *bytes;
        size_t size;
        ergo_error err = {0};
        if (file_read_all(fx(file), 1 << 20, &bytes, &size, &err) != ERGO_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        json_t *acc = json_object_get(c, "pillow_accepts");
        int bad = 0, n_acc = 0;
        size_t first_bad = 0;
        const char *why = "";
        for (size_t len = 0; len < size; len++) {
            char key[32], hex[65];
            snprintf(key, sizeof key, "%zu", len);
            const char *want = json_string_value(json_object_get(acc, key));
            image im = {0};
            ergo_status st = image_decode_memory(&im, (const uint8_t *)bytes, len, "prefix", NULL, &err);
            int ok;
            if (st == ERGO_OK) {
                rgb_sha(&im, hex);
                ok = want && !strcmp(hex, want);
                if (!ok) why = want ? "different pixels" : "ergo accepts, Pillow refuses";
                n_acc++;
            } else {
                ok = want == NULL;
                if (!ok) why = err.msg;
            }
            if (!ok && !bad++) first_bad = len;
            image_free(&im);
        }
        CHECK(bad == 0, "%s truncated: %d of %zu prefix lengths disagree with Pillow; first at %zu "
              "bytes: %s", file, bad, size, first_bad, why);
        CHECK(n_acc == (int)json_object_size(acc), "%s: ergo accepts %d prefixes, Pillow %zu", file,
              n_acc, json_object_size(acc));
        free(bytes);
    }
}

static void test_decode_corrupt(void) {
    json_t *cases = json_object_get(manifest, "corrupt");
    size_t i;
    json_t *c;
    int total = 0, agree = 0;
    json_array_foreach(cases, i, c) {
        const char *file = jstr(c, "file");
        char *bytes;
        size_t size;
        ergo_error err = {0};
        if (file_read_all(fx(file), 1 << 20, &bytes, &size, &err) != ERGO_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        size_t j;
        json_t *m;
        int bad = 0;
        json_array_foreach(json_object_get(c, "mutations"), j, m) {
            size_t off = (size_t)json_integer_value(json_array_get(m, 0));
            int val = (int)json_integer_value(json_array_get(m, 1));
            const char *want = json_string_value(json_array_get(m, 2));
            uint8_t old = (uint8_t)bytes[off];
            bytes[off] = (char)val;
            image im = {0};
            ergo_status st = image_decode_memory(&im, (const uint8_t *)bytes, size, "mutated", NULL, &err);
            char hex[65] = "";
            if (st == ERGO_OK) rgb_sha(&im, hex);
            int ok = st == ERGO_OK ? (want && !strcmp(hex, want)) : want == NULL;
            if (!ok && bad++ < 3)
                printf("  note [image] %s byte %zu := %d: ergo %s, Pillow %s\n", file, off, val,
                       st == ERGO_OK ? "decodes" : err.msg, want ? "decodes" : "refuses");
            total++;
            agree += ok;
            bytes[off] = (char)old;
            image_free(&im);
        }
        CHECK(bad == 0, "%s: %d one-byte corruptions where ergo and Pillow disagree", file, bad);
        free(bytes);
    }
    printf("  image: %d of %d one-byte corruptions give Pillow's verdict and pixels\n", agree, total);
}

static void test_cmyk_conversion(void) {
    json_t *c = json_object_get(manifest, "cmyk_table");
    char *cmyk, *rgb;
    size_t n1, n2;
    ergo_error err = {0};
    if (file_read_all(fx(jstr(c, "cmyk")), 1 << 20, &cmyk, &n1, &err) != ERGO_OK ||
        file_read_all(fx(jstr(c, "rgb")), 1 << 20, &rgb, &n2, &err) != ERGO_OK) {
        CHECK(0, "cmyk table: %s", err.msg);
        return;
    }
    size_t px = n1 / 4;
    uint8_t *inv = malloc(n1), *out = malloc(px * 3);
    /* the table holds CMYK as Pillow stores it; libjpeg's output is its inverse */
    for (size_t i = 0; i < n1; i++) inv[i] = (uint8_t)(255 - (uint8_t)cmyk[i]);
    convert_cmyk_inverted_row(out, inv, (int)px);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < px * 3; i++)
        if (out[i] != (uint8_t)rgb[i] && !bad++) first = i;
    CHECK(n2 == px * 3 && bad == 0, "CMYK->RGB: %zu of %zu values differ from Pillow; first [%zu] "
          "got %d want %d", bad, px * 3, first, out[first], (uint8_t)rgb[first]);
    free(inv);
    free(out);
    free(cmyk);
    free(rgb);
}

static void test_demo_decode(void) {
    json_t *c = json_object_get(manifest, "demo_decode");
    image im = {0};
    ergo_error err = {0};
    if (!file_exists(jstr(c, "file"))) {
        SKIP("%s not found (run from the repository root)", jstr(c, "file"));
        return;
    }
    if (image_decode_file(&im, jstr(c, "file"), NULL, &err) != ERGO_OK) {
        CHECK(0, "demo: %s", err.msg);
        return;
    }
    char hex[65];
    rgb_sha(&im, hex);
    CHECK(im.width == jint(c, "width") && im.height == jint(c, "height"), "demo size %dx%d",
          im.width, im.height);
    if (strcmp(hex, jstr(c, "rgb_sha256"))) {
        CHECK(0, "demo decode sha256 %s, Pillow's %s", hex, jstr(c, "rgb_sha256"));
        compare_rows(&im, jstr(c, "rows_png"), jint(c, "row_step"), "demo decode rows");
    } else {
        check_passed++;
    }
    image_free(&im);
}

/* ------------------------------------------------------------------------------ */

static void test_crop(void) {
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(manifest, "crop"), i, c) {
        image src = {0}, got = {0}, want = {0};
        ergo_error err = {0};
        json_t *b = json_object_get(c, "box");
        int x0 = (int)json_integer_value(json_array_get(b, 0)), y0 = (int)json_integer_value(json_array_get(b, 1));
        int x1 = (int)json_integer_value(json_array_get(b, 2)), y1 = (int)json_integer_value(json_array_get(b, 3));
        char label[128];
        snprintf(label, sizeof label, "crop (%d, %d, %d, %d)", x0, y0, x1, y1);
        if (image_decode_file(&src, fx(jstr(c, "src")), NULL, &err) != ERGO_OK ||
            image_crop(&got, &src, x0, y0, x1, y1, &err) != ERGO_OK) {
            CHECK(0, "%s: %s", label, err.msg);
        } else if (load_expected(&want, jstr(c, "expect_png"), jstr(c, "rgb_sha256"))) {
            compare_images(&got, &want, label);
        }
        image_free(&src);
        image_free(&got);
        image_free(&want);
    }
    image src = {0}, out = {0};
    ergo_error err = {0};
    CHECK(image_alloc(&src, 4, 4, &err) == ERGO_OK, "alloc");
    CHECK(image_crop(&out, &src, 3, 0, 2, 4, &err) == ERGO_E_ARG && strstr(err.msg, "right"),
          "right < left refused: %s", err.msg);
    CHECK(image_crop(&out, &src, 0, 3, 4, 2, &err) == ERGO_E_ARG && strstr(err.msg, "lower"),
          "lower < upper refused: %s", err.msg);
    CHECK(image_crop(&out, &src, 1, 1, 1, 3, &err) == ERGO_E_ARG, "empty crop refused: %s", err.msg);
    image_free(&src);
}

static ergo_status resize_by_name(image *out, const image *in, int w, int h, const char *f,
                                  ergo_error *err) {
    if (!strcmp(f, "torch")) return image_resize_torch(out, in, w, h, err);
    image_filter filt = !strcmp(f, "lanczos")    ? IMAGE_FILTER_LANCZOS
                        : !strcmp(f, "bilinear") ? IMAGE_FILTER_BILINEAR
                                                 : IMAGE_FILTER_BICUBIC;
    return image_resize(out, in, w, h, filt, err);
}

static void test_resize_cases(void) {
    size_t i;
    json_t *c;
    int n_exact = 0, n = 0;
    json_array_foreach(json_object_get(manifest, "resize"), i, c) {
        image src = {0}, got = {0}, want = {0};
        ergo_error err = {0};
        int w = jint(c, "width"), h = jint(c, "height");
        char label[256], hex[65];
        snprintf(label, sizeof label, "resize %s -> %dx%d %s", jstr(c, "src"), w, h, jstr(c, "filter"));
        n++;
        if (image_decode_file(&src, fx(jstr(c, "src")), NULL, &err) != ERGO_OK ||
            resize_by_name(&got, &src, w, h, jstr(c, "filter"), &err) != ERGO_OK) {
            CHECK(0, "%s: %s", label, err.msg);
        } else {
            rgb_sha(&got, hex);
            if (!strcmp(hex, jstr(c, "rgb_sha256"))) {
                check_passed++;
                n_exact++;
            } else if (load_expected(&want, jstr(c, "expect_png"), jstr(c, "rgb_sha256"))) {
                compare_images(&got, &want, label);
            }
        }
        image_free(&src);
        image_free(&got);
        image_free(&want);
    }
    printf("  image: %d of %d resize fixtures bit-exact (Pillow BILINEAR/BICUBIC/LANCZOS, "
           "torchvision BICUBIC+antialias)\n", n_exact, n);
}

static void test_resize_demo(void) {
    image demo = {0};
    ergo_error err = {0};
    if (!file_exists("assets/demo.jpg")) {
        SKIP("assets/demo.jpg not found (run from the repository root)");
        return;
    }
    if (image_decode_file(&demo, "assets/demo.jpg", NULL, &err) != ERGO_OK) {
        CHECK(0, "demo: %s", err.msg);
        return;
    }
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(manifest, "resize_demo"), i, c) {
        image crop = {0}, got = {0};
        const image *src = &demo;
        json_t *box = json_object_get(c, "crop");
        char label[256], hex[65];
        snprintf(label, sizeof label, "demo %s", jstr(c, "name"));
        if (json_is_array(box)) {
            if (image_crop(&crop, &demo, (int)json_integer_value(json_array_get(box, 0)),
                           (int)json_integer_value(json_array_get(box, 1)),
                           (int)json_integer_value(json_array_get(box, 2)),
                           (int)json_integer_value(json_array_get(box, 3)), &err) != ERGO_OK) {
                CHECK(0, "%s: %s", label, err.msg);
                continue;
            }
            src = &crop;
        }
        if (resize_by_name(&got, src, jint(c, "width"), jint(c, "height"), jstr(c, "filter"), &err) !=
            ERGO_OK) {
            CHECK(0, "%s: %s", label, err.msg);
        } else {
            rgb_sha(&got, hex);
            if (!strcmp(hex, jstr(c, "rgb_sha256"))) check_passed++;
            else {
                CHECK(0, "%s: sha256 %s, reference %s", label, hex, jstr(c, "rgb_sha256"));
                compare_rows(&got, jstr(c, "rows_png"), jint(c, "row_step"), label);
            }
        }
        image_free(&crop);
        image_free(&got);
    }
    image_free(&demo);
}

static void test_resize_errors(void) {
    image src = {0}, out = {0};
    ergo_error err = {0};
    CHECK(image_alloc(&src, 3, 2, &err) == ERGO_OK, "alloc");
    memset(src.rgb, 7, 18);
    CHECK(image_resize(&out, &src, 0, 5, IMAGE_FILTER_BICUBIC, &err) == ERGO_E_ARG,
          "zero width refused: %s", err.msg);
    CHECK(image_resize_torch(&out, &src, 4, -1, &err) == ERGO_E_ARG, "negative height refused");
    CHECK(image_resize(&out, &src, 3, 2, IMAGE_FILTER_LANCZOS, &err) == ERGO_OK && out.rgb &&
              !memcmp(out.rgb, src.rgb, 18),
          "same size is a copy");
    image_free(&out);
    CHECK(image_alloc(&out, 1 << 30, 1 << 30, &err) == ERGO_E_LIMIT,
          "absurd allocation refused: %s", err.msg);
    image_free(&out);
    image_free(&src);
}

/* Replays tests/fuzz_corpus/image through the fuzz entry point: every file must run
 * without a sanitizer report; some decode and some are refused. */
static void count_decoded(void *decoded, const char *name, const uint8_t *data, size_t size) {
    *(int *)decoded += image_fuzz_one(data, size);
}

static void test_fuzz_corpus(void) {
    int decoded = 0, n = for_each_corpus_file("image", count_decoded, &decoded);
    CHECK(n >= 10 && decoded > 0 && decoded < n, "fuzz corpus: %d files, %d decoded", n, decoded);
}

void test_image(void) {
    ergo_error err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/image/manifest.json", fixtures_dir());
    manifest = json_load_path(path, &err);
    test_sha256_vectors();
    if (!manifest) {
        CHECK(0, "image fixtures: %s", err.msg);
        return;
    }
    test_decode_modes();
    test_decode_memory_and_errors();
    test_decode_limits_from_header();
    test_decode_truncated();
    test_decode_corrupt();
    test_cmyk_conversion();
    test_demo_decode();
    test_crop();
    test_resize_cases();
    test_resize_demo();
    test_resize_errors();
    test_fuzz_corpus();
    json_decref(manifest);
    manifest = NULL;
}
