/*
 * cmd_preprocess.c - `ergo preprocess`: an image file to the vision encoder's input,
 * as transformers' Qwen2VLImageProcessorFast makes it (the processor AutoProcessor
 * loads for Qwen2.5-VL / ERGO-7B): decode (Pillow's convert("RGB") rules), the
 * processor's smart_resize within min/max pixels, torchvision's antialiased bicubic
 * resize if the size changes, normalise, patchify in merge-group order.
 *
 * Prints one JSON object; writes pixel_values (float32, little-endian, row-major
 * (patches, patch_dim)) to --out when given.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/file.h"
#include "base/json.h"
#include "cli.h"
#include "commands.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "base/sha256.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo preprocess --model DIR --image FILE [--min-pixels N] [--max-pixels N]\n"
            "                       [--out FILE] [--max-image-pixels N] [--ergo-stage1]\n"
            "                       [--sha256] [--timings]\n"
            "\n"
            "Turns FILE (JPEG or PNG) into the vision encoder's pixel_values exactly as the\n"
            "reference's image processor (Qwen2VLImageProcessorFast, transformers 4.56.2) does,\n"
            "with the settings of DIR/preprocessor_config.json. Prints one JSON object (sizes,\n"
            "grid_thw in patches, vision_tokens after the 2x2 merge, the resize done) and\n"
            "writes pixel_values as float32 little-endian to --out.\n"
            "\n"
            "  --min-pixels N, --max-pixels N  override the processor's pixel limits\n"
            "  --max-image-pixels N            refuse larger images before decoding them\n"
            "                                  (default 178956970, Pillow's bomb limit)\n"
            "  --ergo-stage1                   first resize as ERGO's stage 1 does (its\n"
            "                                  smart_resize, 4*28*28..1280*28*28 pixels, Pillow\n"
            "                                  BICUBIC); the processor then keeps that size\n"
            "  --sha256                        add the SHA-256 of the pixel_values bytes\n"
            "  --timings                       add the time of each step in milliseconds\n");
}

static int fail(const char *msg) { return cli_fail("preprocess", msg); }

/* pixel_values as float32 little-endian, whatever the host's byte order. */
static ergo_status write_f32_le(const char *path, const float *v, size_t n, ergo_error *err) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint8_t *b = malloc(n * 4);
    if (!b) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, v + i, 4);
        b[4 * i] = (uint8_t)u, b[4 * i + 1] = (uint8_t)(u >> 8);
        b[4 * i + 2] = (uint8_t)(u >> 16), b[4 * i + 3] = (uint8_t)(u >> 24);
    }
    ergo_status st = file_write_all(path, b, n * 4, err);
    free(b);
    return st;
#else
    return file_write_all(path, v, n * sizeof(float), err);
#endif
}

/* ERGO's stage-1 limits (src/ergo/infer.py: MIN_PIXELS, MAX_PIXELS). */
#define ERGO_MIN_PIXELS (4 * 28 * 28)
#define ERGO_MAX_PIXELS (1280 * 28 * 28)

