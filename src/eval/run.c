/*
 * run.c - the benchmark runner (run.h): samples through the pipeline, one fsynced JSON
 * line per (sample, mode, budget), the summary from the results file alone.
 */
#include "eval/run.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/file.h"
#include "eval/eval_internal.h"
#include "eval/score.h"
#include "image/preprocess.h"

void eval_config_default(eval_config *c) {
    memset(c, 0, sizeof *c);
    c->modes = EVAL_MODE_ERGO;
    c->budgets[0] = 1280;
    c->n_budgets = 1;
    c->shard_n = 1;
    ergo_options_default(&c->run);
    c->concurrency = 16;
    c->max_retries = 4;
    c->retry_base_ms = 500;
}

/* ---------------------------------------------------------------- files */

static ergo_status mkdir_p(const char *dir, ergo_error *err) {
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf) return ergo_fail(err, ERGO_E_IO, "bad --out directory `%s'", dir);
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return ergo_fail(err, ERGO_E_IO, "cannot create %s: %s", buf, strerror(errno));
        buf[i] = c;
    }
    return ERGO_OK;
}

ergo_status eval_load_results(const char *path, json_t **out, long *good_len, ergo_error *err) {
    *out = json_array();
    if (good_len) *good_len = 0;
    if (!*out) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (!file_exists(path)) return ERGO_OK;
    char *data = NULL;
    size_t size = 0;
    if (file_read_all(path, (size_t)1 << 34, &data, &size, err)) {
        json_decref(*out);
        *out = NULL;
        return ERGO_E_IO;
    }
    size_t pos = 0;
    int line_no = 0;
    ergo_status s = ERGO_OK;
    while (pos < size) {
        char *nl = memchr(data + pos, '\n', size - pos);
        size_t end = nl ? (size_t)(nl - data) : size;
        line_no++;
        json_error_t je;
        json_t *j = end > pos ? json_loadb(data + pos, end - pos, 0, &je) : NULL;
        int ok = j && json_is_object(j) && json_is_string(json_object_get(j, "id"));
        if (!ok) {
            json_decref(j);
            /* a torn write: the last line, cut before its newline */
            if (!nl) break;
            if (end == pos) { pos = end + 1; continue; } /* blank line */
            s = ergo_fail(err, ERGO_E_FORMAT, "%s line %d: not a result record%s%s", path, line_no,
                          j ? "" : ": ", j ? "" : je.text);
            break;
        }
        json_array_append_new(*out, j);
        pos = end + 1;
        if (good_len) *good_len = (long)pos;
    }
    free(data);
    if (s) {
        json_decref(*out);
        *out = NULL;
    }
    return s;
}

/* ---------------------------------------------------------------- one record */

static double stage_ms(const ergo_stage *s) {
    return s->image_ms + s->vision_ms + s->prefill_ms + s->decode_ms;
}

static ergo_status resize_to_budget(image *out, const image *in, int budget, ergo_error *err) {
    int h = 0, w = 0;
    ergo_status s = smart_resize_ergo(in->height, in->width, ERGO_FACTOR, ERGO_MIN_PIXELS,
                                      (int64_t)budget * ERGO_FACTOR * ERGO_FACTOR, &h, &w, err);
    if (!s) s = image_resize(out, in, w, h, IMAGE_FILTER_BICUBIC, err);
    return s;
}

typedef struct probe_ctx {
    eval_probe probe;
    const bench_sample *s;
    int budget;
    uint64_t seed;
} probe_ctx;

static ergo_status probe_image(void *vctx, const image *original, const image *stage1, image *out,
                               ergo_error *err) {
    const probe_ctx *p = vctx;
    if (p->probe == EVAL_PROBE_FULL) return image_crop(out, stage1, 0, 0, stage1->width, stage1->height, err);
    int x1 = (int)p->s->box[0], y1 = (int)p->s->box[1], x2 = (int)p->s->box[2], y2 = (int)p->s->box[3];
    if (x1 < 0) x1 = 0;
    if (y1 < 0) y1 = 0;
    if (x2 > original->width) x2 = original->width;
    if (y2 > original->height) y2 = original->height;
    if (x2 <= x1 || y2 <= y1)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: degenerate ground-truth box", p->s->key);
    int h = 0, w = 0;
    ergo_status s = smart_resize_ergo(y2 - y1, x2 - x1, ERGO_FACTOR, ERGO_MIN_PIXELS,
                                      (int64_t)p->budget * ERGO_FACTOR * ERGO_FACTOR, &h, &w, err);
    if (s) return s;
    if (p->probe == EVAL_PROBE_NOISE) {
        if ((s = image_alloc(out, w, h, err))) return s;
        uint64_t st = p->seed * 0x9E3779B97F4A7C15ull + 1;
        for (size_t i = 0; i < (size_t)w * h * 3; i++) {
            st ^= st << 13, st ^= st >> 7, st ^= st << 17; /* xorshift64 */
            out->rgb[i] = (uint8_t)(st >> 24);
        }
        return ERGO_OK;
    }
    image cut = {0};
    s = image_crop(&cut, original, x1, y1, x2, y2, err);
    if (!s) s = image_resize(out, &cut, w, h, IMAGE_FILTER_LANCZOS, err);
    image_free(&cut);
    return s;
}

