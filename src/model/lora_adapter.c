/*
 * lora_adapter.c - reading, checking and merging PEFT LoRA adapters (lora_adapter.h).
 *
 * Mirrors PEFT 0.17.1: LoraConfig's fields (config.py), check_target_module_exists
 * (tuners_utils.py: a list entry matches a module name equal to it or ending in
 * "." + entry; a string is re.fullmatch'ed; "all-linear" takes every nn.Linear but
 * the output embedding), and Linear.get_delta_weight + merge (lora/layer.py):
 * delta = (B @ A) * scaling, then W += delta, all in the weight's dtype (f32 here:
 * the reference merges an f32 model; ergo rounds the f32 sum once to the stored
 * dtype).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "lora_adapter.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <nettle/sha2.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/file.h"
#include "base/half.h"
#include "base/json.h"

#define CONFIG_NAME "adapter_config.json"
#define TENSORS_NAME "adapter_model.safetensors"
#define KEY_PREFIX "base_model.model."
#define MAX_CONFIG_BYTES ((size_t)1 << 24)

/* ---- finding the adapter directory ---- */

static int has_file(const char *dir, const char *name) {
    char p[2048];
    if (snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) return 0;
    return file_exists(p);
}

/* "checkpoint-<digits>" exactly: its step, else -1. */
static long long checkpoint_step(const char *name) {
    if (strncmp(name, "checkpoint-", 11) || !name[11]) return -1;
    long long v = 0;
    for (const char *p = name + 11; *p; p++) {
        if (*p < '0' || *p > '9' || v > 100000000000000LL) return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

ergo_status lora_adapter_resolve(const char *dir, char *out, size_t out_size, char *note,
                                 size_t note_size, ergo_error *err) {
    if (note && note_size) note[0] = '\0';
    if (!dir_exists(dir))
        return ergo_fail(err, ERGO_E_IO, "%s: no such adapter directory", dir);
    if (has_file(dir, CONFIG_NAME)) {
        if (snprintf(out, out_size, "%s", dir) >= (int)out_size)
            return ergo_fail(err, ERGO_E_ARG, "%s: path too long", dir);
        return ERGO_OK;
    }
    /* an `ergo train sft` output directory: its newest LoRA checkpoint */
    long long best = -1, best_full = -1;
    DIR *d = opendir(dir);
    if (!d) return ergo_fail(err, ERGO_E_IO, "%s: cannot list: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        const long long st = checkpoint_step(e->d_name);
        char sub[2048];
        if (st < 0 || snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) >= (int)sizeof sub)
            continue;
        if (st > best && has_file(sub, CONFIG_NAME)) best = st;
        if (st > best_full && has_file(sub, "model.safetensors")) best_full = st;
    }
    closedir(d);
    if (best >= 0) {
        if (snprintf(out, out_size, "%s/checkpoint-%lld", dir, best) >= (int)out_size)
            return ergo_fail(err, ERGO_E_ARG, "%s: path too long", dir);
        if (note && note_size)
            snprintf(note, note_size, "%.200s holds training checkpoints: using the newest, "
                     "checkpoint-%lld", dir, best);
        return ERGO_OK;
    }
    if (best_full >= 0)
        return ergo_fail(err, ERGO_E_ARG, "%s holds full-training checkpoints, not LoRA adapters: "
                         "pass %s/checkpoint-%lld as --model", dir, dir, best_full);
    if (has_file(dir, "model.safetensors") || has_file(dir, "model.safetensors.index.json"))
        return ergo_fail(err, ERGO_E_ARG, "%s: a full checkpoint (model.safetensors), not a LoRA "
                         "adapter: pass it as --model", dir);
    return ergo_fail(err, ERGO_E_IO, "%s: no " CONFIG_NAME " (neither a PEFT LoRA adapter nor an "
                     "`ergo train sft` output with LoRA checkpoints)", dir);
}

/* ---- the model's modules ---- */

typedef enum module_kind { MOD_LINEAR, MOD_HEAD, MOD_CONV, MOD_EMBED } module_kind;

typedef struct module_ref {
    char legacy[96];   /* canonical module path ("model.layers.0.self_attn.q_proj") */
    char fresh[128];   /* transformers >= 4.52's ("model.language_model.layers.0...") */
    module_kind kind;
    int spec_index;
    int out, in;
    int selected;
    int found_a, found_b; /* tensor indices + 1 in the adapter file */
} module_ref;

static int list_modules(const model_config *cfg, module_ref **out, ergo_error *err) {
    const int n = weights_spec(cfg, NULL, NULL);
    weight_spec *sp = malloc(sizeof *sp * (size_t)n);
    module_ref *mods = calloc((size_t)n + 1, sizeof *mods); /* + a tied head */
    if (!sp || !mods) {
        free(sp);
        free(mods);
        ergo_fail(err, ERGO_E_NOMEM, "out of memory for the module list");
        return -1;
    }
    weights_spec(cfg, sp, NULL);
    int k = 0;
    for (int i = 0; i < n; i++) {
        const weight_spec *s = &sp[i];
        const size_t len = strlen(s->name);
        if (len < 8 || strcmp(s->name + len - 7, ".weight")) continue;
        module_kind kind;
        if (s->kind == WEIGHT_EMBED) kind = MOD_EMBED;
        else if (s->kind == WEIGHT_LM_HEAD) kind = MOD_HEAD;
        else if (s->kind == WEIGHT_MATRIX) kind = s->n_dims == 2 ? MOD_LINEAR : MOD_CONV;
        else continue;
        module_ref *m = &mods[k++];
        snprintf(m->legacy, sizeof m->legacy, "%.*s", (int)(len - 7), s->name);
        weights_layout_name(m->fresh, sizeof m->fresh, m->legacy, NAMES_NEW);
        m->kind = kind;
        m->spec_index = i;
        m->out = (int)s->shape[0];
        m->in = (int)s->fan_in;
    }
    /* a tied head is the embedding's parameter: listed so that selecting it is refused */
    if (cfg->text.tie_word_embeddings) {
        module_ref *m = &mods[k++];
        snprintf(m->legacy, sizeof m->legacy, "lm_head");
        snprintf(m->fresh, sizeof m->fresh, "lm_head");
        m->kind = MOD_HEAD;
        m->spec_index = -1;
    }
    free(sp);
    *out = mods;
    return k;
}

/* ---- target_modules / exclude_modules ---- */

typedef struct matcher {
    int all_linear;
    pcre2_code *re;           /* a string */
    const json_t *list;       /* a list of strings */
    pcre2_match_data *md;
} matcher;

static void matcher_free(matcher *m) {
    if (m->md) pcre2_match_data_free(m->md);
    if (m->re) pcre2_code_free(m->re);
    memset(m, 0, sizeof *m);
}

/* v: a string or a list of strings (null / absent when optional). */
static ergo_status matcher_init(matcher *m, const json_t *v, const char *field, int optional,
                                const char *path, ergo_error *err) {
    memset(m, 0, sizeof *m);
    if (!v || json_is_null(v)) {
        if (optional) return ERGO_OK;
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is missing (a list of module names or a "
                         "regex)", path, field);
    }
    if (json_is_string(v)) {
        const char *pat = json_string_value(v);
        if (!optional && !strcasecmp(pat, "all-linear")) { /* PEFT lower-cases it */
            m->all_linear = 1;
            return ERGO_OK;
        }
        int code;
        PCRE2_SIZE off;
        /* re.fullmatch: anchored at both ends */
        m->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_ANCHORED | PCRE2_ENDANCHORED, &code, &off, NULL);
        if (!m->re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof msg);
            return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is not a valid regex (at offset %zu: "
                             "%s)", path, field, (size_t)off, (const char *)msg);
        }
        m->md = pcre2_match_data_create_from_pattern(m->re, NULL);
        if (!m->md) {
            matcher_free(m);
            return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        }
        return ERGO_OK;
    }
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!json_is_string(json_array_get(v, i)))
                return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s'[%zu] is not a string", path, field,
                                 i);
        if (!optional && json_array_size(v) == 0)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is an empty list", path, field);
        m->list = v;
        return ERGO_OK;
    }
    return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is neither a list of module names nor a regex "
                     "string", path, field);
}

