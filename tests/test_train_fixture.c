/* Tests of the training fixtures themselves (tests/fixtures/train, tests/train_fixture.h):
 * every case's checkpoint regenerates and has the recorded config; its recorded M-RoPE
 * ids are ergo's (mrope_positions with the model's ids, as the session computes them);
 * labels are -100 or the token; the pixel_values shape matches the grids; and the
 * gradient / weight / LoRA files hold exactly the parameters weights_spec says are
 * trainable in that case, with weights_spec's shapes. */
#include "train_fixture.h"

#include "model/config.h"
#include "model/text.h"
#include "model/vision.h"

/* The recorded loss from ergo's inference forward (vision encoder + text model, f32
 * cache): mean over valid targets of logsumexp(logits[i]) - logits[i][labels[i + 1]].
 * This ties the fixture's weights, pixel layout, positions and loss definition to what
 * ergo computes before any backward pass exists. */
static void check_forward_loss(const model *m, const json_t *man, const json_t *c, double want,
                               const char *name) {
    int n = 0, nl = 0, np = 0;
    int32_t *ids = trf_ints(json_object_get(c, "input_ids"), &n);
    int32_t *labels = trf_ints(json_object_get(c, "labels"), &nl);
    int32_t *pos = trf_positions(c, &np);
    mrope_grid grids[8];
    const int ng = trf_grids(c, grids, 8);
    const int V = m->config.text.vocab_size, D = m->config.text.hidden;
    ergo_error err = {0};
    float *vis = NULL;
    int n_vis = 0, patches = 0;
    int32_t thw[8 * 3];
    for (int i = 0; i < ng; i++) {
        n_vis += (int)mrope_grid_tokens(&grids[i], m->config.vision.merge);
        patches += grids[i].t * grids[i].h * grids[i].w;
        thw[3 * i] = grids[i].t;
        thw[3 * i + 1] = grids[i].h;
        thw[3 * i + 2] = grids[i].w;
    }
    if (ng > 0) {
        safetensors_file st = {0};
        size_t npix = 0;
        float *pix = trf_open(&st, trf_str(c, "inputs_file")) ? trf_read(&st, "pixel_values", &npix)
                                                               : NULL;
        safetensors_close(&st);
        vision_state vs;
        vis = malloc(sizeof *vis * (size_t)n_vis * (size_t)D);
        ergo_status s = vision_state_init(&vs, &m->config.vision, patches, &err);
        if (!s && pix) s = vision_encode_batch(m, &vs, pix, thw, ng, vis, &err);
        CHECK(s == ERGO_OK && pix, "%s: vision encoder: %s", name, err.msg);
        if (!s) vision_state_free(&vs);
        free(pix);
    }
    float *logits = malloc(sizeof *logits * (size_t)n * (size_t)V);
    text_state ts;
    kv_pool pool;
    kv_seq kv = {0};
    const kv_pool_config kc = text_kv_config(&m->config.text, KV_F32, 0);
    ergo_status s = text_state_init(&ts, &m->config.text, n, &err);
    if (!s) s = kv_pool_init(&pool, &kc, &err);
    if (!s) {
        const text_input in = {ids, {pos, pos + n, pos + 2 * n}, n, vis, n_vis,
                               m->config.image_token_id};
        s = text_forward(m, &ts, &pool, &kv, &in, n, logits, &err);
        kv_seq_release(&pool, &kv);
        kv_pool_free(&pool);
        text_state_free(&ts);
    }
    CHECK(s == ERGO_OK, "%s: text forward: %s", name, err.msg);
    double sum = 0;
    int count = 0;
    for (int i = 0; !s && i + 1 < n; i++) {
        if (labels[i + 1] == -100) continue;
        const float *row = logits + (size_t)i * V;
        double mx = row[0], z = 0;
        for (int j = 1; j < V; j++) mx = (double)row[j] > mx ? (double)row[j] : mx;
        for (int j = 0; j < V; j++) z += exp((double)row[j] - mx);
        sum += mx + log(z) - (double)row[labels[i + 1]];
        count++;
    }
    double atol, rtol;
    trf_tol(man, "loss", &atol, &rtol);
    const double loss = count ? sum / count : (double)NAN;
    CHECK(fabs(loss - want) <= atol + rtol * fabs(want),
          "%s: ergo's forward gives loss %.7f, the reference %.7f (|err| %.2g)", name, loss, want,
          fabs(loss - want));
    printf("  [train_fixture] %-10s loss from ergo's forward %.6f vs %.6f (|err| %.1e)\n", name,
           loss, want, fabs(loss - want));
    free(ids);
    free(labels);
    free(pos);
    free(vis);
    free(logits);
}