int cmd_preprocess(int argc, char **argv) {
    const char *model = NULL, *path = NULL, *out_path = NULL;
    long long min_px = 0, max_px = 0, max_image_px = 0;
    int ergo_stage1 = 0, want_sha = 0, want_times = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model, NULL, 0, 0, 0, 0, NULL},
        {"image", 'i', CLI_STR, &path, NULL, 0, 0, 0, 0, NULL},
        {"out", 'o', CLI_STR, &out_path, NULL, 0, 0, 0, 0, NULL},
        {"min-pixels", 0, CLI_INT, &min_px, NULL, 1, (long long)1 << 40, 0, 0, NULL},
        {"max-pixels", 0, CLI_INT, &max_px, NULL, 1, (long long)1 << 40, 0, 0, NULL},
        {"max-image-pixels", 0, CLI_INT, &max_image_px, NULL, 1, (long long)1 << 40, 0, 0, NULL},
        {"ergo-stage1", 0, CLI_FLAG, &ergo_stage1, NULL, 0, 0, 0, 0, NULL},
        {"sha256", 0, CLI_FLAG, &want_sha, NULL, 0, 0, 0, 0, NULL},
        {"timings", 0, CLI_FLAG, &want_times, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("preprocess", opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (!model || !path) return cli_usage_error("preprocess", "%s", "--model and --image are required");

    ergo_error err = {0};
    char cfg_path[4096];
    preprocess_config cfg;
    if (path_join(cfg_path, sizeof cfg_path, model, "preprocessor_config.json", &err) != ERGO_OK)
        return fail(err.msg);
    if (!file_exists(cfg_path)) {
        ergo_fail(&err, ERGO_E_IO, "%s: no such file (the model directory needs it)", cfg_path);
        return fail(err.msg);
    }
    if (preprocess_config_load(&cfg, cfg_path, &err) != ERGO_OK) return fail(err.msg);
    if (min_px) cfg.min_pixels = min_px;
    if (max_px) cfg.max_pixels = max_px;
    if (cfg.min_pixels > cfg.max_pixels) {
        ergo_fail(&err, ERGO_E_ARG, "min pixels %lld is above max pixels %lld",
                  (long long)cfg.min_pixels, (long long)cfg.max_pixels);
        return fail(err.msg);
    }

    image_limits lim = {.max_pixels = (uint64_t)max_image_px};
    image img = {0};
    preprocess_output po = {0};
    double t0 = now_ms();
    if (image_decode_file(&img, path, &lim, &err) != ERGO_OK) return fail(err.msg);
    double t1 = now_ms();
    char named[4200]; /* "FILE (WxH image): " for the errors below */
    snprintf(named, sizeof named, "%s (%dx%d image): ", path, img.width, img.height);
    int src_w = img.width, src_h = img.height;
    if (ergo_stage1) { /* ERGO: smart_resize(H, W, 28, MIN, MAX) then Pillow BICUBIC */
        image small = {0};
        int h1, w1;
        if (smart_resize_ergo(img.height, img.width, 28, ERGO_MIN_PIXELS, ERGO_MAX_PIXELS, &h1, &w1,
                              &err) != ERGO_OK ||
            image_resize(&small, &img, w1, h1, IMAGE_FILTER_BICUBIC, &err) != ERGO_OK) {
            image_free(&img);
            ergo_error_prefix(&err, "%s", named);
            return fail(err.msg);
        }
        image_free(&img);
        img = small;
    }
    double t2 = now_ms();
    if (preprocess_image(&cfg, &img, &po, &err) != ERGO_OK) {
        image_free(&img);
        ergo_error_prefix(&err, "%s", named);
        return fail(err.msg);
    }
    double t3 = now_ms();
    int ergo_w = img.width, ergo_h = img.height;
    image_free(&img);

    size_t n = (size_t)po.n_patches * (size_t)po.patch_dim;
    char hex[65] = "";
    if (want_sha) sha256_hex(po.pixel_values, n * sizeof(float), hex);
    double t4 = now_ms();
    if (out_path && write_f32_le(out_path, po.pixel_values, n, &err) != ERGO_OK) {
        preprocess_output_free(&po);
        return fail(err.msg);
    }
    double t5 = now_ms();
    int merge = cfg.merge_size * cfg.merge_size;
    json_t *o = json_object();
    json_object_set_new(o, "image", json_string(path));
    json_object_set_new(o, "processor", json_string("Qwen2VLImageProcessorFast"));
    json_object_set_new(o, "source_width", json_integer(src_w));
    json_object_set_new(o, "source_height", json_integer(src_h));
    if (ergo_stage1)
        json_object_set_new(o, "ergo_resize",
                            json_pack("{s:[i,i],s:[i,i],s:s}", "from", src_w, src_h, "to", ergo_w,
                                      ergo_h, "filter", "bicubic (Pillow)"));
    json_object_set_new(o, "width", json_integer(po.width));
    json_object_set_new(o, "height", json_integer(po.height));
    json_object_set_new(o, "resized", json_boolean(po.resized));
    json_object_set_new(
        o, "resize",
        po.resized ? json_pack("{s:[i,i],s:[i,i],s:s}", "from", po.src_width, po.src_height, "to",
                               po.width, po.height, "filter",
                               "bicubic, antialias (torchvision uint8)")
                   : json_null());
    json_object_set_new(o, "min_pixels", json_integer(cfg.min_pixels));
    json_object_set_new(o, "max_pixels", json_integer(cfg.max_pixels));
    json_object_set_new(o, "grid_thw", json_pack("[i,i,i]", po.grid_t, po.grid_h, po.grid_w));
    json_object_set_new(o, "patches", json_integer(po.n_patches));
    json_object_set_new(o, "patch_dim", json_integer(po.patch_dim));
    json_object_set_new(o, "vision_tokens", json_integer(po.n_patches / merge));
    if (want_sha) json_object_set_new(o, "pixel_values_sha256", json_string(hex));
    json_object_set_new(o, "out", out_path ? json_string(out_path) : json_null());
    if (want_times)
        json_object_set_new(o, "timings_ms",
                            json_pack("{s:f,s:f,s:f,s:f,s:f}", "decode", t1 - t0, "ergo_resize",
                                      t2 - t1, "processor", t3 - t2, "sha256", t4 - t3, "write",
                                      t5 - t4));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    preprocess_output_free(&po);
    if (!s) return fail("out of memory");
    puts(s);
    free(s);
    return 0;
}
