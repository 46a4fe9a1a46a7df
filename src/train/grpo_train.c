/*
 * grpo_train.c - the GRPO loop (grpo_train.h).
 *
 * Determinism: the item order is a seeded shuffle per epoch, a rollout group's
 * sampling streams come from (seed, step, item), and each step's arithmetic is fixed,
 * so a resumed run repeats exactly what the crashed one would have done.
 */
#include "grpo_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "eval/bench_data.h"
#include "image/image.h"
#include "pipeline/ergo.h"
#include "runtime/context.h"
#include "train/checkpoint.h"
#include "train/plot.h"
#include "train/policy_weights.h"
#include "train/run_log.h"
#include "train/step.h"

#define NAME "ergo train grpo"

void grpo_options_default(grpo_options *o) {
    memset(o, 0, sizeof *o);
    o->epochs = 1;
    o->prompts_per_step = 2;
    o->num_iterations = 1;
    rollout_config_default(&o->rollout);
    grpo_config_default(&o->objective);
    o->objective.group_size = o->rollout.group;
    reward_config_default(&o->reward);
    judge_config_default(&o->judge);
    o->lr = 1e-6f;
    o->schedule = LR_CONSTANT;
    o->adam = (adamw_config){0.9f, 0.99f, 1e-8f, 0.0f};
    o->max_grad_norm = 1.0f;
    o->seed = 42;
    o->max_tokens = 4096;
    o->max_patches = 16384;
    o->save_every = 50;
    o->keep = 3;
    o->skip_bad_items = 1;
    o->log_every = 1;
}

/* One training item: what the data line says (the image is read when it is used). */
typedef struct grpo_item {
    char *key, *image_path, *question, *postfix, *label;
    char **options;
    int n_options;
    int has_box;
    int box[4];
} grpo_item;

typedef struct grpo_ctx {
    const engine *e;
    const grpo_options *o;
    const train_comm *comm;
    int rank, size;
    grpo_item *items;
    int64_t n_items;
    int64_t *order;          /* (n_items) this epoch's permutation */
    int64_t order_epoch;
    train_model tm;          /* the policy */
    train_model ref;         /* the reference: a view of the base's weights, no adapters */
    train_states ts;
    engine policy;           /* view of e running tm's masters (or pw) */
    policy_weights pw;       /* LoRA: the adapted linears merged, for the rollouts */
    int lora;
    context ctx;
    int ctx_ready;
    judge *judge;
    lr_schedule sched;
    int64_t total_steps;
    run_log log;
    run_curve c_total, c_region, c_box, c_acc, c_format;
    run_curve c_area, c_nobox, c_zero, c_clip;   /* the second plot: where the policy looks */
    float *logp, *g;         /* (max_tokens) */
    uint8_t *mask;
    int32_t *targets;
} grpo_ctx;

static void sum_f64(const grpo_ctx *r, double *v, size_t n) {
    if (r->comm && r->comm->size > 1) r->comm->sum_f64(r->comm->ctx, v, n);
}

static void item_free(grpo_item *it) {
    free(it->key), free(it->image_path), free(it->question), free(it->postfix), free(it->label);
    for (int i = 0; i < it->n_options; i++) free(it->options[i]);
    free(it->options);
}

/* Reads every item's metadata (lines that cannot be built are skipped or stop). */
static ergo_status load_items(grpo_ctx *r, int64_t *bad, ergo_error *err) {
    bench_iter *it;
    ergo_status s = bench_open_jsonl(&it, r->o->data_path, NULL, err);
    if (s) return s;
    int64_t cap = 0;
    for (;;) {
        bench_sample bs;
        int done = 0;
        if ((s = bench_next(it, &bs, &done, err)) || done) break;
        if (bs.failed) {
            if (!r->o->skip_bad_items) {
                s = ergo_fail(err, ERGO_E_FORMAT, "%s", bs.error);
                bench_sample_free(&bs);
                break;
            }
            if (r->rank == 0) fprintf(stderr, NAME ": skipped: %s\n", bs.error);
            (*bad)++;
            bench_sample_free(&bs);
            continue;
        }
        if (r->n_items == cap) {
            cap = cap ? 2 * cap : 256;
            grpo_item *n = realloc(r->items, sizeof *n * (size_t)cap);
            if (!n) {
                bench_sample_free(&bs);
                s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for %lld items", (long long)cap);
                break;
            }
            r->items = n;
        }
        grpo_item *x = &r->items[r->n_items++];
        memset(x, 0, sizeof *x);
        /* take the strings over from the sample */
        x->key = bs.key, bs.key = NULL;
        x->image_path = bs.image_path, bs.image_path = NULL;
        x->question = bs.question, bs.question = NULL;
        x->postfix = bs.postfix, bs.postfix = NULL;
        x->label = bs.label, bs.label = NULL;
        x->options = bs.options, bs.options = NULL;
        x->n_options = bs.n_options, bs.n_options = 0;
        x->has_box = bs.has_box;
        for (int k = 0; k < 4; k++) x->box[k] = (int)lround(bs.box[k]);
        bench_sample_free(&bs);
        if (!x->image_path) {
            s = ergo_fail(err, ERGO_E_FORMAT, "%s: an item without an image path", x->key);
            break;
        }
    }
    bench_close(it);
    if (!s && r->n_items == 0)
        s = ergo_fail(err, ERGO_E_ARG, "%s: no usable item", r->o->data_path);
    return s;
}

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The item at global position pos of the run (epoch = pos / n_items, a seeded
 * Fisher-Yates order per epoch). */
