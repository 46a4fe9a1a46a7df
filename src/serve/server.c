/*
 * server.c - the HTTP side (libmicrohttpd, one thread per connection), admission
 * (slots + a bounded queue), and the scheduler thread that owns every session.
 */
#include "serve/server.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <nettle/sha2.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "image/image.h"
#include "runtime/context.h"
#include "runtime/scheduler.h"
#include "serve/openai.h"

void serve_options_default(serve_options *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->model_name = "ergo";
    o->parallel = 2;
    o->queue = 8;
    o->max_body_bytes = (int64_t)256 << 20;
    o->max_images = 16;
    o->timeout_s = 600;
    o->cache_bytes = (size_t)2048 << 20;
    o->vision_cache_bytes = (size_t)256 << 20;
}

/* Latency histogram bounds (seconds) of /metrics. */
static const double LAT_BOUNDS[] = {0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300};
#define N_LAT (sizeof LAT_BOUNDS / sizeof *LAT_BOUNDS)

typedef struct job job;

/* A finished conversation kept for prefix reuse (llama.cpp's slot cache): its session
 * (KV blocks shared with forks) and the SHA-256 of each of its images. */
typedef struct centry {
    session s;
    uint8_t (*hash)[32];  /* (s.n_images) */
    size_t bytes;         /* the KV bytes it holds (counted whole: shared blocks twice) */
    uint64_t used;        /* LRU stamp */
    struct centry *next;
} centry;

/* One image's encoded vision rows, kept so a request repeating an image (the
 * reference client's stage 2 repeats stage 1's) skips the encoder. Keyed by SHA-256
 * over width, height, the preprocessing limits and the RGB bytes: they fix the grid. */
typedef struct ventry {
    uint8_t key[32];
    mrope_grid grid;
    int64_t tokens;
    float *rows;          /* (tokens, D) */
    size_t bytes;
    uint64_t used;        /* LRU stamp */
    struct ventry *next;
} ventry;

struct server {
    const engine *e;
    serve_options o;
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t work;  /* the scheduler thread: pending jobs, cancels, quit */
    pthread_cond_t done;  /* connection threads: a job progressed or finished; a slot freed */
    pthread_t sched_thread;
    int sched_started;
    int stopping;
    /* the scheduler thread's: its context (text state + the ONE KV pool) */
    context sc_ctx;
    int sc_ready;
    scheduler sc;
    job *pending, *running;
    centry *cache;        /* idle sessions, LRU within o.cache_bytes */
    size_t cache_bytes, kv_token_bytes;
    uint64_t cache_clock;
    /* slots: a context each for the vision encoder */
    context *slot_ctx;
    int *slot_busy;
    int admitted;         /* holding a slot or waiting for one */
    int active;           /* holding a slot */
    uint64_t next_id;
    /* the vision-row cache, shared by the slots, under vmu */
    pthread_mutex_t vmu;
    ventry *vcache;
    size_t vcache_bytes;
    uint64_t vcache_clock, vision_encodes, vision_hits;
    /* metrics */
    uint64_t by_status[6]; /* 2xx 4xx(not 429) 429 5xx ... index via status_bucket */
    uint64_t tok_prompt, tok_cached, tok_generated, tok_vision;
    uint64_t lat_count[N_LAT + 1];
    double lat_sum;
    uint64_t lat_n;
};

struct job {
    server *sv;
    job *next;
    sched_request r;
    session s;
    tok_ids ids;
    mrope_grid *grids;    /* (n_images) */
    int n_images;
    float *vision;        /* (vision_tokens, D) */
    int64_t vision_tokens;
    uint8_t (*hash)[32];  /* (n_images) SHA-256 of width, height, grid and RGB bytes */
    int cached;           /* prompt tokens taken from the prefix cache */
    float *logits;        /* (V) */
    generate_result res;
    char **stops;         /* the request's (oai_request owns them) */
    int n_stops;
    /* under sv->mu */
    tok_text text;        /* visible text, stop strings cut */
    int stop_hit;
    int submitted;        /* taken by the scheduler thread */
    int cancel;
    int finished;         /* the scheduler is done with it (session freed) */
    ergo_status status;
    ergo_error err;
    double deadline;
    double vision_ms;
    int vision_encoded;   /* images of this request run through the encoder (not cached) */
};

/* ---- text: stop strings cut, partial ones held back ---- */

/* Called on the scheduler thread during a tick. */
static int on_text(void *ctx, const char *s, size_t n) {
    job *j = ctx;
    server *sv = j->sv;
    pthread_mutex_lock(&sv->mu);
    const size_t old = j->text.n;
    if (!j->stop_hit && tok_text_append(&j->text, s, n, &j->err) == ERGO_OK) {
        size_t cut = (size_t)-1;
        for (int k = 0; k < j->n_stops; k++) {
            const size_t L = strlen(j->stops[k]);
            const size_t from = old >= L ? old - L + 1 : 0;
            for (size_t p = from; p + L <= j->text.n && p < cut; p++)
                if (!memcmp(j->text.s + p, j->stops[k], L)) {
                    cut = p;
                    break;
                }
        }
        if (cut != (size_t)-1) {
            j->text.n = cut;
            j->stop_hit = 1;
        }
    }
    const int stop = j->stop_hit;
    pthread_cond_broadcast(&sv->done);
    pthread_mutex_unlock(&sv->mu);
    return stop;
}

/* Bytes of j->text that may be sent: all when finished, else all but a tail that
 * could still grow into a stop string. */
static size_t safe_len(const job *j) {
    if (j->finished || j->stop_hit) return j->text.n;
    size_t hold = 0;
    for (int k = 0; k < j->n_stops; k++) {
        const size_t L = strlen(j->stops[k]);
        for (size_t m = L - 1; m > hold; m--)
            if (m <= j->text.n && !memcmp(j->text.s + j->text.n - m, j->stops[k], m)) {
                hold = m;
                break;
            }
    }
    return j->text.n - hold;
}

/* ---- the prefix cache (scheduler thread, under sv->mu) ---- */

