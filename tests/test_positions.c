/*
 * Tests of src/model/positions.c: patch positions, the window permutation, frame
 * spans and 2-D rotary angles of the vision tower. Hand-computed small grids, an
 * independent transcription of the reference's padded get_window_index, the
 * inverse property over many grids (window-divisible and not), and the reference's
 * own bookkeeping recorded in tests/fixtures/vision/manifest.json.
 */
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "model/positions.h"

/* ---- hand-computed: a 2x3-unit grid (4x6 patches, merge 2) ---- */

static void test_hand_2x3(void) {
    int32_t row[24], col[24];
    vision_patch_positions(1, 4, 6, 2, row, col);
    /* unit by unit, row-major over units, and row-major inside each 2x2 unit */
    const int32_t want_row[24] = {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1,
                                  2, 2, 3, 3, 2, 2, 3, 3, 2, 2, 3, 3};
    const int32_t want_col[24] = {0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5,
                                  0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5};
    CHECK_EQ_I32(row, 24, want_row, 24, "2x3 units: patch rows");
    CHECK_EQ_I32(col, 24, want_col, 24, "2x3 units: patch cols");

    /* one 4x4-unit window holds the whole grid: identity permutation */
    int32_t wo[6], ro[6], wl[6];
    int n = vision_window_order(1, 2, 3, 4, wo, ro, wl);
    const int32_t id[6] = {0, 1, 2, 3, 4, 5}, len6[1] = {6};
    CHECK_EQ_INT(n, 1, "2x3 units, window 4: windows");
    CHECK_EQ_I32(wo, 6, id, 6, "2x3 units, window 4: window_order");
    CHECK_EQ_I32(ro, 6, id, 6, "2x3 units, window 4: raster_order");
    CHECK_EQ_I32(wl, 1, len6, 1, "2x3 units, window 4: lengths");

    /* 2x2-unit windows: [0 1 | 2]   window 0 = units 0,1,3,4; window 1 = units 2,5
     *                   [3 4 | 5] */
    n = vision_window_order(1, 2, 3, 2, wo, ro, wl);
    const int32_t want_wo[6] = {0, 1, 3, 4, 2, 5}, want_ro[6] = {0, 1, 4, 2, 3, 5};
    const int32_t want_wl[2] = {4, 2};
    CHECK_EQ_INT(n, 2, "2x3 units, window 2: windows");
    CHECK_EQ_INT(vision_window_count(1, 2, 3, 2), 2, "2x3 units, window 2: count");
    CHECK_EQ_I32(wo, 6, want_wo, 6, "2x3 units, window 2: window_order");
    CHECK_EQ_I32(ro, 6, want_ro, 6, "2x3 units, window 2: raster_order");
    CHECK_EQ_I32(wl, 2, want_wl, 2, "2x3 units, window 2: lengths");

    /* two frames: each frame its own windows, frame 1's units numbered from 6 */
    int32_t wo2[12], ro2[12], wl2[4];
    n = vision_window_order(2, 2, 3, 2, wo2, ro2, wl2);
    const int32_t want_wo2[12] = {0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11};
    const int32_t want_wl2[4] = {4, 2, 4, 2};
    CHECK_EQ_INT(n, 4, "2 frames of 2x3 units, window 2: windows");
    CHECK_EQ_I32(wo2, 12, want_wo2, 12, "2 frames: window_order");
    CHECK_EQ_I32(wl2, 4, want_wl2, 4, "2 frames: lengths");

    int32_t seg[3];
    CHECK_EQ_INT(vision_frame_segments(3, 4, 6, seg), 3, "frame segments: count");
    const int32_t want_seg[3] = {24, 24, 24};
    CHECK_EQ_I32(seg, 3, want_seg, 3, "frame segments: lengths");

    /* rotary, head dim 16: dim 8, inv_freq = 10000^-(0, 2, 4, 6)/8 = 1, 0.1, 0.01, 0.001 */
    float inv[4];
    vision_rotary_inv_freq(inv, 16, 10000.0f);
    const float want_inv[4] = {1.0f, 0.1f, 0.01f, 0.001f};
    CHECK_CLOSE(inv, want_inv, 4, 0, 1e-6, "inv_freq, head dim 16");
    /* patch 23 sits at (row 3, col 5): angles [3, .3, .03, .003, 5, .5, .05, .005];
     * patch 6 (third of unit 1) at (1, 2) */
    float ang[24 * 8];
    vision_rotary_angles(ang, row, col, 24, inv, 16);
    const float want23[8] = {3.0f, 0.3f, 0.03f, 0.003f, 5.0f, 0.5f, 0.05f, 0.005f};
    const float want6[8] = {1.0f, 0.1f, 0.01f, 0.001f, 2.0f, 0.2f, 0.02f, 0.002f};
    CHECK_CLOSE(ang + 23 * 8, want23, 8, 0, 1e-6, "angles of patch 23 (row 3, col 5)");
    CHECK_CLOSE(ang + 6 * 8, want6, 8, 0, 1e-6, "angles of patch 6 (row 1, col 2)");
    /* head dim 80 (7B): 20 frequencies, inv_freq[k] = 10000^(-k/20) */
    float inv80[20];
    vision_rotary_inv_freq(inv80, 80, 10000.0f);
    float want80[20];
    for (int k = 0; k < 20; k++) want80[k] = (float)pow(10000.0, -(double)k / 20.0);
    CHECK_CLOSE(inv80, want80, 20, 0, 1e-6, "inv_freq, head dim 80");
}

