/*
 * test_train_text.c - the language model's training pass (src/train/text_train.c,
 * step.c, train_model.c) without Python: its log-probabilities equal the inference
 * forward's (model/text.c, itself held to transformers), and its gradients equal
 * central finite differences of its own loss along random directions, for full
 * training (every parameter kind, tied head) and for LoRA adapters. The exact
 * comparison with torch's autograd is test_train_fixture.c / test_train_grads.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "check.h"
#include "image/image.h"
#include "io/random_checkpoint.h"
#include "model/kv_cache.h"
#include "model/text.h"
#include "train/grads.h"
#include "train/plot.h"
#include "train/step.h"
#include "train/train_model.h"

enum { N = 13, VOCAB = 512 };

/* The f32 tied case of the checkpoint fixtures with a 512-token vocabulary (the special
 * ids moved inside it): every shape of the real model, small. */
static int small_model(model *m, int tied) {
    char path[1024];
    snprintf(path, sizeof path, "%s/checkpoints/cases/flat_new_f32_tied.json", fixtures_dir());
    ckpt_case c;
    ergo_error err = {0};
    if (ckpt_case_load(&c, path, &err)) {
        CHECK(0, "%s: %s", path, err.msg);
        return 0;
    }
    static const char *keys[] = {"vision_start_token_id", "vision_end_token_id", "image_token_id",
                                 "video_token_id", "vocab_size"};
    static const int vals[] = {498, 499, 500, 501, VOCAB};
    for (int i = 0; i < 5; i++) json_object_set_new(c.config, keys[i], json_integer(vals[i]));
    json_object_set_new(c.config, "tie_word_embeddings", json_boolean(tied));
    json_t *root = json_pack("{s:s, s:I, s:s, s:s, s:s, s:O}", "name", "small", "seed",
                             (json_int_t)c.seed, "config_layout", "flat", "name_layout", "new",
                             "dtype", "f32", "config", c.config);
    ckpt_case c2;
    ergo_status s = ckpt_case_parse(&c2, root, "small case", &err);
    json_decref(root);
    ckpt_case_free(&c);
    if (s) {
        CHECK(0, "small case: %s", err.msg);
        return 0;
    }
    s = random_checkpoint_fill(m, &c2, &err);
    ckpt_case_free(&c2);
    CHECK(s == ERGO_OK, "fill: %s", err.msg);
    return s == ERGO_OK;
}

typedef struct sample_buf {
    int32_t ids[N], targets[N], pos[3][N];
    train_example ex;
} sample_buf;

static void make_sample(sample_buf *b) {
    const uint64_t s = rng_stream_seed(5, "train-text-sample");
    for (int i = 0; i < N; i++) {
        b->ids[i] = (int32_t)((rng_u64(s, (uint64_t)i) >> 20) % 490);
        for (int a = 0; a < 3; a++) b->pos[a][i] = i;
    }
    for (int i = 0; i < N; i++) b->targets[i] = i >= 6 && i + 1 < N ? b->ids[i + 1] : -1;
    b->ex.text = (train_sample){b->ids, {b->pos[0], b->pos[1], b->pos[2]}, b->targets, N, NULL, 0,
                                500};
    b->ex.images = NULL;
    b->ex.n_images = 0;
}

/* -mean logp of the example's targets. */
static double loss_of(train_states *ts, const train_model *tm, const train_example *ex, int *n) {
    float logp[N];
    ergo_error err = {0};
    ergo_status s = train_forward(ts, tm, ex, 1.0f, logp, n, &err);
    CHECK(s == ERGO_OK, "train_forward: %s", err.msg);
    double l = 0;
    for (int i = 0; i < *n; i++) l -= (double)logp[i];
    return *n ? l / *n : 0;
}

