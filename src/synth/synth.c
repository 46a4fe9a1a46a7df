/*
 * synth.c - the "landmark tag" generator (synth.h): layout, rasteriser, built-in
 * font, question and options, the SFT targets, and the data set in V*'s layout.
 *
 * Rasterising is ours (no anti-aliasing, integer pixel tests on pixel centres) so an
 * image is the same on every machine; PNGs go through libgd like --save-viz.
 */
#include "synth/synth.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"
#include "base/rng.h"
#include "image/preprocess.h"
#include "pipeline/ergo.h"
#include "pipeline/viz.h"
#include "pipeline/zoom.h"

const char synth_postfix[] = "Answer with the option's letter from the given choices directly.";

const char *synth_split_name(synth_split s) { return s == SYNTH_TRAIN ? "train" : "test"; }

/* ---- the font: 5x7 dots, row bits MSB = left column --------------------------- */

const char synth_font_chars[] = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ";

static const uint8_t font_rows[][7] = {
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, /* 0 */
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}, /* 1 */
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, /* 2 */
    {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}, /* 3 */
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, /* 4 */
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}, /* 5 */
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, /* 6 */
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}, /* 7 */
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, /* 8 */
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}, /* 9 */
    {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, /* A */
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}, /* B */
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}, /* C */
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}, /* D */
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}, /* E */
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}, /* F */
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}, /* G */
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, /* H */
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}, /* J */
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, /* K */
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}, /* L */
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}, /* M */
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}, /* N */
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}, /* P */
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}, /* R */
    {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}, /* S */
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, /* T */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, /* U */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}, /* V */
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}, /* W */
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}, /* X */
    {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}, /* Y */
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}, /* Z */
};

static const uint8_t *glyph(char ch) {
    const char *p = strchr(synth_font_chars, ch);
    return p && ch ? font_rows[p - synth_font_chars] : NULL;
}

/* ---- the landmarks' names ---------------------------------------------------- */

static const struct { const char *name; uint8_t rgb[3]; } colours[SYNTH_MAX_LANDMARKS] = {
    {"red", {215, 35, 35}},     {"green", {35, 150, 55}},  {"blue", {35, 80, 215}},
    {"yellow", {235, 200, 25}}, {"orange", {240, 125, 20}}, {"purple", {130, 55, 175}},
    {"cyan", {25, 185, 200}},   {"pink", {235, 110, 180}},
};
static const char *shape_names[SYNTH_N_SHAPES] = {"circle", "square", "triangle", "diamond",
                                                  "cross"};

/* ---- configuration ----------------------------------------------------------- */

void synth_config_default(synth_config *c) {
    memset(c, 0, sizeof *c);
    c->size = 1344;
    c->tag_px = 2;
    c->code_len = 3;
    strcpy(c->alphabet, "0123456789");
    c->landmarks_min = 3, c->landmarks_max = 6;
    c->decoys_min = 2, c->decoys_max = 4;
    c->clutter_min = 30, c->clutter_max = 60;
    c->ink_max = 90;
    c->paper_min = 130;
    c->paper_cell = 4;
    c->stage1_tokens = 64;
    strcpy(c->category, "direct_attributes");
}

/* Tag geometry: 1-px border, P px of padding, glyphs of (4P+1) x (6P+1) px at a pitch
 * of 6P (P = tag_px): 39 x 19 px for 3 characters at P = 2. */
static int tag_w(const synth_config *c) {
    return 2 + 2 * c->tag_px + c->code_len * 6 * c->tag_px - (2 * c->tag_px - 1);
}
static int tag_h(const synth_config *c) { return 3 + 8 * c->tag_px; }

/* Landmark sides scale with the image: 150-260 px at 1344. */
static int lm_min(const synth_config *c) { return c->size * 150 / 1344; }
static int lm_max(const synth_config *c) { return c->size * 260 / 1344; }

