/*
 * plot.h - line charts of a run's curves as PNG (libgd): the training and held-out
 * loss of SFT, the rewards and KL of GRPO, written beside the checkpoints so a
 * person can look at a run instead of reading its JSONL log.
 *
 *   plot_series s[2] = {{"train", xs, ys, n}, {"held-out", hx, hy, hn}};
 *   plot_lines("out/loss.png", "loss", "step", s, 2, &err);
 */
#ifndef ERGO_PLOT_H
#define ERGO_PLOT_H

#include "base/status.h"

typedef struct plot_series {
    const char *label;
    const double *x, *y;   /* (n) points in x order; non-finite y values are skipped */
    int n;
} plot_series;

/* Writes a 800x480 PNG with one polyline per series, axes scaled to the data, a
 * legend, and the title / x label. The file is written whole (temporary + rename). */
ergo_status plot_lines(const char *path, const char *title, const char *x_label,
                       const plot_series *series, int n_series, ergo_error *err);

#endif
