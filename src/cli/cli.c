#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/file.h"
#include "base/json.h"
#include "model/lora_adapter.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "kernels/quant.h"
#include "progress.h"
#include "runtime/engine.h"
#include "model/config.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

int cli_fail(const char *command, const char *msg) {
    fprintf(stderr, "ergo %s: ", command);
    for (const char *p = msg; *p; p++) fputc((unsigned char)*p < 0x20 ? ' ' : *p, stderr);
    fputc('\n', stderr);
    return 1;
}

int cli_usage_error(const char *command, const char *fmt, const char *arg) {
    fprintf(stderr, "ergo %s: ", command);
    fprintf(stderr, fmt, arg);
    fputs(" (see --help)\n", stderr);
    return 2;
}

int cli_parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

ergo_status cli_weights_options(engine_options *eo, const char *weights, const char *cache,
                                ergo_error *err) {
    const int f = weights ? quant_format_parse(weights) : QUANT_NONE;
    if (f < 0)
        return ergo_fail(err, ERGO_E_ARG, "--weights %.40s: use bf16 (as stored), q8 or q4",
                         weights);
    eo->weights = (quant_format)f;
    eo->weights_cache = cache;
    return ERGO_OK;
}

const char cli_kv_help[] =
    "--kv-dtype f32|bf16: how the KV cache keeps keys and values (f32, the default: the\n"
    "reference's numbers; bf16 halves the cache's memory and what decode reads at long\n"
    "context, at the accuracy tests/test_quant_model.c states).\n";

ergo_status cli_kv_options(engine_options *eo, const char *name, ergo_error *err) {
    eo->kv_dtype = KV_F32;
    return name ? kv_dtype_parse(name, &eo->kv_dtype, err) : ERGO_OK;
}

void cli_engine_warning(const char *command, const engine *e) {
    if (e->warning[0]) fprintf(stderr, "ergo %s: warning: %s\n", command, e->warning);
}

/* ---------------------------------------------------------------- options */

static const cli_opt *find_long(const cli_opt *opts, int n, const char *name, size_t len) {
    for (int i = 0; i < n; i++) {
        if (opts[i].kind == CLI_POSITIONAL) continue;
        const char *names[2] = {opts[i].name, opts[i].alias};
        for (int k = 0; k < 2; k++)
            if (names[k] && strlen(names[k]) == len && !strncmp(names[k], name, len))
                return &opts[i];
    }
    return NULL;
}

static const cli_opt *find_short(const cli_opt *opts, int n, char c) {
    for (int i = 0; i < n; i++)
        if (opts[i].short_name && opts[i].short_name == c && opts[i].kind != CLI_POSITIONAL)
            return &opts[i];
    return NULL;
}

/* "--name" as the user should read it in a message. */
static void opt_label(char *buf, size_t size, const cli_opt *o) {
    snprintf(buf, size, "--%s", o->name);
}

static int store(const char *command, const cli_opt *o, const char *v) {
    char lab[80];
    opt_label(lab, sizeof lab, o);
    if (o->given) *o->given = 1;
    switch (o->kind) {
    case CLI_FLAG: *(int *)o->out = 1; return CLI_OK;
    case CLI_STR:
    case CLI_POSITIONAL: *(const char **)o->out = v; return CLI_OK;
    case CLI_MULTI: {
        cli_multi *m = o->out;
        if (m->n >= m->max) {
            fprintf(stderr, "ergo %s: %s: more than %d given (see --help)\n", command, lab, m->max);
            return 2;
        }
        m->v[m->n++] = v;
        return CLI_OK;
    }
    case CLI_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno == ERANGE) {
            fprintf(stderr, "ergo %s: %s: `%.40s' is not an integer (%lld..%lld) (see --help)\n",
                    command, lab, v, o->lo, o->hi);
            return 2;
        }
        if (x < o->lo || x > o->hi) {
            fprintf(stderr, "ergo %s: %s: %lld is %s %lld (the range is %lld..%lld)\n", command,
                    lab, x, x < o->lo ? "below" : "above the cap", x < o->lo ? o->lo : o->hi,
                    o->lo, o->hi);
            return 2;
        }
        *(long long *)o->out = x;
        return CLI_OK;
    }
    case CLI_FLOAT: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (!*v || *end || errno == ERANGE || x != x) {
            fprintf(stderr, "ergo %s: %s: `%.40s' is not a number (%g..%g) (see --help)\n",
                    command, lab, v, o->flo, o->fhi);
            return 2;
        }
        if (x < o->flo || x > o->fhi) {
            fprintf(stderr, "ergo %s: %s: %g is %s %g (the range is %g..%g)\n", command, lab, x,
                    x < o->flo ? "below" : "above the cap", x < o->flo ? o->flo : o->fhi, o->flo,
                    o->fhi);
            return 2;
        }
        *(double *)o->out = x;
        return CLI_OK;
    }
    }
    return 2;
}

