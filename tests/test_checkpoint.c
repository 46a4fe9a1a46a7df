/* Tests of src/io/checkpoint.c, src/io/random_checkpoint.c, src/model/config.c and
 * src/model/weights.c against tests/fixtures/checkpoints (written by
 * tools/fixtures_checkpoint.py from transformers 4.56.2), the refusals of bad
 * checkpoints (each message checked for the file and the problem), and the
 * `ergo inspect` command. */
#include <math.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "base/file.h"
#include "base/half.h"
#include "base/json.h"
#include "check.h"
#include "io/checkpoint.h"
#include "io/random_checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

static json_t *load_fixture(const char *rel) {
    char path[1024];
    ergo_error err = {0};
    snprintf(path, sizeof path, "%s/checkpoints/%s", fixtures_dir(), rel);
    json_t *j = json_load_path(path, &err);
    CHECK(j != NULL, "fixture %s: %s", rel, err.msg);
    return j;
}

static const char *scratch_path(const char *name) {
    static char bufs[4][1024];
    static int k;
    char *p = bufs[k++ & 3];
    snprintf(p, 1024, "%s/%s", scratch_dir(), name);
    return p;
}

/* ---- values and fingerprints ---- */

static float tensor_value(const tensor *t, int64_t i) {
    if (t->dtype == DTYPE_F32) return ((const float *)t->data)[i];
    uint16_t h = ((const uint16_t *)t->data)[i];
    if (t->dtype == DTYPE_F16) return f16_to_f32_one(h);
    return bf16_to_f32_one(h);
}

/* The fixture's fingerprint: float64 sums and sum_i bits32(v_i) * (i % 65521 + 1) mod 2^64. */
static void fingerprint(const tensor *t, double *sum, double *sumsq, uint64_t *checksum) {
    double s = 0, q = 0;
    uint64_t c = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        float v = tensor_value(t, i);
        uint32_t bits;
        memcpy(&bits, &v, 4);
        s += (double)v;
        q += (double)v * (double)v;
        c += (uint64_t)bits * (uint64_t)(i % 65521 + 1);
    }
    *sum = s;
    *sumsq = q;
    *checksum = c;
}

/* The parameter list with lm_head appended when tied (the reference's state_dict). */
static int bound_list(const model *m, weight_spec **out) {
    int n = weights_spec(&m->config, NULL, NULL);
    weight_spec *s = calloc((size_t)n + 1, sizeof *s);
    weights_spec(&m->config, s, (model_weights *)&m->weights);
    if (m->config.text.tie_word_embeddings) {
        snprintf(s[n].name, sizeof s[n].name, "lm_head.weight");
        s[n].slot = (weight *)&m->weights.text.lm_head;
        s[n].n_dims = 2;
        s[n].shape[0] = m->config.text.vocab_size;
        s[n].shape[1] = m->config.text.hidden;
        n++;
    }
    *out = s;
    return n;
}

static void check_config(const model *m, const json_t *rec, const char *name) {
    const json_t *t = json_object_get(rec, "text"), *v = json_object_get(rec, "vision");
    const text_config *tc = &m->config.text;
    const vision_config *vc = &m->config.vision;
#define EQ(obj, key, val) \
    CHECK_EQ_INT((val), json_integer_value(json_object_get(obj, key)), key)
    EQ(t, "vocab_size", tc->vocab_size);
    EQ(t, "hidden", tc->hidden);
    EQ(t, "ffn", tc->ffn);
    EQ(t, "n_layers", tc->n_layers);
    EQ(t, "n_heads", tc->n_heads);
    EQ(t, "n_kv_heads", tc->n_kv_heads);
    EQ(t, "head_dim", tc->head_dim);
    EQ(t, "max_position_embeddings", tc->max_position_embeddings);
    CHECK_EQ_INT(tc->tie_word_embeddings, json_is_true(json_object_get(t, "tie_word_embeddings")),
                 "tie_word_embeddings");
    CHECK(tc->rms_eps == json_number_value(json_object_get(t, "rms_eps")) &&
              tc->rope_theta == json_number_value(json_object_get(t, "rope_theta")),
          "%s: rms_eps %g rope_theta %g", name, tc->rms_eps, tc->rope_theta);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(tc->mrope_section[i],
                     json_integer_value(json_array_get(json_object_get(t, "mrope_section"), (size_t)i)),
                     "mrope_section");
    EQ(v, "depth", vc->depth);
    EQ(v, "hidden", vc->hidden);
    EQ(v, "n_heads", vc->n_heads);
    EQ(v, "head_dim", vc->head_dim);
    EQ(v, "ffn", vc->ffn);
    EQ(v, "patch", vc->patch);
    EQ(v, "temporal_patch", vc->temporal_patch);
    EQ(v, "merge", vc->merge);
    EQ(v, "window", vc->window);
    EQ(v, "out_hidden", vc->out_hidden);
    EQ(v, "in_channels", vc->in_channels);
    const json_t *fa = json_object_get(v, "fullatt_block_indexes");
    CHECK_EQ_INT(vc->n_full_attn, json_array_size(fa), "fullatt count");
    for (int i = 0; i < vc->n_full_attn && i < (int)json_array_size(fa); i++)
        CHECK_EQ_INT(vc->full_attn_blocks[i], json_integer_value(json_array_get(fa, (size_t)i)),
                     "fullatt index");
    EQ(rec, "image_token_id", m->config.image_token_id);
    EQ(rec, "video_token_id", m->config.video_token_id);
#undef EQ
}

