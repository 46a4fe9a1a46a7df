/*
 * judge.c - the region reward's judge: oracle, in-process checkpoint, OpenAI-compatible
 * endpoint, and the answer cache in front of the model judges (judge.h).
 */
#include "train/judge.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/preprocess.h"
#include "pipeline/ergo.h"
#include "runtime/context.h"
#include "synth/synth.h"
#include "train/judge_cache.h"

struct judge {
    judge_config c;
    char *model_dir, *url, *model_name, *api_key, *cache_path; /* the config's strings, owned */
    char *id;
    char chat_url[4096];     /* endpoint: url + "/chat/completions" */
    engine own;              /* JUDGE_MODEL without `shared` */
    int own_loaded;
    const engine *e;
    context cx;
    int cx_ready;
    pthread_mutex_t run_mu;  /* one in-process request at a time (one context) */
    pthread_mutex_t stats_mu;
    judge_cache *cache;      /* model judges */
    judge_stats st;
};

const char *judge_kind_name(judge_kind k) {
    switch (k) {
    case JUDGE_ORACLE: return "oracle";
    case JUDGE_MODEL: return "model";
    case JUDGE_ENDPOINT: return "endpoint";
    }
    return "?";
}

void judge_config_default(judge_config *c) {
    memset(c, 0, sizeof *c);
    c->kind = JUDGE_ORACLE;
    engine_options_default(&c->engine);
    chat_client_options_default(&c->client);
    c->client.max_retries = 3;
    c->client.timeout_ms = 120000;
    c->max_new_tokens = 64;
    c->oracle_min_coverage = 1.0;
}

void judge_answer_free(judge_answer *a) {
    free(a->text);
    memset(a, 0, sizeof *a);
}

static ergo_status check_config(const judge_config *c, ergo_error *err) {
    if ((unsigned)c->kind > JUDGE_ENDPOINT) return ergo_fail(err, ERGO_E_ARG, "judge: unknown kind %d", (int)c->kind);
    if (c->kind == JUDGE_MODEL && !c->model_dir)
        return ergo_fail(err, ERGO_E_ARG, "--judge: give the judge's checkpoint directory");
    if (c->kind == JUDGE_ENDPOINT && (!c->url || !c->url[0]))
        return ergo_fail(err, ERGO_E_ARG, "--judge-url: give the judge's API base (http://HOST:PORT/v1)");
    if (c->kind != JUDGE_ORACLE && (c->max_new_tokens < 1 || c->max_new_tokens > 65536))
        return ergo_fail(err, ERGO_E_ARG, "--judge-max-tokens %d: use 1..65536", c->max_new_tokens);
    if (c->max_vision_tokens < 0 || c->max_vision_tokens > 16384)
        return ergo_fail(err, ERGO_E_ARG, "--judge-vision-tokens %d: use 0 (as given) or 4..16384",
                         c->max_vision_tokens);
    if (c->max_vision_tokens > 0 && c->max_vision_tokens < 4)
        return ergo_fail(err, ERGO_E_ARG, "--judge-vision-tokens %d: use 0 (as given) or 4..16384",
                         c->max_vision_tokens);
    if (!(c->oracle_min_coverage > 0 && c->oracle_min_coverage <= 1))
        return ergo_fail(err, ERGO_E_ARG, "--oracle-coverage %g: use (0, 1]", c->oracle_min_coverage);
    if (!(c->oracle_min_scale >= 0 && c->oracle_min_scale < 1e6))
        return ergo_fail(err, ERGO_E_ARG, "--oracle-scale %g: use 0 (off) or a positive scale", c->oracle_min_scale);
    if (c->client.max_retries < 0 || c->client.timeout_ms < 1 || c->client.retry_base_ms < 0)
        return ergo_fail(err, ERGO_E_ARG, "judge endpoint: retries must be >= 0, the timeout >= 1 ms");
    return ERGO_OK;
}