/* Positions, rope delta, labels and inputs of one case against ergo's own rules. */
static void check_sequence(const model *m, const json_t *c, const char *name) {
    int n = 0, nl = 0, np = 0;
    int32_t *ids = trf_ints(json_object_get(c, "input_ids"), &n);
    int32_t *labels = trf_ints(json_object_get(c, "labels"), &nl);
    int32_t *want = trf_positions(c, &np);
    CHECK_EQ_INT(nl, n, name);
    CHECK_EQ_INT(np, n, name);
    CHECK_EQ_INT(json_integer_value(json_object_get(c, "n_tokens")), n, name);
    int valid = 0, bad_label = -1;
    for (int i = 0; i < n && i < nl; i++) {
        if (labels[i] != -100 && labels[i] != ids[i] && bad_label < 0) bad_label = i;
        if (i > 0 && labels[i] != -100) valid++;
        if (ids[i] < 0 || ids[i] >= m->config.text.vocab_size) bad_label = i;
    }
    CHECK(bad_label < 0, "%s: label / id %d is neither -100 nor the token", name, bad_label);
    CHECK_EQ_INT(valid, json_integer_value(json_object_get(c, "n_loss_tokens")), name);

    mrope_grid grids[8];
    int ng = trf_grids(c, grids, 8);
    const mrope_ids mi = mrope_ids_from_config(&m->config);
    int32_t *got = malloc(sizeof *got * 3 * (size_t)(n + 1));
    int32_t next = 0;
    ergo_error err = {0};
    ergo_status s = mrope_positions(&mi, ids, n, -1, grids, ng, &next, got, n, &err);
    CHECK(s == ERGO_OK, "%s: mrope_positions: %s", name, err.msg);
    char label[160];
    snprintf(label, sizeof label, "%s: M-RoPE ids vs get_rope_index", name);
    if (!s && np == n) CHECK_EQ_I32(got, 3 * (size_t)n, want, 3 * (size_t)n, label);
    CHECK_EQ_INT(next - n, json_integer_value(json_object_get(c, "rope_delta")), name);

    int64_t patches = 0;
    for (int i = 0; i < ng; i++) patches += (int64_t)grids[i].t * grids[i].h * grids[i].w;
    const char *inputs = trf_str(c, "inputs_file");
    if (ng > 0) {
        safetensors_file st = {0};
        if (trf_open(&st, inputs)) {
            const int64_t row = (int64_t)m->config.vision.in_channels *
                                m->config.vision.temporal_patch * m->config.vision.patch *
                                m->config.vision.patch;
            const tensor *t = trf_find(&st, "pixel_values", patches * row);
            CHECK(t && t->n_dims == 2 && t->shape[0] == patches && t->shape[1] == row,
                  "%s: pixel_values is not (%lld, %lld)", name, (long long)patches,
                  (long long)row);
        }
        safetensors_close(&st);
    } else {
        CHECK(inputs[0] == '\0', "%s: a text-only case has an inputs file %s", name, inputs);
    }
    free(ids);
    free(labels);
    free(want);
    free(got);
}

/* The named tensor exists in st with the spec's shape. */
static int has_shape(const safetensors_file *st, const weight_spec *sp) {
    const tensor *t = safetensors_find(st, sp->name);
    if (!t || t->dtype != DTYPE_F32 || t->n_dims != sp->n_dims) return 0;
    for (int d = 0; d < sp->n_dims; d++)
        if (t->shape[d] != sp->shape[d]) return 0;
    return 1;
}

