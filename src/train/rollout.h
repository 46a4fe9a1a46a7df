/*
 * rollout.h - GRPO's two-turn rollouts (ergo-training.md "One rollout"): for one
 * (image, question) item, G conversations sampled by the current policy with the
 * inference engine, exactly as ergo_run would run them but sampled.
 *
 * Stage 1: the downsampled image (ERGO's smart_resize under max_vision_tokens,
 * Pillow BICUBIC) is encoded once and the stage-1 prompt (ergo_stage1_prompt) is
 * prefilled once; the G rollouts fork that session (sharing its KV blocks) and
 * decode as one batch on the scheduler (runtime/scheduler.h), each with its own
 * sampler seed. Each stage-1 answer's box is parsed and mapped as in inference
 * (zoom_parse, zoom_map), the crop cut and LANCZOS-resized (identical boxes share
 * one crop and one encode); no box means the rollout stops after stage 1 (it can
 * earn no region or box reward, and stage 2 would answer about a fallback the
 * method never asked for) unless fallback_full is set. Stage 2 appends
 * ergo_stage2_prompt with the crop to each rollout's own session and the G
 * continuations decode as one batch again.
 *
 * Sampling is always explicit (rollout_config.sampling: do_sample, temperature,
 * top_p, top_k): generation_config.json's top_k 1 would make every rollout of a
 * group the same.
 *
 * A rollout keeps what training needs: the whole token sequence with its M-RoPE
 * positions (the session's own), the spans of the two generated answers, the
 * images' pixel patches (the processor's output, for the vision tower's training
 * pass), and what the rewards need: the texts, the box, the crop.
 *
 *   rollout_config rc;  rollout_config_default(&rc);  rc.group = 8;
 *   rollout_group g;
 *   rollout_group_run(&ctx, &rc, &original, &question, item_seed, &g, &err);
 *   for (k..) use g.r[k].ids, g.r[k].s1_text, g.r[k].crop_image, ...
 *   rollout_group_free(&g);
 */
#ifndef ERGO_TRAIN_ROLLOUT_H
#define ERGO_TRAIN_ROLLOUT_H

#include <stdint.h>

#include "base/status.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "model/generate.h"
#include "model/sample.h"
#include "pipeline/ergo.h"
#include "pipeline/zoom.h"
#include "runtime/context.h"

typedef struct rollout_config {
    int group;                  /* G rollouts per item (8) */
    int max_vision_tokens;      /* stage-1 budget (1280), as ergo_options */
    int max_new_tokens[2];      /* per stage (512, 512) */
    sampler_config sampling;    /* do_sample 1, temperature 1, top_p 1, top_k 0 */
    int fallback_full;          /* 1: a rollout without a box runs stage 2 on the whole
                                   original (the evaluation's fallback); 0 (default):
                                   it ends after stage 1 */
    const char *box_text;       /* tests and benchmarks (random weights name no box): the
                                   box is read from this text instead of each answer 1 */
} rollout_config;

void rollout_config_default(rollout_config *rc);

typedef struct rollout {
    int32_t *ids;               /* (n) the conversation: prompt, answer 1, stage-2 prompt,
                                   answer 2 (its stop id included when it stopped) */
    int32_t *pos[3];            /* (n) each: M-RoPE t, h, w ids of every token */
    int n;
    int s1_begin, s1_end;       /* [begin, end): answer 1's tokens incl. its <|im_end|> */
    int s2_begin, s2_end;       /* answer 2's; s2_begin == s2_end == n1 without stage 2 */
    char *s1_text, *s2_text;    /* special tokens skipped; s2_text "" without stage 2 */
    stop_reason reason[2];
    zoom_status box_status;     /* ZOOM_OK when the box parsed and mapped */
    zoom_box box;               /* as parsed (stage-1 pixel frame) */
    zoom_crop crop;             /* in the original */
    double area_ratio;          /* crop area / original area (0 without a box) */
    int stage2;                 /* stage 2 ran */
    int crop_index;             /* index into the group's crops, -1 without stage 2 */
} rollout;

/* One distinct stage-2 image of a group (boxes that map to the same crop share it). */
typedef struct rollout_crop {
    zoom_crop crop;             /* the rectangle (the whole original for the fallback) */
    image img;                  /* what stage 2 saw: the crop after LANCZOS */
    preprocess_output px;       /* its patches */
    context_image enc;          /* its vision rows */
} rollout_crop;

typedef struct rollout_group {
    int width, height;          /* the original */
    int w1, h1;                 /* the stage-1 image */
    image stage1_image;
    preprocess_output px1;      /* the stage-1 image's patches */
    int prompt_tokens;          /* the stage-1 prompt every rollout starts with */
    rollout *r;                 /* (n) */
    int n;
    rollout_crop *crops;        /* (n_crops) */
    int n_crops;
    int64_t generated_tokens;   /* both stages, all rollouts */
    double ms_stage1, ms_stage2; /* wall time of each stage's batch (with encodes) */
} rollout_group;

/* G rollouts of one item on context c (an engine with tokenizer and template). seed
 * makes the group reproducible: rollout k of stage s samples with its own stream
 * derived from (seed, k, s). out must not be initialised; free it with
 * rollout_group_free, also after a failure. */
ergo_status rollout_group_run(context *c, const rollout_config *rc, const image *original,
                              const ergo_question *q, uint64_t seed, rollout_group *out,
                              ergo_error *err);
void rollout_group_free(rollout_group *g);

#endif