int cli_parse(const char *command, const cli_opt *opts, int n, int argc, char **argv) {
    const cli_opt *positional = NULL;
    int n_positional = 0;
    for (int i = 0; i < n; i++)
        if (opts[i].kind == CLI_POSITIONAL) positional = &opts[i];
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && (!strcmp(a, "--help") || !strcmp(a, "-h"))) return CLI_HELP;
        if (!only_positional && !strcmp(a, "--")) {
            only_positional = 1;
            continue;
        }
        const cli_opt *o = NULL;
        const char *v = NULL; /* inline value: --name=value or -nVALUE */
        char shown[64];
        if (!only_positional && a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            o = find_long(opts, n, a + 2, len);
            snprintf(shown, sizeof shown, "%.*s", (int)(len + 2 < 60 ? len + 2 : 60), a);
            if (!o) {
                fprintf(stderr, "ergo %s: unknown option `%s' (see --help)\n", command, shown);
                return 2;
            }
            if (eq) v = eq + 1;
        } else if (!only_positional && a[0] == '-' && a[1]) {
            o = find_short(opts, n, a[1]);
            snprintf(shown, sizeof shown, "-%c", a[1]);
            if (!o) {
                fprintf(stderr, "ergo %s: unknown option `%s' (see --help)\n", command, shown);
                return 2;
            }
            if (a[2]) v = a + 2;
        } else {
            if (!positional || n_positional++) {
                fprintf(stderr, "ergo %s: unexpected argument `%.60s' (options start with --; "
                                "see --help)\n", command, a);
                return 2;
            }
            if (positional->given) *positional->given = 1;
            *(const char **)positional->out = a;
            continue;
        }
        char lab[80];
        opt_label(lab, sizeof lab, o);
        if (o->kind == CLI_FLAG) {
            if (v) {
                fprintf(stderr, "ergo %s: %s takes no value (see --help)\n", command, lab);
                return 2;
            }
            store(command, o, NULL);
            continue;
        }
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ergo %s: %s needs a value (see --help)\n", command, lab);
                return 2;
            }
            v = argv[++i];
        }
        int rc = store(command, o, v);
        if (rc) return rc;
    }
    return CLI_OK;
}

ergo_status cli_check_utf8(const char *what, const char *s, ergo_error *err) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (p[i]) {
        unsigned c = p[i];
        int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2
                : (c & 0xF8) == 0xF0 ? 3 : -1;
        unsigned cp = n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07;
        int ok = n >= 0;
        for (int k = 1; ok && k <= n; k++) {
            ok = (p[i + k] & 0xC0) == 0x80;
            if (ok) cp = cp << 6 | (p[i + k] & 0x3F);
        }
        /* overlong forms, surrogates and values above U+10FFFF are not UTF-8 */
        if (ok && ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
                   (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF))
            ok = 0;
        if (!ok) return ergo_fail(err, ERGO_E_ARG, "%s: invalid UTF-8 at byte %zu", what, i);
        i += (size_t)n + 1;
    }
    return ERGO_OK;
}

