/*
 * zoom.h - the stage-1 box: ERGO's parse_zoom_bbox_from_text and crop_with_zoom
 * (src/ergo/utils.py of the reference code) with Python `re` semantics on str.
 *
 * Parsing: the first `<zoom>(.*?)</zoom>` (dot matches newlines); inside it either
 * the whole text is `^\s*\[\d+,\s*\d+,\s*\d+,\s*\d+\]\s*$`, or exactly one
 * `\[\d+,\s*\d+,\s*\d+,\s*\d+\]` occurs. `\d` is any Unicode decimal digit (category
 * Nd, Unicode 14 as Python 3.11 has it; int() reads them), `\s` is str.isspace().
 * A number of more than 4300 digits makes int() raise, which the reference catches:
 * no box.
 *
 * Mapping (map_box + crop_with_zoom): x*sx etc. in double as Python floats, clamped
 * to the original, truncated to int, then the crop's target size from ERGO's
 * smart_resize(crop_w, crop_h). Where the reference raises (a number too large for
 * a float, x2 < x1 or y2 < y1 after clamping: Pillow's crop; a zero-area crop whose
 * smart_resize divides by zero) ergo reports an invalid box. A zero-area crop that
 * the reference would resize into a black image without raising is reported
 * invalid too (ZOOM_INVALID with zero_area set): the model cannot use it.
 */
#ifndef ERGO_ZOOM_H
#define ERGO_ZOOM_H

#include <stddef.h>
#include <stdint.h>

typedef enum zoom_status {
    ZOOM_OK = 0,     /* a usable box */
    ZOOM_NONE,       /* no box in the text (the reference returns None) */
    ZOOM_INVALID,    /* a box the reference cannot crop with (it raises) */
} zoom_status;

const char *zoom_status_name(zoom_status s); /* "ok", "none", "invalid" */

/* The four numbers as parsed. */
typedef struct zoom_box {
    double v[4];       /* float(int(text)): correctly rounded, +inf when it overflows */
    int64_t i[4];      /* the integers, saturated at INT64_MAX (for reports) */
    int full_match;    /* 1: the whole inside was the box; 0: the single box found inside */
} zoom_box;

/* parse_zoom_bbox_from_text on UTF-8 text (invalid bytes count as other characters).
 * Returns ZOOM_OK (box filled) or ZOOM_NONE. */
zoom_status zoom_parse(const char *text, size_t len, zoom_box *box);

/* What crop_with_zoom makes of a box for an original of width x height whose stage-1
 * image was scaled by sx = width/w1, sy = height/h1. */
typedef struct zoom_crop {
    int x1, y1, x2, y2;       /* the crop in the original, pixels */
    int out_w, out_h;         /* the LANCZOS target: smart_resize(x2-x1, y2-y1) */
    int zero_area;            /* ZOOM_INVALID because the crop is empty */
    char why[160];            /* ZOOM_INVALID: what the reference would do */
} zoom_crop;

zoom_status zoom_map(const zoom_box *box, double sx, double sy, int width, int height,
                     int factor, int64_t min_pixels, int64_t max_pixels, zoom_crop *out);

/* Python's str.isspace() for one code point (== re's \s on str), Unicode 14.0. */
int zoom_is_space(int32_t c);

/* One fuzz input (text; the first bytes also choose the image size). Always 0. */
int zoom_fuzz_one(const uint8_t *data, size_t size);

#endif
