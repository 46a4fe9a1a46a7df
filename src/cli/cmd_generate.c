/*
 * cmd_generate.c - `ergo generate`: one user turn (images in order, then the
 * text) through the chat template, the vision encoder, a prefill and the decode
 * loop, streaming the answer; what transformers 4.56.2 does with
 * processor.apply_chat_template + processor(...) + model.generate(**inputs).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/file.h"
#include "cli.h"
#include "progress.h"
#include "commands.h"
#include "image/image.h"
#include "model/generate.h"
#include "runtime/context.h"
#include "runtime/engine.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

#define MAX_IMAGES 64
#define MAX_STOPS 16

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo generate -m|--model DIR [-i|--image FILE]... -p|--prompt TEXT\n"
            "                     [-f|--prompt-file FILE|-] [--system TEXT] [-t|--threads N]\n"
            "                     [-q|--quiet] [-n|--max-new-tokens N (1..1048576)]\n"
            "                     [--greedy | --temperature T (0..100] --top-p P (0..1]\n"
            "                     --top-k K --min-p P --seed S] [--repetition-penalty R]\n"
            "                     [--stop TEXT]... [--min-pixels N --max-pixels N] [--json]\n"
            "                     [--dump-logits FILE] [--weights bf16|q8|q4]\n"
            "                     [--weights-cache auto|off|FILE] [--kv-dtype f32|bf16]\n"
            "                     [--lora DIR]\n"
            "\n"
            "--question/--question-file are aliases of --prompt/--prompt-file (- reads stdin).\n"
            "Options and images are checked before the model is loaded (usage errors exit 2,\n"
            "bad inputs 1); progress goes to stderr (--quiet or ERGO_PROGRESS=0: none).\n"
            "\n"
            "Answers one user turn: the images (in order) then TEXT, after an optional system\n"
            "message (the chat template's default one otherwise), rendered with DIR's chat\n"
            "template. Images are prepared as the checkpoint's preprocessor_config.json says\n"
            "(Qwen2VLImageProcessorFast); --min-pixels/--max-pixels override its limits, and an\n"
            "image whose patch grid still exceeds max-pixels / 14^2 patches is refused.\n"
            "\n"
            "Decoding defaults to DIR/generation_config.json (as model.generate does): its\n"
            "do_sample, temperature, top_k, top_p, repetition_penalty and eos ids; at most its\n"
            "max_new_tokens, else 1024. --greedy decodes greedily (the repetition penalty still\n"
            "applies); --temperature/--top-p/--top-k/--min-p/--seed turn sampling on and\n"
            "override those fields only. --stop adds a stop string. Draws use ergo's seeded\n"
            "generator (seed 0 by default), not torch's.\n"
            "\n"
            "--weights q8|q4 quantises the linear weights at load (see `ergo run --help`),\n"
            "cached in DIR/ergo-weights.q8|q4 unless --weights-cache says otherwise.\n"
            "\n"
            "Prints the answer as it is generated; with --json, one object instead: text,\n"
            "token_ids (generated, the stop token included), prompt_tokens, vision_tokens,\n"
            "stop_reason (eos, stop_string, length, context) and timings in ms\n"
            "{vision_encode, prefill, decode}. --dump-logits writes the logits of the last\n"
            "prompt position (vocab float32 values, little-endian) to FILE. The JSON also has\n"
            "timings_detail: ms in the vision blocks (also per block), the decoder layers and the\n"
            "lm_head.\n");
    fputs(cli_kv_help, out);
    fputs(cli_lora_help, out);
}

static int fail(const char *msg) { return cli_fail("generate", msg); }

static int usage_error(const char *fmt, const char *arg) {
    return cli_usage_error("generate", fmt, arg);
}

typedef struct options {
    const char *model, *prompt, *prompt_file, *system, *dump_logits, *weights, *weights_cache;
    const char *kv_dtype, *lora;
    char *prompt_buf;       /* --prompt-file's text (owned) */
    const char *images[MAX_IMAGES];
    cli_multi image_list;
    const char *stops[MAX_STOPS];
    cli_multi stop_list;
    int n_images, n_stops;
    long long max_new, min_px, max_px, top_k, seed, threads;
    double temperature, top_p, min_p, penalty;
    int greedy, json, quiet, has_temp, has_top_p, has_top_k, has_min_p, has_seed, has_penalty;
    int has_max_new;
    image decoded[MAX_IMAGES]; /* the images, decoded and checked before the load */
} options;

