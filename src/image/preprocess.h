/*
 * preprocess.h - image -> vision-encoder input, as transformers 4.56.2's
 * Qwen2VLImageProcessorFast does it (the class AutoProcessor loads for Qwen2.5-VL and
 * ERGO-7B), plus the two smart_resize variants (ERGO's and the processor's).
 *
 * pixel_values has shape (t*gh*gw, C*tp*ps*ps) = (n_patches, 1176) for one still image:
 * rows in 2x2-merge-group order (for each merge group, its ms*ms patches row-major),
 * each row laid out channel, frame, row, column; the two frames are the same image.
 *
 *   preprocess_config cfg;
 *   preprocess_config_load(&cfg, "model/preprocessor_config.json", &err);
 *   preprocess_output po = {0};
 *   preprocess_image(&cfg, &img, &po, &err);   // po.pixel_values, po.grid_h, ...
 *   preprocess_output_free(&po);
 */
#ifndef ERGO_PREPROCESS_H
#define ERGO_PREPROCESS_H

#include <stdint.h>

#include "base/status.h"
#include "image/image.h"

typedef struct preprocess_config {
    int64_t min_pixels;      /* size.shortest_edge, e.g. 3136 (56*56) */
    int64_t max_pixels;      /* size.longest_edge, e.g. 12845056 (28*28*16384) */
    int patch_size;          /* 14 */
    int temporal_patch_size; /* 2: a still image is repeated to 2 frames */
    int merge_size;          /* 2: 2x2 patches become one vision token */
    float image_mean[3];     /* CLIP mean [0.48145466, 0.4578275, 0.40821073] */
    float image_std[3];      /* CLIP std [0.26862954, 0.26130258, 0.27577711] */
    double rescale_factor;   /* 1/255 */
    int do_resize, do_rescale, do_normalize; /* 1, 1, 1 */
} preprocess_config;

/* The processor class's defaults (min 56*56, max 28*28*1280, CLIP mean/std). */
void preprocess_config_default(preprocess_config *cfg);

/* Reads preprocessor_config.json with the fast processor's precedence: class defaults,
 * then `size` {shortest_edge, longest_edge}, then `min_pixels`/`max_pixels`. */
ergo_status preprocess_config_load(preprocess_config *cfg, const char *path, ergo_error *err);

/* ERGO's smart_resize (ergo/utils.py): round half to even, at least `factor` per side
 * before the limits, round in the shrink branch, ceil in the grow branch. At extreme
 * aspect ratios the shrink branch can give a side of 0, as the reference does (its
 * Pillow resize then raises; image_resize refuses 0 the same way). */
ergo_status smart_resize_ergo(int height, int width, int factor, int64_t min_pixels,
                              int64_t max_pixels, int *out_height, int *out_width,
                              ergo_error *err);

/* The processor's smart_resize (image_processing_qwen2_vl.py): refuses an aspect
 * ratio above 200, no `factor` minimum before the limits, floor (at least `factor`)
 * in the shrink branch, ceil in the grow branch. */
ergo_status smart_resize_qwen(int height, int width, int factor, int64_t min_pixels,
                              int64_t max_pixels, int *out_height, int *out_width,
                              ergo_error *err);

typedef struct preprocess_output {
    float *pixel_values; /* (n_patches, patch_dim), owned */
    int64_t n_patches;   /* grid_t * grid_h * grid_w */
    int patch_dim;       /* channels * temporal_patch_size * patch_size^2 = 1176 */
    int grid_t, grid_h, grid_w; /* image_grid_thw, in patches: (1, height/14, width/14) */
    int width, height;   /* the image size the patches were cut from */
    int resized;         /* 1 when the processor resized (torchvision bicubic) */
    int src_width, src_height; /* the size it was given */
} preprocess_output;

/* The processor's whole path: its smart_resize within cfg's limits, torchvision's
 * antialiased bicubic resize when the size changes, then preprocess_patchify. */
ergo_status preprocess_image(const preprocess_config *cfg, const image *img,
                             preprocess_output *out, ergo_error *err);

/* Rescale + normalise (fused as the fast processor does: (x - 255*mean) / (255*std) in
 * float32) and cut into patches in merge-group order. The image's sides must be
 * multiples of patch_size * merge_size. */
ergo_status preprocess_patchify(const preprocess_config *cfg, const image *img,
                                preprocess_output *out, ergo_error *err);

void preprocess_output_free(preprocess_output *out);

#endif
