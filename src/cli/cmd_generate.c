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

#include "base/clock.h"
#include "base/file.h"
#include "cli.h"
#include "commands.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "kernels/kernels.h"
#include "model/generate.h"
#include "model/session.h"
#include "model/text.h"
#include "model/vision.h"
#include "model/weights.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

#define MAX_IMAGES 64
#define MAX_STOPS 16
/* Tokens per prefill chunk: bounds the text state (the (T, ffn) MLP buffers). */
#define PREFILL_CHUNK 64

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo generate --model DIR [--image FILE]... --prompt TEXT [--system TEXT]\n"
            "                     [--max-new-tokens N] [--greedy | --temperature T --top-p P\n"
            "                     --top-k K --min-p P --seed S] [--repetition-penalty R]\n"
            "                     [--stop TEXT]... [--min-pixels N --max-pixels N] [--json]\n"
            "                     [--dump-logits FILE] [--weights bf16|q8|q4]\n"
            "                     [--weights-cache auto|off|FILE]\n"
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
}

static int fail(const char *msg) { return cli_fail("generate", msg); }

static int usage_error(const char *fmt, const char *arg) {
    return cli_usage_error("generate", fmt, arg);
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno) return 0;
    *out = (float)v;
    return 1;
}

static int print_piece(void *ctx, const char *text, size_t len) {
    (void)ctx;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

typedef struct options {
    const char *model, *prompt, *system, *dump_logits, *weights, *weights_cache;
    const char *images[MAX_IMAGES];
    int n_images;
    const char *stops[MAX_STOPS];
    int n_stops;
    long long max_new, min_px, max_px, top_k, seed;
    float temperature, top_p, min_p, penalty;
    int greedy, json, has_temp, has_top_p, has_top_k, has_min_p, has_seed, has_penalty;
} options;

/* Returns 0 when parsed, else the exit status (0 for --help). */
static int parse(options *o, int argc, char **argv, int *exit_code) {
    memset(o, 0, sizeof *o);
    o->max_new = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            *exit_code = 0;
            return 1;
        }
        if (!strcmp(a, "--greedy")) { o->greedy = 1; continue; }
        if (!strcmp(a, "--json")) { o->json = 1; continue; }
        if (i + 1 >= argc) {
            *exit_code = usage_error("%s needs a value or is unknown", a);
            return 1;
        }
        const char *v = argv[++i];
        int ok = 1;
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--system")) o->system = v;
        else if (!strcmp(a, "--dump-logits")) o->dump_logits = v;
        else if (!strcmp(a, "--weights")) o->weights = v;
        else if (!strcmp(a, "--weights-cache")) o->weights_cache = v;
        else if (!strcmp(a, "--image")) {
            if (o->n_images == MAX_IMAGES) {
                *exit_code = usage_error("more than %s images", "64");
                return 1;
            }
            o->images[o->n_images++] = v;
        } else if (!strcmp(a, "--stop")) {
            ok = o->n_stops < MAX_STOPS && *v;
            if (ok) o->stops[o->n_stops++] = v;
        } else if (!strcmp(a, "--max-new-tokens")) ok = cli_parse_long(v, 0, 1 << 30, &o->max_new);
        else if (!strcmp(a, "--min-pixels")) ok = cli_parse_long(v, 1, (long long)1 << 40, &o->min_px);
        else if (!strcmp(a, "--max-pixels")) ok = cli_parse_long(v, 1, (long long)1 << 40, &o->max_px);
        else if (!strcmp(a, "--top-k")) ok = o->has_top_k = cli_parse_long(v, 0, 1 << 30, &o->top_k);
        else if (!strcmp(a, "--seed")) ok = o->has_seed = cli_parse_long(v, 0, INT64_MAX, &o->seed);
        else if (!strcmp(a, "--temperature")) ok = o->has_temp = parse_float(v, &o->temperature);
        else if (!strcmp(a, "--top-p")) ok = o->has_top_p = parse_float(v, &o->top_p);
        else if (!strcmp(a, "--min-p")) ok = o->has_min_p = parse_float(v, &o->min_p);
        else if (!strcmp(a, "--repetition-penalty"))
            ok = o->has_penalty = parse_float(v, &o->penalty);
        else {
            *exit_code = usage_error("unknown option `%s'", a);
            return 1;
        }
        if (!ok) {
            *exit_code = usage_error("bad value for %s", a);
            return 1;
        }
    }
    if (!o->model || !o->prompt) {
        *exit_code = usage_error("%s", "--model DIR and --prompt TEXT are required");
        return 1;
    }
    if (o->greedy && (o->has_temp || o->has_top_p || o->has_top_k || o->has_min_p || o->has_seed)) {
        *exit_code = usage_error("%s", "--greedy excludes the sampling options");
        return 1;
    }
    return 0;
}