/* Returns 0 when parsed and checked, else the exit status (0 for --help). Every
 * option and input file is checked here, before the model is loaded. */
static int parse(options *o, int argc, char **argv, int *exit_code) {
    memset(o, 0, sizeof *o);
    o->image_list = (cli_multi){o->images, 0, MAX_IMAGES};
    o->stop_list = (cli_multi){o->stops, 0, MAX_STOPS};
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &o->model, NULL, 0, 0, 0, 0, NULL},
        {"prompt", 'p', CLI_STR, &o->prompt, "question", 0, 0, 0, 0, NULL},
        {"prompt-file", 'f', CLI_STR, &o->prompt_file, "question-file", 0, 0, 0, 0, NULL},
        {"system", 0, CLI_STR, &o->system, NULL, 0, 0, 0, 0, NULL},
        {"image", 'i', CLI_MULTI, &o->image_list, NULL, 0, 0, 0, 0, NULL},
        {"stop", 0, CLI_MULTI, &o->stop_list, NULL, 0, 0, 0, 0, NULL},
        {"dump-logits", 0, CLI_STR, &o->dump_logits, NULL, 0, 0, 0, 0, NULL},
        {"weights", 0, CLI_STR, &o->weights, NULL, 0, 0, 0, 0, NULL},
        {"weights-cache", 0, CLI_STR, &o->weights_cache, NULL, 0, 0, 0, 0, NULL},
        {"kv-dtype", 0, CLI_STR, &o->kv_dtype, NULL, 0, 0, 0, 0, NULL},
        {"lora", 0, CLI_STR, &o->lora, NULL, 0, 0, 0, 0, NULL},
        {"max-new-tokens", 'n', CLI_INT, &o->max_new, NULL, 1, 1 << 20, 0, 0, &o->has_max_new},
        {"min-pixels", 0, CLI_INT, &o->min_px, NULL, 1, (long long)1 << 40, 0, 0, NULL},
        {"max-pixels", 0, CLI_INT, &o->max_px, NULL, 1, (long long)1 << 40, 0, 0, NULL},
        {"threads", 't', CLI_INT, &o->threads, NULL, 1, 1024, 0, 0, NULL},
        {"top-k", 0, CLI_INT, &o->top_k, NULL, 0, 1 << 30, 0, 0, &o->has_top_k},
        {"seed", 's', CLI_INT, &o->seed, NULL, 0, INT64_MAX, 0, 0, &o->has_seed},
        {"temperature", 0, CLI_FLOAT, &o->temperature, "temp", 0, 0, 1e-6, 100, &o->has_temp},
        {"top-p", 0, CLI_FLOAT, &o->top_p, NULL, 0, 0, 1e-6, 1, &o->has_top_p},
        {"min-p", 0, CLI_FLOAT, &o->min_p, NULL, 0, 0, 0, 1, &o->has_min_p},
        {"repetition-penalty", 0, CLI_FLOAT, &o->penalty, "repeat-penalty", 0, 0, 1e-6, 100,
         &o->has_penalty},
        {"greedy", 0, CLI_FLAG, &o->greedy, NULL, 0, 0, 0, 0, NULL},
        {"json", 0, CLI_FLAG, &o->json, NULL, 0, 0, 0, 0, NULL},
        {"quiet", 'q', CLI_FLAG, &o->quiet, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("generate", opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        *exit_code = 0;
        return 1;
    }
    if (rc) {
        *exit_code = rc;
        return 1;
    }
    o->n_images = o->image_list.n;
    o->n_stops = o->stop_list.n;
    if (o->quiet) progress_set_quiet(1);
    for (int i = 0; i < o->n_stops; i++)
        if (!*o->stops[i]) {
            *exit_code = usage_error("%s", "--stop: an empty stop string");
            return 1;
        }
    if (!o->model || (!o->prompt == !o->prompt_file)) {
        *exit_code = usage_error("%s", "--model DIR and one of --prompt TEXT or --prompt-file "
                                       "FILE (- for stdin) are required");
        return 1;
    }
    if (o->greedy && (o->has_temp || o->has_top_p || o->has_top_k || o->has_min_p || o->has_seed)) {
        *exit_code = usage_error("%s", "--greedy excludes the sampling options");
        return 1;
    }
    ergo_error err = {0};
    engine_options eo;
    engine_options_default(&eo);
    if (cli_engine_options(&eo, o->threads, o->weights, o->weights_cache, o->kv_dtype, &err)) {
        *exit_code = cli_usage_error("generate", "%s", err.msg);
        return 1;
    }
    if (o->lora && cli_check_lora(o->lora, &err)) {
        *exit_code = fail(err.msg);
        return 1;
    }
    /* inputs: the prompt, then every image (exists, decodes, fits the processor) */
    if (o->prompt_file && !(o->prompt = o->prompt_buf = cli_read_text(o->prompt_file, &err))) {
        *exit_code = fail(err.msg);
        return 1;
    }
    if (cli_check_utf8(o->prompt_file ? o->prompt_file : "--prompt", o->prompt, &err) ||
        (o->system && cli_check_utf8("--system", o->system, &err))) {
        *exit_code = fail(err.msg);
        return 1;
    }
    preprocess_config pc;
    memset(&pc, 0, sizeof pc);
    if (o->n_images && cli_processor_config(&pc, o->model, o->min_px, o->max_px, &err)) {
        *exit_code = err.code == ERGO_E_ARG ? cli_usage_error("generate", "%s", err.msg)
                                            : fail(err.msg);
        return 1;
    }
    for (int i = 0; i < o->n_images; i++)
        if (cli_check_image(o->images[i], &pc, 0, &o->decoded[i], &err)) {
            *exit_code = fail(err.msg);
            return 1;
        }
    /* the conversation run_generate will build fits the context (before the load,
     * the quantisation and any vision encode) */
    chat_part parts[MAX_IMAGES + 1];
    for (int i = 0; i < o->n_images; i++) parts[i] = (chat_part){CHAT_IMAGE, NULL, 0, 0};
    parts[o->n_images] = (chat_part){CHAT_TEXT, o->prompt, strlen(o->prompt), 0};
    chat_message msgs[2];
    int n_msgs = 0;
    if (o->system) msgs[n_msgs++] = (chat_message){"system", o->system, strlen(o->system), NULL, 0};
    msgs[n_msgs++] = (chat_message){"user", NULL, 0, parts, (size_t)o->n_images + 1};
    if (cli_check_prompt_fits(o->model, msgs, n_msgs, o->decoded, o->n_images, &pc, &err)) {
        *exit_code = fail(err.msg);
        return 1;
    }
    return 0;
}

