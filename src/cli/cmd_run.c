/*
 * cmd_run.c - `ergo run`: ERGO's two-stage inference (src/pipeline/ergo.h), the
 * one-pass baseline, or both, on one image or a JSONL batch; plain text or JSON.
 * Mirrors ERGO's src/ergo/infer.py and the question format of its evaluation.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/file.h"
#include "cli.h"
#include "commands.h"
#include "image/image.h"
#include "io/hub.h"
#include "pipeline/ergo.h"
#include "pipeline/viz.h"
#include "runtime/context.h"
#include "runtime/engine.h"

#define MAX_OPTIONS 32

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo run --model DIR|OWNER/NAME --image FILE --question TEXT [--option TEXT]...\n"
            "                [--postfix TEXT] [--mode ergo|baseline|both] [--max-vision-tokens N]\n"
            "                [--max-new-tokens N] [--fallback full|downsampled] [--json]\n"
            "                [--save-crop FILE.png] [--save-viz FILE.png] [--stage1-text TEXT]\n"
            "                [--weights bf16|q8|q4] [--weights-cache auto|off|FILE] [--kv-dtype f32|bf16]\n"
            "                [--fixed-tokens S1,S2,BASELINE] [--box-text TEXT]\n"
            "       ergo run --model DIR|OWNER/NAME --batch FILE.jsonl [same options]\n"
            "\n"
            "ERGO's two stages (the protocol ERGO-7B was trained on): stage 1 looks at the image\n"
            "smart-resized to at most --max-vision-tokens (1280) vision tokens (Pillow BICUBIC) and\n"
            "names a box in <zoom>[x1, y1, x2, y2]</zoom>; the box is mapped to the original, the\n"
            "crop resized with LANCZOS, and stage 2 answers from both images. Stage 2 continues\n"
            "stage 1's KV cache: image 1 and the stage-1 text are not encoded again.\n"
            "Stage 1 sees the bare question; stage 2 sees question, options (one per line) and\n"
            "postfix, as the reference evaluation builds them (the bare question when there are\n"
            "no options and no postfix, as its infer.py does).\n"
            "\n"
            "No valid box (none, or one the reference cannot crop with: x2 < x1, zero area, ...):\n"
            "stage 2 sees the whole original at the processor's own limits, as the reference does\n"
            "(expensive); --fallback downsampled reuses the stage-1 image instead. The output says\n"
            "which happened.\n"
            "\n"
            "--mode baseline answers in one pass on the whole image at the processor's native\n"
            "limits (plain Qwen2.5-VL, default system message, full question); --mode both runs\n"
            "both and prints the ratios of vision tokens and time.\n"
            "\n"
            "Decoding: greedy, stop at <|im_end|> and the checkpoint's eos ids, at most 1024 new\n"
            "tokens per stage (--max-new-tokens), the repetition penalty of\n"
            "generation_config.json. --stage1-text TEXT is a debugging aid: TEXT stands for the\n"
            "stage-1 answer (its tokenization is kept as the stage-1 tokens).\n"
            "\n"
            "--weights q8|q4 quantises the linear weights at load (blocks of 32 with f32\n"
            "scales; bf16 = as stored, the default); the result is cached in DIR/ergo-weights.q8\n"
            "(or .q4) so the next load maps it (--weights-cache off|FILE to change that).\n"
            "\n"
            "Benchmark aids: --fixed-tokens S1,S2,B generates exactly that many tokens in stage\n"
            "1, stage 2 and the baseline (stop tokens ignored); --box-text TEXT reads the box\n"
            "from TEXT instead of the stage-1 answer (random weights never name one).\n"
            "\n"
            "The image is decoded to RGB first (the reference resizes non-RGB files, e.g. grey or\n"
            "RGBA PNGs, in their own mode; such files can differ slightly).\n"
            "\n"
            "Output: the answer, then one line on the box and the vision tokens. --json: one\n"
            "object with both stages' texts, token ids, prompt/generated/vision tokens, timings\n"
            "in ms (image, vision_encode, prefill, decode), the box in stage-1 and original\n"
            "pixels, the crop size and the answer. --save-crop writes the stage-2 image as PNG;\n"
            "--save-viz a PNG of the stage-1 image with the box and the crop beside it.\n"
            "\n"
            "--batch: one JSON object per line {\"image\", \"question\", \"options\": [...],\n"
            "\"postfix\", \"id\"}; one JSON result per line on stdout as each item finishes (an\n"
            "error object for a bad line), the model loaded once, progress on a terminal.\n"
            "\n"
            "--model takes a local checkpoint directory or a hub id such as nota-ai/ERGO-7B\n"
            "(downloaded on first use into the Hugging Face cache; offline, pass a directory).\n");
    fputs(cli_kv_help, out);
}

static int fail(const char *msg) { return cli_fail("run", msg); }

static int usage_error(const char *fmt, const char *arg) {
    return cli_usage_error("run", fmt, arg);
}

enum { MODE_ERGO = 1, MODE_BASELINE = 2, MODE_BOTH = 3 };

typedef struct options {
    const char *model, *image, *question, *postfix, *batch, *save_crop, *save_viz;
    const char *weights, *weights_cache, *kv_dtype;
    const char *options[MAX_OPTIONS];
    int n_options, mode, json;
    ergo_options run;
} options;

/* "S1,S2,B": three counts in [0, 1<<20]. */
static int parse_fixed(const char *v, int out[3]) {
    char buf[64];
    if (strlen(v) >= sizeof buf) return 0;
    memcpy(buf, v, strlen(v) + 1);
    char *save = NULL, *tok = strtok_r(buf, ",", &save);
    for (int i = 0; i < 3; i++, tok = strtok_r(NULL, ",", &save)) {
        long long n;
        if (!tok || !cli_parse_long(tok, 0, 1 << 20, &n)) return 0;
        out[i] = (int)n;
    }
    return tok == NULL;
}

