/*
 * test_synth.c - the synthetic landmark-tag task (src/synth, src/cli/cmd_synth.c).
 *
 * The legibility check: over 240 test samples, nearest-option template matching reads
 * the target tag at full resolution (>= 98%) and not at the stage-1 budget of 64 vision
 * tokens (<= 40%, chance 25%), with the views made by ERGO's own stage-1 resize. Then
 * what the data set must be: deterministic (same seed, same bytes; other seed or split,
 * other images; sample i independent of the count), geometry (boxes inside the image,
 * the bbox is the tag, nothing overlaps), options (4 distinct, one right, labels spread),
 * V*'s `text` split as the reference splits it, the PNGs decode to the generated pixels,
 * the SFT conversations (ERGO's prompts, a box that ERGO maps to a crop holding the tag,
 * the stage images as ergo_run makes them), and the CLI (--help, a run, usage errors).
 */
#include <jansson.h>
#include <string.h>
#include <sys/wait.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "image/image.h"
#include "pipeline/ergo.h"
#include "pipeline/zoom.h"
#include "synth/synth.h"

#define N_LEGIBILITY 240

static int rect_overlap(int a1, int b1, int a2, int b2, int c1, int d1, int c2, int d2) {
    return a1 < c2 && c1 < a2 && b1 < d2 && d1 < b2;
}

static int inside(const synth_config *c, int x1, int y1, int x2, int y2) {
    return x1 >= 0 && y1 >= 0 && x2 <= c->size && y2 <= c->size && x1 < x2 && y1 < y2;
}

/* Geometry, options and text of one sample; returns the failures seen. */
static int check_sample(const synth_config *c, const synth_sample *s) {
    long before = check_failed;
    const int64_t i = s->index;
    CHECK(s->n_landmarks >= c->landmarks_min && s->n_landmarks <= c->landmarks_max,
          "sample %lld: %d landmarks", (long long)i, s->n_landmarks);
    for (int a = 0; a < s->n_landmarks; a++) {
        const synth_landmark *l = &s->landmarks[a];
        CHECK(inside(c, l->x1, l->y1, l->x2, l->y2), "sample %lld: landmark %d outside", (long long)i, a);
        for (int b = a + 1; b < s->n_landmarks; b++) {
            const synth_landmark *m = &s->landmarks[b];
            CHECK(!rect_overlap(l->x1, l->y1, l->x2, l->y2, m->x1, m->y1, m->x2, m->y2),
                  "sample %lld: landmarks %d and %d overlap", (long long)i, a, b);
            CHECK(l->colour != m->colour, "sample %lld: landmarks %d, %d share a colour", (long long)i, a, b);
        }
        for (int t = 0; t < s->n_tags; t++) {
            const synth_tag *g = &s->tags[t];
            CHECK(!rect_overlap(l->x1, l->y1, l->x2, l->y2, g->x1, g->y1, g->x2, g->y2),
                  "sample %lld: tag %d overlaps landmark %d", (long long)i, t, a);
        }
    }
    for (int t = 0; t < s->n_tags; t++) {
        const synth_tag *g = &s->tags[t];
        CHECK(inside(c, g->x1, g->y1, g->x2, g->y2), "sample %lld: tag %d outside", (long long)i, t);
        CHECK((int)strlen(g->code) == c->code_len, "sample %lld: tag %d code `%s'", (long long)i, t, g->code);
        for (int u = t + 1; u < s->n_tags; u++) {
            const synth_tag *h = &s->tags[u];
            CHECK(!rect_overlap(g->x1, g->y1, g->x2, g->y2, h->x1, h->y1, h->x2, h->y2),
                  "sample %lld: tags %d and %d overlap", (long long)i, t, u);
            CHECK(strcmp(g->code, h->code), "sample %lld: tags %d, %d share code %s", (long long)i, t, u, g->code);
        }
    }
    /* the target tag: directly below its landmark, its border ring drawn in the image */
    const synth_landmark *tl = &s->landmarks[s->target];
    const synth_tag *tt = &s->tags[tl->tag];
    CHECK(tt->landmark == s->target && tt->y1 >= tl->y2 && tt->y1 - tl->y2 <= 16 &&
              tt->x1 >= tl->x1 && tt->x2 <= tl->x2,
          "sample %lld: the target tag is not below its landmark", (long long)i);
    int ring_ok = 1;
    for (int x = tt->x1; x < tt->x2; x++)
        for (int y = tt->y1; y < tt->y2; y++) {
            if (x != tt->x1 && x != tt->x2 - 1 && y != tt->y1 && y != tt->y2 - 1) continue;
            const uint8_t *p = s->img.rgb + ((size_t)y * s->img.width + x) * 3;
            ring_ok &= p[0] == 96 && p[1] == 96 && p[2] == 96;
        }
    CHECK(ring_ok, "sample %lld: the tag's box [%d, %d, %d, %d) is not its drawn border",
          (long long)i, tt->x1, tt->y1, tt->x2, tt->y2);
    /* options: 4 distinct codes, exactly one the truth, at the label */
    int right = 0;
    for (int k = 0; k < SYNTH_N_OPTIONS; k++) {
        right += !strcmp(s->codes[k], tt->code);
        for (int m = k + 1; m < SYNTH_N_OPTIONS; m++)
            CHECK(strcmp(s->codes[k], s->codes[m]), "sample %lld: options %d, %d equal", (long long)i, k, m);
    }
    CHECK(right == 1 && !strcmp(s->codes[s->label], tt->code),
          "sample %lld: %d right options, label %d", (long long)i, right, s->label);
    return (int)(check_failed - before);
}