/* Everything a run owns, freed in one place. */
typedef struct run {
    model m;
    int model_loaded;
    tokenizer *tok;
    preprocess_output pre[MAX_IMAGES];
    mrope_grid grids[MAX_IMAGES];
    float *vision;          /* (vision_tokens, D) */
    vision_state vs;
    int vs_ready;
    text_state st;
    kv_pool pool;
    int pool_ready;
    session s;
    tok_ids ids;
    float *logits;          /* (V) */
    generate_result res;
} run;

static void run_free(run *r, int n_images) {
    generate_result_free(&r->res);
    free(r->logits);
    tok_ids_free(&r->ids);
    session_free(&r->s);
    if (r->pool_ready) kv_pool_free(&r->pool);
    text_state_free(&r->st);
    if (r->vs_ready) vision_state_free(&r->vs);
    free(r->vision);
    for (int i = 0; i < n_images; i++) preprocess_output_free(&r->pre[i]);
    tokenizer_free(r->tok);
    if (r->model_loaded) model_free(&r->m);
}

static ergo_status run_generate(run *r, const options *o, ergo_error *err) {
    ergo_status s;
    if ((s = kernels_init(NULL, err))) return s;
    if ((s = model_load(&r->m, o->model, err))) return s;
    r->model_loaded = 1;
    if ((s = cli_quantize("generate", &r->m, o->weights, o->weights_cache, o->model, err))) return s;
    const model_config *cfg = &r->m.config;
    if ((s = tokenizer_load(&r->tok, o->model, err))) return s;
    chat_template ct;
    if ((s = chat_template_load(&ct, o->model, err))) return s;

    /* image pre-processing with the checkpoint's processor settings */
    preprocess_config pc;
    char pc_path[4096];
    if ((s = path_join(pc_path, sizeof pc_path, o->model, "preprocessor_config.json", err)))
        return s;
    if (file_exists(pc_path)) {
        if ((s = preprocess_config_load(&pc, pc_path, err))) return s;
    } else {
        preprocess_config_default(&pc);
    }
    if (o->min_px) pc.min_pixels = o->min_px;
    if (o->max_px) pc.max_pixels = o->max_px;
    if (pc.min_pixels > pc.max_pixels)
        return ergo_fail(err, ERGO_E_ARG, "min pixels %lld is above max pixels %lld",
                         (long long)pc.min_pixels, (long long)pc.max_pixels);
    /* the configured limit: no image may take more patches than max_pixels allows
     * (the processor keeps a side of at least 28 px, so thin images can exceed it) */
    const int64_t max_patches = pc.max_pixels / ((int64_t)pc.patch_size * pc.patch_size);
    int64_t vision_tokens = 0;
    chat_part parts[MAX_IMAGES + 1];
    for (int i = 0; i < o->n_images; i++) {
        image img = {0};
        if ((s = image_decode_file(&img, o->images[i], NULL, err))) return s;
        s = preprocess_image(&pc, &img, &r->pre[i], err);
        image_free(&img);
        if (s) {
            ergo_error_prefix(err, "%s: ", o->images[i]);
            return s;
        }
        const preprocess_output *p = &r->pre[i];
        if (p->n_patches > max_patches)
            return ergo_fail(err, ERGO_E_LIMIT,
                             "%s: its %dx%d patch grid (%lld patches, %dx%d px) exceeds the "
                             "limit of %lld patches (max pixels %lld)",
                             o->images[i], p->grid_h, p->grid_w, (long long)p->n_patches,
                             p->width, p->height, (long long)max_patches,
                             (long long)pc.max_pixels);
        r->grids[i] = (mrope_grid){p->grid_t, p->grid_h, p->grid_w};
        int64_t tokens = mrope_grid_tokens(&r->grids[i], cfg->vision.merge);
        vision_tokens += tokens;
        parts[i] = (chat_part){CHAT_IMAGE, NULL, 0, (int32_t)tokens};
    }
    parts[o->n_images] = (chat_part){CHAT_TEXT, o->prompt, strlen(o->prompt), 0};

    /* the conversation: [system], user [images..., text], generation prompt */
    chat_message msgs[2];
    int n_msgs = 0;
    if (o->system) msgs[n_msgs++] = (chat_message){"system", o->system, strlen(o->system), NULL, 0};
    msgs[n_msgs++] = (chat_message){"user", NULL, 0, parts, (size_t)o->n_images + 1};
    if ((s = chat_encode(&ct, r->tok, msgs, (size_t)n_msgs, 1, &r->ids, err))) return s;
    const int64_t context = cfg->text.max_position_embeddings;
    if ((int64_t)r->ids.n > context) {
        if (o->n_images && (int64_t)r->ids.n - vision_tokens <= context)
            return ergo_fail(err, ERGO_E_LIMIT,
                             "too many images for the context: %d image(s) take %lld vision "
                             "tokens, making a prompt of %zu tokens; the context holds %lld",
                             o->n_images, (long long)vision_tokens, r->ids.n, (long long)context);
        return ergo_fail(err, ERGO_E_LIMIT,
                         "the prompt is %zu tokens (%lld of them for %d image(s)), longer than "
                         "the context of %lld tokens",
                         r->ids.n, (long long)vision_tokens, o->n_images, (long long)context);
    }
    return ERGO_OK;
}

