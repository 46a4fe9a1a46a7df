/*
 * preprocess.c - mirrors transformers 4.56.2 Qwen2VLImageProcessorFast._preprocess
 * (image_processing_qwen2_vl_fast.py) for one still image, and the two smart_resize
 * functions: ERGO's (nota-github/ERGO src/ergo/utils.py) and the processor's
 * (image_processing_qwen2_vl.py).
 *
 * Arithmetic follows the fast processor exactly: mean and std become float32 tensors
 * scaled by 1/rescale_factor in float32 (_fuse_mean_std_and_rescale_factor), then
 * torchvision's normalize computes (x - mean) / std in float32, so each output value is
 * one subtraction and one IEEE division of float32 numbers: we tabulate the 256 values
 * per channel and look them up.
 */
#include "image/preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"

void preprocess_config_default(preprocess_config *cfg) {
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}; /* OPENAI_CLIP_MEAN */
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f}; /* OPENAI_CLIP_STD */
    memset(cfg, 0, sizeof *cfg);
    cfg->min_pixels = 56 * 56;
    cfg->max_pixels = 28 * 28 * 1280;
    cfg->patch_size = 14;
    cfg->temporal_patch_size = 2;
    cfg->merge_size = 2;
    memcpy(cfg->image_mean, mean, sizeof mean);
    memcpy(cfg->image_std, std, sizeof std);
    cfg->rescale_factor = 1.0 / 255;
    cfg->do_resize = cfg->do_rescale = cfg->do_normalize = 1;
}

static ergo_status load_triplet(const json_t *root, const char *key, float out[3],
                                const char *path, ergo_error *err) {
    json_t *a = json_object_get(root, key);
    if (!a || json_is_null(a)) return ERGO_OK;
    if (json_is_number(a)) { /* a single number applies to every channel */
        out[0] = out[1] = out[2] = (float)json_number_value(a);
        return ERGO_OK;
    }
    if (!json_is_array(a) || json_array_size(a) != 3)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' must be a list of 3 numbers", path, key);
    for (size_t i = 0; i < 3; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_number(v))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s'[%zu] is not a number", path, key, i);
        out[i] = (float)json_number_value(v); /* torch.tensor(list) is float32 */
    }
    return ERGO_OK;
}

ergo_status preprocess_config_load(preprocess_config *cfg, const char *path, ergo_error *err) {
    preprocess_config_default(cfg);
    json_t *root = json_load_path(path, err);
    if (!root) return err ? err->code : ERGO_E_FORMAT;
    ergo_status st = ERGO_OK;
    int64_t v;
    if (!json_is_object(root)) {
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", path);
        goto done;
    }
    json_t *size = json_object_get(root, "size");
    if (size && json_is_object(size)) {
        int64_t lo = -1, hi = -1;
        if ((st = json_opt_int(size, "shortest_edge", &lo, path, err)) != ERGO_OK) goto done;
        if ((st = json_opt_int(size, "longest_edge", &hi, path, err)) != ERGO_OK) goto done;
        if (lo >= 0 && hi >= 0) {
            cfg->min_pixels = lo;
            cfg->max_pixels = hi;
        }
    }
    if ((st = json_opt_int(root, "min_pixels", &cfg->min_pixels, path, err)) != ERGO_OK) goto done;
    if ((st = json_opt_int(root, "max_pixels", &cfg->max_pixels, path, err)) != ERGO_OK) goto done;
    v = cfg->patch_size;
    if ((st = json_opt_int(root, "patch_size", &v, path, err)) != ERGO_OK) goto done;
    cfg->patch_size = (int)v;
    v = cfg->temporal_patch_size;
    if ((st = json_opt_int(root, "temporal_patch_size", &v, path, err)) != ERGO_OK) goto done;
    cfg->temporal_patch_size = (int)v;
    v = cfg->merge_size;
    if ((st = json_opt_int(root, "merge_size", &v, path, err)) != ERGO_OK) goto done;
    cfg->merge_size = (int)v;
    if ((st = json_opt_number(root, "rescale_factor", &cfg->rescale_factor, path, err)) != ERGO_OK)
        goto done;
    if ((st = json_opt_bool(root, "do_resize", &cfg->do_resize, path, err)) != ERGO_OK) goto done;
    if ((st = json_opt_bool(root, "do_rescale", &cfg->do_rescale, path, err)) != ERGO_OK) goto done;
    if ((st = json_opt_bool(root, "do_normalize", &cfg->do_normalize, path, err)) != ERGO_OK)
        goto done;
    if ((st = load_triplet(root, "image_mean", cfg->image_mean, path, err)) != ERGO_OK) goto done;
    if ((st = load_triplet(root, "image_std", cfg->image_std, path, err)) != ERGO_OK) goto done;

    if (cfg->patch_size < 1 || cfg->patch_size > 1024 || cfg->merge_size < 1 ||
        cfg->merge_size > 64 || cfg->temporal_patch_size < 1 || cfg->temporal_patch_size > 64)
        st = ergo_fail(err, ERGO_E_FORMAT,
                       "%s: patch_size %d, merge_size %d, temporal_patch_size %d out of range",
                       path, cfg->patch_size, cfg->merge_size, cfg->temporal_patch_size);
    else if (cfg->min_pixels < 0 || cfg->max_pixels < 1 || cfg->min_pixels > cfg->max_pixels)
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: min_pixels %lld / max_pixels %lld are invalid",
                       path, (long long)cfg->min_pixels, (long long)cfg->max_pixels);
    else if (cfg->do_normalize && (cfg->image_std[0] == 0 || cfg->image_std[1] == 0 ||
                                   cfg->image_std[2] == 0))
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: image_std has a zero", path);
    else if (cfg->do_rescale && !(cfg->rescale_factor > 0))
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: rescale_factor must be > 0", path);
done:
    json_decref(root);
    return st;
}

