/*
 * sft.c - the supervised fine-tuning loop (sft.h).
 *
 * A step: the step's examples of the epoch order are parsed (a bad line is skipped
 * or stops the run, named by file:line), their loss tokens counted and summed over
 * the ranks, each example of this rank goes forward and back with dL/dlogp = -1 / N
 * (N = the global batch's loss tokens), the gradients are summed over the ranks,
 * clipped, checked finite, and AdamW steps at the schedule's rate. Everything a
 * resume needs is in the checkpoint (masters, moments, step, data position), and the
 * step is deterministic, so a resumed run ends bit-identical to an uninterrupted one.
 */
#include "sft.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/file.h"
#include "train/checkpoint.h"
#include "train/plot.h"
#include "train/run_log.h"
#include "train/sft_data.h"
#include "train/step.h"

void sft_options_default(sft_options *o) {
    memset(o, 0, sizeof *o);
    o->epochs = 1;
    o->batch = 1;
    o->accum = 1;
    o->lr = 3e-4f;
    o->schedule = LR_COSINE;
    o->warmup_steps = -1;
    o->warmup_ratio = 0.03;
    o->adam = (adamw_config){0.9f, 0.999f, 1e-8f, 0.0f};
    o->max_grad_norm = 1.0f;
    o->seed = 42;
    o->max_tokens = 4096;
    o->max_images = 8;
    o->max_patches = 4096;
    o->heldout = -1;
    o->heldout_fraction = 0.05;
    o->eval_every = 50;
    o->save_every = 100;
    o->keep = 3;
    o->progress = 0;
    o->log_every = 10;
}

/* ---- the run's state ---- */

typedef struct sft_run_ctx {
    const engine *e;
    const sft_options *o;
    const train_comm *comm;
    int rank, size;
    sft_config dcfg;
    sft_dataset ds;
    sft_cursor cur;
    train_model tm;
    train_states ts;
    lr_schedule sched;
    int64_t total_steps;
    run_log log;
    run_curve train_curve, heldout_curve;
    float *logp, *g;         /* (max_tokens) */
    sft_example *exs;        /* (per-step examples) */
    int n_exs;
} sft_run_ctx;

static void sum_f64(const sft_run_ctx *r, double *v, size_t n) {
    if (r->comm && r->comm->size > 1) r->comm->sum_f64(r->comm->ctx, v, n);
}

static void to_train_example(const sft_example *x, train_example *ex, train_image *ims,
                             int32_t image_token_id) {
    for (int i = 0; i < x->n_images; i++)
        ims[i] = (train_image){x->images[i].pixel_values, x->images[i].grid.t, x->images[i].grid.h,
                               x->images[i].grid.w};
    ex->text = (train_sample){x->ids, {x->pos, x->pos + x->n, x->pos + 2 * (size_t)x->n},
                              x->targets, x->n, NULL, 0, image_token_id};
    ex->images = ims;
    ex->n_images = x->n_images;
}

/* Reads record rec into *x; a bad line is counted and skipped (returns 1: use the
 * next one) or stops the run. */
static ergo_status read_example(sft_run_ctx *r, int64_t rec, sft_example *x, int *skip,
                                sft_result *res, ergo_error *err) {
    *skip = 0;
    ergo_status s = sft_dataset_read(&r->ds, &r->dcfg, rec, x, err);
    if (!s) {
        for (int i = 0; i < x->n_images; i++)
            if (x->images[i].n_patches > r->o->max_patches) {
                size_t len;
                int64_t line;
                sft_dataset_line(&r->ds, rec, &len, &line);
                s = ergo_fail(err, ERGO_E_LIMIT, "%s:%lld: image %d has %lld patches, over "
                              "--max-patches %d", r->ds.path, (long long)line, i + 1,
                              (long long)x->images[i].n_patches, r->o->max_patches);
                sft_example_free(x);
                memset(x, 0, sizeof *x);
            }
    }
    if (!s || !r->o->skip_bad_lines || s == ERGO_E_NOMEM) return s;
    if (r->rank == 0) fprintf(stderr, "ergo train sft: skipped: %s\n", err->msg);
    res->bad_lines++;
    *skip = 1;
    return ERGO_OK;
}

/* The mean loss over the held-out records (each rank takes every size-th). */
static ergo_status heldout_loss(sft_run_ctx *r, double *out, ergo_error *err) {
    double acc[2] = {0, 0}; /* sum of -logp, tokens */
    for (int64_t k = r->rank; k < r->ds.n_heldout; k += r->size) {
        sft_example x = {0};
        ergo_status s = sft_dataset_read(&r->ds, &r->dcfg, r->ds.heldout[k], &x, err);
        if (s) {
            if (r->o->skip_bad_lines && s != ERGO_E_NOMEM) continue;
            return s;
        }
        train_example ex;
        train_image ims[64];
        to_train_example(&x, &ex, ims, r->e->m.config.image_token_id);
        int n = 0;
        s = train_forward(&r->ts, &r->tm, &ex, 1.0f, r->logp, &n, err);
        for (int i = 0; !s && i < n; i++) acc[0] -= (double)r->logp[i];
        acc[1] += n;
        sft_example_free(&x);
        if (s) return s;
    }
    sum_f64(r, acc, 2);
    *out = acc[1] > 0 ? acc[0] / acc[1] : (double)NAN;
    return ERGO_OK;
}