ergo_status synth_config_check(const synth_config *c, ergo_error *err) {
    if (c->size < 224 || c->size > 8192)
        return ergo_fail(err, ERGO_E_ARG, "--size %d: use 224..8192", c->size);
    if (c->tag_px < 1 || c->tag_px > 8)
        return ergo_fail(err, ERGO_E_ARG, "--tag-px %d: use 1..8", c->tag_px);
    if (c->code_len < 2 || c->code_len > SYNTH_MAX_CODE)
        return ergo_fail(err, ERGO_E_ARG, "--code-len %d: use 2..%d", c->code_len, SYNTH_MAX_CODE);
    size_t na = strlen(c->alphabet);
    if (na < 2) return ergo_fail(err, ERGO_E_ARG, "--alphabet `%s': give at least 2 characters", c->alphabet);
    for (size_t i = 0; i < na; i++) {
        if (!glyph(c->alphabet[i]))
            return ergo_fail(err, ERGO_E_ARG, "--alphabet: `%c' is not in the font (%s)",
                             c->alphabet[i], synth_font_chars);
        if (strchr(c->alphabet + i + 1, c->alphabet[i]))
            return ergo_fail(err, ERGO_E_ARG, "--alphabet: `%c' appears twice", c->alphabet[i]);
    }
    if (c->landmarks_min < 2 || c->landmarks_max > SYNTH_MAX_LANDMARKS ||
        c->landmarks_min > c->landmarks_max)
        return ergo_fail(err, ERGO_E_ARG, "--landmarks %d-%d: use a range within 2..%d",
                         c->landmarks_min, c->landmarks_max, SYNTH_MAX_LANDMARKS);
    if (c->decoys_min < 0 || c->decoys_max > SYNTH_MAX_DECOYS || c->decoys_min > c->decoys_max)
        return ergo_fail(err, ERGO_E_ARG, "--decoys %d-%d: use a range within 0..%d",
                         c->decoys_min, c->decoys_max, SYNTH_MAX_DECOYS);
    if (c->clutter_min < 0 || c->clutter_max > 1000 || c->clutter_min > c->clutter_max)
        return ergo_fail(err, ERGO_E_ARG, "--clutter %d-%d: use a range within 0..1000",
                         c->clutter_min, c->clutter_max);
    if (c->ink_max < 0 || c->ink_max > 160)
        return ergo_fail(err, ERGO_E_ARG, "--ink-max %d: use 0..160 (paper is 235-255)", c->ink_max);
    if (c->paper_min < c->ink_max + 40 || c->paper_min > 255)
        return ergo_fail(err, ERGO_E_ARG, "--paper-min %d: use %d..255 (40 above --ink-max)",
                         c->paper_min, c->ink_max + 40);
    if (c->paper_cell < 1 || c->paper_cell > 64)
        return ergo_fail(err, ERGO_E_ARG, "--paper-cell %d: use 1..64", c->paper_cell);
    if (c->stage1_tokens < 4 || c->stage1_tokens > 16384)
        return ergo_fail(err, ERGO_E_ARG, "--stage1-tokens %d: use 4..16384", c->stage1_tokens);
    /* distinct codes for every tag plus near-misses */
    double codes = pow((double)na, c->code_len);
    if (codes < 2.0 * (c->landmarks_max + c->decoys_max) + SYNTH_N_OPTIONS)
        return ergo_fail(err, ERGO_E_ARG, "--alphabet/--code-len: %zu^%d codes are too few for "
                         "%d tags", na, c->code_len, c->landmarks_max + c->decoys_max);
    if (tag_w(c) + 32 > lm_min(c))
        return ergo_fail(err, ERGO_E_ARG, "--tag-px %d: a tag of %d px is wider than the smallest "
                         "landmark (%d px) at --size %d", c->tag_px, tag_w(c), lm_min(c), c->size);
    /* a rough area bound; placement itself reports when it cannot fit */
    double need = (double)c->landmarks_max * (lm_max(c) + 32) * (lm_max(c) + tag_h(c) + 40);
    if (need > 0.45 * (double)c->size * c->size)
        return ergo_fail(err, ERGO_E_ARG, "--landmarks %d: too many for a %d px image",
                         c->landmarks_max, c->size);
    return ERGO_OK;
}

/* ---- the random stream of one sample ------------------------------------------ */

typedef struct draw { uint64_t seed, i; } draw;

static uint64_t draw_u64(draw *d) { return rng_u64(d->seed, d->i++); }
/* Uniform integer in [lo, hi] (the modulo bias is below 2^-50 here). */
static int draw_int(draw *d, int lo, int hi) {
    return lo + (int)(draw_u64(d) % (uint64_t)(hi - lo + 1));
}
static draw draw_stream(uint64_t seed, synth_split split, int64_t index, const char *what) {
    char name[96];
    snprintf(name, sizeof name, "synth/%s/%lld/%s", synth_split_name(split), (long long)index, what);
    return (draw){rng_stream_seed(seed, name), 0};
}

/* ---- rasteriser ---------------------------------------------------------------- */

static void put(image *im, int x, int y, const uint8_t rgb[3]) {
    if (x < 0 || y < 0 || x >= im->width || y >= im->height) return;
    memcpy(im->rgb + ((size_t)y * im->width + x) * 3, rgb, 3);
}