static void options_free(options *o) {
    for (int i = 0; i < o->n_images; i++) image_free(&o->decoded[i]);
    free(o->prompt_buf);
}

/* Everything a run owns, freed in one place. */
typedef struct run {
    engine e;
    context c;
    int c_ready;
    mrope_grid grids[MAX_IMAGES];
    float *vision;          /* (vision_tokens, D) every image's rows, in order */
    int64_t vision_tokens;
    session s;
    int s_ready;
    tok_ids ids;
    generate_result res;
    /* where the time went: vision blocks (also per block, summed over the images),
     * decoder layers, final norm + lm_head */
    double t_vision, t_prefill, vision_blocks, prefill_layers, prefill_head;
    double *per_block;      /* (vision depth) */
} run;

static void run_free(run *r) {
    generate_result_free(&r->res);
    tok_ids_free(&r->ids);
    if (r->s_ready) session_free(&r->s);
    free(r->vision);
    free(r->per_block);
    if (r->c_ready) context_free(&r->c);
    engine_free(&r->e);
}

/* The images through the processor and the encoder, their rows concatenated. */
static ergo_status encode_images(run *r, const options *o, chat_part *parts, ergo_error *err) {
    const model_config *cfg = &r->e.m.config;
    const size_t D = (size_t)cfg->text.hidden;
    for (int i = 0; i < o->n_images; i++) {
        context_image im;
        progress p;
        progress_begin(&p, "encode image %d/%d (%s, %dx%d)", i + 1, o->n_images, o->images[i],
                       o->decoded[i].width, o->decoded[i].height);
        ergo_status s = context_encode_image(&r->c, &o->decoded[i], NULL, &im, err);
        if (s) progress_abort(&p);
        else progress_end(&p, "%lld vision tokens (%dx%d)", (long long)im.tokens, im.width, im.height);
        const size_t rows = (size_t)(r->vision_tokens + im.tokens);
        float *grown = s ? NULL : realloc(r->vision, sizeof *grown * rows * D);
        if (!s && !grown) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for the vision rows");
        if (s) {
            context_image_free(&im);
            ergo_error_prefix(err, "%s: ", o->images[i]);
            return s;
        }
        r->vision = grown;
        memcpy(r->vision + (size_t)r->vision_tokens * D, im.rows,
               sizeof *im.rows * (size_t)im.tokens * D);
        r->t_vision += im.vision_ms;
        for (int l = 0; l < cfg->vision.depth; l++) {
            r->vision_blocks += r->c.vs.layer_ms[1 + l];
            r->per_block[l] += r->c.vs.layer_ms[1 + l];
        }
        r->grids[i] = im.grid;
        r->vision_tokens += im.tokens;
        parts[i] = (chat_part){CHAT_IMAGE, NULL, 0, (int32_t)im.tokens};
        context_image_free(&im);
    }
    return ERGO_OK;
}

