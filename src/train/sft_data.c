/*
 * sft_data.c - JSONL conversations to training examples (see sft_data.h).
 */
#include "train/sft_data.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "base/rng.h"
#include "serve/openai.h"

#define SFT_MAX_MESSAGES 65536
#define SFT_MAX_PARTS 4096

void sft_example_free(sft_example *ex) {
    free(ex->ids);
    free(ex->targets);
    free(ex->pos);
    for (int i = 0; i < ex->n_images; i++) free(ex->images[i].pixel_values);
    free(ex->images);
    memset(ex, 0, sizeof *ex);
}

/* ---------------------------------------------------------------- images */

/* The encoded bytes of an image source: a data URL's payload, or a file's bytes.
 * `what` receives a printable name of the source for messages. */
static ergo_status image_source_bytes(const sft_config *cfg, const char *src, size_t n,
                                      const char *base_dir, uint8_t **bytes, size_t *size,
                                      char *what, size_t what_size, ergo_error *err) {
    const size_t max_bytes = cfg->max_image_bytes ? cfg->max_image_bytes : (size_t)64 << 20;
    *bytes = NULL;
    *size = 0;
    snprintf(what, what_size, "data URL");
    if (n == 0) return ergo_fail(err, ERGO_E_FORMAT, "the image source is an empty string");
    if (strlen(src) != n) return ergo_fail(err, ERGO_E_FORMAT, "the image source holds a NUL");
    if (n >= 5 && !strncmp(src, "data:", 5)) {
        /* data:<mime>;base64,<payload>: the MIME is ignored (the decoder sniffs the bytes) */
        const char *comma = memchr(src, ',', n);
        if (!comma) return ergo_fail(err, ERGO_E_FORMAT, "a data URL needs a ',' before its payload");
        const size_t head = (size_t)(comma - src);
        if (head < 12 || memcmp(comma - 7, ";base64", 7))
            return ergo_fail(err, ERGO_E_UNSUPPORTED, "only base64 data URLs are supported");
        if (oai_base64_decode(comma + 1, n - head - 1, max_bytes, bytes, size))
            return ergo_fail(err, ERGO_E_FORMAT,
                             "the data URL's payload is not valid base64 (or is empty or over "
                             "%zu bytes)", max_bytes);
        return ERGO_OK;
    }
    if ((n >= 7 && !strncmp(src, "http://", 7)) || (n >= 8 && !strncmp(src, "https://", 8)))
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "remote (http/https) images are not fetched; use a path or a data URL");
    const char *path = src;
    if (n >= 7 && !strncmp(src, "file://", 7)) path = src + 7;
    if (!path[0]) return ergo_fail(err, ERGO_E_FORMAT, "the file:// URL has no path");
    if (!base_dir)
        return ergo_fail(err, ERGO_E_ARG, "image paths are not allowed here (data URLs only)");
    /* absolute paths as given; relative ones against the data file's directory only */
    char full[PATH_MAX];
    ergo_status st = ERGO_OK;
    if (path[0] != '/') st = path_join(full, sizeof full, base_dir, path, err);
    else if (strlen(path) < sizeof full) memcpy(full, path, strlen(path) + 1);
    else st = ergo_fail(err, ERGO_E_ARG, "image path too long (%zu bytes)", strlen(path));
    if (st != ERGO_OK) return st;
    snprintf(what, what_size, "%s", full);
    char *data;
    st = file_read_all(full, max_bytes, &data, size, err);
    if (st != ERGO_OK) return st;
    *bytes = (uint8_t *)data;
    return ERGO_OK;
}