static void check_generation(const generation_config *g, const json_t *rec, const char *name) {
    CHECK_EQ_INT(g->do_sample, json_is_true(json_object_get(rec, "do_sample")), "do_sample");
    CHECK(g->temperature == json_number_value(json_object_get(rec, "temperature")),
          "%s: temperature %g", name, g->temperature);
    CHECK(g->top_p == json_number_value(json_object_get(rec, "top_p")), "%s: top_p %g", name,
          g->top_p);
    CHECK(g->repetition_penalty == json_number_value(json_object_get(rec, "repetition_penalty")),
          "%s: repetition_penalty %g", name, g->repetition_penalty);
    CHECK_EQ_INT(g->top_k, json_integer_value(json_object_get(rec, "top_k")), "top_k");
    CHECK_EQ_INT(g->max_new_tokens, json_integer_value(json_object_get(rec, "max_new_tokens")),
                 "max_new_tokens");
    CHECK_EQ_INT(g->max_length, json_integer_value(json_object_get(rec, "max_length")),
                 "max_length");
    CHECK_EQ_INT(g->pad_token_id, json_integer_value(json_object_get(rec, "pad_token_id")),
                 "pad_token_id");
    CHECK_EQ_INT(g->bos_token_id, json_integer_value(json_object_get(rec, "bos_token_id")),
                 "bos_token_id");
    const json_t *eos = json_object_get(rec, "eos_token_id");
    CHECK_EQ_INT(g->n_eos, json_array_size(eos), "eos count");
    for (int i = 0; i < g->n_eos && i < (int)json_array_size(eos); i++)
        CHECK_EQ_INT(g->eos_token_ids[i], json_integer_value(json_array_get(eos, (size_t)i)),
                     "eos id");
}

/* Every tensor against the reference's fingerprint; returns the number of mismatches. */
static int check_tensors(const model *m, const json_t *expected, const char *name) {
    weight_spec *specs;
    int n = bound_list(m, &specs);
    const json_t *tens = json_object_get(expected, "tensors");
    CHECK_EQ_INT(n, json_array_size(tens), "tensor count vs the reference's state_dict");
    int bad = 0;
    for (int i = 0; i < n && i < (int)json_array_size(tens); i++) {
        const json_t *e = json_array_get(tens, (size_t)i);
        const tensor *t = &specs[i].slot->t;
        const char *want_name = json_string_value(json_object_get(e, "name"));
        if (strcmp(specs[i].name, want_name) != 0) {
            CHECK(0, "%s: parameter %d is `%s', the reference's is `%s'", name, i, specs[i].name,
                  want_name);
            bad++;
            continue;
        }
        const json_t *sh = json_object_get(e, "shape");
        int same = t->n_dims == (int)json_array_size(sh);
        for (int d = 0; same && d < t->n_dims; d++)
            same = t->shape[d] == json_integer_value(json_array_get(sh, (size_t)d));
        const char *want_dt = json_string_value(json_object_get(e, "dtype"));
        double sum, sumsq;
        uint64_t checksum;
        fingerprint(t, &sum, &sumsq, &checksum);
        double wsum = json_number_value(json_object_get(e, "sum"));
        double wsq = json_number_value(json_object_get(e, "sumsq"));
        uint64_t wck = strtoull(json_string_value(json_object_get(e, "checksum")), NULL, 16);
        /* sums differ only by summation order; the checksum is exact */
        double tol = 1e-10 * (fabs(wsum) + sqrt((double)t->numel * wsq)) + 1e-300;
        int ok = same && !strcmp(dtype_name(t->dtype), want_dt) && fabs(sum - wsum) <= tol &&
                 fabs(sumsq - wsq) <= 1e-10 * wsq + 1e-300 && checksum == wck;
        const json_t *samples = json_object_get(e, "samples");
        for (size_t k = 0; ok && k < json_array_size(samples); k++) {
            const json_t *s = json_array_get(samples, k);
            int64_t idx = json_integer_value(json_array_get(s, 0));
            double want = json_number_value(json_array_get(s, 1));
            if ((double)tensor_value(t, idx) != want) {
                CHECK(0, "%s: %s[%lld] = %.9g, the reference has %.9g", name, want_name,
                      (long long)idx, (double)tensor_value(t, idx), want);
                ok = 0;
            }
        }
        CHECK(ok,
              "%s: %s: shape ok %d, dtype %s (want %s), sum %.17g (want %.17g), sumsq %.17g "
              "(want %.17g), checksum %016llx (want %016llx)",
              name, want_name, same, dtype_name(t->dtype), want_dt, sum, wsum, sumsq, wsq,
              (unsigned long long)checksum, (unsigned long long)wck);
        bad += !ok;
    }
    free(specs);
    return bad;
}

