/*
 * cmd_bench_train.c - `ergo bench train`: the speed of a training step (issue 12,
 * point 10) on random weights of a named shape: a tiny model trained in full, or the
 * 7B widths (a few text layers) with LoRA over a frozen base, as stored or quantised.
 *
 * One synthetic example (token ids, targets on the second half, optionally images of
 * a given patch grid) goes forward and back `reps` times; an AdamW step follows each
 * backward. Reported: the median time of each phase, training tokens/s, the FLOPs the
 * step must do (counted from the shapes: every linear's forward, its input gradient,
 * its weight gradient when it trains; attention at 2 + 5 matmuls; the head on the
 * target rows) over the f32 FMA peak the probe measures, and peak memory.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/clock.h"
#include "cli.h"
#include "io/random_checkpoint.h"
#include "kernels/kernels.h"
#include "kernels/probe.h"
#include "model/mrope.h"
#include "model/quantize.h"
#include "train/optim.h"
#include "train/step.h"
#include "train/train_model.h"

#define NAME "bench train"

static void usage(FILE *out) {
    fputs(
"usage: ergo bench train [--preset tiny-a|tiny-b|7b] [--text-layers N] [--vision-layers N]\n"
"                        [--tokens N] [--images K] [--grid HxW] [--lora-rank R] [--full]\n"
"                        [--recompute]\n"
"                        [--weights bf16|q8|q4] [--reps N] [--threads N] [--probe-seconds S]\n"
"\n"
"Times forward + backward + AdamW of one synthetic example on random weights. tiny-a / tiny-b\n"
"(default tiny-a) train every parameter; 7b (4 text layers, 2 vision blocks by default) trains\n"
"LoRA adapters (rank 16, all seven linears of each layer) over the frozen base, read as stored\n"
"(bf16) or quantised (--weights q8|q4); --full trains everything instead. --tokens (512) is the\n"
"sequence length, the second half carries loss; --images K (0) adds K images of --grid patches\n"
"(16x16). Prints the median of --reps (3) steps per phase, tokens/s and the fraction of the f32\n"
"FMA peak measured by a short probe (--probe-seconds, 1; 0 skips it). --recompute keeps only\n"
"each layer's input and recomputes the layer in the backward (compare peak memory).\n", out);
}

static int fail(const ergo_error *err) {
    fprintf(stderr, "ergo " NAME ": %s\n", err->msg);
    return 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* FLOPs of one training step, from the shapes. A linear (out, in) over n rows costs
 * 2 n in out forward, as much for its input gradient, and again for its weight
 * gradient when it trains; LoRA adds its two thin products three times over. */
typedef struct flop_count {
    double forward, backward;
} flop_count;

static void add_linear(flop_count *f, double n, double in, double out, int trains, int rank,
                       int backprop) {
    const double fw = 2.0 * n * in * out;
    f->forward += fw;
    if (backprop) f->backward += fw * (trains ? 2.0 : 1.0);
    if (rank > 0) {
        const double lf = 2.0 * n * rank * (in + out);
        f->forward += lf;
        f->backward += 2.0 * lf;
    }
}

/* QK^T and PV of n queries over `keys` keys each; the backward recomputes the scores
 * and does four products (FlashAttention-2): 2.5 times the forward. */
static void add_attention(flop_count *f, double n, double keys, double hd, int backprop) {
    const double att = 2.0 * 2.0 * n * keys * hd;
    f->forward += att;
    if (backprop) f->backward += 2.5 * att;
}

