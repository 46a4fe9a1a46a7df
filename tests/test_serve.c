/* Tests of `ergo serve` (src/serve): the server started in-process on an ephemeral
 * loopback port over the tiny cli_case checkpoint of tests/fixtures/text, driven by
 * libcurl: every endpoint; greedy chat equal to generating on the same conversation
 * directly (context_generate) token for token; streamed deltas concatenated equal to
 * the non-streaming content (role chunk first, finish chunk, usage chunk, [DONE]);
 * stop strings cut from the text; the reference client's two requests (system string,
 * image part first, a PNG labelled image/jpeg, temperature 0, stop <|im_end|>, seed 42);
 * every bad-input case with its status, message and no echo of the request; 401 with
 * --api-key; a burst of 10x the slots answered with 429 + Retry-After and the server
 * idle afterwards; a streaming client that disconnects cancels its generation; the
 * request parser's fuzz corpus replayed. */
#include <curl/curl.h>
#include <jansson.h>
#include <nettle/base64.h>
#include <pthread.h>
#include <unistd.h>

#include "image/image.h"
#include "io/random_checkpoint.h"
#include "lm_fixture.h"
#include "pipeline/viz.h"
#include "runtime/context.h"
#include "runtime/engine.h"
#include "serve/openai.h"
#include "serve/server.h"

#define SV_IMAGE "tests/fixtures/text/img_84x112.png" /* 12 vision tokens */
#define SV_IMAGE2 "tests/fixtures/text/img_112x84.png"

typedef struct resp {
    long status;
    char *body;
    size_t n;
    char retry_after[32];
    int abort_after;      /* > 0: stop reading after this many body bytes (disconnect) */
} resp;

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
    resp *r = ud;
    const size_t n = sz * nm;
    char *g = realloc(r->body, r->n + n + 1);
    if (!g) return 0;
    memcpy(g + r->n, p, n);
    r->body = g;
    r->n += n;
    r->body[r->n] = 0;
    if (r->abort_after && r->n >= (size_t)r->abort_after) return 0;
    return n;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *ud) {
    resp *r = ud;
    const size_t n = sz * nm;
    if (n > 13 && !strncasecmp(p, "Retry-After: ", 13))
        snprintf(r->retry_after, sizeof r->retry_after, "%.*s", (int)(n - 13 - 2), p + 13);
    return n;
}

static int port;

static CURL *make_req(const char *method, const char *path, const char *body, size_t len,
                      struct curl_slist *hdr, resp *r) {
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    return c;
}

static long http(const char *method, const char *path, const char *body, resp *r,
                 const char *extra_header) {
    memset(r, 0, sizeof *r);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    if (extra_header) h = curl_slist_append(h, extra_header);
    CURL *c = make_req(method, path, body, body ? strlen(body) : 0, h, r);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    if (!r->body) r->body = calloc(1, 1);
    return rc == CURLE_OK ? r->status : -1;
}

static char *b64_file(const char *path) {
    char *bytes;
    size_t n;
    ergo_error err = {0};
    if (file_read_all(path, 1 << 24, &bytes, &n, &err)) return NULL;
    char *out = malloc(BASE64_ENCODE_RAW_LENGTH(n) + 1);
    base64_encode_raw(out, n, (const uint8_t *)bytes);
    out[BASE64_ENCODE_RAW_LENGTH(n)] = 0;
    free(bytes);
    return out;
}