static int parse(options *o, int argc, char **argv, int *code) {
    memset(o, 0, sizeof *o);
    ergo_options_default(&o->run);
    o->mode = MODE_ERGO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            *code = 0;
            return 1;
        }
        if (!strcmp(a, "--json")) { o->json = 1; continue; }
        if (i + 1 >= argc) {
            *code = usage_error("%s needs a value or is unknown", a);
            return 1;
        }
        const char *v = argv[++i];
        long long n = 0;
        int ok = 1;
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--image")) o->image = v;
        else if (!strcmp(a, "--question")) o->question = v;
        else if (!strcmp(a, "--postfix")) o->postfix = v;
        else if (!strcmp(a, "--batch")) o->batch = v;
        else if (!strcmp(a, "--save-crop")) o->save_crop = v;
        else if (!strcmp(a, "--save-viz")) o->save_viz = v;
        else if (!strcmp(a, "--stage1-text")) o->run.stage1_text = v;
        else if (!strcmp(a, "--box-text")) o->run.box_text = v;
        else if (!strcmp(a, "--weights")) o->weights = v;
        else if (!strcmp(a, "--weights-cache")) o->weights_cache = v;
        else if (!strcmp(a, "--kv-dtype")) o->kv_dtype = v;
        else if (!strcmp(a, "--fixed-tokens")) ok = parse_fixed(v, o->run.fixed_tokens);
        else if (!strcmp(a, "--option")) {
            if ((ok = o->n_options < MAX_OPTIONS)) o->options[o->n_options++] = v;
        } else if (!strcmp(a, "--max-vision-tokens")) {
            if ((ok = cli_parse_long(v, 4, 1 << 20, &n))) o->run.max_vision_tokens = (int)n;
        } else if (!strcmp(a, "--max-new-tokens")) {
            if ((ok = cli_parse_long(v, 0, 1 << 30, &n))) o->run.max_new_tokens = (int)n;
        } else if (!strcmp(a, "--mode")) {
            o->mode = !strcmp(v, "ergo") ? MODE_ERGO : !strcmp(v, "baseline") ? MODE_BASELINE
                      : !strcmp(v, "both") ? MODE_BOTH : 0;
            ok = o->mode != 0;
        } else if (!strcmp(a, "--fallback")) {
            ok = !strcmp(v, "full") || !strcmp(v, "downsampled");
            o->run.fallback = !strcmp(v, "full") ? ERGO_FALLBACK_FULL : ERGO_FALLBACK_DOWNSAMPLED;
        } else {
            *code = usage_error("unknown option `%s'", a);
            return 1;
        }
        if (!ok) {
            *code = usage_error("bad value for %s", a);
            return 1;
        }
    }
    if (!o->model) {
        *code = usage_error("%s", "--model is required");
        return 1;
    }
    if (!o->batch && (!o->image || !o->question)) {
        *code = usage_error("%s", "--image FILE and --question TEXT are required (or --batch)");
        return 1;
    }
    if (o->batch && (o->image || o->question || o->n_options || o->postfix || o->save_crop ||
                     o->save_viz)) {
        *code = usage_error("%s", "--batch takes the images and questions from its file");
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- JSON */

static json_t *ids_json(const tok_ids *ids) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < ids->n; i++) json_array_append_new(a, json_integer(ids->v[i]));
    return a;
}

