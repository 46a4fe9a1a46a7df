/*
 * image_fuzz.c - exercises decode.c (both formats, from memory), crop and both
 * resamplers on arbitrary bytes; see image_fuzz.h.
 */
#include "image/image_fuzz.h"

#include "image/image.h"

int image_fuzz_one(const uint8_t *data, size_t size) {
    /* 4 Mpx bounds memory at 12 MB of RGB; 64 scans bounds progressive JPEG time. */
    image_limits lim = {.max_pixels = 1u << 22, .max_jpeg_scans = 64};
    image im = {0}, part = {0}, out = {0};
    ergo_error err = {0};
    if (image_decode_memory(&im, data, size, "fuzz input", &lim, &err) != ERGO_OK) return 0;
    /* small targets derived from the input keep each run fast */
    int w = 1 + (int)(data[size - 1] % 37), h = 1 + (int)(data[size / 2] % 29);
    if (image_crop(&part, &im, -1, 1, im.width / 2 + 2, im.height + 1, &err) == ERGO_OK) {
        if (image_resize(&out, &part, w, h, IMAGE_FILTER_LANCZOS, &err) == ERGO_OK) image_free(&out);
        image_free(&part);
    }
    if (im.width <= 2048 && im.height <= 2048) {
        if (image_resize(&out, &im, h, w, IMAGE_FILTER_BICUBIC, &err) == ERGO_OK) image_free(&out);
        if (image_resize(&out, &im, w + 40, h + 3, IMAGE_FILTER_BILINEAR, &err) == ERGO_OK)
            image_free(&out);
        if (image_resize_torch(&out, &im, w, h + 50, &err) == ERGO_OK) image_free(&out);
    }
    image_free(&im);
    return 1;
}