static void centry_free(centry *c) {
    session_free(&c->s);
    free(c->hash);
    free(c);
}

/* Tokens of j's prompt that entry c holds: the common prefix of the ids, stopped
 * before the first image whose hash or grid differs, never inside an image, and
 * short of the whole prompt (its last token must run to give logits). */
static int common_prefix(const centry *c, const job *j) {
    const int n = (int)j->ids.n - 1;
    int l = 0;
    while (l < n && l < c->s.n_cached && c->s.tokens[l] == j->ids.v[l]) l++;
    /* the request's images, in order, match the entry's in order */
    const int32_t pad = c->s.ids.image_token_id;
    int k = 0;
    for (int i = 0; i < l; i++) {
        if (j->ids.v[i] != pad || (i > 0 && j->ids.v[i - 1] == pad)) continue;
        /* image k of the request starts at i */
        const int ok = k < c->s.n_images && c->s.image_start[k] == i && k < j->n_images &&
                       !memcmp(c->hash[k], j->hash[k], 32) &&
                       !memcmp(&c->s.grids[k], &j->grids[k], sizeof j->grids[k]);
        int len = 0;
        while (i + len < (int)j->ids.n && j->ids.v[i + len] == pad) len++;
        if (!ok || i + len > l) return i; /* cut before the image (or the image's cut) */
        k++;
        i += len - 1;
    }
    return l;
}

/* Starts j's session from the cached conversation with the longest common prefix
 * (forked: no copy), or empty. Returns the tokens reused. */
static int session_from_cache(server *sv, job *j, ergo_error *err) {
    centry *best = NULL;
    int best_l = 0;
    for (centry *c = sv->cache; c; c = c->next) {
        const int l = common_prefix(c, j);
        if (l > best_l) best = c, best_l = l;
    }
    if (best && best_l >= 1) {
        if (session_fork(&j->s, &best->s, err) == ERGO_OK) {
            if (session_truncate(&j->s, best_l, err) == ERGO_OK) {
                best->used = ++sv->cache_clock;
                return best_l;
            }
            session_free(&j->s);
        }
    }
    return context_session_init(&sv->sc_ctx, &j->s, err) ? -1 : 0;
}

/* Keeps j's finished session (taking it) and evicts least recently used entries
 * beyond the budget. */
static void cache_keep(server *sv, job *j) {
    const size_t bytes = (size_t)j->s.n_cached * sv->kv_token_bytes;
    centry *c = NULL;
    if (!sv->o.cache_bytes || bytes > sv->o.cache_bytes || j->s.n_images != j->n_images ||
        !(c = calloc(1, sizeof *c)) ||
        (j->n_images && !(c->hash = malloc(32 * (size_t)j->n_images)))) {
        free(c);
        session_free(&j->s);
        return;
    }
    c->s = j->s;
    memset(&j->s, 0, sizeof j->s);
    if (j->n_images) memcpy(c->hash, j->hash, 32 * (size_t)j->n_images);
    c->bytes = bytes;
    c->used = ++sv->cache_clock;
    c->next = sv->cache;
    sv->cache = c;
    sv->cache_bytes += bytes;
    while (sv->cache_bytes > sv->o.cache_bytes) {
        centry **lru = &sv->cache;
        for (centry **pp = &sv->cache; *pp; pp = &(*pp)->next)
            if ((*pp)->used < (*lru)->used) lru = pp;
        centry *v = *lru;
        *lru = v->next;
        sv->cache_bytes -= v->bytes;
        centry_free(v);
    }
}

/* ---- the scheduler thread ---- */

static void *sched_main(void *arg) {
    server *sv = arg;
    ergo_error err = {0};
    pthread_mutex_lock(&sv->mu);
    for (;;) {
        while (sv->pending) {
            job *j = sv->pending;
            sv->pending = j->next;
            j->submitted = 1;
            ergo_status st = ERGO_OK;
            const int l = session_from_cache(sv, j, &j->err);
            if (l < 0) st = j->err.code ? j->err.code : ERGO_E_NOMEM;
            if (!st) {
                /* the piece: the prompt past the cached prefix, its images only */
                const size_t D = (size_t)sv->e->m.config.text.hidden;
                int k0 = 0;
                int64_t rows0 = 0;
                while (k0 < j->n_images && j->s.n_images > k0) {
                    const int mg = sv->e->m.config.vision.merge;
                    rows0 += (int64_t)j->grids[k0].t * j->grids[k0].h * j->grids[k0].w / (mg * mg);
                    k0++;
                }
                j->cached = l;
                j->r.s = &j->s;
                j->r.tokens = j->ids.v + l;
                j->r.n_tokens = (int)j->ids.n - l;
                j->r.grids = k0 < j->n_images ? j->grids + k0 : NULL;
                j->r.n_images = j->n_images - k0;
                j->r.vision = k0 < j->n_images ? j->vision + (size_t)rows0 * D : NULL;
                st = sched_submit(&sv->sc, &j->r, &j->err);
                if (st) session_free(&j->s);
            }
            if (st) {
                j->status = st;
                j->finished = 1;
                pthread_cond_broadcast(&sv->done);
                continue;
            }
            j->next = sv->running;
            sv->running = j;
        }
        const double now = now_ms();
        for (job **pp = &sv->running; *pp;) {
            job *j = *pp;
            if (j->r.phase != SCHED_DONE && (j->cancel || sv->stopping || now > j->deadline))
                sched_cancel(&sv->sc, &j->r);
            if (j->r.phase == SCHED_DONE) {
                *pp = j->next;
                if (!j->status) j->status = j->r.status;
                if (j->r.status) j->err = j->r.err;
                if (j->r.status || j->cancel || sv->stopping) session_free(&j->s);
                else cache_keep(sv, j);
                j->finished = 1;
                pthread_cond_broadcast(&sv->done);
            } else {
                pp = &j->next;
            }
        }
        if (!sched_active(&sv->sc)) {
            if (sv->stopping == 2 && !sv->pending && !sv->running) break;
            pthread_cond_wait(&sv->work, &sv->mu);
            continue;
        }
        pthread_mutex_unlock(&sv->mu);
        if (sched_tick(&sv->sc, &err)) fprintf(stderr, "serve: scheduler: %s\n", err.msg);
        pthread_mutex_lock(&sv->mu);
    }
    pthread_mutex_unlock(&sv->mu);
    return NULL;
}