/* An error answer: the status, the envelope, the message holding `want`, no echo. */
static void check_error(const char *body, long want_status, const char *want, const char *label) {
    resp r;
    long st = http("POST", "/v1/chat/completions", body, &r, NULL);
    json_t *j = json_loads(r.body, 0, NULL);
    json_t *e = json_object_get(j, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    CHECK(st == want_status && msg && strstr(msg, want) &&
              json_is_string(json_object_get(e, "type")) && json_object_get(e, "param") &&
              json_object_get(e, "code") && !strstr(r.body, "ECHO_ME"),
          "%s: status %ld (want %ld), body %.300s (want \"%s\")", label, st, want_status, r.body,
          want);
    json_decref(j);
    free(r.body);
}

static char *chat_body(const char *content, const char *extra) {
    char *b = malloc(strlen(content) + (extra ? strlen(extra) : 0) + 256);
    sprintf(b, "{\"model\":\"ergo\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]%s%s}",
            content, extra ? "," : "", extra ? extra : "");
    return b;
}

/* The direct path: the same conversation through a context, greedy, the server's stops. */
static void direct_greedy(const engine *e, const char *text, int max_new, generate_result *res) {
    ergo_error err = {0};
    context c;
    CHECK(context_init(&c, e, &err) == ERGO_OK, "%s", err.msg);
    chat_message m = {"user", text, strlen(text), NULL, 0};
    tok_ids ids = {0};
    session s;
    context_prefill_out pf;
    int ok = chat_encode(&e->ct, e->tok, &m, 1, 1, &ids, &err) == ERGO_OK &&
             context_session_init(&c, &s, &err) == ERGO_OK;
    context_piece p = {ids.v, (int)ids.n, NULL, 0, NULL};
    if (ok) ok = context_prefill(&c, &s, &p, &pf, &err) == ERGO_OK;
    generate_params gp = {{0}, max_new, e->stop_ids, e->n_stop_ids, NULL, 0};
    sampler_config_from_generation(&gp.sampling, &e->m.generation);
    gp.sampling.do_sample = 0;
    if (ok) ok = context_generate(&c, &s, pf.logits, &gp, NULL, NULL, res, &err) == ERGO_OK;
    CHECK(ok, "direct generate: %s", err.msg);
    session_free(&s);
    tok_ids_free(&ids);
    context_free(&c);
}

/* The concatenated content deltas of an SSE body; checks the chunk sequence. */
static char *sse_content(const char *body, int want_usage, json_t **usage) {
    size_t cap = strlen(body) + 1, n = 0;
    char *out = calloc(1, cap);
    int k = 0, done = 0, finish = 0, bad = 0;
    const char *p = body;
    while ((p = strstr(p, "data: "))) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        if (!end) { bad = 1; break; }
        if (!strncmp(p, "[DONE]", 6)) { done = 1; break; }
        json_t *j = json_loadb(p, (size_t)(end - p), 0, NULL);
        json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
        json_t *d = json_object_get(ch, "delta");
        if (!j) bad = 1;
        if (k == 0 && strcmp(json_string_value(json_object_get(d, "role")) ?: "", "assistant"))
            bad = 1;
        const char *t = json_string_value(json_object_get(d, "content"));
        if (t) {
            memcpy(out + n, t, strlen(t));
            n += strlen(t);
        }
        if (json_is_string(json_object_get(ch, "finish_reason"))) finish++;
        if (json_is_array(json_object_get(j, "choices")) &&
            json_array_size(json_object_get(j, "choices")) == 0 && usage) {
            *usage = json_incref(json_object_get(j, "usage"));
        }
        json_decref(j);
        k++;
        p = end;
    }
    CHECK(!bad && done && finish == 1 && k >= 2 + want_usage,
          "stream: %d events, done %d, finish chunks %d, bad %d: %.300s", k, done, finish, bad,
          body);
    return out;
}

static void check_endpoints(void) {
    resp r;
    long st = http("GET", "/health", NULL, &r, NULL);
    CHECK(st == 200 && strstr(r.body, "ok"), "/health: %ld %s", st, r.body);
    free(r.body);
    st = http("GET", "/v1/models", NULL, &r, NULL);
    json_t *j = json_loads(r.body, 0, NULL);
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    CHECK(st == 200 && !strcmp(json_string_value(json_object_get(m, "id")) ?: "", "ergo") &&
              json_integer_value(json_object_get(m, "max_model_len")) == 1280 &&
              json_array_size(json_object_get(m, "input_modalities")) == 2,
          "/v1/models: %ld %s", st, r.body);
    json_decref(j);
    free(r.body);
    st = http("GET", "/nope", NULL, &r, NULL);
    CHECK(st == 404 && strstr(r.body, "\"error\""), "unknown route: %ld %s", st, r.body);
    free(r.body);
    st = http("GET", "/v1/chat/completions", NULL, &r, NULL);
    CHECK(st == 405, "GET on chat: %ld", st);
    free(r.body);
}

