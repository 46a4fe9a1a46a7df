/*
 * test_judge.c - the region reward's judge (src/train/judge.h, judge_cache.h):
 *   - the oracle on synthetic items: right iff the crop holds the target tag (coverage
 *     and scale thresholds), and the synth task's own SFT box scores every reward;
 *   - the endpoint judge against a loopback libmicrohttpd server in this process: the
 *     request's shape, an answer, a 500 then an answer (retried), a timeout (dropped and
 *     counted, never cached, and the rollout dropped by reward_score), a 404 (dropped at
 *     once); the cache (a repeated crop and question costs no request; another pixel or
 *     another question does), persisted to JSONL and read back by a reopened judge, a
 *     torn last line cut off, another judge's lines ignored, a malformed line refused;
 *   - the in-process judge on a tiny random checkpoint: it answers, greedily, the same
 *     text twice from two judges; on an engine already loaded (`shared`) it answers what
 *     the endpoint judge gets from `ergo serve` (src/serve, in this process) on that engine.
 */
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "io/random_checkpoint.h"
#include "serve/server.h"
#include "synth/synth.h"
#include "train/judge.h"
#include "train/judge_cache.h"
#include "train/reward.h"

static const char *scratch(const char *name) {
    static char bufs[8][1100];
    static int k;
    char *p = bufs[k++ & 7];
    snprintf(p, 1100, "%s/judge/%s", scratch_dir(), name);
    return p;
}

static int make_image(image *im, int w, int h, uint32_t seed) {
    ergo_error err = {0};
    if (image_alloc(im, w, h, &err)) {
        CHECK(0, "image: %s", err.msg);
        return 0;
    }
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        x = x * 1664525u + 1013904223u;
        im->rgb[i] = (uint8_t)(x >> 24);
    }
    return 1;
}

/* ------------------------------------------------------------ the oracle */

static judge *open_oracle(double coverage, double scale) {
    judge_config jc;
    judge_config_default(&jc);
    jc.kind = JUDGE_ORACLE;
    jc.oracle_min_coverage = coverage;
    jc.oracle_min_scale = scale;
    judge *j = NULL;
    ergo_error err = {0};
    CHECK(judge_open(&j, &jc, &err) == ERGO_OK, "oracle: %s", err.msg);
    return j;
}

/* The oracle's answer to a crop of the original (the crop image at scale `scale`). */
static int oracle_right(judge *j, const synth_sample *s, const int box[4], double scale) {
    char label[2] = {(char)('A' + s->label), 0};
    int gt[4];
    judge_synth_gt_box(s, gt);
    image crop = {0};
    int w = (int)((box[2] - box[0]) * scale), h = (int)((box[3] - box[1]) * scale);
    if (!make_image(&crop, w > 0 ? w : 1, h > 0 ? h : 1, 1)) return -1;
    judge_query q = {&crop, s->text, label, {box[0], box[1], box[2], box[3]}, gt};
    judge_answer a;
    ergo_error err = {0};
    ergo_status st = judge_ask(j, &q, &a, &err);
    image_free(&crop);
    CHECK(st == ERGO_OK && a.text && !a.dropped && !a.cached, "oracle ask: %s", err.msg);
    int r = st ? -1 : reward_letter_match(a.text, label);
    judge_answer_free(&a);
    return r;
}