static const char *probe_name(eval_probe p) {
    return p == EVAL_PROBE_GT ? "ergo_probe_gt" : p == EVAL_PROBE_NOISE ? "ergo_probe_noise"
                                                                         : "ergo_probe_full";
}

json_t *eval_record_base(const eval_config *c, const bench_sample *s, const char *mode, int budget) {
    char id[1024];
    snprintf(id, sizeof id, "%s|%s|%d", s->key, mode, budget);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "bench", json_string(bench_name(c->kind)));
    json_object_set_new(o, "key", json_string(s->key));
    json_object_set_new(o, "seq", json_integer(s->seq));
    json_object_set_new(o, "mode", json_string(mode));
    json_object_set_new(o, "budget", json_integer(budget));
    json_object_set_new(o, "question_id", json_string(s->question_id ? s->question_id : ""));
    json_object_set_new(o, "category", json_string(s->category ? s->category : ""));
    if (s->subcategory) json_object_set_new(o, "subcategory", json_string(s->subcategory));
    json_object_set_new(o, "label", json_string(s->label ? s->label : ""));
    json_object_set_new(o, "question", json_string(s->question ? s->question : ""));
    return o;
}

void eval_record_fail(json_t *o, const char *msg) {
    json_object_set_new(o, "status", json_string("failed"));
    json_object_set_new(o, "error", json_string(msg));
    json_object_set_new(o, "correct", json_false());
}

void eval_record_score(json_t *o, const char *response, const char *label) {
    char *pred = NULL;
    int ok = score_response(response ? response : "", label ? label : "", &pred);
    json_object_set_new(o, "status", json_string("ok"));
    json_object_set_new(o, "correct", json_boolean(ok == 1));
    json_object_set_new(o, "pred", json_string(pred ? pred : ""));
    free(pred);
}

static json_t *pair_i(int64_t a, int64_t b) { return json_pack("[I,I]", (json_int_t)a, (json_int_t)b); }

static void record_result(json_t *o, const ergo_result *r, const bench_sample *s) {
    const ergo_stage *s1 = &r->s1, *s2 = &r->s2;
    json_object_set_new(o, "width", json_integer(r->width));
    json_object_set_new(o, "height", json_integer(r->height));
    json_object_set_new(o, "stage1_text", json_string(s1->text ? s1->text : ""));
    json_object_set_new(o, "vision_tokens", pair_i(s1->vision_tokens, s2->vision_tokens));
    json_object_set_new(o, "prompt_tokens", pair_i(s1->prompt_tokens, s2->prompt_tokens));
    json_object_set_new(o, "generated_tokens", pair_i((int64_t)s1->ids.n, (int64_t)s2->ids.n));
    json_object_set_new(o, "time_ms", json_pack("[f,f]", stage_ms(s1), stage_ms(s2)));
    if (!r->baseline) {
        json_object_set_new(o, "stage2_text", json_string(s2->text ? s2->text : ""));
        json_t *box = json_pack("{s:s}", "status", zoom_status_name(r->box_status));
        if (r->box_status == ZOOM_OK) {
            json_object_set_new(box, "original", json_pack("[i,i,i,i]", r->crop.x1, r->crop.y1,
                                                           r->crop.x2, r->crop.y2));
            double area = (double)(r->crop.x2 - r->crop.x1) * (r->crop.y2 - r->crop.y1) /
                          ((double)r->width * r->height);
            json_object_set_new(box, "area_fraction", json_real(area));
        }
        if (r->box_status == ZOOM_INVALID) json_object_set_new(box, "why", json_string(r->crop.why));
        json_object_set_new(o, "box", box);
        json_object_set_new(o, "view", json_string(ergo_view_name(r->view)));
        /* the reference's crop_with_zoom raises here and the sample leaves its counts */
        if (r->box_status == ZOOM_INVALID) json_object_set_new(o, "reference_dropped", json_true());
    }
    json_object_set_new(o, "answer", json_string(r->answer ? r->answer : ""));
    eval_record_score(o, r->answer, s->label);
}