static flop_count step_flops(const model_config *c, int n, int n_targets, int images,
                             int patches, int text_trains, int vision_trains, int rank) {
    flop_count f = {0, 0};
    const text_config *t = &c->text;
    const double HD = (double)t->n_heads * t->head_dim, KVD = (double)t->n_kv_heads * t->head_dim;
    for (int l = 0; l < t->n_layers; l++) {
        add_linear(&f, n, t->hidden, HD, text_trains, rank, 1);
        add_linear(&f, n, t->hidden, KVD, text_trains, rank, 1);
        add_linear(&f, n, t->hidden, KVD, text_trains, rank, 1);
        add_linear(&f, n, HD, t->hidden, text_trains, rank, 1);
        add_linear(&f, n, t->hidden, t->ffn, text_trains, rank, 1);
        add_linear(&f, n, t->hidden, t->ffn, text_trains, rank, 1);
        add_linear(&f, n, t->ffn, t->hidden, text_trains, rank, 1);
        add_attention(&f, n, n / 2.0, HD, 1); /* causal: half the square */
    }
    add_linear(&f, n_targets, t->hidden, t->vocab_size, text_trains, 0, 1);
    if (images <= 0) return f;
    const vision_config *v = &c->vision;
    const double per = patches, P = per * images, U = (double)v->merge * v->merge;
    const int vt = vision_trains;
    add_linear(&f, P, (double)v->in_channels * v->temporal_patch * v->patch * v->patch, v->hidden,
               vt, 0, vt);
    for (int l = 0; l < v->depth; l++) {
        int full = 0;
        for (int k = 0; k < v->n_full_attn; k++) full |= v->full_attn_blocks[k] == l;
        add_linear(&f, P, v->hidden, 3.0 * v->hidden, vt, 0, vt);
        add_linear(&f, P, v->hidden, v->hidden, vt, 0, vt);
        add_linear(&f, P, v->hidden, v->ffn, vt, 0, vt);
        add_linear(&f, P, v->hidden, v->ffn, vt, 0, vt);
        add_linear(&f, P, v->ffn, v->hidden, vt, 0, vt);
        /* a window holds at most (window / patch)^2 patches, a full block the image */
        const double win = (double)(v->window / v->patch) * (v->window / v->patch);
        add_attention(&f, P, full ? per : fmin(per, win), v->hidden, vt);
    }
    add_linear(&f, P / U, U * v->hidden, U * v->hidden, vt, 0, vt);
    add_linear(&f, P / U, U * v->hidden, v->out_hidden, vt, 0, vt);
    return f;
}

/* A synthetic example: n ids (ordinary tokens; images as vision_start + pads +
 * vision_end at the front), targets on the second half, positions from M-RoPE. */
typedef struct bench_example {
    int32_t *ids, *targets, *pos;
    float *pixels;
    train_image *images;
    train_example ex;
} bench_example;

static void bench_example_free(bench_example *b) {
    free(b->ids), free(b->targets), free(b->pos), free(b->pixels), free(b->images);
    memset(b, 0, sizeof *b);
}

static ergo_status bench_example_make(bench_example *b, const model_config *c, int n, int images,
                                      int gh, int gw, ergo_error *err) {
    memset(b, 0, sizeof *b);
    const int U = c->vision.merge * c->vision.merge;
    const int per = gh * gw / U, patch_len = c->vision.in_channels * c->vision.temporal_patch *
                                                 c->vision.patch * c->vision.patch;
    if (images * (per + 2) >= n / 2)
        return ergo_fail(err, ERGO_E_ARG, "%d images of %d tokens do not fit in the first half of "
                         "%d tokens", images, per + 2, n);
    b->ids = malloc(sizeof(int32_t) * (size_t)n);
    b->targets = malloc(sizeof(int32_t) * (size_t)n);
    b->pos = malloc(sizeof(int32_t) * 3 * (size_t)n);
    b->pixels = malloc(sizeof(float) * (size_t)(images ? images : 1) * gh * gw * patch_len);
    b->images = calloc((size_t)(images ? images : 1), sizeof *b->images);
    if (!b->ids || !b->targets || !b->pos || !b->pixels || !b->images) {
        bench_example_free(b);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the example");
    }
    int k = 0;
    uint64_t x = 12345;
    for (int im = 0; im < images; im++) {
        b->ids[k++] = c->vision_start_token_id;
        for (int j = 0; j < per; j++) b->ids[k++] = c->image_token_id;
        b->ids[k++] = c->vision_end_token_id;
        b->images[im] = (train_image){b->pixels + (size_t)im * gh * gw * patch_len, 1, gh, gw};
    }
    for (; k < n; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        b->ids[k] = (int32_t)((x >> 33) % 150000u);
    }
    for (size_t i = 0; i < (size_t)images * gh * gw * patch_len; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        b->pixels[i] = (float)((x >> 40) & 0xffff) / 32768.0f - 1.0f;
    }
    for (int i = 0; i < n; i++) b->targets[i] = i >= n / 2 && i + 1 < n ? b->ids[i + 1] : -1;
    mrope_ids mi = mrope_ids_from_config(c);
    mrope_grid grids[64];
    for (int im = 0; im < images && im < 64; im++) grids[im] = (mrope_grid){1, gh, gw};
    int32_t next = 0;
    ergo_status s = mrope_positions(&mi, b->ids, n, -1, grids, images, &next, b->pos, n, err);
    if (s) {
        bench_example_free(b);
        return s;
    }
    b->ex.text = (train_sample){b->ids, {b->pos, b->pos + n, b->pos + 2 * (size_t)n}, b->targets,
                                n, NULL, 0, c->image_token_id};
    b->ex.images = b->images;
    b->ex.n_images = images;
    return ERGO_OK;
}