static void test_oracle(void) {
    synth_config sc;
    synth_config_default(&sc);
    judge *j = open_oracle(1.0, 0), *half = open_oracle(0.4, 0), *legible = open_oracle(1.0, 1.0);
    if (!j || !half || !legible) goto out;
    for (int64_t i = 0; i < 2; i++) {
        synth_sample s;
        ergo_error err = {0};
        if (synth_generate(&sc, 7, SYNTH_TEST, i, &s, &err)) {
            CHECK(0, "synth: %s", err.msg);
            synth_sample_free(&s);
            continue;
        }
        int gt[4];
        judge_synth_gt_box(&s, gt);
        const synth_tag *t = &s.tags[s.landmarks[s.target].tag];
        CHECK(t->landmark == s.target && gt[2] > gt[0], "gt box of item %lld is the target's tag", (long long)i);
        int around[4] = {gt[0] - 8, gt[1] - 8, gt[2] + 8, gt[3] + 8};
        CHECK(oracle_right(j, &s, around, 1.0) == 1, "item %lld: a crop around the tag is answered right", (long long)i);
        CHECK(oracle_right(j, &s, gt, 1.0) == 1, "item %lld: the tag's own box is answered right", (long long)i);
        /* another tag's box: disjoint from the target's */
        const synth_tag *o = &s.tags[(s.landmarks[s.target].tag + 1) % s.n_tags];
        int other[4] = {o->x1, o->y1, o->x2, o->y2};
        CHECK(oracle_right(j, &s, other, 1.0) == 0, "item %lld: another tag's box is answered wrong", (long long)i);
        /* the left half of the tag: wrong at coverage 1, right at 0.4 */
        int left[4] = {gt[0] - 8, gt[1] - 8, (gt[0] + gt[2]) / 2, gt[3] + 8};
        CHECK(oracle_right(j, &s, left, 1.0) == 0, "item %lld: half the tag, coverage 1", (long long)i);
        CHECK(oracle_right(half, &s, left, 1.0) == 1, "item %lld: half the tag, coverage 0.4", (long long)i);
        /* legibility: the crop shown at half scale fails a scale-1 threshold */
        CHECK(oracle_right(legible, &s, around, 1.0) == 1, "item %lld: native crop, scale >= 1", (long long)i);
        CHECK(oracle_right(legible, &s, around, 0.5) == 0, "item %lld: half-scale crop, scale >= 1", (long long)i);

        /* the synth task's SFT answer, read as inference reads it, earns every reward */
        synth_sft f;
        if (synth_sft_make(&sc, &s, 7, SYNTH_TEST, &f, &err)) {
            CHECK(0, "sft: %s", err.msg);
        } else {
            reward_rollout ro;
            memset(&ro, 0, sizeof ro);
            char label[2] = {(char)('A' + s.label), 0};
            ro.item = "synth item";
            ro.stage1_text = f.stage1;
            ro.stage2_text = f.stage2;
            ro.label = label;
            ro.width = s.img.width, ro.height = s.img.height;
            ro.box_status = reward_box_of(f.stage1, (double)s.img.width / f.w1, (double)s.img.height / f.h1,
                                          s.img.width, s.img.height, (int64_t)sc.stage1_tokens * 28 * 28, &ro.crop);
            CHECK(ro.box_status == ZOOM_OK && ro.crop.x1 == f.crop[0] && ro.crop.y1 == f.crop[1] &&
                      ro.crop.x2 == f.crop[2] && ro.crop.y2 == f.crop[3],
                  "item %lld: reward_box_of [%d, %d, %d, %d], synth's crop [%d, %d, %d, %d]", (long long)i, ro.crop.x1,
                  ro.crop.y1, ro.crop.x2, ro.crop.y2, f.crop[0], f.crop[1], f.crop[2], f.crop[3]);
            image cimg = {0};
            if (make_image(&cimg, f.crop_w, f.crop_h, 3)) {
                ro.crop_image = &cimg;
                ro.question = s.text;
                ro.gt_box = gt;
                reward_config rc;
                reward_config_default(&rc);
                reward_parts p;
                ergo_status st = reward_score(&rc, j, &ro, &p, &err);
                double area = (double)(f.crop[2] - f.crop[0]) * (f.crop[3] - f.crop[1]) /
                              ((double)s.img.width * s.img.height);
                double want = 1.0 + 0.5 * (area <= 0.6) + 1.0 + 1.0;
                CHECK(st == ERGO_OK && p.judge_asked && p.r_region == 1 && p.r_acc == 1 && p.r_format == 1 &&
                          fabs(p.total - want) < 1e-12,
                      "item %lld: SFT rollout: %s region %g acc %g format %g R %g (want %g)", (long long)i, err.msg,
                      p.r_region, p.r_acc, p.r_format, p.total, want);
                image_free(&cimg);
            }
        }
        synth_sample_free(&s);
    }
    /* an oracle query without ground truth is an error, not a wrong answer */
    image tiny = {0};
    if (make_image(&tiny, 8, 8, 2)) {
        judge_query q = {&tiny, "q", "A", {0, 0, 8, 8}, NULL};
        judge_answer a;
        ergo_error err = {0};
        CHECK(judge_ask(j, &q, &a, &err) == ERGO_E_ARG && strstr(err.msg, "ground-truth"),
              "oracle without gt: %s", err.msg);
        image_free(&tiny);
    }
out:
    judge_close(j);
    judge_close(half);
    judge_close(legible);
}

