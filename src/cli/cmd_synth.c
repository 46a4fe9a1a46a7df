/*
 * cmd_synth.c - `ergo synth`: the synthetic "landmark tag" benchmark (src/synth/synth.h)
 * written in V*'s layout, a training split with ERGO's SFT conversations, and the
 * legibility check of a configuration.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "cli.h"
#include "progress.h"
#include "commands.h"
#include "synth/synth.h"

static const char *const NAME = "synth";

static void usage(FILE *out) {
    synth_config d;
    synth_config_default(&d);
    fprintf(out,
"usage: ergo synth --out DIR --count N [--seed S] [--split test|train] [knobs]\n"
"       ergo synth --check N [--seed S] [--split test|train] [knobs]\n"
"\n"
"Generates the \"landmark tag\" visual-search benchmark: each image holds a few large\n"
"coloured shapes (landmarks, visible at any resolution) with a small tag below each\n"
"carrying a short code, plus decoy tags. The question names a landmark and asks for its\n"
"code as a 4-option multiple choice (the code, near-misses with one character changed,\n"
"and codes of other tags in the image). The codes are legible at full resolution and not\n"
"at ERGO's stage-1 budget. Sample i depends only on (seed, split, i, knobs): the same\n"
"command writes the same bytes, and --count 10 is a prefix of --count 1000.\n"
"\n"
"  --out DIR          where to write (created if missing); for `ergo eval --bench vstar\n"
"                     --data-root R` use --out R/vstar_bench\n"
"  --count N          samples 0..N-1\n"
"  --seed S           unsigned 64-bit seed (1)\n"
"  --split test|train different samples for the same seed (test); train also writes\n"
"                     the SFT conversations\n"
"  --check N          write nothing: run the legibility check on samples 0..N-1 and print\n"
"                     how often nearest-option template matching reads the target tag at\n"
"                     full resolution and at --stage1-tokens (chance is 25%%)\n"
"\n"
"knobs (defaults in brackets):\n"
"  --size PX          image side [%d]; the equal-budget one-pass baseline (121 tokens:\n"
"                     1344 -> 308) still reads about half of the tags by template\n"
"                     matching at 1344, about chance at 1848 (see --check)\n"
"  --tag-px P         font lattice pitch: a glyph is (4P+1)x(6P+1) px of 1-px strokes, a\n"
"                     3-character tag 39x19 px at P=2 [%d]\n"
"  --code-len L       characters per code, 2..4 [%d]\n"
"  --alphabet CHARS   code characters, from %s [%s]\n"
"  --landmarks K|A-B  landmarks per image, 2..8, each its own colour [%d-%d]\n"
"  --decoys D|A-B     decoy tags per image (as many as fit), 0..8 [%d-%d]\n"
"  --clutter A-B      grey discs and polygons of 6-26 px [%d-%d]\n"
"  --ink-max V        ink of each glyph dot: grey uniform in [0, V] [%d]\n"
"  --paper-min V      tag paper: cells of --paper-cell px, grey uniform in [V, 255] [%d]\n"
"  --paper-cell PX    [%d]\n"
"  --stage1-tokens T  ERGO's stage-1 budget (max_pixels = T*28*28): the frame of the SFT\n"
"                     boxes and the resolution --check reads at [%d: 1344 -> 224]\n"
"  --category NAME    the V* category written [%s] (the reference scores only\n"
"                     direct_attributes and relative_position)\n"
"  --quiet            no progress line\n"
"\n"
"output:\n"
"  DIR/test_questions.jsonl  one line per sample in V*'s fields: question_id, image\n"
"                     (relative path), text (question \\n (A) code \\n ... (D) code \\n postfix:\n"
"                     the reference's split on \\n gives question, options, postfix), category,\n"
"                     label (A-D); plus bbox, the target tag's box [x1, y1, x2, y2) in\n"
"                     original pixels, and synth (target, code, options, every landmark and\n"
"                     tag with its box)\n"
"  DIR/images/<split>_NNNNNN.png\n"
"  DIR/synth_manifest.json   seed, split, count and every knob\n"
"  train only:\n"
"  DIR/sft.jsonl      {\"id\", \"messages\": OpenAI messages: system (ERGO's prompt), user\n"
"                     [image, question + TEMPLATE1], assistant \"<think>...</think>\n"
"                     <zoom>[x1, y1, x2, y2]</zoom>\" (box in the stage-1 image's pixels),\n"
"                     user [image, question + options + postfix + TEMPLATE2], assistant\n"
"                     \"<think>...</think><answer>X</answer>\"; zoom_box, crop, stage1_size}\n"
"  DIR/sft/<split>_NNNNNN_s1.png, _s2.png  the stage-1 image (BICUBIC) and the crop\n"
"                     (LANCZOS) exactly as `ergo run` makes them; image URLs are paths\n"
"                     relative to DIR\n",
            d.size, d.tag_px, d.code_len, synth_font_chars, d.alphabet, d.landmarks_min,
            d.landmarks_max, d.decoys_min, d.decoys_max, d.clutter_min, d.clutter_max, d.ink_max,
            d.paper_min, d.paper_cell, d.stage1_tokens, d.category);
}

/* "K" or "A-B" with lo <= A <= B <= hi. */
static int parse_range(const char *s, int lo, int hi, int *a, int *b) {
    char buf[64];
    if (strlen(s) >= sizeof buf) return 0;
    strcpy(buf, s);
    char *dash = strchr(buf, '-');
    long long x, y;
    if (dash) {
        *dash = 0;
        if (!cli_parse_long(buf, lo, hi, &x) || !cli_parse_long(dash + 1, lo, hi, &y) || x > y)
            return 0;
    } else {
        if (!cli_parse_long(buf, lo, hi, &x)) return 0;
        y = x;
    }
    *a = (int)x, *b = (int)y;
    return 1;
}