/* One (sample, mode, budget) in process. */
static json_t *run_one(const eval_config *c, context *ctx, const bench_sample *s, const image *img,
                       const char *img_err, int mode, int budget) {
    const char *name = mode == EVAL_MODE_ERGO ? "ergo" : mode == EVAL_MODE_BASELINE ? "baseline"
                                                                                   : probe_name(c->probe);
    json_t *o = eval_record_base(c, s, name, budget);
    if (s->failed || img_err) {
        eval_record_fail(o, s->failed ? s->error : img_err);
        return o;
    }
    if (mode == 0 && c->probe == EVAL_PROBE_GT && !s->has_box) {
        eval_record_fail(o, "no ground-truth box for --crop-probe gt");
        return o;
    }
    ergo_options ro = c->run;
    ro.max_vision_tokens = budget;
    probe_ctx pc = {c->probe, s, budget, (uint64_t)s->seq};
    if (mode == 0) {
        if (c->probe != EVAL_PROBE_FULL && !s->has_box) {
            eval_record_fail(o, "no ground-truth box for --crop-probe");
            return o;
        }
        ro.stage2_image = probe_image;
        ro.stage2_image_ctx = &pc;
    }
    ergo_result r = {0};
    ergo_error err = {0};
    ergo_status st;
    if (mode == EVAL_MODE_BASELINE) {
        /* the one-pass model at the same budget: the image smart-resized to it first
         * (the processor then keeps it as it is) */
        image small = {0};
        st = resize_to_budget(&small, img, budget, &err);
        if (!st) st = ergo_run_baseline(ctx, &ro, &small, &(ergo_question){s->question,
                                        (const char *const *)s->options, s->n_options,
                                        s->postfix}, &r, &err);
        image_free(&small);
        if (!st) { r.width = img->width; r.height = img->height; }
    } else {
        ergo_question q = {s->question, (const char *const *)s->options, s->n_options, s->postfix};
        st = ergo_run(ctx, &ro, img, &q, &r, &err);
    }
    if (st) eval_record_fail(o, err.msg);
    else record_result(o, &r, s);
    ergo_result_free(&r);
    return o;
}

/* ---------------------------------------------------------------- the loop */