static json_t *stage_json(const ergo_stage *s) {
    return json_pack(
        "{s:s, s:o, s:{s:i, s:i}, s:[i,i,i], s:I, s:b, s:b, s:i, s:I, s:i, s:s, "
        "s:{s:f, s:f, s:f, s:f}}",
        "text", s->text ? s->text : "", "token_ids", ids_json(&s->ids), "image", "width",
        s->image_w, "height", s->image_h, "grid", s->grid_t, s->grid_h, s->grid_w,
        "vision_tokens", (json_int_t)s->vision_tokens, "processor_resized", s->processor_resized,
        "vision_reused", s->vision_reused, "prompt_tokens", s->prompt_tokens, "generated_tokens",
        (json_int_t)s->ids.n, "context_tokens", s->context_tokens, "stop_reason",
        stop_reason_name(s->reason), "timings", "image", s->image_ms, "vision_encode",
        s->vision_ms, "prefill", s->prefill_ms, "decode", s->decode_ms);
}

static double total_ms(const ergo_result *r) {
    const ergo_stage *st[2] = {&r->s1, &r->s2};
    double t = 0;
    for (int i = 0; i < 2; i++)
        t += st[i]->image_ms + st[i]->vision_ms + st[i]->prefill_ms + st[i]->decode_ms;
    return t;
}

static json_t *result_json(const ergo_result *r) {
    json_t *o = json_object();
    json_object_set_new(o, "mode", json_string(r->baseline ? "baseline" : "ergo"));
    json_object_set_new(o, "original", json_pack("{s:i, s:i}", "width", r->width, "height",
                                                 r->height));
    if (r->baseline) {
        json_object_set_new(o, "stage1", stage_json(&r->s1));
    } else {
        json_object_set_new(o, "stage1", stage_json(&r->s1));
        json_t *box = json_pack("{s:s}", "status", zoom_status_name(r->box_status));
        if (r->box_status != ZOOM_NONE) {
            json_object_set_new(box, "stage1", json_pack("[I,I,I,I]", (json_int_t)r->box.i[0],
                                                         (json_int_t)r->box.i[1],
                                                         (json_int_t)r->box.i[2],
                                                         (json_int_t)r->box.i[3]));
        }
        if (r->box_status == ZOOM_OK)
            json_object_set_new(box, "original", json_pack("[i,i,i,i]", r->crop.x1, r->crop.y1,
                                                           r->crop.x2, r->crop.y2));
        if (r->box_status == ZOOM_INVALID) json_object_set_new(box, "why", json_string(r->crop.why));
        json_object_set_new(o, "box", box);
        json_object_set_new(o, "view", json_string(ergo_view_name(r->view)));
        json_object_set_new(o, "crop", r->box_status == ZOOM_OK
                                           ? json_pack("{s:i, s:i}", "width", r->crop.out_w,
                                                       "height", r->crop.out_h)
                                           : json_null());
        json_object_set_new(o, "stage1_retokenizes", json_boolean(r->stage1_retokenizes));
        json_object_set_new(o, "stage2", stage_json(&r->s2));
    }
    /* what the language model reads (a reused image is read again, not encoded again) */
    json_object_set_new(o, "vision_tokens", json_integer(r->s1.vision_tokens + r->s2.vision_tokens));
    json_object_set_new(o, "prompt_tokens", json_integer(r->s1.prompt_tokens + r->s2.prompt_tokens));
    json_object_set_new(o, "generated_tokens", json_integer((json_int_t)(r->s1.ids.n + r->s2.ids.n)));
    json_object_set_new(o, "total_ms", json_real(total_ms(r)));
    json_object_set_new(o, "answer", json_string(r->answer ? r->answer : ""));
    return o;
}

static int64_t vision_total(const ergo_result *r) {
    return r->s1.vision_tokens + r->s2.vision_tokens;
}

