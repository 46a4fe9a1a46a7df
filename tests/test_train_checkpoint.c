/* Tests of src/train/checkpoint.c: save / load round trips bit for bit (masters,
 * AdamW moments, run state) for full training and LoRA, the published
 * model.safetensors read back by model_load (bf16 rounding checked against the f32
 * masters by an independent rule), PEFT's adapter files, interrupted saves ignored
 * by _latest, failed saves (injected at every stage, and a real EFBIG under
 * RLIMIT_FSIZE in a child) leaving the previous checkpoint intact, keep-K pruning,
 * refusals of bad trainer_state files, and the committed fixture
 * tests/fixtures/train_ckpt (loaded by transformers and PEFT in
 * tools/fixtures_train_ckpt.py) being exactly what ergo writes. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/file.h"
#include "base/half.h"
#include "base/json.h"
#include "base/rng.h"
#include "check.h"
#include "io/random_checkpoint.h"
#include "io/safetensors.h"
#include "model/kv_cache.h"
#include "model/text.h"
#include "model/weights.h"
#include "train/checkpoint.h"
#include "train/train_model.h"

static const char *scratch_path(const char *name) {
    static char bufs[8][1024];
    static int k;
    char *p = bufs[k++ & 7];
    snprintf(p, 1024, "%s/%s", scratch_dir(), name);
    return p;
}

static const char *fixture_path(const char *rel) {
    static char bufs[4][1024];
    static int k;
    char *p = bufs[k++ & 3];
    snprintf(p, 1024, "%s/train_ckpt/%s", fixtures_dir(), rel);
    return p;
}

/* The tiny case, optionally edited (name layout, tied head, dtype). */
static int load_case(ckpt_case *c, const char *layout, int tied, const char *dt) {
    ergo_error err = {0};
    json_t *root = json_load_path(fixture_path("case.json"), &err);
    CHECK(root != NULL, "case.json: %s", err.msg);
    if (!root) return 0;
    if (layout) json_object_set_new(root, "name_layout", json_string(layout));
    if (tied) json_object_set_new(json_object_get(root, "config"), "tie_word_embeddings", json_true());
    if (dt) json_object_set_new(root, "dtype", json_string(dt));
    ergo_status s = ckpt_case_parse(c, root, "case.json", &err);
    json_decref(root);
    CHECK(s == ERGO_OK, "case.json: %s", err.msg);
    return s == ERGO_OK;
}

static int make_base(model *m, const ckpt_case *c) {
    ergo_error err = {0};
    ergo_status s = random_checkpoint_fill(m, c, &err);
    CHECK(s == ERGO_OK, "random base: %s", err.msg);
    return s == ERGO_OK;
}

static int init_tm(train_model *tm, const model *base, const train_config *tc) {
    ergo_error err = {0};
    ergo_status s = train_model_init(tm, base, tc, &err);
    CHECK(s == ERGO_OK, "train_model_init: %s", err.msg);
    return s == ERGO_OK;
}

/* Known values: masters moved off the base (so bf16 rounding matters), moments
 * of both signs for m and positive for v. `salt` makes a different state. */
static void set_state(train_model *tm, uint64_t salt) {
    for (int i = 0; i < tm->n_opt; i++) {
        char nm[160];
        snprintf(nm, sizeof nm, "state/%s", tm->params[i].name);
        const uint64_t s = rng_stream_seed(1234 + salt, nm);
        for (int64_t k = 0; k < tm->params[i].numel; k++) {
            tm->params[i].master[k] += 1e-3f * rng_uniform(s, (uint64_t)(3 * k));
            tm->opt[i].m[k] = 1e-4f * rng_uniform(s, (uint64_t)(3 * k + 1));
            tm->opt[i].v[k] = 1e-6f * (1.5f + rng_uniform(s, (uint64_t)(3 * k + 2)));
        }
    }
}

static train_run_state make_rs(int64_t step, json_t *cfg) {
    train_run_state rs = {.step = step, .epoch = 2, .data_pos = 345, .lr_step = step,
                          .n_rng = 3, .rng = {0x0123456789abcdefULL, 0xffffffffffffffffULL, 7},
                          .last_loss = 1.25, .best_loss = 0.8125, .best_step = step - 1,
                          .config = cfg};
    return rs;
}

/* Every master and moment of a and b equal bit for bit. */
static void check_same_state(const train_model *a, const train_model *b, const char *label) {
    CHECK_EQ_INT(a->n_opt, b->n_opt, label);
    if (a->n_opt != b->n_opt) return;
    int bad = -1, which = 0;
    for (int i = 0; i < a->n_opt && bad < 0; i++) {
        const size_t n = (size_t)a->params[i].numel * sizeof(float);
        if (memcmp(a->params[i].master, b->params[i].master, n)) bad = i, which = 0;
        else if (memcmp(a->opt[i].m, b->opt[i].m, n)) bad = i, which = 1;
        else if (memcmp(a->opt[i].v, b->opt[i].v, n)) bad = i, which = 2;
    }
    CHECK(bad < 0, "%s: %s of `%s' differs after the round trip", label,
          which == 0 ? "master" : which == 1 ? "exp_avg" : "exp_avg_sq",
          bad >= 0 ? a->params[bad].name : "");
}

