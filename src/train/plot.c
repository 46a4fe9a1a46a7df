/*
 * plot.c - PNG line charts (plot.h).
 */
#include "plot.h"

#include <gd.h>
#include <gdfonts.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/file.h"

enum { W = 800, H = 480, LEFT = 70, RIGHT = 20, TOP = 30, BOTTOM = 50 };

/* A round step (1, 2 or 5 times a power of ten) giving about n ticks over span. */
static double tick_step(double span, int n) {
    double raw = span / n, p = pow(10.0, floor(log10(raw)));
    double m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

ergo_status plot_lines(const char *path, const char *title, const char *x_label,
                       const plot_series *series, int n_series, ergo_error *err) {
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int s = 0; s < n_series; s++)
        for (int i = 0; i < series[s].n; i++) {
            const double x = series[s].x[i], y = series[s].y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            x0 = fmin(x0, x), x1 = fmax(x1, x), y0 = fmin(y0, y), y1 = fmax(y1, y);
        }
    if (!(x0 <= x1)) x0 = 0, x1 = 1, y0 = 0, y1 = 1; /* nothing to draw yet: empty axes */
    if (x1 - x0 < 1e-12) x1 = x0 + 1;
    if (y1 - y0 < 1e-12) y0 -= 0.5, y1 += 0.5;
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad, y1 += pad;

    gdImagePtr im = gdImageCreateTrueColor(W, H);
    if (!im) return ergo_fail(err, ERGO_E_NOMEM, "%s: cannot create the image", path);
    const int white = gdTrueColor(255, 255, 255), black = gdTrueColor(0, 0, 0);
    const int grey = gdTrueColor(225, 225, 225);
    static const int palette[][3] = {{31, 119, 180}, {214, 39, 40}, {44, 160, 44},
                                     {255, 127, 14}, {148, 103, 189}, {140, 86, 75}};
    gdImageFilledRectangle(im, 0, 0, W - 1, H - 1, white);
    const int pw = W - LEFT - RIGHT, ph = H - TOP - BOTTOM;
#define PX(x) (LEFT + (int)lround(((x) - x0) / (x1 - x0) * pw))
#define PY(y) (TOP + ph - (int)lround(((y) - y0) / (y1 - y0) * ph))
    char buf[64];
    const double ys = tick_step(y1 - y0, 6);
    for (double y = ceil(y0 / ys) * ys; y <= y1; y += ys) {
        gdImageLine(im, LEFT + 1, PY(y), W - RIGHT, PY(y), grey);
        snprintf(buf, sizeof buf, "%.4g", fabs(y) < ys * 1e-6 ? 0.0 : y);
        gdImageString(im, gdFontGetSmall(), 6, PY(y) - 6, (unsigned char *)buf, black);
    }
    const double xs = tick_step(x1 - x0, 8);
    for (double x = ceil(x0 / xs) * xs; x <= x1; x += xs) {
        gdImageLine(im, PX(x), TOP + ph, PX(x), TOP + ph + 4, black);
        snprintf(buf, sizeof buf, "%.6g", x);
        gdImageString(im, gdFontGetSmall(), PX(x) - 3 * (int)strlen(buf), TOP + ph + 8,
                      (unsigned char *)buf, black);
    }
    gdImageLine(im, LEFT, TOP + ph, W - RIGHT, TOP + ph, black);
    gdImageLine(im, LEFT, TOP, LEFT, TOP + ph, black);
    gdImageString(im, gdFontGetSmall(), LEFT, 10, (unsigned char *)title, black);
    gdImageString(im, gdFontGetSmall(), LEFT + pw / 2 - 3 * (int)strlen(x_label), H - 20,
                  (unsigned char *)x_label, black);
    for (int s = 0; s < n_series; s++) {
        const int *p = palette[s % 6];
        const int c = gdTrueColor(p[0], p[1], p[2]);
        gdImageSetThickness(im, 2);
        int have = 0, px = 0, py = 0;
        for (int i = 0; i < series[s].n; i++) {
            const double x = series[s].x[i], y = series[s].y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            const int qx = PX(x), qy = PY(y);
            if (have) gdImageLine(im, px, py, qx, qy, c);
            else if (series[s].n == 1 || i + 1 == series[s].n) gdImageFilledRectangle(im, qx - 2, qy - 2, qx + 2, qy + 2, c);
            have = 1, px = qx, py = qy;
        }
        gdImageSetThickness(im, 1);
        gdImageFilledRectangle(im, W - RIGHT - 150, TOP + 8 + 14 * s, W - RIGHT - 138,
                               TOP + 16 + 14 * s, c);
        gdImageString(im, gdFontGetSmall(), W - RIGHT - 132, TOP + 6 + 14 * s,
                      (unsigned char *)series[s].label, black);
    }
#undef PX
#undef PY
    int size = 0;
    void *png = gdImagePngPtr(im, &size);
    gdImageDestroy(im);
    if (!png) return ergo_fail(err, ERGO_E_IO, "%s: cannot encode the PNG", path);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
    ergo_status st = file_write_all(tmp, png, (size_t)size, err);
    gdFree(png);
    if (!st && rename(tmp, path) != 0) {
        unlink(tmp);
        st = ergo_fail(err, ERGO_E_IO, "%s: cannot rename the plot into place", path);
    }
    return st;
}