/* Load, images, prompt, prefill, then decode. */
static ergo_status run_generate(run *r, const options *o, ergo_error *err) {
    engine_options eo;
    engine_options_default(&eo);
    eo.min_pixels = o->min_px;
    eo.max_pixels = o->max_px;
    ergo_status s = cli_engine_options(&eo, o->threads, o->weights, o->weights_cache,
                                       o->kv_dtype, err);
    eo.lora = o->lora;
    if (!s) s = cli_load_engine("generate", &r->e, o->model, &eo, err);
    if (s) return s;
    cli_engine_warning("generate", &r->e);
    const model_config *cfg = &r->e.m.config;
    if ((s = context_init(&r->c, &r->e, err))) return s;
    r->c_ready = 1;
    if (!(r->per_block = calloc((size_t)cfg->vision.depth + 1, sizeof *r->per_block)))
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");

    /* vision encoder: every image, its rows in the order of its pads */
    chat_part parts[MAX_IMAGES + 1];
    if ((s = encode_images(r, o, parts, err))) return s;
    parts[o->n_images] = (chat_part){CHAT_TEXT, o->prompt, strlen(o->prompt), 0};

    /* the conversation: [system], user [images..., text], generation prompt */
    chat_message msgs[2];
    int n_msgs = 0;
    if (o->system) msgs[n_msgs++] = (chat_message){"system", o->system, strlen(o->system), NULL, 0};
    msgs[n_msgs++] = (chat_message){"user", NULL, 0, parts, (size_t)o->n_images + 1};
    if ((s = chat_encode(&r->e.ct, r->e.tok, msgs, (size_t)n_msgs, 1, &r->ids, err))) return s;

    /* prefill (a prompt over the context is refused here, before any work) */
    if ((s = context_session_init(&r->c, &r->s, err))) return s;
    r->s_ready = 1;
    context_piece piece = {r->ids.v, (int)r->ids.n, r->grids, o->n_images, r->vision};
    context_prefill_out pf;
    progress pp;
    progress_begin(&pp, "prefill %zu tokens", r->ids.n);
    r->c.st.on_rows = cli_prefill_rows, r->c.st.on_rows_ctx = &pp; /* a bar with ETA */
    s = context_prefill(&r->c, &r->s, &piece, &pf, err);
    r->c.st.on_rows = NULL, r->c.st.on_rows_ctx = NULL;
    if (s) {
        progress_abort(&pp);
        return s;
    }
    progress_end(&pp, "%.1f tokens/s", pf.ms > 0 ? pf.prompt_tokens / (pf.ms / 1e3) : 0.0);
    r->t_prefill = pf.ms;
    r->prefill_layers = r->c.st.ms_layers;
    r->prefill_head = r->c.st.ms_head;
    const int V = cfg->text.vocab_size;
    if (o->dump_logits &&
        (s = file_write_all(o->dump_logits, pf.logits, sizeof *pf.logits * (size_t)V, err)))
        return s;

    /* decode */
    generate_params gp = {{0}, 0, NULL, 0, o->stops, o->n_stops};
    const generation_config *g = &r->e.m.generation;
    sampler_config_from_generation(&gp.sampling, g);
    if (o->greedy) gp.sampling.do_sample = 0;
    if (o->has_temp || o->has_top_p || o->has_top_k || o->has_min_p || o->has_seed)
        gp.sampling.do_sample = 1;
    if (o->has_temp) gp.sampling.temperature = o->temperature;
    if (o->has_top_p) gp.sampling.top_p = o->top_p;
    if (o->has_top_k) gp.sampling.top_k = (int)o->top_k;
    if (o->has_min_p) gp.sampling.min_p = o->min_p;
    if (o->has_seed) gp.sampling.seed = (uint64_t)o->seed;
    if (o->has_penalty) gp.sampling.repetition_penalty = o->penalty;
    gp.max_new_tokens = o->has_max_new ? (int)o->max_new
                        : g->max_new_tokens >= 0 ? g->max_new_tokens : 1024;
    /* the checkpoint's eos ids only, as model.generate stops (not <|im_end|> unless listed) */
    gp.stop_ids = g->eos_token_ids;
    gp.n_stop_ids = g->n_eos;
    cli_decode_progress dp;
    cli_decode_progress_begin(&dp, o->json ? NULL : stdout, gp.max_new_tokens);
    s = context_generate(&r->c, &r->s, pf.logits, &gp, cli_decode_progress_text, &dp, &r->res,
                         err);
    cli_decode_progress_end(&dp, s, r->res.tokens.n, r->res.decode_ms);
    return s;
}