static void check_same_rs(const train_run_state *got, const train_run_state *want, const char *label) {
    CHECK(got->step == want->step && got->epoch == want->epoch && got->data_pos == want->data_pos &&
              got->lr_step == want->lr_step && got->best_step == want->best_step,
          "%s: step/epoch/data_pos/lr_step/best_step %lld/%lld/%lld/%lld/%lld, want "
          "%lld/%lld/%lld/%lld/%lld", label, (long long)got->step, (long long)got->epoch,
          (long long)got->data_pos, (long long)got->lr_step, (long long)got->best_step,
          (long long)want->step, (long long)want->epoch, (long long)want->data_pos,
          (long long)want->lr_step, (long long)want->best_step);
    CHECK(got->n_rng == want->n_rng && !memcmp(got->rng, want->rng, sizeof(uint64_t) * (size_t)want->n_rng),
          "%s: RNG words differ (%d words, want %d)", label, got->n_rng, want->n_rng);
    CHECK((got->last_loss == want->last_loss || (isnan(got->last_loss) && isnan(want->last_loss))) &&
              (got->best_loss == want->best_loss || (isnan(got->best_loss) && isnan(want->best_loss))),
          "%s: losses %.17g/%.17g, want %.17g/%.17g", label, got->last_loss, got->best_loss,
          want->last_loss, want->best_loss);
    CHECK((!want->config && !got->config) ||
              (want->config && got->config && json_equal(got->config, want->config)),
          "%s: the run's config differs", label);
}

static int file_bytes(const char *path, char **buf, size_t *n) {
    ergo_error err = {0};
    return file_read_all(path, (size_t)1 << 28, buf, n, &err) == ERGO_OK;
}

static void check_files_equal(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    const int ra = file_bytes(a, &x, &nx), rb = file_bytes(b, &y, &ny);
    CHECK(ra && rb, "cannot read %s or %s", a, b);
    if (ra && rb) {
        size_t i = 0;
        while (i < nx && i < ny && x[i] == y[i]) i++;
        CHECK(nx == ny && i == nx, "%s and %s differ: sizes %zu / %zu, first difference at byte %zu",
              a, b, nx, ny, i);
    }
    free(x);
    free(y);
}

static void copy_file(const char *from, const char *to) {
    char *x = NULL;
    size_t n = 0;
    ergo_error err = {0};
    CHECK(file_bytes(from, &x, &n) && file_write_all(to, x, n, &err) == ERGO_OK, "copy %s -> %s: %s",
          from, to, err.msg);
    free(x);
}

static int count_entries(const char *dir, const char *contains) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && strstr(e->d_name, contains)) n++;
    closedir(d);
    return n;
}

/* bf16 of x by an independent rule: the two neighbours by truncation, the nearer
 * one, ties to the even mantissa. Finite x only. */
static uint16_t bf16_rne_ref(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    const double dlo = (double)bf16_to_f32_one(lo), dhi = (double)bf16_to_f32_one(hi);
    const double d = fabs((double)x - dlo) - fabs(dhi - (double)x);
    if (d < 0) return lo;
    if (d > 0) return hi;
    return (lo & 1) ? hi : lo;
}

/* The directory loads with model_load; trainable tensors are the masters rounded to
 * the base's dtype, frozen ones the base's bytes. */
