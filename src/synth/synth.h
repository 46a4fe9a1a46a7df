/*
 * synth.h - "landmark tag", a synthetic high-resolution visual-search task
 * (shared/spec/training.md section 5.2): each image holds a few large coloured
 * shapes (landmarks) visible at any resolution, each with a small white tag below it
 * carrying a short code in a built-in 5x7 bitmap font, plus decoy tags attached to
 * nothing. The question names a landmark ("the red circle") and asks for its code as
 * a 4-option multiple choice. The codes are legible at full resolution and not at
 * ERGO's stage-1 budget (64 vision tokens: 1344 -> 224, /6); legibility.c measures it.
 *
 * Everything is a pure function of (config, seed, split, index): sample i draws from
 * its own counter-based stream (base/rng.h), so it does not depend on the count or
 * on the other samples, and a data set is byte-identical from run to run.
 *
 *   synth_config c; synth_config_default(&c);
 *   synth_sample s;
 *   synth_generate(&c, 42, SYNTH_TEST, 0, &s, &err);   // s.img, s.text, s.label, ...
 *   synth_sample_free(&s);
 *   synth_write(&c, "data/vstar_bench", 42, SYNTH_TEST, 200, NULL, NULL, &err);
 */
#ifndef ERGO_SYNTH_H
#define ERGO_SYNTH_H

#include <stdint.h>

#include "base/status.h"
#include "image/image.h"

#define SYNTH_MAX_LANDMARKS 8 /* one per colour */
#define SYNTH_MAX_DECOYS 8
#define SYNTH_MAX_TAGS (SYNTH_MAX_LANDMARKS + SYNTH_MAX_DECOYS)
#define SYNTH_MAX_CODE 4
#define SYNTH_N_OPTIONS 4

typedef enum synth_split { SYNTH_TEST = 0, SYNTH_TRAIN = 1 } synth_split;
const char *synth_split_name(synth_split s); /* "test", "train" */

typedef struct synth_config {
    int size;             /* image side, px (1344) */
    int tag_px;           /* font lattice pitch P, px (2): a glyph's 5x7 dots P px apart,
                             joined by 1-px strokes: (4P+1) x (6P+1) = 9x13 px, a
                             3-character tag 39x19 px with its border */
    int code_len;         /* characters per code, 2..4 (3) */
    char alphabet[40];    /* the code characters, a subset of synth_font_chars (digits) */
    int landmarks_min, landmarks_max; /* per image, 2..8 (3, 6) */
    int decoys_min, decoys_max;       /* per image, 0..8 (2, 4) */
    int clutter_min, clutter_max;     /* grey discs and polygons of 6-26 px (30, 60) */
    int ink_max;          /* ink of a dot: grey uniform in [0, ink_max], per dot (90) */
    int paper_min;        /* tag paper: cells of paper_cell px, grey uniform in
                             [paper_min, 255] per cell (130) */
    int paper_cell;       /* (4) */
    int stage1_tokens;    /* ERGO's stage-1 and crop budget the SFT boxes are framed in and
                             the legibility check downsamples to (64: 1344 -> 224) */
    char category[40];    /* the V* category written ("direct_attributes": the reference
                             scores only direct_attributes and relative_position) */
} synth_config;

void synth_config_default(synth_config *c);

/* Checks every field against its range, the alphabet against the font, and that
 * the image can hold the landmarks; the message names the option. */
ergo_status synth_config_check(const synth_config *c, ergo_error *err);

/* The characters the built-in font has (digits and 23 capitals; no I, O, Q). */
extern const char synth_font_chars[];

typedef enum synth_shape {
    SYNTH_CIRCLE, SYNTH_SQUARE, SYNTH_TRIANGLE, SYNTH_DIAMOND, SYNTH_CROSS, SYNTH_N_SHAPES
} synth_shape;

typedef struct synth_landmark {
    int shape;            /* synth_shape */
    int colour;           /* index into the 8 named colours */
    int x1, y1, x2, y2;   /* its square, px, end exclusive */
    int tag;              /* index into synth_sample.tags */
} synth_landmark;

typedef struct synth_tag {
    int x1, y1, x2, y2;   /* the white tag with its border, px, end exclusive */
    char code[SYNTH_MAX_CODE + 1];
    int landmark;         /* the landmark it belongs to, -1 for a decoy */
} synth_tag;

typedef struct synth_sample {
    int64_t index;
    image img;            /* (size, size) RGB, owned */
    int n_landmarks;
    synth_landmark landmarks[SYNTH_MAX_LANDMARKS];
    int n_tags;           /* landmark tags first (tag i belongs to landmark i), then decoys */
    synth_tag tags[SYNTH_MAX_TAGS];
    int target;           /* the landmark asked about */
    char name[32];        /* "red circle" */
    char question[128];   /* "What is the code on the tag below the red circle?" */
    char options[SYNTH_N_OPTIONS][SYNTH_MAX_CODE + 5]; /* "(A) 552", ... */
    char codes[SYNTH_N_OPTIONS][SYNTH_MAX_CODE + 1];   /* the option codes alone */
    int label;            /* 0..3: the right option */
    char text[512];       /* V*'s `text`: question \n options \n postfix */
} synth_sample;