/* The file `key` of case c holds every trainable parameter (trainable: "all" or
 * "text") with its shape, except those listed in grad_none, and nothing else. */
static void check_param_file(const model *m, const json_t *c, const char *key, const char *name) {
    safetensors_file st = {0};
    if (!trf_open(&st, trf_str(c, key))) return;
    const int text_only = strcmp(trf_str(c, "trainable"), "text") == 0;
    const json_t *none = json_object_get(c, "grad_none");
    const json_t *frozen = json_object_get(c, "frozen");
    int n = weights_spec(&m->config, NULL, NULL);
    weight_spec *sp = calloc((size_t)n, sizeof *sp);
    weights_spec(&m->config, sp, NULL);
    int expected = 0, missing = 0, stray = 0;
    for (int i = 0; i < n; i++) {
        const int trainable = !(text_only && sp[i].part == PART_VISION);
        const int absent_ok = trf_in_list(none, sp[i].name);
        if (!trainable || absent_ok) {
            if (safetensors_find(&st, sp[i].name)) stray++;
            CHECK(trainable || trf_in_list(frozen, sp[i].name) || !frozen,
                  "%s: frozen %s is not listed as frozen", name, sp[i].name);
            continue;
        }
        expected++;
        if (!has_shape(&st, &sp[i])) {
            if (!missing) CHECK(0, "%s: %s lacks %s (or its shape)", name, st.path, sp[i].name);
            missing++;
        }
    }
    CHECK(missing == 0, "%s: %d of %d trainable parameters missing from %s", name, missing,
          expected, st.path);
    CHECK(stray == 0, "%s: %d frozen / gradient-less parameters stored in %s", name, stray,
          st.path);
    CHECK_EQ_INT(st.n_tensors, expected, name);
    free(sp);
    safetensors_close(&st);
}

/* The LoRA file holds value:/grad: for A (r, in) and B (out, r) of the 7 projections of
 * every text layer; the adapter holds the same values under PEFT's keys. */
static void check_lora(const model *m, const json_t *c, const char *name) {
    safetensors_file st = {0}, ad = {0};
    if (!trf_open(&st, trf_str(c, "lora_file"))) return;
    char adapter[512];
    snprintf(adapter, sizeof adapter, "%s/adapter_model.safetensors", trf_str(c, "adapter_dir"));
    if (!trf_open(&ad, adapter)) {
        safetensors_close(&st);
        return;
    }
    const text_config *t = &m->config.text;
    const int r = (int)json_integer_value(json_object_get(c, "lora_r"));
    static const char *const proj[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                        "mlp.down_proj"};
    const int64_t qd = (int64_t)t->n_heads * t->head_dim, kd = (int64_t)t->n_kv_heads * t->head_dim;
    const int64_t in[7] = {t->hidden, t->hidden, t->hidden, qd, t->hidden, t->hidden, t->ffn};
    const int64_t out[7] = {qd, kd, kd, t->hidden, t->ffn, t->ffn, t->hidden};
    int bad = 0;
    for (int l = 0; l < t->n_layers; l++)
        for (int p = 0; p < 7; p++)
            for (int ab = 0; ab < 2; ab++) {
                char key[256], full[300];
                snprintf(key, sizeof key,
                         "base_model.model.model.language_model.layers.%d.%s.lora_%c.weight", l,
                         proj[p], ab ? 'B' : 'A');
                const int64_t rows = ab ? out[p] : r, cols = ab ? r : in[p];
                for (int k = 0; k < 3; k++) {
                    const tensor *x;
                    if (k < 2) {
                        snprintf(full, sizeof full, "%s:%s", k ? "grad" : "value", key);
                        x = safetensors_find(&st, full);
                    } else {
                        x = safetensors_find(&ad, key);
                    }
                    if (!x || x->n_dims != 2 || x->shape[0] != rows || x->shape[1] != cols) {
                        if (!bad)
                            CHECK(0, "%s: %s%s missing or not (%lld, %lld)", name,
                                  k == 2 ? "adapter " : "", k < 2 ? full : key, (long long)rows,
                                  (long long)cols);
                        bad++;
                    } else if (k == 2) {
                        /* the saved adapter holds the values the gradients were taken at */
                        snprintf(full, sizeof full, "value:%s", key);
                        const tensor *v = safetensors_find(&st, full);
                        if (!v || v->nbytes != x->nbytes ||
                            memcmp(v->data, x->data, x->nbytes) != 0)
                            bad++;
                    }
                }
            }
    CHECK(bad == 0, "%s: %d LoRA tensors missing, misshapen or differing from the adapter", name,
          bad);
    CHECK_EQ_INT(st.n_tensors, 2 * 2 * 7 * t->n_layers, name);
    CHECK_EQ_INT(ad.n_tensors, 2 * 7 * t->n_layers, name);
    json_t *acfg = trf_json("lora_adapter/adapter_config.json");
    if (acfg) {
        CHECK_EQ_STR(trf_str(acfg, "peft_type"), "LORA", "adapter_config peft_type");
        CHECK_EQ_INT(json_integer_value(json_object_get(acfg, "r")), r, "adapter_config r");
        CHECK_EQ_INT(json_integer_value(json_object_get(acfg, "lora_alpha")),
                     json_integer_value(json_object_get(c, "lora_alpha")), "adapter lora_alpha");
        json_decref(acfg);
    }
    safetensors_close(&ad);
    safetensors_close(&st);
}