static void check_published(const char *dir, const model *base, const train_model *tm) {
    model m;
    ergo_error err = {0};
    ergo_status s = model_load(&m, dir, &err);
    CHECK(s == ERGO_OK, "model_load(%s): %s", dir, err.msg);
    if (s) return;
    CHECK_EQ_INT(m.names, base->names, "name layout of the written checkpoint");
    const int n = weights_spec(&m.config, NULL, NULL);
    CHECK_EQ_INT(n, weights_spec(&base->config, NULL, NULL), "tensor count");
    weight_spec *ms = calloc((size_t)n, sizeof *ms), *bs = calloc((size_t)n, sizeof *bs);
    weights_spec(&m.config, ms, &m.weights);
    weights_spec(&base->config, bs, (model_weights *)&base->weights);
    int j = 0, n_trained = 0, n_frozen = 0, n_rounded = 0;
    for (int i = 0; i < n; i++) {
        const tensor *t = &ms[i].slot->t, *b = &bs[i].slot->t;
        CHECK(t->dtype == b->dtype, "%s: dtype %s, the base's %s", ms[i].name, dtype_name(t->dtype),
              dtype_name(b->dtype));
        if (t->dtype != b->dtype) continue;
        if (j < tm->n_opt && !strcmp(tm->params[j].name, ms[i].name)) {
            const float *w = tm->params[j++].master;
            int64_t bad = -1;
            for (int64_t k = 0; k < t->numel && bad < 0; k++) {
                if (t->dtype == DTYPE_F32) {
                    if (memcmp(&((const float *)t->data)[k], &w[k], 4)) bad = k;
                } else if (t->dtype == DTYPE_BF16) {
                    if (((const uint16_t *)t->data)[k] != bf16_rne_ref(w[k])) bad = k;
                } else if (((const uint16_t *)t->data)[k] != f32_to_f16_one(w[k])) {
                    bad = k;
                }
            }
            CHECK(bad < 0, "%s (%s): element %lld is not the master %.9g rounded", ms[i].name,
                  dtype_name(t->dtype), (long long)bad, bad >= 0 ? (double)w[bad] : 0.0);
            n_trained++;
            n_rounded += t->dtype != DTYPE_F32;
        } else {
            CHECK(t->nbytes == b->nbytes && !memcmp(t->data, b->data, t->nbytes),
                  "%s: frozen tensor not copied as stored", ms[i].name);
            n_frozen++;
        }
    }
    CHECK_EQ_INT(j, tm->n_opt, "trainable tensors found in model.safetensors");
    CHECK(n_trained > 0 && n_rounded > 0, "trained %d (rounded to 16 bits %d), frozen %d", n_trained,
          n_rounded, n_frozen);
    safetensors_file st;
    char p[1200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (safetensors_open(&st, p, &err) == ERGO_OK) {
        const char *f = safetensors_metadata(&st, "format");
        CHECK(f && !strcmp(f, "pt"), "%s: metadata format %s", p, f ? f : "(none)");
        CHECK(safetensors_find(&st, "lm_head.weight") == NULL ||
                  !m.config.text.tie_word_embeddings, "%s: a tied head was written", p);
        safetensors_close(&st);
    }
    free(ms);
    free(bs);
    model_free(&m);
}

/* ---- full training ---- */

static void test_full_round_trip(const char *layout, int tied, const char *dt, unsigned freeze) {
    char label[128];
    snprintf(label, sizeof label, "full %s%s %s", layout ? layout : "legacy",
             tied ? " tied" : "", dt ? dt : "mixed");
    ckpt_case c;
    model base;
    if (!load_case(&c, layout, tied, dt)) return;
    if (!make_base(&base, &c)) {
        ckpt_case_free(&c);
        return;
    }
    /* a base directory with tokenizer and processor files to copy */
    char bdir[512], out[512], path[700];
    snprintf(bdir, sizeof bdir, "%s", scratch_path(tied ? "base_tied" : "base_full"));
    snprintf(out, sizeof out, "%s", scratch_path(tied ? "run_tied" : "run_full"));
    ergo_error err = {0};
    CHECK(random_checkpoint_write(&c, bdir, NULL, &err) == ERGO_OK, "base dir: %s", err.msg);
    static const char *extra[] = {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                                  "chat_template.jinja", "merges.txt", "unrelated.txt"};
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) {
        snprintf(path, sizeof path, "%s/%s", bdir, extra[i]);
        CHECK(file_write_all(path, extra[i], strlen(extra[i]), &err) == ERGO_OK, "%s", err.msg);
    }
    train_model tm, tm2;
    train_config tc = {.freeze = freeze};
    if (!init_tm(&tm, &base, &tc)) goto out_base;
    set_state(&tm, 0);
    json_t *cfg = json_pack("{s:s, s:f, s:[i,i]}", "data", "train.jsonl", "lr", 1e-4, "ids", 3, 4);
    train_run_state rs = make_rs(40, cfg), got = {0};
    char written[1024] = "";
    ergo_status s = train_checkpoint_save(out, &tm, &base, bdir, &rs, 0, written, sizeof written, &err);
    CHECK(s == ERGO_OK, "%s: save: %s", label, err.msg);
    snprintf(path, sizeof path, "%s/checkpoint-40", out);
    CHECK_EQ_STR(written, path, "path of the written checkpoint");
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) {
        char from[1100], to[1100];
        snprintf(from, sizeof from, "%s/%s", bdir, extra[i]);
        snprintf(to, sizeof to, "%s/%s", path, extra[i]);
        if (!strcmp(extra[i], "unrelated.txt")) CHECK(!file_exists(to), "%s was copied", to);
        else check_files_equal(to, from);
    }
    const char *cfgs[] = {"config.json", "generation_config.json"};
    for (int i = 0; i < 2; i++) {
        char from[1100], to[1100];
        snprintf(from, sizeof from, "%s/%s", bdir, cfgs[i]);
        snprintf(to, sizeof to, "%s/%s", path, cfgs[i]);
        check_files_equal(to, from);
    }
    CHECK_EQ_INT(count_entries(out, ".tmp-"), 0, "temporary directories left after a save");
    check_published(path, &base, &tm);

    if (init_tm(&tm2, &base, &tc)) {
        s = train_checkpoint_load_state(path, &tm2, &got, &err);
        CHECK(s == ERGO_OK, "%s: load_state: %s", label, err.msg);
        if (!s) {
            check_same_state(&tm, &tm2, label);
            check_same_rs(&got, &rs, label);
        }
        if (got.config) json_decref(got.config);
        train_model_free(&tm2);
    }
    json_decref(cfg);
    train_model_free(&tm);
out_base:
    model_free(&base);
    ckpt_case_free(&c);
}

/* ---- LoRA ---- */