/* Two models hold bit-identical parameters (same dtypes, same bytes). */
static void check_identical(const model *a, const model *b, const char *label) {
    weight_spec *sa, *sb;
    int na = bound_list(a, &sa), nb = bound_list(b, &sb);
    CHECK_EQ_INT(na, nb, label);
    int bad = 0;
    for (int i = 0; i < na && i < nb; i++) {
        const tensor *x = &sa[i].slot->t, *y = &sb[i].slot->t;
        if (strcmp(sa[i].name, sb[i].name) || x->dtype != y->dtype || x->nbytes != y->nbytes ||
            (x->nbytes && memcmp(x->data, y->data, x->nbytes))) {
            if (!bad) CHECK(0, "%s: tensor %s differs", label, sa[i].name);
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %d tensors differ", label, bad);
    free(sa);
    free(sb);
}

/* ---- the 7B list ---- */

static void test_spec_7b(void) {
    json_t *f = load_fixture("spec_7b.json");
    if (!f) return;
    model_config cfg, preset;
    ergo_error err = {0};
    CHECK(model_config_parse(&cfg, json_object_get(f, "config"), "config_7b.json", &err) ==
              ERGO_OK,
          "7B config refused: %s", err.msg);
    model_config_7b(&preset);
    CHECK(!memcmp(&cfg.text, &preset.text, sizeof cfg.text) &&
              !memcmp(&cfg.vision, &preset.vision, sizeof cfg.vision),
          "model_config_7b differs from the published config.json");
    int n = weights_spec(&cfg, NULL, NULL);
    weight_spec *s = calloc((size_t)n, sizeof *s);
    weights_spec(&cfg, s, NULL);
    const json_t *tens = json_object_get(f, "tensors");
    CHECK_EQ_INT(n, json_array_size(tens), "7B tensor count");
    int64_t total = 0;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        total += s[i].numel;
        const json_t *e = json_array_get(tens, (size_t)i);
        if (!e) break;
        const json_t *sh = json_array_get(e, 1);
        int same = !strcmp(s[i].name, json_string_value(json_array_get(e, 0))) &&
                   s[i].n_dims == (int)json_array_size(sh);
        for (int d = 0; same && d < s[i].n_dims; d++)
            same = s[i].shape[d] == json_integer_value(json_array_get(sh, (size_t)d));
        if (!same && !bad++)
            CHECK(0, "7B parameter %d: ergo has %s, the reference %s", i, s[i].name,
                  json_string_value(json_array_get(e, 0)));
    }
    CHECK(bad == 0, "7B list: %d mismatches", bad);
    CHECK_EQ_INT(total, json_integer_value(json_object_get(f, "param_count")), "7B parameters");
    free(s);
    json_decref(f);
}

/* ---- the fixture cases ---- */

static char case_dir_flat_legacy[1024]; /* kept for the CLI test */

static void test_cases(void) {
    json_t *man = load_fixture("manifest.json");
    if (!man) return;
    const json_t *cases = json_object_get(man, "cases");
    int nc = (int)json_array_size(cases);
    model *models = calloc((size_t)nc, sizeof *models);
    int *loaded = calloc((size_t)nc, sizeof *loaded);
    CHECK(nc >= 6, "only %d cases", nc);
    for (int i = 0; i < nc; i++) {
        const json_t *ce = json_array_get(cases, (size_t)i);
        const char *name = json_string_value(json_object_get(ce, "name"));
        char path[1024];
        ergo_error err = {0};
        snprintf(path, sizeof path, "%s/checkpoints/%s", fixtures_dir(),
                 json_string_value(json_object_get(ce, "case")));
        ckpt_case c;
        if (ckpt_case_load(&c, path, &err) != ERGO_OK) {
            CHECK(0, "%s: case refused: %s", name, err.msg);
            continue;
        }
        const char *dir = scratch_path(name);
        CHECK(random_checkpoint_write(&c, dir, NULL, &err) == ERGO_OK, "%s: write: %s", name,
              err.msg);
        model *m = &models[i];
        if (model_load(m, dir, &err) != ERGO_OK) {
            CHECK(0, "%s: load: %s", name, err.msg);
            ckpt_case_free(&c);
            continue;
        }
        loaded[i] = 1;
        if (!strcmp(name, "flat_legacy_bf16")) snprintf(case_dir_flat_legacy, 1024, "%s", dir);
        json_t *exp = load_fixture(json_string_value(json_object_get(ce, "expected")));
        if (!exp) {
            ckpt_case_free(&c);
            continue;
        }
        /* layouts detected as written */
        CHECK_EQ_INT(m->config.layout, c.config_layout, "config layout detected");
        CHECK_EQ_INT(m->names, c.name_layout, "name layout detected");
        CHECK_EQ_INT(m->ckpt.n_files, json_array_size(json_object_get(exp, "files")), "file count");
        CHECK_EQ_INT(m->ckpt.sharded, c.n_shards > 1, "sharded");
        check_config(m, json_object_get(exp, "config"), name);
        check_generation(&m->generation, json_object_get(exp, "generation"), name);
        int bad = check_tensors(m, exp, name);
        CHECK(bad == 0, "%s: %d tensors differ from the reference", name, bad);
        param_counts pc;
        weights_count(&m->weights, &m->config, &pc);
        const json_t *want = json_object_get(exp, "param_count");
        CHECK_EQ_INT(pc.total, json_integer_value(json_object_get(want, "total")), "params total");
        CHECK_EQ_INT(pc.text, json_integer_value(json_object_get(want, "text")), "params text");
        CHECK_EQ_INT(pc.vision, json_integer_value(json_object_get(want, "vision")),
                     "params vision");
        /* weights point into the maps: no copy */
        const tensor *q = &m->weights.text.layers[0].q_w.t;
        int inside = 0;
        for (int f = 0; f < m->ckpt.n_files; f++)
            inside |= (const uint8_t *)q->data >= m->ckpt.files[f].bytes &&
                      (const uint8_t *)q->data + q->nbytes <=
                          m->ckpt.files[f].bytes + m->ckpt.files[f].size;
        CHECK(inside && m->ckpt.n_copies == 0, "%s: weights are not views of the map", name);
        if (c.parsed.text.tie_word_embeddings)
            CHECK(m->weights.text.lm_head.t.data == m->weights.text.embed.t.data,
                  "%s: tied head reads the embedding", name);
        /* the in-memory fill holds the same bytes as the file */
        model mem;
        if (random_checkpoint_fill(&mem, &c, &err) == ERGO_OK) {
            char label[256];
            snprintf(label, sizeof label, "%s: in-memory fill vs file", name);
            check_identical(&mem, m, label);
            CHECK_EQ_INT(mem.names, c.name_layout, "in-memory name layout");
            model_free(&mem);
        } else {
            CHECK(0, "%s: fill: %s", name, err.msg);
        }
        /* layouts (and shards) that must hold the same parameters */
        const json_t *same = json_object_get(ce, "identical_to");
        if (json_is_string(same)) {
            int found = 0;
            for (int j = 0; j < i; j++) {
                const json_t *cj = json_array_get(cases, (size_t)j);
                if (loaded[j] &&
                    !strcmp(json_string_value(json_object_get(cj, "name")), json_string_value(same))) {
                    char label[256];
                    snprintf(label, sizeof label, "%s vs %s", name, json_string_value(same));
                    check_identical(m, &models[j], label);
                    found = 1;
                }
            }
            CHECK(found, "%s: case %s not loaded", name, json_string_value(same));
        }
        json_decref(exp);
        ckpt_case_free(&c);
    }
    for (int i = 0; i < nc; i++)
        if (loaded[i]) model_free(&models[i]);
    free(models);
    free(loaded);
    json_decref(man);
}

/* ---- bad checkpoints ---- */

/* A micro case (the flat tiny config with a 256-token vocabulary) for fast bad inputs. */
static int micro_case(ckpt_case *c, const char *layout) {
    json_t *root = load_fixture(!strcmp(layout, "nested") ? "cases/nested_new_bf16.json"
                                                           : "cases/flat_legacy_bf16.json");
    if (!root) return 0;
    json_t *cfg = json_object_get(root, "config");
    json_t *tc = json_object_get(cfg, "text_config");
    json_object_set_new(tc ? tc : cfg, "vocab_size", json_integer(256));
    ergo_error err = {0};
    ergo_status s = ckpt_case_parse(c, root, "micro", &err);
    CHECK(s == ERGO_OK, "micro case: %s", err.msg);
    json_decref(root);
    return s == ERGO_OK;
}

static void expect_load_error(const char *label, const char *dir, const char *file_needle,
                              const char *needle) {
    model m;
    ergo_error err = {0};
    ergo_status s = model_load(&m, dir, &err);
    CHECK(s != ERGO_OK, "%s: loaded, want a refusal", label);
    if (s == ERGO_OK) {
        model_free(&m);
        return;
    }
    CHECK(strstr(err.msg, file_needle) != NULL, "%s: message does not name %s: %s", label,
          file_needle, err.msg);
    CHECK(strstr(err.msg, needle) != NULL, "%s: message lacks \"%s\": %s", label, needle, err.msg);
    CHECK(strchr(err.msg, '\n') == NULL, "%s: not one line", label);
}

static ergo_status zero_fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                             ergo_error *err) {
    const st_write_entry *e = &((const st_write_entry *)ctx)[index];
    memset(out, 0, (size_t)count * (size_t)(dtype_bits(e->dtype) / 8));
    (void)start, (void)err;
    return ERGO_OK;
}

