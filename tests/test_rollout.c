/*
 * test_rollout.c - GRPO's two-turn rollouts (train/rollout.h) against the inference
 * path they must reproduce: greedy rollouts are ergo_run's conversation token for
 * token (ergo_run itself is checked against transformers in test_pipeline.c), the
 * positions are mrope_positions' of the final sequence, G rollouts decoded in one
 * batch equal each decoded alone, sampling is reproducible from the seed and
 * differs across the group, and the answer spans cover what GRPO's mask needs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "image/image.h"
#include "io/random_checkpoint.h"
#include "model/mrope.h"
#include "pipeline/ergo.h"
#include "runtime/context.h"
#include "runtime/engine.h"
#include "train/rollout.h"

#define IM_END 151645

static void fixture(char *out, size_t n, const char *rel) {
    snprintf(out, n, "%s/%s", fixtures_dir(), rel);
}

static int same_ids(const int32_t *a, const int32_t *b, int n) {
    return n >= 0 && !memcmp(a, b, sizeof(int32_t) * (size_t)n);
}

/* The M-RoPE ids of a whole sequence, from scratch. */
static void check_positions(const engine *e, const rollout_group *g, const rollout *r,
                            const char *what) {
    mrope_grid grids[2];
    int n_images = 0;
    grids[n_images++] = (mrope_grid){g->px1.grid_t, g->px1.grid_h, g->px1.grid_w};
    if (r->stage2) {
        const preprocess_output *px = &g->crops[r->crop_index].px;
        grids[n_images++] = (mrope_grid){px->grid_t, px->grid_h, px->grid_w};
    }
    int32_t *pos = malloc(sizeof(int32_t) * 3 * (size_t)r->n), next = 0;
    ergo_error err = {0};
    mrope_ids mi = mrope_ids_from_config(&e->m.config);
    ergo_status s = mrope_positions(&mi, r->ids, r->n, -1, grids, n_images, &next, pos, r->n, &err);
    CHECK(s == ERGO_OK, "%s: mrope_positions: %s", what, err.msg);
    for (int k = 0; !s && k < 3; k++)
        CHECK(same_ids(pos + (size_t)k * r->n, r->pos[k], r->n), "%s: position axis %d differs", what, k);
    free(pos);
}

/* Greedy rollouts = ergo_run (greedy, the whole original when there is no box;
 * box_text forces the crop path). */