static int64_t item_at(grpo_ctx *r, int64_t pos) {
    const int64_t epoch = pos / r->n_items;
    if (epoch != r->order_epoch) {
        for (int64_t i = 0; i < r->n_items; i++) r->order[i] = i;
        uint64_t x = mix(r->o->seed ^ (0x5851F42D4C957F2Dull * (uint64_t)(epoch + 1)));
        for (int64_t i = r->n_items - 1; i > 0; i--) {
            x = mix(x + 0x9E3779B97F4A7C15ull);
            const int64_t j = (int64_t)(x % (uint64_t)(i + 1));
            const int64_t t = r->order[i];
            r->order[i] = r->order[j], r->order[j] = t;
        }
        r->order_epoch = epoch;
    }
    return r->order[pos % r->n_items];
}

static void ctx_free(grpo_ctx *r) {
    run_log_close(&r->log);
    run_curve_free(&r->c_total), run_curve_free(&r->c_region), run_curve_free(&r->c_box);
    run_curve_free(&r->c_acc), run_curve_free(&r->c_format);
    run_curve_free(&r->c_area), run_curve_free(&r->c_nobox), run_curve_free(&r->c_zero);
    run_curve_free(&r->c_clip);
    free(r->logp), free(r->g), free(r->mask), free(r->targets);
    if (r->judge) judge_close(r->judge);
    if (r->ctx_ready) context_free(&r->ctx);
    train_states_free(&r->ts);
    if (r->lora) policy_weights_free(&r->pw);
    train_model_free(&r->tm);
    for (int64_t i = 0; r->items && i < r->n_items; i++) item_free(&r->items[i]);
    free(r->items);
    free(r->order);
}

static void plot_rewards(grpo_ctx *r) {
    if (r->rank) return;
    char path[4200];
    snprintf(path, sizeof path, "%s/rewards.png", r->o->out_dir);
    plot_series s[5] = {{"total", r->c_total.x, r->c_total.y, r->c_total.n},
                        {"region", r->c_region.x, r->c_region.y, r->c_region.n},
                        {"box", r->c_box.x, r->c_box.y, r->c_box.n},
                        {"accuracy", r->c_acc.x, r->c_acc.y, r->c_acc.n},
                        {"format", r->c_format.x, r->c_format.y, r->c_format.n}};
    ergo_error e2 = {0};
    if (plot_lines(path, "mean reward per step", "step", s, 5, &e2))
        fprintf(stderr, NAME ": warning: %s\n", e2.msg);
    snprintf(path, sizeof path, "%s/boxes.png", r->o->out_dir);
    plot_series b[4] = {{"box area / image", r->c_area.x, r->c_area.y, r->c_area.n},
                        {"no-box rate", r->c_nobox.x, r->c_nobox.y, r->c_nobox.n},
                        {"zero-variance groups", r->c_zero.x, r->c_zero.y, r->c_zero.n},
                        {"clipped tokens", r->c_clip.x, r->c_clip.y, r->c_clip.n}};
    if (plot_lines(path, "where the policy looks, and the learning signal", "step", b, 4, &e2))
        fprintf(stderr, NAME ": warning: %s\n", e2.msg);
}