static int name_matches(const matcher *m, const char *name) {
    if (m->re)
        return pcre2_match(m->re, (PCRE2_SPTR)name, strlen(name), 0, 0, m->md, NULL) >= 0;
    const size_t n = strlen(name);
    for (size_t i = 0; m->list && i < json_array_size(m->list); i++) {
        const char *t = json_string_value(json_array_get(m->list, i));
        const size_t tl = strlen(t);
        if (!strcmp(name, t)) return 1;
        if (tl + 1 <= n && name[n - tl - 1] == '.' && !strcmp(name + n - tl, t)) return 1;
    }
    return 0;
}

/* PEFT matches the names of the model it wraps: transformers 4.56's layout; older
 * adapters were made for the legacy one. Either selects the module. */
static int module_matches(const matcher *m, const module_ref *r) {
    if (m->all_linear) return r->kind == MOD_LINEAR;
    return name_matches(m, r->fresh) || name_matches(m, r->legacy);
}

/* ---- adapter_config.json ---- */

static const char *kind_label(module_kind k) {
    return k == MOD_CONV ? "a Conv3d" : k == MOD_EMBED ? "an embedding" : "the tied output head";
}

/* A field that must be absent, null, false, or empty ({} / []), else refused by name. */
static ergo_status require_unset(const json_t *root, const char *field, const char *why,
                                 const char *path, ergo_error *err) {
    const json_t *v = json_object_get(root, field);
    if (!v || json_is_null(v) || json_is_false(v) || (json_is_object(v) && !json_object_size(v)) ||
        (json_is_array(v) && !json_array_size(v)))
        return ERGO_OK;
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    ergo_status s = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: `%s' is %.80s: %s", path, field,
                              text ? text : "set", why);
    free(text);
    return s;
}

static ergo_status parse_config(lora_adapter *a, const json_t *root, const char *path,
                                ergo_error *err) {
    if (!json_is_object(root)) return ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", path);
    const json_t *pt = json_object_get(root, "peft_type");
    if (pt && !(json_is_string(pt) && !strcmp(json_string_value(pt), "LORA")))
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: `peft_type' is %s: ergo reads LORA adapters",
                         path, json_is_string(pt) ? json_string_value(pt) : "not a string");
    const json_t *r = json_object_get(root, "r");
    if (!json_is_integer(r) || json_integer_value(r) < 1 || json_integer_value(r) > 65536)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `r' is missing or not an integer in 1..65536",
                         path);
    a->rank = (int)json_integer_value(r);
    const json_t *al = json_object_get(root, "lora_alpha");
    if (!json_is_number(al) || !isfinite(json_number_value(al)))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `lora_alpha' is missing or not a number", path);
    a->alpha = json_number_value(al);
    const json_t *rs = json_object_get(root, "use_rslora");
    if (rs && !json_is_boolean(rs) && !json_is_null(rs))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `use_rslora' is not true or false", path);
    a->use_rslora = json_is_true(rs);
    /* PEFT: scaling = lora_alpha / r (or / math.sqrt(r)) in Python floats; torch then
     * multiplies the f32 product by it in f32 */
    a->scale = (float)(a->use_rslora ? a->alpha / sqrt((double)a->rank) : a->alpha / a->rank);
    const json_t *bias = json_object_get(root, "bias");
    if (bias && !json_is_null(bias) && !(json_is_string(bias) && !strcmp(json_string_value(bias), "none")))
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: `bias' is %s: ergo merges adapters with bias "
                         "\"none\" only (the others also train the base's biases)", path,
                         json_is_string(bias) ? json_string_value(bias) : "not a string");
    ergo_status s;
    if ((s = require_unset(root, "fan_in_fan_out", "ergo merges adapters of nn.Linear "
                           "weights stored (out, in) only", path, err)) ||
        (s = require_unset(root, "modules_to_save", "the adapter replaces whole modules, which "
                           "ergo does not read", path, err)) ||
        (s = require_unset(root, "use_dora", "DoRA adapters are not supported", path, err)) ||
        (s = require_unset(root, "lora_bias", "adapters with a lora_B bias are not supported",
                           path, err)) ||
        (s = require_unset(root, "rank_pattern", "per-module ranks are not supported", path,
                           err)) ||
        (s = require_unset(root, "alpha_pattern", "per-module alphas are not supported", path,
                           err)) ||
        (s = require_unset(root, "layers_to_transform", "adapters of a subset of layers are not "
                           "supported", path, err)) ||
        (s = require_unset(root, "layer_replication", "not supported", path, err)) ||
        (s = require_unset(root, "target_parameters", "adapters of bare parameters are not "
                           "supported", path, err)) ||
        (s = require_unset(root, "trainable_token_indices", "token adapters are not supported",
                           path, err)) ||
        (s = require_unset(root, "use_qalora", "not supported", path, err)) ||
        (s = require_unset(root, "megatron_config", "not supported", path, err)))
        return s;
    return ERGO_OK;
}