/* train_forward's log-probabilities equal log_softmax of text_forward's logits. */
static void test_forward_matches_inference(void) {
    model m;
    if (!small_model(&m, 1)) return;
    train_model tm;
    train_config tc = {0};
    ergo_error err = {0};
    ergo_status s = train_model_init(&tm, &m, &tc, &err);
    CHECK(s == ERGO_OK, "train_model_init: %s", err.msg);
    train_states ts;
    if (!s) s = train_states_init(&ts, &tm, 64, 0, 0, 0, &err);
    CHECK(s == ERGO_OK, "states: %s", err.msg);
    if (s) {
        model_free(&m);
        return;
    }
    sample_buf b;
    make_sample(&b);
    float logp[N];
    int n = 0;
    s = train_forward(&ts, &tm, &b.ex, 1.0f, logp, &n, &err);
    CHECK(s == ERGO_OK && n == N - 7, "forward: %s, %d targets", err.msg, n);

    text_state st;
    kv_pool pool;
    kv_seq kv = {0};
    float *logits = malloc(sizeof(float) * (size_t)N * VOCAB);
    text_state_init(&st, &m.config.text, 64, &err);
    kv_pool_config kc = text_kv_config(&m.config.text, KV_F32, 0);
    kv_pool_init(&pool, &kc, &err);
    text_input in = {b.ids, {b.pos[0], b.pos[1], b.pos[2]}, N, NULL, 0, 500};
    s = text_forward(&m, &st, &pool, &kv, &in, N, logits, &err);
    CHECK(s == ERGO_OK, "text_forward: %s", err.msg);
    double worst = 0;
    for (int r = 0, k = 0; r < N; r++) {
        if (b.targets[r] < 0) continue;
        const float *z = logits + (size_t)r * VOCAB;
        double mx = z[0], sum = 0;
        for (int j = 1; j < VOCAB; j++) mx = fmax(mx, z[j]);
        for (int j = 0; j < VOCAB; j++) sum += exp((double)z[j] - mx);
        const double want = (double)z[b.targets[r]] - mx - log(sum);
        worst = fmax(worst, fabs(want - (double)logp[k++]));
    }
    /* both are f32 passes differing in the attention's summation order only */
    CHECK(worst < 2e-4, "train vs inference log-probabilities: max |diff| %g", worst);
    kv_seq_release(&pool, &kv);
    kv_pool_free(&pool);
    text_state_free(&st);
    free(logits);
    train_states_free(&ts);
    train_model_free(&tm);
    model_free(&m);
}

/* Directional finite differences: for a random direction d over one parameter,
 * (L(w + e d) - L(w - e d)) / 2e against <grad, d>. */
static void check_direction(train_states *ts, train_model *tm, const train_example *ex,
                            float *w, const float *g, size_t numel, const char *name) {
    const uint64_t s = rng_stream_seed(11, name);
    float *d = malloc(sizeof(float) * numel), *w0 = malloc(sizeof(float) * numel);
    double dot = 0, norm = 0;
    for (size_t i = 0; i < numel; i++) d[i] = rng_uniform(s, i), norm += (double)d[i] * (double)d[i];
    norm = sqrt(norm);
    for (size_t i = 0; i < numel; i++) d[i] = (float)((double)d[i] / norm), dot += (double)g[i] * (double)d[i];
    memcpy(w0, w, sizeof(float) * numel);
    const double e = 2e-3;
    int n;
    for (size_t i = 0; i < numel; i++) w[i] = w0[i] + (float)e * d[i];
    const double lp = loss_of(ts, tm, ex, &n);
    for (size_t i = 0; i < numel; i++) w[i] = w0[i] - (float)e * d[i];
    const double lm = loss_of(ts, tm, ex, &n);
    memcpy(w, w0, sizeof(float) * numel);
    const double fd = (lp - lm) / (2 * e);
    /* f32 loss (~6): rounding noise ~1e-6 / 2e = 2.5e-4, curvature O(e^2) */
    CHECK(fabs(fd - dot) <= 2e-3 + 2e-2 * fabs(dot), "%s: finite difference %.6g, gradient %.6g",
          name, fd, dot);
    free(d);
    free(w0);
}