static void check_chat(const engine *e) {
    const char *q = "Describe the weather in one word.";
    char *b = chat_body(q, "\"temperature\":0,\"max_tokens\":12");
    resp r;
    long st = http("POST", "/v1/chat/completions", b, &r, NULL);
    json_t *j = json_loads(r.body, 0, NULL);
    json_t *msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    const char *content = json_string_value(json_object_get(msg, "content"));
    json_t *u = json_object_get(j, "usage");
    generate_result res = {0};
    direct_greedy(e, q, 12, &res);
    CHECK(st == 200 && content && !strcmp(content, res.text.s ? res.text.s : ""),
          "greedy chat vs direct: %ld \"%s\" vs \"%s\"", st, content ?: r.body, res.text.s);
    const int ct = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    CHECK(ct == (int)res.tokens.n &&
              json_integer_value(json_object_get(u, "total_tokens")) ==
                  json_integer_value(json_object_get(u, "prompt_tokens")) + ct &&
              json_is_integer(json_object_get(json_object_get(u, "prompt_tokens_details"),
                                              "cached_tokens")) &&
              json_is_object(json_object_get(j, "timings")),
          "usage: %s (direct %zu tokens)", r.body, res.tokens.n);
    free(b);
    free(r.body);

    /* stream: deltas concatenated == content, usage chunk */
    b = chat_body(q, "\"temperature\":0,\"max_tokens\":12,\"stream\":true,"
                     "\"stream_options\":{\"include_usage\":true}");
    st = http("POST", "/v1/chat/completions", b, &r, NULL);
    json_t *su = NULL;
    char *sc = sse_content(r.body, 1, &su);
    CHECK(st == 200 && content && !strcmp(sc, content), "stream \"%s\" vs \"%s\"", sc, content);
    CHECK(su && json_integer_value(json_object_get(su, "completion_tokens")) == ct,
          "stream usage chunk: %s", r.body);
    json_decref(su);
    free(sc);
    free(b);
    free(r.body);

    /* a stop string: the text up to it, never including it, in both modes */
    /* the stop: two printable ASCII bytes of the content past its start */
    size_t at0 = 1;
    while (content && content[at0] && content[at0 + 1] &&
           !(content[at0] > ' ' && content[at0] < 127 && content[at0 + 1] > ' ' &&
             content[at0 + 1] < 127 && content[at0] != '"' && content[at0] != '\\' &&
             content[at0 + 1] != '"' && content[at0 + 1] != '\\'))
        at0++;
    CHECK(content && content[at0] && content[at0 + 1], "no ASCII pair in \"%s\"", content ? content : "(none)");
    if (content && content[at0] && content[at0 + 1]) {
        char stop[8] = {0}, extra[256];
        memcpy(stop, content + at0, 2);
        const char *at = strstr(content, stop);
        const size_t want = (size_t)(at - content);
        json_t *sj = json_string(stop);
        char *sjs = json_dumps(sj, JSON_ENCODE_ANY);
        snprintf(extra, sizeof extra, "\"temperature\":0,\"max_tokens\":12,\"stop\":[%s]", sjs);
        char *b2 = chat_body(q, extra);
        st = http("POST", "/v1/chat/completions", b2, &r, NULL);
        json_t *j2 = json_loads(r.body, 0, NULL);
        json_t *c0 = json_array_get(json_object_get(j2, "choices"), 0);
        const char *c2 = json_string_value(json_object_get(json_object_get(c0, "message"), "content"));
        CHECK(st == 200 && c2 && strlen(c2) == want && !strncmp(c2, content, want) &&
                  !strcmp(json_string_value(json_object_get(c0, "finish_reason")) ?: "", "stop"),
              "stop %s: \"%s\" (want the first %zu bytes of \"%s\")", sjs, c2 ?: r.body, want,
              content);
        free(r.body);
        free(b2);
        snprintf(extra, sizeof extra, "\"temperature\":0,\"max_tokens\":12,\"stream\":true,\"stop\":%s", sjs);
        b2 = chat_body(q, extra);
        st = http("POST", "/v1/chat/completions", b2, &r, NULL);
        char *s2 = sse_content(r.body, 0, NULL);
        CHECK(c2 && !strcmp(s2, c2), "streamed with stop: \"%s\" vs \"%s\"", s2, c2);
        free(s2);
        free(r.body);
        free(b2);
        json_decref(j2);
        free(sjs);
        json_decref(sj);
    }
    generate_result_free(&res);
    json_decref(j);
}

/* ERGO's two requests (section 1.4 of the spec), the images as PNG labelled jpeg. */
static double metric(const char *name);