/* ---- responses ---- */

static enum MHD_Result send_body(struct MHD_Connection *c, int status, const char *type,
                                 const char *body, int retry_after) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (retry_after) MHD_add_response_header(r, "Retry-After", "1");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static void count_status(server *sv, int status) {
    const int b = status == 429 ? 2 : status >= 500 ? 3 : status >= 400 ? 1 : 0;
    pthread_mutex_lock(&sv->mu);
    sv->by_status[b]++;
    pthread_mutex_unlock(&sv->mu);
}

static enum MHD_Result send_error(server *sv, struct MHD_Connection *c, const oai_error *e) {
    char *j = oai_error_json(e);
    count_status(sv, e->status);
    if (sv->o.log) fprintf(stderr, "serve: status=%d %s\n", e->status, e->message);
    enum MHD_Result r = send_body(c, e->status, "application/json",
                                  j ? j : "{\"error\":{\"message\":\"out of memory\"}}",
                                  e->status == 429 || e->status == 503);
    free(j);
    return r;
}

static enum MHD_Result send_json(server *sv, struct MHD_Connection *c, int status, json_t *v) {
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s) {
        oai_error e;
        oai_fail(&e, 500, "internal_error", NULL, NULL, "out of memory");
        return send_error(sv, c, &e);
    }
    count_status(sv, status);
    enum MHD_Result r = send_body(c, status, "application/json", s, 0);
    free(s);
    return r;
}

/* ---- one chat request ---- */

typedef struct conn {
    char *body;
    size_t len, cap;
    int too_big;
    /* streaming */
    server *sv;
    job *j;
    oai_request req;
    int slot;
    char id[40];
    long long created;
    size_t sent;          /* bytes of j->text streamed */
    int stage;            /* 0 role chunk, 1 content, 2 finish/usage/done emitted */
    char *out;            /* bytes produced, not yet given to MHD */
    size_t out_n, out_off;
    double t0;
} conn;

static void job_free(job *j) {
    if (!j) return;
    tok_ids_free(&j->ids);
    free(j->grids);
    free(j->hash);
    free(j->vision);
    free(j->logits);
    generate_result_free(&j->res);
    tok_text_free(&j->text);
    free(j);
}

static void release_slot(server *sv, int slot) {
    pthread_mutex_lock(&sv->mu);
    if (slot >= 0) {
        sv->slot_busy[slot] = 0;
        sv->active--;
    }
    sv->admitted--;
    pthread_cond_broadcast(&sv->done);
    pthread_mutex_unlock(&sv->mu);
}

/* Admission: a slot, waiting in the queue for one; -1 with e filled (429 / 503). */
static int acquire_slot(server *sv, oai_error *e) {
    pthread_mutex_lock(&sv->mu);
    if (sv->stopping) {
        pthread_mutex_unlock(&sv->mu);
        oai_fail(e, 503, "unavailable_error", NULL, NULL, "the server is shutting down");
        return -1;
    }
    if (sv->admitted >= sv->o.parallel + sv->o.queue) {
        pthread_mutex_unlock(&sv->mu);
        oai_fail(e, 429, "rate_limit_error", NULL, "server_is_overloaded",
                 "the server is busy (%d running, %d queued); retry later", sv->o.parallel,
                 sv->o.queue);
        return -1;
    }
    sv->admitted++;
    int slot = -1;
    while (slot < 0 && !sv->stopping) {
        for (int i = 0; i < sv->o.parallel; i++)
            if (!sv->slot_busy[i]) {
                slot = i;
                break;
            }
        if (slot < 0) pthread_cond_wait(&sv->done, &sv->mu);
    }
    if (slot < 0) {
        sv->admitted--;
        pthread_mutex_unlock(&sv->mu);
        oai_fail(e, 503, "unavailable_error", NULL, NULL, "the server is shutting down");
        return -1;
    }
    sv->slot_busy[slot] = 1;
    sv->active++;
    pthread_mutex_unlock(&sv->mu);
    return slot;
}

/* ---- the vision-row cache (connection threads, under sv->vmu) ---- */

/* Copies the rows of the image keyed `key` into *out (malloc'd); 0 when absent. */
static int vcache_get(server *sv, const uint8_t key[32], mrope_grid *grid, int64_t *tokens,
                      float **out, size_t D) {
    int hit = 0;
    pthread_mutex_lock(&sv->vmu);
    for (ventry *v = sv->vcache; v; v = v->next)
        if (!memcmp(v->key, key, 32)) {
            if ((*out = malloc(sizeof **out * (size_t)v->tokens * D))) {
                memcpy(*out, v->rows, sizeof **out * (size_t)v->tokens * D);
                *grid = v->grid;
                *tokens = v->tokens;
                v->used = ++sv->vcache_clock;
                sv->vision_hits++;
                hit = 1;
            }
            break;
        }
    pthread_mutex_unlock(&sv->vmu);
    return hit;
}

/* Keeps a copy of an image's rows (best effort: out of memory keeps nothing) and
 * evicts least recently used entries beyond o.vision_cache_bytes. */
