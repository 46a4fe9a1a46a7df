/*
 * cmd_bench_model.c - `ergo bench model`: the engine's speed against this machine's
 * limits (issue 5).
 *
 * On a checkpoint directory or on random weights of a real shape built in memory,
 * with a given thread count: vision-encode time at several vision-token counts
 * (window-attention and full-attention blocks apart), prefill tokens/s, decode
 * tokens/s at several context lengths, peak resident memory; and the machine's
 * limits measured with the same threads (kernels/probe.h). Every figure is the
 * median of --reps runs with the fastest and slowest, and its fraction of the
 * matching limit: FLOPs / peak f32 FMA rate for the compute-bound phases (the
 * kernels compute in f32 FMA), bytes read / bandwidth for decode.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <jansson.h>

#include "base/clock.h"
#include "base/rng.h"
#include "cli.h"
#include "io/random_checkpoint.h"
#include "kernels/kernels.h"
#include "kernels/probe.h"
#include "model/quantize.h"
#include "model/text.h"
#include "model/vision.h"
#include "model/weights.h"
#include "runtime/context.h"
#include "runtime/engine.h"

#define MAX_REPS 50
#define MAX_LIST 8
#define MAX_BATCH 64

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct stat3 {
    double median, min, max;
} stat3;

static stat3 stats(const double *v, int n) {
    double s[MAX_REPS > 64 ? MAX_REPS : 64];
    memcpy(s, v, sizeof *v * (size_t)n);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    stat3 r = {s[n / 2], s[0], s[n - 1]};
    if (n % 2 == 0) r.median = 0.5 * (s[n / 2 - 1] + s[n / 2]);
    return r;
}

static json_t *jstat(stat3 s) {
    return json_pack("{s:f, s:f, s:f}", "median", s.median, "min", s.min, "max", s.max);
}

typedef struct opts {
    const char *model_dir, *random, *weights, *weights_cache;
    int text_layers, vision_layers, threads, reps, json, chunk, decode_steps;
    int vt[MAX_LIST], n_vt, pf[MAX_LIST], n_pf, dc[MAX_LIST], n_dc, batch[MAX_LIST], n_batch;
    kv_dtype kv_dtype;
    double probe_seconds;
    FILE *tab; /* the table: stdout, or stderr when stdout gets the JSON */
} opts;

static int parse_list(const char *s, int *out, int *n) {
    *n = 0;
    while (*s && *n < MAX_LIST) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 1000000) return -1;
        if (v > 0) out[(*n)++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return 0;
}

static int list_max(const int *v, int n) {
    int m = 0;
    for (int i = 0; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: ergo bench model (--model DIR | --random 7b|3b) [options]\n"
            "  --text-layers N --vision-layers M   depths of --random (default 2 and 2;\n"
            "                         --vision-depth is an alias)\n"
            "  --weights F            bf16 (as stored, default), q8 or q4 (quantised at load)\n"
            "  --weights-cache C      auto (beside --model, default), off, or a file path\n"
            "  -t, --threads N        OpenMP threads (default: all)\n"
            "  --reps N               repetitions per figure (default 3)\n"
            "  --vision-tokens LIST   merged vision tokens, e.g. 640,1280,4471 (0 = none)\n"
            "  --prefill LIST         prompt lengths, e.g. 512,2048\n"
            "  --decode LIST          contexts, e.g. 1024,4096; --decode-steps N (default 8)\n"
            "  --batch LIST           sequences decoded together, e.g. 1,2,4,8 (default 1; at\n"
            "                         most 64): one step = one token of each, one weight pass\n"
            "  --kv-dtype T           f32 (default) or bf16: how the KV cache stores keys/values\n"
            "  --chunk N              prefill chunk (rows per forward call, default 256)\n"
            "  --probe-seconds S      time for the machine probe (default 2; 0 = skip)\n"
            "  --json                 JSON on stdout (the table goes to stderr)\n");
}

/* ---- FLOP and byte counts ---- */

/* Merged grid hm x wm with about v tokens: exact and near-square when v factors
 * with an aspect ratio of at most 2, else the nearest square-ish grid. */