static void check_greedy(context *c, const image *orig, const char *box_text) {
    ergo_question q = {"What is in the picture?", NULL, 0, NULL};
    ergo_options o;
    ergo_options_default(&o);
    o.max_vision_tokens = 64;
    o.max_new_tokens = 7;
    o.fallback = ERGO_FALLBACK_FULL;
    o.box_text = box_text;
    ergo_result ref;
    ergo_error err = {0};
    ergo_status s = ergo_run(c, &o, orig, &q, &ref, &err);
    CHECK(s == ERGO_OK, "ergo_run: %s", err.msg);
    rollout_config rc;
    rollout_config_default(&rc);
    rc.group = 3;
    rc.max_vision_tokens = 64;
    rc.max_new_tokens[0] = rc.max_new_tokens[1] = o.max_new_tokens;
    /* ergo_run decodes as the reference evaluation does: greedy under the generation
     * config (its repetition penalty included) */
    sampler_config_from_generation(&rc.sampling, &c->e->m.generation);
    rc.sampling.do_sample = 0;
    rc.fallback_full = 1;
    rc.box_text = box_text;
    rollout_group g;
    s = s ? s : rollout_group_run(c, &rc, orig, &q, 7, &g, &err);
    CHECK(s == ERGO_OK, "greedy rollouts: %s", err.msg);
    if (!s) {
        CHECK_EQ_INT(g.n, 3, "group size");
        CHECK(g.w1 == ref.w1 && g.h1 == ref.h1, "stage-1 size %dx%d, ergo_run %dx%d", g.w1, g.h1,
              ref.w1, ref.h1);
        for (int k = 0; k < g.n; k++) {
            const rollout *r = &g.r[k];
            char what[64];
            snprintf(what, sizeof what, "greedy rollout %d", k);
            const int conv = (int)ref.conversation.n;
            CHECK(r->stage2 == 1 && r->n == conv + (int)ref.s2.ids.n,
                  "%s: %d tokens, ergo_run %d + %zu", what, r->n, conv, ref.s2.ids.n);
            if (r->n != conv + (int)ref.s2.ids.n) continue;
            CHECK(same_ids(r->ids, ref.conversation.v, conv), "%s: the conversation differs", what);
            CHECK(same_ids(r->ids + conv, ref.s2.ids.v, (int)ref.s2.ids.n),
                  "%s: answer 2 differs from ergo_run's", what);
            CHECK_EQ_STR(r->s1_text, ref.s1.text, "greedy stage-1 text");
            CHECK_EQ_STR(r->s2_text, ref.s2.text, "greedy stage-2 text");
            /* spans: answer 1 = its generated ids then the closing <|im_end|> */
            const int n1 = (int)ref.s1.ids.n - (ref.s1.reason == STOP_EOS);
            CHECK(r->s1_begin == g.prompt_tokens && r->s1_end == r->s1_begin + n1 + 1,
                  "%s: answer 1 span [%d, %d), prompt %d, %d ids", what, r->s1_begin, r->s1_end,
                  g.prompt_tokens, n1);
            CHECK(same_ids(r->ids + r->s1_begin, ref.s1.ids.v, n1) && r->ids[r->s1_end - 1] == IM_END,
                  "%s: answer 1's tokens / closing", what);
            CHECK(r->s2_begin == conv && r->s2_end == r->n, "%s: answer 2 span [%d, %d) of %d", what,
                  r->s2_begin, r->s2_end, r->n);
            CHECK(r->s1_end < r->s2_begin, "%s: the stage-2 prompt lies between the answers", what);
            check_positions(c->e, &g, r, what);
        }
        CHECK(g.n_crops == 1, "greedy: %d distinct stage-2 images (one expected)", g.n_crops);
        if (box_text) {
            const rollout *r = &g.r[0];
            CHECK(r->box_status == ZOOM_OK && ref.box_status == ZOOM_OK &&
                      r->crop.x1 == ref.crop.x1 && r->crop.y1 == ref.crop.y1 &&
                      r->crop.x2 == ref.crop.x2 && r->crop.y2 == ref.crop.y2,
                  "forced box: crop (%d,%d)-(%d,%d), ergo_run (%d,%d)-(%d,%d)", r->crop.x1, r->crop.y1,
                  r->crop.x2, r->crop.y2, ref.crop.x1, ref.crop.y1, ref.crop.x2, ref.crop.y2);
            const double want = (double)(ref.crop.x2 - ref.crop.x1) * (ref.crop.y2 - ref.crop.y1) /
                                ((double)ref.width * ref.height);
            CHECK(r->area_ratio == want && want > 0 && want < 1, "area ratio %g, want %g",
                  r->area_ratio, want);
            CHECK(ref.view == ERGO_VIEW_CROP, "ergo_run saw the crop");
            const image *ci = &g.crops[0].img, *ri = &ref.stage2_image;
            CHECK(ci->width == ri->width && ci->height == ri->height &&
                      !memcmp(ci->rgb, ri->rgb, (size_t)ci->width * ci->height * 3),
                  "the crop %dx%d differs from ergo_run's %dx%d", ci->width, ci->height, ri->width,
                  ri->height);
        }
        printf("  rollout greedy: %d rollouts of %d tokens = ergo_run's (prompt %d, answer 1 [%d, %d), "
               "answer 2 [%d, %d))\n", g.n, g.r[0].n, g.prompt_tokens, g.r[0].s1_begin, g.r[0].s1_end,
               g.r[0].s2_begin, g.r[0].s2_end);
        rollout_group_free(&g);
    }
    ergo_result_free(&ref);
}