/* The reference's split: text.split("\n") -> [0], [1:-1], [-1]. */
static void check_split(const char *text, const synth_sample *s) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", text);
    char *lines[16];
    int n = 0;
    for (char *p = buf; n < 16;) {
        lines[n++] = p;
        char *nl = strchr(p, '\n');
        if (!nl) break;
        *nl = 0;
        p = nl + 1;
    }
    CHECK(n == 2 + SYNTH_N_OPTIONS, "sample %lld: text has %d lines", (long long)s->index, n);
    if (n != 2 + SYNTH_N_OPTIONS) return;
    CHECK_EQ_STR(lines[0], s->question, "split question");
    for (int k = 0; k < SYNTH_N_OPTIONS; k++) {
        char want[32];
        snprintf(want, sizeof want, "(%c) %s", 'A' + k, s->codes[k]);
        CHECK_EQ_STR(lines[1 + k], want, "split option");
    }
    CHECK_EQ_STR(lines[n - 1], synth_postfix, "split postfix");
    /* and stage 2's question is the same text, as ergo_full_question builds it */
    const char *opts[SYNTH_N_OPTIONS];
    for (int k = 0; k < SYNTH_N_OPTIONS; k++) opts[k] = s->options[k];
    ergo_question q = {s->question, opts, SYNTH_N_OPTIONS, synth_postfix};
    char *full = ergo_full_question(&q);
    CHECK_EQ_STR(full, text, "ergo_full_question of the split");
    free(full);
}

static void test_legibility_and_geometry(const synth_config *c) {
    int ok_full = 0, ok_low = 0, bad = 0, labels[SYNTH_N_OPTIONS] = {0};
    ergo_error err = {0};
    for (int i = 0; i < N_LEGIBILITY && bad < 5; i++) {
        synth_sample s;
        ergo_status st = synth_generate(c, 20261204, SYNTH_TEST, i, &s, &err);
        CHECK(st == ERGO_OK, "synth_generate %d: %s", i, err.msg);
        if (st) {
            synth_sample_free(&s);
            bad++;
            continue;
        }
        bad += check_sample(c, &s) > 0;
        if (i < 20) check_split(s.text, &s);
        labels[s.label]++;
        int a = synth_match(c, &s, 0, &err), b = synth_match(c, &s, c->stage1_tokens, &err);
        CHECK(a >= 0 && b >= 0, "synth_match %d: %s", i, err.msg);
        ok_full += a == s.label;
        ok_low += b == s.label;
        if (i < 3) { /* the aligned window gives exactly the whole-image resize */
            const synth_tag *t = &s.tags[s.landmarks[s.target].tag];
            for (int k = 0; k < 2; k++) {
                uint8_t *v1 = NULL, *v2 = NULL;
                int n1 = 0, n2 = 0;
                const char *code = k ? s.codes[(s.label + 1) % 4] : NULL;
                synth_tag_view(c, &s.img, t, c->stage1_tokens, 0, code, &v1, &n1, &err);
                synth_tag_view(c, &s.img, t, c->stage1_tokens, 1, code, &v2, &n2, &err);
                CHECK(n1 > 0 && n1 == n2 && !memcmp(v1, v2, (size_t)n1),
                      "sample %d: window view (%d values) differs from the full resize (%d)", i, n1, n2);
                free(v1);
                free(v2);
            }
        }
        synth_sample_free(&s);
    }
    printf("  synth legibility over %d samples: full resolution %.1f%%, %d vision tokens %.1f%% "
           "(chance 25%%); labels A-D %d/%d/%d/%d\n",
           N_LEGIBILITY, 100.0 * ok_full / N_LEGIBILITY, c->stage1_tokens,
           100.0 * ok_low / N_LEGIBILITY, labels[0], labels[1], labels[2], labels[3]);
    CHECK(ok_full >= N_LEGIBILITY * 98 / 100, "full-resolution matching reads %d/%d tags (want >= 98%%)",
          ok_full, N_LEGIBILITY);
    CHECK(ok_low <= N_LEGIBILITY * 40 / 100, "matching at %d tokens reads %d/%d tags (want <= 40%%)",
          c->stage1_tokens, ok_low, N_LEGIBILITY);
    for (int k = 0; k < SYNTH_N_OPTIONS; k++)
        CHECK(labels[k] >= N_LEGIBILITY / 8, "label %c only %d times of %d", 'A' + k, labels[k], N_LEGIBILITY);
}