static void grid_for(int v, int *hm, int *wm) {
    int best = 0;
    for (int h = (int)sqrt((double)v); h >= 1; h--)
        if (v % h == 0) {
            if (v / h <= 2 * h) best = h;
            break;
        }
    if (best) {
        *hm = best, *wm = v / best;
        return;
    }
    *hm = (int)lround(sqrt((double)v));
    *wm = (int)lround((double)v / *hm);
}

/* FLOPs of one vision block on n patches: the linear layers, plus attention over
 * all patches (full) or window by window (window side `wu` merged tokens). */
static double vision_block_flops(const vision_config *c, int hm, int wm, int full) {
    double n = 4.0 * hm * wm, d = c->hidden, f = c->ffn;
    double lin = n * 2 * (d * 3 * d + d * d + 3 * d * f);
    double att = 0;
    if (full) att = 4.0 * n * n * d;
    else {
        int wu = c->window / (c->patch * c->merge);
        for (int r = 0; r < hm; r += wu)
            for (int q = 0; q < wm; q += wu) {
                double rows = hm - r < wu ? hm - r : wu, cols = wm - q < wu ? wm - q : wu;
                double p = rows * cols * 4;
                att += 4.0 * p * p * d;
            }
    }
    return lin + att;
}

static double text_layer_params(const text_config *t) {
    double d = t->hidden, qd = (double)t->n_heads * t->head_dim, kd = (double)t->n_kv_heads * t->head_dim;
    return d * qd + 2 * d * kd + qd * d + 3 * d * t->ffn;
}

/* Bytes one decode step reads from the text weights: every matrix of every layer
 * and the head, quantised or as stored (norms and biases are noise). */
static double decode_weight_bytes(const model *m) {
    const int n = weights_spec(&m->config, NULL, NULL);
    weight_spec *sp = malloc(sizeof *sp * (size_t)n);
    model_weights w = m->weights; /* weights_spec only reads the slots' addresses */
    if (!sp) return 0;
    weights_spec(&m->config, sp, &w);
    double bytes = 0;
    for (int i = 0; i < n; i++) {
        if (sp[i].part != PART_TEXT || !sp[i].slot) continue;
        if (sp[i].kind != WEIGHT_MATRIX && sp[i].kind != WEIGHT_LM_HEAD) continue;
        const weight *wt = sp[i].slot;
        const qmatrix *q = wt->k.q;
        bytes += q ? (double)quant_matrix_bytes(q->format, q->rows, q->cols) : (double)wt->t.nbytes;
    }
    free(sp);
    return bytes;
}

/* ---- the phases ---- */

typedef struct limits_ctx {
    probe_limits lim;
    double peak;           /* the peak of the instruction the products use, GFLOP/s */
    const char *peak_name; /* "f32 FMA" or "bf16 dot" */
} limits_ctx;

static int fail(ergo_error *err) {
    fprintf(stderr, "ergo bench: %s\n", err->msg);
    return 1;
}