static void check_adapter_files(const char *dir, const train_model *tm, int new_layout) {
    char p[1200];
    ergo_error err = {0};
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    safetensors_file st;
    ergo_status s = safetensors_open(&st, p, &err);
    CHECK(s == ERGO_OK, "%s", err.msg);
    if (s) return;
    int n = 0;
    for (int l = 0; l < tm->lora.n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_linear *x = lora_at(&tm->lora, l, (lora_target)t);
            if (!x) continue;
            for (int ab = 0; ab < 2; ab++) {
                char key[256];
                snprintf(key, sizeof key, "base_model.model.model.%slayers.%d.%s.%s.lora_%c.weight",
                         new_layout ? "language_model." : "", l, lora_target_parent((lora_target)t),
                         lora_target_name((lora_target)t), ab ? 'B' : 'A');
                const tensor *tt = safetensors_find(&st, key);
                CHECK(tt != NULL, "%s: missing `%s'", p, key);
                if (!tt) continue;
                const int64_t r0 = ab ? x->out : tm->lora.rank, r1 = ab ? tm->lora.rank : x->in;
                CHECK(tt->dtype == DTYPE_F32 && tt->n_dims == 2 && tt->shape[0] == r0 &&
                          tt->shape[1] == r1 &&
                          !memcmp(tt->data, ab ? x->b : x->a, (size_t)(r0 * r1) * sizeof(float)),
                      "%s: `%s' is not the adapter (F32 (%lld, %lld))", p, key, (long long)r0,
                      (long long)r1);
                n++;
            }
        }
    CHECK_EQ_INT(st.n_tensors, n, "adapter tensors");
    const char *f = safetensors_metadata(&st, "format");
    CHECK(f && !strcmp(f, "pt"), "%s: metadata format", p);
    safetensors_close(&st);

    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    json_t *j = json_load_path(p, &err);
    CHECK(j != NULL, "%s", err.msg);
    if (!j) return;
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "r")), tm->lora.rank, "adapter_config r");
    CHECK(json_number_value(json_object_get(j, "lora_alpha")) == (double)tm->lora.alpha,
          "adapter_config lora_alpha");
    CHECK_EQ_STR(json_string_value(json_object_get(j, "peft_type")), "LORA", "peft_type");
    CHECK_EQ_STR(json_string_value(json_object_get(j, "task_type")), "CAUSAL_LM", "task_type");
    CHECK(json_is_true(json_object_get(j, "inference_mode")), "inference_mode is true");
    const char *tmods = json_string_value(json_object_get(j, "target_modules"));
    CHECK(tmods && strstr(tmods, "q_proj") && !strstr(tmods, "k_proj"), "target_modules %s",
          tmods ? tmods : "(null)");
    json_decref(j);
    snprintf(p, sizeof p, "%s/config.json", dir);
    CHECK(!file_exists(p), "%s: an adapter checkpoint carries no config.json", p);
}

static const train_config LORA_TC = {.lora_rank = 4, .lora_alpha = 8.0f,
                                     .lora_targets = LORA_BIT(LORA_Q) | LORA_BIT(LORA_V) |
                                                     LORA_BIT(LORA_GATE) | LORA_BIT(LORA_DOWN),
                                     .seed = 99};

static void test_lora_round_trip(const char *layout) {
    ckpt_case c;
    model base;
    if (!load_case(&c, layout, 0, NULL)) return;
    if (!make_base(&base, &c)) {
        ckpt_case_free(&c);
        return;
    }
    train_model tm, tm2;
    if (!init_tm(&tm, &base, &LORA_TC)) goto out;
    set_state(&tm, 5);
    char out[1024], path[1024];
    snprintf(out, sizeof out, "%s", scratch_path(layout ? "run_lora_new" : "run_lora"));
    train_run_state rs = make_rs(3, NULL), got = {0};
    rs.last_loss = NAN;
    ergo_error err = {0};
    ergo_status s = train_checkpoint_save(out, &tm, &base, NULL, &rs, 2, path, sizeof path, &err);
    CHECK(s == ERGO_OK, "LoRA save: %s", err.msg);
    if (!s) {
        check_adapter_files(path, &tm, layout != NULL);
        if (init_tm(&tm2, &base, &LORA_TC)) {
            s = train_checkpoint_load_state(path, &tm2, &got, &err);
            CHECK(s == ERGO_OK, "LoRA load_state: %s", err.msg);
            if (!s) {
                check_same_state(&tm, &tm2, "LoRA");
                check_same_rs(&got, &rs, "LoRA");
            }
            if (got.config) json_decref(got.config);
            train_model_free(&tm2);
        }
        /* a LoRA checkpoint into a full-training model, and another rank */
        train_config full = {0};
        if (init_tm(&tm2, &base, &full)) {
            s = train_checkpoint_load_state(path, &tm2, &got, &err);
            CHECK(s == ERGO_E_ARG && strstr(err.msg, "trainer_state.json") && strstr(err.msg, "lora"),
                  "LoRA state into a full model: %s", err.msg);
            train_model_free(&tm2);
        }
        train_config r8 = LORA_TC;
        r8.lora_rank = 8;
        if (init_tm(&tm2, &base, &r8)) {
            s = train_checkpoint_load_state(path, &tm2, &got, &err);
            CHECK(s != ERGO_OK && strstr(err.msg, "rank 4"), "rank 4 state into rank 8: %s", err.msg);
            train_model_free(&tm2);
        }
    }
    train_model_free(&tm);
out:
    model_free(&base);
    ckpt_case_free(&c);
}

/* ---- the committed fixture ---- */

/* `ergo run`'s forward over the committed full checkpoint gives transformers' logits
 * (every position of a few ids; f32 compute on both sides over the same bf16 weights,
 * so the bound is the text fixtures' 1e-3). */