/* Is the centre of pixel (px, py) of an s x s box inside the shape? */
static int shape_has(int shape, int px, int py, int s) {
    double x = px + 0.5, y = py + 0.5, h = s / 2.0, dx = x - h, dy = y - h;
    double in = s * 0.09;
    switch (shape) {
    case SYNTH_CIRCLE: return dx * dx + dy * dy <= h * h;
    case SYNTH_SQUARE: return x >= in && x <= s - in && y >= in && y <= s - in;
    case SYNTH_TRIANGLE: {
        double top = in, bot = s - in;
        if (y < top || y > bot) return 0;
        return fabs(dx) <= (y - top) / (bot - top) * (h - in * 0.5);
    }
    case SYNTH_DIAMOND: return fabs(dx) + fabs(dy) <= h;
    case SYNTH_CROSS: {
        double w = s * 0.17;
        return (fabs(dx) <= w || fabs(dy) <= w) && fabs(dx) <= h - in * 0.5 && fabs(dy) <= h - in * 0.5;
    }
    }
    return 0;
}

static void fill_shape(image *im, int shape, int x0, int y0, int s, const uint8_t rgb[3]) {
    for (int y = 0; y < s; y++)
        for (int x = 0; x < s; x++)
            if (shape_has(shape, x, y, s)) put(im, x0 + x, y0 + y, rgb);
}

static void fill_rect(image *im, int x1, int y1, int x2, int y2, const uint8_t rgb[3]) {
    for (int y = y1; y < y2; y++)
        for (int x = x1; x < x2; x++) put(im, x, y, rgb);
}

/* A tag: border, paper, then the code's dots. With a noise stream (not nominal) the
 * paper is blotchy (cells of `cell` px, grey in [paper_min, 255]) and each dot has its
 * own ink grey in [0, ink_max]; NULL draws the nominal template (white, black). */
static void draw_tag(const synth_config *c, image *im, int ox, int oy, const synth_tag *t,
                     const char *code, const uint64_t *noise) {
    const uint8_t border[3] = {96, 96, 96};
    int x1 = t->x1 - ox, y1 = t->y1 - oy, x2 = t->x2 - ox, y2 = t->y2 - oy;
    fill_rect(im, x1, y1, x2, y2, border);
    const int cell = c->paper_cell, span = 256 - c->paper_min;
    for (int y = y1 + 1; y < y2 - 1; y++)
        for (int x = x1 + 1; x < x2 - 1; x++) {
            uint8_t v = 255;
            if (noise) {
                uint64_t k = (uint64_t)((y - y1) / cell) * 4096 + (uint64_t)((x - x1) / cell);
                v = (uint8_t)(c->paper_min + (int)(rng_u64(*noise, k) % (uint64_t)span));
            }
            const uint8_t rgb[3] = {v, v, v};
            put(im, x, y, rgb);
        }
    /* each glyph: its 5x7 dots on a lattice of pitch P, lit neighbours joined by 1-px
     * strokes (diagonals only where no orthogonal path joins them), so a glyph is
     * (4P+1) x (6P+1) px of thin strokes: large enough to read, little ink to blur */
    const int P = c->tag_px;
    for (int g = 0; g < c->code_len; g++) {
        const uint8_t *rows = glyph(code[g]);
        int gx = x1 + 1 + P + g * 6 * P, gy = y1 + 1 + P;
#define LIT(r, q) ((r) >= 0 && (r) < 7 && (q) >= 0 && (q) < 5 && (rows[(r)] >> (4 - (q)) & 1))
        for (int r = 0; r < 7; r++)
            for (int q = 0; q < 5; q++) {
                if (!LIT(r, q)) continue;
                uint8_t v = 0;
                if (noise) {
                    uint64_t k = (UINT64_C(1) << 32) + (uint64_t)(g * 35 + r * 5 + q);
                    v = (uint8_t)(rng_u64(*noise, k) % (uint64_t)(c->ink_max + 1));
                }
                const uint8_t rgb[3] = {v, v, v};
                int px = gx + q * P, py = gy + r * P;
                put(im, px, py, rgb);
                static const int dirs[4][2] = {{0, 1}, {1, 0}, {1, 1}, {1, -1}}; /* (dr, dq) */
                for (int d = 0; d < 4; d++) {
                    int dr = dirs[d][0], dq = dirs[d][1];
                    if (!LIT(r + dr, q + dq)) continue;
                    if (dr && dq && (LIT(r + dr, q) || LIT(r, q + dq))) continue;
                    for (int i = 1; i < P; i++) put(im, px + i * dq, py + i * dr, rgb);
                }
            }
#undef LIT
    }
}

void synth_draw_tag_nominal(const synth_config *c, image *img, int ox, int oy, const synth_tag *t,
                            const char *code) {
    draw_tag(c, img, ox, oy, t, code, NULL);
}