/* The micro case's tensors as write entries (legacy names, BF16); returns n. */
static int micro_entries(const ckpt_case *c, st_write_entry *out, char (*names)[160], int cap) {
    int n = weights_spec(&c->parsed, NULL, NULL);
    if (n > cap) return 0;
    weight_spec *s = calloc((size_t)n, sizeof *s);
    weights_spec(&c->parsed, s, NULL);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], 160, "%s", s[i].name);
        out[i].name = names[i];
        out[i].dtype = DTYPE_BF16;
        out[i].n_dims = s[i].n_dims;
        memcpy(out[i].shape, s[i].shape, sizeof s[i].shape);
    }
    free(s);
    return n;
}

static int find_entry(const st_write_entry *e, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].name, name)) return i;
    return -1;
}

static void write_json_text(const char *dir, const char *name, const char *text) {
    char path[1024];
    ergo_error err = {0};
    path_join(path, sizeof path, dir, name, &err);
    file_write_all(path, text, strlen(text), &err);
}

static void write_config(const char *dir, const json_t *cfg) {
    char *s = json_dumps(cfg, JSON_INDENT(1));
    write_json_text(dir, "config.json", s);
    free(s);
}

static void write_entries(const char *dir, const char *fname, const st_write_entry *e, int n) {
    char path[1024];
    ergo_error err = {0};
    path_join(path, sizeof path, dir, fname, &err);
    CHECK(safetensors_write(path, e, n, NULL, 0, zero_fill, (void *)e, &err) == ERGO_OK,
          "write %s: %s", fname, err.msg);
}

/* Writes the file without one tensor (its entry swapped with the last) and expects
 * model_load to name it as missing; e is left as it was. */
static void expect_missing_tensor(const char *dir, const char *fname, st_write_entry *e, int n,
                                  const char *name, const char *label) {
    int k = find_entry(e, n, name);
    st_write_entry saved = e[k];
    e[k] = e[n - 1];
    write_entries(dir, fname, e, n - 1);
    char needle[160];
    snprintf(needle, sizeof needle, "missing tensor `%s'", name);
    expect_load_error(label, dir, dir, needle);
    e[k] = saved;
}

/* config.json mutations: each names config.json and the problem */
typedef void (*mutate_fn)(json_t *cfg);
static void m_llama(json_t *c) { json_object_set_new(c, "model_type", json_string("llama")); }
static void m_qwen2vl(json_t *c) { json_object_set_new(c, "model_type", json_string("qwen2_vl")); }
static void m_no_type(json_t *c) { json_object_del(c, "model_type"); }
static void m_heads(json_t *c) { json_object_set_new(c, "num_attention_heads", json_integer(5)); }
static void m_kv(json_t *c) { json_object_set_new(c, "num_key_value_heads", json_integer(3)); }
static void m_mrope(json_t *c) {
    json_object_set_new(json_object_get(c, "rope_scaling"), "mrope_section",
                        json_pack("[i,i,i]", 2, 3, 4));
}
static void m_fullatt(json_t *c) {
    json_object_set_new(json_object_get(c, "vision_config"), "fullatt_block_indexes",
                        json_pack("[i,i]", 1, 4));
}
static void m_fullatt_str(json_t *c) {
    json_object_set_new(json_object_get(c, "vision_config"), "fullatt_block_indexes",
                        json_pack("[s]", "1"));
}
static void m_fullatt_dup(json_t *c) {
    json_object_set_new(json_object_get(c, "vision_config"), "fullatt_block_indexes",
                        json_pack("[i,i]", 1, 1));
}
static void m_window(json_t *c) {
    json_object_set_new(json_object_get(c, "vision_config"), "window_size", json_integer(100));
}
static void m_out_hidden(json_t *c) {
    json_object_set_new(json_object_get(c, "vision_config"), "out_hidden_size", json_integer(32));
}
static void m_vheads(json_t *c) {
    json_object_set_new(json_object_get(c, "vision_config"), "num_heads", json_integer(3));
}
static void m_yarn(json_t *c) {
    json_object_set_new(json_object_get(c, "rope_scaling"), "type", json_string("yarn"));
}
static void m_no_rope(json_t *c) { json_object_del(c, "rope_scaling"); }
static void m_sliding(json_t *c) { json_object_set_new(c, "use_sliding_window", json_true()); }
static void m_hidden_str(json_t *c) { json_object_set_new(c, "hidden_size", json_string("64")); }
static void m_zero_layers(json_t *c) { json_object_set_new(c, "num_hidden_layers", json_integer(0)); }
static void m_act(json_t *c) { json_object_set_new(c, "hidden_act", json_string("gelu")); }

