/*
 * viz.c - the --save-viz picture and --save-crop PNG, drawn with libgd (its
 * built-in bitmap fonts, its PNG writer).
 */
#include "pipeline/viz.h"

#include <gd.h>
#include <gdfontg.h>
#include <gdfonts.h>
#include <stdio.h>
#include <string.h>

#include "base/file.h"

static gdImagePtr to_gd(const image *im) {
    gdImagePtr g = gdImageCreateTrueColor(im->width, im->height);
    if (!g) return NULL;
    for (int y = 0; y < im->height; y++) {
        const uint8_t *p = im->rgb + (size_t)y * im->width * 3;
        for (int x = 0; x < im->width; x++, p += 3) g->tpixels[y][x] = gdTrueColor(p[0], p[1], p[2]);
    }
    return g;
}

static ergo_status write_gd(gdImagePtr g, const char *path, ergo_error *err) {
    int size = 0;
    void *png = gdImagePngPtr(g, &size);
    if (!png) return ergo_fail(err, ERGO_E_NOMEM, "%s: cannot encode the PNG", path);
    ergo_status s = file_write_all(path, png, (size_t)size, err);
    gdFree(png);
    return s;
}

ergo_status viz_write_png(const image *im, const char *path, ergo_error *err) {
    if (!im->rgb) return ergo_fail(err, ERGO_E_ARG, "%s: no image to write", path);
    gdImagePtr g = to_gd(im);
    if (!g) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory for the PNG", path);
    ergo_status s = write_gd(g, path, err);
    gdImageDestroy(g);
    return s;
}

ergo_status viz_render(const ergo_result *r, const char *path, ergo_error *err) {
    const image *a = &r->stage1_image, *b = &r->stage2_image;
    if (!a->rgb || !b->rgb) return ergo_fail(err, ERGO_E_ARG, "%s: no stage images to draw", path);
    const int gap = 16, text_h = 52;
    int bw = (int)((double)b->width * a->height / b->height + 0.5);
    if (bw < 1) bw = 1;
    gdImagePtr left = to_gd(a), right = to_gd(b);
    gdImagePtr canvas = gdImageCreateTrueColor(a->width + gap + bw, a->height + text_h);
    ergo_status s = ERGO_OK;
    if (!left || !right || !canvas) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory for the picture", path);
        goto done;
    }
    const int white = gdTrueColor(255, 255, 255), black = gdTrueColor(0, 0, 0),
              red = gdTrueColor(230, 20, 20);
    gdImageFilledRectangle(canvas, 0, 0, gdImageSX(canvas) - 1, gdImageSY(canvas) - 1, white);
    gdImageCopy(canvas, left, 0, 0, 0, 0, a->width, a->height);
    gdImageCopyResampled(canvas, right, a->width + gap, 0, 0, 0, bw, a->height, b->width, b->height);
    char l1[256], l2[256];
    if (r->box_status == ZOOM_OK) {
        /* the crop actually taken, back in stage-1 pixels */
        int x1 = (int)(r->crop.x1 / r->sx), y1 = (int)(r->crop.y1 / r->sy);
        int x2 = (int)(r->crop.x2 / r->sx), y2 = (int)(r->crop.y2 / r->sy);
        gdImageSetThickness(canvas, 3);
        gdImageRectangle(canvas, x1, y1, x2 - 1, y2 - 1, red);
        gdImageSetThickness(canvas, 1);
        snprintf(l2, sizeof l2, "stage 2: crop [%d, %d, %d, %d] of %dx%d -> %dx%d, %lld vision tokens",
                 r->crop.x1, r->crop.y1, r->crop.x2, r->crop.y2, r->width, r->height,
                 r->crop.out_w, r->crop.out_h, (long long)r->s2.vision_tokens);
    } else {
        snprintf(l2, sizeof l2, "stage 2: no valid box, %s (%dx%d), %lld vision tokens%s",
                 ergo_view_name(r->view), r->s2.image_w, r->s2.image_h,
                 (long long)r->s2.vision_tokens, r->s2.vision_reused ? " (reused)" : "");
    }
    snprintf(l1, sizeof l1, "stage 1: %dx%d of %dx%d, %lld vision tokens; total %lld", r->w1, r->h1,
             r->width, r->height, (long long)r->s1.vision_tokens,
             (long long)(r->s1.vision_tokens + r->s2.vision_tokens));
    gdImageString(canvas, gdFontGetGiant(), 4, a->height + 6, (unsigned char *)l1, black);
    gdImageString(canvas, gdFontGetGiant(), 4, a->height + 26, (unsigned char *)l2, black);
    s = write_gd(canvas, path, err);
done:
    if (left) gdImageDestroy(left);
    if (right) gdImageDestroy(right);
    if (canvas) gdImageDestroy(canvas);
    return s;
}
