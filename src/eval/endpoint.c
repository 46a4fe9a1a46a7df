/*
 * endpoint.c - `ergo eval --endpoint URL`: the reference evaluation's own two chat
 * completion requests (spec eval-server.md 1.3-1.5) to any OpenAI-compatible server,
 * with libcurl; the same records as the in-process runner.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "eval/chat_client.h"
#include "eval/eval_internal.h"
#include "image/preprocess.h"
#include "pipeline/ergo.h"
#include "pipeline/zoom.h"

/* The processor's default limits (Qwen2.5-VL preprocessor_config.json): what a server
 * does with the full-resolution fallback image. */
#define PROC_MIN_PIXELS 3136
#define PROC_MAX_PIXELS 12845056

/* The reference labels its PNGs "image/jpeg" (sic). */
static char *png_base64(const image *im, ergo_error *err) {
    return chat_client_image_url(im, "image/jpeg", err);
}

static json_t *user_turn(const char *url, const char *text) {
    return json_pack("{s:s, s:[{s:s, s:{s:s}}, {s:s, s:s}]}", "role", "user", "content", "type",
                     "image_url", "image_url", "url", url, "type", "text", "text", text);
}

/* One POST of body; the assistant content (malloc'd), usage into prompt and completion. */
static ergo_status post_chat(const eval_config *c, CURL *h, const char *url, json_t *body,
                             char **content, int64_t *prompt, int64_t *completion, ergo_error *err) {
    chat_client_options o;
    chat_client_options_default(&o);
    o.api_key = c->api_key;
    o.max_retries = c->max_retries;
    o.retry_base_ms = c->retry_base_ms;
    chat_client_reply r = {0};
    ergo_status s = chat_client_post(h, url, &o, body, &r, err);
    if (!s) {
        *content = r.content;
        r.content = NULL;
        *prompt = r.prompt_tokens;
        *completion = r.completion_tokens;
    }
    chat_client_reply_free(&r);
    return s;
}

static int64_t tokens_of(int w, int h) { return (int64_t)(w / ERGO_FACTOR) * (h / ERGO_FACTOR); }