static void vcache_put(server *sv, const uint8_t key[32], const context_image *im, size_t D) {
    const size_t bytes = sizeof *im->rows * (size_t)im->tokens * D;
    if (!sv->o.vision_cache_bytes || bytes > sv->o.vision_cache_bytes) return;
    ventry *v = calloc(1, sizeof *v);
    if (!v || !(v->rows = malloc(bytes))) {
        free(v);
        return;
    }
    memcpy(v->key, key, 32);
    memcpy(v->rows, im->rows, bytes);
    v->grid = im->grid;
    v->tokens = im->tokens;
    v->bytes = bytes;
    pthread_mutex_lock(&sv->vmu);
    for (ventry *o = sv->vcache; o; o = o->next)
        if (!memcmp(o->key, key, 32)) { /* another slot encoded it meanwhile */
            pthread_mutex_unlock(&sv->vmu);
            free(v->rows);
            free(v);
            return;
        }
    v->used = ++sv->vcache_clock;
    v->next = sv->vcache;
    sv->vcache = v;
    sv->vcache_bytes += bytes;
    while (sv->vcache_bytes > sv->o.vision_cache_bytes) {
        ventry **lru = &sv->vcache;
        for (ventry **pp = &sv->vcache; *pp; pp = &(*pp)->next)
            if ((*pp)->used < (*lru)->used) lru = pp;
        ventry *x = *lru;
        *lru = x->next;
        sv->vcache_bytes -= x->bytes;
        free(x->rows);
        free(x);
    }
    pthread_mutex_unlock(&sv->vmu);
}

/* Images through the slot's context, the conversation tokenized, the job built. */
static int prepare_job(server *sv, context *cx, const oai_request *q, job *j, oai_error *e) {
    const engine *en = sv->e;
    const size_t D = (size_t)en->m.config.text.hidden;
    ergo_error err = {0};
    preprocess_config pc = en->pc;
    if (q->min_pixels) pc.min_pixels = q->min_pixels;
    if (q->max_pixels) pc.max_pixels = q->max_pixels;
    if (q->n_images && (!(j->grids = calloc((size_t)q->n_images, sizeof *j->grids)) ||
                        !(j->hash = calloc((size_t)q->n_images, sizeof *j->hash))))
        return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
    size_t n_parts = 0;
    for (int i = 0; i < q->n_msgs; i++) n_parts += (size_t)q->msgs[i].n_parts;
    chat_part *parts = calloc(n_parts + 1, sizeof *parts);
    chat_message *msgs = calloc((size_t)q->n_msgs, sizeof *msgs);
    if (!parts || !msgs) {
        free(parts);
        free(msgs);
        return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
    }
    int bad = 0;
    size_t np = 0;
    for (int i = 0; i < q->n_msgs && !bad; i++) {
        const oai_message *m = &q->msgs[i];
        msgs[i] = (chat_message){m->role, m->content, m->content_len,
                                 m->content ? NULL : parts + np, (size_t)m->n_parts};
        if (m->content && !m->content_len) msgs[i].content = "";
        for (int k = 0; k < m->n_parts && !bad; k++) {
            const oai_part *p = &m->parts[k];
            char param[96];
            snprintf(param, sizeof param, "messages[%d].content[%d]", i, k);
            if (!p->is_image) {
                parts[np++] = (chat_part){CHAT_TEXT, p->text ? p->text : "", p->text_len, 0};
                continue;
            }
            image img = {0};
            ergo_status st = image_decode_memory(&img, p->image, p->image_len, "image", NULL,
                                                 &err);
            context_image im = {0};
            uint8_t key[32];
            if (!st) {
                struct sha256_ctx h;
                sha256_init(&h);
                const int64_t dims[4] = {img.width, img.height, pc.min_pixels, pc.max_pixels};
                sha256_update(&h, sizeof dims, (const uint8_t *)dims);
                sha256_update(&h, (size_t)img.width * (size_t)img.height * 3, img.rgb);
                sha256_digest(&h, 32, key);
                if (!vcache_get(sv, key, &im.grid, &im.tokens, &im.rows, D)) {
                    st = context_encode_image(cx, &img, &pc, &im, &err);
                    pthread_mutex_lock(&sv->vmu);
                    sv->vision_encodes++;
                    pthread_mutex_unlock(&sv->vmu);
                    if (!st) vcache_put(sv, key, &im, D);
                    j->vision_encoded++;
                }
            }
            float *grown = NULL;
            if (!st) {
                grown = realloc(j->vision, sizeof *grown * (size_t)(j->vision_tokens + im.tokens) * D);
                if (!grown) st = ergo_fail(&err, ERGO_E_NOMEM, "out of memory");
            }
            if (st) {
                image_free(&img);
                context_image_free(&im);
                bad = st == ERGO_E_NOMEM
                          ? oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory")
                          : oai_fail(e, 400, "invalid_request_error", param, NULL, "%s: %s",
                                     param, err.msg);
                break;
            }
            j->vision = grown;
            memcpy(j->vision + (size_t)j->vision_tokens * D, im.rows,
                   sizeof *im.rows * (size_t)im.tokens * D);
            j->vision_tokens += im.tokens;
            j->vision_ms += im.image_ms + im.vision_ms;
            /* the image's identity for the prefix cache: all its pixels and its grid */
            {
                struct sha256_ctx h;
                sha256_init(&h);
                const int32_t dims[5] = {img.width, img.height, im.grid.t, im.grid.h, im.grid.w};
                sha256_update(&h, sizeof dims, (const uint8_t *)dims);
                sha256_update(&h, (size_t)img.width * (size_t)img.height * 3, img.rgb);
                sha256_digest(&h, 32, j->hash[j->n_images]);
            }
            j->grids[j->n_images++] = im.grid;
            parts[np++] = (chat_part){CHAT_IMAGE, NULL, 0, (int32_t)im.tokens};
            image_free(&img);
            context_image_free(&im);
        }
    }
    /* a special token spelled in a user's text stays text (issue 10 point 8) */
    chat_template ct = en->ct;
    ct.literal_user_text = 1;
    if (!bad && chat_encode(&ct, en->tok, msgs, (size_t)q->n_msgs, 1, &j->ids, &err))
        bad = oai_fail(e, 400, "invalid_request_error", "messages", NULL, "%s", err.msg);
    free(parts);
    free(msgs);
    if (bad) return 1;

    const long long n_prompt = (long long)j->ids.n;
    long long max_new = q->max_tokens >= 0 ? q->max_tokens : en->max_context - n_prompt;
    if (n_prompt + (q->max_tokens >= 0 ? max_new : 1) > en->max_context)
        return oai_fail(e, 400, "invalid_request_error", "messages", "context_length_exceeded",
                        "This model's maximum context length is %d tokens. However, you "
                        "requested %lld tokens (%lld in the messages, %lld in the completion)",
                        en->max_context, n_prompt + (q->max_tokens >= 0 ? max_new : 0),
                        n_prompt, q->max_tokens >= 0 ? max_new : 0);

    generate_params gp = {{0}, 0, NULL, 0, NULL, 0};
    sampler_config_from_generation(&gp.sampling, &en->m.generation);
    sampler_config *s = &gp.sampling;
    const int greedy = q->has_temperature && q->temperature < 1e-5;
    if (q->has_temperature || q->has_top_p || q->has_top_k || q->has_min_p || q->has_seed)
        s->do_sample = 1;
    if (q->has_temperature && !greedy) s->temperature = (float)q->temperature;
    if (q->has_top_p) s->top_p = (float)q->top_p;
    if (q->has_top_k) s->top_k = (int)q->top_k;
    if (q->has_min_p) s->min_p = (float)q->min_p;
    if (q->has_seed) s->seed = (uint64_t)q->seed;
    if (q->has_penalty) s->repetition_penalty = (float)q->repetition_penalty;
    if (greedy) s->do_sample = 0;
    if (sampler_config_check(s, &err))
        return oai_fail(e, 400, "invalid_request_error", NULL, NULL, "%s", err.msg);
    gp.max_new_tokens = (int)max_new;
    gp.stop_ids = en->stop_ids;
    gp.n_stop_ids = en->n_stop_ids;

    if (!(j->logits = malloc(sizeof *j->logits * (size_t)en->m.config.text.vocab_size)))
        return oai_fail(e, 500, "internal_error", NULL, NULL, "out of memory");
    j->stops = (char **)q->stops;
    j->n_stops = q->n_stops;
    j->r = (sched_request){0};
    j->r.tokens = j->ids.v;
    j->r.n_tokens = (int)j->ids.n;
    j->r.grids = j->grids;
    j->r.n_images = j->n_images;
    j->r.vision = j->vision;
    j->r.tok = en->tok;
    j->r.params = gp;
    j->r.on_text = on_text;
    j->r.ctx = j;
    j->r.logits = j->logits;
    j->r.out = &j->res;
    j->deadline = now_ms() + 1000.0 * sv->o.timeout_s;
    return 0;
}

