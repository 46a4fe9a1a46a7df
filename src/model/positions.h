/*
 * positions.h - the bookkeeping of the vision tower, as pure functions over
 * integers: where every patch sits, how merge units are permuted so that each
 * attention window is contiguous, which spans attend together, and the 2-D
 * rotary angles those positions give.
 *
 * Mirrors Qwen2_5_VisionTransformerPretrainedModel.rot_pos_emb, get_window_index
 * and the cu_seqlens of its forward (transformers 4.56.2, modeling_qwen2_5_vl.py).
 * Vocabulary: a grid is (t, h, w) in patches; a merge unit is the merge x merge
 * (2x2) group of patches that becomes one vision token, and the processor emits
 * the patches of a unit contiguously; a window is a square of window_units x
 * window_units units (112 px / 14 / 2 = 4), clipped at the right and bottom edges.
 *
 *   int n_win = vision_window_count(1, 9, 7, 4);            // 3 * 2 = 6
 *   vision_window_order(1, 9, 7, 4, window_order, raster_order, window_len);
 *   // x_window[i] = x_raster[window_order[i]]   (per unit of 4 patches)
 *   // x_raster[j] = x_window[raster_order[j]]
 */
#ifndef ERGO_POSITIONS_H
#define ERGO_POSITIONS_H

#include <stdint.h>

/* (row, col) in patches of every patch of a (grid_t, grid_h, grid_w) grid, in the
 * processor's merge-group order: frame, unit row, unit column, row inside the unit,
 * column inside the unit (every frame repeats the same positions). grid_h and
 * grid_w must be multiples of merge. row and col hold grid_t*grid_h*grid_w values. */
void vision_patch_positions(int grid_t, int grid_h, int grid_w, int merge, int32_t *row,
                            int32_t *col);

/* Number of non-empty windows of a (grid_t, units_h, units_w) unit grid:
 * grid_t * ceil(units_h / window_units) * ceil(units_w / window_units). The
 * reference pads a grid that is already a multiple of the window with a whole empty
 * window and then drops it (unique_consecutive); we never create it. */
int vision_window_count(int grid_t, int units_h, int units_w, int window_units);

/* The window permutation at unit granularity, over grid_t*units_h*units_w units
 * numbered in raster order (frame, unit row, unit column):
 *   window_order[i] = the raster unit placed at window position i (the reference's
 *                     window_index; llama.cpp calls it inv_window_idx),
 *   raster_order[j] = the window position of raster unit j (argsort of window_order,
 *                     the reference's reverse_indices),
 *   window_len[k]   = units in window k (non-empty windows only),
 * windows walked frame by frame, row-major over the window grid, units row-major
 * inside a window. Returns the number of windows (vision_window_count). */
int vision_window_order(int grid_t, int units_h, int units_w, int window_units,
                        int32_t *window_order, int32_t *raster_order, int32_t *window_len);

/* Spans of full attention: each frame of an image attends only to itself, so the
 * spans are grid_t runs of grid_h*grid_w patches (the reference's cu_seqlens, per
 * image). Writes grid_t lengths (in patches) and returns grid_t. */
int vision_frame_segments(int grid_t, int grid_h, int grid_w, int32_t *segment_len);

/* Inverse frequencies of the 2-D rotary (Qwen2_5_VisionRotaryEmbedding(head_dim/2)):
 * inv_freq[k] = 1 / theta^((2k) / (head_dim/2)) in float32 as torch computes it, for
 * k < head_dim/4 (20 for head_dim 80). head_dim must be a multiple of 4. */
void vision_rotary_inv_freq(float *inv_freq, int head_dim, float theta);

/* Rotary angles of n patches, (n, head_dim/2): the first head_dim/4 angles are
 * row * inv_freq, the next head_dim/4 are col * inv_freq (one float32 product each,
 * as torch.outer). The reference duplicates them to head_dim and rotates half
 * (pairs (i, i + head_dim/2)), so these head_dim/2 angles are all there is. */
void vision_rotary_angles(float *angles, const int32_t *row, const int32_t *col, int n,
                          const float *inv_freq, int head_dim);

#endif