/* ---- tensors ---- */

/* The module path of an adapter key and which matrix it is: 'A', 'B', or 0 with
 * *why set for a key that is no LoRA weight. */
static int parse_key(const char *key, char *module, size_t size, const char **why) {
    static const char *const unsupported[][2] = {
        {".lora_embedding_A", "an embedding adapter (not supported)"},
        {".lora_embedding_B", "an embedding adapter (not supported)"},
        {".lora_magnitude_vector", "a DoRA magnitude (not supported)"},
        {".lora_B.bias", "a lora_B bias (not supported)"},
    };
    *why = "not a LoRA weight (base_model.model.<module>.lora_A.weight or .lora_B.weight)";
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (strstr(key, unsupported[i][0])) {
            *why = unsupported[i][1];
            return 0;
        }
    const size_t pl = strlen(KEY_PREFIX), n = strlen(key), sl = strlen(".lora_A.weight");
    if (n <= pl + sl || strncmp(key, KEY_PREFIX, pl)) return 0;
    const char *suf = key + n - sl;
    int which = !strcmp(suf, ".lora_A.weight") ? 'A' : !strcmp(suf, ".lora_B.weight") ? 'B' : 0;
    if (!which || n - sl - pl >= size) return 0;
    memcpy(module, key + pl, n - sl - pl);
    module[n - sl - pl] = '\0';
    return which;
}