/* ------------------------------------------------------------ a loopback endpoint */

typedef struct server {
    pthread_mutex_t mu;
    int requests;       /* every request */
    int fail_500;       /* answer this many requests with 500 first */
    int status;         /* != 0: answer every request with this status */
    int delay_ms;       /* sleep before answering (a judge that times out) */
    const char *answer; /* the assistant content */
    const char *want_model; /* NULL: the request must have no "model" */
    const char *want_question;
    int bad;
    char why[256];
} server;

typedef struct upload { char *p; size_t n; } upload;

static void bad(server *sv, const char *why) {
    sv->bad++;
    snprintf(sv->why, sizeof sv->why, "%s", why);
}

static void check_request(server *sv, json_t *b) {
    if (!b) { bad(sv, "body is not JSON"); return; }
    json_t *mf = json_object_get(b, "model");
    if (sv->want_model ? !json_is_string(mf) || strcmp(json_string_value(mf), sv->want_model) : mf != NULL)
        bad(sv, "model field");
    if (!json_is_number(json_object_get(b, "temperature")) || json_number_value(json_object_get(b, "temperature")) != 0)
        bad(sv, "temperature is not 0");
    if (json_integer_value(json_object_get(b, "max_tokens")) != 16) bad(sv, "max_tokens is not 16");
    json_t *msgs = json_object_get(b, "messages");
    if (json_array_size(msgs) != 1) { bad(sv, "not one message"); return; }
    json_t *u = json_array_get(msgs, 0);
    json_t *c = json_object_get(u, "content");
    const char *url = json_string_value(json_object_get(json_object_get(json_array_get(c, 0), "image_url"), "url"));
    const char *txt = json_string_value(json_object_get(json_array_get(c, 1), "text"));
    const char *role = json_string_value(json_object_get(u, "role"));
    if (!role || strcmp(role, "user")) bad(sv, "not a user message");
    if (!url || strncmp(url, "data:image/png;base64,iVBORw0KGgo", 33)) bad(sv, "no PNG data URL first");
    if (!txt || strcmp(txt, sv->want_question)) bad(sv, "the text is not the question");
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *data, size_t *data_size, void **con_cls) {
    server *sv = cls;
    upload *up = *con_cls;
    if (!up) {
        *con_cls = calloc(1, sizeof(upload));
        return *con_cls ? MHD_YES : MHD_NO;
    }
    if (*data_size) {
        char *q = realloc(up->p, up->n + *data_size + 1);
        if (!q) return MHD_NO;
        memcpy(q + up->n, data, *data_size);
        up->p = q, up->n += *data_size, up->p[up->n] = 0;
        *data_size = 0;
        return MHD_YES;
    }
    json_t *b = json_loadb(up->p ? up->p : "", up->n, 0, NULL);
    pthread_mutex_lock(&sv->mu);
    sv->requests++;
    if (strcmp(url, "/v1/chat/completions") || strcmp(method, "POST")) bad(sv, "not POST /v1/chat/completions");
    check_request(sv, b);
    unsigned code = 200;
    if (sv->status) code = (unsigned)sv->status;
    else if (sv->fail_500 > 0) sv->fail_500--, code = 500;
    int delay = sv->delay_ms;
    char reply[512];
    if (code == 200)
        snprintf(reply, sizeof reply,
                 "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
                 "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}",
                 sv->answer);
    else
        snprintf(reply, sizeof reply, "{\"error\":{\"message\":\"status %u\",\"type\":\"server_error\"}}", code);
    pthread_mutex_unlock(&sv->mu);
    json_decref(b);
    if (delay) usleep((useconds_t)delay * 1000);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(reply), reply, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t) {
    upload *u = *con_cls;
    if (u) free(u->p);
    free(u);
    *con_cls = NULL;
}