static void test_bad_configs(void) {
    ckpt_case c;
    if (!micro_case(&c, "flat")) return;
    const char *dir = scratch_path("badcfg");
    ergo_error err = {0};
    CHECK(random_checkpoint_write(&c, dir, NULL, &err) == ERGO_OK, "micro write: %s", err.msg);
    model m;
    CHECK(model_load(&m, dir, &err) == ERGO_OK, "micro load: %s", err.msg);
    if (!err.msg[0]) model_free(&m);
    static const struct {
        const char *label;
        mutate_fn fn;
        const char *needle;
    } muts[] = {
        {"another architecture (llama)", m_llama, "model_type is \"llama\""},
        {"another architecture (qwen2_vl)", m_qwen2vl, "model_type is \"qwen2_vl\""},
        {"no model_type", m_no_type, "model_type is missing"},
        {"heads do not divide hidden", m_heads, "num_attention_heads 5 does not divide"},
        {"kv heads do not divide heads", m_kv, "num_key_value_heads 3 does not divide"},
        {"mrope sections do not sum to head_dim/2", m_mrope, "sums to 9; want head_dim/2 = 8"},
        {"full-attention block past the depth", m_fullatt, "fullatt_block_indexes[1] = 4"},
        {"full-attention block as a string", m_fullatt_str, "fullatt_block_indexes[0] is not"},
        {"full-attention block twice", m_fullatt_dup, "lists block 1 twice"},
        {"window not a multiple of patch*merge", m_window, "window_size 100"},
        {"vision output width differs from text", m_out_hidden, "out_hidden_size 32"},
        {"vision heads do not divide hidden", m_vheads, "num_heads 3 does not divide"},
        {"unsupported rope type", m_yarn, "\"yarn\" is not supported"},
        {"no rope_scaling", m_no_rope, "rope_scaling is missing"},
        {"sliding window", m_sliding, "use_sliding_window"},
        {"hidden_size not an integer", m_hidden_str, "`hidden_size' is not an integer"},
        {"zero layers", m_zero_layers, "`num_hidden_layers' is 0"},
        {"unsupported activation", m_act, "hidden_act is gelu"},
    };
    for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
        json_t *cfg = json_deep_copy(c.config);
        muts[i].fn(cfg);
        write_config(dir, cfg);
        json_decref(cfg);
        expect_load_error(muts[i].label, dir, "config.json", muts[i].needle);
    }
    write_json_text(dir, "config.json", "{\"model_type\": ");
    expect_load_error("config.json not JSON", dir, "config.json", "invalid JSON");
    write_config(dir, c.config);

    /* generation_config.json */
    write_json_text(dir, "generation_config.json", "{\"top_p\": 2.0}");
    expect_load_error("top_p out of range", dir, "generation_config.json", "top_p 2");
    write_json_text(dir, "generation_config.json", "{\"min_p\": -0.5}");
    expect_load_error("min_p out of range", dir, "generation_config.json", "min_p -0.5");
    write_json_text(dir, "generation_config.json", "{\"min_p\": 0.05, \"eos_token_id\": 7}");
    {
        model mm;
        ergo_error e2 = {0};
        ergo_status st2 = model_load(&mm, dir, &e2);
        CHECK(st2 == ERGO_OK && mm.generation.min_p == 0.05, "min_p read: %s", e2.msg);
        if (st2 == ERGO_OK) model_free(&mm);
    }
    write_json_text(dir, "generation_config.json", "{\"eos_token_id\": \"<|im_end|>\"}");
    expect_load_error("eos_token_id a string", dir, "generation_config.json", "eos_token_id");
    write_json_text(dir, "generation_config.json", "{\"repetition_penalty\": 0}");
    expect_load_error("zero repetition penalty", dir, "generation_config.json",
                      "repetition_penalty");
    write_json_text(dir, "generation_config.json", "[}");
    expect_load_error("generation_config.json not JSON", dir, "generation_config.json",
                      "invalid JSON");
    write_json_text(dir, "generation_config.json", "{\"eos_token_id\": 7, \"do_sample\": true}");
    if (model_load(&m, dir, &err) == ERGO_OK) {
        CHECK(m.generation.from_file && m.generation.n_eos == 1 &&
                  m.generation.eos_token_ids[0] == 7 && m.generation.do_sample &&
                  m.generation.top_k == 50 && m.generation.temperature == 1.0,
              "generation defaults around an int eos");
        model_free(&m);
    } else {
        CHECK(0, "generation config with an int eos refused: %s", err.msg);
    }

    /* the nested layout names text_config in its messages */
    ckpt_case cn;
    if (micro_case(&cn, "nested")) {
        json_t *cfg = json_deep_copy(cn.config);
        json_object_set_new(json_object_get(cfg, "text_config"), "num_attention_heads",
                            json_integer(5));
        write_config(dir, cfg);
        json_decref(cfg);
        expect_load_error("nested: heads do not divide hidden", dir, "text_config",
                          "num_attention_heads 5");
        cfg = json_deep_copy(cn.config);
        json_object_set_new(json_object_get(cfg, "text_config"), "model_type",
                            json_string("qwen2_vl_text"));
        write_config(dir, cfg);
        json_decref(cfg);
        expect_load_error("nested: text model of another architecture", dir, "config.json",
                          "qwen2_vl_text");
        ckpt_case_free(&cn);
    }
    ckpt_case_free(&c);
}