static void check_logits(const json_t *ref) {
    model m;
    ergo_error err = {0};
    ergo_status s = model_load(&m, fixture_path("full"), &err);
    CHECK(s == ERGO_OK, "model_load(train_ckpt/full): %s", err.msg);
    if (s) return;
    const json_t *ids = json_object_get(ref, "ids"), *want = json_object_get(ref, "logits");
    const int n = (int)json_array_size(ids), V = m.config.text.vocab_size;
    int32_t *tok = calloc((size_t)n, sizeof *tok), *pos = calloc((size_t)n, sizeof *pos);
    float *logits = calloc((size_t)n * (size_t)V, sizeof *logits);
    for (int i = 0; i < n; i++) tok[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i)), pos[i] = i;
    text_state st;
    kv_pool pool;
    kv_seq kv = {0};
    const kv_pool_config kc = text_kv_config(&m.config.text, KV_F32, 0);
    CHECK(text_state_init(&st, &m.config.text, n, &err) == ERGO_OK && kv_pool_init(&pool, &kc, &err) == ERGO_OK,
          "text state: %s", err.msg);
    text_input in = {tok, {pos, pos, pos}, n, NULL, 0, m.config.image_token_id};
    s = text_forward(&m, &st, &pool, &kv, &in, n, logits, &err);
    CHECK(s == ERGO_OK, "forward over train_ckpt/full: %s", err.msg);
    double worst = 0;
    int bad = -1;
    CHECK(json_array_size(want) == (size_t)n, "reference logits rows %zu", json_array_size(want));
    for (int i = 0; !s && i < n && i < (int)json_array_size(want); i++) {
        const json_t *row = json_array_get(want, (size_t)i);
        for (int j = 0; j < V && j < (int)json_array_size(row); j++) {
            const double e = fabs((double)logits[(size_t)i * V + j] - json_number_value(json_array_get(row, (size_t)j)));
            if (!(e <= worst)) worst = e, bad = i * V + j;
        }
    }
    CHECK(worst <= 1e-3, "train_ckpt/full: ergo's logits differ from transformers' by %.3g at (row %d, id %d)",
          worst, bad >= 0 ? bad / V : -1, bad >= 0 ? bad % V : -1);
    kv_seq_release(&pool, &kv);
    kv_pool_free(&pool);
    text_state_free(&st);
    free(tok);
    free(pos);
    free(logits);
    model_free(&m);
}

/* Writes the fixture's checkpoints (base_dir NULL: configs from the case, no
 * tokenizer) and compares them with tests/fixtures/train_ckpt/{full,lora}.
 * ERGO_TRAIN_CKPT_FIXTURE_OUT=DIR copies them to DIR/{full,lora} instead, to
 * regenerate the fixture (then run tools/fixtures_train_ckpt.py). */
static void test_fixture(void) {
    const char *regen = getenv("ERGO_TRAIN_CKPT_FIXTURE_OUT");
    static const char *full_files[] = {"model.safetensors", "config.json", "generation_config.json"};
    static const char *lora_files[] = {"adapter_model.safetensors", "adapter_config.json"};
    static const char *dirs[] = {"full", "lora", "lora_new"};
    /* full training and LoRA of the legacy-layout base, LoRA of the same base in the
     * new layout (the keys PEFT writes under transformers 4.56) */
    for (int kind = 0; kind < 3; kind++) {
        ckpt_case c;
        model base;
        if (!load_case(&c, kind == 2 ? "new" : NULL, 0, NULL)) return;
        if (!make_base(&base, &c)) {
            ckpt_case_free(&c);
            return;
        }
        train_model tm;
        train_config tc = {.freeze = TRAIN_FREEZE_VISION};
        if (init_tm(&tm, &base, kind ? &LORA_TC : &tc)) {
            set_state(&tm, 77);
            train_run_state rs = make_rs(7, NULL);
            char path[1024], where[64];
            ergo_error err = {0};
            snprintf(where, sizeof where, "fix_%s", dirs[kind]);
            ergo_status s = train_checkpoint_save(scratch_path(where), &tm, &base, NULL, &rs, 0, path,
                                                  sizeof path, &err);
            CHECK(s == ERGO_OK, "fixture save: %s", err.msg);
            const char **files = kind ? lora_files : full_files;
            const int nf = kind ? 2 : 3;
            for (int i = 0; !s && i < nf; i++) {
                char a[1100], b[1100];
                snprintf(a, sizeof a, "%s/%s", path, files[i]);
                if (regen) {
                    snprintf(b, sizeof b, "%s/%s", regen, dirs[kind]);
                    mkdir(regen, 0755);
                    mkdir(b, 0755);
                    snprintf(b, sizeof b, "%s/%s/%s", regen, dirs[kind], files[i]);
                    copy_file(a, b);
                } else {
                    snprintf(b, sizeof b, "%s/%s", fixture_path(dirs[kind]), files[i]);
                    check_files_equal(a, b);
                }
            }
            train_model_free(&tm);
        }
        model_free(&base);
        ckpt_case_free(&c);
    }
    if (regen) SKIP("train_ckpt fixture written to %s (not compared)", regen);

    /* what transformers and PEFT did with it (tools/fixtures_train_ckpt.py) */
    ergo_error err = {0};
    json_t *ref = json_load_path(fixture_path("reference.json"), &err);
    if (!ref) {
        SKIP("train_ckpt/reference.json: %s (run tools/fixtures_train_ckpt.py)", err.msg);
        return;
    }
    CHECK(json_is_true(json_object_get(ref, "transformers_loaded")),
          "transformers did not load train_ckpt/full cleanly");
    CHECK(json_is_true(json_object_get(ref, "weights_match")),
          "transformers' weights differ from model.safetensors");
    CHECK(json_is_true(json_object_get(ref, "peft_loaded")),
          "PEFT did not load every adapter tensor of train_ckpt/lora");
    CHECK(json_is_true(json_object_get(ref, "peft_resave_identical")),
          "PEFT's save_pretrained of the loaded adapter differs from train_ckpt/lora_new");
    check_logits(ref);
    json_decref(ref);
}