static void test_finite_differences(int tied, int lora_rank) {
    model m;
    if (!small_model(&m, tied)) return;
    train_model tm;
    train_config tc = {0};
    if (lora_rank) tc = (train_config){0, lora_rank, 8.0f, LORA_ALL_LINEARS, 0, 3};
    ergo_error err = {0};
    ergo_status s = train_model_init(&tm, &m, &tc, &err);
    CHECK(s == ERGO_OK, "train_model_init: %s", err.msg);
    train_states ts;
    if (!s) s = train_states_init(&ts, &tm, 64, 0, 0, 0, &err);
    CHECK(s == ERGO_OK, "states: %s", err.msg);
    if (s) {
        model_free(&m);
        return;
    }
    if (lora_rank) /* B = 0 at init would make A's gradient vanish: give B values */
        for (int i = 0; i < tm.n_opt; i++)
            if (strstr(tm.params[i].name, "lora_B"))
                for (size_t j = 0; j < tm.opt[i].n; j++)
                    tm.opt[i].w[j] = 0.05f * rng_uniform(rng_stream_seed(9, tm.params[i].name), j);
    sample_buf b;
    make_sample(&b);
    int n = 0;
    train_model_zero_grads(&tm);
    loss_of(&ts, &tm, &b.ex, &n);
    float g[N];
    for (int i = 0; i < n; i++) g[i] = -1.0f / (float)n;
    train_backward(&ts, &tm, g);
    CHECK(tm.n_opt > 0, "no trainable parameters");
    int checked = 0;
    for (int i = 0; i < tm.n_opt; i++) {
        const char *nm = tm.params[i].name;
        /* every kind once per layer 1 (and the embedding, the final norm) */
        if (!lora_rank && !strstr(nm, "layers.1.") && !strstr(nm, "embed") &&
            strcmp(nm, "model.norm.weight"))
            continue;
        if (strstr(nm, "visual")) continue;
        check_direction(&ts, &tm, &b.ex, tm.opt[i].w, tm.opt[i].g, tm.opt[i].n, nm);
        checked++;
    }
    CHECK(checked >= (lora_rank ? 28 : 12), "only %d parameters checked", checked);
    train_states_free(&ts);
    train_model_free(&tm);
    model_free(&m);
}

/* The loss plot: a decodable 800x480 PNG whose curve pixels carry the series' colour;
 * non-finite points are skipped, an empty series still gives axes. */
static void test_plot(void) {
    double x[50], y[50], hx[5], hy[5];
    for (int i = 0; i < 50; i++) x[i] = i, y[i] = 5.0 * exp(-i / 20.0);
    y[7] = NAN;
    for (int i = 0; i < 5; i++) hx[i] = 10.0 * i, hy[i] = 5.5 * exp(-hx[i] / 25.0);
    plot_series ss[3] = {{"train", x, y, 50}, {"held-out", hx, hy, 5}, {"empty", NULL, NULL, 0}};
    char path[1024];
    snprintf(path, sizeof path, "%s/train_plot.png", scratch_dir());
    ergo_error err = {0};
    ergo_status s = plot_lines(path, "loss", "step", ss, 3, &err);
    CHECK(s == ERGO_OK, "plot_lines: %s", err.msg);
    image im = {0};
    s = image_decode_file(&im, path, NULL, &err);
    CHECK(s == ERGO_OK && im.width == 800 && im.height == 480, "plot PNG: %s %dx%d", err.msg,
          im.width, im.height);
    int blue = 0;
    for (int i = 0; !s && i < im.width * im.height; i++)
        blue += im.rgb[3 * i] == 31 && im.rgb[3 * i + 1] == 119 && im.rgb[3 * i + 2] == 180;
    CHECK(blue > 200, "plot: only %d pixels of the first series' colour", blue);
    image_free(&im);
    s = plot_lines("/nonexistent-dir/x.png", "loss", "step", ss, 1, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "/nonexistent-dir/x.png"), "unwritable plot: %s", err.msg);
}

void test_train_text(void) {
    test_plot();
    test_forward_matches_inference();
    test_finite_differences(1, 0);
    test_finite_differences(0, 0);
    test_finite_differences(1, 4);
}