static int g_port;

static judge *open_endpoint(const char *model_name, const char *cache, long timeout_ms, ergo_error *err) {
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/", g_port);
    judge_config jc;
    judge_config_default(&jc);
    jc.kind = JUDGE_ENDPOINT;
    jc.url = url;
    jc.model_name = model_name;
    jc.max_new_tokens = 16;
    jc.cache_path = cache;
    jc.client.max_retries = 1;
    jc.client.retry_base_ms = 10;
    jc.client.timeout_ms = timeout_ms;
    judge *j = NULL;
    if (judge_open(&j, &jc, err)) return NULL;
    return j;
}

static int requests(server *sv) {
    pthread_mutex_lock(&sv->mu);
    int n = sv->requests;
    pthread_mutex_unlock(&sv->mu);
    return n;
}

static void ask(judge *j, const image *crop, const char *question, judge_answer *a, const char *what) {
    judge_query q = {crop, question, "B", {0, 0, crop->width, crop->height}, NULL};
    ergo_error err = {0};
    ergo_status s = judge_ask(j, &q, a, &err);
    CHECK(s == ERGO_OK, "%s: %s", what, err.msg);
}

static void test_endpoint(void) {
    server sv;
    memset(&sv, 0, sizeof sv);
    pthread_mutex_init(&sv.mu, NULL);
    sv.answer = "B";
    const char *question = "What is the code on the tag below the red circle?\n(A) 111\n(B) 552\n"
                           "(C) 907\n(D) 340\nAnswer with the option's letter from the given choices directly.";
    sv.want_question = question;
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                                            NULL, handler, &sv, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                                            MHD_OPTION_END);
    if (!d) {
        SKIP("cannot start a loopback HTTP server: the endpoint judge is not tested");
        pthread_mutex_destroy(&sv.mu);
        return;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    g_port = info ? info->port : 0;
    image crop = {0}, crop2 = {0};
    ergo_error err = {0};
    judge *j = NULL;
    if (!make_image(&crop, 60, 40, 5) || !make_image(&crop2, 60, 40, 5)) goto out;
    crop2.rgb[100] ^= 1; /* one pixel differs */
    j = open_endpoint(NULL, NULL, 5000, &err);
    CHECK(j != NULL, "endpoint judge: %s", err.msg);
    if (!j) goto out;

    /* an answer, then the cache */
    judge_answer a;
    ask(j, &crop, question, &a, "answer");
    CHECK(!a.dropped && !a.cached && a.text && !strcmp(a.text, "B") && requests(&sv) == 1,
          "answer: dropped %d cached %d text %s requests %d", a.dropped, a.cached, a.text ? a.text : "-", requests(&sv));
    judge_answer_free(&a);
    ask(j, &crop, question, &a, "again");
    CHECK(a.cached && a.text && !strcmp(a.text, "B") && requests(&sv) == 1, "same crop and question: cached %d, requests %d",
          a.cached, requests(&sv));
    judge_answer_free(&a);
    ask(j, &crop2, question, &a, "another pixel");
    CHECK(!a.cached && requests(&sv) == 2, "another pixel: cached %d, requests %d", a.cached, requests(&sv));
    judge_answer_free(&a);
    sv.want_question = "Another question?";
    ask(j, &crop, "Another question?", &a, "another question");
    CHECK(!a.cached && requests(&sv) == 3, "another question: cached %d, requests %d", a.cached, requests(&sv));
    judge_answer_free(&a);
    sv.want_question = question;

    /* a 500, then the answer: retried */
    sv.fail_500 = 1;
    image c3 = {0};
    if (make_image(&c3, 30, 30, 9)) {
        ask(j, &c3, question, &a, "500 then OK");
        judge_stats st;
        judge_get_stats(j, &st);
        CHECK(!a.dropped && a.text && !strcmp(a.text, "B") && requests(&sv) == 5 && st.retries == 1,
              "500 then OK: dropped %d requests %d retries %lld", a.dropped, requests(&sv), (long long)st.retries);
        judge_answer_free(&a);
        image_free(&c3);
    }
    judge_close(j);

    /* a judge that times out: retried once, then dropped and counted, never cached */
    j = open_endpoint(NULL, NULL, 150, &err);
    CHECK(j != NULL, "endpoint judge: %s", err.msg);
    if (j) {
        sv.delay_ms = 600;
        int before = requests(&sv);
        ask(j, &crop, question, &a, "timeout");
        judge_stats st;
        judge_get_stats(j, &st);
        CHECK(a.dropped && !a.text && strstr(a.why, "127.0.0.1") && st.dropped == 1 && st.asked == 1 &&
                  st.requests == 2 && !strcmp(st.last_drop, a.why),
              "timeout: dropped %d why \"%s\" stats dropped %lld requests %lld", a.dropped, a.why,
              (long long)st.dropped, (long long)st.requests);
        judge_answer_free(&a);
        /* the rollout is dropped, and counted in the reward log */
        reward_config rc;
        reward_config_default(&rc);
        reward_rollout ro;
        memset(&ro, 0, sizeof ro);
        ro.item = "timeout item";
        ro.stage1_text = "<think>x</think><zoom>[0, 0, 10, 10]</zoom>";
        ro.stage2_text = "<answer>B</answer>";
        ro.label = "B";
        ro.width = 100, ro.height = 100;
        ro.box_status = reward_box_of(ro.stage1_text, 1, 1, 100, 100, 64 * 784, &ro.crop);
        ro.crop_image = &crop;
        ro.question = question;
        reward_parts p;
        ergo_status s = reward_score(&rc, j, &ro, &p, &err);
        reward_stats rs;
        memset(&rs, 0, sizeof rs);
        reward_stats_add(&rs, &p);
        CHECK(s == ERGO_OK && p.dropped && rs.dropped == 1 && rs.n == 0, "timeout rollout: %s dropped %d", err.msg,
              p.dropped);
        judge_get_stats(j, &st);
        CHECK(st.dropped == 2 && st.cached == 0, "a drop is not cached: dropped %lld cached %lld", (long long)st.dropped,
              (long long)st.cached);
        sv.delay_ms = 0;
        usleep(700 * 1000); /* the server's sleeping threads finish */
        (void)before;
        judge_close(j);
    }

    /* a refusal (404): dropped at once, no retry */
    j = open_endpoint(NULL, NULL, 5000, &err);
    if (j) {
        sv.status = 404;
        int before = requests(&sv);
        ask(j, &crop, question, &a, "404");
        CHECK(a.dropped && strstr(a.why, "HTTP 404") && requests(&sv) == before + 1,
              "404: dropped %d why \"%s\" requests %d", a.dropped, a.why, requests(&sv) - before);
        judge_answer_free(&a);
        sv.status = 0;
        judge_close(j);
    }

    /* the cache file: a reopened judge reads it back */
    const char *cp = scratch("cache.jsonl");
    sv.want_model = "judge-72b";
    j = open_endpoint("judge-72b", cp, 5000, &err);
    CHECK(j != NULL, "cached judge: %s", err.msg);
    if (j) {
        int before = requests(&sv);
        ask(j, &crop, question, &a, "persisted");
        CHECK(!a.cached && requests(&sv) == before + 1, "persisted: first ask");
        judge_answer_free(&a);
        judge_close(j);
        /* a torn last line, as a crash mid-write leaves it */
        FILE *f = fopen(cp, "ab");
        if (f) fputs("{\"judge\": \"endpoint:", f), fclose(f);
        j = open_endpoint("judge-72b", cp, 5000, &err);
        CHECK(j != NULL, "reopened: %s", err.msg);
        if (j) {
            judge_stats st;
            judge_get_stats(j, &st);
            ask(j, &crop, question, &a, "resumed");
            CHECK(st.loaded == 1 && a.cached && a.text && !strcmp(a.text, "B") && requests(&sv) == before + 1,
                  "resumed: loaded %lld cached %d requests %d", (long long)st.loaded, a.cached, requests(&sv) - before);
            judge_answer_free(&a);
            ask(j, &crop2, question, &a, "second line");
            judge_answer_free(&a);
            judge_close(j);
        }
        /* the torn line was cut: every line of the file is a record */
        char *txt = NULL;
        size_t n = 0;
        int lines = 0, good = 1;
        if (!file_read_all(cp, 1 << 20, &txt, &n, &err)) {
            for (char *p = txt, *nl; (nl = memchr(p, '\n', (size_t)(txt + n - p))); p = nl + 1) {
                json_t *r = json_loadb(p, (size_t)(nl - p), 0, NULL);
                const char *ra = json_string_value(json_object_get(r, "answer"));
                const char *rq = json_string_value(json_object_get(r, "question"));
                good &= ra && rq && !strcmp(ra, "B") && !strcmp(rq, question);
                json_decref(r);
                lines++;
            }
            good &= n > 0 && txt[n - 1] == '\n';
        }
        free(txt);
        CHECK(lines == 2 && good, "cache file: %d lines, all records %d", lines, good);
        /* another judge (another model) does not read these answers */
        sv.want_model = "judge-7b";
        j = open_endpoint("judge-7b", cp, 5000, &err);
        if (j) {
            judge_stats st;
            judge_get_stats(j, &st);
            int b2 = requests(&sv);
            ask(j, &crop, question, &a, "other judge");
            CHECK(st.loaded == 0 && !a.cached && requests(&sv) == b2 + 1, "another judge: loaded %lld cached %d",
                  (long long)st.loaded, a.cached);
            judge_answer_free(&a);
            judge_close(j);
        }
        /* a line that is not a record is refused with its number */
        const char *bp = scratch("bad_cache.jsonl");
        f = fopen(bp, "wb");
        if (f) fputs("{\"judge\":\"x\",\"crop\":\"a\"}\nnot json\n", f), fclose(f);
        j = open_endpoint("judge-7b", bp, 5000, &err);
        CHECK(j == NULL && strstr(err.msg, "line 1"), "malformed cache line: %s", err.msg);
        judge_close(j);
        j = NULL;
    }
    CHECK(sv.bad == 0, "endpoint: %d badly shaped requests, last: %s", sv.bad, sv.why);
out:
    MHD_stop_daemon(d);
    pthread_mutex_destroy(&sv.mu);
    image_free(&crop);
    image_free(&crop2);
}

