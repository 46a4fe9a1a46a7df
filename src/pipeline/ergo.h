/*
 * ergo.h - ERGO's two-stage coarse-to-fine inference on one KV cache, and the plain
 * one-pass baseline. Mirrors ERGO's src/ergo/infer.py (and its evaluation's question
 * format) on transformers 4.56.2: stage 1 on the smart-resized image (Pillow
 * BICUBIC), the <zoom> box (zoom.h), the crop (Pillow LANCZOS), stage 2 with both
 * images. Stage 2 continues the stage-1 session: the system prompt, image 1 and the
 * stage-1 tokens are never encoded or prefilled again; the stage-1 tokens kept are
 * the generated ids (the reference re-tokenizes the decoded text; the two agree
 * whenever the generated ids are the tokenizer's own tokenization of that text).
 *
 * The original is decoded to RGB first (image_decode_file); the reference never
 * calls convert("RGB") and resizes non-RGB files (L, RGBA, P, CMYK) in their own
 * mode, so those can differ slightly.
 *
 * The model and its configs come from an engine (runtime/engine.h), the scratch
 * from a context over it (runtime/context.h); each run has its own session.
 *
 *   engine e;   engine_load(&e, dir, NULL, &err);
 *   context c;  context_init(&c, &e, &err);
 *   ergo_options o; ergo_options_default(&o);
 *   ergo_question q = {"What colour is the car?", NULL, 0, NULL};
 *   ergo_result r;  ergo_run(&c, &o, &img, &q, &r, &err);   // r.answer, r.s1, r.s2
 *   ergo_result_free(&r); context_free(&c); engine_free(&e);
 */
#ifndef ERGO_PIPELINE_ERGO_H
#define ERGO_PIPELINE_ERGO_H

#include <stdint.h>

#include "base/status.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "model/generate.h"
#include "model/session.h"
#include "pipeline/zoom.h"
#include "runtime/context.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

/* The prompt constants of ERGO's src/ergo/const.py, byte for byte. */
extern const char ergo_system_prompt[];
extern const char ergo_template1_suffix[]; /* TEMPLATE1 = "{Question}" + this */
extern const char ergo_template2_suffix[]; /* TEMPLATE2 = "{Question}" + this */

#define ERGO_FACTOR 28
#define ERGO_MIN_PIXELS (4 * 28 * 28)

typedef enum ergo_fallback {
    ERGO_FALLBACK_FULL,        /* the reference: the whole original, processor limits */
    ERGO_FALLBACK_DOWNSAMPLED, /* the stage-1 image again (its vision rows reused) */
} ergo_fallback;

/* A probe's replacement for the stage-2 image (eval --crop-probe): called with the
 * original and the stage-1 image after the box is read; *out (not initialised) gets
 * the image stage 2 sees instead of the crop or fallback. */
typedef ergo_status (*ergo_stage2_image_fn)(void *ctx, const image *original,
                                            const image *stage1_image, image *out,
                                            ergo_error *err);
struct ergo_result;

typedef struct ergo_options {
    int max_vision_tokens;   /* stage-1 budget: MAX_PIXELS = this * 28 * 28 (1280) */
    int max_new_tokens;      /* per stage (1024) */
    ergo_fallback fallback;
    const char *stage1_text; /* debugging aid: this text instead of generating stage 1 */
    int keep_logits;         /* keep the logits after the stage-2 prompt (tests) */
    /* Benchmark aids (random weights never name a box nor stop on their own):
     * fixed_tokens = exact new tokens of stage 1, stage 2, baseline (0 = normal stops);
     * box_text = the text the box is read from instead of the stage-1 answer. */
    int fixed_tokens[3];
    const char *box_text;
    generate_text_fn on_text; /* streams the text of both stages (may be NULL) */
    void *on_text_ctx;
    ergo_stage2_image_fn stage2_image; /* NULL: the crop / fallback (the method) */
    void *stage2_image_ctx;
    /* Called once stage 1 is done and the box (or the fallback) is decided, before
     * stage 2 starts (may be NULL; gets on_text_ctx): the CLI prints the box line
     * between the streamed stages and times the stages. */
    void (*on_stage1)(void *ctx, const struct ergo_result *r);
} ergo_options;

void ergo_options_default(ergo_options *o);