char *cli_read_text(const char *path, ergo_error *err) {
    char *buf = NULL;
    size_t len = 0;
    if (!strcmp(path, "-")) {
        size_t cap = 0;
        for (;;) {
            if (len + 4096 + 1 > cap) {
                cap = cap ? 2 * cap : 8192;
                if (cap > ((size_t)1 << 26)) {
                    free(buf);
                    ergo_fail(err, ERGO_E_LIMIT, "stdin: the question is over 64 MB");
                    return NULL;
                }
                char *g = realloc(buf, cap);
                if (!g) {
                    free(buf);
                    ergo_fail(err, ERGO_E_NOMEM, "out of memory reading stdin");
                    return NULL;
                }
                buf = g;
            }
            size_t got = fread(buf + len, 1, 4096, stdin);
            len += got;
            if (got < 4096) break;
        }
        if (ferror(stdin)) {
            free(buf);
            ergo_fail(err, ERGO_E_IO, "stdin: read error");
            return NULL;
        }
        buf[len] = 0;
        path = "stdin";
    } else if (file_read_all(path, (size_t)1 << 26, &buf, &len, err)) {
        return NULL;
    }
    if (memchr(buf, 0, len)) {
        free(buf);
        ergo_fail(err, ERGO_E_ARG, "%s: the text holds a NUL byte", path);
        return NULL;
    }
    /* one trailing newline is the file's, not the question's */
    if (len && buf[len - 1] == '\n') buf[--len] = 0;
    if (len && buf[len - 1] == '\r') buf[--len] = 0;
    if (cli_check_utf8(path, buf, err)) {
        free(buf);
        return NULL;
    }
    return buf;
}

int cli_check_omp_env(const char *command, const char *v) {
    long long n;
    if (!v) return 0;
    /* libgomp takes a list "4,2" for nested levels; ergo uses the first */
    char first[32];
    size_t k = strcspn(v, ",");
    if (k < sizeof first) {
        memcpy(first, v, k);
        first[k] = 0;
        if (cli_parse_long(first, 1, 4096, &n)) return 0;
    }
    fprintf(stderr, "ergo %s: OMP_NUM_THREADS=%.40s: not a thread count (1..4096); unset it or "
                    "use --threads N\n", command, v);
    return 2;
}

ergo_status cli_engine_options(engine_options *eo, long long threads, const char *weights,
                               const char *cache, const char *kv, ergo_error *err) {
    eo->n_threads = (int)threads;
    ergo_status s = cli_weights_options(eo, weights, cache, err);
    if (!s) s = cli_kv_options(eo, kv, err);
    return s;
}

ergo_status cli_processor_config(preprocess_config *pc, const char *dir, long long min_px,
                                 long long max_px, ergo_error *err) {
    char path[4096];
    ergo_status s = path_join(path, sizeof path, dir, "preprocessor_config.json", err);
    if (s) return s;
    if (file_exists(path)) {
        if ((s = preprocess_config_load(pc, path, err))) return s;
    } else {
        preprocess_config_default(pc);
    }
    if (min_px) pc->min_pixels = min_px;
    if (max_px) pc->max_pixels = max_px;
    if (pc->min_pixels > pc->max_pixels)
        return ergo_fail(err, ERGO_E_ARG, "--min-pixels %lld is above --max-pixels %lld",
                         (long long)pc->min_pixels, (long long)pc->max_pixels);
    return ERGO_OK;
}

ergo_status cli_check_image(const char *path, const preprocess_config *pc, int ergo_tokens,
                            image *img, ergo_error *err) {
    ergo_status s = image_decode_file(img, path, NULL, err);
    if (s) return s; /* image_decode_file names the file */
    int h = img->height, w = img->width;
    const int factor = pc->patch_size * pc->merge_size;
    if (ergo_tokens > 0) {
        s = smart_resize_ergo(h, w, 28, 4 * 28 * 28, (int64_t)ergo_tokens * 28 * 28, &h, &w, err);
        if (!s && (h < 1 || w < 1))
            s = ergo_fail(err, ERGO_E_ARG, "ERGO's stage-1 resize gives a side of 0 (%dx%d)", w, h);
    }
    int h2 = 0, w2 = 0;
    if (!s) s = smart_resize_qwen(h, w, factor, pc->min_pixels, pc->max_pixels, &h2, &w2, err);
    if (!s) {
        const int gh = h2 / pc->patch_size, gw = w2 / pc->patch_size;
        const int64_t patches = (int64_t)gh * gw;
        const int64_t cap = pc->max_pixels / ((int64_t)pc->patch_size * pc->patch_size);
        if (patches > cap) /* as context_encode_image says it */
            s = ergo_fail(err, ERGO_E_LIMIT,
                          "its %dx%d patch grid (%lld patches, %dx%d px) exceeds the limit of "
                          "%lld patches (max pixels %lld)", gh, gw, (long long)patches, w2, h2,
                          (long long)cap, (long long)pc->max_pixels);
    }
    if (s) {
        if (ergo_tokens > 0 && (h != img->height || w != img->width))
            ergo_error_prefix(err, "%s (%dx%d image, %dx%d after ERGO's stage-1 resize): ", path,
                              img->width, img->height, w, h);
        else
            ergo_error_prefix(err, "%s (%dx%d image): ", path, img->width, img->height);
    }
    return s;
}