/* Decodes and preprocesses one image source into *out. */
static ergo_status load_image(const sft_config *cfg, const char *src, size_t n,
                              const char *base_dir, sft_image *out, ergo_error *err) {
    if (!cfg->pp) return ergo_fail(err, ERGO_E_ARG, "images are not enabled (no preprocessor)");
    uint8_t *bytes;
    size_t size;
    char what[PATH_MAX + 16];
    ergo_status st = image_source_bytes(cfg, src, n, base_dir, &bytes, &size, what, sizeof what, err);
    if (st != ERGO_OK) return st;
    image im = {0};
    st = image_decode_memory(&im, bytes, size, what, &cfg->image_limits, err);
    free(bytes);
    if (st != ERGO_OK) return st;
    preprocess_output po = {0};
    st = preprocess_image(cfg->pp, &im, &po, err);
    image_free(&im);
    if (st != ERGO_OK) {
        ergo_error_prefix(err, "%s: ", what);
        return st;
    }
    out->pixel_values = po.pixel_values;
    out->n_patches = po.n_patches;
    out->patch_dim = po.patch_dim;
    out->grid = (mrope_grid){po.grid_t, po.grid_h, po.grid_w};
    return ERGO_OK;
}

/* ---------------------------------------------------------------- one line */

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } sft_role;

/* The ids of the assistant header and of the closing tail, for finding the loss span. */
typedef struct span_marks {
    tok_ids header; /* "<|im_start|>assistant\n" */
    tok_ids tail;   /* "<|im_end|>\n" */
} span_marks;

/* Marks the predicted tokens of the assistant message whose ids are ids[s..e): from
 * the first token holding a content character through the closing <|im_end|>. */
static ergo_status mark_assistant(const span_marks *mk, const int32_t *ids, size_t s, size_t e,
                                  int32_t image_token_id, uint8_t *loss, ergo_error *err) {
    const size_t h = mk->header.n, t = mk->tail.n;
    /* the first h-1 header tokens (<|im_start|>, "assistant") are never merged with
     * the content; the header's "\n" may be (a content starting with a newline) */
    size_t j = s, c = 0;
    int found = 0;
    for (; h >= 2 && j + h <= e; j++)
        if (!memcmp(ids + j, mk->header.v, (h - 1) * sizeof *ids)) {
            found = 1;
            break;
        }
    if (!found)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "cannot find the assistant header's tokens in the message's ids");
    c = ids[j + h - 1] == mk->header.v[h - 1] ? j + h : j + h - 1;
    if (t < 1 || e < s + t || memcmp(ids + e - t, mk->tail.v, t * sizeof *ids) || c > e - t)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "the assistant message's ids do not end with <|im_end|>\\n");
    for (size_t i = c; i <= e - t; i++) loss[i] = ids[i] != image_token_id;
    return ERGO_OK;
}

/* What the messages of one line share. */
typedef struct line_ctx {
    const sft_config *cfg;
    const char *base_dir;
    int max_images;
    size_t max_tokens;
    json_t *images;     /* the line's "images" list (TRL's layout), or NULL */
    size_t images_used; /* entries of it taken by {"type": "image"} parts so far */
} line_ctx;

/* The parts of one message's content; texts point into the JSON, images are loaded
 * into ex->images as they come. */