/* ---- _latest and interrupted saves ---- */

static void test_latest(void) {
    const char *out = scratch_path("latest");
    char p[1100], got[1024];
    int64_t step = 0;
    ergo_error err = {0};
    CHECK(train_checkpoint_latest(scratch_path("no_such_dir"), got, sizeof got, &step, &err) == ERGO_OK &&
              got[0] == '\0' && step == -1, "no directory: none (%s)", err.msg);
    CHECK(path_fsync(scratch_path("no_such_file"), &err) == ERGO_E_IO && strstr(err.msg, "no_such_file"),
          "path_fsync of a missing file: %s", err.msg);
    mkdir(out, 0755);
    CHECK(path_fsync(out, &err) == ERGO_OK, "path_fsync of a directory: %s", err.msg);
    CHECK(train_checkpoint_latest(out, got, sizeof got, &step, &err) == ERGO_OK && got[0] == '\0' &&
              step == -1, "empty directory: none");
    /* complete: checkpoint-5, checkpoint-30 (a trainer_state.json marks what a
     * finished save renamed); not: a higher step without trainer_state.json, temp
     * dirs of a dead process and of this one, names that only look alike */
    const char *dirs[] = {"checkpoint-5", "checkpoint-30", "checkpoint-400", "checkpoint-900.tmp-999999999",
                          "checkpoint-901.tmp-1", "checkpoint-x", "checkpoint-12a", "checkpoint-"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        snprintf(p, sizeof p, "%s/%s", out, dirs[i]);
        mkdir(p, 0755);
        if (i < 2 || i == 3 || i == 4) {
            snprintf(p, sizeof p, "%s/%s/trainer_state.json", out, dirs[i]);
            CHECK(file_write_all(p, "{}", 2, &err) == ERGO_OK, "%s", err.msg);
        }
    }
    char own[1100];
    snprintf(own, sizeof own, "%s/checkpoint-950.tmp-%ld", out, (long)getpid());
    mkdir(own, 0755);
    CHECK(train_checkpoint_latest(out, got, sizeof got, &step, &err) == ERGO_OK, "%s", err.msg);
    snprintf(p, sizeof p, "%s/checkpoint-30", out);
    CHECK_EQ_STR(got, p, "newest complete checkpoint");
    CHECK_EQ_INT(step, 30, "its step");
    snprintf(p, sizeof p, "%s/checkpoint-900.tmp-999999999", out);
    CHECK(!dir_exists(p), "the dead writer's leftover %s was not removed", p);
    CHECK(dir_exists(own), "this process's own temporary directory was removed");
    snprintf(p, sizeof p, "%s/checkpoint-901.tmp-1", out); /* pid 1 is alive */
    CHECK(dir_exists(p), "a live writer's temporary directory was removed");
}

/* ---- failures ---- */

static const char *fail_stage;
static int fail_at(const char *stage) { return fail_stage && !strcmp(stage, fail_stage); }