static ergo_status save(grpo_ctx *r, int64_t step, double last_reward, const char *model_dir,
                        grpo_result *res, ergo_error *err) {
    if (r->rank) return ERGO_OK;
    train_run_state rs = {0};
    rs.step = step;
    rs.data_pos = step * r->o->prompts_per_step;
    rs.epoch = rs.data_pos / r->n_items;
    rs.lr_step = step;
    rs.last_loss = last_reward;
    rs.best_loss = NAN;
    rs.best_step = -1;
    ergo_status s = train_checkpoint_save(r->o->out_dir, &r->tm, &r->e->m, model_dir, &rs,
                                          r->o->keep, res->checkpoint, sizeof res->checkpoint, err);
    plot_rewards(r);
    return s;
}

static ergo_status setup(grpo_ctx *r, const char *model_dir, int64_t *start_step, int64_t *bad,
                         ergo_error *err) {
    const grpo_options *o = r->o;
    const engine *e = r->e;
    ergo_status s;
    if (!e->tok || !e->has_chat_template)
        return ergo_fail(err, ERGO_E_ARG, "%s: GRPO needs the tokenizer and chat template beside "
                         "the weights", model_dir);
    if (o->prompts_per_step < 1 || o->max_tokens < 64 || o->max_patches < 4 || o->num_iterations < 1)
        return ergo_fail(err, ERGO_E_ARG, "grpo: %d prompts per step, max tokens %d, max patches %d",
                         o->prompts_per_step, o->max_tokens, o->max_patches);
    if (o->objective.group_size != o->rollout.group)
        return ergo_fail(err, ERGO_E_ARG, "grpo: the objective's group size %d differs from the "
                         "rollouts' %d", o->objective.group_size, o->rollout.group);
    if (!(o->rollout.sampling.temperature > 0.0f))
        return ergo_fail(err, ERGO_E_ARG, "grpo: the rollout temperature must be > 0");
    if ((s = grpo_config_check(&o->objective, err)) || (s = reward_config_check(&o->reward, err)))
        return s;
    if (r->rank == 0 && (s = run_mkdir_p(o->out_dir, err))) return s;
    if ((s = load_items(r, bad, err))) return s;
    if (!(r->order = malloc(sizeof(int64_t) * (size_t)r->n_items)))
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    r->order_epoch = -1;
    if (reward_needs_judge(&o->reward)) {
        if (o->judge.kind == JUDGE_ORACLE)
            for (int64_t i = 0; i < r->n_items; i++)
                if (!r->items[i].has_box)
                    return ergo_fail(err, ERGO_E_ARG, "%s: the oracle judge needs a \"bbox\" on every "
                                     "item (%s has none)", o->data_path, r->items[i].key);
        if ((s = judge_open(&r->judge, &o->judge, err))) return s;
    }
    if ((s = train_model_init(&r->tm, &e->m, &o->train, err))) return s;
    /* the reference: the same structure, the base's weights, nothing trained */
    r->ref = r->tm;
    r->ref.w = e->m.weights;
    memset(&r->ref.lora, 0, sizeof r->ref.lora);
    if ((s = train_states_init(&r->ts, &r->tm, o->max_tokens, o->max_patches, 2, o->recompute, err)))
        return s;
    r->lora = r->tm.lora.linears != NULL;
    if (r->lora && (s = policy_weights_init(&r->pw, &r->tm, err))) return s;
    engine_view(&r->policy, e, r->lora ? &r->pw.w : &r->tm.w);
    if ((s = context_init(&r->ctx, &r->policy, err))) return s;
    r->ctx_ready = 1;
    const size_t T = (size_t)o->max_tokens;
    r->logp = malloc(sizeof(float) * T);
    r->g = malloc(sizeof(float) * T);
    r->mask = malloc(T);
    r->targets = malloc(sizeof(int32_t) * T);
    if (!r->logp || !r->g || !r->mask || !r->targets)
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");

    const int64_t per_epoch = (r->n_items + o->prompts_per_step - 1) / o->prompts_per_step;
    r->total_steps = o->max_steps > 0 ? o->max_steps : o->epochs * per_epoch;
    /* the schedule counts optimiser steps: mu per step of rollouts */
    const int64_t mu = o->num_iterations > 0 ? o->num_iterations : 1;
    r->sched = (lr_schedule){o->schedule, o->lr, o->warmup_steps * mu, r->total_steps * mu};

    char ck[4096] = "";
    int64_t ck_step = -1;
    if ((s = train_checkpoint_latest(o->out_dir, ck, sizeof ck, &ck_step, err))) return s;
    *start_step = 0;
    if (ck[0] && !o->resume)
        return ergo_fail(err, ERGO_E_ARG, "%s already holds a run (%s): pass --resume to continue "
                         "it, or another --out", o->out_dir, ck);
    if (ck[0]) {
        train_run_state rs = {0};
        if ((s = train_checkpoint_load_state(ck, &r->tm, &rs, err))) return s;
        json_decref(rs.config);
        *start_step = rs.step;
        if (r->lora) policy_weights_update(&r->pw, &r->tm);
        if (r->rank == 0 && o->progress >= 0)
            fprintf(stderr, NAME ": resuming from %s (step %lld)\n", ck, (long long)rs.step);
    } else if (o->resume && r->rank == 0 && o->progress >= 0) {
        fprintf(stderr, NAME ": no checkpoint in %s: starting from step 0\n", o->out_dir);
    }
    char log_path[4200];
    snprintf(log_path, sizeof log_path, "%s/train_log.jsonl", o->out_dir);
    r->log.fd = -1;
    if (r->rank == 0 && (s = run_log_open(&r->log, log_path, ck[0] ? *start_step : -1, err)))
        return s;
    return ERGO_OK;
}

