/*
 * positions.c - patch positions, the window permutation, full-attention spans and
 * 2-D rotary angles of the vision tower (integer bookkeeping, no weights).
 *
 * Mirrors rot_pos_emb, get_window_index and cu_seqlens of
 * Qwen2_5_VisionTransformerPretrainedModel (transformers 4.56.2).
 */
#include "positions.h"

#include <math.h>

void vision_patch_positions(int grid_t, int grid_h, int grid_w, int merge, int32_t *row,
                            int32_t *col) {
    /* the reference reshapes arange(h) x arange(w) to (h/m, m, w/m, m) and permutes
     * to (h/m, w/m, m, m): unit row, unit column, then the patch inside the unit */
    int64_t p = 0;
    for (int t = 0; t < grid_t; t++)
        for (int uh = 0; uh < grid_h / merge; uh++)
            for (int uw = 0; uw < grid_w / merge; uw++)
                for (int i = 0; i < merge; i++)
                    for (int j = 0; j < merge; j++, p++) {
                        row[p] = uh * merge + i;
                        col[p] = uw * merge + j;
                    }
}

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

int vision_window_count(int grid_t, int units_h, int units_w, int window_units) {
    return grid_t * ceil_div(units_h, window_units) * ceil_div(units_w, window_units);
}

int vision_window_order(int grid_t, int units_h, int units_w, int window_units,
                        int32_t *window_order, int32_t *raster_order, int32_t *window_len) {
    const int wu = window_units;
    const int n_wh = ceil_div(units_h, wu), n_ww = ceil_div(units_w, wu);
    int32_t pos = 0;  /* next window position */
    int n_win = 0;
    for (int t = 0; t < grid_t; t++) {
        const int32_t frame = t * units_h * units_w; /* first raster unit of the frame */
        for (int wy = 0; wy < n_wh; wy++)
            for (int wx = 0; wx < n_ww; wx++) {
                /* edge windows are clipped, never padded: only real units are listed */
                const int y1 = wy * wu + wu < units_h ? wy * wu + wu : units_h;
                const int x1 = wx * wu + wu < units_w ? wx * wu + wu : units_w;
                int32_t len = 0;
                for (int y = wy * wu; y < y1; y++)
                    for (int x = wx * wu; x < x1; x++, len++, pos++) {
                        const int32_t raster = frame + y * units_w + x;
                        window_order[pos] = raster;
                        raster_order[raster] = pos;
                    }
                window_len[n_win++] = len;
            }
    }
    return n_win;
}

int vision_frame_segments(int grid_t, int grid_h, int grid_w, int32_t *segment_len) {
    for (int t = 0; t < grid_t; t++) segment_len[t] = grid_h * grid_w;
    return grid_t;
}

void vision_rotary_inv_freq(float *inv_freq, int head_dim, float theta) {
    /* torch: 1.0 / (theta ** (arange(0, dim, 2, float32) / dim)), dim = head_dim/2,
     * every step in float32 */
    const int dim = head_dim / 2;
    for (int k = 0; k < dim / 2; k++) {
        float e = (float)(2 * k) / (float)dim;
        inv_freq[k] = 1.0f / powf(theta, e);
    }
}

void vision_rotary_angles(float *angles, const int32_t *row, const int32_t *col, int n,
                          const float *inv_freq, int head_dim) {
    const int q = head_dim / 4; /* frequencies per axis */
    for (int p = 0; p < n; p++) {
        float *a = angles + (int64_t)p * 2 * q;
        for (int k = 0; k < q; k++) {
            a[k] = (float)row[p] * inv_freq[k];     /* row axis first */
            a[q + k] = (float)col[p] * inv_freq[k]; /* then the column axis */
        }
    }
}