/* ---- layout -------------------------------------------------------------------- */

typedef struct rect { int x1, y1, x2, y2; } rect;

static int overlaps(rect a, rect b) { return a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2; }

static void random_code(const synth_config *c, draw *d, char *out) {
    int na = (int)strlen(c->alphabet);
    for (int i = 0; i < c->code_len; i++) out[i] = c->alphabet[draw_int(d, 0, na - 1)];
    out[c->code_len] = 0;
}

static int code_taken(char (*codes)[SYNTH_MAX_CODE + 1], int n, const char *code) {
    for (int i = 0; i < n; i++)
        if (!strcmp(codes[i], code)) return 1;
    return 0;
}

/* Where a landmark sits in the image, in words. */
static void where(const synth_config *c, const synth_landmark *l, char *out, size_t n) {
    int cx = (l->x1 + l->x2) / 2, cy = (l->y1 + l->y2) / 2;
    int h = cx * 3 / c->size, v = cy * 3 / c->size;
    static const char *hs[3] = {"left", "centre", "right"}, *vs[3] = {"upper", "middle", "lower"};
    if (h == 1 && v == 1) snprintf(out, n, "in the centre");
    else if (v == 1) snprintf(out, n, "on the %s", hs[h]);
    else if (h == 1) snprintf(out, n, "at the %s", v == 0 ? "top" : "bottom");
    else snprintf(out, n, "in the %s %s", vs[v], hs[h]);
}

