/*
 * rollout.c - G two-turn rollouts of one item on the scheduler (rollout.h).
 */
#include "rollout.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "runtime/scheduler.h"

void rollout_config_default(rollout_config *rc) {
    memset(rc, 0, sizeof *rc);
    rc->group = 8;
    rc->max_vision_tokens = 1280;
    rc->max_new_tokens[0] = rc->max_new_tokens[1] = 512;
    rc->sampling = (sampler_config){1, 1.0f, 0, 1.0f, 0.0f, 1.0f, 0};
}

static void rollout_free(rollout *r) {
    free(r->ids);
    for (int k = 0; k < 3; k++) free(r->pos[k]);
    free(r->s1_text);
    free(r->s2_text);
}

void rollout_group_free(rollout_group *g) {
    for (int i = 0; g->r && i < g->n; i++) rollout_free(&g->r[i]);
    free(g->r);
    for (int i = 0; g->crops && i < g->n_crops; i++) {
        image_free(&g->crops[i].img);
        preprocess_output_free(&g->crops[i].px);
        context_image_free(&g->crops[i].enc);
    }
    free(g->crops);
    image_free(&g->stage1_image);
    preprocess_output_free(&g->px1);
    memset(g, 0, sizeof *g);
}

/* A stream per (item seed, rollout, stage): splitmix64 of the three. */
static uint64_t stream_seed(uint64_t seed, int k, int stage) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(2 * k + stage + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static char *dup_text(const tok_text *t) {
    const size_t n = t->s ? t->n : 0;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (n) memcpy(s, t->s, n);
    s[n] = '\0';
    return s;
}

/* Runs every submitted request to its end. */
static ergo_status run_all(scheduler *sc, sched_request *req, int n, ergo_error *err) {
    while (sched_active(sc)) {
        ergo_status s = sched_tick(sc, err);
        if (s) return s;
    }
    for (int i = 0; i < n; i++)
        if (req[i].status) {
            *err = req[i].err;
            return req[i].status;
        }
    return ERGO_OK;
}

/* *index = the crop of a box (or the whole original), shared with an earlier
 * rollout's when the rectangle is the same. */
static ergo_status crop_for(context *c, rollout_group *g, const image *original,
                            const zoom_crop *zc, int whole, int *index, ergo_error *err) {
    for (int i = 0; i < g->n_crops; i++) {
        const zoom_crop *o = &g->crops[i].crop;
        if (o->x1 == zc->x1 && o->y1 == zc->y1 && o->x2 == zc->x2 && o->y2 == zc->y2 &&
            o->out_w == zc->out_w && o->out_h == zc->out_h) {
            *index = i;
            return ERGO_OK;
        }
    }
    rollout_crop *rc = &g->crops[g->n_crops];
    memset(rc, 0, sizeof *rc);
    rc->crop = *zc;
    ergo_status s;
    if (whole) {
        s = image_crop(&rc->img, original, 0, 0, original->width, original->height, err);
    } else {
        image cut = {0};
        s = image_crop(&cut, original, zc->x1, zc->y1, zc->x2, zc->y2, err);
        if (!s) s = image_resize(&rc->img, &cut, zc->out_w, zc->out_h, IMAGE_FILTER_LANCZOS, err);
        image_free(&cut);
    }
    if (!s) s = preprocess_image(&c->e->pc, &rc->img, &rc->px, err);
    if (!s) s = context_encode_image(c, &rc->img, NULL, &rc->enc, err);
    *index = g->n_crops++; /* counted even on failure so rollout_group_free releases it */
    return s;
}

/* The finished conversation of a rollout: the session's tokens and positions, then
 * the last answer's ids the session does not hold (its stop id, or a token owed
 * when the length limit cut it). */
static ergo_status keep_sequence(rollout *r, const session *ss, const tok_ids *tail_ids,
                                 int tail_from, ergo_error *err) {
    const int extra = tail_ids ? (int)tail_ids->n - tail_from : 0;
    const int n = ss->n_cached + (extra > 0 ? extra : 0);
    r->ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int k = 0; k < 3; k++) r->pos[k] = malloc(sizeof(int32_t) * (size_t)n);
    if (!r->ids || !r->pos[0] || !r->pos[1] || !r->pos[2])
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory for a rollout of %d tokens", n);
    memcpy(r->ids, ss->tokens, sizeof(int32_t) * (size_t)ss->n_cached);
    for (int k = 0; k < 3; k++) memcpy(r->pos[k], ss->pos[k], sizeof(int32_t) * (size_t)ss->n_cached);
    /* text tokens after the session's end continue every axis from its running max */
    int32_t p = ss->next_pos;
    for (int i = ss->n_cached; i < n; i++, p++) {
        r->ids[i] = tail_ids->v[tail_from + (i - ss->n_cached)];
        for (int k = 0; k < 3; k++) r->pos[k][i] = p;
    }
    r->n = n;
    return ERGO_OK;
}