/* ---- the reference's get_window_index, transcribed with its padding ---- */

/* Pads the unit grid with -100 to whole windows (a whole extra window when already
 * divisible, as `vws - h % vws` does), walks windows, drops padding, and lists
 * per-window counts including the empty ones (which cu_seqlens' unique_consecutive
 * then removes). Returns the count of windows kept. */
static int reference_window_index(int t, int uh, int uw, int vws, int32_t *index,
                                  int32_t *lens) {
    int pad_h = vws - uh % vws, pad_w = vws - uw % vws;
    int nwh = (uh + pad_h) / vws, nww = (uw + pad_w) / vws;
    int n = 0, kept = 0;
    for (int f = 0; f < t; f++)
        for (int wy = 0; wy < nwh; wy++)
            for (int wx = 0; wx < nww; wx++) {
                int len = 0;
                for (int y = wy * vws; y < (wy + 1) * vws; y++)
                    for (int x = wx * vws; x < (wx + 1) * vws; x++) {
                        int v = (y < uh && x < uw) ? f * uh * uw + y * uw + x : -100;
                        if (v != -100) {
                            index[n++] = v;
                            len++;
                        }
                    }
                if (len > 0) lens[kept++] = len; /* unique_consecutive drops empty ones */
            }
    return kept;
}

static void test_permutation_properties(void) {
    enum { MAXU = 3 * 13 * 13 };
    static int32_t wo[MAXU], ro[MAXU], wl[MAXU], ref[MAXU], ref_len[MAXU];
    int checked = 0, bad_inverse = 0, bad_ref = 0, bad_len = 0, divisible = 0, ragged = 0;
    for (int t = 1; t <= 3; t++)
        for (int uh = 1; uh <= 13; uh++)
            for (int uw = 1; uw <= 13; uw++)
                for (int vws = 1; vws <= 5; vws++) {
                    const int nu = t * uh * uw;
                    memset(ro, 0xff, sizeof ro);
                    int n = vision_window_order(t, uh, uw, vws, wo, ro, wl);
                    int nref = reference_window_index(t, uh, uw, vws, ref, ref_len);
                    if (uh % vws == 0 && uw % vws == 0) divisible++;
                    else ragged++;
                    if (n != vision_window_count(t, uh, uw, vws) || n != nref) bad_len++;
                    int sum = 0;
                    for (int k = 0; k < n && k < nref; k++) {
                        sum += wl[k];
                        if (wl[k] != ref_len[k] || wl[k] <= 0) bad_len++;
                    }
                    if (sum != nu) bad_len++;
                    for (int i = 0; i < nu; i++) {
                        /* window_order is a permutation and raster_order its inverse */
                        if (wo[i] < 0 || wo[i] >= nu || ro[wo[i]] != i) bad_inverse++;
                        if (wo[i] != ref[i]) bad_ref++;
                    }
                    checked++;
                }
    CHECK(bad_inverse == 0, "raster_order[window_order[i]] != i in %d places", bad_inverse);
    CHECK(bad_ref == 0, "window_order differs from the reference's padded walk in %d places",
          bad_ref);
    CHECK(bad_len == 0, "window lengths or counts differ from the reference in %d places",
          bad_len);
    CHECK(divisible > 50 && ragged > 500, "grids covered: %d divisible, %d not (of %d)",
          divisible, ragged, checked);

    /* 8x12 units (divisible by 4): 6 full windows, no empty one */
    int n = vision_window_order(1, 8, 12, 4, wo, ro, wl);
    const int32_t full6[6] = {16, 16, 16, 16, 16, 16};
    CHECK_EQ_INT(n, 6, "8x12 units: windows");
    CHECK_EQ_I32(wl, 6, full6, 6, "8x12 units: lengths");
    /* 9x7 units: windows of 4 and 3 columns over rows of 4, 4 and 1 */
    n = vision_window_order(1, 9, 7, 4, wo, ro, wl);
    const int32_t ragged6[6] = {16, 12, 16, 12, 4, 3};
    CHECK_EQ_INT(n, 6, "9x7 units: windows");
    CHECK_EQ_I32(wl, 6, ragged6, 6, "9x7 units: lengths");
    /* 1 unit wide (28 x N images): windows are columns of up to 4 units */
    n = vision_window_order(1, 5, 1, 4, wo, ro, wl);
    const int32_t col2[2] = {4, 1}, id5[5] = {0, 1, 2, 3, 4};
    CHECK_EQ_INT(n, 2, "5x1 units: windows");
    CHECK_EQ_I32(wl, 2, col2, 2, "5x1 units: lengths");
    CHECK_EQ_I32(wo, 5, id5, 5, "5x1 units: window_order");
}