int cmd_generate(int argc, char **argv) {
    options o;
    int code = 0;
    if (parse(&o, argc, argv, &code)) return code;

    ergo_error err = {0};
    run *r = calloc(1, sizeof *r);
    if (!r) return fail("out of memory");
    ergo_status s = run_generate(r, &o, &err);
    double t_vision = 0, t_prefill = 0;
    /* where the time went: vision blocks, decoder layers, final norm + lm_head */
    double vision_blocks = 0, prefill_layers = 0, prefill_head = 0;
    const model_config *cfg = &r->m.config;
    json_t *block_ms = json_array(); /* per vision block, summed over the images */
    double *per_block = calloc((size_t)cfg->vision.depth + 1, sizeof *per_block);
    if (!per_block) s = ergo_fail(&err, ERGO_E_NOMEM, "out of memory");
    int64_t vision_tokens = 0;
    for (int i = 0; i < o.n_images && !s; i++)
        vision_tokens += mrope_grid_tokens(&r->grids[i], cfg->vision.merge);

    /* vision encoder: every image, its rows in the order of its pads */
    if (!s && o.n_images) {
        int64_t largest = 0;
        for (int i = 0; i < o.n_images; i++)
            if (r->pre[i].n_patches > largest) largest = r->pre[i].n_patches;
        const int D = cfg->text.hidden;
        r->vision = malloc(sizeof *r->vision * (size_t)vision_tokens * D);
        if (!r->vision) s = ergo_fail(&err, ERGO_E_NOMEM, "out of memory for the vision rows");
        if (!s) s = vision_state_init(&r->vs, &cfg->vision, (int)largest, &err);
        r->vs_ready = !s;
        double t0 = now_ms();
        size_t row = 0;
        for (int i = 0; i < o.n_images && !s; i++) {
            const preprocess_output *p = &r->pre[i];
            s = vision_encode(&r->m, &r->vs, p->pixel_values, p->grid_t, p->grid_h, p->grid_w,
                              r->vision + row * D, &err);
            if (s) ergo_error_prefix(&err, "%s: ", o.images[i]);
            for (int l = 0; !s && l < cfg->vision.depth; l++) {
                vision_blocks += r->vs.layer_ms[1 + l];
                per_block[l] += r->vs.layer_ms[1 + l];
            }
            row += (size_t)mrope_grid_tokens(&r->grids[i], cfg->vision.merge);
        }
        t_vision = now_ms() - t0;
    }

    /* prefill */
    const int V = s ? 0 : cfg->text.vocab_size;
    if (!s) s = text_state_init(&r->st, &cfg->text, PREFILL_CHUNK, &err);
    if (!s) {
        const kv_pool_config kc = text_kv_config(&cfg->text, KV_F32, 0);
        s = kv_pool_init(&r->pool, &kc, &err);
        r->pool_ready = !s;
    }
    if (!s) s = session_init(&r->s, &r->m, &r->pool, cfg->text.max_position_embeddings, &err);
    if (!s && !(r->logits = malloc(sizeof *r->logits * (size_t)V)))
        s = ergo_fail(&err, ERGO_E_NOMEM, "out of memory");
    if (!s) {
        double t0 = now_ms();
        s = session_append(&r->s, &r->st, r->ids.v, (int)r->ids.n, r->grids, o.n_images,
                           r->vision, r->logits, &err);
        t_prefill = now_ms() - t0;
        prefill_layers = r->st.ms_layers;
        prefill_head = r->st.ms_head;
    }
    if (!s && o.dump_logits)
        s = file_write_all(o.dump_logits, r->logits, sizeof *r->logits * (size_t)V, &err);

    /* decode */
    generate_params gp = {{0}, 0, NULL, 0, o.stops, o.n_stops};
    if (!s) {
        const generation_config *g = &r->m.generation;
        sampler_config_from_generation(&gp.sampling, g);
        if (o.greedy) gp.sampling.do_sample = 0;
        if (o.has_temp || o.has_top_p || o.has_top_k || o.has_min_p || o.has_seed)
            gp.sampling.do_sample = 1;
        if (o.has_temp) gp.sampling.temperature = o.temperature;
        if (o.has_top_p) gp.sampling.top_p = o.top_p;
        if (o.has_top_k) gp.sampling.top_k = (int)o.top_k;
        if (o.has_min_p) gp.sampling.min_p = o.min_p;
        if (o.has_seed) gp.sampling.seed = (uint64_t)o.seed;
        if (o.has_penalty) gp.sampling.repetition_penalty = o.penalty;
        gp.max_new_tokens = o.max_new >= 0 ? (int)o.max_new
                            : g->max_new_tokens >= 0 ? g->max_new_tokens : 1024;
        gp.stop_ids = g->eos_token_ids;
        gp.n_stop_ids = g->n_eos;
        s = generate_run(&r->s, &r->st, r->tok, &gp, r->logits, o.json ? NULL : print_piece,
                         NULL, &r->res, &err);
    }
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
                                (json_int_t)vision_tokens, "stop_reason",
                                stop_reason_name(r->res.reason), "timings", "vision_encode",
                                t_vision, "prefill", t_prefill, "decode", r->res.decode_ms);
        /* the split of those times (benchmarks: per layer = *_layers / layers / tokens) */
        json_t *detail = json_pack(
            "{s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "text_layers", cfg->text.n_layers,
            "vision_depth", cfg->vision.depth, "vision_blocks", vision_blocks, "prefill_layers",
            prefill_layers, "prefill_head", prefill_head, "decode_layers",
            r->st.ms_layers - prefill_layers, "decode_head", r->st.ms_head - prefill_head);
        for (int l = 0; l < cfg->vision.depth && o.n_images; l++)
            json_array_append_new(block_ms, json_real(per_block[l]));
        if (detail) json_object_set(detail, "vision_block_ms", block_ms);
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
    run_free(r, o.n_images);
    free(r);
    free(per_block);
    json_decref(block_ms);
    if (fflush(stdout) != 0 && rc == 0) rc = fail("cannot write the output");
    return rc;
}