static void test_bad_tensors(void) {
    ckpt_case c;
    if (!micro_case(&c, "flat")) return;
    enum { CAP = 256 };
    static st_write_entry e[CAP];
    static char names[CAP][160];
    int n = micro_entries(&c, e, names, CAP);
    CHECK(n > 0, "micro entries");
    const char *dir = scratch_path("badw");
    ergo_error err = {0};
    CHECK(random_checkpoint_write(&c, dir, NULL, &err) == ERGO_OK, "micro write: %s", err.msg);
    const char *f = "model.safetensors";

    /* a valid hand-written file loads (zeros) */
    write_entries(dir, f, e, n);
    model m;
    CHECK(model_load(&m, dir, &err) == ERGO_OK, "hand-written micro load: %s", err.msg);
    if (!err.msg[0]) model_free(&m);

    expect_missing_tensor(dir, f, e, n, "model.layers.1.mlp.up_proj.weight", "missing tensor");
    expect_missing_tensor(dir, f, e, n, "lm_head.weight", "missing untied head");
    expect_missing_tensor(dir, f, e, n, "model.embed_tokens.weight", "missing embedding");

    int k = find_entry(e, n, "model.layers.0.self_attn.q_proj.weight");
    e[k].shape[1] = 32;
    write_entries(dir, f, e, n);
    expect_load_error("wrong tensor shape", dir, "model.layers.0.self_attn.q_proj.weight",
                      "has shape (64, 32); the config wants (64, 64)");
    e[k].shape[1] = 64;

    k = find_entry(e, n, "visual.patch_embed.proj.weight");
    st_write_entry saved = e[k];
    e[k].n_dims = 2;
    e[k].shape[1] = 1176;
    write_entries(dir, f, e, n);
    expect_load_error("conv weight flattened", dir, "visual.patch_embed.proj.weight",
                      "has shape (32, 1176); the config wants (32, 3, 2, 14, 14)");
    e[k] = saved;

    k = find_entry(e, n, "model.norm.weight");
    e[k].dtype = DTYPE_I8;
    write_entries(dir, f, e, n);
    expect_load_error("weight of a non-float dtype", dir, "model.norm.weight", "stored as I8");
    e[k].dtype = DTYPE_F64;
    write_entries(dir, f, e, n);
    expect_load_error("weight of F64", dir, "model.norm.weight", "stored as F64");
    e[k].dtype = DTYPE_F32; /* mixed dtypes are fine */
    write_entries(dir, f, e, n);
    CHECK(model_load(&m, dir, &err) == ERGO_OK, "mixed dtypes: %s", err.msg);
    if (!err.msg[0]) {
        CHECK(m.weights.text.norm.t.dtype == DTYPE_F32 && m.weights.text.embed.t.dtype == DTYPE_BF16,
              "mixed dtypes kept as stored");
        model_free(&m);
    }
    e[k].dtype = DTYPE_BF16;

    /* new-layout names: a missing one is named in that layout */
    static char new_names[CAP][160];
    for (int i = 0; i < n; i++) {
        weights_layout_name(new_names[i], 160, names[i], NAMES_NEW);
        e[i].name = new_names[i];
    }
    k = find_entry(e, n, "model.visual.blocks.2.attn.qkv.bias");
    saved = e[k];
    e[k] = e[n - 1];
    write_entries(dir, f, e, n - 1);
    expect_load_error("missing tensor, new layout", dir, dir,
                      "missing tensor `model.visual.blocks.2.attn.qkv.bias' (new name layout)");
    e[k] = saved;
    for (int i = 0; i < n; i++) e[i].name = names[i];

    /* a broken safetensors file inside a checkpoint is named */
    write_json_text(dir, f, "abc");
    expect_load_error("truncated safetensors in a checkpoint", dir, "model.safetensors",
                      "too short");
    ckpt_case_free(&c);
}

static void test_bad_layout(void) {
    ckpt_case c;
    if (!micro_case(&c, "flat")) return;
    enum { CAP = 256 };
    static st_write_entry e[CAP];
    static char names[CAP][160];
    int n = micro_entries(&c, e, names, CAP);
    const char *dir = scratch_path("badidx");
    ergo_error err = {0};
    /* config.json only, no weights */
    CHECK(random_checkpoint_write(&c, dir, NULL, &err) == ERGO_OK, "write: %s", err.msg);
    char p[1024];
    path_join(p, sizeof p, dir, "model.safetensors", &err);
    remove(p);
    expect_load_error("no weights", dir, dir, "no model.safetensors and no model.safetensors.index.json");

    /* two shards + index */
    const char *s1 = "model-00001-of-00002.safetensors", *s2 = "model-00002-of-00002.safetensors";
    int half = n / 2;
    write_entries(dir, s1, e, half);
    write_entries(dir, s2, e + half, n - half);
    json_t *wm = json_object();
    for (int i = 0; i < n; i++) json_object_set_new(wm, e[i].name, json_string(i < half ? s1 : s2));
    json_t *idx = json_pack("{s:{s:i}, s:O}", "metadata", "total_size", 0, "weight_map", wm);
    char *txt = json_dumps(idx, 0);
    write_json_text(dir, "model.safetensors.index.json", txt);
    free(txt);
    model m;
    CHECK(model_load(&m, dir, &err) == ERGO_OK, "hand-written shards: %s", err.msg);
    if (!err.msg[0]) {
        CHECK(m.ckpt.sharded && m.ckpt.n_files == 2, "two shards");
        model_free(&m);
    }

#define WRITE_INDEX(mutation)                                                  \
    do {                                                                       \
        json_t *w2 = json_deep_copy(wm);                                       \
        mutation;                                                              \
        json_t *i2 = json_pack("{s:o}", "weight_map", w2);                     \
        char *t2 = json_dumps(i2, 0);                                          \
        write_json_text(dir, "model.safetensors.index.json", t2);              \
        free(t2);                                                              \
        json_decref(i2);                                                       \
    } while (0)

    WRITE_INDEX(json_object_set_new(w2, e[0].name,
                                    json_string("model-00003-of-00003.safetensors")));
    expect_load_error("index names a missing shard", dir, "model.safetensors.index.json",
                      "names shard model-00003-of-00003.safetensors, which does not exist");

    WRITE_INDEX(json_object_set_new(w2, e[n - 1].name, json_string(s1)));
    expect_load_error("tensor not where the index says", dir, e[n - 1].name,
                      "is in model-00002-of-00002.safetensors, but the index puts it in "
                      "model-00001-of-00002.safetensors");

    WRITE_INDEX(json_object_del(w2, e[1].name));
    expect_load_error("tensor not in the index", dir, e[1].name, "is not listed in the index");

    WRITE_INDEX(json_object_set_new(w2, "model.layers.7.extra.weight", json_string(s1)));
    expect_load_error("index lists a tensor no shard has", dir, "model.layers.7.extra.weight",
                      "is not in model-00001-of-00002.safetensors, where the index puts it");

    WRITE_INDEX(json_object_set_new(w2, e[0].name, json_string("../model.safetensors")));
    expect_load_error("index escapes the directory", dir, "model.safetensors.index.json",
                      "not a file name in the directory");

    write_json_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    expect_load_error("index without weight_map", dir, "model.safetensors.index.json",
                      "weight_map is missing");

    /* the same tensor in both shards */
    write_entries(dir, s2, e + half - 1, n - half + 1);
    WRITE_INDEX((void)0);
    expect_load_error("tensor stored twice", dir, e[half - 1].name, "stored twice");
#undef WRITE_INDEX

    /* no config.json */
    path_join(p, sizeof p, dir, "config.json", &err);
    remove(p);
    expect_load_error("missing config.json", dir, "config.json", "missing");
    expect_load_error("not a directory", "/nonexistent/ckpt", "/nonexistent/ckpt",
                      "not a directory");
    json_decref(idx);
    json_decref(wm);
    ckpt_case_free(&c);
}