ergo_status synth_generate(const synth_config *c, uint64_t seed, synth_split split,
                           int64_t index, synth_sample *s, ergo_error *err) {
    memset(s, 0, sizeof *s);
    s->index = index;
    ergo_status st = synth_config_check(c, err);
    if (st) return st;
    if ((st = image_alloc(&s->img, c->size, c->size, err))) return st;
    draw d = draw_stream(seed, split, index, "layout");
    const int W = c->size, tw = tag_w(c), th = tag_h(c), edge = 16, gap = 8, margin = 16;

    /* background: 8-px cells of grey 200-230 */
    draw bg = draw_stream(seed, split, index, "background");
    for (int cy = 0; cy < (W + 7) / 8; cy++)
        for (int cx = 0; cx < (W + 7) / 8; cx++) {
            uint8_t v = (uint8_t)(200 + draw_u64(&bg) % 31);
            const uint8_t rgb[3] = {v, v, v};
            fill_rect(&s->img, cx * 8, cy * 8, cx * 8 + 8, cy * 8 + 8, rgb);
        }
    /* clutter: grey discs and polygons of 6-26 px (under everything else) */
    int n_clutter = draw_int(&d, c->clutter_min, c->clutter_max);
    for (int i = 0; i < n_clutter; i++) {
        int sz = draw_int(&d, 6, 26), shape = draw_int(&d, 0, SYNTH_CROSS - 1);
        int x = draw_int(&d, 0, W - sz), y = draw_int(&d, 0, W - sz);
        uint8_t v = (uint8_t)draw_int(&d, 110, 190);
        const uint8_t rgb[3] = {v, v, v};
        fill_shape(&s->img, shape, x, y, sz, rgb);
    }

    /* landmarks with their tags below, footprints apart; colours all distinct */
    rect taken[SYNTH_MAX_TAGS];
    int n_taken = 0;
    s->n_landmarks = draw_int(&d, c->landmarks_min, c->landmarks_max);
    int order[SYNTH_MAX_LANDMARKS];
    for (int i = 0; i < SYNTH_MAX_LANDMARKS; i++) order[i] = i;
    for (int i = SYNTH_MAX_LANDMARKS - 1; i > 0; i--) {
        int j = draw_int(&d, 0, i), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    char codes[SYNTH_MAX_TAGS][SYNTH_MAX_CODE + 1];
    for (int i = 0; i < s->n_landmarks; i++) {
        synth_landmark *l = &s->landmarks[i];
        synth_tag *t = &s->tags[i];
        int placed = 0;
        for (int attempt = 0; attempt < 2000 && !placed; attempt++) {
            int sz = draw_int(&d, lm_min(c), lm_max(c));
            int x = draw_int(&d, edge, W - edge - sz), y = draw_int(&d, edge, W - edge - sz - gap - th);
            rect f = {x - margin, y - margin, x + sz + margin, y + sz + gap + th + margin};
            int ok = 1;
            for (int k = 0; k < n_taken && ok; k++) ok = !overlaps(f, taken[k]);
            if (!ok) continue;
            taken[n_taken++] = f;
            *l = (synth_landmark){draw_int(&d, 0, SYNTH_N_SHAPES - 1), order[i], x, y, x + sz, y + sz, i};
            int tx = x + (sz - tw) / 2, ty = y + sz + gap;
            *t = (synth_tag){tx, ty, tx + tw, ty + th, "", i};
            placed = 1;
        }
        if (!placed)
            return ergo_fail(err, ERGO_E_LIMIT, "synth sample %lld: cannot place %d landmarks in a "
                             "%d px image (fewer --landmarks or a larger --size)",
                             (long long)index, s->n_landmarks, W);
    }
    s->n_tags = s->n_landmarks;
    int n_decoys = draw_int(&d, c->decoys_min, c->decoys_max);
    for (int i = 0; i < n_decoys; i++) {
        for (int attempt = 0; attempt < 2000; attempt++) {
            int x = draw_int(&d, edge, W - edge - tw), y = draw_int(&d, edge, W - edge - th);
            rect f = {x - margin, y - margin, x + tw + margin, y + th + margin};
            int ok = 1;
            for (int k = 0; k < n_taken && ok; k++) ok = !overlaps(f, taken[k]);
            if (!ok) continue;
            taken[n_taken++] = f;
            s->tags[s->n_tags++] = (synth_tag){x, y, x + tw, y + th, "", -1};
            break;
        }
    }
    /* distinct codes */
    for (int i = 0; i < s->n_tags; i++) {
        do random_code(c, &d, s->tags[i].code);
        while (code_taken(codes, i, s->tags[i].code));
        strcpy(codes[i], s->tags[i].code);
    }
    for (int i = 0; i < s->n_landmarks; i++) {
        const synth_landmark *l = &s->landmarks[i];
        fill_shape(&s->img, l->shape, l->x1, l->y1, l->x2 - l->x1, colours[l->colour].rgb);
    }
    for (int i = 0; i < s->n_tags; i++) {
        uint64_t noise = draw_u64(&d);
        draw_tag(c, &s->img, 0, 0, &s->tags[i], s->tags[i].code, &noise);
    }

    /* the question and its options: the code, near-misses (one character changed) and
     * the codes of other tags in the image, the right one at a uniform position */
    s->target = draw_int(&d, 0, s->n_landmarks - 1);
    const synth_landmark *tl = &s->landmarks[s->target];
    const char *truth = s->tags[tl->tag].code;
    snprintf(s->name, sizeof s->name, "%s %s", colours[tl->colour].name, shape_names[tl->shape]);
    snprintf(s->question, sizeof s->question, "What is the code on the tag below the %s?", s->name);
    s->label = draw_int(&d, 0, SYNTH_N_OPTIONS - 1);
    char opts[SYNTH_N_OPTIONS][SYNTH_MAX_CODE + 1];
    strcpy(opts[0], truth);
    int n_opt = 1, n_near = draw_int(&d, 1, 2), na = (int)strlen(c->alphabet);
    int others[SYNTH_MAX_TAGS], n_others = 0;
    for (int i = 0; i < s->n_tags; i++)
        if (i != tl->tag) others[n_others++] = i;
    for (int i = n_others - 1; i > 0; i--) {
        int j = draw_int(&d, 0, i), t = others[i];
        others[i] = others[j], others[j] = t;
    }
    for (int k = 0; n_opt < SYNTH_N_OPTIONS;) {
        char cand[SYNTH_MAX_CODE + 1];
        if (n_opt <= n_near || k >= n_others) { /* a near-miss */
            strcpy(cand, truth);
            int pos = draw_int(&d, 0, c->code_len - 1);
            const char *p = strchr(c->alphabet, cand[pos]);
            cand[pos] = c->alphabet[((p - c->alphabet) + draw_int(&d, 1, na - 1)) % na];
        } else {
            strcpy(cand, s->tags[others[k++]].code);
        }
        if (!code_taken(opts, n_opt, cand)) strcpy(opts[n_opt++], cand);
    }
    /* opts[0] (the truth) goes to s->label, the distractors fill the rest in order */
    for (int i = 0, k = 1; i < SYNTH_N_OPTIONS; i++) {
        const char *code = i == s->label ? opts[0] : opts[k++]; /* a local, not inside *s */
        strcpy(s->codes[i], code);
        snprintf(s->options[i], sizeof s->options[i], "(%c) %s", 'A' + i, code);
    }
    int n = snprintf(s->text, sizeof s->text, "%s", s->question);
    for (int i = 0; i < SYNTH_N_OPTIONS; i++)
        n += snprintf(s->text + n, sizeof s->text - (size_t)n, "\n%s", s->options[i]);
    snprintf(s->text + n, sizeof s->text - (size_t)n, "\n%s", synth_postfix);
    return ERGO_OK;
}

void synth_sample_free(synth_sample *s) {
    image_free(&s->img);
    memset(s, 0, sizeof *s);
}

/* ---- SFT targets --------------------------------------------------------------- */

ergo_status synth_sft_make(const synth_config *c, const synth_sample *s, uint64_t seed,
                           synth_split split, synth_sft *out, ergo_error *err) {
    memset(out, 0, sizeof *out);
    const int64_t max_pixels = (int64_t)c->stage1_tokens * ERGO_FACTOR * ERGO_FACTOR;
    ergo_status st = smart_resize_ergo(c->size, c->size, ERGO_FACTOR, ERGO_MIN_PIXELS, max_pixels,
                                       &out->h1, &out->w1, err);
    if (st) return st;
    const synth_landmark *l = &s->landmarks[s->target];
    const synth_tag *t = &s->tags[l->tag];
    draw d = draw_stream(seed, split, s->index, "sft");
    const double sx = (double)c->size / out->w1, sy = (double)c->size / out->h1;
    /* the tag plus 8 px, in stage-1 pixels: [floor(x1'), ceil(x2')) keeps it whole after
     * ERGO maps back with int(x * sx) */
    int ex1 = (int)floor((t->x1 - 8) / sx), ey1 = (int)floor((t->y1 - 8) / sy);
    int ex2 = (int)ceil((t->x2 + 8) / sx), ey2 = (int)ceil((t->y2 + 8) / sy);
    if (ex1 < 0) ex1 = 0;
    if (ey1 < 0) ey1 = 0;
    if (ex2 > out->w1) ex2 = out->w1;
    if (ey2 > out->h1) ey2 = out->h1;
    int need = ex2 - ex1 > ey2 - ey1 ? ex2 - ex1 : ey2 - ey1;
    int lo = (int)ceil(120 / sx), hi = (int)floor(224 / sx);
    if (lo < need) lo = need;
    if (hi < lo) hi = lo;
    if (hi > out->w1) hi = out->w1;
    if (lo > hi) lo = hi;
    int side = draw_int(&d, lo, hi);
    int b[4];
    for (int a = 0; a < 2; a++) { /* x then y: a random placement that holds the tag */
        int e1 = a ? ey1 : ex1, e2 = a ? ey2 : ex2, lim = a ? out->h1 : out->w1;
        int p_lo = e2 - side, p_hi = e1;
        if (p_lo < 0) p_lo = 0;
        if (p_hi > lim - side) p_hi = lim - side;
        if (p_hi < p_lo) p_hi = p_lo;
        b[a] = draw_int(&d, p_lo, p_hi);
        b[a + 2] = b[a] + side;
    }
    memcpy(out->box, b, sizeof b);
    zoom_box zb = {{b[0], b[1], b[2], b[3]}, {b[0], b[1], b[2], b[3]}, 1};
    zoom_crop cr;
    if (zoom_map(&zb, sx, sy, c->size, c->size, ERGO_FACTOR, ERGO_MIN_PIXELS, max_pixels, &cr) != ZOOM_OK)
        return ergo_fail(err, ERGO_E_ARG, "synth sample %lld: the SFT box is not croppable: %s",
                         (long long)s->index, cr.why);
    if (cr.x1 > t->x1 || cr.y1 > t->y1 || cr.x2 < t->x2 || cr.y2 < t->y2)
        return ergo_fail(err, ERGO_E_ARG, "synth sample %lld: the SFT crop misses the tag",
                         (long long)s->index);
    out->crop[0] = cr.x1, out->crop[1] = cr.y1, out->crop[2] = cr.x2, out->crop[3] = cr.y2;
    out->crop_w = cr.out_w, out->crop_h = cr.out_h;
    char loc[40];
    where(c, l, loc, sizeof loc);
    snprintf(out->stage1, sizeof out->stage1,
             "<think>The %s is %s. Its tag is just below it.</think> <zoom>[%d, %d, %d, %d]</zoom>",
             s->name, loc, b[0], b[1], b[2], b[3]);
    snprintf(out->stage2, sizeof out->stage2,
             "<think>The tag below the %s reads %s.</think><answer>%c</answer>", s->name,
             t->code, 'A' + s->label);
    return ERGO_OK;
}

/* ---- writing ------------------------------------------------------------------- */

static ergo_status make_dir(const char *path, ergo_error *err) {
    if (mkdir(path, 0777) && errno != EEXIST)
        return ergo_fail(err, ERGO_E_IO, "%s: cannot create the directory: %s", path, strerror(errno));
    if (!dir_exists(path)) return ergo_fail(err, ERGO_E_IO, "%s: exists and is not a directory", path);
    return ERGO_OK;
}

static json_t *box_json(int x1, int y1, int x2, int y2) {
    return json_pack("[iiii]", x1, y1, x2, y2);
}

static ergo_status put_line(FILE *f, const char *path, json_t *j, ergo_error *err) {
    char *txt = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!txt) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for a line of %s", path);
    int bad = fputs(txt, f) < 0 || fputc('\n', f) < 0;
    free(txt);
    return bad ? ergo_fail(err, ERGO_E_IO, "%s: write failed: %s", path, strerror(errno)) : ERGO_OK;
}