ergo_status eval_append(int fd, json_t *rec, const char *path, ergo_error *err) {
    char *txt = json_dumps(rec, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (!txt) return ergo_fail(err, ERGO_E_NOMEM, "cannot format a result record");
    size_t n = strlen(txt);
    txt[n] = '\n'; /* json_dumps leaves room: its NUL */
    ssize_t off = 0;
    while ((size_t)off < n + 1) {
        ssize_t w = write(fd, txt + off, n + 1 - (size_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            free(txt);
            return ergo_fail(err, ERGO_E_IO, "cannot write %s: %s", path, strerror(errno));
        }
        off += w;
    }
    free(txt);
    if (fsync(fd) != 0) return ergo_fail(err, ERGO_E_IO, "cannot fsync %s: %s", path, strerror(errno));
    return ERGO_OK;
}

void eval_progress(const eval_config *c, int64_t done, int64_t total, int64_t correct,
                   int64_t scored, double t0, int64_t fresh, int final) {
    if (c->progress < 0) return;
    double el = (now_ms() - t0) / 1e3, rate = el > 0 ? fresh / el : 0;
    double eta = rate > 0 ? (total - done) / rate : 0;
    double acc = scored ? 100.0 * correct / scored : 0;
    if (c->progress == 1) {
        int w = 30, f = total ? (int)(w * done / total) : w;
        char bar[64];
        for (int i = 0; i < w; i++) bar[i] = i < f ? '#' : '.';
        bar[w] = 0;
        fprintf(stderr, "\r[%s] %lld/%lld %.2f samples/s ETA %.0f s acc %.1f%%  ", bar,
                (long long)done, (long long)total, rate, eta, acc);
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "eval: %lld/%lld done, %.2f samples/s, ETA %.0f s, accuracy %.1f%%\n",
                (long long)done, (long long)total, rate, eta, acc);
    }
}

ergo_status eval_open_results(const eval_config *c, char *path, size_t path_size, json_t **done,
                              int *fd, ergo_error *err) {
    ergo_status s = mkdir_p(c->out_dir, err);
    if (!s) s = path_join(path, path_size, c->out_dir, "results.jsonl", err);
    if (s) return s;
    struct stat sb;
    if (!c->resume && stat(path, &sb) == 0 && sb.st_size > 0)
        return ergo_fail(err, ERGO_E_IO, "%s exists: pass --resume to continue it, or another --out",
                         path);
    json_t *prev = NULL;
    long good = 0;
    if ((s = eval_load_results(path, &prev, &good, err))) return s;
    *done = json_object();
    size_t i;
    json_t *v;
    json_array_foreach(prev, i, v) json_object_set(*done, json_string_value(json_object_get(v, "id")), v);
    json_decref(prev);
    *fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (*fd < 0 || (file_exists(path) && ftruncate(*fd, good) != 0)) { /* drops a torn line */
        if (*fd >= 0) close(*fd);
        json_decref(*done);
        return ergo_fail(err, ERGO_E_IO, "cannot open %s: %s", path, strerror(errno));
    }
    return ERGO_OK;
}

/* The samples this process takes, in order: (limit, HR-Bench file, shard). */
int eval_takes(const eval_config *c, const bench_sample *s, int64_t *idx, int *stop) {
    *stop = 0;
    if (c->hr_only && (!s->category || strcmp(s->category, c->hr_only))) return 0;
    int64_t k = (*idx)++;
    if (c->limit > 0 && k >= c->limit) { *stop = 1; return 0; }
    return c->shard_n <= 1 || k % c->shard_n == c->shard_i;
}

int eval_n_modes(const eval_config *c, int modes[4]) {
    int n = 0;
    if (c->modes & EVAL_MODE_ERGO) modes[n++] = EVAL_MODE_ERGO;
    if (c->modes & EVAL_MODE_BASELINE) modes[n++] = EVAL_MODE_BASELINE;
    if (c->probe) modes[n++] = 0; /* the probe run, beside the method's */
    return n;
}

const char *eval_mode_name(const eval_config *c, int mode) {
    return mode == EVAL_MODE_ERGO ? "ergo" : mode == EVAL_MODE_BASELINE ? "baseline" : probe_name(c->probe);
}

ergo_status eval_run(const eval_config *c, context *ctx, ergo_error *err) {
    if (c->endpoint) return eval_run_endpoint(c, err);
    char path[4096];
    json_t *done = NULL;
    int fd = -1;
    ergo_status s = eval_open_results(c, path, sizeof path, &done, &fd, err);
    if (s) return s;
    bench_options bo = {0};
    bench_iter *it = NULL;
    if ((s = bench_open(&it, c->kind, c->data_root, &bo, err))) {
        close(fd);
        json_decref(done);
        return s;
    }
    int modes[4], nm = eval_n_modes(c, modes);
    int64_t idx = 0, total = c->limit > 0 ? c->limit : 0, n_done = 0, correct = 0, scored = 0, fresh = 0;
    if (total && c->shard_n > 1) total = (total - c->shard_i + c->shard_n - 1) / c->shard_n;
    double t0 = now_ms();
    for (;;) {
        bench_sample smp;
        int end = 0, stop = 0;
        memset(&smp, 0, sizeof smp);
        if ((s = bench_next(it, &smp, &end, err)) || end) break;
        if (!eval_takes(c, &smp, &idx, &stop)) {
            bench_sample_free(&smp);
            if (stop) break;
            continue;
        }
        image img = {0};
        char img_err[sizeof(ergo_error)] = "";
        int decoded = 0;
        for (int b = 0; b < c->n_budgets && !s; b++) {
            for (int m = 0; m < nm && !s; m++) {
                char id[1024];
                snprintf(id, sizeof id, "%s|%s|%d", smp.key, eval_mode_name(c, modes[m]), c->budgets[b]);
                json_t *rec = json_object_get(done, id);
                if (rec) json_incref(rec);
                else {
                    if (!decoded && !smp.failed) {
                        ergo_error ie = {0};
                        ergo_status is = smp.image_path
                            ? image_decode_file(&img, smp.image_path, NULL, &ie)
                            : image_decode_memory(&img, smp.image, smp.image_size, smp.key, NULL, &ie);
                        if (is) snprintf(img_err, sizeof img_err, "%s", ie.msg);
                        decoded = 1;
                    }
                    rec = run_one(c, ctx, &smp, &img, img_err[0] ? img_err : NULL, modes[m],
                                  c->budgets[b]);
                    s = eval_append(fd, rec, path, err);
                    fresh++;
                }
                if (modes[m] == EVAL_MODE_ERGO && b == c->n_budgets - 1) {
                    correct += json_is_true(json_object_get(rec, "correct"));
                    scored++;
                }
                json_decref(rec);
            }
        }
        image_free(&img);
        bench_sample_free(&smp);
        n_done++;
        if (!s) eval_progress(c, n_done, total > n_done ? total : n_done, correct, scored, t0,
                              fresh / (nm * c->n_budgets > 0 ? nm * c->n_budgets : 1), 0);
    }
    if (c->progress == 1) fputc('\n', stderr);
    bench_close(it);
    if (close(fd) != 0 && !s) s = ergo_fail(err, ERGO_E_IO, "cannot close %s", path);
    json_decref(done);
    if (!s) s = eval_summarize(c->out_dir, c, NULL, err);
    return s;
}