static const char *finish_reason(const job *j) {
    if (j->stop_hit) return "stop";
    return j->res.reason == STOP_LENGTH || j->res.reason == STOP_CONTEXT ? "length" : "stop";
}

static json_t *usage_json(const job *j) {
    const int pt = (int)j->ids.n, ct = (int)j->res.tokens.n;
    return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", pt, "completion_tokens", ct,
                     "total_tokens", pt + ct, "prompt_tokens_details", "cached_tokens", j->cached);
}

static json_t *timings_json(const job *j) {
    return json_pack("{s:f, s:f, s:f, s:i}", "vision_ms", j->vision_ms, "prefill_ms",
                     j->r.prefill_ms, "decode_ms", j->res.decode_ms, "vision_encodes",
                     j->vision_encoded);
}

static void account(server *sv, conn *cn, int status) {
    job *j = cn->j;
    const double secs = (now_ms() - cn->t0) / 1000.0;
    pthread_mutex_lock(&sv->mu);
    sv->tok_prompt += j->ids.n;
    sv->tok_cached += (uint64_t)j->cached;
    sv->tok_generated += j->res.tokens.n;
    sv->tok_vision += (uint64_t)j->vision_tokens;
    size_t b = 0;
    while (b < N_LAT && secs > LAT_BOUNDS[b]) b++;
    sv->lat_count[b]++;
    sv->lat_sum += secs;
    sv->lat_n++;
    pthread_mutex_unlock(&sv->mu);
    if (sv->o.log)
        fprintf(stderr,
                "serve: %s status=%d in=%zu cached=%d out=%zu vision=%lld finish=%s ms=%.1f\n",
                cn->id, status, j->ids.n, j->cached, j->res.tokens.n, (long long)j->vision_tokens,
                j->status ? "error" : finish_reason(j), secs * 1000.0);
}

/* Waits until the scheduler thread is done with j (cancelling it first if asked). */
static void wait_finished(server *sv, job *j, int cancel) {
    pthread_mutex_lock(&sv->mu);
    if (cancel && !j->finished) {
        j->cancel = 1;
        pthread_cond_broadcast(&sv->work);
    }
    while (!j->finished) pthread_cond_wait(&sv->done, &sv->mu);
    pthread_mutex_unlock(&sv->mu);
}

static void conn_end_stream(conn *cn) {
    server *sv = cn->sv;
    if (cn->j) {
        wait_finished(sv, cn->j, 1);
        const int status = cn->stage == 3 && !cn->j->status ? 200 : 499;
        account(sv, cn, status);
        count_status(sv, status);
        job_free(cn->j);
        cn->j = NULL;
        release_slot(sv, cn->slot);
    }
    oai_request_free(&cn->req);
    free(cn->out);
    cn->out = NULL;
}

static int out_append(conn *cn, const char *s, size_t n) {
    if (cn->out_n + n > 0 && cn->out_off == cn->out_n) cn->out_off = cn->out_n = 0;
    char *g = realloc(cn->out, cn->out_n + n + 1);
    if (!g) return 1;
    memcpy(g + cn->out_n, s, n);
    cn->out = g;
    cn->out_n += n;
    return 0;
}

static int out_event(conn *cn, json_t *v) {
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s) return 1;
    int r = out_append(cn, "data: ", 6) || out_append(cn, s, strlen(s)) ||
            out_append(cn, "\n\n", 2);
    free(s);
    return r;
}