static json_t *sample_json(const synth_config *c, const synth_sample *s, const char *image_rel) {
    const synth_tag *t = &s->tags[s->landmarks[s->target].tag];
    json_t *lms = json_array(), *tags = json_array(), *codes = json_array();
    for (int i = 0; i < s->n_landmarks; i++) {
        const synth_landmark *l = &s->landmarks[i];
        json_array_append_new(lms, json_pack("{s:s,s:s,s:o,s:i}", "colour", colours[l->colour].name,
                                             "shape", shape_names[l->shape], "box",
                                             box_json(l->x1, l->y1, l->x2, l->y2), "tag", l->tag));
    }
    for (int i = 0; i < s->n_tags; i++) {
        const synth_tag *g = &s->tags[i];
        json_array_append_new(tags, json_pack("{s:s,s:o,s:i}", "code", g->code, "box",
                                              box_json(g->x1, g->y1, g->x2, g->y2), "landmark",
                                              g->landmark));
    }
    for (int i = 0; i < SYNTH_N_OPTIONS; i++) json_array_append_new(codes, json_string(s->codes[i]));
    char label[2] = {(char)('A' + s->label), 0};
    return json_pack("{s:I,s:s,s:s,s:s,s:s,s:o,s:{s:s,s:i,s:s,s:o,s:o,s:o}}", "question_id",
                     (json_int_t)s->index, "image", image_rel, "text", s->text, "category",
                     c->category, "label", label, "bbox", box_json(t->x1, t->y1, t->x2, t->y2),
                     "synth", "target", s->name, "target_tag", s->landmarks[s->target].tag, "code",
                     t->code, "options", codes, "landmarks", lms, "tags", tags);
}