/* ------------------------------------------------------------------------------ */
/* smart_resize                                                                    */
/* ------------------------------------------------------------------------------ */

/* Python's round() on a float: half to even, which nearbyint does in the default
 * rounding mode (C's round() sends 56.5 to 57 where Python gives 56). */
static double py_round(double x) { return nearbyint(x); }

static ergo_status check_sides(const char *fn, int height, int width, int factor,
                               ergo_error *err) {
    if (height <= 0 || width <= 0 || factor <= 0)
        return ergo_fail(err, ERGO_E_ARG, "%s: height %d, width %d, factor %d must be > 0", fn,
                         height, width, factor);
    return ERGO_OK;
}

static ergo_status store_sides(const char *fn, double h, double w, int height, int width,
                               int allow_zero, int *out_h, int *out_w, ergo_error *err) {
    if (!(h >= 1 && w >= 1) && !(allow_zero && h >= 0 && w >= 0))
        return ergo_fail(err, ERGO_E_ARG, "%s: %dx%d (w x h) resizes to an empty %.0fx%.0f", fn,
                         width, height, w, h);
    if (h > INT32_MAX || w > INT32_MAX)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: %dx%d resizes to a too large %.0fx%.0f", fn,
                         width, height, w, h);
    *out_h = (int)h;
    *out_w = (int)w;
    return ERGO_OK;
}

ergo_status smart_resize_ergo(int height, int width, int factor, int64_t min_pixels,
                              int64_t max_pixels, int *out_height, int *out_width,
                              ergo_error *err) {
    ergo_status st = check_sides("smart_resize", height, width, factor, err);
    if (st != ERGO_OK) return st;
    double f = factor;
    double h_bar = py_round(height / f) * f, w_bar = py_round(width / f) * f;
    if (h_bar < f) h_bar = f;
    if (w_bar < f) w_bar = f;
    double hw = (double)((int64_t)height * width); /* exact below 2^53 */
    if (h_bar * w_bar > (double)max_pixels) {
        double beta = sqrt(hw / (double)max_pixels);
        h_bar = py_round(height / beta / f) * f;
        w_bar = py_round(width / beta / f) * f;
    } else if (h_bar * w_bar < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / hw);
        h_bar = ceil(height * beta / f) * f;
        w_bar = ceil(width * beta / f) * f;
    }
    /* The shrink branch can round a side to 0 at extreme aspect ratios; ERGO returns
     * that and Pillow's resize then raises, so we return it too (image_resize refuses). */
    return store_sides("smart_resize", h_bar, w_bar, height, width, 1, out_height, out_width,
                       err);
}

ergo_status smart_resize_qwen(int height, int width, int factor, int64_t min_pixels,
                              int64_t max_pixels, int *out_height, int *out_width,
                              ergo_error *err) {
    ergo_status st = check_sides("smart_resize", height, width, factor, err);
    if (st != ERGO_OK) return st;
    double big = height > width ? height : width, small = height > width ? width : height;
    if (big / small > 200)
        return ergo_fail(err, ERGO_E_ARG,
                         "smart_resize: absolute aspect ratio must be smaller than 200, got %.17g "
                         "(%dx%d)",
                         big / small, width, height);
    double f = factor;
    double h_bar = py_round(height / f) * f, w_bar = py_round(width / f) * f;
    double hw = (double)((int64_t)height * width);
    if (h_bar * w_bar > (double)max_pixels) {
        double beta = sqrt(hw / (double)max_pixels);
        h_bar = floor(height / beta / f) * f;
        w_bar = floor(width / beta / f) * f;
        if (h_bar < f) h_bar = f;
        if (w_bar < f) w_bar = f;
    } else if (h_bar * w_bar < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / hw);
        h_bar = ceil(height * beta / f) * f;
        w_bar = ceil(width * beta / f) * f;
    }
    return store_sides("smart_resize", h_bar, w_bar, height, width, 0, out_height, out_width,
                       err);
}

/* ------------------------------------------------------------------------------ */
/* Normalise and patchify                                                          */
/* ------------------------------------------------------------------------------ */

void preprocess_output_free(preprocess_output *out) {
    if (!out) return;
    free(out->pixel_values);
    memset(out, 0, sizeof *out);
}