/* Data misaligned for its dtype (header length not a multiple of 8): loads, via copies. */
static void test_misaligned(void) {
    ckpt_case c;
    if (!micro_case(&c, "flat")) return;
    const char *dir = scratch_path("misaligned");
    ergo_error err = {0};
    CHECK(random_checkpoint_write(&c, dir, NULL, &err) == ERGO_OK, "write: %s", err.msg);
    model a, b;
    if (model_load(&a, dir, &err) != ERGO_OK) {
        CHECK(0, "aligned load: %s", err.msg);
        ckpt_case_free(&c);
        return;
    }
    char p[1024];
    path_join(p, sizeof p, dir, "model.safetensors", &err);
    char *buf;
    size_t n;
    CHECK(file_read_all(p, (size_t)1 << 30, &buf, &n, &err) == ERGO_OK, "read: %s", err.msg);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = (h << 8) | (uint8_t)buf[i];
    /* one more space in the header moves every tensor by one byte */
    uint8_t *nb = malloc(n + 1);
    uint64_t h1 = h + 1;
    for (int i = 0; i < 8; i++) nb[i] = (uint8_t)(h1 >> (8 * i));
    memcpy(nb + 8, buf + 8, h);
    nb[8 + h] = ' ';
    memcpy(nb + 9 + h, buf + 8 + h, n - 8 - h);
    const char *dir2 = scratch_path("misaligned2");
    CHECK(random_checkpoint_write(&c, dir2, NULL, &err) == ERGO_OK, "write2: %s", err.msg);
    path_join(p, sizeof p, dir2, "model.safetensors", &err);
    file_write_all(p, nb, n + 1, &err);
    free(buf);
    free(nb);
    if (model_load(&b, dir2, &err) == ERGO_OK) {
        CHECK(b.ckpt.n_copies == b.ckpt.n_tensors, "misaligned tensors copied: %d of %d",
              b.ckpt.n_copies, b.ckpt.n_tensors);
        CHECK((uintptr_t)b.weights.text.embed.t.data % 2 == 0, "copy aligned");
        check_identical(&a, &b, "misaligned vs aligned");
        model_free(&b);
    } else {
        CHECK(0, "misaligned load: %s", err.msg);
    }
    model_free(&a);
    ckpt_case_free(&c);
}

/* ---- the CLI ---- */