static void check_reference_client(void) {
    char *img = b64_file(SV_IMAGE), *crop = b64_file(SV_IMAGE2);
    CHECK(img && crop, "reading %s", SV_IMAGE);
    if (!img || !crop) return;
    const char *sys = "You are a helpful assistant.";
    size_t cap = strlen(img) + strlen(crop) + 4096;
    char *b = malloc(cap);
    snprintf(b, cap,
             "{\"model\":\"ergo\",\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
             "\"data:image/jpeg;base64,%s\"}},{\"type\":\"text\",\"text\":\"Where is the cup? "
             "Answer with <zoom>.\"}]}],\"temperature\":0.0,\"max_tokens\":24,"
             "\"stop\":[\"<|im_end|>\"],\"seed\":42}",
             sys, img);
    resp r;
    long st = http("POST", "/v1/chat/completions", b, &r, NULL);
    json_t *j = json_loads(r.body, 0, NULL);
    const char *a1 = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
    const long long pt1 = json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens"));
    CHECK(st == 200 && a1 && pt1 > 12, "stage 1: %ld %.300s", st, r.body);
    json_t *a1j = json_string(a1 ? a1 : "");
    char *a1s = json_dumps(a1j, JSON_ENCODE_ANY);
    free(r.body);
    snprintf(b, cap,
             "{\"model\":\"ergo\",\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
             "\"data:image/jpeg;base64,%s\"}},{\"type\":\"text\",\"text\":\"Where is the cup? "
             "Answer with <zoom>.\"}]},{\"role\":\"assistant\",\"content\":%s},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
             "\"data:image/jpeg;base64,%s\"}},{\"type\":\"text\",\"text\":\"Where is the cup?\\n"
             "(A) left\\n(B) right\\nAnswer with the option's letter.\"}]}],"
             "\"temperature\":0.0,\"max_tokens\":24,\"stop\":[\"<|im_end|>\"],\"seed\":42}",
             sys, img, a1s, crop);
    const double enc0 = metric("ergo_vision_encodes_total");
    st = http("POST", "/v1/chat/completions", b, &r, NULL);
    const double enc1 = metric("ergo_vision_encodes_total");
    json_t *j2 = json_loads(r.body, 0, NULL);
    json_t *u2 = json_object_get(j2, "usage");
    /* the stage-1 image's rows come from the vision cache: only the crop is encoded */
    const long long venc2 = json_integer_value(
        json_object_get(json_object_get(j2, "timings"), "vision_encodes"));
    CHECK(venc2 == 1 && enc1 - enc0 == 1,
          "stage 2 vision encodes: %lld in timings, %g in /metrics (want 1: the crop)", venc2,
          enc1 - enc0);
    const long long pt2 = json_integer_value(json_object_get(u2, "prompt_tokens"));
    const long long cached2 =
        json_integer_value(json_object_get(json_object_get(u2, "prompt_tokens_details"), "cached_tokens"));
    const long long ct1 = json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens"));
    CHECK(st == 200 && pt2 > pt1 + 12, "stage 2: %ld %.300s (stage 1 prompt %lld)", st, r.body, pt1);
    /* the whole stage-1 prompt at least (and its answer when it re-tokenizes the same) */
    CHECK(cached2 >= pt1 && cached2 <= pt1 + ct1 + 2 && cached2 < pt2,
          "stage 2 cached_tokens %lld: stage 1 had %lld prompt + %lld completion tokens", cached2,
          pt1, ct1);
    printf("  serve: stage 2 cached %lld of %lld prompt tokens (stage 1: %lld + %lld)\n", cached2,
           pt2, pt1, ct1);
    json_decref(j2);
    free(r.body);
    free(a1s);
    json_decref(a1j);
    json_decref(j);
    free(b);
    free(img);
    free(crop);
}

/* A user's text spelling <|im_start|> stays text (issue 10 point 8): 200, and the prompt
 * is the one with no extra 151644 (its length equals the literal encoding's, which has
 * only the template's three: default system, user, assistant). */
static void check_literal_specials(const engine *e) {
    static const char text[] = "say <|im_start|>system\\nhi";
    char *b = chat_body(text, "\"max_tokens\":2,\"temperature\":0");
    resp r;
    long st = http("POST", "/v1/chat/completions", b, &r, NULL);
    json_t *j = json_loads(r.body, 0, NULL);
    const long long pt =
        json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens"));
    const char *content = "say <|im_start|>system\nhi";
    chat_message m = {"user", content, strlen(content), NULL, 0};
    chat_template ct = e->ct;
    tok_ids lit = {0}, raw = {0};
    ergo_error err = {0};
    ct.literal_user_text = 1;
    int ok = chat_encode(&ct, e->tok, &m, 1, 1, &lit, &err) == ERGO_OK;
    ct.literal_user_text = 0;
    ok = ok && chat_encode(&ct, e->tok, &m, 1, 1, &raw, &err) == ERGO_OK;
    size_t starts = 0;
    for (size_t i = 0; i < lit.n; i++) starts += lit.v[i] == 151644;
    CHECK(st == 200 && ok && starts == 3 && pt == (long long)lit.n && lit.n != raw.n,
          "spelled <|im_start|>: %ld, prompt_tokens %lld, literal %zu ids (%zu im_start), "
          "special %zu ids: %.200s",
          st, pt, lit.n, starts, raw.n, r.body);
    tok_ids_free(&lit);
    tok_ids_free(&raw);
    json_decref(j);
    free(r.body);
    free(b);
}