static json_t *sft_json(const synth_sample *s, const synth_sft *f, const char *id,
                        const char *s1_rel, const char *s2_rel) {
    size_t nq = strlen(s->question), nt = strlen(s->text);
    char t1[1024], t2[2048];
    snprintf(t1, sizeof t1, "%.*s%s", (int)nq, s->question, ergo_template1_suffix);
    snprintf(t2, sizeof t2, "%.*s%s", (int)nt, s->text, ergo_template2_suffix);
    return json_pack(
        "{s:s,s:[{s:s,s:s},{s:s,s:[{s:s,s:{s:s}},{s:s,s:s}]},{s:s,s:s},"
        "{s:s,s:[{s:s,s:{s:s}},{s:s,s:s}]},{s:s,s:s}],s:o,s:o,s:[ii]}",
        "id", id, "messages",
        "role", "system", "content", ergo_system_prompt,
        "role", "user", "content", "type", "image_url", "image_url", "url", s1_rel, "type", "text",
        "text", t1,
        "role", "assistant", "content", f->stage1,
        "role", "user", "content", "type", "image_url", "image_url", "url", s2_rel, "type", "text",
        "text", t2,
        "role", "assistant", "content", f->stage2,
        "zoom_box", box_json(f->box[0], f->box[1], f->box[2], f->box[3]),
        "crop", box_json(f->crop[0], f->crop[1], f->crop[2], f->crop[3]),
        "stage1_size", f->w1, f->h1);
}

/* The stage-1 image and the crop, as ergo_run makes them. */
static ergo_status write_sft_images(const synth_sample *s, const synth_sft *f, const char *p1,
                                    const char *p2, ergo_error *err) {
    image a = {0}, cut = {0}, b = {0};
    ergo_status st = image_resize(&a, &s->img, f->w1, f->h1, IMAGE_FILTER_BICUBIC, err);
    if (!st) st = viz_write_png(&a, p1, err);
    if (!st) st = image_crop(&cut, &s->img, f->crop[0], f->crop[1], f->crop[2], f->crop[3], err);
    if (!st) st = image_resize(&b, &cut, f->crop_w, f->crop_h, IMAGE_FILTER_LANCZOS, err);
    if (!st) st = viz_write_png(&b, p2, err);
    image_free(&a);
    image_free(&cut);
    image_free(&b);
    return st;
}