static void test_determinism(const synth_config *c) {
    ergo_error err = {0};
    synth_sample a, b, d, e;
    synth_generate(c, 5, SYNTH_TEST, 17, &a, &err);
    synth_generate(c, 5, SYNTH_TEST, 17, &b, &err);
    synth_generate(c, 6, SYNTH_TEST, 17, &d, &err);
    synth_generate(c, 5, SYNTH_TRAIN, 17, &e, &err);
    size_t bytes = (size_t)c->size * c->size * 3;
    CHECK(a.img.rgb && b.img.rgb && !memcmp(a.img.rgb, b.img.rgb, bytes) && !strcmp(a.text, b.text) &&
              a.label == b.label,
          "same seed, index and split: different samples");
    CHECK(d.img.rgb && memcmp(a.img.rgb, d.img.rgb, bytes), "seeds 5 and 6 give the same image");
    CHECK(e.img.rgb && memcmp(a.img.rgb, e.img.rgb, bytes), "test and train give the same image");
    synth_sample_free(&a);
    synth_sample_free(&b);
    synth_sample_free(&d);
    synth_sample_free(&e);
    /* a letter alphabet and other knobs still read at full resolution */
    synth_config l = *c;
    strcpy(l.alphabet, "ACEFHKLNPRTUXY");
    l.code_len = 4;
    l.tag_px = 3;
    int ok = 0;
    for (int i = 0; i < 40; i++) {
        synth_sample s;
        if (synth_generate(&l, 9, SYNTH_TEST, i, &s, &err) == ERGO_OK) {
            check_sample(&l, &s);
            ok += synth_match(&l, &s, 0, &err) == s.label;
        }
        synth_sample_free(&s);
    }
    CHECK(ok >= 39, "letters, 4 characters, pitch 3: full resolution reads %d/40", ok);
    /* configuration errors name the option */
    synth_config bad = *c;
    strcpy(bad.alphabet, "01O");
    CHECK(synth_config_check(&bad, &err) == ERGO_E_ARG && strstr(err.msg, "--alphabet"),
          "alphabet with O: %s", err.msg);
    bad = *c;
    bad.landmarks_min = 7, bad.landmarks_max = 8, bad.size = 600;
    CHECK(synth_config_check(&bad, &err) == ERGO_E_ARG && strstr(err.msg, "--"),
          "8 landmarks in 600 px: %s", err.msg);
}

static char *read_text(const char *path) {
    char *txt = NULL;
    size_t n;
    ergo_error err = {0};
    if (file_read_all(path, 1 << 26, &txt, &n, &err)) return NULL;
    return txt;
}

static const char *join(const char *dir, const char *name) {
    static char bufs[4][4096];
    static int k;
    char *p = bufs[k++ & 3];
    if (snprintf(p, 4096, "%s/%s", dir, name) >= 4096) p[0] = 0; /* no such file */
    return p;
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    ergo_error err = {0};
    int ok = !file_read_all(a, 1 << 26, &x, &nx, &err) && !file_read_all(b, 1 << 26, &y, &ny, &err) &&
             nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return ok;
}