/* The two stages of one sample as the reference's process() runs them. */
static void run_sample(const eval_config *c, CURL *h, const char *url, const bench_sample *s,
                       const image *img, int budget, json_t *o) {
    ergo_error err = {0};
    int h1 = 0, w1 = 0;
    image small = {0}, crop = {0};
    char *u1 = NULL, *u2 = NULL, *t1 = NULL, *t2 = NULL, *r1 = NULL, *r2 = NULL, *full = NULL;
    json_t *body = NULL;
    int64_t p1 = 0, g1 = 0, p2 = 0, g2 = 0;
    double ms1 = 0, ms2 = 0;
    ergo_status st = smart_resize_ergo(img->height, img->width, ERGO_FACTOR, ERGO_MIN_PIXELS,
                                       (int64_t)budget * ERGO_FACTOR * ERGO_FACTOR, &h1, &w1, &err);
    if (!st) st = image_resize(&small, img, w1, h1, IMAGE_FILTER_BICUBIC, &err);
    if (!st && !(u1 = png_base64(&small, &err))) st = ERGO_E_NOMEM;
    ergo_question q = {s->question, (const char *const *)s->options, s->n_options, s->postfix};
    if (!st) {
        size_t n1 = strlen(s->question) + strlen(ergo_template1_suffix) + 1;
        t1 = malloc(n1);
        full = ergo_full_question(&q);
        if (!t1 || !full) st = ergo_fail(&err, ERGO_E_NOMEM, "out of memory");
        else snprintf(t1, n1, "%s%s", s->question, ergo_template1_suffix);
    }
    if (!st) {
        body = json_pack("{s:s, s:[{s:s, s:s}, o], s:f, s:i, s:[s], s:i}", "model", "ergo", "messages",
                         "role", "system", "content", ergo_system_prompt, user_turn(u1, t1),
                         "temperature", 0.0, "max_tokens", c->run.max_new_tokens, "stop", "<|im_end|>", "seed", 42);
        double t0 = now_ms();
        st = body ? post_chat(c, h, url, body, &r1, &p1, &g1, &err)
                  : ergo_fail(&err, ERGO_E_NOMEM, "out of memory");
        ms1 = now_ms() - t0;
    }
    zoom_box box;
    zoom_crop zc;
    memset(&zc, 0, sizeof zc);
    zoom_status zs = ZOOM_NONE;
    int64_t v2 = 0;
    if (!st) {
        double t0 = now_ms();
        const char *bt = c->run.box_text ? c->run.box_text : r1;
        zs = zoom_parse(bt, strlen(bt), &box);
        if (zs == ZOOM_OK)
            zs = zoom_map(&box, (double)img->width / w1, (double)img->height / h1, img->width, img->height,
                          ERGO_FACTOR, ERGO_MIN_PIXELS, (int64_t)budget * ERGO_FACTOR * ERGO_FACTOR, &zc);
        if (zs == ZOOM_INVALID) {
            /* the reference raises in crop_with_zoom and drops the sample */
            st = ergo_fail(&err, ERGO_E_FORMAT, "degenerate box: %s", zc.why);
        } else if (zs == ZOOM_OK) {
            image cut = {0};
            st = image_crop(&cut, img, zc.x1, zc.y1, zc.x2, zc.y2, &err);
            if (!st) st = image_resize(&crop, &cut, zc.out_w, zc.out_h, IMAGE_FILTER_LANCZOS, &err);
            image_free(&cut);
            if (!st) v2 = tokens_of(crop.width, crop.height);
            if (!st && !(u2 = png_base64(&crop, &err))) st = ERGO_E_NOMEM;
        } else {
            int hh = 0, ww = 0; /* the whole original, resized by the server's processor */
            if (!smart_resize_qwen(img->height, img->width, ERGO_FACTOR, PROC_MIN_PIXELS, PROC_MAX_PIXELS,
                                   &hh, &ww, &err))
                v2 = tokens_of(ww, hh);
            if (!(u2 = png_base64(img, &err))) st = ERGO_E_NOMEM;
        }
        if (!st) {
            size_t n2 = strlen(full) + strlen(ergo_template2_suffix) + 1;
            t2 = malloc(n2);
            if (!t2) st = ergo_fail(&err, ERGO_E_NOMEM, "out of memory");
            else snprintf(t2, n2, "%s%s", full, ergo_template2_suffix);
        }
        if (!st) {
            json_t *msgs = json_object_get(body, "messages");
            json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content", r1));
            json_array_append_new(msgs, user_turn(u2, t2));
            st = post_chat(c, h, url, body, &r2, &p2, &g2, &err);
        }
        ms2 = now_ms() - t0;
    }
    if (st) {
        eval_record_fail(o, err.msg);
        if (r1) json_object_set_new(o, "stage1_text", json_string(r1));
    } else {
        json_object_set_new(o, "width", json_integer(img->width));
        json_object_set_new(o, "height", json_integer(img->height));
        json_object_set_new(o, "stage1_text", json_string(r1));
        json_object_set_new(o, "stage2_text", json_string(r2));
        json_object_set_new(o, "vision_tokens", json_pack("[I,I]", (json_int_t)tokens_of(w1, h1), (json_int_t)v2));
        json_object_set_new(o, "prompt_tokens", json_pack("[I,I]", (json_int_t)p1, (json_int_t)p2));
        json_object_set_new(o, "generated_tokens", json_pack("[I,I]", (json_int_t)g1, (json_int_t)g2));
        json_object_set_new(o, "time_ms", json_pack("[f,f]", ms1, ms2));
        json_t *bj = json_pack("{s:s}", "status", zoom_status_name(zs));
        if (zs == ZOOM_OK) {
            json_object_set_new(bj, "original", json_pack("[i,i,i,i]", zc.x1, zc.y1, zc.x2, zc.y2));
            json_object_set_new(bj, "area_fraction",
                                json_real((double)(zc.x2 - zc.x1) * (zc.y2 - zc.y1) /
                                          ((double)img->width * img->height)));
        }
        json_object_set_new(o, "box", bj);
        json_object_set_new(o, "view", json_string(zs == ZOOM_OK ? "crop" : "fallback_full"));
        char *ans = ergo_extract_answer(r2);
        json_object_set_new(o, "answer", json_string(ans ? ans : ""));
        free(ans);
        eval_record_score(o, r2, s->label);
    }
    json_decref(body);
    image_free(&small), image_free(&crop);
    free(u1), free(u2), free(t1), free(t2), free(r1), free(r2), free(full);
}

/* One sample's requests, on a worker thread with its own curl handle. */
typedef struct job {
    const eval_config *c;
    const char *url;
    CURL *h;
    bench_sample smp;
    json_t *recs[EVAL_MAX_BUDGETS]; /* NULL: already in the results */
} job;

static void *job_main(void *p) {
    job *j = p;
    image img = {0};
    char img_err[sizeof(ergo_error)] = "";
    if (!j->smp.failed) {
        ergo_error ie = {0};
        if (j->smp.image_path ? image_decode_file(&img, j->smp.image_path, NULL, &ie)
                              : image_decode_memory(&img, j->smp.image, j->smp.image_size, j->smp.key, NULL, &ie))
            snprintf(img_err, sizeof img_err, "%s", ie.msg);
    }
    for (int b = 0; b < j->c->n_budgets; b++) {
        if (!j->recs[b]) continue;
        if (j->smp.failed || img_err[0]) eval_record_fail(j->recs[b], j->smp.failed ? j->smp.error : img_err);
        else run_sample(j->c, j->h, j->url, &j->smp, &img, j->c->budgets[b], j->recs[b]);
    }
    image_free(&img);
    return NULL;
}