/* The module of the list a key's path names, in either layout, or NULL. */
static module_ref *find_module(module_ref *mods, int n, const char *path) {
    char legacy[192];
    if (!strncmp(path, "model.language_model.", 21))
        snprintf(legacy, sizeof legacy, "model.%s", path + 21);
    else if (!strncmp(path, "model.visual.", 13))
        snprintf(legacy, sizeof legacy, "%s", path + 6);
    else
        snprintf(legacy, sizeof legacy, "%s", path);
    for (int i = 0; i < n; i++)
        if (!strcmp(mods[i].legacy, legacy)) return &mods[i];
    return NULL;
}

static ergo_status widen(const tensor *t, float **out, ergo_error *err) {
    const size_t n = (size_t)t->numel;
    float *v = malloc((n ? n : 1) * sizeof *v);
    if (!v) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for adapter tensor `%s'", t->name);
    const uint16_t *h = t->data;
    for (size_t i = 0; i < n; i++)
        v[i] = t->dtype == DTYPE_F32   ? ((const float *)t->data)[i]
               : t->dtype == DTYPE_BF16 ? bf16_to_f32_one(h[i])
                                        : f16_to_f32_one(h[i]);
    *out = v;
    return ERGO_OK;
}

static ergo_status check_shape(const tensor *t, int64_t d0, int64_t d1, const module_ref *m,
                               int rank, const char *path, ergo_error *err) {
    if (t->dtype != DTYPE_F32 && t->dtype != DTYPE_BF16 && t->dtype != DTYPE_F16)
        return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: tensor `%s' is stored as %s (F32, BF16 or "
                         "F16 expected)", path, t->name, dtype_name(t->dtype));
    if (t->n_dims == 2 && t->shape[0] == d0 && t->shape[1] == d1) return ERGO_OK;
    char got[128], want[128];
    const int64_t w[2] = {d0, d1};
    return ergo_fail(err, ERGO_E_SHAPE, "%s: tensor `%s' has shape %s; for the model's %s "
                     "(%d, %d) with r = %d it must be %s (an adapter for another model or "
                     "rank?)", path, t->name, shape_format(got, sizeof got, t->shape, t->n_dims),
                     m->fresh, m->out, m->in, rank, shape_format(want, sizeof want, w, 2));
}

/* Every tensor of the file to its selected module; then every selected module must
 * have both. */