static json_t *chunk(conn *cn, json_t *delta, const char *finish) {
    json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:o}]}", "id", cn->id,
                          "object", "chat.completion.chunk", "created", (json_int_t)cn->created,
                          "model", cn->sv->o.model_name, "choices", "index", 0, "delta", delta,
                          "logprobs", "finish_reason",
                          finish ? json_string(finish) : json_null());
    if (c && cn->req.include_usage) json_object_set_new(c, "usage", json_null());
    return c;
}

/* MHD's content reader: blocks (its own connection thread) until bytes are ready. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    conn *cn = cls;
    server *sv = cn->sv;
    job *j = cn->j;
    while (cn->out_off == cn->out_n) {
        if (cn->stage == 3) return MHD_CONTENT_READER_END_OF_STREAM;
        if (cn->stage == 0) {
            if (out_event(cn, chunk(cn, json_pack("{s:s, s:s}", "role", "assistant", "content",
                                                  ""), NULL)))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            cn->stage = 1;
            continue;
        }
        pthread_mutex_lock(&sv->mu);
        size_t safe;
        while ((safe = safe_len(j)) == cn->sent && !j->finished)
            pthread_cond_wait(&sv->done, &sv->mu);
        char *piece = NULL;
        size_t n = safe - cn->sent;
        if (n && (piece = malloc(n + 1))) memcpy(piece, j->text.s + cn->sent, n);
        cn->sent = safe;
        const int fin = j->finished;
        pthread_mutex_unlock(&sv->mu);
        int bad = 0;
        if (n) {
            bad = !piece || out_event(cn, chunk(cn, json_pack("{s:s%}", "content", piece, n),
                                                NULL));
            free(piece);
        }
        if (!bad && fin && cn->sent == j->text.n) {
            if (j->status) {
                oai_error e;
                oai_fail(&e, 500, "internal_error", NULL, NULL, "%s", j->err.msg);
                char *ej = oai_error_json(&e);
                bad = !ej || out_append(cn, "data: ", 6) || out_append(cn, ej, strlen(ej)) ||
                      out_append(cn, "\n\n", 2);
                free(ej);
            } else {
                bad = out_event(cn, chunk(cn, json_object(), finish_reason(j)));
                if (!bad && cn->req.include_usage) {
                    json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o, s:o}", "id", cn->id,
                                          "object", "chat.completion.chunk", "created",
                                          (json_int_t)cn->created, "model", sv->o.model_name,
                                          "choices", "usage", usage_json(j), "timings",
                                          timings_json(j));
                    bad = out_event(cn, u);
                }
            }
            if (!bad) bad = out_append(cn, "data: [DONE]\n\n", 14);
            cn->stage = 3;
        }
        if (bad) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = cn->out_n - cn->out_off;
    if (n > max) n = max;
    memcpy(buf, cn->out + cn->out_off, n);
    cn->out_off += n;
    return (ssize_t)n;
}

/* The stream's state belongs to its response: freed with it. */
static void stream_free(void *cls) {
    conn_end_stream(cls);
    free(cls);
}

static enum MHD_Result handle_chat(server *sv, struct MHD_Connection *c, conn *cn) {
    oai_error e;
    oai_limits lim = {sv->o.max_images, (size_t)sv->o.max_body_bytes, sv->o.local_media,
                      sv->o.allow_remote_media};
    cn->t0 = now_ms();
    if (oai_parse_chat(cn->body ? cn->body : "", cn->len, &lim, &cn->req, &e))
        return send_error(sv, c, &e);
    if (cn->req.model[0] && strcmp(cn->req.model, sv->o.model_name)) {
        oai_request_free(&cn->req);
        oai_fail(&e, 404, "invalid_request_error", "model", "model_not_found",
                 "the model does not exist (this server serves \"%s\")", sv->o.model_name);
        return send_error(sv, c, &e);
    }
    free(cn->body); /* the decoded images are in the request now */
    cn->body = NULL;
    const int slot = acquire_slot(sv, &e);
    if (slot < 0) {
        oai_request_free(&cn->req);
        return send_error(sv, c, &e);
    }
    job *j = calloc(1, sizeof *j);
    if (!j) {
        release_slot(sv, slot);
        oai_request_free(&cn->req);
        oai_fail(&e, 500, "internal_error", NULL, NULL, "out of memory");
        return send_error(sv, c, &e);
    }
    j->sv = sv;
    if (prepare_job(sv, &sv->slot_ctx[slot], &cn->req, j, &e)) {
        job_free(j);
        release_slot(sv, slot);
        oai_request_free(&cn->req);
        return send_error(sv, c, &e);
    }
    pthread_mutex_lock(&sv->mu);
    snprintf(cn->id, sizeof cn->id, "chatcmpl-%016llx", (unsigned long long)++sv->next_id);
    j->next = sv->pending;
    sv->pending = j;
    pthread_cond_broadcast(&sv->work);
    pthread_mutex_unlock(&sv->mu);
    cn->created = (long long)time(NULL);
    cn->j = j;
    cn->slot = slot;
    cn->sv = sv;

    if (cn->req.stream) {
        /* the stream's state moves to the response, which may outlive the connection's */
        conn *sc = malloc(sizeof *sc);
        if (!sc) {
            conn_end_stream(cn);
            return MHD_NO;
        }
        *sc = *cn;
        j->stops = sc->req.stops; /* the array moved with the request */
        cn->j = NULL;
        memset(&cn->req, 0, sizeof cn->req);
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, sc,
                                              stream_free);
        if (!r) {
            stream_free(sc);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }

    wait_finished(sv, j, 0);
    json_t *v = NULL;
    int status = 200;
    if (j->status) {
        oai_fail(&e, j->status == ERGO_E_LIMIT ? 400 : 500,
                 j->status == ERGO_E_LIMIT ? "invalid_request_error" : "internal_error", NULL,
                 NULL, "%s", j->err.msg);
        status = e.status;
    } else {
        v = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s%}, s:n, s:s}], s:o, s:o}",
                      "id", cn->id, "object", "chat.completion", "created",
                      (json_int_t)cn->created, "model", sv->o.model_name, "choices", "index", 0,
                      "message", "role", "assistant", "content", j->text.s ? j->text.s : "",
                      j->text.n, "logprobs", "finish_reason", finish_reason(j), "usage",
                      usage_json(j), "timings", timings_json(j));
    }
    account(sv, cn, status);
    job_free(j);
    cn->j = NULL;
    release_slot(sv, slot);
    oai_request_free(&cn->req);
    return status == 200 ? send_json(sv, c, 200, v) : send_error(sv, c, &e);
}