/* A question as the reference evaluation builds it: stage 1 sees the bare question;
 * stage 2 sees question + "\n" + options joined by "\n" + "\n" + postfix when there
 * are options or a postfix, else the bare question (as infer.py does). */
typedef struct ergo_question {
    const char *question;
    const char *const *options;
    int n_options;
    const char *postfix;     /* may be NULL */
} ergo_question;

typedef struct ergo_stage {
    int ran;
    int image_w, image_h;    /* the image the vision encoder saw (after the processor) */
    int grid_t, grid_h, grid_w;
    int64_t vision_tokens;   /* this stage's image */
    int processor_resized;   /* the processor resized the image it was given */
    int vision_reused;       /* no encode: the stage-1 rows (downsampled fallback) */
    int vision_encodes;      /* vision_encode calls in this stage */
    int prompt_tokens;       /* tokens prefilled by this stage's prompt */
    int context_tokens;      /* session length after this stage's prompt */
    tok_ids ids;             /* generated ids (the stop id included) */
    char *text;              /* their text, special tokens skipped (NUL-terminated) */
    stop_reason reason;
    double image_ms;         /* resize/crop + processor */
    double vision_ms, prefill_ms, decode_ms;
} ergo_stage;

typedef enum ergo_view {
    ERGO_VIEW_CROP,          /* stage 2 saw the crop of the box */
    ERGO_VIEW_FALLBACK_FULL, /* no valid box: the whole original */
    ERGO_VIEW_FALLBACK_DOWNSAMPLED, /* no valid box: the stage-1 image again */
} ergo_view;

const char *ergo_view_name(ergo_view v); /* "crop", "fallback_full", "fallback_downsampled" */

typedef struct ergo_result {
    int baseline;            /* 1: one pass (s1 only) */
    int width, height;       /* the original */
    int w1, h1;              /* the stage-1 image */
    double sx, sy;           /* width / w1, height / h1 */
    zoom_status box_status;  /* ok, none, invalid */
    zoom_box box;            /* as parsed (stage-1 pixel frame) */
    zoom_crop crop;          /* in the original; crop.why when invalid */
    ergo_view view;
    image stage1_image;      /* the downsampled original */
    image stage2_image;      /* the resized crop, or the image the fallback gave */
    ergo_stage s1, s2;
    char *answer;            /* from the last stage */
    int stage1_retokenizes;  /* 1 when tokenizing s1.text gives back the kept ids */
    tok_ids conversation;    /* every token up to the end of the last prompt */
    float *stage2_logits;    /* (V) with keep_logits */
} ergo_result;

/* ERGO's two stages on an RGB original, on c (and through it c->e, which needs a
 * tokenizer and a chat template: engine_load). r must not be initialised; free it
 * with ergo_result_free, also after a failure. */
ergo_status ergo_run(context *c, const ergo_options *o, const image *original,
                     const ergo_question *q, ergo_result *r, ergo_error *err);

/* The plain model: one user turn [whole original, full question] with the chat
 * template's default system message, the image at the processor's own limits. */
ergo_status ergo_run_baseline(context *c, const ergo_options *o, const image *original,
                              const ergo_question *q, ergo_result *r, ergo_error *err);

void ergo_result_free(ergo_result *r);

/* The token ids of ERGO's prompts, appended to ids with the chat state cs advanced,
 * shared by ergo_run and GRPO's rollouts (train/rollout.h) so both see the same
 * tokens. Stage 1: the system prompt, user [image of vision_tokens pads,
 * question + TEMPLATE1], the generation prompt. Stage 2: the closing of the stage-1
 * answer ("<|im_end|>\n"), user [image, TEMPLATE2(full question)], the generation
 * prompt. */
ergo_status ergo_stage1_prompt(const engine *e, chat_state *cs, const char *question,
                               int64_t vision_tokens, tok_ids *ids, ergo_error *err);
ergo_status ergo_stage2_prompt(const engine *e, chat_state *cs, const ergo_question *q,
                               int64_t vision_tokens, tok_ids *ids, ergo_error *err);

/* extract_answer_text: the stripped text between the first <answer> and the next
 * </answer> (or the end); without <answer>, the whole text as it is. malloc'd. */
char *ergo_extract_answer(const char *text);

/* The stage-2 question (see ergo_question). malloc'd, NULL when out of memory. */
char *ergo_full_question(const ergo_question *q);

#endif