static void plot_curves(sft_run_ctx *r) {
    if (r->rank) return;
    char path[4200];
    snprintf(path, sizeof path, "%s/loss.png", r->o->out_dir);
    plot_series s[2] = {{"train", r->train_curve.x, r->train_curve.y, r->train_curve.n},
                        {"held-out", r->heldout_curve.x, r->heldout_curve.y, r->heldout_curve.n}};
    ergo_error e2 = {0};
    if (plot_lines(path, "loss (token mean)", "step", s, 2, &e2))
        fprintf(stderr, "ergo train sft: warning: %s\n", e2.msg);
}

static ergo_status save(sft_run_ctx *r, int64_t step, double last_loss, sft_result *res,
                        const char *model_dir, ergo_error *err) {
    if (r->rank) return ERGO_OK;
    train_run_state rs = {0};
    rs.step = step;
    rs.epoch = r->ds.n_train ? r->cur.position / r->ds.n_train : 0;
    rs.data_pos = r->cur.position;
    rs.lr_step = step;
    rs.last_loss = last_loss;
    rs.best_loss = NAN;
    rs.best_step = -1;
    ergo_status s = train_checkpoint_save(r->o->out_dir, &r->tm, &r->e->m, model_dir, &rs,
                                          r->o->keep, res->checkpoint, sizeof res->checkpoint, err);
    plot_curves(r);
    return s;
}

static void run_free(sft_run_ctx *r) {
    run_log_close(&r->log);
    for (int i = 0; r->exs && i < r->n_exs; i++) sft_example_free(&r->exs[i]);
    free(r->exs);
    free(r->logp), free(r->g);
    run_curve_free(&r->train_curve);
    run_curve_free(&r->heldout_curve);
    train_states_free(&r->ts);
    train_model_free(&r->tm);
    sft_cursor_free(&r->cur);
    sft_dataset_close(&r->ds);
}

static ergo_status setup(sft_run_ctx *r, const char *model_dir, int64_t *start_step,
                         ergo_error *err) {
    const sft_options *o = r->o;
    const engine *e = r->e;
    ergo_status s;
    if (!e->tok || !e->has_chat_template)
        return ergo_fail(err, ERGO_E_ARG, "%s: training needs the tokenizer and chat template "
                         "beside the weights", model_dir);
    if (o->batch < 1 || o->accum < 1 || o->max_tokens < 8 || o->max_images < 0 || o->max_patches < 4)
        return ergo_fail(err, ERGO_E_ARG, "sft: batch %d, accum %d, max tokens %d, max images %d, "
                         "max patches %d", o->batch, o->accum, o->max_tokens, o->max_images,
                         o->max_patches);
    if (r->rank == 0 && (s = run_mkdir_p(o->out_dir, err))) return s;
    /* the held-out split needs the record count: index once, then with the split */
    if ((s = sft_dataset_open(&r->ds, o->data_path, 0, o->seed, err))) return s;
    int64_t n_held = o->heldout >= 0 ? o->heldout : sft_heldout_count(r->ds.n_records, o->heldout_fraction);
    if (n_held > r->ds.n_records - 1) n_held = r->ds.n_records - 1;
    sft_dataset_close(&r->ds);
    if ((s = sft_dataset_open(&r->ds, o->data_path, n_held, o->seed, err))) return s;
    r->dcfg = (sft_config){&e->ct, e->tok, &e->pc, mrope_ids_from_config(&e->m.config),
                           o->max_tokens, o->max_images, 0, {0, 0}};
    if ((s = train_model_init(&r->tm, &e->m, &o->train, err))) return s;
    if ((s = train_states_init(&r->ts, &r->tm, o->max_tokens, o->max_patches, o->max_images,
                                 o->recompute, err)))
        return s;
    r->logp = malloc(sizeof(float) * (size_t)o->max_tokens);
    r->g = malloc(sizeof(float) * (size_t)o->max_tokens);
    r->n_exs = o->batch * o->accum;
    r->exs = calloc((size_t)r->n_exs, sizeof *r->exs);
    if (!r->logp || !r->g || !r->exs) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");

    const int64_t global = (int64_t)o->batch * o->accum * r->size;
    r->total_steps = o->max_steps > 0 ? o->max_steps
                                      : o->epochs * ((r->ds.n_train + global - 1) / global);
    const int64_t warm = o->warmup_steps >= 0 ? o->warmup_steps
                                              : (int64_t)ceil(o->warmup_ratio * (double)r->total_steps);
    r->sched = (lr_schedule){o->schedule, o->lr, warm, r->total_steps};

    /* resume from the newest complete checkpoint, or refuse to mix a new run into an
     * old one's directory */
    char ck[4096] = "";
    int64_t ck_step = -1;
    if ((s = train_checkpoint_latest(o->out_dir, ck, sizeof ck, &ck_step, err))) return s;
    int64_t position = 0;
    *start_step = 0;
    char log_path[4200];
    snprintf(log_path, sizeof log_path, "%s/train_log.jsonl", o->out_dir);
    if (ck[0] && !o->resume)
        return ergo_fail(err, ERGO_E_ARG, "%s already holds a run (%s): pass --resume to continue "
                         "it, or another --out", o->out_dir, ck);
    if (ck[0]) {
        train_run_state rs = {0};
        if ((s = train_checkpoint_load_state(ck, &r->tm, &rs, err))) return s;
        json_decref(rs.config);
        *start_step = rs.step;
        position = rs.data_pos;
        if (r->rank == 0 && o->progress >= 0)
            fprintf(stderr, "ergo train sft: resuming from %s (step %lld)\n", ck, (long long)rs.step);
    } else if (o->resume && r->rank == 0 && o->progress >= 0) {
        fprintf(stderr, "ergo train sft: no checkpoint in %s: starting from step 0\n", o->out_dir);
    }
    if ((s = sft_cursor_init(&r->cur, &r->ds, o->seed, position, err))) return s;
    if (r->rank == 0 && (s = run_log_open(&r->log, log_path, ck[0] ? *start_step : -1, err)))
        return s;
    return ERGO_OK;
}