/* A written train split: V* lines, PNGs, SFT conversations. */
static void test_written(const synth_config *c) {
    char d1[4096], d2[4096];
    snprintf(d1, sizeof d1, "%s/synth_a", scratch_dir());
    snprintf(d2, sizeof d2, "%s/synth_b", scratch_dir());
    ergo_error err = {0};
    const int n = 6;
    ergo_status st = synth_write(c, d1, 3, SYNTH_TRAIN, n, NULL, NULL, &err);
    CHECK(st == ERGO_OK, "synth_write: %s", err.msg);
    st = synth_write(c, d2, 3, SYNTH_TRAIN, n - 2, NULL, NULL, &err);
    CHECK(st == ERGO_OK, "synth_write: %s", err.msg);
    if (st) return;
    /* determinism of the files; a shorter count is a prefix */
    char *q1 = read_text(join(d1, "test_questions.jsonl")), *q2 = read_text(join(d2, "test_questions.jsonl"));
    char *s1 = read_text(join(d1, "sft.jsonl")), *s2 = read_text(join(d2, "sft.jsonl"));
    CHECK(q1 && q2 && !strncmp(q1, q2, strlen(q2)) && strlen(q1) > strlen(q2), "test_questions.jsonl: not a prefix");
    CHECK(s1 && s2 && !strncmp(s1, s2, strlen(s2)) && strlen(s1) > strlen(s2), "sft.jsonl: not a prefix");
    CHECK(same_file(join(d1, "images/train_000003.png"), join(d2, "images/train_000003.png")) &&
              same_file(join(d1, "sft/train_000001_s2.png"), join(d2, "sft/train_000001_s2.png")),
          "the PNGs of two runs differ");
    json_t *man = json_load_path(join(d1, "synth_manifest.json"), &err);
    CHECK(man && json_integer_value(json_object_get(man, "count")) == n, "synth_manifest.json: %s", err.msg);
    json_decref(man);

    const char *ql = q1, *sl = s1;
    for (int i = 0; i < n && ql && sl; i++) {
        const char *qe = strchr(ql, '\n'), *se = strchr(sl, '\n');
        CHECK(qe && se, "line %d: no newline", i);
        if (!qe || !se) break;
        json_t *j = json_load_bytes(ql, (size_t)(qe - ql), "test_questions.jsonl", &err);
        json_t *f = json_load_bytes(sl, (size_t)(se - sl), "sft.jsonl", &err);
        ql = qe + 1, sl = se + 1;
        CHECK(j && f, "line %d does not parse: %s", i, err.msg);
        synth_sample s;
        if (!j || !f || synth_generate(c, 3, SYNTH_TRAIN, i, &s, &err)) {
            json_decref(j);
            json_decref(f);
            continue;
        }
        const char *text = json_string_value(json_object_get(j, "text"));
        const char *rel = json_string_value(json_object_get(j, "image"));
        const char *label = json_string_value(json_object_get(j, "label"));
        CHECK(json_integer_value(json_object_get(j, "question_id")) == i && text && rel && label &&
                  label[0] == 'A' + s.label && !label[1] &&
                  !strcmp(json_string_value(json_object_get(j, "category")), "direct_attributes"),
              "line %d: V* fields", i);
        if (text) check_split(text, &s);
        const synth_tag *t = &s.tags[s.landmarks[s.target].tag];
        const json_t *bb = json_object_get(j, "bbox");
        CHECK(json_array_size(bb) == 4 && json_integer_value(json_array_get(bb, 0)) == t->x1 &&
                  json_integer_value(json_array_get(bb, 1)) == t->y1 &&
                  json_integer_value(json_array_get(bb, 2)) == t->x2 &&
                  json_integer_value(json_array_get(bb, 3)) == t->y2,
              "line %d: bbox is not the target tag", i);
        image im = {0};
        if (rel) {
            st = image_decode_file(&im, join(d1, rel), NULL, &err);
            CHECK(st == ERGO_OK && im.width == c->size && im.height == c->size &&
                      !memcmp(im.rgb, s.img.rgb, (size_t)c->size * c->size * 3),
                  "line %d: %s does not decode to the generated pixels: %s", i, rel, err.msg);
        }
        /* SFT: roles, ERGO's prompts, the box, the stage images */
        const json_t *msgs = json_object_get(f, "messages");
        static const char *roles[5] = {"system", "user", "assistant", "user", "assistant"};
        int roles_ok = json_array_size(msgs) == 5;
        for (int k = 0; k < 5 && roles_ok; k++)
            roles_ok = !strcmp(json_string_value(json_object_get(json_array_get(msgs, (size_t)k), "role")), roles[k]);
        CHECK(roles_ok, "sft line %d: roles", i);
        if (!roles_ok) goto next;
        CHECK_EQ_STR(json_string_value(json_object_get(json_array_get(msgs, 0), "content")),
                     ergo_system_prompt, "sft system prompt");
        for (int u = 0; u < 2; u++) {
            const json_t *parts = json_object_get(json_array_get(msgs, u ? 3 : 1), "content");
            const char *url = json_string_value(json_object_get(
                json_object_get(json_array_get(parts, 0), "image_url"), "url"));
            const char *txt = json_string_value(json_object_get(json_array_get(parts, 1), "text"));
            char want[2048];
            snprintf(want, sizeof want, "%s%s", u ? s.text : s.question,
                     u ? ergo_template2_suffix : ergo_template1_suffix);
            CHECK_EQ_STR(txt, want, u ? "sft stage-2 prompt" : "sft stage-1 prompt");
            image v = {0};
            st = url ? image_decode_file(&v, join(d1, url), NULL, &err) : ERGO_E_FORMAT;
            CHECK(st == ERGO_OK, "sft line %d: image %d: %s", i, u, err.msg);
            if (!st && u == 0) {
                image w = {0};
                image_resize(&w, &s.img, v.width, v.height, IMAGE_FILTER_BICUBIC, &err);
                CHECK(v.width == 224 && v.height == 224 && w.rgb &&
                          !memcmp(v.rgb, w.rgb, (size_t)224 * 224 * 3),
                      "sft line %d: the stage-1 image is not the 224 px BICUBIC view", i);
                image_free(&w);
            }
            if (!st && u == 1) { /* ERGO's own path from the stage-1 answer to the crop */
                const char *a1 = json_string_value(json_object_get(json_array_get(msgs, 2), "content"));
                zoom_box zb;
                zoom_crop cr;
                zoom_status zs = zoom_parse(a1, strlen(a1), &zb);
                if (zs == ZOOM_OK)
                    zs = zoom_map(&zb, (double)c->size / 224, (double)c->size / 224, c->size, c->size,
                                  ERGO_FACTOR, ERGO_MIN_PIXELS, (int64_t)c->stage1_tokens * 28 * 28, &cr);
                CHECK(zs == ZOOM_OK && !strncmp(a1, "<think>", 7) && strstr(a1, "</think> <zoom>[") &&
                          cr.x1 <= t->x1 && cr.y1 <= t->y1 && cr.x2 >= t->x2 && cr.y2 >= t->y2 &&
                          cr.x2 - cr.x1 <= 230 && cr.x2 - cr.x1 >= 110 && v.width == cr.out_w &&
                          v.height == cr.out_h,
                      "sft line %d: stage-1 answer `%s' does not crop the tag [%d, %d, %d, %d) "
                      "(crop [%d, %d, %d, %d) -> %dx%d, image %dx%d)",
                      i, a1, t->x1, t->y1, t->x2, t->y2, cr.x1, cr.y1, cr.x2, cr.y2, cr.out_w,
                      cr.out_h, v.width, v.height);
                if (zs == ZOOM_OK) {
                    image cut = {0}, w = {0};
                    image_crop(&cut, &s.img, cr.x1, cr.y1, cr.x2, cr.y2, &err);
                    image_resize(&w, &cut, cr.out_w, cr.out_h, IMAGE_FILTER_LANCZOS, &err);
                    CHECK(w.rgb && v.width == w.width && v.height == w.height &&
                              !memcmp(v.rgb, w.rgb, (size_t)w.width * w.height * 3),
                          "sft line %d: the stage-2 image is not ERGO's crop", i);
                    image_free(&cut);
                    image_free(&w);
                }
            }
            image_free(&v);
        }
        {
            const char *a2 = json_string_value(json_object_get(json_array_get(msgs, 4), "content"));
            char *ans = a2 ? ergo_extract_answer(a2) : NULL;
            char want[2] = {(char)('A' + s.label), 0};
            CHECK_EQ_STR(ans, want, "sft stage-2 answer");
            CHECK(a2 && !strncmp(a2, "<think>", 7) && strstr(a2, t->code), "sft line %d: `%s'", i, a2 ? a2 : "");
            free(ans);
        }
    next:
        image_free(&im);
        synth_sample_free(&s);
        json_decref(j);
        json_decref(f);
    }
    free(q1);
    free(q2);
    free(s1);
    free(s2);
}