static ergo_status bind_tensors(lora_adapter *a, const safetensors_file *st, module_ref *mods,
                                int n_mods, const char *path, ergo_error *err) {
    for (int i = 0; i < st->n_tensors; i++) {
        const tensor *t = &st->tensors[i];
        char module[192];
        const char *why;
        const int which = parse_key(t->name, module, sizeof module, &why);
        if (!which)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' is %s", path, t->name, why);
        module_ref *m = find_module(mods, n_mods, module);
        if (!m)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s': the model has no module `%s' "
                             "(an adapter for another model?)", path, t->name, module);
        if (!m->selected)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s': module `%s' is not one "
                             "target_modules selects", path, t->name, module);
        int *slot = which == 'A' ? &m->found_a : &m->found_b;
        if (*slot)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: module `%s' has two lora_%c tensors (`%s' "
                             "and `%s', one per name layout?)", path, m->fresh, which,
                             st->tensors[*slot - 1].name, t->name);
        ergo_status s = which == 'A' ? check_shape(t, a->rank, m->in, m, a->rank, path, err)
                                     : check_shape(t, m->out, a->rank, m, a->rank, path, err);
        if (s) return s;
        *slot = i + 1;
    }
    int n = 0;
    for (int i = 0; i < n_mods; i++) {
        const module_ref *m = &mods[i];
        if (!m->selected) continue;
        if (!m->found_a || !m->found_b)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: no tensor " KEY_PREFIX "%s.lora_%c.weight: "
                             "target_modules selects `%s' (an adapter for a smaller model?)",
                             path, m->fresh, m->found_a ? 'B' : 'A', m->fresh);
        n++;
    }
    a->modules = calloc((size_t)(n ? n : 1), sizeof *a->modules);
    if (!a->modules) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    for (int i = 0; i < n_mods; i++) {
        const module_ref *m = &mods[i];
        if (!m->selected) continue;
        lora_module *lm = &a->modules[a->n_modules++];
        snprintf(lm->weight, sizeof lm->weight, "%s.weight", m->legacy);
        lm->spec_index = m->spec_index;
        lm->out = m->out;
        lm->in = m->in;
        ergo_status s = widen(&st->tensors[m->found_a - 1], &lm->a, err);
        if (!s) s = widen(&st->tensors[m->found_b - 1], &lm->b, err);
        if (s) return s;
    }
    return ERGO_OK;
}

/* Marks the modules target_modules (minus exclude_modules) selects; refuses a
 * selection of a module ergo cannot adapt, and a selection of none. */