/* Sampled: reproducible, diverse, batched = alone; no box ends after stage 1. */
static void check_sampled(context *c, const image *orig) {
    ergo_question q = {"Where is the cat?", NULL, 0, NULL};
    rollout_config rc;
    rollout_config_default(&rc);
    rc.group = 4;
    rc.max_vision_tokens = 64;
    rc.max_new_tokens[0] = rc.max_new_tokens[1] = 8;
    rc.sampling.temperature = 1.0f;
    rollout_group a, b, one, other;
    ergo_error err = {0};
    ergo_status s = rollout_group_run(c, &rc, orig, &q, 11, &a, &err);
    CHECK(s == ERGO_OK, "sampled rollouts: %s", err.msg);
    if (s) return;
    if (!(s = rollout_group_run(c, &rc, orig, &q, 11, &b, &err))) {
        for (int k = 0; k < rc.group; k++)
            CHECK(a.r[k].n == b.r[k].n && same_ids(a.r[k].ids, b.r[k].ids, a.r[k].n),
                  "rollout %d differs between two runs with the same seed", k);
        rollout_group_free(&b);
    }
    int distinct = 0;
    for (int k = 1; k < rc.group; k++)
        distinct += a.r[k].n != a.r[0].n || !same_ids(a.r[k].ids, a.r[0].ids, a.r[0].n);
    CHECK(distinct >= 2, "sampling at temperature 1: only %d of %d rollouts differ from the first",
          distinct, rc.group - 1);
    rc.group = 1; /* rollout 0 alone draws from the same stream as in the group */
    if (!(s = rollout_group_run(c, &rc, orig, &q, 11, &one, &err))) {
        CHECK(one.r[0].n == a.r[0].n && same_ids(one.r[0].ids, a.r[0].ids, a.r[0].n),
              "rollout 0 decoded alone differs from rollout 0 of the batched group");
        rollout_group_free(&one);
    }
    if (!(s = rollout_group_run(c, &rc, orig, &q, 12, &other, &err))) {
        CHECK(other.r[0].n != a.r[0].n || !same_ids(other.r[0].ids, a.r[0].ids, a.r[0].n),
              "another seed gives the same rollout");
        rollout_group_free(&other);
    }
    CHECK(s == ERGO_OK, "rollouts: %s", err.msg);
    /* random weights name no box: each rollout ends with answer 1 */
    for (int k = 0; k < a.n; k++) {
        const rollout *r = &a.r[k];
        CHECK(r->box_status != ZOOM_OK && !r->stage2 && r->crop_index == -1 && r->s1_end == r->n &&
                  r->s2_begin == r->n && r->s2_end == r->n && r->area_ratio == 0.0,
              "no-box rollout %d: stage2 %d, spans [%d,%d) [%d,%d) of %d", k, r->stage2, r->s1_begin,
              r->s1_end, r->s2_begin, r->s2_end, r->n);
        CHECK(r->n - r->s1_begin == 8 || r->ids[r->n - 1] == IM_END || r->ids[r->n - 1] == 151643,
              "rollout %d: answer 1 has %d tokens and no stop id", k, r->n - r->s1_begin);
        check_positions(c->e, &a, r, "sampled rollout");
    }
    CHECK(a.n_crops == 0, "no box, no fallback: %d crops encoded", a.n_crops);
    rollout_group_free(&a);

    rollout_group bad;
    rc.group = 0;
    CHECK(rollout_group_run(c, &rc, orig, &q, 1, &bad, &err) == ERGO_E_ARG, "group 0 refused");
    rollout_group_free(&bad);
}

void test_rollout(void) {
    char casep[1024], dir[1024], img[1024];
    ergo_error err = {0};
    fixture(casep, sizeof casep, "text/cases/lm_tied_new.json");
    fixture(img, sizeof img, "pipeline/two_stage.original.png");
    snprintf(dir, sizeof dir, "%s/rollout_ck", scratch_dir());
    ckpt_case cc;
    int ok = ckpt_case_load(&cc, casep, &err) == ERGO_OK;
    if (ok) {
        ok = random_checkpoint_write(&cc, dir, "assets/qwen2.5-vl-tokenizer", &err) == ERGO_OK;
        ckpt_case_free(&cc);
    }
    engine *e = calloc(1, sizeof *e);
    context *c = calloc(1, sizeof *c);
    image orig = {0};
    if (ok) ok = engine_load(e, dir, NULL, &err) == ERGO_OK;
    if (ok) ok = context_init(c, e, &err) == ERGO_OK;
    if (ok) ok = image_decode_file(&orig, img, NULL, &err) == ERGO_OK;
    CHECK(ok, "rollout engine: %s", err.msg);
    if (ok) {
        check_greedy(c, &orig, NULL);
        check_greedy(c, &orig, "<zoom>[8, 6, 60, 40]</zoom>");
        check_sampled(c, &orig);
    }
    image_free(&orig);
    context_free(c);
    engine_free(e);
    free(c);
    free(e);
}