static void quantize_bar(void *ctx, int64_t done, int64_t total) {
    progress_update(ctx, (double)done / 1e6, (double)total / 1e6, "MB quantised");
}

ergo_status cli_load_engine(const char *command, engine *e, const char *dir,
                            const engine_options *eo, ergo_error *err) {
    progress p;
    char cache[4200] = "", what[4400];
    if (eo->weights != QUANT_NONE) {
        if (eo->lora && (!eo->weights_cache || !strcmp(eo->weights_cache, "auto")))
            snprintf(cache, sizeof cache, "%s/ergo-weights.%s-lora-<adapter hash>", dir,
                     quant_format_name(eo->weights));
        else if (!eo->weights_cache || !strcmp(eo->weights_cache, "auto"))
            snprintf(cache, sizeof cache, "%s/ergo-weights.%s", dir, quant_format_name(eo->weights));
        else
            snprintf(cache, sizeof cache, "%s", eo->weights_cache);
    }
    snprintf(what, sizeof what, "%s%s%s", dir, eo->lora ? " + LoRA " : "",
             eo->lora ? eo->lora : "");
    if (eo->weights == QUANT_NONE)
        progress_begin(&p, "load %s (bf16, as stored)", what);
    else if (!strcmp(cache, "off"))
        progress_begin(&p, "load %s + quantise to %s (no cache)", what,
                       quant_format_name(eo->weights));
    else
        progress_begin(&p, "load %s + %s weights (cache %s)", what, quant_format_name(eo->weights),
                       cache);
    engine_options with_bar = *eo; /* the quantisation's bytes as a bar with ETA */
    with_bar.on_quantize = quantize_bar, with_bar.on_quantize_ctx = &p;
    ergo_status s = engine_load(e, dir, &with_bar, err);
    if (s) {
        progress_abort(&p);
        return s;
    }
    const quantize_report *q = &e->quant;
    char lora[128] = "";
    if (e->lora_dir[0])
        snprintf(lora, sizeof lora, ", LoRA merged into %d linears (adapter %.12s)",
                 e->lora_modules, e->lora_hash);
    if (eo->weights == QUANT_NONE)
        progress_end(&p, "%d text layers, %d vision blocks%s", e->m.config.text.n_layers,
                     e->m.config.vision.depth, lora);
    else if (q->from_cache)
        progress_end(&p, "%d tensors mapped from the cache%s", q->n_tensors, lora);
    else
        progress_end(&p, "quantised %d tensors (%.2f GB -> %.2f GB) in %.1f s%s%s", q->n_tensors,
                     (double)q->source_bytes / 1e9, (double)q->quant_bytes / 1e9, q->ms / 1e3,
                     q->cache_written ? ", cache written" : "", lora);
    if (e->lora_note[0]) fprintf(stderr, "ergo %s: note: %s\n", command, e->lora_note);
    cli_engine_warning(command, e);
    return ERGO_OK;
}

ergo_status cli_check_lora(const char *dir, ergo_error *err) {
    char resolved[1024];
    ergo_status s = lora_adapter_resolve(dir, resolved, sizeof resolved, NULL, 0, err);
    if (s) return s;
    char path[1100];
    snprintf(path, sizeof path, "%s/adapter_config.json", resolved);
    json_t *j = json_load_path(path, err);
    if (!j) return err ? err->code : ERGO_E_FORMAT;
    json_decref(j);
    return ERGO_OK;
}

