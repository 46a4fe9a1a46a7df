/*
 * image.c - allocation and cropping of RGB images.
 *
 * image_crop mirrors Pillow 11.3's Image.crop (Image._crop + ImagingCrop): the box
 * may reach outside the source, and what lies outside is black.
 */
#include "image/image.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

ergo_status image_alloc(image *im, int width, int height, ergo_error *err) {
    im->width = im->height = 0;
    im->rgb = NULL;
    if (width <= 0 || height <= 0)
        return ergo_fail(err, ERGO_E_ARG, "image size %dx%d is empty", width, height);
    /* 2^36 pixels (a 206 GB buffer) is far beyond any decoder limit; above it we
     * refuse rather than ask malloc (sanitizers abort on absurd sizes). */
    uint64_t pixels = (uint64_t)width * (uint64_t)height, bytes = pixels * 3u;
    if (pixels > (UINT64_C(1) << 36) || bytes > (uint64_t)SIZE_MAX)
        return ergo_fail(err, ERGO_E_LIMIT, "image size %dx%d overflows memory sizes", width,
                         height);
    im->rgb = malloc((size_t)bytes);
    if (!im->rgb)
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory for a %dx%d image (%llu bytes)", width,
                         height, (unsigned long long)bytes);
    im->width = width;
    im->height = height;
    return ERGO_OK;
}

void image_free(image *im) {
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->width = im->height = 0;
}

ergo_status image_crop(image *out, const image *in, int x0, int y0, int x1, int y1,
                       ergo_error *err) {
    out->rgb = NULL;
    out->width = out->height = 0;
    if (x1 < x0) return ergo_fail(err, ERGO_E_ARG, "crop: right %d is less than left %d", x1, x0);
    if (y1 < y0) return ergo_fail(err, ERGO_E_ARG, "crop: lower %d is less than upper %d", y1, y0);
    int64_t w = (int64_t)x1 - x0, h = (int64_t)y1 - y0;
    if (w == 0 || h == 0)
        return ergo_fail(err, ERGO_E_ARG, "crop (%d, %d, %d, %d) is empty", x0, y0, x1, y1);
    if (w > INT32_MAX || h > INT32_MAX)
        return ergo_fail(err, ERGO_E_LIMIT, "crop (%d, %d, %d, %d) is too large", x0, y0, x1, y1);
    ergo_status st = image_alloc(out, (int)w, (int)h, err);
    if (st != ERGO_OK) return st;
    memset(out->rgb, 0, (size_t)w * (size_t)h * 3);
    /* the part of the box that lies inside the source */
    int64_t sx0 = x0 < 0 ? 0 : x0, sy0 = y0 < 0 ? 0 : y0;
    int64_t sx1 = x1 > in->width ? in->width : x1, sy1 = y1 > in->height ? in->height : y1;
    if (sx1 <= sx0 || sy1 <= sy0) return ERGO_OK;
    for (int64_t y = sy0; y < sy1; y++)
        memcpy(out->rgb + ((size_t)(y - y0) * (size_t)w + (size_t)(sx0 - x0)) * 3,
               in->rgb + ((size_t)y * (size_t)in->width + (size_t)sx0) * 3,
               (size_t)(sx1 - sx0) * 3);
    return ERGO_OK;
}

const char *image_filter_name(image_filter f) {
    switch (f) {
    case IMAGE_FILTER_BILINEAR: return "bilinear";
    case IMAGE_FILTER_BICUBIC: return "bicubic";
    case IMAGE_FILTER_LANCZOS: return "lanczos";
    }
    return "unknown";
}
