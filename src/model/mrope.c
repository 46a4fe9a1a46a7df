/*
 * mrope.c - M-RoPE position ids, mirroring Qwen2_5_VLModel.get_rope_index
 * (transformers 4.56.2) for text and images, applied to one piece of a sequence.
 */
#include "mrope.h"

mrope_ids mrope_ids_from_config(const model_config *cfg) {
    mrope_ids ids = {cfg->image_token_id, cfg->video_token_id, cfg->vision_start_token_id,
                     cfg->vision.merge};
    return ids;
}

int64_t mrope_grid_tokens(const mrope_grid *g, int merge) {
    return (int64_t)g->t * (g->h / merge) * (g->w / merge);
}

ergo_status mrope_check_grid(const mrope_grid *g, int merge, const char *what, ergo_error *err) {
    if (g->t < 1 || g->h < merge || g->w < merge || g->h % merge || g->w % merge)
        return ergo_fail(err, ERGO_E_ARG,
                         "%s: grid (%d, %d, %d) is not a grid of whole %dx%d merge groups", what,
                         g->t, g->h, g->w, merge, merge);
    return ERGO_OK;
}

int mrope_count_images(const mrope_ids *ids, const int32_t *tokens, int n, int32_t prev_token) {
    /* get_rope_index: vision_tokens = input_ids[argwhere(input_ids == vision_start) + 1] */
    int images = 0;
    int32_t prev = prev_token;
    for (int i = 0; i < n; i++) {
        if (prev == ids->vision_start_token_id) {
            if (tokens[i] == ids->image_token_id) images++;
            if (tokens[i] == ids->video_token_id) return -1;
        }
        prev = tokens[i];
    }
    return images;
}

ergo_status mrope_positions(const mrope_ids *ids, const int32_t *tokens, int n,
                            int32_t prev_token, const mrope_grid *grids, int n_grids,
                            int32_t *next_pos, int32_t *pos, int stride, ergo_error *err) {
    const int m = ids->merge;
    int found = mrope_count_images(ids, tokens, n, prev_token);
    if (found < 0)
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "the tokens hold a video, which ergo does not "
                                                  "handle");
    if (found != n_grids)
        return ergo_fail(err, ERGO_E_ARG,
                         "the tokens hold %d image(s) (<|vision_start|><|image_pad|>) but %d "
                         "image grid(s) were given", found, n_grids);
    int64_t pads = 0, want = 0;
    for (int i = 0; i < n; i++) pads += tokens[i] == ids->image_token_id;
    for (int k = 0; k < n_grids; k++) {
        ergo_status s = mrope_check_grid(&grids[k], m, "image", err);
        if (s) return s;
        want += mrope_grid_tokens(&grids[k], m);
    }
    if (pads != want)
        return ergo_fail(err, ERGO_E_ARG,
                         "image features and image tokens do not match: %lld <|image_pad|> "
                         "tokens, %lld merged vision tokens in the grids",
                         (long long)pads, (long long)want);

    int32_t *pt = pos, *ph = pos + stride, *pw = pos + 2 * (size_t)stride;
    int32_t next = *next_pos; /* running maximum + 1 */
    int st = 0;               /* first token not yet placed */
    for (int k = 0; k < n_grids; k++) {
        /* ed = input_tokens.index(image_token_id, st) */
        int ed = st;
        while (ed < n && tokens[ed] != ids->image_token_id) ed++;
        /* text before the image: one position per token on all three axes */
        for (int i = st; i < ed; i++) pt[i] = ph[i] = pw[i] = next++;
        int gh = grids[k].h / m, gw = grids[k].w / m;
        int64_t len = mrope_grid_tokens(&grids[k], m);
        if (ed + len > n)
            return ergo_fail(err, ERGO_E_ARG, "image %d's %lld tokens run past the end of the "
                                              "tokens", k, (long long)len);
        /* image tokens in (frame, row, col) order: (start, start + row, start + col) */
        for (int64_t j = 0; j < len; j++) {
            int r = (int)((j / gw) % gh), c = (int)(j % gw);
            pt[ed + j] = next;
            ph[ed + j] = next + r;
            pw[ed + j] = next + c;
        }
        next += (gh > gw ? gh : gw); /* image maximum + 1 */
        st = ed + (int)len;
    }
    for (int i = st; i < n; i++) pt[i] = ph[i] = pw[i] = next++;
    *next_pos = next;
    return ERGO_OK;
}
