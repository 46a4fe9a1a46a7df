/*
 * test_train_grads.c - the training passes against torch's autograd
 * (tests/fixtures/train, tools/fixtures_train.py): the loss and the gradient of every
 * parameter for a text-only conversation (untied head), one image with the vision
 * tower trained, two images over two turns with the vision tower frozen (tied head),
 * the LoRA A/B gradients over a frozen base, and five AdamW steps with clipping and
 * the cosine schedule, whose losses, gradient norms, learning rates and final
 * weights must equal torch.optim.AdamW's. Bounds: the manifest's (justified there
 * by the same computation in float64).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "train/grads.h"
#include "train/optim.h"
#include "train/step.h"
#include "train/train_model.h"
#include "train_fixture.h"

typedef struct fixture_example {
    int32_t *ids, *labels, *targets, *pos;
    float *pixels;
    train_image images[4];
    train_example ex;
    safetensors_file inputs;
    int have_inputs;
} fixture_example;

static void example_free(fixture_example *f) {
    free(f->ids), free(f->labels), free(f->targets), free(f->pos), free(f->pixels);
    if (f->have_inputs) safetensors_close(&f->inputs);
    memset(f, 0, sizeof *f);
}

/* The case's tokens, HF labels shifted into per-position targets, positions, images. */
static int example_load(fixture_example *f, const json_t *c, const model_config *cfg) {
    memset(f, 0, sizeof *f);
    int n = 0, nl = 0, np = 0;
    f->ids = trf_ints(json_object_get(c, "input_ids"), &n);
    f->labels = trf_ints(json_object_get(c, "labels"), &nl);
    f->pos = trf_positions(c, &np);
    f->targets = malloc(sizeof(int32_t) * (size_t)(n + 1));
    CHECK(n > 1 && nl == n && np == n, "case %s: %d ids, %d labels, %d positions", trf_str(c, "name"),
          n, nl, np);
    if (n < 2 || nl != n || np != n) return 0;
    /* ForCausalLMLoss: logits[i] predicts labels[i + 1] */
    for (int i = 0; i < n; i++) f->targets[i] = i + 1 < n && f->labels[i + 1] >= 0 ? f->labels[i + 1] : -1;
    mrope_grid g[4];
    const int n_images = trf_grids(c, g, 4);
    if (n_images > 0) {
        if (!trf_open(&f->inputs, trf_str(c, "inputs_file"))) return 0;
        f->have_inputs = 1;
        size_t count = 0;
        f->pixels = trf_read(&f->inputs, "pixel_values", &count);
        if (!f->pixels) return 0;
        const size_t row = (size_t)cfg->vision.in_channels * cfg->vision.temporal_patch *
                           cfg->vision.patch * cfg->vision.patch;
        size_t off = 0;
        for (int i = 0; i < n_images; i++) {
            f->images[i] = (train_image){f->pixels + off * row, g[i].t, g[i].h, g[i].w};
            off += (size_t)g[i].t * g[i].h * g[i].w;
        }
        CHECK(off * row == count, "pixel_values: %zu floats for %zu patches", count, off);
    }
    f->ex.text = (train_sample){f->ids, {f->pos, f->pos + n, f->pos + 2 * (size_t)n}, f->targets, n,
                                NULL, 0, cfg->image_token_id};
    f->ex.images = f->images;
    f->ex.n_images = n_images;
    return 1;
}

/* Forward + backward of one example, loss = -mean logp; returns the loss. */
static double forward_backward(train_states *ts, train_model *tm, const train_example *ex) {
    float logp[512], g[512];
    int n = 0;
    ergo_error err = {0};
    ergo_status s = train_forward(ts, tm, ex, 1.0f, logp, &n, &err);
    CHECK(s == ERGO_OK, "train_forward: %s", err.msg);
    if (s || n == 0) return NAN;
    double loss = 0;
    for (int i = 0; i < n; i++) loss -= (double)logp[i], g[i] = -1.0f / (float)n;
    train_backward(ts, tm, g);
    return loss / n;
}

/* Whether setup's states recompute each layer in the backward (text_train.h). */
static int use_recompute;

static int setup(const json_t *c, model *m, train_model *tm, train_states *ts, fixture_example *f,
                 const train_config *tc) {
    if (!trf_model(m, c)) return 0;
    ergo_error err = {0};
    ergo_status s = train_model_init(tm, m, tc, &err);
    CHECK(s == ERGO_OK, "train_model_init: %s", err.msg);
    if (s) {
        model_free(m);
        return 0;
    }
    if ((s = train_states_init(ts, tm, 256, 256, 2, use_recompute, &err))) {
        CHECK(0, "train_states_init: %s", err.msg);
        train_model_free(tm);
        model_free(m);
        return 0;
    }
    if (!example_load(f, c, &m->config)) {
        example_free(f);
        train_states_free(ts);
        train_model_free(tm);
        model_free(m);
        return 0;
    }
    return 1;
}