int cmd_bench_train(int argc, char **argv) {
    const char *preset = "tiny-a", *weights = "bf16", *grid = "16x16";
    long long text_layers = 4, vision_layers = 2, tokens = 512, images = 0, rank = 16, reps = 3;
    long long threads = 0;
    double probe_seconds = 1.0;
    int full = 0, recompute = 0;
    const cli_opt opts[] = {
        {"preset", 0, CLI_STR, &preset, NULL, 0, 0, 0, 0, NULL},
        {"text-layers", 0, CLI_INT, &text_layers, NULL, 1, 1000, 0, 0, NULL},
        {"vision-layers", 0, CLI_INT, &vision_layers, NULL, 1, 1000, 0, 0, NULL},
        {"tokens", 'n', CLI_INT, &tokens, NULL, 8, 1 << 20, 0, 0, NULL},
        {"images", 0, CLI_INT, &images, NULL, 0, 64, 0, 0, NULL},
        {"grid", 0, CLI_STR, &grid, NULL, 0, 0, 0, 0, NULL},
        {"lora-rank", 0, CLI_INT, &rank, NULL, 1, 4096, 0, 0, NULL},
        {"full", 0, CLI_FLAG, &full, NULL, 0, 0, 0, 0, NULL},
        {"recompute", 0, CLI_FLAG, &recompute, NULL, 0, 0, 0, 0, NULL},
        {"weights", 0, CLI_STR, &weights, NULL, 0, 0, 0, 0, NULL},
        {"reps", 'r', CLI_INT, &reps, NULL, 1, 100, 0, 0, NULL},
        {"threads", 't', CLI_INT, &threads, NULL, 1, 1024, 0, 0, NULL},
        {"probe-seconds", 0, CLI_FLOAT, &probe_seconds, NULL, 0, 0, 0.0, 60.0, NULL},
    };
    int rc = cli_parse(NAME, opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    const int is_7b = !strcmp(preset, "7b");
    if (!is_7b && strcmp(preset, "tiny-a") && strcmp(preset, "tiny-b"))
        return cli_usage_error(NAME, "--preset %.40s: tiny-a, tiny-b or 7b", preset);
    int gh = 0, gw = 0;
    if (sscanf(grid, "%dx%d", &gh, &gw) != 2 || gh < 2 || gw < 2 || gh % 2 || gw % 2 || gh > 512 ||
        gw > 512)
        return cli_usage_error(NAME, "--grid %.40s: HxW patches, even sides in 2..512", grid);
    const int qf = quant_format_parse(weights);
    if (qf < 0 && strcmp(weights, "bf16"))
        return cli_usage_error(NAME, "--weights %.40s: bf16, q8 or q4", weights);
    if (threads) omp_set_num_threads((int)threads);
    /* as `ergo train`: the step's forward in f32 (the backward's arithmetic) unless told */
    if (!getenv("ERGO_COMPUTE")) setenv("ERGO_COMPUTE", "f32", 1);
    kernels_init(NULL, NULL);

    ergo_error err = {0};
    ckpt_case c;
    ergo_status s = is_7b ? ckpt_case_7b(&c, (int)text_layers, (int)vision_layers, 1234, &err)
                          : ckpt_case_tiny(&c, preset[5], 1234, &err);
    if (s) return fail(&err);
    model m;
    double t0 = now_ms();
    s = random_checkpoint_fill(&m, &c, &err);
    ckpt_case_free(&c);
    if (s) return fail(&err);
    const int lora = is_7b && !full;
    if (qf > 0) {
        if (!lora) {
            model_free(&m);
            return cli_usage_error(NAME, "%s", "--weights q8/q4 needs LoRA (a frozen base)");
        }
        quantize_opts qo = {.format = (quant_format)qf};
        quantize_report qr;
        if ((s = model_quantize(&m, &qo, &qr, &err))) {
            model_free(&m);
            return fail(&err);
        }
    }
    const double load_ms = now_ms() - t0;
    train_config tc = {0};
    if (lora) {
        tc.lora_rank = (int)rank;
        tc.lora_alpha = 2.0f * (float)rank;
        tc.lora_targets = LORA_ALL_LINEARS;
        tc.seed = 1;
    }
    train_model tm;
    if ((s = train_model_init(&tm, &m, &tc, &err))) {
        model_free(&m);
        return fail(&err);
    }
    bench_example be;
    train_states ts;
    if ((s = bench_example_make(&be, &m.config, (int)tokens, (int)images, gh, gw, &err)) ||
        (s = train_states_init(&ts, &tm, (int)tokens, gh * gw, (int)images, recompute, &err))) {
        train_model_free(&tm);
        model_free(&m);
        return fail(&err);
    }
    const int nt = omp_get_max_threads();
    probe_limits lim = {0};
    if (probe_seconds > 0) probe_run(&lim, nt, probe_seconds);
    const double peak = kern.isa == ISA_AVX512 ? lim.fma_avx512_gflops : lim.fma_avx2_gflops;

    float *logp = malloc(sizeof(float) * (size_t)tokens), *g = malloc(sizeof(float) * (size_t)tokens);
    double *tf = calloc((size_t)reps, sizeof(double)), *tb = calloc((size_t)reps, sizeof(double));
    double *to = calloc((size_t)reps, sizeof(double));
    adamw_config ac = {0.9f, 0.999f, 1e-8f, 0.0f};
    int n_logp = 0;
    double loss = 0;
    for (int r = 0; r < reps && !s; r++) {
        train_model_zero_grads(&tm);
        double a = now_ms();
        if ((s = train_forward(&ts, &tm, &be.ex, 1.0f, logp, &n_logp, &err))) break;
        double b = now_ms();
        loss = 0;
        for (int i = 0; i < n_logp; i++) loss -= (double)logp[i], g[i] = -1.0f / (float)n_logp;
        loss /= n_logp ? n_logp : 1;
        train_backward(&ts, &tm, g);
        double c2 = now_ms();
        grad_clip_global_norm(tm.opt, tm.n_opt, 1.0f);
        adamw_step(tm.opt, tm.n_opt, &ac, r + 1, 1e-6f);
        tf[r] = b - a, tb[r] = c2 - b, to[r] = now_ms() - c2;
    }
    if (!s) {
        const double mf = median(tf, (int)reps), mb = median(tb, (int)reps), mo = median(to, (int)reps);
        const flop_count fl = step_flops(&m.config, (int)tokens, n_logp, (int)images, gh * gw,
                                         !lora, ts.vision_trains, lora ? (int)rank : 0);
        const double step = mf + mb + mo;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("model: %s widths, %d text layers, %d vision blocks; %s; %lld trainable parameters; "
               "set up in %.1f s\n", is_7b ? "7B" : preset, m.config.text.n_layers,
               m.config.vision.depth,
               lora ? (qf > 0 ? "LoRA over a quantised base" : "LoRA over the bf16 base")
                    : "full training (f32 masters)",
               (long long)tm.n_trainable, load_ms / 1e3);
        if (lora) printf("LoRA rank %lld, alpha %.0f, all seven linears of each layer\n", rank,
                         (double)tc.lora_alpha);
        printf("example: %lld tokens (%d with loss), %lld images of %dx%d patches; threads %d, isa %s\n",
               tokens, n_logp, images, gh, gw, nt, cpu_isa_name(kern.isa));
        printf("machine (probe): f32 FMA %.1f GFLOP/s (%s)\n", peak, cpu_isa_name(kern.isa));
        printf("forward   %9.1f ms  %7.1f GFLOP  %6.1f GFLOP/s  %5.1f%% of peak\n", mf,
               fl.forward / 1e9, fl.forward / mf / 1e6, peak > 0 ? 100 * fl.forward / mf / 1e6 / peak : 0);
        /* the useful work only: a recomputed forward is overhead the percentages show */
        printf("backward  %9.1f ms  %7.1f GFLOP  %6.1f GFLOP/s  %5.1f%% of peak%s\n", mb,
               fl.backward / 1e9, fl.backward / mb / 1e6,
               peak > 0 ? 100 * fl.backward / mb / 1e6 / peak : 0,
               recompute ? " (includes recomputing each layer's forward)" : "");
        printf("optimiser %9.1f ms  (clip + AdamW over %lld parameters)\n", mo, (long long)tm.n_trainable);
        printf("step      %9.1f ms  %8.1f training tokens/s  %5.1f%% of peak overall; loss %.4f\n",
               step, tokens / (step / 1e3),
               peak > 0 ? 100 * (fl.forward + fl.backward) / step / 1e6 / peak : 0, loss);
        printf("peak resident memory: %.0f MB\n", (double)ru.ru_maxrss / 1024.0);
    }
    free(logp), free(g), free(tf), free(tb), free(to);
    bench_example_free(&be);
    train_states_free(&ts);
    train_model_free(&tm);
    model_free(&m);
    return s ? fail(&err) : 0;
}