/* value[c][v]: what the processor makes of channel c's byte v. */
static void build_table(const preprocess_config *cfg, float table[3][256]) {
    for (int c = 0; c < 3; c++) {
        if (cfg->do_normalize) {
            float mean = cfg->image_mean[c], std = cfg->image_std[c];
            if (cfg->do_rescale) { /* fused: mean and std times 1/rescale_factor, in float32 */
                float inv = (float)(1.0 / cfg->rescale_factor);
                mean = mean * inv;
                std = std * inv;
            }
            for (int v = 0; v < 256; v++) table[c][v] = ((float)v - mean) / std;
        } else if (cfg->do_rescale) {
            float s = (float)cfg->rescale_factor;
            for (int v = 0; v < 256; v++) table[c][v] = (float)v * s;
        } else {
            for (int v = 0; v < 256; v++) table[c][v] = (float)v;
        }
    }
}

ergo_status preprocess_patchify(const preprocess_config *cfg, const image *img,
                                preprocess_output *out, ergo_error *err) {
    const int ps = cfg->patch_size, ms = cfg->merge_size, tp = cfg->temporal_patch_size;
    const int unit = ps * ms;
    memset(out, 0, sizeof *out);
    if (!img->rgb || img->width <= 0 || img->height <= 0)
        return ergo_fail(err, ERGO_E_ARG, "preprocess: empty image");
    if (img->width % unit || img->height % unit)
        return ergo_fail(err, ERGO_E_SHAPE,
                         "preprocess: image %dx%d is not a multiple of %d (patch %d x merge %d)",
                         img->width, img->height, unit, ps, ms);
    const int gh = img->height / ps, gw = img->width / ps;
    const int patch_dim = 3 * tp * ps * ps;
    const int64_t n_patches = (int64_t)gh * gw;
    if ((uint64_t)n_patches > SIZE_MAX / sizeof(float) / (uint64_t)patch_dim)
        return ergo_fail(err, ERGO_E_LIMIT, "preprocess: %lld patches overflow memory sizes",
                         (long long)n_patches);
    float *pv = malloc((size_t)n_patches * (size_t)patch_dim * sizeof(float));
    if (!pv)
        return ergo_fail(err, ERGO_E_NOMEM, "preprocess: out of memory for %lld x %d floats",
                         (long long)n_patches, patch_dim);
    float table[3][256];
    build_table(cfg, table);

    /* Rows: (gh/ms, gw/ms, ms, ms) = merge group row, group column, row and column in
     * the group. Columns: (C, tp, ps, ps); all tp frames are the same image. */
    const int ghm = gh / ms, gwm = gw / ms;
    const int64_t n_groups = (int64_t)ghm * gwm;
#pragma omp parallel for schedule(static) if (n_patches > 256)
    for (int64_t g = 0; g < n_groups; g++) {
        const int gy = (int)(g / gwm), gx = (int)(g % gwm);
        for (int my = 0; my < ms; my++)
            for (int mx = 0; mx < ms; mx++) {
                const int prow = gy * ms + my, pcol = gx * ms + mx;
                float *dst = pv + ((size_t)g * ms * ms + (size_t)my * ms + mx) * patch_dim;
                for (int c = 0; c < 3; c++) {
                    float *frame0 = dst + (size_t)c * tp * ps * ps;
                    for (int y = 0; y < ps; y++) {
                        const uint8_t *src =
                            img->rgb + (((size_t)prow * ps + y) * img->width + (size_t)pcol * ps) * 3 + c;
                        for (int x = 0; x < ps; x++) frame0[y * ps + x] = table[c][src[3 * x]];
                    }
                    for (int t = 1; t < tp; t++)
                        memcpy(frame0 + (size_t)t * ps * ps, frame0, (size_t)ps * ps * sizeof(float));
                }
            }
    }
    out->pixel_values = pv;
    out->n_patches = n_patches;
    out->patch_dim = patch_dim;
    out->grid_t = 1;
    out->grid_h = gh;
    out->grid_w = gw;
    out->width = img->width;
    out->height = img->height;
    out->src_width = img->width;
    out->src_height = img->height;
    return ERGO_OK;
}

ergo_status preprocess_image(const preprocess_config *cfg, const image *img,
                             preprocess_output *out, ergo_error *err) {
    memset(out, 0, sizeof *out);
    if (!cfg->do_resize) return preprocess_patchify(cfg, img, out, err);
    int h, w;
    ergo_status st = smart_resize_qwen(img->height, img->width, cfg->patch_size * cfg->merge_size,
                                       cfg->min_pixels, cfg->max_pixels, &h, &w, err);
    if (st != ERGO_OK) return st;
    if (h == img->height && w == img->width) return preprocess_patchify(cfg, img, out, err);
    image resized = {0};
    if ((st = image_resize_torch(&resized, img, w, h, err)) != ERGO_OK) return st;
    st = preprocess_patchify(cfg, &resized, out, err);
    image_free(&resized);
    if (st != ERGO_OK) return st;
    out->resized = 1;
    out->src_width = img->width;
    out->src_height = img->height;
    return ERGO_OK;
}