static int bench_vision(context *cx, const opts *o, const limits_ctx *L, json_t *out) {
    const model *m = &cx->e->m;
    const vision_config *c = &m->config.vision;
    ergo_error err = {0};
    int max_patches = 0;
    int hms[MAX_LIST], wms[MAX_LIST];
    for (int i = 0; i < o->n_vt; i++) {
        grid_for(o->vt[i], &hms[i], &wms[i]);
        if (4 * hms[i] * wms[i] > max_patches) max_patches = 4 * hms[i] * wms[i];
    }
    if (!max_patches) return 0;
    if (context_reserve_vision(cx, max_patches, &err)) return fail(&err);
    vision_state *vs = &cx->vs;
    const int row = c->in_channels * c->temporal_patch * c->patch * c->patch;
    float *pix = malloc(sizeof *pix * (size_t)max_patches * row);
    float *emb = malloc(sizeof *emb * (size_t)(max_patches / 4) * c->out_hidden);
    if (!pix || !emb) {
        free(pix), free(emb), context_release_vision(cx);
        fprintf(stderr, "ergo bench: out of memory for %d patches\n", max_patches);
        return 1;
    }
    for (size_t i = 0; i < (size_t)max_patches * row; i++) pix[i] = rng_uniform(7, i) * 2.0f;
    for (int i = 0; i < o->n_vt; i++) {
        int hm = hms[i], wm = wms[i], tokens = hm * wm;
        double tot[MAX_REPS], win[MAX_REPS], full[MAX_REPS];
        int n_win = 0, n_full = 0;
        for (int l = 0; l < c->depth; l++) {
            if (vision_layer_is_full_attention(c, l)) n_full++;
            else n_win++;
        }
        for (int r = 0; r < o->reps; r++) {
            double t0 = now_ms();
            if (vision_encode(m, vs, pix, 1, 2 * hm, 2 * wm, emb, &err)) {
                free(pix), free(emb), context_release_vision(cx);
                return fail(&err);
            }
            tot[r] = now_ms() - t0;
            win[r] = full[r] = 0;
            for (int l = 0; l < c->depth; l++) {
                if (vision_layer_is_full_attention(c, l)) full[r] += vs->layer_ms[1 + l];
                else win[r] += vs->layer_ms[1 + l];
            }
        }
        stat3 st = stats(tot, o->reps), sw = stats(win, o->reps), sf = stats(full, o->reps);
        double fw = vision_block_flops(c, hm, wm, 0), ff = vision_block_flops(c, hm, wm, 1);
        double ftot = fw * n_win + ff * n_full + 4.0 * tokens * 2 * row * c->hidden +
                      tokens * 2.0 * (4.0 * c->hidden * 4 * c->hidden + 4.0 * c->hidden * c->out_hidden);
        double frac = ftot / (st.median * 1e-3) / 1e9 / L->peak;
        double fr_w = n_win ? fw * n_win / (sw.median * 1e-3) / 1e9 / L->peak : 0;
        double fr_f = n_full ? ff * n_full / (sf.median * 1e-3) / 1e9 / L->peak : 0;
        double w_per = n_win ? sw.median / n_win / tokens * 1e3 : 0; /* us per block per token */
        double f_per = n_full ? sf.median / n_full / tokens * 1e3 : 0;
        {
            fprintf(o->tab, "vision %5d tokens (%dx%d merged, %d patches): %9.1f ms (min %.1f, max %.1f)  "
                   "%6.1f GFLOP/s  %5.1f%% of %s peak\n",
                   tokens, hm, wm, 4 * tokens, st.median, st.min, st.max,
                   ftot / (st.median * 1e-3) / 1e9, 100 * frac, L->peak_name);
            if (n_win)
                fprintf(o->tab, "  window blocks (%d): %9.1f ms  %7.1f ms/block  %6.2f us/block/token  %5.1f%% of peak\n",
                       n_win, sw.median, sw.median / n_win, w_per, 100 * fr_w);
            if (n_full)
                fprintf(o->tab, "  full blocks   (%d): %9.1f ms  %7.1f ms/block  %6.2f us/block/token  %5.1f%% of peak\n",
                       n_full, sf.median, sf.median / n_full, f_per, 100 * fr_f);
        }
        json_array_append_new(
            out, json_pack("{s:i, s:i, s:i, s:i, s:o, s:f, s:f, s:{s:i, s:o, s:f, s:f}, s:{s:i, s:o, s:f, s:f}}",
                           "vision_tokens", tokens, "grid_h", 2 * hm, "grid_w", 2 * wm, "patches",
                           4 * tokens, "ms", jstat(st), "gflop", ftot / 1e9, "fraction_of_peak", frac,
                           "window_blocks", "count", n_win, "ms", jstat(sw), "us_per_block_per_token",
                           w_per, "fraction_of_peak", fr_w, "full_blocks", "count", n_full, "ms",
                           jstat(sf), "us_per_block_per_token", f_per, "fraction_of_peak", fr_f));
    }
    /* the vision scratch goes before the text phases (peak memory as before) */
    free(pix), free(emb), context_release_vision(cx);
    return 0;
}