/* ---- the other endpoints ---- */

static enum MHD_Result handle_models(server *sv, struct MHD_Connection *c) {
    json_t *v = json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i, s:[s,s]}]}", "object", "list",
                          "data", "id", sv->o.model_name, "object", "model", "created",
                          (json_int_t)time(NULL), "owned_by", "ergo", "max_model_len",
                          sv->e->max_context, "input_modalities", "text", "image");
    return send_json(sv, c, 200, v);
}

static enum MHD_Result handle_metrics(server *sv, struct MHD_Connection *c) {
    char buf[4096];
    size_t n = 0;
#define PUT(...) n += (size_t)snprintf(buf + n, n < sizeof buf ? sizeof buf - n : 0, __VA_ARGS__)
    pthread_mutex_lock(&sv->mu);
    PUT("# TYPE ergo_requests_total counter\n");
    static const char *const cls[] = {"2xx", "4xx", "429", "5xx"};
    for (int i = 0; i < 4; i++)
        PUT("ergo_requests_total{status=\"%s\"} %llu\n", cls[i],
            (unsigned long long)sv->by_status[i]);
    PUT("# TYPE ergo_prompt_tokens_total counter\nergo_prompt_tokens_total %llu\n",
        (unsigned long long)sv->tok_prompt);
    PUT("# TYPE ergo_cached_tokens_total counter\nergo_cached_tokens_total %llu\n",
        (unsigned long long)sv->tok_cached);
    PUT("# TYPE ergo_generated_tokens_total counter\nergo_generated_tokens_total %llu\n",
        (unsigned long long)sv->tok_generated);
    PUT("# TYPE ergo_vision_tokens_total counter\nergo_vision_tokens_total %llu\n",
        (unsigned long long)sv->tok_vision);
    pthread_mutex_lock(&sv->vmu);
    PUT("# TYPE ergo_vision_encodes_total counter\nergo_vision_encodes_total %llu\n",
        (unsigned long long)sv->vision_encodes);
    PUT("# TYPE ergo_vision_cache_hits_total counter\nergo_vision_cache_hits_total %llu\n",
        (unsigned long long)sv->vision_hits);
    PUT("# TYPE ergo_vision_cache_bytes gauge\nergo_vision_cache_bytes %zu\n", sv->vcache_bytes);
    pthread_mutex_unlock(&sv->vmu);
    PUT("# TYPE ergo_queue_depth gauge\nergo_queue_depth %d\n", sv->admitted - sv->active);
    PUT("# TYPE ergo_active_slots gauge\nergo_active_slots %d\n", sv->active);
    PUT("# TYPE ergo_request_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t b = 0; b < N_LAT; b++) {
        cum += sv->lat_count[b];
        PUT("ergo_request_seconds_bucket{le=\"%g\"} %llu\n", LAT_BOUNDS[b],
            (unsigned long long)cum);
    }
    cum += sv->lat_count[N_LAT];
    PUT("ergo_request_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    PUT("ergo_request_seconds_sum %g\nergo_request_seconds_count %llu\n", sv->lat_sum,
        (unsigned long long)sv->lat_n);
    pthread_mutex_unlock(&sv->mu);
#undef PUT
    return send_body(c, 200, "text/plain; version=0.0.4", buf, 0);
}