/* One item's rollouts, their rewards into R (G values, NAN for a dropped group) and
 * parts (G); the group stays in *g for the update. */
static ergo_status roll_item(grpo_ctx *r, const grpo_item *it, uint64_t seed, rollout_group *g,
                             double *R, reward_parts *parts, double *judge_ms, int *bad_item,
                             ergo_error *err) {
    const grpo_options *o = r->o;
    image orig = {0};
    *bad_item = 0;
    memset(g, 0, sizeof *g);
    ergo_status s = image_decode_file(&orig, it->image_path, NULL, err);
    if (s) {
        if (!o->skip_bad_items || s == ERGO_E_NOMEM) return s;
        fprintf(stderr, NAME ": skipped %s: %s\n", it->key, err->msg);
        *bad_item = 1;
        for (int k = 0; k < o->rollout.group; k++) R[k] = NAN;
        return ERGO_OK;
    }
    const ergo_question q = {it->question, (const char *const *)it->options, it->n_options,
                             it->postfix};
    s = rollout_group_run(&r->ctx, &o->rollout, &orig, &q, seed, g, err);
    char *full_q = s ? NULL : ergo_full_question(&q);
    if (!s && !full_q) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    const double t0 = now_ms();
    int dropped = 0;
    for (int k = 0; !s && k < g->n; k++) {
        const rollout *ro = &g->r[k];
        char name[256];
        snprintf(name, sizeof name, "%s rollout %d", it->key, k);
        reward_rollout rr = {.item = name, .stage1_text = ro->s1_text,
                             .stage2_text = ro->stage2 ? ro->s2_text : NULL, .label = it->label,
                             .box_status = ro->box_status, .crop = ro->crop, .width = g->width,
                             .height = g->height,
                             .crop_image = ro->crop_index >= 0 ? &g->crops[ro->crop_index].img : NULL,
                             .question = full_q, .gt_box = it->has_box ? it->box : NULL};
        if ((s = reward_score(&o->reward, r->judge, &rr, &parts[k], err))) break;
        dropped |= parts[k].dropped;
        R[k] = parts[k].total;
        if (o->reward_hook) R[k] = parts[k].total = o->reward_hook(o->reward_hook_ctx, ro, k);
    }
    *judge_ms += now_ms() - t0;
    if (!s && dropped)
        for (int k = 0; k < g->n; k++) R[k] = NAN; /* the whole group is left out */
    free(full_q);
    image_free(&orig);
    return s;
}