static ergo_status parse_content(line_ctx *lc, json_t *content, sft_role role, int mi,
                                 size_t n_ids, chat_message *m, chat_part **parts,
                                 sft_example *ex, ergo_error *err) {
    const sft_config *cfg = lc->cfg;
    if (json_is_string(content)) {
        m->content = json_string_value(content);
        m->content_len = json_string_length(content);
        return ERGO_OK;
    }
    if (!json_is_array(content))
        return ergo_fail(err, ERGO_E_FORMAT,
                         "messages[%d].content must be a string or a list of parts (got %s)", mi,
                         json_is_null(content) ? "null" : json_is_object(content) ? "an object"
                                                                                  : "a scalar");
    const size_t n = json_array_size(content);
    if (n > SFT_MAX_PARTS)
        return ergo_fail(err, ERGO_E_LIMIT, "messages[%d].content has too many parts (%zu)", mi, n);
    if (n == 0) {
        m->content = "";
        return ERGO_OK;
    }
    if (!(*parts = calloc(n, sizeof **parts))) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    m->parts = *parts;
    m->n_parts = n;
    int64_t pending = 0; /* image tokens of this message so far */
    for (size_t k = 0; k < n; k++) {
        json_t *part = json_array_get(content, k);
        json_t *type = json_object_get(part, "type");
        chat_part *p = &(*parts)[k];
        if (!json_is_object(part) || !json_is_string(type))
            return ergo_fail(err, ERGO_E_FORMAT,
                             "messages[%d].content[%zu] must be an object with a string \"type\"",
                             mi, k);
        const char *ty = json_string_value(type);
        if (!strcmp(ty, "text")) {
            json_t *tx = json_object_get(part, "text");
            if (!json_is_string(tx))
                return ergo_fail(err, ERGO_E_FORMAT, "messages[%d].content[%zu].text must be a string",
                                 mi, k);
            p->type = CHAT_TEXT;
            p->text = json_string_value(tx);
            p->text_len = json_string_length(tx);
            continue;
        }
        json_t *src;
        if (!strcmp(ty, "image")) {
            src = json_object_get(part, "image");
            /* TRL's layout: a bare {"type": "image"} takes the next of the line's "images" */
            if (!src && lc->images) {
                if (lc->images_used >= json_array_size(lc->images))
                    return ergo_fail(err, ERGO_E_FORMAT,
                                     "messages[%d].content[%zu]: more image parts than the %zu "
                                     "entries of \"images\"", mi, k, json_array_size(lc->images));
                src = json_array_get(lc->images, lc->images_used++);
                if (!json_is_string(src))
                    return ergo_fail(err, ERGO_E_FORMAT,
                                     "images[%zu] must be a string (a path or a data URL)",
                                     lc->images_used - 1);
            }
            if (!json_is_string(src))
                return ergo_fail(err, ERGO_E_FORMAT,
                                 "messages[%d].content[%zu].image must be a string (a path or a "
                                 "data URL)", mi, k);
        } else if (!strcmp(ty, "image_url")) {
            json_t *iu = json_object_get(part, "image_url");
            src = json_is_object(iu) ? json_object_get(iu, "url") : iu;
            if (!json_is_string(src))
                return ergo_fail(err, ERGO_E_FORMAT,
                                 "messages[%d].content[%zu].image_url.url must be a string", mi, k);
        } else {
            return ergo_fail(err, ERGO_E_FORMAT,
                             "messages[%d].content[%zu]: unknown part type \"%.64s\" (text, image "
                             "or image_url)", mi, k, ty);
        }
        if (role == ROLE_ASSISTANT)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "messages[%d].content[%zu]: images are only supported in system and "
                             "user messages", mi, k);
        if (ex->n_images >= lc->max_images)
            return ergo_fail(err, ERGO_E_LIMIT, "messages[%d].content[%zu]: more than %d images",
                             mi, k, lc->max_images);
        sft_image *im = &ex->images[ex->n_images];
        ergo_status st = load_image(cfg, json_string_value(src), json_string_length(src),
                                    lc->base_dir, im, err);
        if (st != ERGO_OK) {
            ergo_error_prefix(err, "messages[%d].content[%zu]: ", mi, k);
            return st;
        }
        ex->n_images++;
        const int64_t tokens = mrope_grid_tokens(&im->grid, cfg->mrope.merge);
        st = mrope_check_grid(&im->grid, cfg->mrope.merge, "image grid", err);
        if (st == ERGO_OK && (tokens < 1 || tokens * cfg->mrope.merge * cfg->mrope.merge !=
                                                im->n_patches))
            st = ergo_fail(err, ERGO_E_SHAPE, "image grid (%d, %d, %d) does not match %lld patches",
                           (int)im->grid.t, (int)im->grid.h, (int)im->grid.w,
                           (long long)im->n_patches);
        if (st != ERGO_OK) {
            ergo_error_prefix(err, "messages[%d].content[%zu]: ", mi, k);
            return st;
        }
        pending += tokens;
        /* fail before decoding the next image when the pads alone are too many */
        if ((int64_t)n_ids + pending > (int64_t)lc->max_tokens)
            return ergo_fail(err, ERGO_E_LIMIT,
                             "the conversation is longer than max_tokens (%zu): %lld tokens with "
                             "the image of messages[%d].content[%zu]",
                             lc->max_tokens, (long long)((int64_t)n_ids + pending), mi, k);
        p->type = CHAT_IMAGE;
        p->image_tokens = (int32_t)tokens;
    }
    return ERGO_OK;
}

