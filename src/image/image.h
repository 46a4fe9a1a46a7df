/*
 * image.h - 8-bit RGB images: decoding (JPEG, PNG), cropping and resizing, as the
 * reference's Pillow 11.3 and torchvision 0.23 do them.
 *
 * An image owns one malloc'd buffer of height rows of width RGB triplets
 * (interleaved, no padding); image_free releases it. Decoding gives exactly the
 * pixels of Pillow's `Image.open(f).convert("RGB")` (see decode.c for the rules);
 * image_resize gives Pillow's `Image.resize(size, filter)`; image_resize_torch gives
 * torchvision's `F.resize(uint8 tensor, antialias=True, BICUBIC)`, which is what
 * transformers' Qwen2VLImageProcessorFast runs when it resizes by itself.
 *
 *   image im = {0}, small = {0};
 *   if (image_decode_file(&im, "photo.jpg", NULL, &err) != ERGO_OK) ...
 *   if (image_resize(&small, &im, 1232, 812, IMAGE_FILTER_BICUBIC, &err) != ERGO_OK) ...
 *   image_free(&small); image_free(&im);
 */
#ifndef ERGO_IMAGE_H
#define ERGO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct image {
    int width;    /* pixels, e.g. 2250 */
    int height;   /* pixels, e.g. 1500 */
    uint8_t *rgb; /* (height, width, 3), row-major, owned */
} image;

/* Pillow refuses images of more than 2 * Image.MAX_IMAGE_PIXELS pixels with a
 * DecompressionBombError (it only warns above MAX_IMAGE_PIXELS = 89,478,485). */
#define IMAGE_DEFAULT_MAX_PIXELS UINT64_C(178956970)

typedef struct image_limits {
    uint64_t max_pixels; /* width*height above this is refused from the header, before
                            any pixel buffer is allocated; 0 = IMAGE_DEFAULT_MAX_PIXELS */
    int max_jpeg_scans;  /* progressive JPEGs with more scans are refused; 0 = no limit
                            (the fuzzer sets one: each scan re-walks the whole image) */
} image_limits;

/* Allocates an uninitialised width x height image; fails on sizes <= 0 or whose byte
 * size overflows. The caller frees it with image_free. */
ergo_status image_alloc(image *im, int width, int height, ergo_error *err);
void image_free(image *im);

/* Decodes a JPEG or PNG file (chosen by its first bytes, as Pillow does) into RGB.
 * limits may be NULL (defaults). Messages name the file. */
ergo_status image_decode_file(image *out, const char *path, const image_limits *limits,
                              ergo_error *err);

/* The same from memory; `what` names the source in messages (a path, "request body"). */
ergo_status image_decode_memory(image *out, const uint8_t *data, size_t size, const char *what,
                                const image_limits *limits, ergo_error *err);

/* Pillow's Image.crop((x0, y0, x1, y1)) with integer coordinates: pixels outside the
 * source come out black. Fails when x1 < x0 or y1 < y0 (Pillow raises ValueError) or
 * when the crop is empty (no image can hold it). */
ergo_status image_crop(image *out, const image *in, int x0, int y0, int x1, int y1,
                       ergo_error *err);

typedef enum image_filter {
    IMAGE_FILTER_BILINEAR, /* Pillow Resampling.BILINEAR (triangle, support 1) */
    IMAGE_FILTER_BICUBIC,  /* Pillow Resampling.BICUBIC (Keys cubic a = -0.5, support 2) */
    IMAGE_FILTER_LANCZOS,  /* Pillow Resampling.LANCZOS (Lanczos-3, support 3) */
} image_filter;

const char *image_filter_name(image_filter f);

/* Pillow's Image.resize((width, height), filter) of an RGB image (no box, no
 * reducing_gap): separable convolution, 22-bit fixed-point coefficients, horizontal
 * pass then vertical pass, each rounded and clipped to 8 bits. Same size = copy. */
ergo_status image_resize(image *out, const image *in, int width, int height, image_filter filter,
                         ergo_error *err);

/* torchvision's resize of a uint8 CHW tensor with InterpolationMode.BICUBIC and
 * antialias=True on the CPU (ATen's separable uint8 kernel: Pillow's bounds and
 * support, but its own cubic expression and int16 coefficients whose precision is
 * chosen per axis). Differs from image_resize by up to 2 per channel on ~0.5% of
 * values; the fast Qwen2-VL image processor uses this one. */
ergo_status image_resize_torch(image *out, const image *in, int width, int height,
                               ergo_error *err);

#endif