/* The train_example of rollout ro (targets and mask from its answer spans). */
static ergo_status rollout_example(grpo_ctx *r, const rollout_group *g, const rollout *ro,
                                   train_example *ex, train_image ims[2], grpo_mask_info *mi,
                                   ergo_error *err) {
    if (ro->n > r->o->max_tokens)
        return ergo_fail(err, ERGO_E_LIMIT, "a rollout of %d tokens is over --max-tokens %d", ro->n,
                         r->o->max_tokens);
    grpo_segment segs[4];
    int n_segs = 0;
    segs[n_segs++] = (grpo_segment){GRPO_SEG_CONTEXT, 0, ro->s1_begin};
    segs[n_segs++] = (grpo_segment){GRPO_SEG_GENERATED, ro->s1_begin, ro->s1_end - ro->s1_begin};
    if (ro->stage2) {
        segs[n_segs++] = (grpo_segment){GRPO_SEG_CONTEXT, ro->s1_end, ro->s2_begin - ro->s1_end};
        segs[n_segs++] = (grpo_segment){GRPO_SEG_GENERATED, ro->s2_begin, ro->s2_end - ro->s2_begin};
    }
    const model_config *cfg = &r->e->m.config;
    const grpo_mask_config mc = {151645, cfg->image_token_id, 0};
    ergo_status s = grpo_build_mask(&mc, ro->ids, ro->n, segs, n_segs, r->mask, r->targets, mi, err);
    if (s) return s;
    int n_images = 0;
    ims[n_images++] = (train_image){g->px1.pixel_values, g->px1.grid_t, g->px1.grid_h, g->px1.grid_w};
    if (ro->stage2) {
        const preprocess_output *px = &g->crops[ro->crop_index].px;
        ims[n_images++] = (train_image){px->pixel_values, px->grid_t, px->grid_h, px->grid_w};
    }
    ex->text = (train_sample){ro->ids, {ro->pos[0], ro->pos[1], ro->pos[2]}, r->targets, ro->n,
                              NULL, 0, cfg->image_token_id};
    ex->images = ims;
    ex->n_images = n_images;
    return ERGO_OK;
}

