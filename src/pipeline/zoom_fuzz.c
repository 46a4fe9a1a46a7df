/*
 * zoom_fuzz.c - the fuzz entry point of the box parser and mapping (fuzz/fuzz_zoom.c
 * and the corpus replay in tests/test_zoom.c): the first four bytes choose the
 * original's size, the rest is stage-1 text. Traps when a result breaks the
 * invariants crop_with_zoom guarantees.
 */
#include "image/preprocess.h"
#include "pipeline/zoom.h"

int zoom_fuzz_one(const uint8_t *data, size_t size) {
    int w = 1, h = 1;
    if (size >= 4) {
        w = 1 + ((data[0] | data[1] << 8) % 20000);
        h = 1 + ((data[2] | data[3] << 8) % 20000);
        data += 4;
        size -= 4;
    }
    zoom_box box;
    if (zoom_parse((const char *)data, size, &box) != ZOOM_OK) return 0;
    int w1, h1;
    ergo_error err;
    if (smart_resize_ergo(h, w, 28, 4 * 28 * 28, 1280 * 28 * 28, &h1, &w1, &err) != ERGO_OK ||
        w1 <= 0 || h1 <= 0)
        return 0;
    zoom_crop c;
    if (zoom_map(&box, (double)w / w1, (double)h / h1, w, h, 28, 4 * 28 * 28, 1280 * 28 * 28,
                 &c) != ZOOM_OK)
        return 0;
    if (c.x1 < 0 || c.y1 < 0 || c.x2 > w || c.y2 > h || c.x1 >= c.x2 || c.y1 >= c.y2 ||
        c.out_w <= 0 || c.out_h <= 0 || c.out_w % 28 || c.out_h % 28)
        __builtin_trap();
    return 0;
}