/* The V* postfix (no leading space, unlike HR-Bench and MME). */
extern const char synth_postfix[];

/* Generates sample `index` of a split. s is overwritten; free it with
 * synth_sample_free, also after a failure. */
ergo_status synth_generate(const synth_config *c, uint64_t seed, synth_split split,
                           int64_t index, synth_sample *s, ergo_error *err);
void synth_sample_free(synth_sample *s);

/* Draws tag t with `code` into img shifted by (-ox, -oy) (img may be a window of the
 * image whose top-left is (ox, oy)) with nominal ink: black dots on white paper, the
 * template the legibility matcher compares against. Pixels outside img are skipped. */
void synth_draw_tag_nominal(const synth_config *c, image *img, int ox, int oy, const synth_tag *t,
                            const char *code);

/* ---- the SFT targets (training split) ---------------------------------------- */

typedef struct synth_sft {
    int w1, h1;           /* the stage-1 image (ERGO's smart_resize under stage1_tokens) */
    int box[4];           /* the <zoom> box in the stage-1 frame */
    int crop[4];          /* what ERGO crops from it (zoom_map), original px */
    int crop_w, crop_h;   /* the crop's LANCZOS size under the same budget */
    char stage1[256];     /* "<think>...</think> <zoom>[x1, y1, x2, y2]</zoom>" */
    char stage2[256];     /* "<think>...</think><answer>X</answer>" */
} synth_sft;

/* The two assistant answers of a sample: the box is the tag plus an 8-px margin grown
 * to a random square of 120-224 original px (jittered, clamped to the image) that
 * holds the whole tag after ERGO's mapping back to the original. */
ergo_status synth_sft_make(const synth_config *c, const synth_sample *s, uint64_t seed,
                           synth_split split, synth_sft *out, ergo_error *err);

/* ---- writing a data set ------------------------------------------------------ */

typedef void (*synth_progress_fn)(void *ctx, int64_t done, int64_t total);

/* Writes samples 0..count-1 of a split into dir (created if missing):
 *   dir/test_questions.jsonl   one V* line per sample: question_id, image, text,
 *                              category, label, plus bbox (the target tag's box in
 *                              original px, [x1, y1, x2, y2], end exclusive) and synth
 *                              (landmarks, tags, codes, options)
 *   dir/images/<split>_NNNNNN.png
 *   dir/synth_manifest.json    the generator, its version and every knob
 * and for SYNTH_TRAIN also
 *   dir/sft.jsonl              {"id", "messages": [system, user(image, text),
 *                              assistant(stage 1), user(image, text), assistant(stage 2)]}
 *                              with ERGO's prompts; image URLs are paths relative to dir
 *   dir/sft/<split>_NNNNNN_s1.png, _s2.png   the stage-1 image and the crop as ERGO
 *                              feeds them to the model
 * progress may be NULL. */
ergo_status synth_write(const synth_config *c, const char *dir, uint64_t seed, synth_split split,
                        int64_t count, synth_progress_fn progress, void *ctx, ergo_error *err);

/* ---- the legibility check (legibility.c) -------------------------------------- */

/* Nearest-option template matching: which of the sample's 4 option codes the target
 * tag shows. Each option is drawn with nominal ink into a copy of the image (the rest
 * of the image exactly as observed), both are seen at `tokens` vision tokens (ERGO's
 * smart_resize + Pillow BICUBIC, as stage 1; 0 = full resolution), and the option whose
 * view of the tag (the output pixels the tag reaches) has the highest normalised
 * correlation with the observed view wins. Returns the option index, or -1 on error. */
int synth_match(const synth_config *c, const synth_sample *s, int tokens, ergo_error *err);

/* The view synth_match compares: the pixels (3 values each) of img at `tokens` vision
 * tokens that tag t reaches through the BICUBIC filter's support (tokens 0: the tag's
 * own pixels). With an integer scale (1344 -> 224) only an aligned window around the tag
 * is resized, which gives exactly the values of the whole-image resize; full = 1 forces
 * the whole-image resize (tests compare the two). code != NULL: the view of img with
 * that code drawn into the tag with nominal ink (a template). *vals is malloc'd. */
ergo_status synth_tag_view(const synth_config *c, const image *img, const synth_tag *t,
                           int tokens, int full, const char *code, uint8_t **vals, int *n,
                           ergo_error *err);

#endif