ergo_status rollout_group_run(context *c, const rollout_config *rc, const image *original,
                              const ergo_question *q, uint64_t seed, rollout_group *g,
                              ergo_error *err) {
    memset(g, 0, sizeof *g);
    const engine *e = c->e;
    const int G = rc->group;
    if (G < 1 || G > 1024 || rc->max_new_tokens[0] < 1 || rc->max_new_tokens[1] < 1)
        return ergo_fail(err, ERGO_E_ARG, "rollouts: group %d, max new tokens %d / %d", G,
                         rc->max_new_tokens[0], rc->max_new_tokens[1]);
    const int64_t max_pixels = (int64_t)rc->max_vision_tokens * ERGO_FACTOR * ERGO_FACTOR;
    const size_t V = (size_t)e->m.config.text.vocab_size;
    g->width = original->width;
    g->height = original->height;
    g->r = calloc((size_t)G, sizeof *g->r);
    g->crops = calloc((size_t)G, sizeof *g->crops);
    session *ss = calloc((size_t)G + 1, sizeof *ss); /* ss[G]: the shared stage-1 prompt */
    int *ss_ready = calloc((size_t)G + 1, sizeof *ss_ready);
    sched_request *req = calloc((size_t)G, sizeof *req);
    generate_result *res = calloc((size_t)G, sizeof *res);
    float *logits = malloc(sizeof(float) * V * (size_t)G);
    tok_ids *piece = calloc((size_t)G, sizeof *piece);
    chat_state *cs = calloc((size_t)G, sizeof *cs);
    tok_ids prompt = {0};
    chat_state cs1 = {0};
    context_image im1 = {0};
    scheduler sc;
    sched_init(&sc, &e->m, &c->st, &c->pool, e->prefill_chunk);
    ergo_status s = ERGO_OK;
    if (!g->r || !g->crops || !ss || !ss_ready || !req || !res || !logits || !piece || !cs) {
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for %d rollouts", G);
        goto done;
    }
    g->n = G;

    /* stage 1: one image, one prompt prefill (all but its last token), G forks */
    double t0 = now_ms();
    s = smart_resize_ergo(g->height, g->width, ERGO_FACTOR, ERGO_MIN_PIXELS, max_pixels, &g->h1,
                          &g->w1, err);
    if (!s) s = image_resize(&g->stage1_image, original, g->w1, g->h1, IMAGE_FILTER_BICUBIC, err);
    if (!s) s = preprocess_image(&e->pc, &g->stage1_image, &g->px1, err);
    if (!s) s = context_encode_image(c, &g->stage1_image, NULL, &im1, err);
    if (!s) s = ergo_stage1_prompt(e, &cs1, q->question, im1.tokens, &prompt, err);
    if (!s && (s = context_session_init(c, &ss[G], err)) == ERGO_OK) ss_ready[G] = 1;
    if (s) goto done;
    g->prompt_tokens = (int)prompt.n;
    {
        context_piece p = {prompt.v, (int)prompt.n - 1, &im1.grid, 1, im1.rows};
        context_prefill_out pf;
        if ((s = context_prefill(c, &ss[G], &p, &pf, err))) goto done;
    }
    for (int k = 0; k < G; k++) {
        if ((s = session_fork(&ss[k], &ss[G], err))) goto done;
        ss_ready[k] = 1;
        generate_params gp = {rc->sampling, rc->max_new_tokens[0], e->stop_ids, e->n_stop_ids,
                              NULL, 0};
        gp.sampling.seed = stream_seed(seed, k, 0);
        req[k] = (sched_request){.s = &ss[k], .tokens = prompt.v + prompt.n - 1, .n_tokens = 1,
                                 .tok = e->tok, .params = gp, .logits = logits + V * (size_t)k,
                                 .out = &res[k]};
        if ((s = sched_submit(&sc, &req[k], err))) goto done;
    }
    if ((s = run_all(&sc, req, G, err))) goto done;
    g->ms_stage1 = now_ms() - t0;

    /* the boxes, the crops, the stage-2 pieces */
    t0 = now_ms();
    const double sx = (double)g->width / g->w1, sy = (double)g->height / g->h1;
    int n2 = 0;
    for (int k = 0; k < G; k++) {
        rollout *r = &g->r[k];
        r->reason[0] = res[k].reason;
        r->crop_index = -1;
        if (!(r->s1_text = dup_text(&res[k].text)) || !(r->s2_text = calloc(1, 1))) {
            s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
            goto done;
        }
        g->generated_tokens += (int64_t)res[k].tokens.n;
        r->s1_begin = g->prompt_tokens;
        const char *box_text = rc->box_text ? rc->box_text : r->s1_text;
        r->box_status = zoom_parse(box_text, strlen(box_text), &r->box);
        if (r->box_status == ZOOM_OK)
            r->box_status = zoom_map(&r->box, sx, sy, g->width, g->height, ERGO_FACTOR,
                                     ERGO_MIN_PIXELS, max_pixels, &r->crop);
        if (r->box_status == ZOOM_OK)
            r->area_ratio = (double)(r->crop.x2 - r->crop.x1) * (r->crop.y2 - r->crop.y1) /
                            ((double)g->width * g->height);
        const int whole = r->box_status != ZOOM_OK;
        if (whole && !rc->fallback_full) {
            /* no stage 2: the sequence ends with answer 1 (its stop id when it stopped) */
            const int kept = ss[k].n_cached - (g->prompt_tokens - 1) - 1; /* answer ids held */
            if ((s = keep_sequence(r, &ss[k], &res[k].tokens, kept, err))) goto done;
            r->s1_end = r->s2_begin = r->s2_end = r->n;
            continue;
        }
        zoom_crop whole_crop = {0, 0, g->width, g->height, g->width, g->height, 0, ""};
        int ci;
        if ((s = crop_for(c, g, original, whole ? &whole_crop : &r->crop, whole, &ci, err)))
            goto done;
        r->crop_index = ci;
        r->stage2 = 1;
        /* [the answer's ids the session does not hold but the conversation keeps],
         * "<|im_end|>\n", user [crop, TEMPLATE2], generation prompt */
        const int held = ss[k].n_cached - (g->prompt_tokens - 1) - 1;
        const int stopped = res[k].reason == STOP_EOS;
        for (int i = held; i < (int)res[k].tokens.n - stopped; i++)
            if ((s = tok_ids_push(&piece[k], res[k].tokens.v[i], err))) goto done;
        r->s1_end = ss[k].n_cached + (int)piece[k].n + 1; /* up to the closing <|im_end|> */
        cs[k] = cs1;
        const rollout_crop *cr = &g->crops[ci];
        if ((s = ergo_stage2_prompt(e, &cs[k], q, cr->enc.tokens, &piece[k], err))) goto done;
        generate_result_free(&res[k]);
        memset(&res[k], 0, sizeof res[k]);
        generate_params gp = {rc->sampling, rc->max_new_tokens[1], e->stop_ids, e->n_stop_ids,
                              NULL, 0};
        gp.sampling.seed = stream_seed(seed, k, 1);
        req[k] = (sched_request){.s = &ss[k], .tokens = piece[k].v, .n_tokens = (int)piece[k].n,
                                 .grids = &cr->enc.grid, .n_images = 1, .vision = cr->enc.rows,
                                 .tok = e->tok, .params = gp, .logits = logits + V * (size_t)k,
                                 .out = &res[k]};
        if ((s = sched_submit(&sc, &req[k], err))) goto done;
        n2++;
    }
    if (n2 && (s = run_all(&sc, req, G, err))) goto done;
    for (int k = 0; k < G; k++) {
        rollout *r = &g->r[k];
        if (!r->stage2) continue;
        r->reason[1] = res[k].reason;
        free(r->s2_text);
        if (!(r->s2_text = dup_text(&res[k].text))) {
            s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
            goto done;
        }
        g->generated_tokens += (int64_t)res[k].tokens.n;
        r->s2_begin = ss[k].n_cached - (int)(res[k].tokens.n > 0 ? res[k].tokens.n - 1 : 0);
        /* the session holds the prompt piece and every answer-2 id but the last one
         * (the stop id, or the one the length limit left owed) */
        const int held = ss[k].n_cached - r->s2_begin;
        if ((s = keep_sequence(r, &ss[k], &res[k].tokens, held, err))) goto done;
        r->s2_end = r->n;
    }
    g->ms_stage2 = now_ms() - t0;

done:
    sched_free(&sc);
    for (int k = 0; ss && k <= G; k++)
        if (ss_ready[k]) session_free(&ss[k]);
    for (int k = 0; res && k < G; k++) generate_result_free(&res[k]);
    for (int k = 0; piece && k < G; k++) tok_ids_free(&piece[k]);
    free(ss), free(ss_ready), free(req), free(res), free(logits), free(piece), free(cs);
    tok_ids_free(&prompt);
    context_image_free(&im1);
    return s;
}