static char *dup_or_null(const char *s, int *oom) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

ergo_status judge_open(judge **out, const judge_config *c, ergo_error *err) {
    *out = NULL;
    ergo_status s = check_config(c, err);
    if (s) return s;
    judge *j = calloc(1, sizeof *j);
    if (!j) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    pthread_mutex_init(&j->run_mu, NULL);
    pthread_mutex_init(&j->stats_mu, NULL);
    j->c = *c;
    int oom = 0;
    j->c.model_dir = j->model_dir = dup_or_null(c->model_dir, &oom);
    j->c.url = j->url = dup_or_null(c->url, &oom);
    j->c.model_name = j->model_name = dup_or_null(c->model_name, &oom);
    j->c.client.api_key = j->api_key = dup_or_null(c->client.api_key, &oom);
    j->c.cache_path = j->cache_path = dup_or_null(c->cache_path, &oom);
    char id[8192];
    if (c->kind == JUDGE_MODEL)
        snprintf(id, sizeof id, "model:%s|max_tokens=%d|vision_tokens=%d", c->model_dir, c->max_new_tokens,
                 c->max_vision_tokens);
    else if (c->kind == JUDGE_ENDPOINT)
        snprintf(id, sizeof id, "endpoint:%s|model=%s|max_tokens=%d|vision_tokens=%d", c->url,
                 c->model_name ? c->model_name : "", c->max_new_tokens, c->max_vision_tokens);
    else
        snprintf(id, sizeof id, "oracle|coverage=%g|scale=%g", c->oracle_min_coverage, c->oracle_min_scale);
    j->id = dup_or_null(id, &oom);
    if (oom) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (!s && c->kind == JUDGE_ENDPOINT) {
        size_t ul = strlen(c->url);
        while (ul && c->url[ul - 1] == '/') ul--;
        if (ul + 20 >= sizeof j->chat_url) s = ergo_fail(err, ERGO_E_ARG, "--judge-url: URL too long");
        else snprintf(j->chat_url, sizeof j->chat_url, "%.*s/chat/completions", (int)ul, c->url);
        if (!s && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            s = ergo_fail(err, ERGO_E_IO, "cannot initialise libcurl");
    }
    if (!s && c->kind == JUDGE_MODEL) {
        if (c->shared) {
            j->e = c->shared;
        } else {
            j->own_loaded = 1;
            if (!(s = engine_load(&j->own, c->model_dir, &c->engine, err))) j->e = &j->own;
            else ergo_error_prefix(err, "the judge %s: ", c->model_dir);
        }
        if (!s && !(s = context_init(&j->cx, j->e, err))) j->cx_ready = 1;
    }
    if (!s && c->kind != JUDGE_ORACLE) {
        if (!(s = judge_cache_open(&j->cache, j->cache_path, j->id, err))) j->st.loaded = judge_cache_loaded(j->cache);
    }
    if (s) {
        judge_close(j);
        return s;
    }
    *out = j;
    return ERGO_OK;
}

void judge_close(judge *j) {
    if (!j) return;
    if (j->cx_ready) context_free(&j->cx);
    if (j->own_loaded) engine_free(&j->own);
    judge_cache_close(j->cache);
    free(j->model_dir), free(j->url), free(j->model_name), free(j->api_key), free(j->cache_path), free(j->id);
    pthread_mutex_destroy(&j->run_mu);
    pthread_mutex_destroy(&j->stats_mu);
    free(j);
}

const char *judge_id(const judge *j) { return j->id; }

void judge_get_stats(judge *j, judge_stats *out) {
    pthread_mutex_lock(&j->stats_mu);
    *out = j->st;
    pthread_mutex_unlock(&j->stats_mu);
}

void judge_synth_gt_box(const synth_sample *s, int box[4]) {
    const synth_tag *t = &s->tags[s->landmarks[s->target].tag];
    box[0] = t->x1, box[1] = t->y1, box[2] = t->x2, box[3] = t->y2;
}

/* ---- the oracle ---------------------------------------------------------------------- */

static ergo_status ask_oracle(const judge *j, const judge_query *q, judge_answer *a, ergo_error *err) {
    if (!q->gt_box) return ergo_fail(err, ERGO_E_ARG, "the oracle judge needs the item's ground-truth box");
    if (!q->label || !q->label[0]) return ergo_fail(err, ERGO_E_ARG, "the oracle judge needs the item's label");
    const int *g = q->gt_box, *b = q->crop_box;
    double ga = (double)(g[2] - g[0]) * (double)(g[3] - g[1]);
    if (g[2] <= g[0] || g[3] <= g[1])
        return ergo_fail(err, ERGO_E_ARG, "the ground-truth box [%d, %d, %d, %d] is empty", g[0], g[1], g[2], g[3]);
    int ix = (b[2] < g[2] ? b[2] : g[2]) - (b[0] > g[0] ? b[0] : g[0]);
    int iy = (b[3] < g[3] ? b[3] : g[3]) - (b[1] > g[1] ? b[1] : g[1]);
    double cover = ix > 0 && iy > 0 ? (double)ix * (double)iy / ga : 0.0;
    int right = cover >= j->c.oracle_min_coverage;
    if (right && j->c.oracle_min_scale > 0) {
        int cw = b[2] - b[0], ch = b[3] - b[1];
        if (!q->crop || cw <= 0 || ch <= 0) return ergo_fail(err, ERGO_E_ARG, "the oracle's scale check needs the crop");
        double sx = (double)q->crop->width / cw, sy = (double)q->crop->height / ch;
        right = (sx < sy ? sx : sy) >= j->c.oracle_min_scale;
    }
    char wrong[2] = "A";
    if (!right) /* the first letter that is not the label */
        while (wrong[0] < 'Z' && q->label[1] == 0 && (q->label[0] | 32) == (wrong[0] | 32)) wrong[0]++;
    a->text = strdup(right ? q->label : wrong);
    return a->text ? ERGO_OK : ergo_fail(err, ERGO_E_NOMEM, "out of memory");
}

/* ---- the model judges ------------------------------------------------------------------ */

/* One user turn [crop, question] through the judge's checkpoint, greedy. */
static ergo_status ask_model(judge *j, const image *im, const char *question, judge_answer *a, ergo_error *err) {
    ergo_options o;
    ergo_options_default(&o);
    o.max_new_tokens = j->c.max_new_tokens;
    ergo_question q = {question, NULL, 0, NULL};
    ergo_result r;
    pthread_mutex_lock(&j->run_mu);
    ergo_status s = ergo_run_baseline(&j->cx, &o, im, &q, &r, err);
    pthread_mutex_unlock(&j->run_mu);
    if (!s && !(a->text = strdup(r.s1.text ? r.s1.text : ""))) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    ergo_result_free(&r);
    if (s) ergo_error_prefix(err, "the judge %s: ", j->c.model_dir);
    return s;
}

/* The chat request; a failure the retries did not cure drops the answer. */
static ergo_status ask_endpoint(judge *j, const image *im, const char *question, judge_answer *a, ergo_error *err) {
    char *url = chat_client_image_url(im, "image/png", err);
    if (!url) return ERGO_E_NOMEM;
    json_t *body = json_pack("{s:[{s:s, s:[{s:s, s:{s:s}}, {s:s, s:s}]}], s:f, s:i, s:i}", "messages", "role",
                             "user", "content", "type", "image_url", "image_url", "url", url, "type", "text", "text",
                             question, "temperature", 0.0, "max_tokens", j->c.max_new_tokens, "seed", 42);
    free(url);
    if (!body) return ergo_fail(err, ERGO_E_FORMAT, "cannot build the judge request (is the question UTF-8?)");
    if (j->c.model_name) json_object_set_new(body, "model", json_string(j->c.model_name));
    CURL *h = curl_easy_init();
    if (!h) {
        json_decref(body);
        return ergo_fail(err, ERGO_E_NOMEM, "cannot start libcurl");
    }
    chat_client_reply r = {0};
    ergo_error e2 = {0};
    ergo_status s = chat_client_post(h, j->chat_url, &j->c.client, body, &r, &e2);
    curl_easy_cleanup(h);
    json_decref(body);
    pthread_mutex_lock(&j->stats_mu);
    j->st.requests += r.attempts;
    j->st.retries += r.attempts > 1 ? r.attempts - 1 : 0;
    pthread_mutex_unlock(&j->stats_mu);
    if (s == ERGO_E_NOMEM) {
        chat_client_reply_free(&r);
        return ergo_fail(err, s, "%s", e2.msg);
    }
    if (s) {
        a->dropped = 1;
        snprintf(a->why, sizeof a->why, "%.250s", e2.msg);
    } else {
        a->text = r.content;
        r.content = NULL;
    }
    chat_client_reply_free(&r);
    return ERGO_OK;
}

/* The image a model judge is sent: the crop, or with a budget the crop resized as ERGO
 * resizes a crop (smart_resize_ergo under budget * 28 * 28, Pillow LANCZOS). */
static ergo_status judge_view(const judge *j, const image *crop, image *out, int *resized, ergo_error *err) {
    *resized = 0;
    if (j->c.max_vision_tokens <= 0) return ERGO_OK;
    int h = 0, w = 0;
    ergo_status s = smart_resize_ergo(crop->height, crop->width, ERGO_FACTOR, ERGO_MIN_PIXELS,
                                      (int64_t)j->c.max_vision_tokens * ERGO_FACTOR * ERGO_FACTOR, &h, &w, err);
    if (s) return s;
    if (w == crop->width && h == crop->height) return ERGO_OK;
    if ((s = image_resize(out, crop, w, h, IMAGE_FILTER_LANCZOS, err))) return s;
    *resized = 1;
    return ERGO_OK;
}

ergo_status judge_ask(judge *j, const judge_query *q, judge_answer *a, ergo_error *err) {
    memset(a, 0, sizeof *a);
    if (!q->question) return ergo_fail(err, ERGO_E_ARG, "judge: no question");
    if (j->c.kind != JUDGE_ORACLE && (!q->crop || !q->crop->rgb || q->crop->width <= 0 || q->crop->height <= 0))
        return ergo_fail(err, ERGO_E_ARG, "judge: no crop image");
    ergo_status s;
    if (j->c.kind == JUDGE_ORACLE) {
        s = ask_oracle(j, q, a, err);
    } else {
        image small = {0};
        int resized = 0;
        s = judge_view(j, q->crop, &small, &resized, err);
        const image *im = resized ? &small : q->crop;
        char key[JUDGE_KEY_SIZE];
        if (!s) judge_cache_key(im, q->question, key);
        int hit = s ? 0 : judge_cache_get(j->cache, key, &a->text);
        if (hit < 0) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        if (!s && hit) a->cached = 1;
        if (!s && !hit) {
            s = j->c.kind == JUDGE_MODEL ? ask_model(j, im, q->question, a, err)
                                         : ask_endpoint(j, im, q->question, a, err);
            if (!s && !a->dropped) s = judge_cache_put(j->cache, key, q->question, a->text, err);
        }
        image_free(&small);
    }
    if (s) {
        judge_answer_free(a);
        return s;
    }
    pthread_mutex_lock(&j->stats_mu);
    j->st.asked++;
    j->st.cached += a->cached;
    j->st.dropped += a->dropped;
    j->st.answered += !a->cached && !a->dropped;
    if (a->dropped) snprintf(j->st.last_drop, sizeof j->st.last_drop, "%.250s", a->why);
    pthread_mutex_unlock(&j->stats_mu);
    return ERGO_OK;
}