static void test_failures(void) {
    ckpt_case c;
    model base;
    if (!load_case(&c, NULL, 0, NULL)) return;
    if (!make_base(&base, &c)) {
        ckpt_case_free(&c);
        return;
    }
    train_model tm;
    train_config tc = {0};
    if (!init_tm(&tm, &base, &tc)) goto out;
    const char *out = scratch_path("fail");
    train_run_state rs = make_rs(1, NULL);
    char path[1024], state1[1100], copy1[1100], got[1024];
    int64_t step;
    ergo_error err = {0};
    set_state(&tm, 1);
    CHECK(train_checkpoint_save(out, &tm, &base, NULL, &rs, 0, path, sizeof path, &err) == ERGO_OK,
          "save 1: %s", err.msg);
    snprintf(state1, sizeof state1, "%s/trainer_state.safetensors", path);
    snprintf(copy1, sizeof copy1, "%s", scratch_path("fail_state1.safetensors"));
    copy_file(state1, copy1);

    set_state(&tm, 2);
    rs.step = 2;
    static const char *stages[] = {"model", "files", "state", "state_json", "fsync", "rename"};
    train_checkpoint_fault = fail_at;
    for (size_t i = 0; i < sizeof stages / sizeof *stages; i++) {
        fail_stage = stages[i];
        ergo_status s = train_checkpoint_save(out, &tm, &base, NULL, &rs, 1, path, sizeof path, &err);
        CHECK(s == ERGO_E_IO && strstr(err.msg, stages[i]) && strstr(err.msg, "checkpoint-2.tmp-"),
              "failure at %s: status %d, %s", stages[i], (int)s, err.msg);
        CHECK(train_checkpoint_latest(out, got, sizeof got, &step, &err) == ERGO_OK && step == 1,
              "after a failure at %s the newest is step %lld", stages[i], (long long)step);
        CHECK_EQ_INT(count_entries(out, "checkpoint-"), 1, "directories after a failed save");
        check_files_equal(state1, copy1);
    }
    train_checkpoint_fault = NULL;
    fail_stage = NULL;

    /* a real write failure: a child whose files may not exceed 16 KB (EFBIG, as a full
     * disk gives ENOSPC) saves step 3 */
    fflush(NULL);
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {16384, 16384};
        setrlimit(RLIMIT_FSIZE, &rl);
        rs.step = 3;
        ergo_error e2 = {0};
        ergo_status s = train_checkpoint_save(out, &tm, &base, NULL, &rs, 1, path, sizeof path, &e2);
        ssize_t w = write(fds[1], e2.msg, strlen(e2.msg));
        (void)w;
        _exit(s == ERGO_E_IO ? 0 : 1);
    }
    close(fds[1]);
    char msg[800] = "";
    ssize_t nr = 0, r;
    while ((r = read(fds[0], msg + nr, sizeof msg - 1 - (size_t)nr)) > 0) nr += r;
    msg[nr > 0 ? nr : 0] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(msg, "write error"),
          "save under RLIMIT_FSIZE: exit %d, message \"%s\"", WEXITSTATUS(status), msg);
    CHECK(train_checkpoint_latest(out, got, sizeof got, &step, &err) == ERGO_OK && step == 1,
          "after a real write failure the newest is step %lld", (long long)step);
    CHECK_EQ_INT(count_entries(out, "checkpoint-"), 1, "directories after a failed real write");
    check_files_equal(state1, copy1);

    /* keep 2 of steps 1..5; then step 5 saved again replaces it (resume) */
    for (int k = 2; k <= 5; k++) {
        rs.step = k;
        CHECK(train_checkpoint_save(out, &tm, &base, NULL, &rs, 2, path, sizeof path, &err) == ERGO_OK,
              "save %d: %s", k, err.msg);
    }
    CHECK_EQ_INT(count_entries(out, "checkpoint-"), 2, "checkpoints kept (keep 2)");
    snprintf(got, sizeof got, "%s/checkpoint-4", out);
    CHECK(dir_exists(got), "checkpoint-4 kept");
    set_state(&tm, 3);
    rs.data_pos = 999;
    CHECK(train_checkpoint_save(out, &tm, &base, NULL, &rs, 2, path, sizeof path, &err) == ERGO_OK,
          "save 5 again: %s", err.msg);
    CHECK_EQ_INT(count_entries(out, "checkpoint-"), 2, "checkpoints after saving a step again");
    train_model tm2;
    if (init_tm(&tm2, &base, &tc)) {
        train_run_state g = {0};
        CHECK(train_checkpoint_load_state(path, &tm2, &g, &err) == ERGO_OK, "load 5: %s", err.msg);
        check_same_state(&tm, &tm2, "step 5 saved twice");
        CHECK_EQ_INT(g.data_pos, 999, "data_pos of the replacing save");
        train_model_free(&tm2);
    }
    train_model_free(&tm);
out:
    model_free(&base);
    ckpt_case_free(&c);
}

/* ---- bad trainer_state files ---- */

static void expect_load_error(const char *dir, train_model *tm, const char *want1, const char *want2,
                              const char *label) {
    train_run_state g = {0};
    ergo_error err = {0};
    ergo_status s = train_checkpoint_load_state(dir, tm, &g, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, want1) && (!want2 || strstr(err.msg, want2)),
          "%s: status %d, message \"%s\" (want \"%s\"%s%s)", label, (int)s, err.msg, want1,
          want2 ? ", " : "", want2 ? want2 : "");
    if (!s && g.config) json_decref(g.config);
}

static ergo_status zero_fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                             ergo_error *err) {
    const st_write_entry *ent = ctx;
    (void)start, (void)err;
    memset(out, 0, (size_t)count * (size_t)(dtype_bits(ent[index].dtype) / 8));
    return ERGO_OK;
}

