/*
 * convert.h - rows of decoded samples to RGB, as Pillow 11.3's `convert("RGB")` does
 * after its own unpackers (libImaging/Unpack.c, Convert.c). Internal to src/image.
 *
 * None of these applies gamma, colour profiles, EXIF orientation or alpha
 * compositing: Pillow's convert("RGB") does none of them either.
 */
#ifndef ERGO_IMAGE_CONVERT_H
#define ERGO_IMAGE_CONVERT_H

#include <stdint.h>

/* Mode "L" (and JPEG greyscale): each grey value repeated three times. */
void convert_grey_row(uint8_t *rgb, const uint8_t *grey, int n);

/* A JPEG's 4-component output as libjpeg gives it (Adobe CMYK, inverted): Pillow
 * unpacks it with rawmode "CMYK;I" (255 - v) and cmyk2rgb computes, per channel,
 * nk - nk*c/255 with nk = 255 - k, rounded the MULDIV255 way. */
void convert_cmyk_inverted_row(uint8_t *rgb, const uint8_t *cmyk, int n);

/* One PNG row as libpng gives it with png_set_packing only (one byte per sample below
 * 8 bits, big-endian pairs at 16 bits). palette is 256 RGB entries, zero beyond the
 * PLTE chunk (Pillow maps out-of-range indices to black too). */
void convert_png_row(uint8_t *rgb, const uint8_t *row, int n, int color_type, int bit_depth,
                     const uint8_t palette[256 * 3]);

#endif