/* ---- the reference's bookkeeping, recorded by tools/fixtures_vision.py ---- */

static int32_t *json_i32_list(const json_t *a, size_t *n) {
    *n = json_array_size(a);
    int32_t *v = malloc(sizeof *v * (*n ? *n : 1));
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

static void test_reference_bookkeeping(void) {
    char path[1024];
    ergo_error err = {0};
    snprintf(path, sizeof path, "%s/vision/manifest.json", fixtures_dir());
    json_t *man = json_load_path(path, &err);
    if (!man) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const json_t *runs = json_object_get(man, "runs");
    CHECK(json_array_size(runs) > 0, "%s: no runs", path);
    size_t ri;
    const json_t *run;
    json_array_foreach(runs, ri, run) {
        const char *name = json_string_value(json_object_get(run, "name"));
        char case_path[1024];
        snprintf(case_path, sizeof case_path, "%s/%s", fixtures_dir(),
                 json_string_value(json_object_get(run, "case")));
        /* merge and window sizes come from the case's vision_config */
        json_t *cj = json_load_path(case_path, &err);
        if (!cj) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        const json_t *vc = json_object_get(json_object_get(cj, "config"), "vision_config");
        const int merge = (int)json_integer_value(json_object_get(vc, "spatial_merge_size"));
        const int patch = (int)json_integer_value(json_object_get(vc, "patch_size"));
        const int window = (int)json_integer_value(json_object_get(vc, "window_size"));
        const int hidden = (int)json_integer_value(json_object_get(vc, "hidden_size"));
        const int heads = (int)json_integer_value(json_object_get(vc, "num_heads"));
        json_decref(cj);
        const int wu = window / patch / merge, U = merge * merge, Dh = hidden / heads;

        size_t n_wi, n_cw, n_cs;
        int32_t *want_wi = json_i32_list(json_object_get(run, "window_index"), &n_wi);
        int32_t *want_cw = json_i32_list(json_object_get(run, "cu_window_seqlens"), &n_cw);
        int32_t *want_cs = json_i32_list(json_object_get(run, "cu_seqlens"), &n_cs);
        const json_t *grids = json_object_get(run, "grid_thw");
        size_t n_patches = 0;
        for (size_t g = 0; g < json_array_size(grids); g++) {
            const json_t *gr = json_array_get(grids, g);
            n_patches += (size_t)(json_integer_value(json_array_get(gr, 0)) *
                                  json_integer_value(json_array_get(gr, 1)) *
                                  json_integer_value(json_array_get(gr, 2)));
        }
        /* ours, image by image, concatenated as the reference batches them */
        int32_t *wi = calloc(n_patches / U + 1, sizeof *wi);
        int32_t *cw = calloc(n_patches / U + 2, sizeof *cw);
        int32_t *cs = calloc(n_patches + 2, sizeof *cs);
        int32_t *tmp_ro = calloc(n_patches / U + 1, sizeof *tmp_ro);
        int32_t *tmp_len = calloc(n_patches / U + 1, sizeof *tmp_len);
        int32_t *row = calloc(n_patches, sizeof *row), *col = calloc(n_patches, sizeof *col);
        float *ang = calloc(n_patches * (size_t)Dh / 2, sizeof *ang);
        float *inv = calloc((size_t)Dh / 4, sizeof *inv);
        vision_rotary_inv_freq(inv, Dh, 10000.0f);
        size_t nwi = 0, ncw = 1, ncs = 1, np = 0;
        for (size_t g = 0; g < json_array_size(grids); g++) {
            const json_t *gr = json_array_get(grids, g);
            int t = (int)json_integer_value(json_array_get(gr, 0));
            int h = (int)json_integer_value(json_array_get(gr, 1));
            int w = (int)json_integer_value(json_array_get(gr, 2));
            int n = vision_window_order(t, h / merge, w / merge, wu, wi + nwi, tmp_ro, tmp_len);
            for (int k = 0; k < t * (h / merge) * (w / merge); k++) wi[nwi + k] += (int32_t)(np / U);
            for (int k = 0; k < n; k++, ncw++) cw[ncw] = cw[ncw - 1] + tmp_len[k] * U;
            nwi += (size_t)t * (h / merge) * (w / merge);
            int32_t seg[64];
            int ns = vision_frame_segments(t, h, w, seg);
            for (int k = 0; k < ns; k++, ncs++) cs[ncs] = cs[ncs - 1] + seg[k];
            vision_patch_positions(t, h, w, merge, row + np, col + np);
            np += (size_t)t * h * w;
        }
        vision_rotary_angles(ang, row, col, (int)np, inv, Dh);
        char label[256];
        snprintf(label, sizeof label, "%s: window_index", name);
        CHECK_EQ_I32(wi, nwi, want_wi, n_wi, label);
        snprintf(label, sizeof label, "%s: cu_window_seqlens", name);
        CHECK_EQ_I32(cw, ncw, want_cw, n_cw, label);
        snprintf(label, sizeof label, "%s: cu_seqlens", name);
        CHECK_EQ_I32(cs, ncs, want_cs, n_cs, label);

        /* inv_freq and angles: float32 products; powf may differ from torch's pow by an
         * ulp, so a tight relative bound rather than equality */
        const json_t *jf = json_object_get(run, "inv_freq");
        float want_inv[64];
        size_t nf = json_array_size(jf);
        for (size_t k = 0; k < nf && k < 64; k++)
            want_inv[k] = (float)json_real_value(json_array_get(jf, k));
        CHECK_EQ_INT(nf, Dh / 4, "inv_freq length");
        snprintf(label, sizeof label, "%s: inv_freq", name);
        CHECK_CLOSE(inv, want_inv, (size_t)Dh / 4, 0, 1e-6, label);
        snprintf(path, sizeof path, "%s/vision/%s", fixtures_dir(),
                 json_string_value(json_object_get(json_object_get(run, "angles"), "file")));
        char *bytes;
        size_t size;
        if (file_read_all(path, (size_t)1 << 26, &bytes, &size, &err) != ERGO_OK) {
            CHECK(0, "%s", err.msg);
        } else {
            CHECK_EQ_INT(size, np * (size_t)Dh / 2 * 4, "angles file size");
            if (size == np * (size_t)Dh / 2 * 4) {
                snprintf(label, sizeof label, "%s: rot_pos_emb angles", name);
                CHECK_CLOSE(ang, (const float *)(const void *)bytes, np * (size_t)Dh / 2, 1e-6,
                            1e-6, label);
            }
            free(bytes);
        }
        free(want_wi);
        free(want_cw);
        free(want_cs);
        free(wi);
        free(cw);
        free(cs);
        free(tmp_ro);
        free(tmp_len);
        free(row);
        free(col);
        free(ang);
        free(inv);
    }
    json_decref(man);
}

void test_positions(void) {
    test_hand_2x3();
    test_permutation_properties();
    test_reference_bookkeeping();
}