static void test_bad_state(void) {
    ckpt_case c;
    model base;
    if (!load_case(&c, NULL, 0, NULL)) return;
    if (!make_base(&base, &c)) {
        ckpt_case_free(&c);
        return;
    }
    train_model tm;
    train_config tc = {.freeze = TRAIN_FREEZE_VISION};
    if (!init_tm(&tm, &base, &tc)) goto out;
    train_run_state rs = make_rs(8, NULL);
    char dir[1024], js[1100], st[1100], orig_js[1100], orig_st[1100];
    ergo_error err = {0};
    CHECK(train_checkpoint_save(scratch_path("bad"), &tm, &base, NULL, &rs, 0, dir, sizeof dir, &err) ==
              ERGO_OK, "save: %s", err.msg);
    snprintf(js, sizeof js, "%s/trainer_state.json", dir);
    snprintf(st, sizeof st, "%s/trainer_state.safetensors", dir);
    snprintf(orig_js, sizeof orig_js, "%s", scratch_path("bad_orig.json"));
    snprintf(orig_st, sizeof orig_st, "%s", scratch_path("bad_orig.safetensors"));
    copy_file(js, orig_js);
    copy_file(st, orig_st);

    /* trainer_state.json */
    static const struct {
        const char *text, *want, *label;
    } js_cases[] = {
        {"{", "trainer_state.json", "not JSON"},
        {"[]", "not a JSON object", "an array"},
        {"{\"format\": \"other\", \"version\": 1}", "format", "wrong format"},
        {"{\"format\": \"ergo-trainer-state\", \"version\": 9}", "version 9", "future version"},
        {"{\"format\": \"ergo-trainer-state\", \"version\": 1, \"kind\": \"full\", \"n_params\": 3}",
         "3 trainable parameters", "parameter count"},
    };
    for (size_t i = 0; i < sizeof js_cases / sizeof *js_cases; i++) {
        CHECK(file_write_all(js, js_cases[i].text, strlen(js_cases[i].text), &err) == ERGO_OK, "%s", err.msg);
        expect_load_error(dir, &tm, js_cases[i].want, "trainer_state.json", js_cases[i].label);
    }
    /* edits of the real file */
    static const struct {
        const char *key, *value, *want;
    } edits[] = {{"step", "\"x\"", "`step'"},      {"rng", "[\"0x12\"]", "rng[0]"},
                 {"rng", "7", "`rng'"},            {"best_loss", "\"low\"", "`best_loss'"},
                 {"config", "[1]", "`config'"},     {"data_pos", "-1", "negative"},
                 {"kind", "\"lora\"", "`lora'"}};
    for (size_t i = 0; i < sizeof edits / sizeof *edits; i++) {
        json_t *j = json_load_path(orig_js, &err);
        json_t *v = json_loads(edits[i].value, JSON_DECODE_ANY, NULL);
        json_object_set_new(j, edits[i].key, v);
        CHECK(json_dump_file(j, js, 0) == 0, "write %s", js);
        json_decref(j);
        expect_load_error(dir, &tm, edits[i].want, "trainer_state.json", edits[i].key);
    }
    copy_file(orig_js, js);

    /* trainer_state.safetensors: missing, truncated, a tensor missing / misshapen /
     * of another dtype / one too many */
    remove(st);
    expect_load_error(dir, &tm, "trainer_state.safetensors", "cannot open", "missing file");
    char *bytes = NULL;
    size_t nb = 0;
    CHECK(file_bytes(orig_st, &bytes, &nb), "read %s", orig_st);
    CHECK(file_write_all(st, bytes, nb / 2, &err) == ERGO_OK, "%s", err.msg);
    expect_load_error(dir, &tm, "trainer_state.safetensors", NULL, "truncated");
    free(bytes);

    const int n = 3 * tm.n_opt + 1;
    st_write_entry *ent = calloc((size_t)n, sizeof *ent);
    char(*names)[160] = calloc((size_t)n, sizeof *names);
    safetensors_file sf;
    CHECK(safetensors_open(&sf, orig_st, &err) == ERGO_OK, "%s", err.msg);
    for (int variant = 0; variant < 4; variant++) {
        int m = 0;
        const char *victim = NULL;
        for (int i = 0; i < sf.n_tensors; i++) {
            const tensor *t = &sf.tensors[i];
            const int target = strstr(t->name, "exp_avg_sq/model.layers.1.mlp.up_proj.weight") != NULL;
            if (target) victim = t->name;
            if (target && variant == 0) continue; /* missing */
            ent[m].name = t->name;
            ent[m].dtype = t->dtype;
            ent[m].n_dims = t->n_dims;
            memcpy(ent[m].shape, t->shape, sizeof t->shape);
            if (target && variant == 1) ent[m].n_dims = 1, ent[m].shape[0] = t->numel;
            if (target && variant == 2) ent[m].dtype = DTYPE_F16;
            m++;
        }
        if (variant == 3) {
            snprintf(names[0], sizeof names[0], "master/visual.extra.weight");
            ent[m] = (st_write_entry){names[0], DTYPE_F32, 1, {4}};
            m++;
        }
        /* data: zeros are enough, the checks come first */
        CHECK(safetensors_write(st, ent, m, NULL, 0, zero_fill, ent, &err) == ERGO_OK,
              "write variant %d: %s", variant, err.msg);
        static const char *want[] = {"missing tensor", "has shape", "not F32", "visual.extra.weight"};
        expect_load_error(dir, &tm, want[variant], variant == 3 ? NULL : victim, want[variant]);
    }
    safetensors_close(&sf);
    free(ent);
    free(names);
    /* the state survives a failed load untouched: the checks precede the copies */
    copy_file(orig_st, st);
    train_model tm2;
    if (init_tm(&tm2, &base, &tc)) {
        train_run_state g = {0};
        CHECK(train_checkpoint_load_state(dir, &tm2, &g, &err) == ERGO_OK, "restored: %s", err.msg);
        check_same_state(&tm, &tm2, "after the bad-state cases");
        train_model_free(&tm2);
    }
    train_model_free(&tm);
out:
    model_free(&base);
    ckpt_case_free(&c);
}

void test_train_checkpoint(void) {
    test_full_round_trip(NULL, 0, NULL, TRAIN_FREEZE_VISION);
    test_full_round_trip("new", 1, "f16", TRAIN_FREEZE_MERGER | TRAIN_FREEZE_NORMS);
    test_lora_round_trip(NULL);
    test_lora_round_trip("new");
    test_fixture();
    test_latest();
    test_failures();
    test_bad_state();
}