/* ------------------------------------------------------------ the in-process judge */

/* A tiny f32 model with the real vocabulary and tokenizer (as test_train_sft's). */
static int write_model(const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/checkpoints/cases/flat_new_f32_tied.json", fixtures_dir());
    ergo_error err = {0};
    json_t *root = json_load_path(path, &err);
    CHECK(root != NULL, "%s: %s", path, err.msg);
    if (!root) return 0;
    json_t *cfg = json_object_get(root, "config");
    json_object_set_new(cfg, "hidden_size", json_integer(32));
    json_object_set_new(cfg, "num_attention_heads", json_integer(2));
    json_object_set_new(cfg, "num_key_value_heads", json_integer(1));
    json_object_set_new(cfg, "intermediate_size", json_integer(64));
    json_t *vc = json_object_get(cfg, "vision_config");
    json_object_set_new(vc, "out_hidden_size", json_integer(32));
    json_object_set_new(vc, "depth", json_integer(2));
    json_object_set_new(vc, "fullatt_block_indexes", json_pack("[i]", 1));
    json_object_set_new(root, "dtype", json_string("f32"));
    ckpt_case c;
    ergo_status s = ckpt_case_parse(&c, root, "judge case", &err);
    json_decref(root);
    CHECK(s == ERGO_OK, "judge case: %s", err.msg);
    if (s) return 0;
    s = random_checkpoint_write(&c, dir, "assets/qwen2.5-vl-tokenizer", &err);
    ckpt_case_free(&c);
    CHECK(s == ERGO_OK, "writing the judge model: %s", err.msg);
    return s == ERGO_OK;
}

