/*
 * test_pipeline.c - ERGO's two stages (src/pipeline/ergo.c) against the reference's
 * own two-stage loop (tools/fixtures_pipeline.py: infer.py's logic, transformers
 * 4.56.2 generate, do_sample=False) on the tiny lm_tied_new checkpoint, regenerated
 * into a scratch directory:
 *   - stage 1: the prompt ids, the generated ids (16 at most) and text;
 *   - the box: parsed, mapped, the LANCZOS crop's size and pixels (within 1);
 *   - stage 2: the whole prompt ids (the conversation in the one session), the
 *     image grid, the top-64 logits after the prompt (1e-3), the generated ids;
 *   - one cache: stage 2 prefilled only its new tokens and encoded only the crop,
 *     and (forced_box) its logits equal one prefill of the whole conversation (1e-4);
 *   - fallbacks: no box (the whole original, as the reference), an invalid box
 *     (x2 < x1: the reference raises; ergo falls back and says so), --fallback
 *     downsampled (no second encode); the baseline's one pass;
 *   - answer extraction and the stage-2 question format;
 *   - `ergo run` ($ERGO_BIN): --mode both --json fields, --save-crop/--save-viz PNGs,
 *     --batch (one line per item, an error object for a bad line), failures.
 */
#include <jansson.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "image/image.h"
#include "io/random_checkpoint.h"
#include "pipeline/ergo.h"

static void fixture(char *out, size_t n, const char *rel) {
    snprintf(out, n, "%s/%s", fixtures_dir(), rel);
}