static ergo_status write_manifest(const synth_config *c, const char *dir, uint64_t seed,
                                  synth_split split, int64_t count, ergo_error *err) {
    char path[4096];
    ergo_status st = path_join(path, sizeof path, dir, "synth_manifest.json", err);
    if (st) return st;
    json_t *j = json_pack(
        "{s:s,s:i,s:I,s:s,s:I,s:{s:i,s:i,s:i,s:s,s:[ii],s:[ii],s:[ii],s:i,s:i,s:i,s:i,s:s},s:s}",
        "generator", "ergo synth (landmark tag)", "version", 1, "seed", (json_int_t)seed, "split",
        synth_split_name(split), "count", (json_int_t)count, "config", "size", c->size, "tag_px",
        c->tag_px, "code_len", c->code_len, "alphabet", c->alphabet, "landmarks", c->landmarks_min,
        c->landmarks_max, "decoys", c->decoys_min, c->decoys_max, "clutter", c->clutter_min,
        c->clutter_max, "ink_max", c->ink_max, "paper_min", c->paper_min, "paper_cell",
        c->paper_cell, "stage1_tokens", c->stage1_tokens, "category",
        c->category, "bbox",
        "test_questions.jsonl `bbox`: the target tag in original pixels, [x1, y1, x2, y2), "
        "border included");
    char *txt = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!txt) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for %s", path);
    size_t n = strlen(txt);
    txt[n] = '\n'; /* over the NUL: the file ends with a newline */
    st = file_write_all(path, txt, n + 1, err);
    free(txt);
    return st;
}

ergo_status synth_write(const synth_config *c, const char *dir, uint64_t seed, synth_split split,
                        int64_t count, synth_progress_fn progress, void *ctx, ergo_error *err) {
    ergo_status st = synth_config_check(c, err);
    if (st) return st;
    if (count < 0) return ergo_fail(err, ERGO_E_ARG, "--count %lld: must be >= 0", (long long)count);
    char images[4096], sftdir[4096], qpath[4096], spath[4096];
    if ((st = make_dir(dir, err)) || (st = path_join(images, sizeof images, dir, "images", err)) ||
        (st = make_dir(images, err)) ||
        (st = path_join(qpath, sizeof qpath, dir, "test_questions.jsonl", err)) ||
        (st = path_join(spath, sizeof spath, dir, "sft.jsonl", err)) ||
        (st = path_join(sftdir, sizeof sftdir, dir, "sft", err)))
        return st;
    if (split == SYNTH_TRAIN && (st = make_dir(sftdir, err))) return st;
    FILE *fq = fopen(qpath, "w"), *fs = split == SYNTH_TRAIN ? fopen(spath, "w") : NULL;
    if (!fq || (split == SYNTH_TRAIN && !fs)) {
        st = ergo_fail(err, ERGO_E_IO, "%s: cannot write: %s", fq ? spath : qpath, strerror(errno));
        goto done;
    }
    for (int64_t i = 0; i < count; i++) {
        synth_sample s;
        char id[64], rel[128], path[4096];
        snprintf(id, sizeof id, "%s_%06lld", synth_split_name(split), (long long)i);
        snprintf(rel, sizeof rel, "images/%s.png", id);
        st = synth_generate(c, seed, split, i, &s, err);
        if (!st) st = path_join(path, sizeof path, dir, rel, err);
        if (!st) st = viz_write_png(&s.img, path, err);
        if (!st) st = put_line(fq, qpath, sample_json(c, &s, rel), err);
        if (!st && split == SYNTH_TRAIN) {
            synth_sft f;
            char r1[128], r2[128], p1[4096], p2[4096];
            snprintf(r1, sizeof r1, "sft/%s_s1.png", id);
            snprintf(r2, sizeof r2, "sft/%s_s2.png", id);
            st = synth_sft_make(c, &s, seed, split, &f, err);
            if (!st) st = path_join(p1, sizeof p1, dir, r1, err);
            if (!st) st = path_join(p2, sizeof p2, dir, r2, err);
            if (!st) st = write_sft_images(&s, &f, p1, p2, err);
            if (!st) st = put_line(fs, spath, sft_json(&s, &f, id, r1, r2), err);
        }
        synth_sample_free(&s);
        if (st) goto done;
        if (progress) progress(ctx, i + 1, count);
    }
    st = write_manifest(c, dir, seed, split, count, err);
done:
    if (fq && fclose(fq) && !st) st = ergo_fail(err, ERGO_E_IO, "%s: write failed", qpath);
    if (fs && fclose(fs) && !st) st = ergo_fail(err, ERGO_E_IO, "%s: write failed", spath);
    return st;
}
