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
#include "progress.h"
#include "commands.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "io/hub.h"
#include "pipeline/ergo.h"
#include "pipeline/viz.h"
#include "runtime/context.h"
#include "runtime/engine.h"

#define MAX_OPTIONS 32

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo run -m|--model DIR|OWNER/NAME -i|--image FILE -p|--question TEXT\n"
            "                [--option TEXT]... [--postfix TEXT] [--mode ergo|baseline|both]\n"
            "                [--max-vision-tokens N] [-n|--max-new-tokens N (1..1048576)]\n"
            "                [--fallback full|downsampled] [--json] [-t|--threads N] [-q|--quiet]\n"
            "                [--save-crop FILE.png] [--save-viz FILE.png] [--stage1-text TEXT]\n"
            "                [--weights bf16|q8|q4] [--weights-cache auto|off|FILE] [--kv-dtype f32|bf16]\n"
            "                [--fixed-tokens S1,S2,BASELINE] [--box-text TEXT] [--lora DIR]\n"
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
            "--question-file FILE (-f) reads the question from FILE (- for stdin; one trailing\n"
            "newline dropped); --prompt and --prompt-file are aliases. Every option and the image\n"
            "(exists, decodes, fits the processor after ERGO's resize) are checked before the\n"
            "model is loaded: usage errors exit 2, bad inputs 1. Progress goes to stderr (a\n"
            "redrawn line on a terminal, one line per phase otherwise; --quiet or\n"
            "ERGO_PROGRESS=0 silences it); in plain mode both stages' text streams to stdout,\n"
            "the box line between them. --threads N: OpenMP threads (default: all cores).\n"
            "\n"
            "--model takes a local checkpoint directory or a hub id such as nota-ai/ERGO-7B\n"
            "(downloaded on first use into the Hugging Face cache; offline, pass a directory).\n");
    fputs(cli_kv_help, out);
    fputs(cli_lora_help, out);
}

static int fail(const char *msg) { return cli_fail("run", msg); }

static int usage_error(const char *fmt, const char *arg) {
    return cli_usage_error("run", fmt, arg);
}

enum { MODE_ERGO = 1, MODE_BASELINE = 2, MODE_BOTH = 3 };

typedef struct options {
    const char *model, *image, *question, *question_file, *postfix, *batch, *save_crop, *save_viz;
    const char *weights, *weights_cache, *kv_dtype, *mode_name, *fallback_name, *fixed, *lora;
    char *question_buf;       /* --question-file's text (owned) */
    const char *options[MAX_OPTIONS];
    cli_multi option_list;
    int n_options, mode, json, quiet;
    long long threads, max_vision_tokens, max_new_tokens;
    ergo_options run;
    image decoded;            /* --image, decoded and checked before the load */
} options;


static void options_free(options *o) {
    image_free(&o->decoded);
    free(o->question_buf);
}

/* Every option and input checked before the model is loaded: 0, or 1 with *code
 * the exit status (0 for --help, 2 for a usage error, 1 for a bad input). */
/* The prompts fit the model's context before the load: ERGO's stage 1 (the
 * downsampled image) and the baseline's one turn (the whole image under the
 * processor). Stage 2 adds at most a crop of the same budget and is checked by the
 * prefill itself. */
static ergo_status check_prompts_fit(const options *o, const preprocess_config *pc,
                                     ergo_error *err) {
    const image *img = &o->decoded;
    const ergo_question q = {o->question, o->options, o->n_options, o->postfix};
    if (o->mode & MODE_ERGO) {
        const int64_t max_px = (int64_t)o->run.max_vision_tokens * ERGO_FACTOR * ERGO_FACTOR;
        int h1 = 0, w1 = 0;
        ergo_status s = smart_resize_ergo(img->height, img->width, ERGO_FACTOR, ERGO_MIN_PIXELS,
                                          max_px, &h1, &w1, err);
        if (s) return s;
        const image small = {w1, h1, NULL}; /* only its size is read */
        size_t n = strlen(q.question), k = strlen(ergo_template1_suffix);
        char *t1 = malloc(n + k + 1);
        if (!t1) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        memcpy(t1, q.question, n), memcpy(t1 + n, ergo_template1_suffix, k + 1);
        chat_part p1[2] = {{CHAT_IMAGE, NULL, 0, 0}, {CHAT_TEXT, t1, n + k, 0}};
        chat_message m1[2] = {{"system", ergo_system_prompt, strlen(ergo_system_prompt), NULL, 0},
                              {"user", NULL, 0, p1, 2}};
        /* the stage-1 image is within the processor's limits by construction */
        preprocess_config any = *pc;
        any.min_pixels = 1, any.max_pixels = (int64_t)1 << 40;
        s = cli_check_prompt_fits(o->model, m1, 2, &small, 1, &any, err);
        free(t1);
        if (s) return s;
    }
    if (o->mode & MODE_BASELINE) {
        char *full_q = ergo_full_question(&q);
        if (!full_q) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        chat_part p[2] = {{CHAT_IMAGE, NULL, 0, 0}, {CHAT_TEXT, full_q, strlen(full_q), 0}};
        chat_message m[1] = {{"user", NULL, 0, p, 2}};
        ergo_status s = cli_check_prompt_fits(o->model, m, 1, img, 1, pc, err);
        free(full_q);
        if (s) return s;
    }
    return ERGO_OK;
}