static void teardown(model *m, train_model *tm, train_states *ts, fixture_example *f) {
    example_free(f);
    train_states_free(ts);
    train_model_free(tm);
    model_free(m);
}

/* The parameter of tm named `name` (canonical), or -1. */
static int param_index(const train_model *tm, const char *name) {
    for (int i = 0; i < tm->n_opt; i++)
        if (!strcmp(tm->params[i].name, name)) return i;
    return -1;
}

/* Loss and every parameter's gradient of one case. */
static void check_case(const json_t *man, const char *name) {
    const json_t *c = trf_case(man, name);
    if (!c) return;
    train_config tc = {0};
    if (!strcmp(trf_str(c, "trainable"), "text")) tc.freeze = TRAIN_FREEZE_VISION | TRAIN_FREEZE_MERGER;
    model m;
    train_model tm;
    train_states ts;
    fixture_example f;
    if (!setup(c, &m, &tm, &ts, &f, &tc)) return;
    train_model_zero_grads(&tm);
    const double loss = forward_backward(&ts, &tm, &f.ex);
    double atol, rtol;
    trf_tol(man, "loss", &atol, &rtol);
    const double want = json_number_value(json_object_get(c, "loss"));
    CHECK(fabs(loss - want) <= atol + rtol * fabs(want), "%s: loss %.9g, want %.9g", name, loss, want);

    safetensors_file gf;
    if (trf_open(&gf, trf_str(c, "grads_file"))) {
        trf_tol(man, "grad", &atol, &rtol);
        const json_t *grads = json_object_get(c, "grads");
        const char *key;
        const json_t *v;
        int compared = 0;
        double worst = 0;
        json_object_foreach((json_t *)grads, key, v) {
            const int i = param_index(&tm, key);
            CHECK(i >= 0, "%s: torch has a gradient for %s, ergo does not train it", name, key);
            if (i < 0) continue;
            worst = fmax(worst, trf_check_tensor(tm.opt[i].g, tm.opt[i].n, &gf, key, atol, rtol));
            compared++;
        }
        /* what torch trains but leaves without a gradient (the vision tower on a text-only
         * input) must be exactly zero here; what it freezes ergo must not train */
        const json_t *none = json_object_get(c, "grad_none");
        for (size_t k = 0; k < json_array_size(none); k++) {
            const int i = param_index(&tm, json_string_value(json_array_get(none, k)));
            double mx = 0;
            for (size_t j = 0; i >= 0 && j < tm.opt[i].n; j++) mx = fmax(mx, fabs(tm.opt[i].g[j]));
            CHECK(mx == 0.0, "%s: %s has no gradient in torch, max |g| %g here", name,
                  json_string_value(json_array_get(none, k)), mx);
        }
        const json_t *frozen = json_object_get(c, "frozen");
        for (size_t k = 0; k < json_array_size(frozen); k++)
            CHECK(param_index(&tm, json_string_value(json_array_get(frozen, k))) < 0,
                  "%s: %s is frozen in torch but trained here", name,
                  json_string_value(json_array_get(frozen, k)));
        CHECK(compared == (int)json_object_size(grads) && compared > 20, "%s: %d gradients compared",
              name, compared);
        printf("  train_grads %s: loss %.7f (torch %.7f), %d gradients, max |err| %.3g\n", name, loss,
               want, compared, worst);
        safetensors_close(&gf);
    }
    teardown(&m, &tm, &ts, &f);
}

/* (layer, target, is_b) of a PEFT key ...layers.L.(self_attn|mlp).X_proj.lora_(A|B).weight. */
static int parse_lora_key(const char *key, int *layer, int *target, int *is_b) {
    const char *p = strstr(key, "layers.");
    if (!p) return 0;
    *layer = atoi(p + 7);
    *target = -1;
    for (int t = 0; t < LORA_N_TARGETS; t++) {
        char want[48];
        snprintf(want, sizeof want, ".%s.%s.lora_", lora_target_parent((lora_target)t),
                 lora_target_name((lora_target)t));
        const char *q = strstr(key, want);
        if (q) {
            *target = t;
            *is_b = q[strlen(want)] == 'B';
        }
    }
    return *target >= 0;
}