static ergo_status parse_line(const sft_config *cfg, json_t *root, const char *base_dir,
                              sft_example *ex, tok_ids *ids, uint8_t **loss, ergo_error *err) {
    if (!json_is_object(root)) return ergo_fail(err, ERGO_E_FORMAT, "the line is not a JSON object");
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs) return ergo_fail(err, ERGO_E_FORMAT, "no \"messages\" key");
    if (!json_is_array(msgs)) return ergo_fail(err, ERGO_E_FORMAT, "\"messages\" is not a list");
    const size_t n_msgs = json_array_size(msgs);
    if (n_msgs == 0) return ergo_fail(err, ERGO_E_FORMAT, "\"messages\" is empty");
    if (n_msgs > SFT_MAX_MESSAGES)
        return ergo_fail(err, ERGO_E_LIMIT, "too many messages (%zu)", n_msgs);
    const int max_images = cfg->max_images > 0 ? cfg->max_images : 64;
    const size_t max_tokens = cfg->max_tokens > 0 && cfg->max_tokens < SFT_MAX_TOKENS_CEILING
                                  ? (size_t)cfg->max_tokens
                                  : (size_t)SFT_MAX_TOKENS_CEILING;
    if (!(ex->images = calloc((size_t)max_images, sizeof *ex->images)))
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    json_t *images = json_object_get(root, "images");
    if (images && !json_is_array(images) && !json_is_null(images))
        return ergo_fail(err, ERGO_E_FORMAT, "\"images\" is not a list");
    line_ctx lc = {cfg, base_dir, max_images, max_tokens, json_is_array(images) ? images : NULL, 0};

    span_marks mk = {{0}, {0}};
    ergo_status st = chat_encode_generation_prompt(cfg->tok, &mk.header, err);
    if (st == ERGO_OK) st = tokenizer_encode(cfg->tok, "<|im_end|>\n", 11, &mk.tail, err);
    if (st == ERGO_OK && (mk.tail.n < 1 || mk.tail.v[0] != tokenizer_token_id(cfg->tok, "<|im_end|>", 10)))
        st = ergo_fail(err, ERGO_E_UNSUPPORTED, "the tokenizer has no <|im_end|> token");

    chat_state cs = {0};
    size_t loss_cap = 0;
    int n_assistant = 0;
    for (size_t k = 0; k < n_msgs && st == ERGO_OK; k++) {
        const int mi = (int)k;
        json_t *msg = json_array_get(msgs, k);
        if (!json_is_object(msg)) {
            st = ergo_fail(err, ERGO_E_FORMAT, "messages[%d] is not an object", mi);
            break;
        }
        json_t *role = json_object_get(msg, "role");
        if (!json_is_string(role)) {
            st = ergo_fail(err, ERGO_E_FORMAT, "messages[%d].role %s", mi,
                           role ? "is not a string" : "is missing");
            break;
        }
        const char *rs = json_string_value(role);
        sft_role r;
        if (!strcmp(rs, "system")) r = ROLE_SYSTEM;
        else if (!strcmp(rs, "user")) r = ROLE_USER;
        else if (!strcmp(rs, "assistant")) r = ROLE_ASSISTANT;
        else {
            st = ergo_fail(err, ERGO_E_FORMAT,
                           "messages[%d].role: unknown role \"%.64s\" (system, user or assistant)",
                           mi, rs);
            break;
        }
        json_t *content = json_object_get(msg, "content");
        if (!content) {
            st = ergo_fail(err, ERGO_E_FORMAT, "messages[%d].content is missing", mi);
            break;
        }
        chat_message m = {rs, NULL, 0, NULL, 0};
        chat_part *parts = NULL;
        const size_t s = ids->n;
        st = parse_content(&lc, content, r, mi, s, &m, &parts, ex, err);
        if (st == ERGO_OK) st = chat_encode_message(cfg->ct, cfg->tok, &cs, &m, ids, err);
        free(parts);
        if (st != ERGO_OK) break;
        if (ids->n > max_tokens) {
            st = ergo_fail(err, ERGO_E_LIMIT,
                           "the conversation is longer than max_tokens (%zu): %zu tokens after "
                           "messages[%d]", max_tokens, ids->n, mi);
            break;
        }
        if (ids->n > loss_cap) {
            size_t cap = loss_cap ? loss_cap : 256;
            while (cap < ids->n) cap *= 2;
            uint8_t *nl = realloc(*loss, cap);
            if (!nl) {
                st = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
                break;
            }
            memset(nl + loss_cap, 0, cap - loss_cap);
            *loss = nl;
            loss_cap = cap;
        }
        if (r == ROLE_ASSISTANT) {
            n_assistant++;
            st = mark_assistant(&mk, ids->v, s, ids->n, cfg->mrope.image_token_id, *loss, err);
            if (st != ERGO_OK) ergo_error_prefix(err, "messages[%d]: ", mi);
        }
    }
    tok_ids_free(&mk.header);
    tok_ids_free(&mk.tail);
    if (st == ERGO_OK && lc.images && lc.images_used != json_array_size(lc.images))
        st = ergo_fail(err, ERGO_E_FORMAT,
                       "\"images\" has %zu entries but the messages have %zu image parts",
                       json_array_size(lc.images), lc.images_used);
    if (st == ERGO_OK && n_assistant == 0)
        st = ergo_fail(err, ERGO_E_FORMAT, "no assistant message (no token to learn)");
    return st;
}