const char cli_lora_help[] =
    "--lora DIR merges a LoRA adapter into the weights at load: PEFT's save_pretrained layout\n"
    "(adapter_config.json + adapter_model.safetensors, either tensor-name layout), or an\n"
    "`ergo train sft --lora-rank R` output directory (its newest checkpoint). W += s * B @ A\n"
    "in f32, rounded once to the stored dtype, before any q8/q4 quantisation (the automatic\n"
    "cache is then ergo-weights.q8-lora-<adapter hash> beside the model). `ergo lora merge`\n"
    "writes the merged model as a checkpoint directory instead.\n";

void cli_decode_progress_begin(cli_decode_progress *d, FILE *out, int max_new) {
    memset(d, 0, sizeof *d);
    d->out = out;
    d->max_new = max_new;
    progress_begin(&d->p, "decode");
    /* text streams to the terminal: no line to redraw under it */
    if (out && isatty(fileno(out))) progress_abort(&d->p);
}

int cli_decode_progress_text(void *ctx, const char *text, size_t len) {
    cli_decode_progress *d = ctx;
    if (d->out) {
        fwrite(text, 1, len, d->out);
        fflush(d->out);
    }
    d->pieces++;
    if (!d->out || !isatty(fileno(d->out)))
        progress_update(&d->p, (double)d->pieces, 0, "pieces");
    return 0;
}

void cli_decode_progress_end(cli_decode_progress *d, ergo_status s, size_t tokens, double ms) {
    if (s) {
        progress_abort(&d->p);
        return;
    }
    /* after streamed text, the summary goes on a line of its own */
    if (d->out && isatty(fileno(d->out)) && !progress_quiet() && isatty(2)) fputc('\n', d->out);
    progress_end(&d->p, "%zu tokens, %.2f tokens/s", tokens, ms > 0 ? tokens / (ms / 1e3) : 0.0);
}

int cli_parse_fixed_tokens(const char *v, int out[3]) {
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

ergo_status cli_check_prompt_fits(const char *dir, chat_message *msgs, int n_msgs,
                                  const image *images, int n_images, const preprocess_config *pc,
                                  ergo_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *root = json_load_path(path, err);
    if (!root) return ERGO_E_IO; /* err says why */
    model_config cfg;
    ergo_status s = model_config_parse(&cfg, root, path, err);
    json_decref(root);
    if (s) return s;
    /* each image's pads: the processor's resize, then merge x merge patches per token */
    const int unit = cfg.vision.patch * cfg.vision.merge;
    int64_t vision_tokens = 0;
    int k = 0;
    for (int m = 0; m < n_msgs; m++)
        for (size_t p = 0; p < msgs[m].n_parts; p++) {
            chat_part *part = (chat_part *)&msgs[m].parts[p];
            if (part->type != CHAT_IMAGE || k >= n_images) continue;
            int h = 0, w = 0;
            if ((s = smart_resize_qwen(images[k].height, images[k].width, unit, pc->min_pixels,
                                       pc->max_pixels, &h, &w, err)))
                return s;
            part->image_tokens = (int32_t)((int64_t)(h / unit) * (w / unit));
            vision_tokens += part->image_tokens;
            k++;
        }
    tokenizer *tok = NULL;
    chat_template ct;
    tok_ids ids = {0};
    s = tokenizer_load(&tok, dir, err);
    if (!s) s = chat_template_load(&ct, dir, err);
    if (!s) s = chat_encode(&ct, tok, msgs, (size_t)n_msgs, 1, &ids, err);
    const int64_t n = (int64_t)ids.n, room = cfg.text.max_position_embeddings;
    tok_ids_free(&ids);
    tokenizer_free(tok);
    if (s || n <= room) return s;
    if (n_images && n - vision_tokens <= room)
        return ergo_fail(err, ERGO_E_LIMIT, "too many images for the context: %d image(s) take %lld "
                         "vision tokens, making a prompt of %lld tokens; the context holds %lld",
                         n_images, (long long)vision_tokens, (long long)n, (long long)room);
    return ergo_fail(err, ERGO_E_LIMIT, "the prompt is %lld tokens (%lld of them for %d image(s)), "
                     "longer than the context of %lld tokens", (long long)n, (long long)vision_tokens,
                     n_images, (long long)room);
}