static void test_in_process(void) {
    const char *dir = scratch("model");
    if (!write_model(dir)) return;
    judge_config jc;
    judge_config_default(&jc);
    jc.kind = JUDGE_MODEL;
    jc.model_dir = dir;
    jc.max_new_tokens = 4;
    jc.max_vision_tokens = 16;
    judge *a = NULL, *b = NULL;
    ergo_error err = {0};
    CHECK(judge_open(&a, &jc, &err) == ERGO_OK, "in-process judge: %s", err.msg);
    if (a) CHECK(judge_open(&b, &jc, &err) == ERGO_OK, "second in-process judge: %s", err.msg);
    image crop = {0};
    if (a && b && make_image(&crop, 150, 90, 11)) {
        judge_answer x, y, z;
        ask(a, &crop, "What is on the tag?\n(A) 1\n(B) 2\nAnswer with the option's letter.", &x, "in-process");
        ask(b, &crop, "What is on the tag?\n(A) 1\n(B) 2\nAnswer with the option's letter.", &y, "in-process, again");
        ask(a, &crop, "What is on the tag?\n(A) 1\n(B) 2\nAnswer with the option's letter.", &z, "in-process, cached");
        CHECK(x.text && y.text && !x.dropped && !x.cached && !y.cached && !strcmp(x.text, y.text),
              "greedy twice: \"%s\" vs \"%s\"", x.text ? x.text : "-", y.text ? y.text : "-");
        CHECK(z.cached && z.text && x.text && !strcmp(z.text, x.text), "in-process cache: cached %d", z.cached);
        judge_stats st;
        judge_get_stats(a, &st);
        CHECK(st.asked == 2 && st.answered == 1 && st.cached == 1 && st.dropped == 0,
              "in-process stats: asked %lld answered %lld cached %lld", (long long)st.asked, (long long)st.answered,
              (long long)st.cached);
        judge_answer_free(&x);
        judge_answer_free(&y);
        judge_answer_free(&z);
    }
    judge_close(a);
    judge_close(b);

    /* one engine: an in-process judge on it, and ergo serve on it asked as an endpoint */
    engine e;
    memset(&e, 0, sizeof e);
    if (crop.rgb && !engine_load(&e, dir, NULL, &err)) {
        judge_config mc = jc;
        mc.shared = &e;
        judge *m = NULL, *ep = NULL;
        serve_options so;
        serve_options_default(&so);
        so.port = 0;
        server *sv = NULL;
        CHECK(judge_open(&m, &mc, &err) == ERGO_OK, "shared-engine judge: %s", err.msg);
        if (server_start(&sv, &e, &so, &err)) {
            SKIP("cannot start ergo serve on 127.0.0.1: %s", err.msg);
            sv = NULL;
        }
        if (m && sv) {
            char url[128];
            snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", server_port(sv));
            judge_config ec;
            judge_config_default(&ec);
            ec.kind = JUDGE_ENDPOINT;
            ec.url = url;
            ec.max_new_tokens = jc.max_new_tokens;
            ec.max_vision_tokens = jc.max_vision_tokens;
            CHECK(judge_open(&ep, &ec, &err) == ERGO_OK, "endpoint judge on ergo serve: %s", err.msg);
            const char *q = "Which option is shown?\n(A) red\n(B) blue\nAnswer with the option's letter.";
            judge_answer x, y;
            ask(m, &crop, q, &x, "shared engine");
            if (ep) {
                ask(ep, &crop, q, &y, "ergo serve");
                CHECK(x.text && y.text && !y.dropped && !strcmp(x.text, y.text),
                      "in process \"%s\" vs ergo serve \"%s\" (dropped %d: %s)", x.text ? x.text : "-",
                      y.text ? y.text : "-", y.dropped, y.why);
                judge_answer_free(&y);
            }
            judge_answer_free(&x);
        }
        judge_close(ep);
        if (sv) server_stop(sv);
        judge_close(m);
    }
    engine_free(&e);
    image_free(&crop);
    /* a missing checkpoint is an error naming it */
    jc.model_dir = scratch("no_such_model");
    judge *c = NULL;
    CHECK(judge_open(&c, &jc, &err) != ERGO_OK && strstr(err.msg, "no_such_model"), "missing judge: %s", err.msg);
    judge_close(c);
    judge_config_default(&jc);
    jc.kind = JUDGE_ENDPOINT;
    CHECK(judge_open(&c, &jc, &err) == ERGO_E_ARG && strstr(err.msg, "--judge-url"), "no URL: %s", err.msg);
}

void test_judge(void) {
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/judge", scratch_dir());
    mkdir(dir, 0777);
    test_oracle();
    test_endpoint();
    test_in_process();
}