static void print_plain(const ergo_result *r) {
    printf("%s\n", r->answer ? r->answer : "");
    if (r->baseline) {
        printf("[baseline: whole image %dx%d, %lld vision tokens, %d prompt + %zu generated "
               "tokens, %.0f ms]\n",
               r->s1.image_w, r->s1.image_h, (long long)r->s1.vision_tokens, r->s1.prompt_tokens,
               r->s1.ids.n, total_ms(r));
        return;
    }
    if (r->box_status == ZOOM_OK)
        printf("[box [%lld, %lld, %lld, %lld] in the %dx%d stage-1 image = [%d, %d, %d, %d] in "
               "the %dx%d original, crop resized to %dx%d; ",
               (long long)r->box.i[0], (long long)r->box.i[1], (long long)r->box.i[2],
               (long long)r->box.i[3], r->w1, r->h1, r->crop.x1, r->crop.y1, r->crop.x2,
               r->crop.y2, r->width, r->height, r->crop.out_w, r->crop.out_h);
    else
        printf("[%s; stage 2 saw %s; ",
               r->box_status == ZOOM_NONE ? "no box in the stage-1 answer" : r->crop.why,
               r->view == ERGO_VIEW_FALLBACK_FULL ? "the whole original (fallback)"
                                                  : "the stage-1 image again (fallback)");
    printf("vision tokens %lld + %lld = %lld%s; %.0f ms]\n", (long long)r->s1.vision_tokens,
           (long long)r->s2.vision_tokens, (long long)vision_total(r),
           r->s2.vision_reused ? " (stage 2's reused, not encoded again)" : "", total_ms(r));
}

/* ---------------------------------------------------------------- one item */

typedef struct item {
    const char *image;
    ergo_question q;
} item;

/* Runs the modes on one item; *out gets the JSON (mode both: both and ratios). */
static ergo_status run_item(context *c, const options *o, const item *it, json_t **out,
                            ergo_error *err) {
    image img = {0};
    ergo_status s = image_decode_file(&img, it->image, NULL, err);
    if (s) return s;
    ergo_result er = {0}, br = {0};
    if (o->mode & MODE_ERGO) {
        s = ergo_run(c, &o->run, &img, &it->q, &er, err);
        if (!s && o->save_crop) s = viz_write_png(&er.stage2_image, o->save_crop, err);
        if (!s && o->save_viz) s = viz_render(&er, o->save_viz, err);
    }
    if (!s && (o->mode & MODE_BASELINE)) s = ergo_run_baseline(c, &o->run, &img, &it->q, &br, err);
    if (!s) {
        if (o->mode == MODE_BOTH) {
            double tb = total_ms(&br), te = total_ms(&er);
            *out = json_pack("{s:o, s:o, s:{s:f, s:f}}", "ergo", result_json(&er), "baseline",
                             result_json(&br), "ratios", "vision_tokens",
                             vision_total(&br) ? (double)vision_total(&er) / vision_total(&br) : 0.0,
                             "time", tb > 0 ? te / tb : 0.0);
        } else {
            *out = result_json(o->mode == MODE_ERGO ? &er : &br);
        }
        if (!o->json) {
            if (o->mode & MODE_ERGO) print_plain(&er);
            if (o->mode & MODE_BASELINE) print_plain(&br);
            if (o->mode == MODE_BOTH)
                printf("[ergo / baseline: vision tokens %.3f, time %.3f]\n",
                       vision_total(&br) ? (double)vision_total(&er) / vision_total(&br) : 0.0,
                       total_ms(&br) > 0 ? total_ms(&er) / total_ms(&br) : 0.0);
        }
    }
    ergo_result_free(&er);
    ergo_result_free(&br);
    image_free(&img);
    return s;
}

static int print_json(json_t *j) {
    char *txt = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    if (!txt) return 0;
    puts(txt);
    free(txt);
    fflush(stdout);
    return 1;
}

/* ---------------------------------------------------------------- batch */