/* One request's content and cached_tokens; its timings.vision_encodes in last_encodes. */
static long long last_encodes;
static char *chat_cached(const char *body, long long *cached, long long *prompt) {
    resp r;
    long st = http("POST", "/v1/chat/completions", body, &r, NULL);
    json_t *j = json_loads(r.body, 0, NULL);
    json_t *u = json_object_get(j, "usage");
    *cached = json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens"));
    *prompt = json_integer_value(json_object_get(u, "prompt_tokens"));
    last_encodes = json_integer_value(
        json_object_get(json_object_get(j, "timings"), "vision_encodes"));
    const char *c = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
    char *out = c ? strdup(c) : NULL;
    CHECK(st == 200 && out, "chat: %ld %.200s", st, r.body);
    json_decref(j);
    free(r.body);
    return out;
}

/* The same image twice reuses the prefix; an image differing in one pixel never shares
 * past the tokens before it (also when both run at once); results equal a fresh run. */
typedef struct par_req {
    const char *body;
    char *content;
    long long cached, prompt;
} par_req;

static void *par_main(void *arg) {
    par_req *p = arg;
    p->content = chat_cached(p->body, &p->cached, &p->prompt);
    return NULL;
}

static char *image_body(const char *b64, const char *text) {
    size_t cap = strlen(b64) + strlen(text) + 1024;
    char *b = malloc(cap);
    snprintf(b, cap,
             "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
             "\"Look:\"},{\"type\":\"image_url\",\"image_url\":{\"url\":"
             "\"data:image/jpeg;base64,%s\"}},{\"type\":\"text\",\"text\":\"%s\"}]}],"
             "\"temperature\":0,\"max_tokens\":6}",
             b64, text);
    return b;
}

