/*
 * legibility.c - is the synthetic task what it claims? Nearest-option template
 * matching of the target tag (synth.h, synth_match): at full resolution the observed
 * tag must pick its own code, at the stage-1 budget it must not do better than about
 * chance. The views are made with ERGO's stage-1 path exactly: smart_resize under
 * the budget, Pillow BICUBIC (image_resize).
 */
#include <math.h>
#include <string.h>

#include "image/preprocess.h"
#include "pipeline/ergo.h"
#include "synth/synth.h"

/* Pillow's coefficient window of output pixel j (ImagingResampleHorizontal's
 * precompute_coeffs: center +- support, rounded, clipped): input [*lo, *hi). BICUBIC's
 * support is 2 input-scaled pixels. */
static void pillow_window(int in, int out, int j, int *lo, int *hi) {
    double scale = (double)in / out, fs = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * fs, center = (j + 0.5) * scale;
    int a = (int)(center - support + 0.5), b = (int)(center + support + 0.5);
    *lo = a < 0 ? 0 : a;
    *hi = b > in ? in : b;
}

/* The output pixels [*o1, *o2) of an in -> out resize that input [t1, t2) reaches. */
static void reach(int in, int out, int t1, int t2, int *o1, int *o2) {
    *o1 = out, *o2 = 0;
    for (int j = 0; j < out; j++) {
        int lo, hi;
        pillow_window(in, out, j, &lo, &hi);
        if (lo < t2 && hi > t1) {
            if (j < *o1) *o1 = j;
            *o2 = j + 1;
        }
    }
}

ergo_status synth_tag_view(const synth_config *c, const image *img, const synth_tag *t,
                           int tokens, int full, const char *code, uint8_t **vals, int *n,
                           ergo_error *err) {
    *vals = NULL;
    *n = 0;
    image win = {0}, small = {0};
    int ox = 0, oy = 0;           /* the window's origin in the original */
    int r1x, r1y, r2x, r2y;       /* the region, in the pixels of `view` */
    const image *view;
    ergo_status s;
    if (tokens == 0) {
        if ((s = image_crop(&win, img, t->x1, t->y1, t->x2, t->y2, err))) return s;
        if (code) synth_draw_tag_nominal(c, &win, t->x1, t->y1, t, code);
        view = &win;
        r1x = 0, r1y = 0, r2x = win.width, r2y = win.height;
    } else {
        int w1, h1;
        const int64_t max_pixels = (int64_t)tokens * ERGO_FACTOR * ERGO_FACTOR;
        if ((s = smart_resize_ergo(img->height, img->width, ERGO_FACTOR, ERGO_MIN_PIXELS,
                                   max_pixels, &h1, &w1, err)))
            return s;
        int o1x, o2x, o1y, o2y;
        reach(img->width, w1, t->x1, t->x2, &o1x, &o2x);
        reach(img->height, h1, t->y1, t->y2, &o1y, &o2y);
        int fx = img->width / w1, fy = img->height / h1;
        if (!full && img->width == fx * w1 && img->height == fy * h1) {
            /* an integer scale: a window aligned to the output grid, 3 output pixels
             * wider than the region on each side (the support is 2), resizes to exactly
             * the whole image's values inside */
            int a1 = o1x - 3 < 0 ? 0 : o1x - 3, a2 = o2x + 3 > w1 ? w1 : o2x + 3;
            int b1 = o1y - 3 < 0 ? 0 : o1y - 3, b2 = o2y + 3 > h1 ? h1 : o2y + 3;
            ox = a1 * fx, oy = b1 * fy;
            if ((s = image_crop(&win, img, ox, oy, a2 * fx, b2 * fy, err))) return s;
            if (code) synth_draw_tag_nominal(c, &win, ox, oy, t, code);
            if ((s = image_resize(&small, &win, a2 - a1, b2 - b1, IMAGE_FILTER_BICUBIC, err)))
                goto done;
            r1x = o1x - a1, r2x = o2x - a1, r1y = o1y - b1, r2y = o2y - b1;
        } else {
            if ((s = image_crop(&win, img, 0, 0, img->width, img->height, err))) return s;
            if (code) synth_draw_tag_nominal(c, &win, 0, 0, t, code);
            if ((s = image_resize(&small, &win, w1, h1, IMAGE_FILTER_BICUBIC, err))) goto done;
            r1x = o1x, r2x = o2x, r1y = o1y, r2y = o2y;
        }
        view = &small;
    }
    int m = (r2x - r1x) * (r2y - r1y) * 3;
    if (m <= 0 || !(*vals = malloc((size_t)m))) {
        s = ergo_fail(err, m <= 0 ? ERGO_E_ARG : ERGO_E_NOMEM, "synth: empty tag view");
        goto done;
    }
    for (int y = r1y, k = 0; y < r2y; y++) {
        memcpy(*vals + k, view->rgb + ((size_t)y * view->width + r1x) * 3, (size_t)(r2x - r1x) * 3);
        k += (r2x - r1x) * 3;
    }
    *n = m;
    s = ERGO_OK;
done:
    image_free(&win);
    image_free(&small);
    return s;
}

/* Pearson correlation of two byte vectors (-2 when one is constant). */
static double ncc(const uint8_t *a, const uint8_t *b, int n) {
    double ma = 0, mb = 0;
    for (int i = 0; i < n; i++) ma += a[i], mb += b[i];
    ma /= n, mb /= n;
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        double x = a[i] - ma, y = b[i] - mb;
        ab += x * y, aa += x * x, bb += y * y;
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : -2.0;
}

int synth_match(const synth_config *c, const synth_sample *s, int tokens, ergo_error *err) {
    const synth_tag *t = &s->tags[s->landmarks[s->target].tag];
    uint8_t *obs = NULL;
    int n = 0, best = -1;
    double best_score = -3.0;
    if (synth_tag_view(c, &s->img, t, tokens, 0, NULL, &obs, &n, err)) return -1;
    for (int k = 0; k < SYNTH_N_OPTIONS; k++) {
        uint8_t *tm = NULL;
        int m = 0;
        if (synth_tag_view(c, &s->img, t, tokens, 0, s->codes[k], &tm, &m, err)) {
            best = -1;
            break;
        }
        double sc = m == n ? ncc(obs, tm, n) : -3.0;
        free(tm);
        if (sc > best_score) best_score = sc, best = k;
    }
    free(obs);
    return best;
}
