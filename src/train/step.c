/*
 * step.c - an example through both towers and back (step.h).
 */
#include "step.h"

#include <stdlib.h>
#include <string.h>

#include "train/grads.h"

void train_states_free(train_states *ts) {
    text_train_state_free(ts->text);
    if (ts->vision)
        for (int i = 0; i < ts->max_images; i++) vision_train_state_free(ts->vision[i]);
    free(ts->vision);
    free(ts->vision_rows);
    free(ts->d_vision);
    free(ts->image_rows);
    memset(ts, 0, sizeof *ts);
}

/* Whether any vision parameter (tower or merger) has a gradient buffer. */
static int vision_has_grads(const train_model *tm) {
    const vision_weights *g = &tm->g.vision;
    if (train_grad(&g->patch_embed) || train_grad(&g->merger_ln_q) ||
        train_grad(&g->merger_fc1_w) || train_grad(&g->merger_fc1_b) ||
        train_grad(&g->merger_fc2_w) || train_grad(&g->merger_fc2_b))
        return 1;
    for (int l = 0; l < tm->cfg.vision.depth; l++) {
        const vision_block_weights *b = &g->blocks[l];
        const weight *ws[] = {&b->norm1, &b->qkv_w,  &b->qkv_b, &b->proj_w, &b->proj_b,
                              &b->norm2, &b->gate_w, &b->gate_b, &b->up_w,  &b->up_b,
                              &b->down_w, &b->down_b};
        for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
            if (train_grad(ws[i])) return 1;
    }
    return 0;
}

ergo_status train_states_init(train_states *ts, const train_model *tm, int max_tokens,
                              int max_patches, int max_images, int recompute,
                              ergo_error *err) {
    memset(ts, 0, sizeof *ts);
    const int D = tm->cfg.text.hidden, U = tm->cfg.vision.merge * tm->cfg.vision.merge;
    ergo_status s = text_train_state_new(&ts->text, &tm->cfg.text, max_tokens,
                                         tm->lora.linears ? tm->lora.rank : 0, recompute, err);
    if (s) return s;
    ts->max_images = max_images;
    ts->max_patches = max_patches;
    ts->vision_trains = vision_has_grads(tm);
    if (max_images > 0) {
        ts->vision = calloc((size_t)max_images, sizeof *ts->vision);
        ts->max_vision_rows = max_images * (max_patches / U);
        ts->vision_rows = malloc((size_t)ts->max_vision_rows * D * sizeof(float));
        ts->d_vision = malloc((size_t)ts->max_vision_rows * D * sizeof(float));
        ts->image_rows = calloc((size_t)max_images, sizeof(int));
        if (!ts->vision || !ts->vision_rows || !ts->d_vision || !ts->image_rows) {
            train_states_free(ts);
            return ergo_fail(err, ERGO_E_NOMEM, "out of memory for %d images' vision rows",
                             max_images);
        }
        for (int i = 0; i < max_images; i++)
            if ((s = vision_train_state_new(&ts->vision[i], &tm->cfg.vision, max_patches, err))) {
                train_states_free(ts);
                return s;
            }
    }
    return ERGO_OK;
}

ergo_status train_forward(train_states *ts, const train_model *tm, const train_example *ex,
                          float tau, float *logp, int *n_logp, ergo_error *err) {
    if (ex->n_images > ts->max_images)
        return ergo_fail(err, ERGO_E_LIMIT, "example with %d images: the training states hold %d",
                         ex->n_images, ts->max_images);
    const int D = tm->cfg.text.hidden, U = tm->cfg.vision.merge * tm->cfg.vision.merge;
    int rows = 0;
    for (int i = 0; i < ex->n_images; i++) {
        const train_image *im = &ex->images[i];
        const int64_t patches = (int64_t)im->grid_t * im->grid_h * im->grid_w;
        if (patches > ts->max_patches || rows + patches / U > ts->max_vision_rows)
            return ergo_fail(err, ERGO_E_LIMIT, "image %d of %lld patches: the training states "
                             "hold %d per image", i, (long long)patches, ts->max_patches);
        ergo_status s = vision_train_forward(ts->vision[i], &tm->w, im->pixels, im->grid_t,
                                             im->grid_h, im->grid_w,
                                             ts->vision_rows + (size_t)rows * D, err);
        if (s) return s;
        ts->image_rows[i] = (int)(patches / U);
        rows += ts->image_rows[i];
    }
    ts->n_vision_rows = rows;
    ts->n_images = ex->n_images;
    train_sample s = ex->text;
    s.vision = rows ? ts->vision_rows : NULL;
    s.n_vision = rows;
    const lora_set *lora = tm->lora.linears ? &tm->lora : NULL;
    return text_train_forward(ts->text, &tm->w, lora, &s, tau, logp, n_logp, err);
}

void train_backward(train_states *ts, train_model *tm, const float *g) {
    const lora_set *lora = tm->lora.linears ? &tm->lora : NULL;
    const int need_vision = ts->n_vision_rows > 0 && ts->vision_trains;
    text_train_backward(ts->text, &tm->w, &tm->g, lora, g, need_vision ? ts->d_vision : NULL);
    if (!need_vision) return;
    /* each image's rows of d_vision back through its own saved pass */
    const int D = tm->cfg.text.hidden;
    int rows = 0;
    for (int i = 0; i < ts->n_images; i++) {
        vision_train_backward(ts->vision[i], &tm->w, &tm->g, ts->d_vision + (size_t)rows * D);
        rows += ts->image_rows[i];
    }
}