static int parse_int(const char *s, long long lo, long long hi, int *out) {
    long long v;
    if (!cli_parse_long(s, lo, hi, &v)) return 0;
    *out = (int)v;
    return 1;
}

/* synth_write's callback: the shared progress bar (progress.h). */
static void show_progress(void *ctx, int64_t done, int64_t total) {
    progress_update(ctx, (double)done, (double)total, "images");
}

int cmd_synth(int argc, char **argv) {
    synth_config c;
    synth_config_default(&c);
    const char *out = NULL;
    long long count = -1, check = -1;
    uint64_t seed = 1;
    synth_split split = SYNTH_TEST;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--quiet")) {
            quiet = 1;
            continue;
        }
        if (!strncmp(a, "--", 2) && !v) return cli_usage_error(NAME, "%s needs a value", a);
        int ok = 1;
        if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--count")) ok = cli_parse_long(v, 0, 100000000, &count);
        else if (!strcmp(a, "--check")) ok = cli_parse_long(v, 1, 100000000, &check);
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            ok = *v >= '0' && *v <= '9';
            seed = strtoull(v, &end, 10);
            ok = ok && !*end && !errno;
        } else if (!strcmp(a, "--split")) {
            ok = !strcmp(v, "test") || !strcmp(v, "train");
            split = !strcmp(v, "train") ? SYNTH_TRAIN : SYNTH_TEST;
        } else if (!strcmp(a, "--size")) ok = parse_int(v, 224, 8192, &c.size);
        else if (!strcmp(a, "--tag-px")) ok = parse_int(v, 1, 8, &c.tag_px);
        else if (!strcmp(a, "--code-len")) ok = parse_int(v, 2, SYNTH_MAX_CODE, &c.code_len);
        else if (!strcmp(a, "--alphabet")) {
            ok = strlen(v) < sizeof c.alphabet;
            if (ok) strcpy(c.alphabet, v);
        } else if (!strcmp(a, "--landmarks"))
            ok = parse_range(v, 2, SYNTH_MAX_LANDMARKS, &c.landmarks_min, &c.landmarks_max);
        else if (!strcmp(a, "--decoys"))
            ok = parse_range(v, 0, SYNTH_MAX_DECOYS, &c.decoys_min, &c.decoys_max);
        else if (!strcmp(a, "--clutter")) ok = parse_range(v, 0, 1000, &c.clutter_min, &c.clutter_max);
        else if (!strcmp(a, "--ink-max")) ok = parse_int(v, 0, 255, &c.ink_max);
        else if (!strcmp(a, "--paper-min")) ok = parse_int(v, 0, 255, &c.paper_min);
        else if (!strcmp(a, "--paper-cell")) ok = parse_int(v, 1, 64, &c.paper_cell);
        else if (!strcmp(a, "--stage1-tokens")) ok = parse_int(v, 4, 16384, &c.stage1_tokens);
        else if (!strcmp(a, "--category")) {
            ok = strlen(v) < sizeof c.category && *v;
            if (ok) strcpy(c.category, v);
        } else return cli_usage_error(NAME, "unknown option `%s'", a);
        if (!ok) {
            char msg[160];
            snprintf(msg, sizeof msg, "%s %.60s: not a valid value", a, v);
            return cli_usage_error(NAME, "%s", msg);
        }
        i++;
    }
    ergo_error err = {0};
    if (synth_config_check(&c, &err)) return cli_usage_error(NAME, "%s", err.msg);

    if (check > 0) { /* the legibility check of this configuration */
        long long ok_full = 0, ok_low = 0;
        for (long long i = 0; i < check; i++) {
            synth_sample s;
            if (synth_generate(&c, seed, split, i, &s, &err)) {
                synth_sample_free(&s);
                return cli_fail(NAME, err.msg);
            }
            int a = synth_match(&c, &s, 0, &err), b = a < 0 ? -1 : synth_match(&c, &s, c.stage1_tokens, &err);
            int label = s.label;
            synth_sample_free(&s);
            if (a < 0 || b < 0) return cli_fail(NAME, err.msg);
            ok_full += a == label, ok_low += b == label;
        }
        printf("legibility of the target tag by nearest-option template matching, %lld samples:\n"
               "  full resolution: %.1f%% (%lld/%lld)\n"
               "  %d vision tokens: %.1f%% (%lld/%lld)\n"
               "  chance: 25.0%%\n",
               check, 100.0 * ok_full / check, ok_full, check, c.stage1_tokens,
               100.0 * ok_low / check, ok_low, check);
        return 0;
    }
    if (!out) return cli_usage_error(NAME, "%s", "give --out DIR (or --check N)");
    if (count < 0) return cli_usage_error(NAME, "%s", "give --count N");
    double t0 = now_ms();
    progress_set_quiet(quiet);
    progress p;
    progress_begin(&p, "synth %lld %s samples", count, synth_split_name(split));
    if (synth_write(&c, out, seed, split, count, show_progress, &p, &err)) {
        progress_abort(&p);
        return cli_fail(NAME, err.msg);
    }
    progress_end(&p, "%s", out);
    double dt = (now_ms() - t0) / 1000.0;
    printf("wrote %lld %s samples (seed %llu) to %s in %.1f s (%.1f images/s)\n", count,
           synth_split_name(split), (unsigned long long)seed, out, dt, dt > 0 ? count / dt : 0.0);
    return 0;
}