/* ---- the CLI ------------------------------------------------------------------ */

static int run_cli(const char *args, char **out, char **errtext) {
    char cmd[20000], o[1024], e[1024];
    snprintf(o, sizeof o, "%.1000s/synth.out", scratch_dir());
    snprintf(e, sizeof e, "%.1000s/synth.err", scratch_dir());
    if (snprintf(cmd, sizeof cmd, "%.4000s synth %.8000s >%s 2>%s", getenv("ERGO_BIN"), args, o, e) >=
        (int)sizeof cmd)
        return -1;
    int rc = system(cmd);
    *out = read_text(o);
    *errtext = read_text(e);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void usage_error(const char *args, const char *want) {
    char *o, *e;
    int rc = run_cli(args, &o, &e);
    const char *nl = e ? strchr(e, '\n') : NULL;
    CHECK(rc == 2 && e && !strncmp(e, "ergo synth: ", 12) && nl && !nl[1] && strstr(e, want),
          "`ergo synth %s': exit %d, stderr \"%s\" (want 2 and one line with \"%s\")", args, rc,
          e ? e : "", want);
    free(o);
    free(e);
}

static void test_cli(void) {
    if (!getenv("ERGO_BIN")) {
        SKIP("ERGO_BIN not set: the synth CLI tests need the ergo binary (make test sets it)");
        return;
    }
    char *o, *e;
    int rc = run_cli("--help", &o, &e);
    CHECK(rc == 0 && o && strstr(o, "--tag-px") && strstr(o, "--landmarks") && strstr(o, "--decoys") &&
              strstr(o, "test_questions.jsonl") && strstr(o, "sft.jsonl") && strstr(o, "bbox"),
          "--help: exit %d", rc);
    free(o);
    free(e);
    char args[4096];
    snprintf(args, sizeof args, "--out %s/synth_cli --count 2 --seed 11 --split train --landmarks 3 "
             "--decoys 0-1 --quiet", scratch_dir());
    rc = run_cli(args, &o, &e);
    CHECK(rc == 0 && o && strstr(o, "wrote 2 train samples"), "a small run: exit %d, %s", rc, e ? e : "");
    char p[4096];
    snprintf(p, sizeof p, "%s/synth_cli/sft/train_000001_s2.png", scratch_dir());
    CHECK(file_exists(p), "a small run wrote no %s", p);
    free(o);
    free(e);
    rc = run_cli("--check 4 --seed 2", &o, &e);
    CHECK(rc == 0 && o && strstr(o, "full resolution") && strstr(o, "64 vision tokens"), "--check: exit %d", rc);
    free(o);
    free(e);
    usage_error("--count 2", "--out");
    usage_error("--out /tmp/x", "--count");
    usage_error("--out /tmp/x --count 2 --bogus 1", "unknown option");
    usage_error("--out /tmp/x --count 2 --split dev", "--split");
    usage_error("--out /tmp/x --count -1", "--count");
    usage_error("--out /tmp/x --count 2 --alphabet 0O1", "--alphabet");
    usage_error("--out /tmp/x --count 2 --landmarks 5-3", "--landmarks");
    usage_error("--out /tmp/x --count 2 --size", "needs a value");
    snprintf(args, sizeof args, "--out %s/nonexistent/deeper --count 1", scratch_dir());
    rc = run_cli(args, &o, &e);
    CHECK(rc == 1 && e && strstr(e, "cannot create") && strchr(e, '\n') && !strchr(e, '\n')[1],
          "an unwritable --out: exit %d, \"%s\"", rc, e ? e : "");
    free(o);
    free(e);
}

void test_synth(void) {
    synth_config c;
    synth_config_default(&c);
    test_legibility_and_geometry(&c);
    test_determinism(&c);
    test_written(&c);
    test_cli();
}