static int run(const char *cmd, const char *out, const char *errf) {
    char full[8192];
    if (snprintf(full, sizeof full, "%s >%s 2>%s", cmd, out, errf) >= (int)sizeof full) return -1;
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void) {
    const char *bin = getenv("ERGO_BIN");
    if (!bin || !*bin) {
        SKIP("ERGO_BIN not set: the inspect CLI test needs the ergo binary");
        return;
    }
    if (!case_dir_flat_legacy[0]) {
        CHECK(0, "no generated checkpoint for the CLI test");
        return;
    }
    char cmd[2048], out[1024], errf[1024];
    snprintf(out, sizeof out, "%s", scratch_path("inspect.out"));
    snprintf(errf, sizeof errf, "%s", scratch_path("inspect.err"));
    ergo_error err = {0};
    char *text = NULL;
    size_t n;

    /* what the reference counted for this case */
    json_t *exp = load_fixture("expected/flat_legacy_bf16.json");
    if (!exp) return;
    const json_t *pcount = json_object_get(exp, "param_count");
    long long total = json_integer_value(json_object_get(pcount, "total"));
    long long ptext = json_integer_value(json_object_get(pcount, "text"));
    long long pvision = json_integer_value(json_object_get(pcount, "vision"));
    int n_tensors = (int)json_array_size(json_object_get(exp, "tensors"));
    json_decref(exp);

    snprintf(cmd, sizeof cmd, "%s inspect --model %s", bin, case_dir_flat_legacy);
    CHECK_EQ_INT(run(cmd, out, errf), 0, "inspect exit status");
    if (file_read_all(out, 1 << 20, &text, &n, &err) == ERGO_OK) {
        char dt[64], params[128];
        snprintf(dt, sizeof dt, "dtypes: BF16 %d\n", n_tensors);
        snprintf(params, sizeof params, "parameters    %lld (text %lld, vision %lld)", total, ptext,
                 pvision);
        const char *needles[] = {
            "config        flat", "tensor names  legacy", "files         1:", dt,
            "layers 2, hidden 64, heads 4, kv heads 2, head dim 16, ffn 128, vocab 152064, "
            "mrope [2, 3, 3]",
            "depth 4, hidden 32, heads 2, head dim 16, ffn 64", "full attention [1, 3]", "untied",
            params, "eos [151645, 151643]"};
        for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
            CHECK(strstr(text, needles[i]) != NULL, "inspect output lacks \"%s\":\n%s", needles[i],
                  text);
        free(text);
    }

    snprintf(cmd, sizeof cmd, "%s inspect --json --model %s", bin, case_dir_flat_legacy);
    CHECK_EQ_INT(run(cmd, out, errf), 0, "inspect --json exit status");
    json_t *j = json_load_path(out, &err);
    CHECK(j != NULL, "inspect --json is not JSON: %s", err.msg);
    if (j) {
        CHECK_EQ_STR(json_string_value(json_object_get(j, "config_layout")), "flat", "json layout");
        CHECK_EQ_STR(json_string_value(json_object_get(j, "name_layout")), "legacy", "json names");
        const json_t *jp = json_object_get(j, "parameters");
        CHECK_EQ_INT(json_integer_value(json_object_get(jp, "total")), total, "json total");
        CHECK_EQ_INT(json_integer_value(json_object_get(jp, "text")), ptext, "json text");
        CHECK_EQ_INT(json_integer_value(json_object_get(jp, "vision")), pvision, "json vision");
        CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "dtypes"), "BF16")),
                     n_tensors, "json dtypes");
        CHECK_EQ_INT(json_integer_value(json_object_get(j, "tensors")), n_tensors, "json tensors");
        CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "text"), "hidden")), 64,
                     "json text hidden");
        const json_t *fa =
            json_object_get(json_object_get(j, "vision"), "full_attention_blocks");
        CHECK(json_array_size(fa) == 2 && json_integer_value(json_array_get(fa, 1)) == 3,
              "json full attention blocks");
        CHECK(json_is_false(json_object_get(j, "tied_embeddings")), "json tied");
        json_decref(j);
    }

    /* a broken checkpoint: exit 1 and one line on stderr */
    snprintf(cmd, sizeof cmd, "%s inspect --model %s", bin, scratch_path("no-such-checkpoint"));
    CHECK_EQ_INT(run(cmd, out, errf), 1, "inspect on a broken checkpoint");
    if (file_read_all(errf, 1 << 20, &text, &n, &err) == ERGO_OK) {
        char *nl = strchr(text, '\n');
        CHECK(!strncmp(text, "ergo inspect: ", 14) && nl && nl[1] == '\0' &&
                  strstr(text, "no-such-checkpoint"),
              "stderr is not one line naming the checkpoint: %s", text);
        free(text);
    }
    snprintf(cmd, sizeof cmd, "%s inspect", bin);
    CHECK_EQ_INT(run(cmd, out, errf), 2, "inspect without --model is a usage error");
    snprintf(cmd, sizeof cmd, "%s inspect --help", bin);
    CHECK_EQ_INT(run(cmd, out, errf), 0, "inspect --help");
}

/* "init": "reference" (make-checkpoint --init): normal(0, initializer_range) weights
 * and embeddings (mean and std over each large tensor within sampling error), zero
 * biases, unit norms, a zero padding row; the values differ from the uniform ones. */
static void test_reference_init(void) {
    json_t *root = load_fixture("cases/flat_new_f32_tied.json");
    if (!root) return;
    json_object_set_new(root, "init", json_string("reference"));
    json_t *cfg = json_object_get(root, "config");
    json_object_set_new(cfg, "initializer_range", json_real(0.05));
    json_object_set_new(cfg, "pad_token_id", json_integer(7));
    ckpt_case c;
    ergo_error err = {0};
    ergo_status s = ckpt_case_parse(&c, root, "init case", &err);
    json_decref(root);
    CHECK(s == ERGO_OK, "init case: %s", err.msg);
    if (s) return;
    CHECK(c.init_reference == 1 && fabs(c.init_std - 0.05) < 1e-12 && c.pad_row == 7,
          "init fields: %d %g %lld", c.init_reference, c.init_std, (long long)c.pad_row);
    model m;
    s = random_checkpoint_fill(&m, &c, &err);
    CHECK(s == ERGO_OK, "fill: %s", err.msg);
    if (s) {
        ckpt_case_free(&c);
        return;
    }
    int n = weights_spec(&m.config, NULL, NULL);
    weight_spec *specs = calloc((size_t)n, sizeof *specs);
    weights_spec(&m.config, specs, &m.weights);
    int bad = 0, checked = 0;
    for (int i = 0; i < n; i++) {
        const weight_spec *sp = &specs[i];
        const tensor *t = &sp->slot->t;
        double sum = 0, sq = 0, mx = 0;
        int64_t start = 0;
        if (sp->kind == WEIGHT_EMBED) {
            /* the padding row is zero */
            for (int64_t j = 0; j < sp->shape[1]; j++)
                mx = fmax(mx, fabs(tensor_value(t, 7 * sp->shape[1] + j)));
            if (mx != 0.0) bad++;
            start = 8 * sp->shape[1];
        }
        for (int64_t j = start; j < sp->numel; j++) {
            double v = tensor_value(t, j);
            sum += v, sq += v * v;
            if (sp->kind == WEIGHT_BIAS && v != 0.0) bad++;
            if (sp->kind == WEIGHT_NORM && v != 1.0) bad++;
        }
        const double cnt = (double)(sp->numel - start);
        if ((sp->kind == WEIGHT_MATRIX || sp->kind == WEIGHT_EMBED) && cnt >= 4096) {
            const double mean = sum / cnt, sd = sqrt(sq / cnt - mean * mean);
            /* 6 standard errors of the mean and of the std of a normal sample */
            const double se = 0.05 / sqrt(cnt);
            CHECK(fabs(mean) < 6 * se && fabs(sd - 0.05) < 6 * se * 0.7072,
                  "%s: mean %g std %g over %.0f values (want 0, 0.05)", sp->name, mean, sd, cnt);
            checked++;
        }
    }
    CHECK(bad == 0, "reference init: %d biases/norms/padding values not 0/1/0", bad);
    CHECK(checked >= 4, "reference init: only %d tensors large enough to check", checked);
    free(specs);
    model_free(&m);
    ckpt_case_free(&c);
}

void test_checkpoint(void) {
    test_reference_init();
    test_spec_7b();
    test_cases();
    test_bad_configs();
    test_bad_tensors();
    test_bad_layout();
    test_misaligned();
    test_cli();
}