void test_train_fixture(void) {
    json_t *man = trf_manifest();
    if (!man) return;
    CHECK_EQ_STR(trf_str(man, "dtype"), "float32", "train fixtures dtype");
    const json_t *cases = json_object_get(man, "cases");
    CHECK(json_array_size(cases) == 5, "train fixtures: %zu cases", json_array_size(cases));
    int tied_seen = 0, untied_seen = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        const char *name = trf_str(c, "name");
        model m;
        if (!trf_model(&m, c)) continue;
        const model_config *cfg = &m.config;
        CHECK(cfg->text.vocab_size == 512 && cfg->text.hidden == 64 && cfg->text.n_layers == 2 &&
                  cfg->text.n_heads == 4 && cfg->text.n_kv_heads == 2 && cfg->vision.depth == 2 &&
                  cfg->vision.hidden == 32 && cfg->vision.out_hidden == 64,
              "%s: not the tiny training config", name);
        CHECK(cfg->image_token_id == 500 && cfg->vision_start_token_id == 498,
              "%s: special ids %d %d", name, cfg->image_token_id, cfg->vision_start_token_id);
        CHECK(m.weights.text.embed.t.dtype == DTYPE_F32, "%s: checkpoint is not f32", name);
        if (cfg->text.tie_word_embeddings)
            tied_seen++;
        else
            untied_seen++;
        check_sequence(&m, c, name);
        /* the base model's loss (the LoRA case's loss has the adapter in it) */
        if (json_object_get(c, "loss") && !json_object_get(c, "lora_file"))
            check_forward_loss(&m, man, c, json_number_value(json_object_get(c, "loss")), name);
        if (json_object_get(c, "losses"))
            check_forward_loss(&m, man, c,
                               json_number_value(json_array_get(json_object_get(c, "losses"), 0)),
                               name);
        if (json_object_get(c, "grads_file")) check_param_file(&m, c, "grads_file", name);
        if (json_object_get(c, "weights_file")) {
            check_param_file(&m, c, "weights_file", name);
            const size_t steps = (size_t)json_integer_value(json_object_get(c, "steps"));
            CHECK(json_array_size(json_object_get(c, "losses")) == steps &&
                      json_array_size(json_object_get(c, "grad_norms")) == steps &&
                      json_array_size(json_object_get(c, "lrs")) == steps,
                  "%s: per-step records are not %zu long", name, steps);
        }
        if (json_object_get(c, "lora_file")) check_lora(&m, c, name);
        model_free(&m);
    }
    CHECK(tied_seen > 0 && untied_seen > 0, "train fixtures: tied %d, untied %d cases", tied_seen,
          untied_seen);
    json_decref(man);
}