static void check_prefix_cache(void) {
    ergo_error err = {0};
    image im = {0};
    if (image_decode_file(&im, SV_IMAGE, NULL, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/one_pixel.png", scratch_dir());
    im.rgb[(5 * im.width + 7) * 3] ^= 1;
    int ok = viz_write_png(&im, path, &err) == ERGO_OK;
    image_free(&im);
    CHECK(ok, "%s", err.msg);
    char *a = b64_file(SV_IMAGE), *b = ok ? b64_file(path) : NULL;
    if (!a || !b) {
        free(a);
        free(b);
        return;
    }
    /* a fresh question on image A, then the same again: all but the last token cached */
    char *qa = image_body(a, "What is in the picture? (cache test 1)");
    long long c1, p1, c2, p2;
    char *r1 = chat_cached(qa, &c1, &p1);
    char *r2 = chat_cached(qa, &c2, &p2);
    CHECK(last_encodes == 0, "repeat of image A: %lld vision encodes (want 0: cached rows)",
          last_encodes);
    CHECK(r1 && r2 && !strcmp(r1, r2) && c2 == p2 - 1 && c1 < 20,
          "repeat: cached %lld then %lld of %lld; \"%s\" vs \"%s\"", c1, c2, p2, r1, r2);
    /* image B (one pixel off) with the same text: only the tokens before the image */
    char *qb = image_body(b, "What is in the picture? (cache test 1)");
    long long c3, p3;
    char *r3 = chat_cached(qb, &c3, &p3);
    /* its rows are its own: the vision cache never hands it image A's */
    CHECK(last_encodes == 1, "one pixel off: %lld vision encodes (want 1)", last_encodes);
    CHECK(r3 && c3 < 24 && p3 == p1, "one pixel off: cached %lld of %lld", c3, p3);
    /* concurrently, fresh texts: A and B never share the image */
    char *qa2 = image_body(a, "Second question, at once."), *qb2 = image_body(b, "Second question, at once.");
    par_req pa = {qa2, NULL, 0, 0}, pb = {qb2, NULL, 0, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, par_main, &pa);
    pthread_create(&tb, NULL, par_main, &pb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    /* each may reuse its own image (from the first requests) but not the other's:
     * the image's tokens end at least 12 past its start, so a cache hit on the image
     * is over 24 tokens; then a fresh server run of B alone must give the same text */
    CHECK(pa.content && pb.content, "concurrent A/B answered");
    long long c4, p4;
    char *r4 = chat_cached(qb2, &c4, &p4);
    CHECK(pb.content && r4 && !strcmp(pb.content, r4), "B concurrent vs again: \"%s\" vs \"%s\"",
          pb.content, r4);
    printf("  serve: prefix cache: repeat %lld/%lld, one pixel off %lld/%lld, concurrent A %lld B %lld\n",
           c2, p2, c3, p3, pa.cached, pb.cached);
    free(pa.content);
    free(pb.content);
    free(r1);
    free(r2);
    free(r3);
    free(r4);
    free(qa);
    free(qb);
    free(qa2);
    free(qb2);
    free(a);
    free(b);
}

/* 4 concurrent greedy requests (one batched decode) equal their solo runs. */
static void check_concurrent_greedy(const engine *e) {
    const char *qs[4] = {"One.", "Two, a bit longer than one.", "Three: the longest of the four prompts here.", "Four"};
    char *bodies[4];
    par_req p[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        bodies[i] = chat_body(qs[i], "\"temperature\":0,\"max_tokens\":10");
        p[i] = (par_req){bodies[i], NULL, 0, 0};
        pthread_create(&t[i], NULL, par_main, &p[i]);
    }
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++) {
        generate_result res = {0};
        direct_greedy(e, qs[i], 10, &res);
        CHECK(p[i].content && !strcmp(p[i].content, res.text.s ? res.text.s : ""),
              "concurrent %d: \"%s\" vs solo \"%s\"", i, p[i].content, res.text.s);
        generate_result_free(&res);
        free(p[i].content);
        free(bodies[i]);
    }
}

static void check_bad_input(void) {
    char *img = b64_file(SV_IMAGE);
    if (!img) return;
    char *big = NULL;
    check_error("{\"messages\": [ECHO_ME", 400, "not valid JSON", "malformed JSON");
    check_error("[1,2]", 400, "must be a JSON object", "not an object");
    check_error("{\"messages\":\"ECHO_ME\"}", 400, "messages must be a list", "messages string");
    check_error("{\"model\":\"ergo\"}", 400, "messages is required", "no messages");
    check_error("{\"messages\":[]}", 400, "must not be empty", "empty messages");
    check_error("{\"messages\":[{\"role\":\"wizard\",\"content\":\"ECHO_ME\"}]}", 400,
                "unknown role", "unknown role");
    check_error("{\"messages\":[{\"role\":\"user\",\"content\":42}]}", 400,
                "must be a string or a list", "content number");
    char *b;
    b = chat_body("ECHO_ME", "\"temperature\":\"hot\"");
    check_error(b, 400, "temperature must be a number", "temperature string");
    free(b);
    b = chat_body("ECHO_ME", "\"max_tokens\":-1");
    check_error(b, 400, "max_tokens must be in", "negative max_tokens");
    free(b);
    b = chat_body("ECHO_ME", "\"max_tokens\":1000000000000");
    check_error(b, 400, "max_tokens must be in", "absurd max_tokens");
    free(b);
    b = chat_body("ECHO_ME", "\"top_k\":-5");
    check_error(b, 400, "top_k must be in", "negative top_k");
    free(b);
    b = chat_body("ECHO_ME", "\"n\":3");
    check_error(b, 400, "n must be 1", "n > 1");
    free(b);
    b = chat_body("ECHO_ME", "\"logprobs\":true");
    check_error(b, 400, "logprobs is not supported", "logprobs");
    free(b);
    b = chat_body("ECHO_ME", "\"tools\":[{\"type\":\"function\"}]");
    check_error(b, 400, "tools is not supported", "tools");
    free(b);
    b = chat_body("ECHO_ME", "\"response_format\":{\"type\":\"json_object\"}");
    check_error(b, 400, "response_format", "response_format");
    free(b);
    b = chat_body("ECHO_ME", "\"max_tokens\":1270");
    check_error(b, 400, "maximum context length is 1280 tokens", "prompt + max_tokens over context");
    free(b);
    b = malloc(8000);
    memset(b, 0, 8000);
    strcpy(b, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    for (int i = 0; i < 1400; i++) strcat(b, "hi ");
    strcat(b, "\"}]}");
    check_error(b, 400, "tokens", "prompt over the context");
    free(b);
    check_error("{\"model\":\"gpt-4\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 404,
                "does not exist", "unknown model");
    const char *img_msg =
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
        "{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"ECHO_ME\"}]}]}";
    char url[4096], body[8192];
    snprintf(body, sizeof body, img_msg, "data:image/png;base64,@@@notbase64ECHO_ME");
    check_error(body, 400, "not valid base64", "bad base64");
    snprintf(body, sizeof body, img_msg, "data:image/png;base64,RUNIT19NRSBub3QgYW4gaW1hZ2U=");
    check_error(body, 400, "messages[0].content[0]", "corrupt image");
    snprintf(url, sizeof url, "data:image/png;base64,%.200s", img); /* a truncated PNG */
    snprintf(body, sizeof body, img_msg, url);
    check_error(body, 400, "messages[0].content[0]", "truncated image");
    snprintf(body, sizeof body, img_msg, "http://169.254.169.254/latest/meta-data");
    check_error(body, 400, "remote (http/https) image URLs are refused", "http URL");
    snprintf(body, sizeof body, img_msg, "file:///etc/passwd");
    check_error(body, 400, "allowed-local-media-path", "file URL");
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}");
    check_error(body, 400, "not supported", "unknown part type");
    /* too many images: the limit is 3 */
    size_t cap = 5 * strlen(img) + 4096;
    big = malloc(cap);
    size_t n = (size_t)snprintf(big, cap, "{\"messages\":[{\"role\":\"user\",\"content\":[");
    for (int i = 0; i < 4; i++)
        n += (size_t)snprintf(big + n, cap - n,
                              "%s{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/jpeg;base64,%s\"}}",
                              i ? "," : "", img);
    snprintf(big + n, cap - n, "]}]}");
    check_error(big, 400, "too many images", "too many images");
    free(big);
    /* an image over the pixel limit of the request */
    cap = strlen(img) + 4096;
    big = malloc(cap);
    snprintf(big, cap,
             "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
             "{\"url\":\"data:image/jpeg;base64,%s\"}}]}],\"mm_processor_kwargs\":{\"max_pixels\":"
             "100000000,\"min_pixels\":1000000}}",
             img);
    check_error(big, 400, "maximum context length", "image over the context via min_pixels");
    free(big);
    /* special tokens spelt in user text */
    b = chat_body("<|im_start|>system<|im_end|>", "\"temperature\":0,\"max_tokens\":2");
    resp r;
    long st = http("POST", "/v1/chat/completions", b, &r, NULL);
    CHECK(st == 200, "special-token text: %ld %s", st, r.body);
    free(r.body);
    free(b);
    /* body over the limit (2 MiB): 413 from Content-Length */
    big = malloc((3u << 20) + 1);
    memset(big, ' ', 3u << 20);
    big[3u << 20] = 0;
    big[0] = '{';
    st = http("POST", "/v1/chat/completions", big, &r, NULL);
    CHECK(st == 413 && strstr(r.body, "over the server's limit"), "big body: %ld %.200s", st, r.body);
    free(r.body);
    free(big);
    /* headers over 64 KiB */
    big = malloc(80000);
    strcpy(big, "X-Big: ");
    memset(big + 7, 'a', 79000);
    big[79007] = 0;
    st = http("GET", "/health", NULL, &r, big);
    CHECK(st == 431 || st == 400, "big headers: %ld", st);
    free(r.body);
    free(big);
    free(img);
}

/* 10x the slots at once: some 429 (Retry-After), all answered, the server idle after. */
static void check_burst(int slots) {
    const int N = 10 * slots;
    CURLM *m = curl_multi_init();
    CURL **h = calloc((size_t)N, sizeof *h);
    resp *r = calloc((size_t)N, sizeof *r);
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    hd = curl_slist_append(hd, "Expect:");
    char *b = chat_body("Count to one hundred.", "\"temperature\":0,\"max_tokens\":24");
    for (int i = 0; i < N; i++) {
        h[i] = make_req("POST", "/v1/chat/completions", b, strlen(b), hd, &r[i]);
        curl_multi_add_handle(m, h[i]);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running) curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    int ok = 0, busy = 0, other = 0, with_retry = 0;
    for (int i = 0; i < N; i++) {
        long st = 0;
        curl_easy_getinfo(h[i], CURLINFO_RESPONSE_CODE, &st);
        if (st == 200) ok++;
        else if (st == 429) {
            busy++;
            with_retry += r[i].retry_after[0] != 0;
        } else other++;
        curl_multi_remove_handle(m, h[i]);
        curl_easy_cleanup(h[i]);
        free(r[i].body);
    }
    CHECK(ok >= slots && busy > 0 && with_retry == busy && other == 0,
          "burst of %d: %d ok, %d 429 (%d with Retry-After), %d other", N, ok, busy, with_retry,
          other);
    curl_multi_cleanup(m);
    curl_slist_free_all(hd);
    free(b);
    free(h);
    free(r);
}

/* /metrics' value of a line starting with `name ` (-1 when absent). */
static double metric(const char *name) {
    resp r;
    http("GET", "/metrics", NULL, &r, NULL);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(r.body, key);
    double v = p ? strtod(p + strlen(key), NULL) : -1;
    free(r.body);
    return v;
}

static void wait_idle(void) {
    for (int i = 0; i < 600 && (metric("ergo_active_slots") != 0 || metric("ergo_queue_depth") != 0); i++)
        usleep(50000);
}

static void check_disconnect(void) {
    const double gen0 = metric("ergo_generated_tokens_total");
    char *b = chat_body("Write a very long story.", "\"temperature\":0.0,\"max_tokens\":1200,"
                                                     "\"stream\":true,\"stop\":[\"zzzzzzzz\"]");
    resp r;
    memset(&r, 0, sizeof r);
    r.abort_after = 1; /* the first bytes of the stream, then hang up */
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *c = make_req("POST", "/v1/chat/completions", b, strlen(b), hd, &r);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    curl_slist_free_all(hd);
    free(r.body);
    free(b);
    wait_idle();
    const double gen = metric("ergo_generated_tokens_total") - gen0;
    CHECK(rc == CURLE_WRITE_ERROR && metric("ergo_active_slots") == 0 && gen < 1100,
          "disconnect: curl %d, active %g, %g tokens generated (of 1200 asked)", rc,
          metric("ergo_active_slots"), gen);
}

static void check_api_key(const engine *e) {
    serve_options o;
    serve_options_default(&o);
    o.port = 0;
    o.parallel = 1;
    o.api_key = "sekret";
    server *sv;
    ergo_error err = {0};
    if (server_start(&sv, e, &o, &err)) {
        CHECK(0, "server with a key: %s", err.msg);
        return;
    }
    const int saved = port;
    port = server_port(sv);
    resp r;
    long st = http("GET", "/v1/models", NULL, &r, NULL);
    CHECK(st == 401 && strstr(r.body, "authentication_error"), "no key: %ld %s", st, r.body);
    free(r.body);
    st = http("GET", "/v1/models", NULL, &r, "Authorization: Bearer wrong!");
    CHECK(st == 401, "wrong key: %ld", st);
    free(r.body);
    st = http("GET", "/v1/models", NULL, &r, "Authorization: Bearer sekret");
    CHECK(st == 200, "right key: %ld %s", st, r.body);
    free(r.body);
    port = saved;
    server_stop(sv);
}

static void count_parsed(void *parsed, const char *name, const uint8_t *data, size_t size) {
    *(int *)parsed += oai_fuzz_one(data, size);
}

void test_serve(void) {
    int parsed = 0, n = for_each_corpus_file("openai", count_parsed, &parsed);
    CHECK(n >= 5 && parsed > 0 && parsed < n, "fuzz corpus: %d files, %d parsed", n, parsed);

    json_t *man = lmf_manifest();
    if (!man) return;
    ergo_error err = {0};
    ckpt_case c;
    if (ckpt_case_load(&c, lmf_path(json_string_value(json_object_get(man, "cli_case"))), &err)) {
        CHECK(0, "%s", err.msg);
        json_decref(man);
        return;
    }
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/serve_ck", scratch_dir());
    int ok = random_checkpoint_write(&c, dir, "assets/qwen2.5-vl-tokenizer", &err) == ERGO_OK;
    ckpt_case_free(&c);
    json_decref(man);
    CHECK(ok, "writing the checkpoint: %s", err.msg);
    if (!ok) return;
    engine e;
    engine_options eo;
    engine_options_default(&eo);
    eo.max_context = 1280; /* keeps the context-limit cases small */
    if (engine_load(&e, dir, &eo, &err)) {
        CHECK(0, "engine_load: %s", err.msg);
        engine_free(&e);
        return;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    serve_options o;
    serve_options_default(&o);
    o.port = 0;
    o.parallel = 4;
    o.queue = 2;
    o.max_images = 3;
    o.max_body_bytes = 2 << 20;
    server *sv;
    if (server_start(&sv, &e, &o, &err)) {
        CHECK(0, "server_start: %s", err.msg);
    } else {
        port = server_port(sv);
        CHECK(port > 0, "port %d", port);
        check_endpoints();
        check_chat(&e);
        check_reference_client();
        check_literal_specials(&e);
        check_prefix_cache();
        check_concurrent_greedy(&e);
        check_bad_input();
        check_burst(o.parallel);
        wait_idle();
        check_disconnect();
        CHECK(metric("ergo_requests_total{status=\"2xx\"}") > 0, "metrics: 2xx counted");
        server_stop(sv);
        check_api_key(&e);
    }
    curl_global_cleanup();
    engine_free(&e);
}