static int32_t *ints(const json_t *a, int *n) {
    *n = (int)json_array_size(a);
    int32_t *v = malloc(sizeof *v * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return v;
}

static void check_ids(const tok_ids *got, const json_t *want, const char *label) {
    int n;
    int32_t *w = ints(want, &n);
    CHECK_EQ_I32(got->v, got->n, w, (size_t)n, label);
    free(w);
}

/* Vision rows of one image, as the context makes them (preprocess + encode). */
static float *rows_of(context *c, const image *im, mrope_grid *g, int64_t *tokens) {
    ergo_error err = {0};
    context_image ci;
    ergo_status st = context_encode_image(c, im, NULL, &ci, &err);
    CHECK(st == ERGO_OK, "encode: %s", err.msg);
    *g = ci.grid;
    *tokens = ci.tokens;
    float *rows = ci.rows; /* taken */
    ci.rows = NULL;
    context_image_free(&ci);
    return rows;
}

/* The stage-2 logits of the live session == one prefill of the whole conversation. */
static void check_single_prefill(context *c, const ergo_result *r, const char *name) {
    const engine *e = c->e;
    mrope_grid g[2];
    int64_t n1, n2;
    float *a = rows_of(c, &r->stage1_image, &g[0], &n1);
    float *b = rows_of(c, &r->stage2_image, &g[1], &n2);
    if (!a || !b) {
        free(a);
        free(b);
        return;
    }
    const int D = e->m.config.text.hidden, V = e->m.config.text.vocab_size;
    float *rows = malloc(sizeof *rows * (size_t)(n1 + n2) * D);
    float *logits = malloc(sizeof *logits * (size_t)V);
    memcpy(rows, a, sizeof *rows * (size_t)n1 * D);
    memcpy(rows + n1 * D, b, sizeof *rows * (size_t)n2 * D);
    session s;
    ergo_error err = {0};
    ergo_status st = session_init(&s, &e->m, &c->pool, 1 << 16, &err);
    if (!st)
        st = session_append(&s, &c->st, r->conversation.v, (int)r->conversation.n, g, 2, rows,
                            logits, &err);
    CHECK(st == ERGO_OK, "%s: single prefill: %s", name, err.msg);
    char label[128];
    snprintf(label, sizeof label, "%s: stage-2 logits vs one prefill of the conversation", name);
    if (!st) CHECK_CLOSE(r->stage2_logits, logits, (size_t)V, 1e-4, 0, label);
    session_free(&s);
    free(a);
    free(b);
    free(rows);
    free(logits);
}

static void check_run(context *c, const image *orig, const json_t *run) {
    const char *name = json_string_value(json_object_get(run, "name"));
    const json_t *forced = json_object_get(run, "stage1_text_forced");
    const json_t *s1 = json_object_get(run, "stage1"), *s2 = json_object_get(run, "stage2");
    const json_t *box = json_object_get(run, "box"), *opts = json_object_get(run, "options");
    const char *ov[8];
    int no = (int)json_array_size(opts);
    for (int i = 0; i < no && i < 8; i++) ov[i] = json_string_value(json_array_get(opts, (size_t)i));
    ergo_question q = {json_string_value(json_object_get(run, "question")), ov, no,
                       json_string_value(json_object_get(run, "postfix"))};
    ergo_options o;
    ergo_options_default(&o);
    o.max_new_tokens = 16;
    o.keep_logits = 1;
    o.stage1_text = json_string_value(forced);
    ergo_result r;
    ergo_error err = {0};
    ergo_status st = ergo_run(c, &o, orig, &q, &r, &err);
    CHECK(st == ERGO_OK, "%s: %s", name, err.msg);
    if (st) {
        ergo_result_free(&r);
        return;
    }
    char label[160];
    int n1, n2;
    int32_t *p1 = ints(json_object_get(s1, "prompt_ids"), &n1);
    int32_t *p2 = ints(json_object_get(s2, "prompt_ids"), &n2);
    /* stage 1 */
    CHECK_EQ_INT(r.w1, json_integer_value(json_object_get(run, "w1")), "stage-1 width");
    CHECK_EQ_INT(r.h1, json_integer_value(json_object_get(run, "h1")), "stage-1 height");
    CHECK(!r.s1.processor_resized, "%s: the processor resized the stage-1 image again", name);
    CHECK_EQ_INT(r.s1.prompt_tokens, n1, "stage-1 prompt tokens");
    snprintf(label, sizeof label, "%s: stage-1 prompt ids", name);
    CHECK_EQ_I32(r.conversation.v, (size_t)n1, p1, (size_t)n1, label);
    snprintf(label, sizeof label, "%s: stage-1 ids", name);
    check_ids(&r.s1.ids, json_object_get(s1, "generated"), label);
    snprintf(label, sizeof label, "%s: stage-1 text", name);
    CHECK_EQ_STR(r.s1.text, json_string_value(json_object_get(s1, "text")), label);
    /* the box and the crop */
    const char *outcome = json_string_value(json_object_get(box, "outcome"));
    const json_t *cb = json_object_get(box, "crop"), *sz = json_object_get(box, "size");
    if (!strcmp(outcome, "ok")) {
        CHECK(r.box_status == ZOOM_OK && r.view == ERGO_VIEW_CROP, "%s: box %s", name,
              zoom_status_name(r.box_status));
        int got[6] = {r.crop.x1, r.crop.y1, r.crop.x2, r.crop.y2, r.crop.out_w, r.crop.out_h};
        for (int k = 0; k < 6; k++)
            CHECK_EQ_INT(got[k], json_integer_value(json_array_get(k < 4 ? cb : sz, (size_t)(k % 4))),
                         "crop field");
        char path[1024], rel[256];
        snprintf(rel, sizeof rel, "pipeline/%s", json_string_value(json_object_get(run, "crop_png")));
        fixture(path, sizeof path, rel);
        image want = {0};
        CHECK(image_decode_file(&want, path, NULL, &err) == ERGO_OK, "%s: %s", name, err.msg);
        if (want.rgb && want.width == r.stage2_image.width && want.height == r.stage2_image.height) {
            int worst = 0;
            long off = 0;
            for (size_t i = 0; i < (size_t)want.width * want.height * 3; i++) {
                int d = abs((int)want.rgb[i] - (int)r.stage2_image.rgb[i]);
                worst = d > worst ? d : worst;
                off += d != 0;
            }
            CHECK(worst <= 1, "%s: crop pixels differ by up to %d (%ld values)", name, worst, off);
            printf("  [pipeline] %s: crop %dx%d, max pixel difference %d (%ld values differ)\n",
                   name, want.width, want.height, worst, off);
        } else {
            CHECK(0, "%s: crop size %dx%d, reference %dx%d", name, r.stage2_image.width,
                  r.stage2_image.height, want.width, want.height);
        }
        image_free(&want);
    } else {
        CHECK(r.box_status == ZOOM_NONE && r.view == ERGO_VIEW_FALLBACK_FULL,
              "%s: box %s, view %s (want none, fallback_full)", name,
              zoom_status_name(r.box_status), ergo_view_name(r.view));
    }
    /* stage 2: grid, the conversation, logits, generation */
    const json_t *g2 = json_array_get(json_object_get(s2, "grids"), 1);
    CHECK(r.s2.grid_t == json_integer_value(json_array_get(g2, 0)) &&
              r.s2.grid_h == json_integer_value(json_array_get(g2, 1)) &&
              r.s2.grid_w == json_integer_value(json_array_get(g2, 2)),
          "%s: stage-2 grid %d %d %d", name, r.s2.grid_t, r.s2.grid_h, r.s2.grid_w);
    int retok = json_is_true(json_object_get(run, "stage1_retokenizes"));
    CHECK(retok == r.stage1_retokenizes, "%s: retokenizes %d, reference %d", name,
          r.stage1_retokenizes, retok);
    snprintf(label, sizeof label, "%s: stage-2 prompt ids (the whole conversation)", name);
    if (retok) CHECK_EQ_I32(r.conversation.v, r.conversation.n, p2, (size_t)n2, label);
    else SKIP("%s: the reference re-tokenizes stage 1 differently; prompt ids not compared", name);
    /* one cache: stage 2 prefilled only what stage 1 had not, encoded only its image */
    int in_session = o.stage1_text ? 0 : (int)r.s1.ids.n - 1;
    CHECK_EQ_INT(r.s2.prompt_tokens, n2 - n1 - in_session, "stage-2 prefilled tokens");
    CHECK_EQ_INT(r.s2.context_tokens, n2, "stage-2 context");
    CHECK_EQ_INT(r.s1.vision_encodes + r.s2.vision_encodes, 2, "vision encodes");
    const json_t *top = json_object_get(s2, "last_logits_top");
    double worst = 0;
    for (size_t i = 0; i < json_array_size(top); i++) {
        const json_t *t = json_array_get(top, i);
        double d = fabs((double)r.stage2_logits[json_integer_value(json_array_get(t, 0))] -
                        json_real_value(json_array_get(t, 1)));
        worst = d > worst ? d : worst;
    }
    CHECK(worst <= 1e-3, "%s: stage-2 top-64 logits differ by %g", name, worst);
    snprintf(label, sizeof label, "%s: stage-2 ids", name);
    check_ids(&r.s2.ids, json_object_get(s2, "generated"), label);
    snprintf(label, sizeof label, "%s: stage-2 text", name);
    CHECK_EQ_STR(r.s2.text, json_string_value(json_object_get(s2, "text")), label);
    if (!strcmp(name, "forced_box")) check_single_prefill(c, &r, name); /* one is enough (time) */
    printf("  [pipeline] %s: stage 1 %d prompt + %zu ids, stage 2 %d prefilled of %d, "
           "top-64 logit error %.2g\n", name, n1, r.s1.ids.n, r.s2.prompt_tokens, n2, worst);
    free(p1);
    free(p2);
    ergo_result_free(&r);
}

/* ergo-only paths: an invalid box, the downsampled fallback, the baseline. */
static void check_fallbacks(context *c, const image *orig) {
    ergo_question q = {"Where is the circle?", NULL, 0, NULL};
    ergo_options o;
    ergo_options_default(&o);
    o.max_new_tokens = 3;
    o.max_vision_tokens = 64; /* a small stage 1 keeps these runs short */
    o.stage1_text = "<zoom>[300, 30, 40, 200]</zoom>"; /* x2 < x1: the reference raises */
    ergo_result r;
    ergo_error err = {0};
    CHECK(ergo_run(c, &o, orig, &q, &r, &err) == ERGO_OK, "invalid box: %s", err.msg);
    CHECK(r.box_status == ZOOM_INVALID && r.view == ERGO_VIEW_FALLBACK_FULL &&
              strstr(r.crop.why, "x2 < x1"),
          "invalid box: %s, %s, \"%s\"", zoom_status_name(r.box_status), ergo_view_name(r.view),
          r.crop.why);
    CHECK(r.s2.image_w == 504 && r.s2.image_h == 336 && r.s2.processor_resized,
          "fallback full: the processor's %dx%d", r.s2.image_w, r.s2.image_h);
    ergo_result_free(&r);
    o.fallback = ERGO_FALLBACK_DOWNSAMPLED;
    o.stage1_text = "no box at all";
    CHECK(ergo_run(c, &o, orig, &q, &r, &err) == ERGO_OK, "downsampled: %s", err.msg);
    CHECK(r.view == ERGO_VIEW_FALLBACK_DOWNSAMPLED && r.s2.vision_reused &&
              r.s2.vision_encodes == 0 && r.s2.vision_tokens == r.s1.vision_tokens,
          "downsampled fallback: view %s, reused %d, encodes %d", ergo_view_name(r.view),
          r.s2.vision_reused, r.s2.vision_encodes);
    ergo_result_free(&r);
    CHECK(ergo_run_baseline(c, &o, orig, &q, &r, &err) == ERGO_OK, "baseline: %s", err.msg);
    CHECK(r.baseline && r.s1.vision_tokens == 18 * 12 && r.s1.vision_encodes == 1 &&
              !r.s2.ran && r.s1.ids.n >= 1 && r.answer,
          "baseline: %lld vision tokens", (long long)r.s1.vision_tokens);
    ergo_result_free(&r);
}

static void check_text_helpers(void) {
    struct { const char *in, *want; } cases[] = {
        {"<think>x</think><answer> B </answer>", "B"},
        {"<answer>\n A\u3000</answer> <answer>C</answer>", "A"},
        {"<answer> open ended", "open ended"},
        {"no tags here ", "no tags here "},
        {"<answer></answer>", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *a = ergo_extract_answer(cases[i].in);
        CHECK_EQ_STR(a, cases[i].want, "extract_answer");
        free(a);
    }
    const char *opts[] = {"A. red", "B. blue"};
    ergo_question q = {"Q?", opts, 2, "Answer."};
    char *f = ergo_full_question(&q);
    CHECK_EQ_STR(f, "Q?\nA. red\nB. blue\nAnswer.", "full question");
    free(f);
    ergo_question bare = {"Q?", NULL, 0, NULL};
    f = ergo_full_question(&bare);
    CHECK_EQ_STR(f, "Q?", "bare question");
    free(f);
}

/* ---- `ergo run` ($ERGO_BIN): --json, --save-crop/--save-viz, --batch, errors ---- */

static int run_cli(const char *args, const char *out_name, char **out, char **errtext) {
    char cmd[12288], o[1024], e[1024];
    snprintf(o, sizeof o, "%s/%s.out", scratch_dir(), out_name);
    snprintf(e, sizeof e, "%s/%s.err", scratch_dir(), out_name);
    snprintf(cmd, sizeof cmd, "%s run %s >%s 2>%s", getenv("ERGO_BIN"), args, o, e);
    int rc = system(cmd);
    ergo_error err = {0};
    size_t n;
    *out = *errtext = NULL;
    file_read_all(o, 1 << 24, out, &n, &err);
    file_read_all(e, 1 << 20, errtext, &n, &err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void check_cli(const char *dir, const char *img) {
    if (!getenv("ERGO_BIN")) {
        SKIP("ERGO_BIN not set: the `ergo run` CLI tests need the binary (make test sets it)");
        return;
    }
    char args[8192], crop[1024], viz[1024], batch[1024];
    snprintf(crop, sizeof crop, "%s/run_crop.png", scratch_dir());
    snprintf(viz, sizeof viz, "%s/run_viz.png", scratch_dir());
    snprintf(args, sizeof args,
             "--model %s --image %s --question 'Where?' --max-new-tokens 2 --max-vision-tokens 64 "
             "--stage1-text '<zoom>[4, 3, 30, 20]</zoom>' --json --save-crop %s --save-viz %s "
             "--mode both",
             dir, img, crop, viz);
    char *out, *errtext;
    int rc = run_cli(args, "run1", &out, &errtext);
    json_error_t je;
    json_t *j = out ? json_loads(out, 0, &je) : NULL;
    CHECK(rc == 0 && j, "ergo run --json: exit %d, stderr %s", rc, errtext ? errtext : "");
    const json_t *er = json_object_get(j, "ergo"), *bl = json_object_get(j, "baseline");
    CHECK(json_integer_value(json_object_get(json_object_get(er, "stage1"), "vision_tokens")) > 0 &&
              json_integer_value(json_object_get(json_object_get(er, "stage2"), "vision_tokens")) > 0 &&
              json_integer_value(json_object_get(bl, "vision_tokens")) == 18 * 12 &&
              json_is_string(json_object_get(er, "answer")) &&
              !strcmp(json_string_value(json_object_get(er, "view")), "crop") &&
              json_is_array(json_object_get(json_object_get(er, "box"), "original")) &&
              json_is_object(json_object_get(json_object_get(er, "stage2"), "timings")) &&
              json_real_value(json_object_get(json_object_get(j, "ratios"), "vision_tokens")) > 0,
          "ergo run --mode both --json fields: %s", out ? out : "");
    json_decref(j);
    free(out);
    free(errtext);
    image a = {0}, b = {0};
    ergo_error err = {0};
    CHECK(image_decode_file(&a, crop, NULL, &err) == ERGO_OK && a.width % 28 == 0,
          "--save-crop: %s", err.msg);
    CHECK(image_decode_file(&b, viz, NULL, &err) == ERGO_OK && b.width > a.width,
          "--save-viz: %s", err.msg);
    image_free(&a);
    image_free(&b);

    /* batch: a good line, a bad JSON line, a missing image; one result line each */
    snprintf(batch, sizeof batch, "%s/batch.jsonl", scratch_dir());
    char lines[4096];
    snprintf(lines, sizeof lines,
             "{\"id\": \"a\", \"image\": \"%s\", \"question\": \"Q?\", \"options\": "
             "[\"A. x\", \"B. y\"], \"postfix\": \"Letter.\"}\n{not json\n\n"
             "{\"id\": 7, \"image\": \"/nonexistent.png\", \"question\": \"Q?\"}\n",
             img);
    file_write_all(batch, lines, strlen(lines), &err);
    snprintf(args, sizeof args,
             "--model %s --batch %s --max-new-tokens 2 --max-vision-tokens 64 --fallback downsampled",
             dir, batch);
    rc = run_cli(args, "batch", &out, &errtext);
    int n_lines = 0, n_err = 0, ok_a = 0;
    for (char *line = out ? strtok(out, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *lj = json_loads(line, 0, &je);
        n_lines++;
        n_err += json_object_get(lj, "error") != NULL;
        ok_a |= json_is_string(json_object_get(lj, "id")) && json_object_get(lj, "answer");
        json_decref(lj);
    }
    CHECK(rc == 0 && n_lines == 3 && n_err == 2 && ok_a && errtext && !*errtext,
          "batch: exit %d, %d lines, %d errors, good line %d, stderr \"%s\"", rc, n_lines, n_err,
          ok_a, errtext ? errtext : "");
    free(out);
    free(errtext);

    /* benchmark aids: exact token counts per stage, the box from --box-text, and the
     * linear weights quantised (q4, no cache file) */
    snprintf(args, sizeof args,
             "--model %s --image %s --question 'Where?' --max-vision-tokens 64 --mode both "
             "--fixed-tokens 3,4,5 --box-text '<zoom>[4, 3, 30, 20]</zoom>' --weights q4 "
             "--weights-cache off --json",
             dir, img);
    rc = run_cli(args, "fixed", &out, &errtext);
    j = out ? json_loads(out, 0, &je) : NULL;
    er = json_object_get(j, "ergo"), bl = json_object_get(j, "baseline");
    CHECK(rc == 0 && j &&
              json_integer_value(json_object_get(json_object_get(er, "stage1"), "generated_tokens")) == 3 &&
              json_integer_value(json_object_get(json_object_get(er, "stage2"), "generated_tokens")) == 4 &&
              json_integer_value(json_object_get(bl, "generated_tokens")) == 5 &&
              !strcmp(json_string_value(json_object_get(er, "view")), "crop"),
          "--fixed-tokens 3,4,5 --box-text --weights q4: exit %d, %s, stderr %s", rc,
          out ? out : "", errtext ? errtext : "");
    json_decref(j);
    free(out);
    free(errtext);
    rc = run_cli("--model x --image a --question b --fixed-tokens 3,4", "fixed_bad", &out, &errtext);
    CHECK(rc == 2, "--fixed-tokens with two counts: exit %d", rc);
    free(out);
    free(errtext);
    snprintf(args, sizeof args, "--model %s --image %s --question Q --weights q5", dir, img);
    rc = run_cli(args, "weights_bad", &out, &errtext);
    CHECK(rc == 2 && errtext && strstr(errtext, "--weights q5: use bf16"), /* a usage error (issue 15) */
          "--weights q5: exit %d, stderr \"%s\"", rc, errtext ? errtext : "");
    free(out);
    free(errtext);

    /* failures: one line, exit 1; usage: exit 2 */
    snprintf(args, sizeof args, "--model %s --image /nonexistent.jpg --question Q", dir);
    rc = run_cli(args, "fail", &out, &errtext);
    const char *nl = errtext ? strchr(errtext, '\n') : NULL;
    CHECK(rc == 1 && errtext && !strncmp(errtext, "ergo run: ", 10) && nl && !nl[1],
          "missing image: exit %d, stderr \"%s\"", rc, errtext ? errtext : "");
    free(out);
    free(errtext);
    rc = run_cli("--model x --mode sideways --image a --question b", "usage", &out, &errtext);
    CHECK(rc == 2, "usage error: exit %d", rc);
    free(out);
    free(errtext);
}

void test_pipeline(void) {
    check_text_helpers();
    char path[1024];
    ergo_error err = {0};
    fixture(path, sizeof path, "pipeline/two_stage.json");
    json_t *man = json_load_path(path, &err);
    CHECK(man != NULL, "pipeline fixtures: %s", err.msg);
    if (!man) return;
    /* the reference's checkpoint, regenerated with the tokenizer files */
    char casep[1024], dir[1024];
    fixture(casep, sizeof casep, json_string_value(json_object_get(man, "case")));
    snprintf(dir, sizeof dir, "%s/pipeline_ck", scratch_dir());
    ckpt_case c;
    int ok = ckpt_case_load(&c, casep, &err) == ERGO_OK;
    if (ok) {
        ok = random_checkpoint_write(&c, dir, "assets/qwen2.5-vl-tokenizer", &err) == ERGO_OK;
        ckpt_case_free(&c);
    }
    CHECK(ok, "pipeline checkpoint: %s", err.msg);
    engine *e = calloc(1, sizeof *e);
    context *cx = calloc(1, sizeof *cx);
    image orig = {0};
    char img[1024], rel[256];
    snprintf(rel, sizeof rel, "pipeline/%s", json_string_value(json_object_get(man, "image")));
    fixture(img, sizeof img, rel);
    if (ok) ok = engine_load(e, dir, NULL, &err) == ERGO_OK;
    if (ok) ok = context_init(cx, e, &err) == ERGO_OK;
    if (ok) ok = image_decode_file(&orig, img, NULL, &err) == ERGO_OK;
    CHECK(ok, "pipeline engine: %s", err.msg);
    if (ok) {
        const json_t *runs = json_object_get(man, "runs");
        size_t i;
        const json_t *run;
        CHECK(json_array_size(runs) == 3, "pipeline fixtures: %zu runs", json_array_size(runs));
        json_array_foreach(runs, i, run) check_run(cx, &orig, run);
        check_fallbacks(cx, &orig);
    }
    if (ok) check_cli(dir, img);
    image_free(&orig);
    context_free(cx);
    engine_free(e);
    free(cx);
    free(e);
    json_decref(man);
}
