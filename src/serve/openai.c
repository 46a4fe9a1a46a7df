/*
 * openai.c - request JSON to a checked oai_request, and the error envelope.
 */
#include "serve/openai.h"

#include <jansson.h>
#include <limits.h>
#include <nettle/base64.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/status.h"

int oai_fail(oai_error *e, int status, const char *type, const char *param, const char *code,
             const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return 1;
}

char *oai_error_json(const oai_error *e) {
    json_t *in = json_pack("{s:s, s:s, s:o, s:o}", "message", e->message, "type",
                           e->type ? e->type : "invalid_request_error", "param",
                           e->param[0] ? json_string(e->param) : json_null(), "code",
                           e->code ? json_string(e->code) : json_null());
    json_t *root = in ? json_pack("{s:o}", "error", in) : NULL;
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

void oai_request_free(oai_request *r) {
    for (int i = 0; i < r->n_msgs; i++) {
        oai_message *m = &r->msgs[i];
        free(m->content);
        for (int k = 0; k < m->n_parts; k++) {
            free(m->parts[k].text);
            free(m->parts[k].image);
        }
        free(m->parts);
    }
    free(r->msgs);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    memset(r, 0, sizeof *r);
}

int oai_base64_decode(const char *s, size_t n, size_t max_out, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (n == 0 || BASE64_DECODE_LENGTH(n) > max_out + 3) return 1;
    uint8_t *buf = malloc(BASE64_DECODE_LENGTH(n) + 1);
    if (!buf) return 1;
    struct base64_decode_ctx ctx;
    base64_decode_init(&ctx);
    size_t got = BASE64_DECODE_LENGTH(n);
    /* nettle skips whitespace; strict clients never send it, so refuse it here */
    for (size_t i = 0; i < n; i++)
        if (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t') {
            free(buf);
            return 1;
        }
    if (!base64_decode_update(&ctx, &got, buf, n, s) || !base64_decode_final(&ctx) ||
        got == 0 || got > max_out) {
        free(buf);
        return 1;
    }
    *out = buf;
    *out_len = got;
    return 0;
}

/* A string field's text copied (NUL-terminated, embedded NULs kept in len). */
static char *dup_json_string(const json_t *v, size_t *len) {
    *len = json_string_length(v);
    char *s = malloc(*len + 1);
    if (s) {
        memcpy(s, json_string_value(v), *len);
        s[*len] = 0;
    }
    return s;
}

static int image_from_url(const char *url, size_t n, const oai_limits *lim, const char *param,
                          oai_part *p, oai_error *e) {
    const size_t max_bytes = lim->max_image_bytes ? lim->max_image_bytes : (size_t)256 << 20;
    if (n >= 5 && !strncmp(url, "data:", 5)) {
        /* data:<mime>;base64,<payload>: the MIME is ignored (the bytes are sniffed) */
        const char *comma = memchr(url, ',', n);
        if (!comma)
            return oai_fail(e, 400, "invalid_request_error", param, NULL,
                            "%s: a data: URL needs a ',' before its payload", param);
        const size_t head = (size_t)(comma - url);
        if (head < 12 || memcmp(comma - 7, ";base64", 7))
            return oai_fail(e, 400, "invalid_request_error", param, NULL,
                            "%s: only base64 data: URLs are supported", param);
        if (oai_base64_decode(comma + 1, n - head - 1, max_bytes, &p->image, &p->image_len))
            return oai_fail(e, 400, "invalid_request_error", param, NULL,
                            "%s: the data: URL's payload is not valid base64 (or is empty or "
                            "over %zu bytes)", param, max_bytes);
        return 0;
    }
    if (n >= 7 && !strncmp(url, "file://", 7)) {
        if (!lim->local_media)
            return oai_fail(e, 400, "invalid_request_error", param, NULL,
                            "%s: file:// image URLs are refused unless the server is started "
                            "with --allowed-local-media-path", param);
        char *path = strndup(url + 7, n - 7), real[PATH_MAX], root[PATH_MAX];
        int ok = path && strlen(path) == n - 7 && realpath(path, real) &&
                 realpath(lim->local_media, root);
        const size_t rl = ok ? strlen(root) : 0;
        ok = ok && !strncmp(real, root, rl) && (real[rl] == '/' || real[rl] == 0);
        free(path);
        if (!ok)
            return oai_fail(e, 400, "invalid_request_error", param, NULL,
                            "%s: the file:// path is missing or outside the allowed media "
                            "directory", param);
        ergo_error err = {0};
        char *bytes;
        size_t size;
        if (file_read_all(real, max_bytes, &bytes, &size, &err))
            return oai_fail(e, 400, "invalid_request_error", param, NULL,
                            "%s: the file:// image cannot be read", param);
        p->image = (uint8_t *)bytes;
        p->image_len = size;
        return 0;
    }
    if ((n >= 7 && !strncmp(url, "http://", 7)) || (n >= 8 && !strncmp(url, "https://", 8)))
        return oai_fail(e, 400, "invalid_request_error", param, NULL,
                        lim->allow_remote
                            ? "%s: remote (http/https) image URLs are not implemented by this "
                              "server; send the image as a data: URL"
                            : "%s: remote (http/https) image URLs are refused; send the image "
                              "as a data: URL",
                        param);
    return oai_fail(e, 400, "invalid_request_error", param, NULL,
                    "%s: unsupported image URL scheme (use a data: URL)", param);
}

static int parse_content(json_t *c, int mi, const oai_limits *lim, oai_request *r,
                         oai_message *m, oai_error *e) {
    char param[96];
    snprintf(param, sizeof param, "messages[%d].content", mi);
    if (json_is_string(c)) {
        if (!(m->content = dup_json_string(c, &m->content_len)))
            return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
        return 0;
    }
    if (!json_is_array(c))
        return oai_fail(e, 400, "invalid_request_error", param, NULL,
                        "%s must be a string or a list of content parts", param);
    const size_t n = json_array_size(c);
    if (n > 4096)
        return oai_fail(e, 400, "invalid_request_error", param, NULL,
                        "%s has too many parts (%zu)", param, n);
    if (n && !(m->parts = calloc(n, sizeof *m->parts)))
        return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
    const int max_images = lim->max_images > 0 ? lim->max_images : 16;
    for (size_t k = 0; k < n; k++) {
        json_t *part = json_array_get(c, k);
        char pp[96];
        snprintf(pp, sizeof pp, "messages[%d].content[%zu]", mi, k);
        json_t *type = json_object_get(part, "type");
        if (!json_is_object(part) || !json_is_string(type))
            return oai_fail(e, 400, "invalid_request_error", pp, NULL,
                            "%s must be an object with a string \"type\"", pp);
        oai_part *p = &m->parts[m->n_parts++];
        const char *t = json_string_value(type);
        if (!strcmp(t, "text")) {
            json_t *tx = json_object_get(part, "text");
            if (!json_is_string(tx))
                return oai_fail(e, 400, "invalid_request_error", pp, NULL,
                                "%s.text must be a string", pp);
            if (!(p->text = dup_json_string(tx, &p->text_len)))
                return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
        } else if (!strcmp(t, "image_url")) {
            json_t *iu = json_object_get(part, "image_url");
            json_t *url = json_is_object(iu) ? json_object_get(iu, "url") : iu;
            char up[112];
            snprintf(up, sizeof up, "%s.image_url.url", pp);
            if (!json_is_string(url))
                return oai_fail(e, 400, "invalid_request_error", up, NULL,
                                "%s must be a string", up);
            if (strcmp(m->role, "user"))
                return oai_fail(e, 400, "invalid_request_error", pp, NULL,
                                "%s: images are only supported in user messages", pp);
            if (++r->n_images > max_images)
                return oai_fail(e, 400, "invalid_request_error", pp, NULL,
                                "too many images: at most %d per request", max_images);
            p->is_image = 1;
            if (image_from_url(json_string_value(url), json_string_length(url), lim, up, p, e))
                return 1;
        } else {
            return oai_fail(e, 400, "invalid_request_error", pp, NULL,
                            "%s: content part type is not supported (text and image_url are)",
                            pp);
        }
    }
    return 0;
}

/* A numeric field: absent/null (0), a number in [lo, hi] (1), or an error (-1). */
static int get_number(json_t *root, const char *key, double lo, double hi, double *out,
                      oai_error *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) {
        oai_fail(e, 400, "invalid_request_error", key, NULL, "%s must be a number", key);
        return -1;
    }
    const double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) {
        oai_fail(e, 400, "invalid_request_error", key, NULL, "%s must be in [%g, %g]", key, lo,
                 hi);
        return -1;
    }
    *out = d;
    return 1;
}

