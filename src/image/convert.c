/*
 * convert.c - decoded samples to RGB with Pillow 11.3's rules.
 *
 * The mode Pillow opens a file as, and its converter to RGB:
 *   PNG grey 1 bit   "1"    (rawmode "1")       0 -> 0, 1 -> 255
 *   PNG grey 2/4 bit "L"    (rawmode "L;2/L;4") v * 85 / v * 17 (bit replication)
 *   PNG grey 8 bit   "L"                        v
 *   PNG grey 16 bit  "I;16" (rawmode "I;16B")   min(v, 255): I;16 -> RGB clips, it
 *                                               does not scale
 *   PNG grey+alpha 8 "LA"                       grey, alpha dropped
 *   PNG grey+alpha16 "RGBA" (rawmode "LA;16B")  high byte of grey, alpha dropped
 *   PNG RGB 8/16     "RGB"  (rawmode "RGB;16B") the high byte of each sample
 *   PNG RGBA 8/16    "RGBA"                     RGB (high bytes), alpha dropped
 *   PNG palette      "P"                        palette lookup; tRNS ignored
 *   JPEG 1/3/4 comp. "L" / "RGB" / "CMYK"       libjpeg's output; CMYK as below
 */
#include "image/convert.h"

void convert_grey_row(uint8_t *rgb, const uint8_t *grey, int n) {
    for (int x = 0; x < n; x++, rgb += 3) rgb[0] = rgb[1] = rgb[2] = grey[x];
}

/* Pillow's MULDIV255: a*b/255 rounded, without a division. */
static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

static inline uint8_t clip8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

void convert_cmyk_inverted_row(uint8_t *rgb, const uint8_t *cmyk, int n) {
    for (int x = 0; x < n; x++, rgb += 3, cmyk += 4) {
        /* Pillow's image holds 255 - v ("CMYK;I"); cmyk2rgb uses nk = 255 - K. */
        int c = 255 - cmyk[0], m = 255 - cmyk[1], y = 255 - cmyk[2], nk = cmyk[3];
        rgb[0] = clip8(nk - muldiv255(c, nk));
        rgb[1] = clip8(nk - muldiv255(m, nk));
        rgb[2] = clip8(nk - muldiv255(y, nk));
    }
}

void convert_png_row(uint8_t *rgb, const uint8_t *row, int n, int color_type, int bit_depth,
                     const uint8_t palette[256 * 3]) {
    int x;
    switch (color_type) {
    case 0: /* grey */
        if (bit_depth == 16) {
            for (x = 0; x < n; x++, rgb += 3) {
                unsigned v = ((unsigned)row[2 * x] << 8) | row[2 * x + 1];
                rgb[0] = rgb[1] = rgb[2] = (uint8_t)(v > 255 ? 255 : v);
            }
        } else {
            int mul = bit_depth == 1 ? 255 : bit_depth == 2 ? 85 : bit_depth == 4 ? 17 : 1;
            for (x = 0; x < n; x++, rgb += 3) rgb[0] = rgb[1] = rgb[2] = (uint8_t)(row[x] * mul);
        }
        break;
    case 2: /* RGB */
        if (bit_depth == 16)
            for (x = 0; x < n; x++, rgb += 3, row += 6) {
                rgb[0] = row[0];
                rgb[1] = row[2];
                rgb[2] = row[4];
            }
        else
            for (x = 0; x < n; x++, rgb += 3, row += 3) {
                rgb[0] = row[0];
                rgb[1] = row[1];
                rgb[2] = row[2];
            }
        break;
    case 3: /* palette */
        for (x = 0; x < n; x++, rgb += 3) {
            const uint8_t *p = palette + 3 * row[x];
            rgb[0] = p[0];
            rgb[1] = p[1];
            rgb[2] = p[2];
        }
        break;
    case 4: { /* grey + alpha */
        int step = bit_depth == 16 ? 4 : 2;
        for (x = 0; x < n; x++, rgb += 3, row += step) rgb[0] = rgb[1] = rgb[2] = row[0];
        break;
    }
    case 6: { /* RGBA */
        int s = bit_depth == 16 ? 2 : 1;
        for (x = 0; x < n; x++, rgb += 3, row += 4 * s) {
            rgb[0] = row[0];
            rgb[1] = row[s];
            rgb[2] = row[2 * s];
        }
        break;
    }
    default: break; /* libpng has validated the colour type before we get here */
    }
}