/* Runs jobs[0..n) at once (one thread each: at most --concurrency samples, so requests,
 * in flight, as the reference's semaphore), then appends their records in order. */
static ergo_status run_jobs(job *jobs, int n, int fd, const char *path, int64_t *correct, int64_t *fresh,
                            ergo_error *err) {
    pthread_t th[256];
    int started[256] = {0};
    for (int i = 0; i < n; i++) started[i] = n == 1 ? 0 : pthread_create(&th[i], NULL, job_main, &jobs[i]) == 0;
    for (int i = 0; i < n; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else job_main(&jobs[i]); /* one job, or a thread that could not start */
    }
    ergo_status s = ERGO_OK;
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < EVAL_MAX_BUDGETS; b++) {
            if (!jobs[i].recs[b]) continue;
            *correct += json_is_true(json_object_get(jobs[i].recs[b], "correct"));
            if (!s) s = eval_append(fd, jobs[i].recs[b], path, err);
            (*fresh)++;
            json_decref(jobs[i].recs[b]);
            jobs[i].recs[b] = NULL;
        }
        bench_sample_free(&jobs[i].smp);
    }
    return s;
}

ergo_status eval_run_endpoint(const eval_config *c, ergo_error *err) {
    if (c->modes != EVAL_MODE_ERGO || c->probe)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "--endpoint runs ERGO's two requests only (--mode ergo, no --crop-probe)");
    char url[4096];
    size_t ul = strlen(c->endpoint);
    while (ul && c->endpoint[ul - 1] == '/') ul--;
    if (ul + 20 >= sizeof url) return ergo_fail(err, ERGO_E_ARG, "--endpoint URL too long");
    snprintf(url, sizeof url, "%.*s/chat/completions", (int)ul, c->endpoint);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) /* before any thread */
        return ergo_fail(err, ERGO_E_IO, "cannot initialise libcurl");
    int conc = c->concurrency < 1 ? 1 : c->concurrency > 256 ? 256 : c->concurrency;
    char path[4096];
    json_t *done = NULL;
    int fd = -1;
    ergo_status s = eval_open_results(c, path, sizeof path, &done, &fd, err);
    if (s) return s;
    bench_iter *it = NULL;
    job *jobs = calloc((size_t)conc, sizeof *jobs);
    if (!jobs) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    for (int i = 0; !s && i < conc; i++) {
        jobs[i].c = c, jobs[i].url = url;
        if (!(jobs[i].h = curl_easy_init())) s = ergo_fail(err, ERGO_E_NOMEM, "cannot start libcurl");
    }
    if (!s) s = bench_open(&it, c->kind, c->data_root, NULL, err);
    int64_t idx = 0, n_done = 0, correct = 0, fresh = 0,
            total = c->limit > 0 ? (c->limit - c->shard_i + c->shard_n - 1) / c->shard_n : 0;
    int nj = 0, end = 0;
    double t0 = now_ms();
    while (!s && !end) {
        bench_sample smp;
        int stop = 0;
        memset(&smp, 0, sizeof smp);
        if ((s = bench_next(it, &smp, &end, err))) break;
        if (!end && !eval_takes(c, &smp, &idx, &stop)) {
            bench_sample_free(&smp);
            if (stop) end = 1;
            else continue;
        }
        if (!end) {
            int need = 0;
            for (int b = 0; b < c->n_budgets; b++) {
                json_t *rec = eval_record_base(c, &smp, "ergo", c->budgets[b]);
                json_t *prev = json_object_get(done, json_string_value(json_object_get(rec, "id")));
                if (prev) {
                    correct += json_is_true(json_object_get(prev, "correct"));
                    json_decref(rec);
                    rec = NULL;
                }
                jobs[nj].recs[b] = rec;
                need += rec != NULL;
            }
            n_done++;
            if (need) jobs[nj++].smp = smp;
            else bench_sample_free(&smp);
        }
        if (nj == conc || (end && nj)) {
            s = run_jobs(jobs, nj, fd, path, &correct, &fresh, err);
            nj = 0;
            eval_progress(c, n_done, total > n_done ? total : n_done, correct, n_done * c->n_budgets, t0,
                          fresh / c->n_budgets, 0);
        }
    }
    for (int i = 0; jobs && i < nj; i++) { /* after a failure: what was not run */
        for (int b = 0; b < EVAL_MAX_BUDGETS; b++) json_decref(jobs[i].recs[b]);
        bench_sample_free(&jobs[i].smp);
    }
    if (c->progress == 1) fputc('\n', stderr);
    if (it) bench_close(it);
    for (int i = 0; jobs && i < conc; i++)
        if (jobs[i].h) curl_easy_cleanup(jobs[i].h);
    free(jobs);
    close(fd);
    json_decref(done);
    if (!s) s = eval_summarize(c->out_dir, c, NULL, err);
    return s;
}