static ergo_status select_modules(const json_t *root, module_ref *mods, int n_mods,
                                  const char *path, ergo_error *err) {
    matcher tm, ex;
    ergo_status s = matcher_init(&tm, json_object_get(root, "target_modules"), "target_modules", 0,
                                 path, err);
    if (s) return s;
    if ((s = matcher_init(&ex, json_object_get(root, "exclude_modules"), "exclude_modules", 1,
                          path, err))) {
        matcher_free(&tm);
        return s;
    }
    int n = 0;
    for (int i = 0; i < n_mods && !s; i++) {
        module_ref *m = &mods[i];
        m->selected = module_matches(&tm, m) && !((ex.re || ex.list) && module_matches(&ex, m));
        if (!m->selected) continue;
        if (m->kind != MOD_LINEAR && !(m->kind == MOD_HEAD && m->spec_index >= 0))
            s = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: target_modules selects `%s', %s: ergo "
                          "merges adapters of linear layers only", path, m->fresh,
                          kind_label(m->kind));
        n++;
    }
    if (!s && !n)
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: target_modules selects no linear layer of the "
                      "model", path);
    matcher_free(&tm);
    matcher_free(&ex);
    return s;
}

void lora_adapter_free(lora_adapter *a) {
    if (!a) return;
    for (int i = 0; i < a->n_modules; i++) {
        free(a->modules[i].a);
        free(a->modules[i].b);
    }
    free(a->modules);
    memset(a, 0, sizeof *a);
}

/* The config (text, its label cpath) and the tensors (st, label tpath) against cfg:
 * what lora_adapter_load and the fuzz entry point share. a->dir is set by the caller. */
static ergo_status parse_adapter(lora_adapter *a, const char *text, size_t len, const char *cpath,
                                 const safetensors_file *st, const char *tpath,
                                 const model_config *cfg, ergo_error *err) {
    json_t *root = json_load_bytes(text, len, cpath, err);
    module_ref *mods = NULL;
    int n_mods = 0;
    ergo_status s = ERGO_OK;
    if (!root) return err ? err->code : ERGO_E_FORMAT;
    if ((s = parse_config(a, root, cpath, err))) goto done;
    if ((n_mods = list_modules(cfg, &mods, err)) < 0) {
        s = ERGO_E_NOMEM;
        goto done;
    }
    if ((s = select_modules(root, mods, n_mods, cpath, err))) goto done;
    if ((s = bind_tensors(a, st, mods, n_mods, tpath, err))) goto done;
    /* the content hash keys anything derived from the merged weights (a q8/q4 cache) */
    struct sha256_ctx h;
    sha256_init(&h);
    sha256_update(&h, len, (const uint8_t *)text);
    if (st->size) sha256_update(&h, st->size, st->bytes);
    sha256_digest(&h, SHA256_DIGEST_SIZE, a->digest);
    for (int i = 0; i < 32; i++) snprintf(a->hash + 2 * i, 3, "%02x", a->digest[i]);
done:
    free(mods);
    json_decref(root);
    return s;
}

ergo_status lora_adapter_load(lora_adapter *a, const char *dir, const model_config *cfg,
                              ergo_error *err) {
    memset(a, 0, sizeof *a);
    char cpath[2048], tpath[2048];
    if (snprintf(a->dir, sizeof a->dir, "%s", dir) >= (int)sizeof a->dir ||
        snprintf(cpath, sizeof cpath, "%s/" CONFIG_NAME, dir) >= (int)sizeof cpath ||
        snprintf(tpath, sizeof tpath, "%s/" TENSORS_NAME, dir) >= (int)sizeof tpath)
        return ergo_fail(err, ERGO_E_ARG, "%s: path too long", dir);
    if (!file_exists(tpath)) {
        if (has_file(dir, "adapter_model.bin"))
            return ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: only adapter_model.bin (a pickle); ergo "
                             "reads " TENSORS_NAME " (save with safe_serialization=True)", dir);
        return ergo_fail(err, ERGO_E_IO, "%s: missing", tpath);
    }
    char *text = NULL;
    size_t len = 0;
    ergo_status s = file_read_all(cpath, MAX_CONFIG_BYTES, &text, &len, err);
    if (s) return s;
    safetensors_file st = {0};
    if (!(s = safetensors_open(&st, tpath, err)))
        s = parse_adapter(a, text, len, cpath, &st, tpath, cfg, err);
    safetensors_close(&st);
    free(text);
    if (s) lora_adapter_free(a);
    return s;
}

ergo_status lora_adapter_parse_bytes(lora_adapter *a, const uint8_t *data, size_t size,
                                     const model_config *cfg, ergo_error *err) {
    memset(a, 0, sizeof *a);
    snprintf(a->dir, sizeof a->dir, "memory");
    const uint8_t *nul = memchr(data, 0, size);
    const size_t clen = nul ? (size_t)(nul - data) : size;
    safetensors_file st = {0};
    ergo_status s = safetensors_parse(&st, nul ? nul + 1 : data + size, nul ? size - clen - 1 : 0,
                                      "memory/" TENSORS_NAME, err);
    if (!s) s = parse_adapter(a, (const char *)data, clen, "memory/" CONFIG_NAME, &st,
                              "memory/" TENSORS_NAME, cfg, err);
    safetensors_close(&st);
    if (s) lora_adapter_free(a);
    return s;
}

int lora_adapter_fuzz_one(const uint8_t *data, size_t size, const model_config *cfg) {
    ergo_error err = {0};
    lora_adapter a;
    ergo_status s = lora_adapter_parse_bytes(&a, data, size, cfg, &err);
    /* a refusal names the file it is about, in one line */
    ERGO_ASSERT(!s || (strstr(err.msg, "memory/") && !strchr(err.msg, '\n')));
    for (int i = 0; !s && i < a.n_modules; i++) {
        const lora_module *m = &a.modules[i];
        ERGO_ASSERT(m->a && m->b && m->in > 0 && m->out > 0);
        volatile float sink = m->a[(size_t)a.rank * (size_t)m->in - 1] +
                              m->b[(size_t)m->out * (size_t)a.rank - 1];
        (void)sink;
    }
    if (!s) lora_adapter_free(&a);
    return 0;
}

/* ---- merging ---- */

static inline float load_elem(dtype dt, const void *src, int64_t i) {
    if (dt == DTYPE_F32) return ((const float *)src)[i];
    const uint16_t h = ((const uint16_t *)src)[i];
    return dt == DTYPE_BF16 ? bf16_to_f32_one(h) : f16_to_f32_one(h);
}

static inline void store_elem(dtype dt, void *out, int64_t i, float v) {
    if (dt == DTYPE_F32) ((float *)out)[i] = v;
    else ((uint16_t *)out)[i] = dt == DTYPE_BF16 ? f32_to_bf16_one(v) : f32_to_f16_one(v);
}

/* Row i, columns [j0, j1): acc[j] = sum_k B[i,k] A[k,j] in k order (as a matmul
 * accumulates), then W + acc * s, each step one f32 rounding. */
static void merge_row(const lora_adapter *a, const lora_module *m, dtype dt, const void *src,
                      int64_t i, int64_t j0, int64_t j1, void *out, int64_t out_base, float *acc) {
    const int r = a->rank;
    const float *b = m->b + (size_t)i * (size_t)r;
    for (int64_t j = j0; j < j1; j++) acc[j - j0] = 0.0f;
    for (int k = 0; k < r; k++) {
        const float bk = b[k];
        const float *ak = m->a + (size_t)k * (size_t)m->in;
        for (int64_t j = j0; j < j1; j++) acc[j - j0] += bk * ak[j];
    }
    const int64_t at = i * m->in;
    for (int64_t j = j0; j < j1; j++)
        store_elem(dt, out, at + j - out_base, load_elem(dt, src, at + j) + acc[j - j0] * a->scale);
}

void lora_merge_range(const lora_adapter *a, const lora_module *m, dtype dt, const void *src,
                      int64_t start, int64_t count, void *out) {
    if (count <= 0) return;
    const int64_t in = m->in, end = start + count;
    const int64_t row0 = start / in, row1 = (end - 1) / in;
#pragma omp parallel if (count >= 65536)
    {
        float *acc = malloc((size_t)in * sizeof *acc);
        float one;
#pragma omp for schedule(static)
        for (int64_t i = row0; i <= row1; i++) {
            const int64_t j0 = i == row0 ? start - i * in : 0;
            const int64_t j1 = i == row1 ? end - i * in : in;
            if (acc) {
                merge_row(a, m, dt, src, i, j0, j1, out, start, acc);
            } else { /* no scratch: one column at a time, the same arithmetic */
                for (int64_t j = j0; j < j1; j++) merge_row(a, m, dt, src, i, j, j + 1, out, start, &one);
            }
        }
        free(acc);
    }
}

ergo_status lora_adapter_apply(model *m, const lora_adapter *a, ergo_error *err) {
    if (m->quant)
        return ergo_fail(err, ERGO_E_ARG, "%s: the model is already quantised: merge the adapter "
                         "first", a->dir);
    const int n = weights_spec(&m->config, NULL, NULL);
    weight_spec *sp = malloc(sizeof *sp * (size_t)n);
    if (!sp) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    weights_spec(&m->config, sp, &m->weights);
    ergo_status s = ERGO_OK;
    for (int i = 0; i < a->n_modules && !s; i++) {
        const lora_module *lm = &a->modules[i];
        if (lm->spec_index < 0 || lm->spec_index >= n || strcmp(sp[lm->spec_index].name, lm->weight)) {
            s = ergo_fail(err, ERGO_E_ARG, "%s: the adapter was checked against another model "
                          "(`%s')", a->dir, lm->weight);
            break;
        }
        weight *w = sp[lm->spec_index].slot;
        const tensor *t = &w->t;
        if (!t->data || t->n_dims != 2 || t->shape[0] != lm->out || t->shape[1] != lm->in ||
            !dtype_is_weight(t->dtype)) {
            s = ergo_fail(err, ERGO_E_ARG, "%s: weight `%s' cannot take the adapter (no data or "
                          "another shape)", a->dir, lm->weight);
            break;
        }
        const size_t bytes = (t->nbytes + 63) / 64 * 64;
        void *buf = aligned_alloc(64, bytes ? bytes : 64);
        if (!buf) {
            s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for the merged `%s'", lm->weight);
            break;
        }
        lora_merge_range(a, lm, t->dtype, t->data, 0, t->numel, buf);
        if ((s = checkpoint_adopt(&m->ckpt, buf, err))) break; /* frees buf on failure */
        w->t.data = buf;
        w->k = kweight_of_tensor(&w->t);
    }
    free(sp);
    return s;
}