ergo_status sft_parse_line(const sft_config *cfg, const char *line, size_t len,
                           const char *base_dir, const char *where, sft_example *out,
                           ergo_error *err) {
    memset(out, 0, sizeof *out);
    if (!where) where = "line";
    if (!cfg || !cfg->ct || !cfg->tok)
        return ergo_fail(err, ERGO_E_ARG, "%s: sft_parse_line needs a template and a tokenizer",
                         where);
    if (cfg->pp && cfg->pp->merge_size != cfg->mrope.merge)
        return ergo_fail(err, ERGO_E_ARG,
                         "%s: the preprocessor's merge_size %d differs from the model's %d", where,
                         cfg->pp->merge_size, cfg->mrope.merge);
    ergo_error je = {0};
    json_t *root = json_load_bytes(line, len, "line", &je);
    if (!root) return ergo_fail(err, ERGO_E_FORMAT, "%s: malformed JSON (%s)", where, je.msg);
    tok_ids ids = {0};
    uint8_t *loss = NULL;
    ergo_status st = parse_line(cfg, root, base_dir, out, &ids, &loss, err);
    json_decref(root);
    const int n = (int)ids.n;
    if (st == ERGO_OK) {
        out->ids = malloc(ids.n * sizeof *out->ids);
        out->targets = malloc(ids.n * sizeof *out->targets);
        out->pos = malloc(3 * ids.n * sizeof *out->pos);
        if (!out->ids || !out->targets || !out->pos) st = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    }
    if (st == ERGO_OK) {
        memcpy(out->ids, ids.v, ids.n * sizeof *out->ids);
        out->n = n;
        for (int i = 0; i < n; i++) {
            out->targets[i] = i + 1 < n && loss[i + 1] ? ids.v[i + 1] : -1;
            out->n_loss_tokens += out->targets[i] >= 0;
        }
        if (out->n_loss_tokens == 0)
            st = ergo_fail(err, ERGO_E_FORMAT, "no token carries loss");
    }
    if (st == ERGO_OK) {
        mrope_grid *grids = malloc((size_t)(out->n_images ? out->n_images : 1) * sizeof *grids);
        if (!grids) st = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        for (int i = 0; grids && i < out->n_images; i++) grids[i] = out->images[i].grid;
        int32_t next = 0;
        if (st == ERGO_OK)
            st = mrope_positions(&cfg->mrope, out->ids, n, -1, grids, out->n_images, &next,
                                 out->pos, n, err);
        free(grids);
    }
    tok_ids_free(&ids);
    free(loss);
    if (st != ERGO_OK) {
        ergo_error_prefix(err, "%s: ", where);
        sft_example_free(out);
    }
    return st;
}

/* ---------------------------------------------------------------- dataset */