static int run_batch(context *c, options *o) {
    char *data = NULL;
    size_t size = 0;
    ergo_error err = {0};
    if (file_read_all(o->batch, (size_t)1 << 30, &data, &size, &err)) return fail(err.msg);
    int n_lines = 0;
    for (size_t i = 0; i < size; i++) n_lines += data[i] == '\n' || (i + 1 == size);
    const int tty = isatty(2);
    o->json = 1;
    int done = 0, failed = 0, line_no = 0;
    double t0 = now_ms();
    for (char *line = data; line && line < data + size;) {
        char *nl = memchr(line, '\n', (size_t)(data + size - line));
        size_t len = nl ? (size_t)(nl - line) : (size_t)(data + size - line);
        line_no++;
        char *next = nl ? nl + 1 : NULL;
        size_t k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == len) { line = next; continue; } /* blank lines are skipped */
        json_error_t jerr;
        json_t *obj = json_loadb(line, len, 0, &jerr), *id = NULL, *res = NULL;
        const char *msg = NULL;
        char buf[1024];
        item it = {0};
        const char *opts[MAX_OPTIONS];
        if (!obj || !json_is_object(obj)) {
            snprintf(buf, sizeof buf, "line %d: not a JSON object%s%s", line_no, obj ? "" : ": ",
                     obj ? "" : jerr.text);
            msg = buf;
        } else {
            id = json_object_get(obj, "id");
            it.image = json_string_value(json_object_get(obj, "image"));
            it.q.question = json_string_value(json_object_get(obj, "question"));
            const json_t *po = json_object_get(obj, "postfix"), *ops = json_object_get(obj, "options");
            it.q.postfix = json_string_value(po);
            if (!it.image || !it.q.question) msg = "needs \"image\" and \"question\" strings";
            else if (po && !json_is_string(po)) msg = "\"postfix\" must be a string";
            else if (ops && (!json_is_array(ops) || json_array_size(ops) > MAX_OPTIONS))
                msg = "\"options\" must be an array of at most 32 strings";
            for (size_t j = 0; !msg && ops && j < json_array_size(ops); j++)
                if (!(opts[j] = json_string_value(json_array_get(ops, j))))
                    msg = "\"options\" must be an array of strings";
            it.q.options = opts;
            it.q.n_options = ops ? (int)json_array_size(ops) : 0;
            if (msg) {
                snprintf(buf, sizeof buf, "line %d: %s", line_no, msg);
                msg = buf;
            } else if (run_item(c, o, &it, &res, &err)) {
                snprintf(buf, sizeof buf, "line %d: %s", line_no, err.msg);
                msg = buf;
            }
        }
        json_t *outj = msg ? json_pack("{s:i, s:s}", "line", line_no, "error", msg) : res;
        if (outj && id) json_object_set(outj, "id", id);
        if (outj && !msg) json_object_set_new(outj, "line", json_integer(line_no));
        print_json(outj);
        json_decref(outj);
        json_decref(obj);
        failed += msg != NULL;
        done++;
        if (tty) {
            double el = (now_ms() - t0) / 1e3, eta = el / done * (n_lines - done);
            fprintf(stderr, "\r[%d/%d] %d failed, %.0f s elapsed, ETA %.0f s   ", done, n_lines,
                    failed, el, eta > 0 ? eta : 0);
        }
        line = next;
    }
    if (tty) fputc('\n', stderr);
    free(data);
    return 0;
}

int cmd_run(int argc, char **argv) {
    options o;
    int code = 0;
    if (parse(&o, argc, argv, &code)) return code;
    ergo_error err = {0};
    char dir[4096];
    if (hub_resolve_model(o.model, dir, sizeof dir, &err)) return fail(err.msg);
    engine_options eo;
    engine_options_default(&eo);
    engine *e = calloc(1, sizeof *e);
    context *c = calloc(1, sizeof *c);
    if (!e || !c) {
        free(e);
        free(c);
        return fail("out of memory");
    }
    int rc = 0;
    ergo_status s = cli_weights_options(&eo, o.weights, o.weights_cache, &err);
    if (!s) s = cli_kv_options(&eo, o.kv_dtype, &err);
    if (!s) s = engine_load(e, dir, &eo, &err);
    if (!s) cli_engine_warning("run", e);
    if (!s) s = context_init(c, e, &err);
    if (s) {
        rc = fail(err.msg);
    } else if (o.batch) {
        rc = run_batch(c, &o);
    } else {
        item it = {o.image, {o.question, o.options, o.n_options, o.postfix}};
        json_t *res = NULL;
        if (run_item(c, &o, &it, &res, &err)) rc = fail(err.msg);
        else if (o.json && !print_json(res)) rc = fail("cannot format the JSON output");
        json_decref(res);
    }
    context_free(c);
    engine_free(e);
    free(c);
    free(e);
    if (fflush(stdout) != 0 && rc == 0) rc = fail("cannot write the output");
    return rc;
}