ergo_status sft_run(const engine *e, const char *model_dir, const sft_options *o,
                    const train_comm *comm, sft_result *res, ergo_error *err) {
    memset(res, 0, sizeof *res);
    res->first_heldout = res->last_heldout = res->last_loss = NAN;
    sft_run_ctx r;
    memset(&r, 0, sizeof r);
    r.e = e, r.o = o, r.comm = comm, r.log.fd = -1;
    r.rank = comm ? comm->rank : 0;
    r.size = comm && comm->size > 0 ? comm->size : 1;
    int64_t step0 = 0;
    ergo_status s = setup(&r, model_dir, &step0, err);
    if (s) {
        run_free(&r);
        return s;
    }
    const int per_rank = o->batch * o->accum;
    const double t_start = now_ms();
    int64_t tokens_seen = 0;
    double last_loss = NAN;
    int64_t step = step0;
    for (; step < r.total_steps; step++) {
        /* this step's examples: every rank walks the same global order */
        int mine = 0, stop = 0;
        double counts[3] = {0, 0, 0}; /* loss tokens, tokens, failed ranks */
        for (int k = 0; k < per_rank * r.size; k++) {
            const int64_t rec = sft_cursor_next(&r.cur, &r.ds);
            if (k % r.size != r.rank || stop) continue;
            int skip = 0;
            sft_example *x = &r.exs[mine];
            sft_example_free(x);
            memset(x, 0, sizeof *x);
            if ((s = read_example(&r, rec, x, &skip, res, err))) stop = 1;
            else if (!skip) {
                counts[0] += x->n_loss_tokens, counts[1] += x->n;
                mine++;
            }
        }
        counts[2] = stop;
        sum_f64(&r, counts, 3);
        if (counts[2] > 0) {
            if (!s) s = ergo_fail(err, ERGO_E_ARG, "another rank stopped at step %lld (see its message)",
                                  (long long)step + 1);
            break;
        }
        const double n_loss = counts[0];
        train_model_zero_grads(&r.tm);
        double loss_sum = 0;
        for (int i = 0; i < mine && !s; i++) {
            train_example ex;
            train_image ims[64];
            to_train_example(&r.exs[i], &ex, ims, e->m.config.image_token_id);
            int n = 0;
            if ((s = train_forward(&r.ts, &r.tm, &ex, 1.0f, r.logp, &n, err))) break;
            for (int j = 0; j < n; j++) loss_sum -= (double)r.logp[j], r.g[j] = (float)(-1.0 / n_loss);
            train_backward(&r.ts, &r.tm, r.g);
            res->examples++;
        }
        double fail_flag = s != ERGO_OK;
        sum_f64(&r, &fail_flag, 1);
        if (fail_flag > 0) {
            if (!s) s = ergo_fail(err, ERGO_E_ARG, "another rank failed at step %lld", (long long)step + 1);
            break;
        }
        if (n_loss == 0) {
            if (r.rank == 0) fprintf(stderr, "ergo train sft: step %lld has no loss token (every "
                                     "example skipped): no update\n", (long long)step + 1);
            continue;
        }
        if (r.size > 1)
            for (int i = 0; i < r.tm.n_opt; i++) comm->sum_f32(comm->ctx, r.tm.opt[i].g, r.tm.opt[i].n);
        sum_f64(&r, &loss_sum, 1);
        const double loss = loss_sum / n_loss;
        const float norm = grad_clip_global_norm(r.tm.opt, r.tm.n_opt, o->max_grad_norm);
        if (!isfinite(loss) || !isfinite(norm)) {
            const char *bad = run_nonfinite_grad(&r.tm);
            s = ergo_fail(err, ERGO_E_ARG, "step %lld: %s%s%s: stopped; the last checkpoint%s%s is "
                          "intact", (long long)step + 1, !isfinite(loss) ? "the loss is not finite" : "",
                          !isfinite(loss) && bad ? ", " : "",
                          bad ? "a gradient is not finite" : "", res->checkpoint[0] ? " " : "",
                          res->checkpoint);
            if (bad) snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
                              " (first non-finite gradient: %s)", bad);
            break;
        }
        const float lr = lr_at(&r.sched, step);
        adamw_step(r.tm.opt, r.tm.n_opt, &o->adam, step + 1, lr);
        last_loss = loss;
        tokens_seen += (int64_t)counts[1];
        const double el = (now_ms() - t_start) / 1e3;
        const double tps = el > 0 ? (double)tokens_seen / el : 0;
        const double epoch = r.ds.n_train ? (double)r.cur.position / (double)r.ds.n_train : 0;
        json_t *rec = json_pack("{s:I, s:f, s:f, s:f, s:f, s:I, s:I, s:f, s:f}", "step",
                                (json_int_t)(step + 1), "epoch", epoch, "loss", loss, "lr", (double)lr,
                                "grad_norm", (double)norm, "loss_tokens", (json_int_t)n_loss,
                                "tokens", (json_int_t)counts[1], "tokens_per_s", tps, "elapsed_s", el);
        if ((s = run_log_write(&r.log, rec, err))) break;
        run_curve_add(&r.train_curve, (double)(step + 1), loss);
        if (r.rank == 0 && o->progress >= 0) {
            const int64_t done = step + 1 - step0, left = r.total_steps - step - 1;
            char eta[32];
            run_format_eta(eta, sizeof eta, done > 0 ? el / (double)done * (double)left : -1);
            if (o->progress == 1)
                fprintf(stderr, "\rstep %lld/%lld  loss %.4f  lr %.3g  grad norm %.3f  %.0f tok/s  ETA %s   ",
                        (long long)step + 1, (long long)r.total_steps, loss, (double)lr, (double)norm,
                        tps, eta);
            else if ((step + 1) % (o->log_every > 0 ? o->log_every : 1) == 0 || left == 0)
                fprintf(stderr, "step %lld/%lld  loss %.4f  lr %.3g  grad norm %.3f  %.0f tok/s  ETA %s\n",
                        (long long)step + 1, (long long)r.total_steps, loss, (double)lr, (double)norm,
                        tps, eta);
        }
        const int last = step + 1 == r.total_steps;
        if (r.ds.n_heldout > 0 && ((o->eval_every > 0 && (step + 1) % o->eval_every == 0) || last)) {
            double hl;
            if ((s = heldout_loss(&r, &hl, err))) break;
            if (isnan(res->first_heldout)) res->first_heldout = hl;
            res->last_heldout = hl;
            run_curve_add(&r.heldout_curve, (double)(step + 1), hl);
            if (r.rank == 0 && o->progress == 1) fputc('\n', stderr);
            if (r.rank == 0 && o->progress >= 0)
                fprintf(stderr, "step %lld: held-out loss %.4f over %lld conversations\n",
                        (long long)step + 1, hl, (long long)r.ds.n_heldout);
            if ((s = run_log_write(&r.log, json_pack("{s:I, s:f, s:I}", "step", (json_int_t)(step + 1),
                                              "heldout_loss", hl, "heldout", (json_int_t)r.ds.n_heldout),
                                err)))
                break;
        }
        if ((o->save_every > 0 && (step + 1) % o->save_every == 0) || last) {
            if ((s = save(&r, step + 1, loss, res, model_dir, err))) break;
        }
    }
    if (r.rank == 0 && o->progress == 1) fputc('\n', stderr);
    res->steps = step;
    res->last_loss = last_loss;
    if (!s && step == step0 && r.rank == 0 && o->progress >= 0)
        fprintf(stderr, "ergo train sft: nothing to do (the run has its %lld steps)\n",
                (long long)r.total_steps);
    run_free(&r);
    return s;
}