static int parse(options *o, int argc, char **argv, int *code) {
    memset(o, 0, sizeof *o);
    ergo_options_default(&o->run);
    o->option_list = (cli_multi){o->options, 0, MAX_OPTIONS};
    o->max_vision_tokens = o->run.max_vision_tokens;
    o->max_new_tokens = o->run.max_new_tokens;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &o->model, NULL, 0, 0, 0, 0, NULL},
        {"image", 'i', CLI_STR, &o->image, NULL, 0, 0, 0, 0, NULL},
        {"question", 'p', CLI_STR, &o->question, "prompt", 0, 0, 0, 0, NULL},
        {"question-file", 'f', CLI_STR, &o->question_file, "prompt-file", 0, 0, 0, 0, NULL},
        {"option", 0, CLI_MULTI, &o->option_list, NULL, 0, 0, 0, 0, NULL},
        {"postfix", 0, CLI_STR, &o->postfix, NULL, 0, 0, 0, 0, NULL},
        {"batch", 0, CLI_STR, &o->batch, NULL, 0, 0, 0, 0, NULL},
        {"save-crop", 0, CLI_STR, &o->save_crop, NULL, 0, 0, 0, 0, NULL},
        {"save-viz", 0, CLI_STR, &o->save_viz, NULL, 0, 0, 0, 0, NULL},
        {"stage1-text", 0, CLI_STR, &o->run.stage1_text, NULL, 0, 0, 0, 0, NULL},
        {"box-text", 0, CLI_STR, &o->run.box_text, NULL, 0, 0, 0, 0, NULL},
        {"weights", 0, CLI_STR, &o->weights, NULL, 0, 0, 0, 0, NULL},
        {"weights-cache", 0, CLI_STR, &o->weights_cache, NULL, 0, 0, 0, 0, NULL},
        {"kv-dtype", 0, CLI_STR, &o->kv_dtype, NULL, 0, 0, 0, 0, NULL},
        {"lora", 0, CLI_STR, &o->lora, NULL, 0, 0, 0, 0, NULL},
        {"fixed-tokens", 0, CLI_STR, &o->fixed, NULL, 0, 0, 0, 0, NULL},
        {"mode", 0, CLI_STR, &o->mode_name, NULL, 0, 0, 0, 0, NULL},
        {"fallback", 0, CLI_STR, &o->fallback_name, NULL, 0, 0, 0, 0, NULL},
        {"max-vision-tokens", 0, CLI_INT, &o->max_vision_tokens, NULL, 4, 1 << 20, 0, 0, NULL},
        {"max-new-tokens", 'n', CLI_INT, &o->max_new_tokens, NULL, 1, 1 << 20, 0, 0, NULL},
        {"threads", 't', CLI_INT, &o->threads, NULL, 1, 1024, 0, 0, NULL},
        {"json", 0, CLI_FLAG, &o->json, NULL, 0, 0, 0, 0, NULL},
        {"quiet", 'q', CLI_FLAG, &o->quiet, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("run", opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        *code = 0;
        return 1;
    }
    if (rc) {
        *code = rc;
        return 1;
    }
    if (o->quiet) progress_set_quiet(1);
    o->n_options = o->option_list.n;
    o->run.max_vision_tokens = (int)o->max_vision_tokens;
    o->run.max_new_tokens = (int)o->max_new_tokens;
    o->mode = MODE_ERGO;
    if (o->mode_name) {
        o->mode = !strcmp(o->mode_name, "ergo") ? MODE_ERGO
                  : !strcmp(o->mode_name, "baseline") ? MODE_BASELINE
                  : !strcmp(o->mode_name, "both") ? MODE_BOTH : 0;
        if (!o->mode) {
            *code = usage_error("--mode %.40s: use ergo, baseline or both", o->mode_name);
            return 1;
        }
    }
    if (o->fallback_name) {
        if (strcmp(o->fallback_name, "full") && strcmp(o->fallback_name, "downsampled")) {
            *code = usage_error("--fallback %.40s: use full or downsampled", o->fallback_name);
            return 1;
        }
        o->run.fallback = !strcmp(o->fallback_name, "full") ? ERGO_FALLBACK_FULL
                                                            : ERGO_FALLBACK_DOWNSAMPLED;
    }
    if (o->fixed && !cli_parse_fixed_tokens(o->fixed, o->run.fixed_tokens)) {
        *code = usage_error("--fixed-tokens %.40s: give S1,S2,BASELINE, each 0..1048576", o->fixed);
        return 1;
    }
    if (!o->model) {
        *code = usage_error("%s", "--model is required");
        return 1;
    }
    if (o->question && o->question_file) {
        *code = usage_error("%s", "give --question TEXT or --question-file FILE, not both");
        return 1;
    }
    const int has_q = o->question || o->question_file;
    if (!o->batch && (!o->image || !has_q)) {
        *code = usage_error("%s", "--image FILE and --question TEXT (or --question-file FILE, - for "
                                  "stdin) are required (or --batch)");
        return 1;
    }
    if (o->batch && (o->image || has_q || o->n_options || o->postfix || o->save_crop ||
                     o->save_viz)) {
        *code = usage_error("%s", "--batch takes the images and questions from its file");
        return 1;
    }
    ergo_error err = {0};
    engine_options eo;
    engine_options_default(&eo);
    if (cli_engine_options(&eo, o->threads, o->weights, o->weights_cache, o->kv_dtype, &err)) {
        *code = usage_error("%s", err.msg);
        return 1;
    }
    if (o->lora && cli_check_lora(o->lora, &err)) {
        *code = fail(err.msg);
        return 1;
    }
    /* the inputs, before any loading or quantising */
    if (o->batch) {
        if (!file_exists(o->batch)) {
            ergo_fail(&err, ERGO_E_IO, "%s: no such file (--batch)", o->batch);
            *code = fail(err.msg);
            return 1;
        }
        return 0;
    }
    if (o->question_file && !(o->question = o->question_buf = cli_read_text(o->question_file, &err))) {
        *code = fail(err.msg);
        return 1;
    }
    const char *qname = o->question_file ? o->question_file : "--question";
    if (cli_check_utf8(qname, o->question, &err) ||
        (o->postfix && cli_check_utf8("--postfix", o->postfix, &err))) {
        *code = fail(err.msg);
        return 1;
    }
    for (int i = 0; i < o->n_options; i++)
        if (cli_check_utf8("--option", o->options[i], &err)) {
            *code = fail(err.msg);
            return 1;
        }
    /* a hub id is resolved (maybe downloaded) later; its processor config is there */
    const int local = !hub_is_repo_id(o->model) || file_exists(o->model);
    preprocess_config pc;
    if (local) {
        if (cli_processor_config(&pc, o->model, 0, 0, &err)) {
            *code = fail(err.msg);
            return 1;
        }
    } else {
        preprocess_config_default(&pc);
    }
    if ((o->mode & MODE_ERGO) &&
        cli_check_image(o->image, &pc, o->run.max_vision_tokens, &o->decoded, &err)) {
        *code = fail(err.msg);
        return 1;
    }
    if ((o->mode & MODE_BASELINE)) {
        image_free(&o->decoded);
        if (cli_check_image(o->image, &pc, 0, &o->decoded, &err)) {
            *code = fail(err.msg);
            return 1;
        }
    }
    if (local && check_prompts_fit(o, &pc, &err)) {
        *code = fail(err.msg);
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

/* "[box ... ; " or "[no box ...; stage 2 saw ...; " (the line is closed by the caller). */
static void print_box(const ergo_result *r) {
    if (r->box_status == ZOOM_OK)
        printf("[box [%lld, %lld, %lld, %lld] in the %dx%d stage-1 image = [%d, %d, %d, %d] in "
               "the %dx%d original, crop resized to %dx%d",
               (long long)r->box.i[0], (long long)r->box.i[1], (long long)r->box.i[2],
               (long long)r->box.i[3], r->w1, r->h1, r->crop.x1, r->crop.y1, r->crop.x2,
               r->crop.y2, r->width, r->height, r->crop.out_w, r->crop.out_h);
    else
        printf("[%s; stage 2 sees %s",
               r->box_status == ZOOM_NONE ? "no box in the stage-1 answer" : r->crop.why,
               r->view == ERGO_VIEW_FALLBACK_FULL ? "the whole original (fallback)"
                                                  : "the stage-1 image again (fallback)");
}

static void print_tokens(const ergo_result *r) {
    printf("vision tokens %lld + %lld = %lld%s; %.0f ms]\n", (long long)r->s1.vision_tokens,
           (long long)r->s2.vision_tokens, (long long)vision_total(r),
           r->s2.vision_reused ? " (stage 2's reused, not encoded again)" : "", total_ms(r));
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
    print_box(r);
    printf("; ");
    print_tokens(r);
}

/* Plain mode of one ERGO run: both stages' text streams to stdout as it is
 * generated, the box line between them; the progress lines time the stages. */
typedef struct stream {
    int on;        /* text goes to stdout */
    progress p;    /* the stage running */
    int stage;     /* 1, 2 */
} stream;

static int stream_text(void *ctx, const char *text, size_t len) {
    stream *st = ctx;
    if (st->on) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    } else {
        progress_update(&st->p, 0, 0, "s");
    }
    return 0;
}

static void stream_begin(stream *st, const char *label) {
    progress_begin(&st->p, "%s", label);
    if (st->on && isatty(1)) progress_abort(&st->p); /* the text streams on this terminal */
}

static void stream_stage1(void *ctx, const ergo_result *r) {
    stream *st = ctx;
    if (st->on) {
        printf("\n");
        print_box(r);
        printf("]\n");
        fflush(stdout);
    }
    progress_end(&st->p, "%lld vision tokens, %d prompt + %zu generated tokens",
                 (long long)r->s1.vision_tokens, r->s1.prompt_tokens, r->s1.ids.n);
    st->stage = 2;
    stream_begin(st, "ERGO stage 2 (the crop)");
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
    ergo_status s = ERGO_OK;
    if (o->decoded.rgb) img = o->decoded; /* checked before the load; o keeps it */
    else if ((s = image_decode_file(&img, it->image, NULL, err))) return s;
    ergo_result er = {0}, br = {0};
    /* one plain ERGO run streams; JSON, both modes and batches print at the end */
    stream st;
    memset(&st, 0, sizeof st);
    st.on = !o->json && o->mode == MODE_ERGO;
    st.stage = 1;
    if (o->mode & MODE_ERGO) {
        ergo_options ro = o->run;
        ro.on_text = stream_text;
        ro.on_text_ctx = &st;
        ro.on_stage1 = stream_stage1;
        stream_begin(&st, "ERGO stage 1 (the downsampled image)");
        c->st.on_rows = cli_prefill_rows, c->st.on_rows_ctx = &st.p; /* each prefill's bar */
        s = ergo_run(c, &ro, &img, &it->q, &er, err);
        c->st.on_rows = NULL, c->st.on_rows_ctx = NULL;
        if (s) progress_abort(&st.p);
        else if (er.s2.ran) progress_end(&st.p, "%lld vision tokens%s, %d prompt + %zu generated tokens",
                                         (long long)er.s2.vision_tokens,
                                         er.s2.vision_reused ? " (reused)" : "",
                                         er.s2.prompt_tokens, er.s2.ids.n);
        if (!s && o->save_crop) s = viz_write_png(&er.stage2_image, o->save_crop, err);
        if (!s && o->save_viz) s = viz_render(&er, o->save_viz, err);
    }
    if (!s && (o->mode & MODE_BASELINE)) {
        progress pb;
        progress_begin(&pb, "baseline (the whole image)");
        s = ergo_run_baseline(c, &o->run, &img, &it->q, &br, err);
        if (s) progress_abort(&pb);
        else progress_end(&pb, "%lld vision tokens, %d prompt + %zu generated tokens",
                          (long long)br.s1.vision_tokens, br.s1.prompt_tokens, br.s1.ids.n);
    }
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
        if (st.on) {
            /* stage 2's text has streamed: close it, then the tokens and time */
            printf("\n[answer: %s; ", er.answer ? er.answer : "");
            print_tokens(&er);
        } else if (!o->json) {
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
    if (!o->decoded.rgb) image_free(&img);
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
    const int tty = progress_is_tty(); /* the batch's own line; --quiet silences it */
    progress_set_quiet(1);             /* not the per-stage lines of every item */
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
    if (parse(&o, argc, argv, &code)) {
        options_free(&o);
        return code;
    }
    ergo_error err = {0};
    char dir[4096];
    if (hub_resolve_model(o.model, dir, sizeof dir, &err)) {
        options_free(&o);
        return fail(err.msg);
    }
    engine_options eo;
    engine_options_default(&eo);
    engine *e = calloc(1, sizeof *e);
    context *c = calloc(1, sizeof *c);
    if (!e || !c) {
        free(e);
        free(c);
        options_free(&o);
        return fail("out of memory");
    }
    int rc = 0;
    ergo_status s = cli_engine_options(&eo, o.threads, o.weights, o.weights_cache, o.kv_dtype,
                                       &err);
    eo.lora = o.lora;
    if (!s) s = cli_load_engine("run", e, dir, &eo, &err);
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
    options_free(&o);
    if (fflush(stdout) != 0 && rc == 0) rc = fail("cannot write the output");
    return rc;
}