static int authorized(const server *sv, struct MHD_Connection *c) {
    if (!sv->o.api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    h += 7;
    const size_t a = strlen(h), b = strlen(sv->o.api_key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned)(uint8_t)(h[i < a ? i : 0] ^ sv->o.api_key[i]);
    return diff == 0 && a == b;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls) {
    server *sv = cls;
    conn *cn = *con_cls;
    oai_error e;
    if (!cn) {
        if (!(cn = calloc(1, sizeof *cn))) return MHD_NO;
        cn->slot = -1;
        cn->sv = sv;
        *con_cls = cn;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoll(cl, NULL, 10) > sv->o.max_body_bytes) {
            cn->too_big = 1;
            oai_fail(&e, 413, "invalid_request_error", NULL, NULL,
                     "the request body is over the server's limit of %lld bytes",
                     (long long)sv->o.max_body_bytes);
            return send_error(sv, c, &e);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cn->too_big) {
            if ((int64_t)(cn->len + *upload_size) > sv->o.max_body_bytes) {
                cn->too_big = 1;
            } else {
                if (cn->len + *upload_size + 1 > cn->cap) {
                    size_t cap = cn->cap ? cn->cap : 65536;
                    while (cap < cn->len + *upload_size + 1) cap *= 2;
                    char *g = realloc(cn->body, cap);
                    if (!g) return MHD_NO;
                    cn->body = g;
                    cn->cap = cap;
                }
                memcpy(cn->body + cn->len, upload, *upload_size);
                cn->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cn->too_big) {
        oai_fail(&e, 413, "invalid_request_error", NULL, NULL,
                 "the request body is over the server's limit of %lld bytes",
                 (long long)sv->o.max_body_bytes);
        return send_error(sv, c, &e);
    }
    const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    const int is_chat = !strcmp(url, "/v1/chat/completions");
    const int is_models = !strcmp(url, "/v1/models"), is_health = !strcmp(url, "/health");
    const int is_metrics = !strcmp(url, "/metrics");
    if (!is_chat && !is_models && !is_health && !is_metrics) {
        oai_fail(&e, 404, "invalid_request_error", NULL, NULL, "unknown route");
        return send_error(sv, c, &e);
    }
    if ((is_chat && !post) || (!is_chat && !get)) {
        oai_fail(&e, 405, "invalid_request_error", NULL, NULL, "method not allowed on this route");
        return send_error(sv, c, &e);
    }
    if (is_health) {
        pthread_mutex_lock(&sv->mu);
        const int stopping = sv->stopping;
        pthread_mutex_unlock(&sv->mu);
        if (stopping) {
            oai_fail(&e, 503, "unavailable_error", NULL, NULL, "the server is shutting down");
            return send_error(sv, c, &e);
        }
        count_status(sv, 200);
        return send_body(c, 200, "application/json", "{\"status\":\"ok\"}", 0);
    }
    if (is_metrics) return handle_metrics(sv, c);
    if (!authorized(sv, c)) {
        oai_fail(&e, 401, "authentication_error", NULL, "invalid_api_key",
                 "a valid API key is required (Authorization: Bearer KEY)");
        return send_error(sv, c, &e);
    }
    if (is_models) return handle_models(sv, c);
    return handle_chat(sv, c, cn);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
    conn *cn = *con_cls;
    if (!cn) return;
    free(cn->body);
    if (!cn->j) oai_request_free(&cn->req); /* a stream's request goes with its job */
    free(cn);
    *con_cls = NULL;
}

/* ---- lifecycle ---- */

static void free_server(server *sv) {
    if (sv->slot_ctx)
        for (int i = 0; i < sv->o.parallel; i++) context_free(&sv->slot_ctx[i]);
    free(sv->slot_ctx);
    free(sv->slot_busy);
    while (sv->cache) {
        centry *c = sv->cache;
        sv->cache = c->next;
        centry_free(c);
    }
    while (sv->vcache) {
        ventry *v = sv->vcache;
        sv->vcache = v->next;
        free(v->rows);
        free(v);
    }
    if (sv->sc_ready) {
        sched_free(&sv->sc);
        context_free(&sv->sc_ctx);
    }
    pthread_cond_destroy(&sv->work);
    pthread_cond_destroy(&sv->done);
    pthread_mutex_destroy(&sv->mu);
    pthread_mutex_destroy(&sv->vmu);
    free(sv);
}

ergo_status server_start(server **out, const engine *e, const serve_options *o,
                         ergo_error *err) {
    *out = NULL;
    if (!e->tok || !e->has_chat_template)
        return ergo_fail(err, ERGO_E_ARG, "serve: the checkpoint has no tokenizer or chat template");
    if (o->parallel < 1 || o->queue < 0 || o->max_body_bytes < 1)
        return ergo_fail(err, ERGO_E_ARG, "serve: --parallel must be >= 1 and --queue >= 0");
    server *sv = calloc(1, sizeof *sv);
    if (!sv) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    sv->e = e;
    sv->o = *o;
    pthread_mutex_init(&sv->mu, NULL);
    pthread_mutex_init(&sv->vmu, NULL);
    pthread_cond_init(&sv->work, NULL);
    pthread_cond_init(&sv->done, NULL);
    ergo_status st = context_init(&sv->sc_ctx, e, err);
    if (st) {
        free_server(sv);
        return st;
    }
    sv->sc_ready = 1;
    sched_init(&sv->sc, &e->m, &sv->sc_ctx.st, &sv->sc_ctx.pool, e->prefill_chunk);
    const model_config *mc = &e->m.config;
    sv->kv_token_bytes = (size_t)2 * (size_t)mc->text.n_layers * (size_t)mc->text.n_kv_heads *
                         (size_t)mc->text.head_dim * (e->kv_dtype == KV_F32 ? 4 : 2);
    sv->slot_ctx = calloc((size_t)o->parallel, sizeof *sv->slot_ctx);
    sv->slot_busy = calloc((size_t)o->parallel, sizeof *sv->slot_busy);
    if (!sv->slot_ctx || !sv->slot_busy) {
        free_server(sv);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < o->parallel; i++)
        if ((st = context_init(&sv->slot_ctx[i], e, err))) {
            for (int k = 0; k < i; k++) context_free(&sv->slot_ctx[k]);
            free(sv->slot_ctx);
            sv->slot_ctx = NULL;
            free_server(sv);
            return st;
        }
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &addr.sin_addr) != 1) {
        free_server(sv);
        return ergo_fail(err, ERGO_E_ARG, "serve: --host %s is not a dotted IPv4 address", o->host);
    }
    if (pthread_create(&sv->sched_thread, NULL, sched_main, sv)) {
        free_server(sv);
        return ergo_fail(err, ERGO_E_NOMEM, "serve: cannot start the scheduler thread");
    }
    sv->sched_started = 1;
    sv->d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handle,
        sv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED,
        completed, sv, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 << 10) + 4096,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(8 * (o->parallel + o->queue) + 64),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s + 60), MHD_OPTION_END);
    if (!sv->d) {
        pthread_mutex_lock(&sv->mu);
        sv->stopping = 2;
        pthread_cond_broadcast(&sv->work);
        pthread_mutex_unlock(&sv->mu);
        pthread_join(sv->sched_thread, NULL);
        free_server(sv);
        return ergo_fail(err, ERGO_E_IO, "serve: cannot listen on %s:%d", o->host, o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(sv->d, MHD_DAEMON_INFO_BIND_PORT);
    sv->port = di ? di->port : o->port;
    *out = sv;
    return ERGO_OK;
}

int server_port(const server *sv) { return sv->port; }

void server_stop(server *sv) {
    if (!sv) return;
    pthread_mutex_lock(&sv->mu);
    sv->stopping = 1; /* new requests 503; the scheduler cancels what runs */
    pthread_cond_broadcast(&sv->work);
    pthread_cond_broadcast(&sv->done);
    pthread_mutex_unlock(&sv->mu);
    MHD_stop_daemon(sv->d); /* joins the connection threads */
    pthread_mutex_lock(&sv->mu);
    sv->stopping = 2;
    pthread_cond_broadcast(&sv->work);
    pthread_mutex_unlock(&sv->mu);
    pthread_join(sv->sched_thread, NULL);
    free_server(sv);
}