static void check_lora(const json_t *man) {
    const json_t *c = trf_case(man, "lora");
    if (!c) return;
    train_config tc = {0, (int)json_integer_value(json_object_get(c, "lora_r")),
                       (float)json_number_value(json_object_get(c, "lora_alpha")), LORA_ALL_LINEARS, 0,
                       1};
    model m;
    train_model tm;
    train_states ts;
    fixture_example f;
    if (!setup(c, &m, &tm, &ts, &f, &tc)) return;
    CHECK(fabs((double)tm.lora.scale - json_number_value(json_object_get(c, "lora_scaling"))) < 1e-7,
          "LoRA scaling %g", (double)tm.lora.scale);
    safetensors_file lf;
    if (!trf_open(&lf, trf_str(c, "lora_file"))) {
        teardown(&m, &tm, &ts, &f);
        return;
    }
    const json_t *keys = json_object_get(c, "lora_keys");
    int set = 0;
    for (size_t k = 0; k < json_array_size(keys); k++) {
        const char *key = json_string_value(json_array_get(keys, k));
        int layer, target, is_b;
        CHECK(parse_lora_key(key, &layer, &target, &is_b), "LoRA key %s", key);
        lora_linear *ad = lora_at(&tm.lora, layer, (lora_target)target);
        char vk[256];
        snprintf(vk, sizeof vk, "value:%s", key);
        size_t n = 0;
        float *v = trf_read(&lf, vk, &n);
        const size_t want_n = is_b ? (size_t)ad->out * tm.lora.rank : (size_t)tm.lora.rank * ad->in;
        CHECK(v && n == want_n, "%s: %zu values, want %zu", key, n, want_n);
        if (v && n == want_n) memcpy(is_b ? ad->b : ad->a, v, n * sizeof(float)), set++;
        free(v);
    }
    CHECK(set == 28, "LoRA: %d adapters set from the fixture", set);
    train_model_zero_grads(&tm);
    const double loss = forward_backward(&ts, &tm, &f.ex);
    double atol, rtol;
    trf_tol(man, "loss", &atol, &rtol);
    const double want = json_number_value(json_object_get(c, "loss"));
    CHECK(fabs(loss - want) <= atol + rtol * fabs(want), "lora: loss %.9g, want %.9g", loss, want);
    trf_tol(man, "lora_grad", &atol, &rtol);
    double worst = 0;
    for (size_t k = 0; k < json_array_size(keys); k++) {
        const char *key = json_string_value(json_array_get(keys, k));
        int layer, target, is_b;
        if (!parse_lora_key(key, &layer, &target, &is_b)) continue;
        const lora_linear *ad = lora_at(&tm.lora, layer, (lora_target)target);
        char gk[256];
        snprintf(gk, sizeof gk, "grad:%s", key);
        worst = fmax(worst, trf_check_tensor(is_b ? ad->gb : ad->ga,
                                             is_b ? (size_t)ad->out * tm.lora.rank
                                                  : (size_t)tm.lora.rank * ad->in,
                                             &lf, gk, atol, rtol));
    }
    /* the base is frozen: no base parameter trains */
    int base = 0;
    for (int i = 0; i < tm.n_opt; i++) base += !strstr(tm.params[i].name, "lora_");
    CHECK(base == 0, "LoRA: %d base parameters train", base);
    printf("  train_grads lora: loss %.7f (torch %.7f), 28 adapter gradients, max |err| %.3g\n", loss,
           want, worst);
    safetensors_close(&lf);
    teardown(&m, &tm, &ts, &f);
}