/* Fisher-Yates under one stream (see sft_dataset_epoch_order). */
static void shuffle(int64_t *a, int64_t n, uint64_t stream) {
    for (int64_t i = n - 1, k = 0; i >= 1; i--, k++) {
        const int64_t j = (int64_t)(rng_u64(stream, (uint64_t)k) % (uint64_t)(i + 1));
        const int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

void sft_dataset_close(sft_dataset *ds) {
    free(ds->path);
    free(ds->dir);
    file_unmap(&ds->map);
    free(ds->offset);
    free(ds->length);
    free(ds->line_no);
    free(ds->train);
    free(ds->heldout);
    memset(ds, 0, sizeof *ds);
}

int64_t sft_heldout_count(int64_t n_records, double fraction) {
    if (n_records < 2 || !(fraction > 0)) return 0;
    double k = fraction * (double)n_records + 0.5;
    int64_t h = k >= (double)n_records ? n_records - 1 : (int64_t)k;
    if (h < 1) h = 1;
    if (h > n_records - 1) h = n_records - 1;
    return h;
}

static int is_blank(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\f' && p[i] != '\v') return 0;
    return 1;
}

ergo_status sft_dataset_open(sft_dataset *ds, const char *path, int64_t n_heldout,
                             uint64_t split_seed, ergo_error *err) {
    memset(ds, 0, sizeof *ds);
    ergo_status st = file_map(&ds->map, path, err);
    if (st != ERGO_OK) return st;
    ds->path = strdup(path);
    const char *slash = strrchr(path, '/');
    ds->dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!ds->path || !ds->dir) {
        sft_dataset_close(ds);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    }
    const uint8_t *d = ds->map.data;
    const size_t size = ds->map.size;
    int64_t cap = 0, line = 0;
    for (size_t at = 0; at < size;) {
        const uint8_t *nl = memchr(d + at, '\n', size - at);
        const size_t end = nl ? (size_t)(nl - d) : size;
        size_t len = end - at;
        line++;
        if (len && d[at + len - 1] == '\r') len--;
        if (!is_blank(d + at, len)) {
            if (ds->n_records == cap) {
                cap = cap ? cap * 2 : 1024;
                int64_t *o = realloc(ds->offset, (size_t)cap * sizeof *o);
                if (o) ds->offset = o;
                int64_t *l = realloc(ds->length, (size_t)cap * sizeof *l);
                if (l) ds->length = l;
                int64_t *ln = realloc(ds->line_no, (size_t)cap * sizeof *ln);
                if (ln) ds->line_no = ln;
                if (!o || !l || !ln) {
                    sft_dataset_close(ds);
                    return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory indexing lines", path);
                }
            }
            ds->offset[ds->n_records] = (int64_t)at;
            ds->length[ds->n_records] = (int64_t)len;
            ds->line_no[ds->n_records] = line;
            ds->n_records++;
        }
        at = end + 1;
    }
    const int64_t n = ds->n_records;
    if (n == 0) {
        sft_dataset_close(ds);
        return ergo_fail(err, ERGO_E_FORMAT, "%s: no conversations (the file is empty or blank)",
                         path);
    }
    if (n_heldout < 0 || n_heldout > n - 1) {
        sft_dataset_close(ds);
        return ergo_fail(err, ERGO_E_ARG,
                         "%s: a held-out split of %lld of %lld conversations leaves none to train on",
                         path, (long long)n_heldout, (long long)n);
    }
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    uint8_t *held = calloc((size_t)n, 1);
    ds->train = malloc((size_t)(n - n_heldout) * sizeof *ds->train);
    ds->heldout = malloc((size_t)(n_heldout ? n_heldout : 1) * sizeof *ds->heldout);
    if (!perm || !held || !ds->train || !ds->heldout) {
        free(perm);
        free(held);
        sft_dataset_close(ds);
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);
    }
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    shuffle(perm, n, rng_stream_seed(split_seed, "sft.heldout"));
    for (int64_t i = 0; i < n_heldout; i++) held[perm[i]] = 1;
    for (int64_t i = 0; i < n; i++) {
        if (held[i]) ds->heldout[ds->n_heldout++] = i;
        else ds->train[ds->n_train++] = i;
    }
    free(perm);
    free(held);
    return ERGO_OK;
}