/* Text-only positions: the three M-RoPE ids of token i are all n_past + i. */
static void fill_ids(int32_t *ids, int32_t *pos, int n, int n_past, int vocab, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)(rng_uniform(seed, (uint64_t)i) * 0.5f * (float)(vocab / 2)) + vocab / 4;
        if (ids[i] < 0) ids[i] = 0;
        pos[i] = n_past + i;
    }
}

static int forward_chunks(const model *m, text_state *st, kv_pool *pool, kv_seq *kv,
                          int32_t *ids, int32_t *pos, int n, int chunk, float *logits,
                          ergo_error *err) {
    for (int s = 0; s < n; s += chunk) {
        int len = n - s < chunk ? n - s : chunk;
        text_input in = {ids + s, {pos + s, pos + s, pos + s}, len, NULL, 0,
                         m->config.image_token_id};
        if (text_forward(m, st, pool, kv, &in, s + len == n ? 1 : 0, logits, err)) return 1;
    }
    return 0;
}

/* A context of ctx rows of random keys and values (what a prefill of random ids
 * would leave, at none of its cost; decode time does not depend on the values). */
static ergo_status fill_context(const text_config *t, kv_pool *pool, kv_seq *kv, int ctx,
                                uint64_t seed, float *rows, ergo_error *err) {
    ergo_status s = kv_seq_reserve(pool, kv, ctx, err);
    if (s) return s;
    const size_t kvd = (size_t)t->n_kv_heads * t->head_dim;
    for (int l = 0; l < t->n_layers; l++)
        for (int j0 = 0; j0 < ctx; j0 += 64) {
            const int n = ctx - j0 < 64 ? ctx - j0 : 64;
            for (size_t e = 0; e < (size_t)n * kvd; e++) {
                uint64_t c = ((uint64_t)l << 40) + (uint64_t)j0 * kvd + e;
                rows[e] = rng_uniform(seed, c);
                rows[(size_t)64 * kvd + e] = rng_uniform(seed + 1, c);
            }
            kv_seq_store(pool, kv, l, j0, n, rows, rows + (size_t)64 * kvd);
        }
    kv_seq_commit(kv, ctx);
    return ERGO_OK;
}

