/*
 * mrope.h - the 3-D position ids (temporal, height, width) of Qwen2.5-VL's
 * multimodal rotary embedding, as pure integer functions.
 *
 * Mirrors Qwen2_5_VLModel.get_rope_index (transformers 4.56.2,
 * modeling_qwen2_5_vl.py) for images: text tokens get the same value on all three
 * axes, counting on from the running maximum + 1; an image's merged tokens get
 * (start, start + row, start + col) over its merged grid (the temporal index of
 * an image is always 0: the reference multiplies it by second_per_grid_t = 0),
 * with start = the running maximum + 1 after the text before it; the text after
 * it continues at the image's maximum + 1. Generation continues the same way (the
 * reference's rope_deltas). The rule is applied piece by piece: positions of a
 * conversation appended turn by turn equal those of the whole conversation, as
 * long as no image is cut between two pieces.
 *
 *   mrope_ids ids = mrope_ids_from_config(&m.config);
 *   int32_t next = 0;            // running maximum + 1 (0 for an empty sequence)
 *   int32_t pos[3 * n];          // pos[a * n + i]: axis a (t, h, w) of token i
 *   mrope_positions(&ids, tokens, n, -1, grids, n_images, &next, pos, n, &err);
 */
#ifndef ERGO_MROPE_H
#define ERGO_MROPE_H

#include <stdint.h>

#include "base/status.h"
#include "model/config.h"

/* One image's image_grid_thw, in patches (before the 2x2 merge). */
typedef struct mrope_grid {
    int32_t t, h, w; /* e.g. (1, 36, 54) for a 504 x 756 image */
} mrope_grid;

/* The token ids and merge size the rule needs (from config.json). */
typedef struct mrope_ids {
    int32_t image_token_id;        /* <|image_pad|>, 151655 */
    int32_t video_token_id;        /* <|video_pad|>, 151656 (videos are refused) */
    int32_t vision_start_token_id; /* <|vision_start|>, 151652 */
    int merge;                     /* spatial_merge_size, 2 */
} mrope_ids;

mrope_ids mrope_ids_from_config(const model_config *cfg);

/* Merged tokens of one image: t * (h / merge) * (w / merge). */
int64_t mrope_grid_tokens(const mrope_grid *g, int merge);

/* Checks a grid: positive sides, h and w multiples of merge. `what` names it. */
ergo_status mrope_check_grid(const mrope_grid *g, int merge, const char *what, ergo_error *err);

/* Position ids of n tokens appended to a sequence whose last token is prev_token
 * (-1 when empty) and whose running maximum + 1 is *next_pos (updated).
 * The images among the tokens are found as the reference finds them: one per
 * <|vision_start|> directly followed by <|image_pad|> (the pair may straddle the
 * previous piece), each one's pads starting at the first <|image_pad|> after the
 * previous image. grids (n_grids) must describe exactly these images, in order,
 * and the <|image_pad|> count must equal their merged tokens (the reference's
 * "Image features and image tokens do not match"). pos has room for 3 rows of
 * `stride` (>= n) values: pos[a * stride + i] is axis a of token i. */
ergo_status mrope_positions(const mrope_ids *ids, const int32_t *tokens, int n,
                            int32_t prev_token, const mrope_grid *grids, int n_grids,
                            int32_t *next_pos, int32_t *pos, int stride, ergo_error *err);

/* Number of images the reference would find in tokens (vision_start + image_pad
 * pairs, including a pair straddling prev_token), or -1 when a video is found. */
int mrope_count_images(const mrope_ids *ids, const int32_t *tokens, int n, int32_t prev_token);

#endif