const char *sft_dataset_line(const sft_dataset *ds, int64_t r, size_t *len, int64_t *line_no) {
    ERGO_ASSERT(r >= 0 && r < ds->n_records);
    *len = (size_t)ds->length[r];
    if (line_no) *line_no = ds->line_no[r];
    return (const char *)ds->map.data + ds->offset[r];
}

ergo_status sft_dataset_read(const sft_dataset *ds, const sft_config *cfg, int64_t r,
                             sft_example *out, ergo_error *err) {
    if (r < 0 || r >= ds->n_records) {
        memset(out, 0, sizeof *out);
        return ergo_fail(err, ERGO_E_ARG, "%s: record %lld out of range (%lld records)", ds->path,
                         (long long)r, (long long)ds->n_records);
    }
    size_t len;
    int64_t line_no;
    const char *line = sft_dataset_line(ds, r, &len, &line_no);
    char where[PATH_MAX + 32];
    snprintf(where, sizeof where, "%s:%lld", ds->path, (long long)line_no);
    return sft_parse_line(cfg, line, len, ds->dir, where, out, err);
}

void sft_dataset_epoch_order(const sft_dataset *ds, uint64_t seed, int64_t epoch,
                             int64_t *order) {
    memcpy(order, ds->train, (size_t)ds->n_train * sizeof *order);
    shuffle(order, ds->n_train, rng_u64(rng_stream_seed(seed, "sft.epoch"), (uint64_t)epoch));
}

ergo_status sft_cursor_init(sft_cursor *c, const sft_dataset *ds, uint64_t seed,
                            int64_t position, ergo_error *err) {
    memset(c, 0, sizeof *c);
    if (position < 0)
        return ergo_fail(err, ERGO_E_ARG, "%s: negative data position %lld", ds->path,
                         (long long)position);
    if (ds->n_train < 1) return ergo_fail(err, ERGO_E_ARG, "%s: no training records", ds->path);
    if (!(c->order = malloc((size_t)ds->n_train * sizeof *c->order)))
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    c->seed = seed;
    c->position = position;
    c->epoch = position / ds->n_train;
    sft_dataset_epoch_order(ds, seed, c->epoch, c->order);
    return ERGO_OK;
}

int64_t sft_cursor_next(sft_cursor *c, const sft_dataset *ds) {
    const int64_t epoch = c->position / ds->n_train;
    if (epoch != c->epoch) {
        c->epoch = epoch;
        sft_dataset_epoch_order(ds, c->seed, epoch, c->order);
    }
    return c->order[c->position++ % ds->n_train];
}