static int bench_text(context *cx, const opts *o, const limits_ctx *L, json_t *jpf,
                      json_t *jdc) {
    const model *m = &cx->e->m;
    const text_config *t = &m->config.text;
    ergo_error err = {0};
    int max_ctx = 1, max_b = 1;
    for (int i = 0; i < o->n_pf; i++) max_ctx = o->pf[i] > max_ctx ? o->pf[i] : max_ctx;
    for (int i = 0; i < o->n_dc; i++)
        max_ctx = o->dc[i] + o->decode_steps > max_ctx ? o->dc[i] + o->decode_steps : max_ctx;
    for (int i = 0; i < o->n_batch; i++) max_b = o->batch[i] > max_b ? o->batch[i] : max_b;
    if (!o->n_pf && !o->n_dc) return 0;
    text_state st;
    kv_pool pool;
    const kv_pool_config kc = text_kv_config(t, o->kv_dtype, 0);
    if (text_state_init(&st, t, o->chunk > max_b ? o->chunk : max_b, &err)) return fail(&err);
    if (kv_pool_init(&pool, &kc, &err)) {
        text_state_free(&st);
        return fail(&err);
    }
    kv_seq kv[MAX_BATCH] = {{0}};
    const size_t kvd = (size_t)t->n_kv_heads * t->head_dim;
    int32_t *ids = malloc(sizeof *ids * (size_t)max_ctx * max_b);
    int32_t *pos = malloc(sizeof *pos * (size_t)max_ctx * max_b);
    float *logits = malloc(sizeof *logits * (size_t)t->vocab_size * max_b);
    float *rows = malloc(sizeof *rows * 128 * kvd);
    int status = 0;
    if (!ids || !pos || !logits || !rows) {
        fprintf(stderr, "ergo bench: out of memory\n");
        status = 1;
    }
    const double lp = text_layer_params(t), L_ = t->n_layers;
    const double qd = (double)t->n_heads * t->head_dim;
    for (int i = 0; i < o->n_pf && !status; i++) {
        int n = o->pf[i];
        double ms[MAX_REPS];
        fill_ids(ids, pos, n, 0, t->vocab_size, 100 + (uint64_t)i);
        for (int r = 0; r < o->reps && !status; r++) {
            kv_seq_release(&pool, &kv[0]);
            double t0 = now_ms();
            status = forward_chunks(m, &st, &pool, &kv[0], ids, pos, n, o->chunk, logits, &err);
            ms[r] = now_ms() - t0;
        }
        if (status) break;
        stat3 s = stats(ms, o->reps);
        /* per token per layer: the linear layers, and attention over (n+1)/2 keys on average */
        double flops = L_ * n * (2 * lp + 4.0 * qd * (n + 1) / 2) + 2.0 * t->hidden * t->vocab_size;
        double tps = n / (s.median * 1e-3), frac = flops / (s.median * 1e-3) / 1e9 / L->peak;
        fprintf(o->tab, "prefill %5d tokens: %9.1f ms (min %.1f, max %.1f)  %8.1f tokens/s  %6.1f GFLOP/s  "
                   "%5.1f%% of %s peak\n",
                   n, s.median, s.min, s.max, tps, flops / (s.median * 1e-3) / 1e9, 100 * frac,
                   L->peak_name);
        json_array_append_new(jpf, json_pack("{s:i, s:o, s:f, s:f, s:f}", "tokens", n, "ms",
                                             jstat(s), "tokens_per_s", tps, "gflop", flops / 1e9,
                                             "fraction_of_peak", frac));
    }
    /* Decode: B sequences, each with a context of ctx random rows, then decode_steps
     * batched steps (one token per sequence, one pass over the weights) timed one by
     * one. Bytes per step: the weights once, plus each sequence's keys and values. */
    const double wbytes = decode_weight_bytes(m);
    const double elem = (double)kv_dtype_size(o->kv_dtype);
    double tps1[MAX_LIST] = {0};
    for (int bi = 0; bi < o->n_batch && !status; bi++) {
        const int B = o->batch[bi];
        for (int i = 0; i < o->n_dc && !status; i++) {
            int ctx = o->dc[i];
            for (int b = 0; b < B && !status; b++) {
                kv_seq_release(&pool, &kv[b]);
                if (fill_context(t, &pool, &kv[b], ctx, 11 + 2 * (uint64_t)b, rows, &err)) status = 1;
            }
            double ms[MAX_REPS > 64 ? MAX_REPS : 64];
            int steps = o->decode_steps;
            for (int b = 0; b < B; b++)
                fill_ids(ids + (size_t)b * steps, pos + (size_t)b * steps, steps, ctx,
                         t->vocab_size, 200 + (uint64_t)i * 16 + (uint64_t)b);
            for (int s = 0; s < steps && !status; s++) {
                text_seq q[MAX_BATCH];
                for (int b = 0; b < B; b++) {
                    const int32_t *pb = pos + (size_t)b * steps + s;
                    q[b] = (text_seq){&kv[b], {ids + (size_t)b * steps + s, {pb, pb, pb}, 1, NULL, 0,
                                               m->config.image_token_id},
                                      1, logits + (size_t)b * t->vocab_size, 1, 0, 0};
                }
                double t0 = now_ms();
                status = text_forward_batch(m, &st, &pool, q, B, &err) != ERGO_OK;
                ms[s] = now_ms() - t0;
            }
            if (status) break;
            stat3 s = stats(ms, steps);
            double kvbytes = B * L_ * 2.0 * (ctx + steps / 2.0) * kvd * elem;
            double bytes = wbytes + kvbytes;
            double tps = B * 1e3 / s.median, gbs = bytes / (s.median * 1e-3) / 1e9;
            double frac = L->lim.bandwidth_gbs > 0 ? gbs / L->lim.bandwidth_gbs : 0;
            if (B == 1) tps1[i] = tps;
            const double speedup = tps1[i] > 0 ? tps / tps1[i] : 0;
            fprintf(o->tab, "decode x%d at %5d context: %7.2f ms/step (min %.2f, max %.2f)  %7.2f tokens/s",
                    B, ctx, s.median, s.min, s.max, tps);
            if (B > 1 && speedup > 0) fprintf(o->tab, " (%.2fx of 1)", speedup);
            fprintf(o->tab, "  %6.1f GB/s read  %5.1f%% of bandwidth\n", gbs, 100 * frac);
            json_array_append_new(jdc, json_pack("{s:i, s:i, s:i, s:o, s:f, s:f, s:f, s:f, s:f, s:s}",
                                                 "batch", B, "context", ctx, "steps", steps,
                                                 "ms_per_step", jstat(s), "tokens_per_s", tps,
                                                 "speedup_vs_1", speedup, "bytes_per_step", bytes,
                                                 "gb_per_s", gbs, "fraction_of_bandwidth", frac,
                                                 "kv_dtype", kv_dtype_name(o->kv_dtype)));
        }
    }
    if (status && err.msg[0]) fail(&err);
    free(ids), free(pos), free(logits), free(rows);
    for (int b = 0; b < MAX_BATCH; b++) kv_seq_release(&pool, &kv[b]);
    kv_pool_free(&pool);
    text_state_free(&st);
    return status;
}