static int get_int(json_t *root, const char *key, long long lo, long long hi, long long *out,
                   oai_error *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) {
        oai_fail(e, 400, "invalid_request_error", key, NULL, "%s must be an integer", key);
        return -1;
    }
    const long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        oai_fail(e, 400, "invalid_request_error", key, NULL, "%s must be in [%lld, %lld]", key,
                 lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int parse_fields(json_t *root, const oai_limits *lim, oai_request *r, oai_error *e) {
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model) || json_string_length(model) >= sizeof r->model)
            return oai_fail(e, 400, "invalid_request_error", "model", NULL,
                            "model must be a string of under %zu bytes", sizeof r->model);
        snprintf(r->model, sizeof r->model, "%s", json_string_value(model));
    }
    /* features ergo does not have, named as such rather than ignored */
    static const char *const unsupported[] = {"tools", "tool_choice", "functions",
                                              "function_call", "logit_bias", "audio",
                                              "prediction", "suffix"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
        json_t *v = json_object_get(root, unsupported[i]);
        if (v && !json_is_null(v))
            return oai_fail(e, 400, "invalid_request_error", unsupported[i], NULL,
                            "%s is not supported by this server", unsupported[i]);
    }
    json_t *lp = json_object_get(root, "logprobs");
    if (lp && !json_is_null(lp) && !json_is_false(lp))
        return oai_fail(e, 400, "invalid_request_error", "logprobs", NULL,
                        "logprobs is not supported by this server");
    json_t *tlp = json_object_get(root, "top_logprobs");
    if (tlp && !json_is_null(tlp) && !(json_is_integer(tlp) && json_integer_value(tlp) == 0))
        return oai_fail(e, 400, "invalid_request_error", "top_logprobs", NULL,
                        "top_logprobs is not supported by this server");
    json_t *rf = json_object_get(root, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *t = json_object_get(rf, "type");
        if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
            return oai_fail(e, 400, "invalid_request_error", "response_format", NULL,
                            "response_format other than {\"type\": \"text\"} is not supported");
    }
    long long n = 1;
    if (get_int(root, "n", 1, 1 << 20, &n, e) < 0) return 1;
    if (n != 1)
        return oai_fail(e, 400, "invalid_request_error", "n", NULL,
                        "n must be 1 (several choices are not supported)");
    long long mt = -1, mct = -1;
    if (get_int(root, "max_tokens", 1, 1 << 24, &mt, e) < 0) return 1;
    if (get_int(root, "max_completion_tokens", 1, 1 << 24, &mct, e) < 0) return 1;
    r->max_tokens = mct >= 0 ? mct : mt; /* the new name wins */
    int k;
    if ((k = get_number(root, "temperature", 0, 2, &r->temperature, e)) < 0) return 1;
    r->has_temperature = k;
    if ((k = get_number(root, "top_p", 1e-9, 1, &r->top_p, e)) < 0) return 1;
    r->has_top_p = k;
    if ((k = get_number(root, "min_p", 0, 1, &r->min_p, e)) < 0) return 1;
    r->has_min_p = k;
    if ((k = get_number(root, "repetition_penalty", 1e-6, 100, &r->repetition_penalty, e)) < 0)
        return 1;
    r->has_penalty = k;
    /* vLLM: top_k -1 (or 0) is off */
    if ((k = get_int(root, "top_k", -1, 1 << 20, &r->top_k, e)) < 0) return 1;
    r->has_top_k = k;
    if (k && r->top_k < 0) r->top_k = 0;
    if ((k = get_int(root, "seed", LLONG_MIN, LLONG_MAX, &r->seed, e)) < 0) return 1;
    r->has_seed = k;

    json_t *st = json_object_get(root, "stream");
    if (st && !json_is_null(st)) {
        if (!json_is_boolean(st))
            return oai_fail(e, 400, "invalid_request_error", "stream", NULL,
                            "stream must be a boolean");
        r->stream = json_is_true(st);
    }
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        json_t *iu = json_is_object(so) ? json_object_get(so, "include_usage") : NULL;
        if (!json_is_object(so) || (iu && !json_is_boolean(iu)))
            return oai_fail(e, 400, "invalid_request_error", "stream_options", NULL,
                            "stream_options must be an object with a boolean include_usage");
        r->include_usage = json_is_true(iu);
    }

    json_t *stop = json_object_get(root, "stop");
    if (stop && !json_is_null(stop)) {
        json_t *one = json_is_string(stop) ? stop : NULL;
        const size_t ns = one ? 1 : json_is_array(stop) ? json_array_size(stop) : (size_t)-1;
        if (ns == (size_t)-1 || ns > OAI_MAX_STOPS)
            return oai_fail(e, 400, "invalid_request_error", "stop", NULL,
                            "stop must be a string or a list of at most %d strings",
                            OAI_MAX_STOPS);
        for (size_t i = 0; i < ns; i++) {
            json_t *s = one ? one : json_array_get(stop, i);
            if (!json_is_string(s) || json_string_length(s) == 0 ||
                json_string_length(s) > 256 || strlen(json_string_value(s)) != json_string_length(s))
                return oai_fail(e, 400, "invalid_request_error", "stop", NULL,
                                "each stop must be a non-empty string of at most 256 bytes");
            size_t len;
            if (!(r->stops[r->n_stops] = dup_json_string(s, &len)))
                return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
            r->n_stops++;
        }
    }

    json_t *mm = json_object_get(root, "mm_processor_kwargs");
    if (mm && !json_is_null(mm)) {
        if (!json_is_object(mm))
            return oai_fail(e, 400, "invalid_request_error", "mm_processor_kwargs", NULL,
                            "mm_processor_kwargs must be an object");
        if (get_int(mm, "min_pixels", 1, (long long)1 << 40, &r->min_pixels, e) < 0 ||
            get_int(mm, "max_pixels", 1, (long long)1 << 40, &r->max_pixels, e) < 0) {
            snprintf(e->param, sizeof e->param, "mm_processor_kwargs");
            return 1;
        }
        if (r->min_pixels && r->max_pixels && r->min_pixels > r->max_pixels)
            return oai_fail(e, 400, "invalid_request_error", "mm_processor_kwargs", NULL,
                            "mm_processor_kwargs: min_pixels is over max_pixels");
    }

    json_t *msgs = json_object_get(root, "messages");
    if (!json_is_array(msgs))
        return oai_fail(e, 400, "invalid_request_error", "messages", NULL,
                        msgs ? "messages must be a list" : "messages is required");
    const size_t nm = json_array_size(msgs);
    if (nm == 0)
        return oai_fail(e, 400, "invalid_request_error", "messages", NULL,
                        "messages must not be empty");
    if (nm > 4096)
        return oai_fail(e, 400, "invalid_request_error", "messages", NULL,
                        "too many messages (%zu)", nm);
    if (!(r->msgs = calloc(nm, sizeof *r->msgs)))
        return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(msgs, i);
        char pp[96];
        snprintf(pp, sizeof pp, "messages[%zu]", i);
        if (!json_is_object(m))
            return oai_fail(e, 400, "invalid_request_error", pp, NULL, "%s must be an object",
                            pp);
        oai_message *om = &r->msgs[r->n_msgs++];
        json_t *role = json_object_get(m, "role");
        snprintf(pp, sizeof pp, "messages[%zu].role", i);
        if (!json_is_string(role))
            return oai_fail(e, 400, "invalid_request_error", pp, NULL, "%s must be a string", pp);
        const char *rs = json_string_value(role);
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for system */
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return oai_fail(e, 400, "invalid_request_error", pp, NULL,
                            "%s: unknown role (system, user and assistant are supported)", pp);
        snprintf(om->role, sizeof om->role, "%s", rs);
        json_t *c = json_object_get(m, "content");
        if (!c || json_is_null(c)) {
            snprintf(pp, sizeof pp, "messages[%zu].content", i);
            return oai_fail(e, 400, "invalid_request_error", pp, NULL, "%s is required", pp);
        }
        if (parse_content(c, (int)i, lim, r, om, e)) return 1;
    }
    if (strcmp(r->msgs[nm - 1].role, "assistant") == 0)
        return oai_fail(e, 400, "invalid_request_error", "messages", NULL,
                        "the last message must not be an assistant message (continuing a "
                        "reply is not supported)");
    return 0;
}

int oai_parse_chat(const char *body, size_t len, const oai_limits *lim, oai_request *r,
                   oai_error *e) {
    memset(r, 0, sizeof *r);
    r->max_tokens = -1;
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return oai_fail(e, 400, "invalid_request_error", NULL, NULL,
                        "the request body is not valid JSON (line %d, column %d)", je.line,
                        je.column);
    int bad = !json_is_object(root)
                  ? oai_fail(e, 400, "invalid_request_error", NULL, NULL,
                             "the request body must be a JSON object")
                  : parse_fields(root, lim, r, e);
    json_decref(root);
    if (bad) oai_request_free(r);
    return bad;
}

int oai_fuzz_one(const uint8_t *data, size_t size) {
    oai_limits lim = {4, (size_t)1 << 20, NULL, 0};
    oai_request r;
    oai_error e;
    if (oai_parse_chat((const char *)data, size, &lim, &r, &e)) {
        char *j = oai_error_json(&e);
        free(j);
        return 0;
    }
    oai_request_free(&r);
    return 1;
}