ergo_status grpo_run(const engine *e, const char *model_dir, const grpo_options *o,
                     const train_comm *comm, grpo_result *res, ergo_error *err) {
    memset(res, 0, sizeof *res);
    res->first_reward = res->last_reward = NAN;
    grpo_ctx r;
    memset(&r, 0, sizeof r);
    r.e = e, r.o = o, r.comm = comm, r.log.fd = -1;
    r.rank = comm ? comm->rank : 0;
    r.size = comm && comm->size > 0 ? comm->size : 1;
    int64_t step0 = 0;
    ergo_status s = setup(&r, model_dir, &step0, &res->bad_items, err);
    const int P = o->prompts_per_step, G = o->rollout.group, PG = P * G;
    const float tau = o->rollout.sampling.temperature;
    double *R = calloc((size_t)PG, sizeof *R), *adv = calloc((size_t)PG, sizeof *adv);
    double *lens = calloc((size_t)PG * 2, sizeof *lens); /* loss tokens, generated tokens */
    reward_parts *parts = calloc((size_t)PG, sizeof *parts);
    rollout_group *groups = calloc((size_t)P, sizeof *groups);
    uint8_t *zero_std = calloc((size_t)P, 1), *dropped_g = calloc((size_t)P, 1);
    float **old_lp = calloc((size_t)PG, sizeof *old_lp), **ref_lp = calloc((size_t)PG, sizeof *ref_lp);
    if (!s && (!R || !adv || !lens || !parts || !groups || !zero_std || !dropped_g || !old_lp || !ref_lp))
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    const double t_start = now_ms();
    int64_t step = step0, gen_tokens = 0;
    for (; !s && step < r.total_steps; step++) {
        double t_roll = 0, t_judge = 0, t_ref = 0, t_update = 0;
        /* 1. rollouts and rewards of this rank's items; every rank fills its slots */
        for (int i = 0; i < PG; i++) R[i] = 0, lens[2 * i] = lens[2 * i + 1] = 0;
        memset(parts, 0, sizeof *parts * (size_t)PG);
        double flags[2] = {0, 0}; /* failed ranks, dropped/bad groups */
        const double t0 = now_ms();
        for (int k = 0; k < P; k++) {
            rollout_group_free(&groups[k]);
            if (k % r.size != r.rank || s) continue;
            const grpo_item *it = &r.items[item_at(&r, step * P + k)];
            int bad = 0;
            double jm = 0;
            const uint64_t seed = mix(o->seed + 0x9E3779B97F4A7C15ull * (uint64_t)(step * P + k + 1));
            s = roll_item(&r, it, seed, &groups[k], R + (size_t)k * G, parts + (size_t)k * G, &jm,
                          &bad, err);
            t_judge += jm;
            res->bad_items += bad;
            res->rollouts += groups[k].n;
            gen_tokens += groups[k].generated_tokens;
        }
        t_roll = now_ms() - t0 - t_judge;
        flags[0] = s != ERGO_OK;
        sum_f64(&r, flags, 1);
        if (flags[0] > 0) {
            if (!s) s = ergo_fail(err, ERGO_E_ARG, "another rank failed at step %lld", (long long)step + 1);
            break;
        }
        /* 2. masks (for the global token counts) */
        for (int k = 0; k < P && !s; k++) {
            if (k % r.size != r.rank || !groups[k].n) continue;
            for (int j = 0; j < G && !s; j++) {
                train_example ex;
                train_image ims[2];
                grpo_mask_info mi;
                if ((s = rollout_example(&r, &groups[k], &groups[k].r[j], &ex, ims, &mi, err))) break;
                lens[2 * ((size_t)k * G + j)] = mi.n_loss;
                lens[2 * ((size_t)k * G + j) + 1] = mi.n_generated;
            }
        }
        flags[0] = s != ERGO_OK;
        sum_f64(&r, flags, 1);
        if (flags[0] > 0) {
            if (!s) s = ergo_fail(err, ERGO_E_ARG, "another rank failed at step %lld", (long long)step + 1);
            break;
        }
        sum_f64(&r, R, (size_t)PG);
        sum_f64(&r, lens, (size_t)PG * 2);
        /* 3. advantages over the kept groups of the whole step */
        double *Rk = calloc((size_t)PG, sizeof *Rk), *Ak = calloc((size_t)PG, sizeof *Ak);
        int kept = 0;
        grpo_reward_stats rst = {0};
        if (!Rk || !Ak) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        for (int k = 0; !s && k < P; k++) {
            int drop = 0;
            for (int j = 0; j < G; j++) drop |= isnan(R[(size_t)k * G + j]);
            dropped_g[k] = (uint8_t)drop;
            if (drop) {
                res->dropped_groups += r.rank == 0;
                continue;
            }
            memcpy(Rk + (size_t)kept * G, R + (size_t)k * G, sizeof(double) * (size_t)G);
            kept++;
        }
        if (!s && kept) s = grpo_advantages(&o->objective, Rk, kept * G, Ak, zero_std, &rst, err);
        for (int k = 0, q = 0; !s && k < P; k++) {
            for (int j = 0; j < G; j++)
                adv[(size_t)k * G + j] = dropped_g[k] ? (double)NAN : Ak[(size_t)q * G + j];
            q += !dropped_g[k];
        }
        free(Rk), free(Ak);
        if (s) break;
        grpo_norm nm = {0};
        nm.grad_accum = 1;
        nm.n_processes = 1; /* the step's global counts: the update does not depend on ranks */
        for (int k = 0; k < P; k++) {
            if (isnan(adv[(size_t)k * G])) continue;
            for (int j = 0; j < G; j++) {
                nm.n_seqs++;
                nm.n_tokens += (int64_t)lens[2 * ((size_t)k * G + j)];
                nm.global_tokens += (int64_t)lens[2 * ((size_t)k * G + j) + 1];
            }
        }
        /* 4. mu optimiser steps on these rollouts: forward and backward of every rollout
         * that has a gradient; the first iteration's log-probabilities are the old
         * policy's for the later ones (and the reference's are computed once) */
        const int mu = o->num_iterations > 0 ? o->num_iterations : 1;
        grpo_stats st = {0};
        double loss_flag[8] = {0};
        float norm = 0, lr = 0;
        for (int it = 0; it < mu && !s; it++) {
            train_model_zero_grads(&r.tm);
            memset(&st, 0, sizeof st);
            const double t1 = now_ms();
            double t_ref_it = 0;
            for (int k = 0; k < P && !s; k++) {
                if (k % r.size != r.rank || !groups[k].n || isnan(adv[(size_t)k * G])) continue;
                for (int j = 0; j < G && !s; j++) {
                    const size_t q = (size_t)k * G + j;
                    const double A = adv[q];
                    if (A == 0.0 && o->objective.kl_beta == 0.0) continue; /* no gradient */
                    train_example ex;
                    train_image ims[2];
                    grpo_mask_info mi;
                    if ((s = rollout_example(&r, &groups[k], &groups[k].r[j], &ex, ims, &mi, err))) break;
                    const int want = mi.n_loss;
                    if (it == 0 && (!(old_lp[q] = malloc(sizeof(float) * (size_t)(want + 1))) ||
                                    !(ref_lp[q] = malloc(sizeof(float) * (size_t)(want + 1))))) {
                        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
                        break;
                    }
                    int n = 0, n_ref = want;
                    const double tr = now_ms();
                    if (it == 0 && o->objective.kl_beta > 0.0 &&
                        (s = train_forward(&r.ts, &r.ref, &ex, tau, ref_lp[q], &n_ref, err)))
                        break;
                    t_ref_it += now_ms() - tr;
                    if ((s = train_forward(&r.ts, &r.tm, &ex, tau, r.logp, &n, err))) break;
                    if (n != want || n_ref != want) {
                        s = ergo_fail(err, ERGO_E_SHAPE, "a rollout gave %d policy and %d reference "
                                      "log-probabilities for %d loss tokens", n, n_ref, want);
                        break;
                    }
                    if (it == 0) memcpy(old_lp[q], r.logp, sizeof(float) * (size_t)n);
                    const grpo_seq sq = {r.logp, it ? old_lp[q] : NULL,
                                         o->objective.kl_beta > 0.0 ? ref_lp[q] : NULL, NULL, n, A};
                    if ((s = grpo_seq_loss(&o->objective, &nm, &sq, r.g, &st, err))) break;
                    train_backward(&r.ts, &r.tm, r.g);
                }
            }
            t_ref += t_ref_it;
            t_update += now_ms() - t1 - t_ref_it;
            loss_flag[0] = s != ERGO_OK;
            loss_flag[1] = st.loss, loss_flag[2] = st.tokens, loss_flag[3] = st.kl_sum;
            loss_flag[4] = st.kl_tokens, loss_flag[5] = st.low_clipped, loss_flag[6] = st.high_clipped;
            loss_flag[7] = st.region_clipped;
            sum_f64(&r, loss_flag, 8);
            if (loss_flag[0] > 0) {
                if (!s) s = ergo_fail(err, ERGO_E_ARG, "another rank failed at step %lld", (long long)step + 1);
                break;
            }
            if (r.size > 1)
                for (int i = 0; i < r.tm.n_opt; i++) comm->sum_f32(comm->ctx, r.tm.opt[i].g, r.tm.opt[i].n);
            norm = grad_clip_global_norm(r.tm.opt, r.tm.n_opt, o->max_grad_norm);
            if (!isfinite(norm) || !isfinite(loss_flag[1])) {
                const char *bad = run_nonfinite_grad(&r.tm);
                s = ergo_fail(err, ERGO_E_ARG, "step %lld: the %s is not finite%s%s: stopped; the last "
                              "checkpoint%s%s is intact", (long long)step + 1,
                              isfinite(loss_flag[1]) ? "gradient" : "loss", bad ? " at " : "", bad ? bad : "",
                              res->checkpoint[0] ? " " : "", res->checkpoint);
                break;
            }
            /* each iteration is an optimiser step (TRL's global step) */
            const int64_t t_opt = step * mu + it;
            lr = lr_at(&r.sched, t_opt);
            adamw_step(r.tm.opt, r.tm.n_opt, &o->adam, t_opt + 1, lr);
            if (r.lora) policy_weights_update(&r.pw, &r.tm); /* the next rollouts' policy */
        }
        for (int q = 0; q < PG; q++) {
            free(old_lp[q]), free(ref_lp[q]);
            old_lp[q] = ref_lp[q] = NULL;
        }
        if (s) break;

        /* 5. the step's figures, over all ranks */
        reward_stats rs = {0};
        for (int k = 0; k < P; k++)
            if (k % r.size == r.rank && groups[k].n)
                for (int j = 0; j < G; j++) reward_stats_add(&rs, &parts[(size_t)k * G + j]);
        double sums[14] = {(double)rs.n, (double)rs.dropped, (double)rs.no_box, rs.sum_region, rs.sum_box,
                           rs.sum_acc, rs.sum_format, rs.sum_total, rs.sum_area,
                           (double)(rs.n - rs.no_box), t_judge, (double)gen_tokens,
                           (double)rs.judge_asked, (double)rs.judge_cached};
        sum_f64(&r, sums, 14);
        const double nr = sums[0] > 0 ? sums[0] : 1;
        const double m_region = sums[3] / nr, m_box = sums[4] / nr, m_acc = sums[5] / nr;
        const double m_format = sums[6] / nr, m_total = sums[7] / nr;
        const double area = sums[9] > 0 ? sums[8] / sums[9] : 0;
        const grpo_stats gs = {loss_flag[1], loss_flag[2], loss_flag[3], loss_flag[4], loss_flag[5],
                               loss_flag[6], loss_flag[7]};
        const grpo_metrics gm = grpo_stats_metrics(&gs);
        double mean_len = 0;
        for (int i = 0; i < PG; i++) mean_len += lens[2 * i + 1];
        mean_len /= PG;
        if (isnan(res->first_reward)) res->first_reward = m_total;
        res->last_reward = m_total;
        const double el = (now_ms() - t_start) / 1e3;
        json_t *rec = json_pack(
            "{s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, "
            "s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
            "step", (json_int_t)(step + 1), "reward", m_total, "r_region", m_region, "r_box", m_box,
            "r_acc", m_acc, "r_format", m_format, "reward_std", rst.reward_std, "frac_reward_zero_std",
            rst.n_groups ? (double)rst.n_zero_std / rst.n_groups : 0.0, "no_box_rate", sums[2] / nr,
            "box_area_ratio", area, "kl", isnan(gm.kl) ? 0.0 : gm.kl, "clip_ratio_low", gm.clip_low,
            "clip_ratio_high", gm.clip_high, "clip_ratio_region", gm.clip_region, "loss", loss_flag[1],
            "grad_norm", (double)norm, "lr", (double)lr, "dropped_groups", (json_int_t)(P - kept),
            "completion_length", mean_len, "tokens_per_s", el > 0 ? sums[11] / el : 0.0, "rollout_s",
            t_roll / 1e3, "judge_s", t_judge / 1e3, "reference_s", t_ref / 1e3, "update_s",
            t_update / 1e3, "elapsed_s", el);
        if (rec) {
            json_object_set_new(rec, "judge_asked", json_integer((json_int_t)sums[12]));
            json_object_set_new(rec, "judge_cached", json_integer((json_int_t)sums[13]));
            json_object_set_new(rec, "judge_dropped", json_integer((json_int_t)sums[1]));
        }
        if ((s = run_log_write(&r.log, rec, err))) break;
        run_curve_add(&r.c_total, (double)(step + 1), m_total);
        run_curve_add(&r.c_region, (double)(step + 1), m_region);
        run_curve_add(&r.c_box, (double)(step + 1), m_box);
        run_curve_add(&r.c_acc, (double)(step + 1), m_acc);
        run_curve_add(&r.c_format, (double)(step + 1), m_format);
        run_curve_add(&r.c_area, (double)(step + 1), area);
        run_curve_add(&r.c_nobox, (double)(step + 1), sums[2] / nr);
        run_curve_add(&r.c_zero, (double)(step + 1), rst.n_groups ? (double)rst.n_zero_std / rst.n_groups : 0.0);
        run_curve_add(&r.c_clip, (double)(step + 1), gm.clip_region);
        if (r.rank == 0 && o->progress >= 0) {
            const int64_t done = step + 1 - step0, left = r.total_steps - step - 1;
            char eta[32];
            run_format_eta(eta, sizeof eta, done > 0 ? el / (double)done * (double)left : -1);
            const char *end = o->progress == 1 ? "   " : "\n";
            if (o->progress == 1 || (step + 1) % (o->log_every > 0 ? o->log_every : 1) == 0 || !left)
                fprintf(stderr, "%sstep %lld/%lld  reward %.3f (region %.2f box %.2f acc %.2f format %.2f)"
                        "  no box %.0f%%  kl %.4f  clip %.3f  len %.0f  ETA %s%s",
                        o->progress == 1 ? "\r" : "", (long long)step + 1, (long long)r.total_steps,
                        m_total, m_region, m_box, m_acc, m_format, 100 * sums[2] / nr,
                        isnan(gm.kl) ? 0.0 : gm.kl, gm.clip_region, mean_len, eta, end);
        }
        const int last = step + 1 == r.total_steps;
        if ((o->save_every > 0 && (step + 1) % o->save_every == 0) || last)
            if ((s = save(&r, step + 1, m_total, model_dir, res, err))) break;
    }
    if (r.rank == 0 && o->progress == 1) fputc('\n', stderr);
    res->steps = step;
    for (int k = 0; groups && k < P; k++) rollout_group_free(&groups[k]);
    free(groups), free(R), free(adv), free(lens), free(parts), free(zero_std), free(dropped_g);
    for (int q = 0; old_lp && ref_lp && q < PG; q++) free(old_lp[q]), free(ref_lp[q]);
    free(old_lp), free(ref_lp);
    ctx_free(&r);
    return s;
}