int cmd_generate(int argc, char **argv) {
    options o;
    int code = 0;
    if (parse(&o, argc, argv, &code)) {
        options_free(&o);
        return code;
    }

    ergo_error err = {0};
    run *r = calloc(1, sizeof *r);
    if (!r) {
        options_free(&o);
        return fail("out of memory");
    }
    ergo_status s = run_generate(r, &o, &err);
    const model_config *cfg = &r->e.m.config;
    int rc = 0;
    if (s) {
        rc = fail(err.msg);
    } else if (o.json) {
        json_t *ids = json_array();
        for (size_t i = 0; i < r->res.tokens.n; i++)
            json_array_append_new(ids, json_integer(r->res.tokens.v[i]));
        json_t *out = json_pack("{s:s%, s:o, s:I, s:I, s:s, s:{s:f, s:f, s:f}}", "text",
                                r->res.text.s ? r->res.text.s : "", r->res.text.n, "token_ids",
                                ids, "prompt_tokens", (json_int_t)r->ids.n, "vision_tokens",
                                (json_int_t)r->vision_tokens, "stop_reason",
                                stop_reason_name(r->res.reason), "timings", "vision_encode",
                                r->t_vision, "prefill", r->t_prefill, "decode", r->res.decode_ms);
        /* the split of those times (benchmarks: per layer = *_layers / layers / tokens) */
        json_t *detail = json_pack(
            "{s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "text_layers", cfg->text.n_layers,
            "vision_depth", cfg->vision.depth, "vision_blocks", r->vision_blocks,
            "prefill_layers", r->prefill_layers, "prefill_head", r->prefill_head,
            "decode_layers", r->c.st.ms_layers - r->prefill_layers, "decode_head",
            r->c.st.ms_head - r->prefill_head);
        json_t *block_ms = json_array(); /* per vision block, summed over the images */
        for (int l = 0; l < cfg->vision.depth && o.n_images; l++)
            json_array_append_new(block_ms, json_real(r->per_block[l]));
        if (detail) json_object_set(detail, "vision_block_ms", block_ms);
        json_decref(block_ms);
        if (out && detail) json_object_set_new(out, "timings_detail", detail);
        else json_decref(detail);
        char *txt = out ? json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        if (txt) puts(txt);
        else rc = fail("cannot format the JSON output");
        free(txt);
        json_decref(out);
    } else {
        fputc('\n', stdout);
    }
    run_free(r);
    free(r);
    options_free(&o);
    if (fflush(stdout) != 0 && rc == 0) rc = fail("cannot write the output");
    return rc;
}
