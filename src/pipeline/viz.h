/*
 * viz.h - pictures of an ERGO run (libgd): the stage-1 image with the box drawn and
 * the stage-2 image beside it, labelled with the token counts; and plain PNG output
 * of an image (--save-crop).
 */
#ifndef ERGO_VIZ_H
#define ERGO_VIZ_H

#include "base/status.h"
#include "image/image.h"
#include "pipeline/ergo.h"

/* Writes an RGB image as PNG. */
ergo_status viz_write_png(const image *im, const char *path, ergo_error *err);

/* Writes the picture of a two-stage result as PNG: left, the stage-1 image with the
 * crop's rectangle (mapped back to stage-1 pixels); right, the stage-2 image scaled
 * to the same height; below, the sizes and vision tokens of both stages. */
ergo_status viz_render(const ergo_result *r, const char *path, ergo_error *err);

#endif