void sft_cursor_free(sft_cursor *c) {
    free(c->order);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------- fuzzing */

/* GPT-2's bytes_to_unicode: byte b's character in a byte-level vocabulary. */
static int byte_char(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + n;
}

static void utf8_put(char *s, int cp) {
    if (cp < 0x80) {
        s[0] = (char)cp;
        s[1] = 0;
    } else {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
        s[2] = 0;
    }
}

/* A byte-level BPE over all 256 bytes with a few merges (one joins two newlines, to
 * exercise a content that starts with one), Qwen2's pre-tokenizer, and the template's
 * added tokens after the vocabulary (ids 261..266). */
static tokenizer *fuzz_tokenizer(void) {
    static const char *const added[] = {"<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                        "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"};
    static const char *const merges[][2] = {{"\xc4\x8a", "\xc4\x8a"}, {"a", "s"}, {"as", "s"},
                                            {"\xc4\xa0", "t"}, {"h", "i"}};
    json_t *vocab = json_object(), *jm = json_array(), *ja = json_array();
    char ch[4];
    for (int b = 0; b < 256; b++) {
        utf8_put(ch, byte_char(b));
        json_object_set_new(vocab, ch, json_integer(b));
    }
    for (int i = 0; i < (int)(sizeof merges / sizeof *merges); i++) {
        char joined[16];
        snprintf(joined, sizeof joined, "%s%s", merges[i][0], merges[i][1]);
        json_object_set_new(vocab, joined, json_integer(256 + i));
        json_array_append_new(jm, json_pack("[s,s]", merges[i][0], merges[i][1]));
    }
    const int n_merges = (int)(sizeof merges / sizeof *merges);
    for (int i = 0; i < 6; i++)
        json_array_append_new(ja, json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", 256 + n_merges + i,
                                            "content", added[i], "single_word", 0, "lstrip", 0,
                                            "rstrip", 0, "normalized", 0, "special", 1));
    json_t *root = json_pack(
        "{s:s,s:o,s:{s:s},s:{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b,s:b}]},s:n,"
        "s:{s:s,s:b,s:b,s:b},s:{s:s,s:o,s:o}}",
        "version", "1.0", "added_tokens", ja, "normalizer", "type", "NFC", "pre_tokenizer",
        "type", "Sequence", "pretokenizers", "type", "Split", "pattern", "Regex",
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
        "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        "behavior", "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space", 0,
        "trim_offsets", 0, "use_regex", 0, "post_processor", "decoder", "type", "ByteLevel",
        "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0, "model", "type", "BPE", "vocab",
        vocab, "merges", jm);
    ERGO_ASSERT(root != NULL);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    ERGO_ASSERT(text != NULL);
    tokenizer *tok = NULL;
    ergo_error err = {0};
    if (tokenizer_load_bytes(&tok, text, strlen(text), "sft fuzz tokenizer", &err) != ERGO_OK) {
        fprintf(stderr, "sft_fuzz_line: %s\n", err.msg);
        ERGO_ASSERT(0);
    }
    free(text);
    return tok;
}

int sft_fuzz_line(const uint8_t *data, size_t size) {
    static tokenizer *tok; /* built once, kept for the process (the fuzzer is one thread) */
    if (!tok) tok = fuzz_tokenizer();
    static const chat_template ct = {0, 0};
    preprocess_config pp;
    preprocess_config_default(&pp);
    pp.max_pixels = 28 * 28 * 16; /* at most 64 patches per image keeps runs fast */
    const mrope_ids mr = {tokenizer_token_id(tok, "<|image_pad|>", 13),
                          tokenizer_token_id(tok, "<|video_pad|>", 13),
                          tokenizer_token_id(tok, "<|vision_start|>", 16), 2};
    ERGO_ASSERT(mr.image_token_id > 0 && mr.video_token_id > 0 && mr.vision_start_token_id > 0);
    sft_config cfg = {&ct, tok, &pp, mr, 512, 4, (size_t)1 << 20, {(uint64_t)1 << 22, 16}};
    sft_example ex;
    ergo_error err = {0};
    if (sft_parse_line(&cfg, (const char *)data, size, NULL, "fuzz:1", &ex, &err) != ERGO_OK) {
        ERGO_ASSERT(err.msg[0] != 0 && ex.ids == NULL && ex.n == 0);
        ERGO_ASSERT(!strncmp(err.msg, "fuzz:1: ", 8));
        return 0;
    }
    /* invariants: lengths, targets are next ids, pads match the images */
    ERGO_ASSERT(ex.n >= 1 && ex.n <= cfg.max_tokens && ex.n_loss_tokens >= 1);
    int loss = 0, pads = 0;
    int64_t want_pads = 0;
    for (int i = 0; i < ex.n; i++) {
        ERGO_ASSERT(ex.targets[i] == -1 || (i + 1 < ex.n && ex.targets[i] == ex.ids[i + 1]));
        ERGO_ASSERT(ex.targets[i] != mr.image_token_id);
        loss += ex.targets[i] >= 0;
        pads += ex.ids[i] == mr.image_token_id;
        for (int a = 0; a < 3; a++) ERGO_ASSERT(ex.pos[a * ex.n + i] >= 0);
    }
    for (int k = 0; k < ex.n_images; k++) {
        ERGO_ASSERT(ex.images[k].pixel_values && ex.images[k].patch_dim == 1176);
        want_pads += mrope_grid_tokens(&ex.images[k].grid, 2);
    }
    ERGO_ASSERT(loss == ex.n_loss_tokens && pads == want_pads);
    sft_example_free(&ex);
    return 1;
}