static void check_adamw(const json_t *man) {
    const json_t *c = trf_case(man, "adamw_5");
    if (!c) return;
    train_config tc = {TRAIN_FREEZE_VISION | TRAIN_FREEZE_MERGER, 0, 0, 0, 0, 0};
    model m;
    train_model tm;
    train_states ts;
    fixture_example f;
    if (!setup(c, &m, &tm, &ts, &f, &tc)) return;
    const json_t *opt = json_object_get(c, "optimizer"), *sch = json_object_get(c, "schedule");
    const json_t *betas = json_object_get(opt, "betas");
    adamw_config ac = {(float)json_number_value(json_array_get(betas, 0)),
                       (float)json_number_value(json_array_get(betas, 1)),
                       (float)json_number_value(json_object_get(opt, "eps")),
                       (float)json_number_value(json_object_get(opt, "weight_decay"))};
    lr_schedule ls = {LR_COSINE, (float)json_number_value(json_object_get(sch, "lr")),
                      json_integer_value(json_object_get(sch, "warmup")),
                      json_integer_value(json_object_get(sch, "total"))};
    const float max_norm = (float)json_number_value(json_object_get(json_object_get(c, "clip"), "max_norm"));
    const json_t *no_decay = json_object_get(c, "no_decay");
    for (int i = 0; i < tm.n_opt; i++)
        CHECK(tm.opt[i].decay == !trf_in_list(no_decay, tm.params[i].name), "%s: decay %d",
              tm.params[i].name, tm.opt[i].decay);
    double la, lr_, na, nr;
    trf_tol(man, "adamw_loss", &la, &lr_);
    trf_tol(man, "adamw_grad_norm", &na, &nr);
    const int steps = (int)json_integer_value(json_object_get(c, "steps"));
    for (int t = 0; t < steps; t++) {
        train_model_zero_grads(&tm);
        const double loss = forward_backward(&ts, &tm, &f.ex);
        const double want = json_number_value(json_array_get(json_object_get(c, "losses"), (size_t)t));
        CHECK(fabs(loss - want) <= la + lr_ * fabs(want), "adamw step %d: loss %.9g, want %.9g", t,
              loss, want);
        const float norm = grad_clip_global_norm(tm.opt, tm.n_opt, max_norm);
        const double wn = json_number_value(json_array_get(json_object_get(c, "grad_norms"), (size_t)t));
        CHECK(fabs((double)norm - wn) <= na + nr * fabs(wn), "adamw step %d: grad norm %.9g, want %.9g",
              t, (double)norm, wn);
        const float lr = lr_at(&ls, t);
        const double wl = json_number_value(json_array_get(json_object_get(c, "lrs"), (size_t)t));
        CHECK(fabs((double)lr - wl) <= 1e-9 + 1e-6 * wl, "adamw step %d: lr %.9g, want %.9g", t,
              (double)lr, wl);
        adamw_step(tm.opt, tm.n_opt, &ac, t + 1, lr);
    }
    safetensors_file wf;
    if (trf_open(&wf, trf_str(c, "weights_file"))) {
        double atol, rtol, worst = 0;
        trf_tol(man, "adamw_weights", &atol, &rtol);
        const json_t *ws = json_object_get(c, "weights");
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)ws, key, v) {
            const int i = param_index(&tm, key);
            CHECK(i >= 0, "adamw: %s not trained", key);
            if (i >= 0) worst = fmax(worst, trf_check_tensor(tm.opt[i].w, tm.opt[i].n, &wf, key, atol, rtol));
        }
        printf("  train_grads adamw_5: %d steps, weights max |err| %.3g\n", steps, worst);
        safetensors_close(&wf);
    }
    teardown(&m, &tm, &ts, &f);
}

/* Recomputing each layer in the backward gives the very same gradients, bit for bit. */
static void check_recompute_identical(const json_t *man, const char *name) {
    const json_t *c = trf_case(man, name);
    if (!c) return;
    float *saved[2] = {NULL, NULL};
    size_t total = 0;
    int n_opt = 0;
    double loss[2] = {0, 0};
    for (int pass = 0; pass < 2; pass++) {
        train_config tc = {0};
        model m;
        train_model tm;
        train_states ts;
        fixture_example f;
        use_recompute = pass;
        const int ok = setup(c, &m, &tm, &ts, &f, &tc);
        use_recompute = 0;
        if (!ok) break;
        train_model_zero_grads(&tm);
        loss[pass] = forward_backward(&ts, &tm, &f.ex);
        total = 0;
        for (int i = 0; i < tm.n_opt; i++) total += tm.opt[i].n;
        n_opt = tm.n_opt;
        saved[pass] = malloc(total * sizeof(float));
        size_t off = 0;
        for (int i = 0; saved[pass] && i < tm.n_opt; i++) {
            memcpy(saved[pass] + off, tm.opt[i].g, tm.opt[i].n * sizeof(float));
            off += tm.opt[i].n;
        }
        teardown(&m, &tm, &ts, &f);
    }
    if (saved[0] && saved[1]) {
        size_t differ = 0;
        for (size_t j = 0; j < total; j++) differ += memcmp(saved[0] + j, saved[1] + j, sizeof(float)) != 0;
        CHECK(loss[0] == loss[1], "%s recompute: loss %.9g, without %.9g", name, loss[1], loss[0]);
        CHECK(differ == 0 && total > 0, "%s recompute: %zu of %zu gradient values differ", name,
              differ, total);
        printf("  train_grads %s recompute: %d tensors, %zu values bit-identical to keeping "
               "activations\n", name, n_opt, total - differ);
    } else {
        CHECK(0, "%s recompute: could not run both passes", name);
    }
    free(saved[0]);
    free(saved[1]);
}

void test_train_grads(void) {
    json_t *man = trf_manifest();
    if (!man) return;
    check_case(man, "text_only");
    check_case(man, "one_image");
    check_case(man, "two_images");
    check_lora(man);
    check_adamw(man);
    check_recompute_identical(man, "one_image");
    use_recompute = 1; /* the adapters' path with recompute, against torch */
    check_lora(man);
    use_recompute = 0;
    json_decref(man);
}