int bench_model_main(int argc, char **argv);
int bench_model_main(int argc, char **argv) {
    opts o = {.text_layers = 2, .vision_layers = 2, .reps = 3, .chunk = 256, .decode_steps = 8,
              .probe_seconds = 2.0};
    o.n_vt = 3, o.vt[0] = 640, o.vt[1] = 1280, o.vt[2] = 4471;
    o.n_pf = 2, o.pf[0] = 512, o.pf[1] = 2048;
    o.n_dc = 2, o.dc[0] = 1024, o.dc[1] = 4096;
    o.n_batch = 1, o.batch[0] = 1;
    ergo_error err0 = {0};
    long long text_layers = o.text_layers, vision_layers = o.vision_layers, n_threads = 0;
    long long reps = o.reps, chunk = o.chunk, decode_steps = o.decode_steps;
    const char *vt = NULL, *pf = NULL, *dc = NULL, *batch = NULL, *kv = NULL;
    const cli_opt table[] = {
        {"model", 'm', CLI_STR, &o.model_dir, NULL, 0, 0, 0, 0, NULL},
        {"random", 0, CLI_STR, &o.random, NULL, 0, 0, 0, 0, NULL},
        {"weights", 0, CLI_STR, &o.weights, NULL, 0, 0, 0, 0, NULL},
        {"weights-cache", 0, CLI_STR, &o.weights_cache, NULL, 0, 0, 0, 0, NULL},
        {"text-layers", 0, CLI_INT, &text_layers, NULL, 1, 64, 0, 0, NULL},
        {"vision-layers", 0, CLI_INT, &vision_layers, "vision-depth", 1, 64, 0, 0, NULL},
        {"threads", 't', CLI_INT, &n_threads, NULL, 1, 1024, 0, 0, NULL},
        {"reps", 'r', CLI_INT, &reps, NULL, 1, MAX_REPS, 0, 0, NULL},
        {"chunk", 0, CLI_INT, &chunk, NULL, 1, 8192, 0, 0, NULL},
        {"decode-steps", 0, CLI_INT, &decode_steps, NULL, 1, 64, 0, 0, NULL},
        {"probe-seconds", 0, CLI_FLOAT, &o.probe_seconds, NULL, 0, 0, 0, 600, NULL},
        {"vision-tokens", 0, CLI_STR, &vt, NULL, 0, 0, 0, 0, NULL},
        {"prefill", 0, CLI_STR, &pf, NULL, 0, 0, 0, 0, NULL},
        {"decode", 0, CLI_STR, &dc, NULL, 0, 0, 0, 0, NULL},
        {"batch", 0, CLI_STR, &batch, NULL, 0, 0, 0, 0, NULL},
        {"kv-dtype", 0, CLI_STR, &kv, NULL, 0, 0, 0, 0, NULL},
        {"json", 0, CLI_FLAG, &o.json, NULL, 0, 0, 0, 0, NULL},
    };
    /* argv[0] is the first option here (bench_model_main gets argv past "model") */
    int rc = cli_parse("bench model", table, (int)(sizeof table / sizeof table[0]), argc + 1, argv - 1);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    o.text_layers = (int)text_layers, o.vision_layers = (int)vision_layers, o.threads = (int)n_threads;
    o.reps = (int)reps, o.chunk = (int)chunk, o.decode_steps = (int)decode_steps;
    const char *bad = NULL;
    if (o.weights && quant_format_parse(o.weights) < 0) bad = "--weights: use bf16, q8 or q4";
    else if (vt && parse_list(vt, o.vt, &o.n_vt)) bad = "--vision-tokens: a list such as 640,1280";
    else if (pf && parse_list(pf, o.pf, &o.n_pf)) bad = "--prefill: a list such as 512,2048";
    else if (dc && parse_list(dc, o.dc, &o.n_dc)) bad = "--decode: a list such as 1024,4096";
    else if (batch && (parse_list(batch, o.batch, &o.n_batch) || !o.n_batch ||
                       list_max(o.batch, o.n_batch) > MAX_BATCH))
        bad = "--batch: a list of 1..64 such as 1,2,4";
    else if (kv && kv_dtype_parse(kv, &o.kv_dtype, &err0)) bad = "--kv-dtype: use f32 or bf16";
    if (bad) return cli_usage_error("bench model", "%s", bad);
    if (!o.model_dir == !o.random) {
        fprintf(stderr, "ergo bench: give exactly one of --model DIR and --random 7b|3b\n");
        return 2;
    }
    if (o.random && strcmp(o.random, "7b") && strcmp(o.random, "3b")) {
        fprintf(stderr, "ergo bench: --random takes 7b or 3b, not %s\n", o.random);
        return 2;
    }
    /* the engine: the model (a checkpoint, or random weights of a real shape built in
     * memory), its quantisation, the threads, the kernels' ISA; the timing loops
     * below run on one context's states directly */
    engine_options eo;
    engine_options_default(&eo);
    eo.weights = o.weights ? (quant_format)quant_format_parse(o.weights) : QUANT_NONE;
    eo.weights_cache = o.weights_cache;
    eo.n_threads = o.threads;
    eo.prefill_chunk = o.chunk;
    eo.model_only = 1;
    ergo_error err = {0};
    engine e;
    ergo_status st;
    double load_ms = 0;
    if (o.model_dir) {
        st = engine_load(&e, o.model_dir, &eo, &err);
        load_ms = e.load_ms;
    } else {
        model m;
        ckpt_case c;
        if (o.threads) omp_set_num_threads(o.threads); /* the fill's threads too */
        double t0 = now_ms();
        st = !strcmp(o.random, "3b") ? ckpt_case_3b(&c, o.text_layers, o.vision_layers, 1234, &err)
                                     : ckpt_case_7b(&c, o.text_layers, o.vision_layers, 1234, &err);
        if (st) return fail(&err);
        st = random_checkpoint_fill(&m, &c, &err);
        ckpt_case_free(&c);
        if (st) return fail(&err);
        load_ms = now_ms() - t0;
        st = engine_from_model(&e, &m, &eo, &err);
    }
    context cx = {0};
    if (!st) st = context_init(&cx, &e, &err);
    if (st) {
        engine_free(&e);
        return fail(&err);
    }
    const int threads = o.threads ? o.threads : omp_get_max_threads();
    const model *mp = &e.m;
    const quant_format qf = e.weights;
    const quantize_report qr = e.quant;

    limits_ctx L = {0};
    if (o.probe_seconds > 0) probe_run(&L.lim, threads, o.probe_seconds);
    /* each phase against the peak of the instruction its products run on */
    if (kern.compute == COMPUTE_BF16) {
        L.peak = L.lim.bf16_dot_gflops;
        L.peak_name = "bf16 dot";
    } else {
        L.peak = kern.isa == ISA_AVX512 ? L.lim.fma_avx512_gflops : L.lim.fma_avx2_gflops;
        L.peak_name = "f32 FMA";
    }
    if (L.peak <= 0) L.peak = 1e30; /* no probe: fractions print as 0 */

    param_counts pc;
    weights_count(&mp->weights, &mp->config, &pc);
    const char *matmul = kern.matmul_block ? "blocked" : "dot";
    o.tab = o.json ? stderr : stdout;
    {
        fprintf(o.tab, "model: %s (%d text layers, %d vision blocks, %.2f GB of weights), loaded in %.1f s\n",
               mp->ckpt.dir, mp->config.text.n_layers, mp->config.vision.depth, (double)pc.bytes / 1e9,
               load_ms / 1e3);
        fprintf(o.tab, "threads %d, isa %s, compute %s, matmul %s, reps %d\n", threads,
                cpu_isa_name(kern.isa), compute_mode_name(kern.compute), matmul, o.reps);
        if (qf != QUANT_NONE)
            fprintf(o.tab, "weights %s: %d tensors, %.2f GB -> %.2f GB, %s in %.1f s%s%s\n",
                    quant_format_name(qf), qr.n_tensors, (double)qr.source_bytes / 1e9,
                    (double)qr.quant_bytes / 1e9, qr.from_cache ? "mapped from the cache" : "quantised",
                    qr.ms / 1e3, qr.cache_note[0] ? "; " : "", qr.cache_note);
        fprintf(o.tab, "machine (probe, %d threads): read bandwidth %.1f GB/s (%.0f MB buffer); f32 FMA "
               "avx512 %.1f, avx2 %.1f GFLOP/s; bf16 dot %.1f GFLOP/s; int8 dot %.1f GOP/s\n",
               threads, L.lim.bandwidth_gbs, L.lim.buffer_mb, L.lim.fma_avx512_gflops,
               L.lim.fma_avx2_gflops, L.lim.bf16_dot_gflops, L.lim.int8_dot_gops);
        fflush(o.tab);
    }
    json_t *jv = json_array(), *jpf = json_array(), *jdc = json_array();
    int status = bench_vision(&cx, &o, &L, jv);
    if (!status) fflush(o.tab), status = bench_text(&cx, &o, &L, jpf, jdc);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mb = (double)ru.ru_maxrss / 1024.0;
    if (!status) {
        if (o.json) {
            json_t *root = json_pack(
                "{s:s, s:s, s:f, s:i, s:i, s:f, s:i, s:s, s:s, s:s, s:s, s:i, s:f, s:{s:f, s:f, s:f, s:f, s:f, s:f}, s:o, s:o, s:o, s:f}",
                "model", mp->ckpt.dir, "weights", qf == QUANT_NONE ? "as-stored" : quant_format_name(qf),
                "quantize_ms", qr.ms, "text_layers", mp->config.text.n_layers, "vision_blocks",
                mp->config.vision.depth, "weight_bytes", (double)pc.bytes, "threads", threads, "isa",
                cpu_isa_name(kern.isa), "compute", compute_mode_name(kern.compute), "peak",
                L.peak_name, "matmul", matmul, "reps", o.reps, "load_ms", load_ms,
                "limits", "bandwidth_gbs", L.lim.bandwidth_gbs, "fma_avx512_gflops",
                L.lim.fma_avx512_gflops, "fma_avx2_gflops", L.lim.fma_avx2_gflops,
                "bf16_dot_gflops", L.lim.bf16_dot_gflops, "int8_dot_gops", L.lim.int8_dot_gops,
                "buffer_mb", L.lim.buffer_mb, "vision", jv, "prefill", jpf, "decode", jdc,
                "peak_rss_mb", rss_mb);
            char *s = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
            if (s) puts(s);
            free(s);
            json_decref(root);
        }
        fprintf(o.tab, "peak resident memory: %.0f MB\n", rss_mb);
        if (!o.json) json_decref(jv), json_decref(jpf), json_decref(jdc);
    } else {
        json_decref(jv), json_decref(jpf), json_decref(jdc);
    }
    context_free(&cx);
    engine_free(&e);
    return status;
}
