/*
 * random_checkpoint.c - write (or fill in memory) a checkpoint from a case description.
 *
 * The Python twin is tools/fixtures_checkpoint.py (numpy, tools/ergo_random.py);
 * the two must produce the same value for every element, which the checkpoint
 * tests prove against the reference's fingerprints. The file layout follows what
 * the reference writes: safetensors via the crate's ordering with
 * {"format": "pt"} metadata, shards as `model-0000K-of-0000N.safetensors` with
 * model.safetensors.index.json (weight_map sorted by name, metadata.total_size).
 */
#include "random_checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"
#include "base/half.h"
#include "base/json.h"
#include "base/rng.h"
#include "io/checkpoint.h"

static const char *scale_keys[SCALE_COUNT] = {
    [SCALE_EMBED] = "embed",
    [SCALE_LM_HEAD] = "lm_head",
    [SCALE_TEXT_MATRIX] = "text_matrix",
    [SCALE_TEXT_BIAS] = "text_bias",
    [SCALE_TEXT_NORM] = "text_norm",
    [SCALE_VISION_MATRIX] = "vision_matrix",
    [SCALE_VISION_BIAS] = "vision_bias",
    [SCALE_VISION_NORM] = "vision_norm",
};

static const char *kind_keys[WEIGHT_KIND_COUNT] = {
    [WEIGHT_EMBED] = "embed", [WEIGHT_LM_HEAD] = "lm_head", [WEIGHT_MATRIX] = "matrix",
    [WEIGHT_BIAS] = "bias",   [WEIGHT_NORM] = "norm",
};

/* ---- the generator's scale rule ---- */

static float spec_scale(const ckpt_case *c, const weight_spec *sp) {
    int vis = sp->part == PART_VISION;
    double s;
    switch (sp->kind) {
    case WEIGHT_EMBED: s = 1.0 * c->scale[SCALE_EMBED]; break;
    case WEIGHT_LM_HEAD: s = c->scale[SCALE_LM_HEAD] * (1.0 / sqrt((double)sp->fan_in)); break;
    case WEIGHT_MATRIX:
        s = c->scale[vis ? SCALE_VISION_MATRIX : SCALE_TEXT_MATRIX] *
            (1.0 / sqrt((double)sp->fan_in));
        break;
    case WEIGHT_BIAS: s = 0.02 * c->scale[vis ? SCALE_VISION_BIAS : SCALE_TEXT_BIAS]; break;
    default: s = 0.1 * c->scale[vis ? SCALE_VISION_NORM : SCALE_TEXT_NORM]; break;
    }
    return (float)s;
}

static inline float gen_value(uint64_t stream, int64_t i, float scale, int is_norm) {
    float u = rng_uniform(stream, (uint64_t)i);
    float v = u * scale;
    return is_norm ? 1.0f + v : v;
}

/* A standard normal from values 2i and 2i + 1 of a stream (Box-Muller, in double:
 * u1 in (0, 1] so the log is finite). */
static inline double gen_normal(uint64_t stream, int64_t i) {
    const double u1 = ((double)(rng_u64(stream, 2 * (uint64_t)i) >> 11) + 1.0) * 0x1p-53;
    const double u2 = (double)(rng_u64(stream, 2 * (uint64_t)i + 1) >> 11) * 0x1p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* _init_weights: normal(0, std) for weights and the embedding (its padding row 0),
 * zero biases, unit norms. */
static inline float init_value(const ckpt_case *c, const weight_spec *sp, uint64_t stream,
                               int64_t i) {
    switch (sp->kind) {
    case WEIGHT_BIAS: return 0.0f;
    case WEIGHT_NORM: return 1.0f;
    case WEIGHT_EMBED:
        if (c->pad_row >= 0 && i / sp->shape[1] == c->pad_row) return 0.0f;
        break;
    default: break;
    }
    return (float)(gen_normal(stream, i) * c->init_std);
}

float random_weight_f32(const ckpt_case *c, const weight_spec *sp, uint64_t stream, int64_t i) {
    if (c->init_reference) return init_value(c, sp, stream, i);
    return gen_value(stream, i, spec_scale(c, sp), sp->kind == WEIGHT_NORM);
}

/* Writes elements [start, start+count) of one parameter, in its dtype, to out. */
static void gen_fill(const ckpt_case *c, const weight_spec *sp, dtype dt, int64_t start,
                     int64_t count, void *out) {
    uint64_t stream = rng_stream_seed(c->seed, sp->name);
    float scale = spec_scale(c, sp);
    int is_norm = sp->kind == WEIGHT_NORM;
    /* values depend only on (seed, name, index): threads cannot change them */
#pragma omp parallel for schedule(static) if (count > (1 << 16))
    for (int64_t k = 0; k < count; k++) {
        float v = c->init_reference ? init_value(c, sp, stream, start + k)
                                    : gen_value(stream, start + k, scale, is_norm);
        if (dt == DTYPE_F32) ((float *)out)[k] = v;
        else if (dt == DTYPE_BF16) ((uint16_t *)out)[k] = f32_to_bf16_one(v);
        else ((uint16_t *)out)[k] = f32_to_f16_one(v);
    }
}

/* ---- case descriptions ---- */

static ergo_status parse_dtype_name(const char *s, dtype *out, const char *what, ergo_error *err) {
    if (!strcmp(s, "bf16") || !strcmp(s, "BF16")) *out = DTYPE_BF16;
    else if (!strcmp(s, "f16") || !strcmp(s, "F16")) *out = DTYPE_F16;
    else if (!strcmp(s, "f32") || !strcmp(s, "F32")) *out = DTYPE_F32;
    else
        return ergo_fail(err, ERGO_E_FORMAT, "%s: dtype \"%s\" is not bf16, f16 or f32", what, s);
    return ERGO_OK;
}

void ckpt_case_free(ckpt_case *c) {
    if (!c) return;
    if (c->config) json_decref(c->config);
    if (c->generation) json_decref(c->generation);
    memset(c, 0, sizeof *c);
}

/* initializer_range and pad_token_id as the reference reads them: the top level of
 * config.json, else its text_config (the nested layout). */
static void init_fields(ckpt_case *c) {
    c->init_std = 0.02;
    c->pad_row = -1;
    const json_t *tc = json_object_get(c->config, "text_config");
    const json_t *r = json_object_get(c->config, "initializer_range");
    if (!json_is_number(r) && json_is_object(tc)) r = json_object_get(tc, "initializer_range");
    if (json_is_number(r) && json_number_value(r) > 0) c->init_std = json_number_value(r);
    const json_t *p = json_object_get(c->config, "pad_token_id");
    if (!json_is_integer(p) && json_is_object(tc)) p = json_object_get(tc, "pad_token_id");
    if (json_is_integer(p) && json_integer_value(p) >= 0 &&
        json_integer_value(p) < c->parsed.text.vocab_size)
        c->pad_row = json_integer_value(p);
}

ergo_status ckpt_case_parse(ckpt_case *c, const json_t *root, const char *what, ergo_error *err) {
    memset(c, 0, sizeof *c);
    ergo_status s;
    if (!json_is_object(root)) return ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", what);
    const json_t *nm = json_object_get(root, "name");
    snprintf(c->name, sizeof c->name, "%s", json_is_string(nm) ? json_string_value(nm) : "case");
    int64_t seed = 0, shards = 1;
    if ((s = json_get_int(root, "seed", &seed, what, err))) return s;
    if (seed < 0) return ergo_fail(err, ERGO_E_FORMAT, "%s: seed is negative", what);
    c->seed = (uint64_t)seed;
    if ((s = json_opt_int(root, "shards", &shards, what, err))) return s;
    if (shards < 1 || shards > 99999)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: shards %lld out of range", what, (long long)shards);
    c->n_shards = (int)shards;
    const char *cl = "flat", *nl = "legacy";
    const json_t *v = json_object_get(root, "config_layout");
    if (v && (s = json_get_string(root, "config_layout", &cl, what, err))) return s;
    v = json_object_get(root, "name_layout");
    if (v && (s = json_get_string(root, "name_layout", &nl, what, err))) return s;
    if (strcmp(cl, "flat") && strcmp(cl, "nested"))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: config_layout \"%s\" is not flat or nested", what,
                         cl);
    if (strcmp(nl, "legacy") && strcmp(nl, "new"))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: name_layout \"%s\" is not legacy or new", what, nl);
    c->config_layout = strcmp(cl, "flat") ? CONFIG_NESTED : CONFIG_FLAT;
    c->name_layout = strcmp(nl, "legacy") ? NAMES_NEW : NAMES_LEGACY;

    for (int k = 0; k < WEIGHT_KIND_COUNT; k++) c->dtypes[k] = DTYPE_BF16;
    const json_t *dt = json_object_get(root, "dtype");
    if (json_is_string(dt)) {
        dtype d;
        if ((s = parse_dtype_name(json_string_value(dt), &d, what, err))) return s;
        for (int k = 0; k < WEIGHT_KIND_COUNT; k++) c->dtypes[k] = d;
    } else if (json_is_object(dt)) {
        const json_t *d0 = json_object_get(dt, "default");
        if (json_is_string(d0)) {
            dtype d;
            if ((s = parse_dtype_name(json_string_value(d0), &d, what, err))) return s;
            for (int k = 0; k < WEIGHT_KIND_COUNT; k++) c->dtypes[k] = d;
        }
        for (int k = 0; k < WEIGHT_KIND_COUNT; k++) {
            const json_t *dk = json_object_get(dt, kind_keys[k]);
            if (dk && (!json_is_string(dk) ||
                       (s = parse_dtype_name(json_string_value(dk), &c->dtypes[k], what, err))))
                return s ? s : ergo_fail(err, ERGO_E_FORMAT, "%s: dtype.%s is not a string", what,
                                         kind_keys[k]);
        }
    } else if (dt) {
        return ergo_fail(err, ERGO_E_FORMAT, "%s: dtype is neither a string nor an object", what);
    }

    for (int k = 0; k < SCALE_COUNT; k++) c->scale[k] = 1.0;
    const json_t *sc = json_object_get(root, "scale");
    if (sc && !json_is_null(sc)) {
        if (!json_is_object(sc))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: scale is not an object", what);
        for (int k = 0; k < SCALE_COUNT; k++)
            if ((s = json_opt_number(sc, scale_keys[k], &c->scale[k], what, err))) return s;
    }

    const json_t *in = json_object_get(root, "init");
    if (in && !json_is_null(in)) {
        const char *iv = json_is_string(in) ? json_string_value(in) : "";
        if (!strcmp(iv, "reference")) c->init_reference = 1;
        else if (strcmp(iv, "uniform"))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: init must be \"uniform\" or \"reference\"",
                             what);
    }

    const json_t *gc = json_object_get(root, "generation_config");
    if (gc && !json_is_null(gc)) {
        if (!json_is_object(gc))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: generation_config is not an object", what);
        c->generation = json_deep_copy(gc);
    }
    const json_t *cfg = json_object_get(root, "config");
    if (!json_is_object(cfg)) {
        ckpt_case_free(c);
        return ergo_fail(err, ERGO_E_FORMAT, "%s: config is missing or not an object", what);
    }
    c->config = json_deep_copy(cfg);
    char cwhat[600];
    snprintf(cwhat, sizeof cwhat, "%s: config", what);
    if ((s = model_config_parse(&c->parsed, c->config, cwhat, err))) {
        ckpt_case_free(c);
        return s;
    }
    if (c->parsed.layout != c->config_layout) {
        ckpt_case_free(c);
        return ergo_fail(err, ERGO_E_FORMAT, "%s: config_layout says %s but config is %s", what, cl,
                         c->parsed.layout == CONFIG_FLAT ? "flat" : "nested");
    }
    init_fields(c);
    return ERGO_OK;
}

ergo_status ckpt_case_load(ckpt_case *c, const char *path, ergo_error *err) {
    memset(c, 0, sizeof *c);
    json_t *root = json_load_path(path, err);
    if (!root) return err ? err->code : ERGO_E_FORMAT;
    ergo_status s = ckpt_case_parse(c, root, path, err);
    json_decref(root);
    return s;
}

/* The 7B config reshaped to Qwen2.5-VL-3B's (its config.json: hidden 2048, 36 layers,
 * 16 heads, 2 kv heads, ffn 11008, vocab 151936, tied embeddings; vision as 7B's
 * with out_hidden 2048). */
static void config_3b(model_config *cfg) {
    model_config_7b(cfg);
    cfg->text.vocab_size = 151936;
    cfg->text.hidden = 2048;
    cfg->text.ffn = 11008;
    cfg->text.n_layers = 36;
    cfg->text.n_heads = 16;
    cfg->text.n_kv_heads = 2;
    cfg->text.head_dim = 128;
    cfg->text.tie_word_embeddings = 1;
    cfg->vision.out_hidden = 2048;
}

static ergo_status case_real(ckpt_case *c, int is_3b, int text_layers, int vision_depth,
                             uint64_t seed, ergo_error *err) {
    memset(c, 0, sizeof *c);
    model_config cfg;
    if (is_3b) config_3b(&cfg);
    else model_config_7b(&cfg);
    if (text_layers < 1 || vision_depth < 1)
        return ergo_fail(err, ERGO_E_ARG, "%s case: layer counts must be positive",
                         is_3b ? "3b" : "7b");
    cfg.text.n_layers = text_layers;
    cfg.vision.depth = vision_depth;
    int n = 0;
    for (int i = 0; i < cfg.vision.n_full_attn; i++)
        if (cfg.vision.full_attn_blocks[i] < vision_depth)
            cfg.vision.full_attn_blocks[n++] = cfg.vision.full_attn_blocks[i];
    if (n == 0) cfg.vision.full_attn_blocks[n++] = 0;
    cfg.vision.n_full_attn = n;
    snprintf(c->name, sizeof c->name, "%s-widths-%dL-%dV", is_3b ? "3b" : "7b", text_layers,
             vision_depth);
    c->seed = seed;
    c->config_layout = CONFIG_FLAT;
    c->name_layout = NAMES_LEGACY;
    c->n_shards = 1;
    for (int k = 0; k < WEIGHT_KIND_COUNT; k++) c->dtypes[k] = DTYPE_BF16;
    for (int k = 0; k < SCALE_COUNT; k++) c->scale[k] = 1.0;
    c->config = model_config_to_json(&cfg, CONFIG_FLAT, 0);
    json_object_set_new(c->config, "torch_dtype", json_string("bfloat16"));
    /* Qwen2.5-VL-7B-Instruct's generation_config.json */
    c->generation = json_pack("{s:i, s:i, s:b, s:[i,i], s:f, s:f, s:f, s:i}", "bos_token_id",
                              151643, "pad_token_id", 151643, "do_sample", 1, "eos_token_id",
                              151645, 151643, "repetition_penalty", 1.05, "temperature", 0.1,
                              "top_p", 0.001, "top_k", 1);
    ergo_status s = model_config_parse(&c->parsed, c->config, c->name, err);
    if (s) ckpt_case_free(c);
    return s;
}

ergo_status ckpt_case_7b(ckpt_case *c, int text_layers, int vision_depth, uint64_t seed,
                         ergo_error *err) {
    return case_real(c, 0, text_layers, vision_depth, seed, err);
}

ergo_status ckpt_case_3b(ckpt_case *c, int text_layers, int vision_depth, uint64_t seed,
                         ergo_error *err) {
    return case_real(c, 1, text_layers, vision_depth, seed, err);
}

void ckpt_case_set_reference_init(ckpt_case *c) {
    c->init_reference = 1;
    init_fields(c);
}

ergo_status ckpt_case_tiny(ckpt_case *c, char variant, uint64_t seed, ergo_error *err) {
    memset(c, 0, sizeof *c);
    if (variant != 'a' && variant != 'b')
        return ergo_fail(err, ERGO_E_ARG, "tiny model variant '%c': a or b", variant);
    const int b = variant == 'b';
    model_config cfg;
    model_config_7b(&cfg);
    text_config *t = &cfg.text;
    t->hidden = b ? 384 : 256;
    t->n_layers = b ? 6 : 4;
    t->n_heads = b ? 6 : 4;
    t->n_kv_heads = 2;
    t->head_dim = 64;
    t->ffn = b ? 1152 : 768;
    t->mrope_section[0] = 8, t->mrope_section[1] = 12, t->mrope_section[2] = 12;
    t->tie_word_embeddings = 1;
    vision_config *v = &cfg.vision;
    v->hidden = b ? 192 : 128;
    v->depth = b ? 6 : 4;
    v->n_heads = b ? 3 : 2;
    v->head_dim = 64;
    v->ffn = b ? 512 : 256;
    v->out_hidden = t->hidden;
    v->n_full_attn = 2;
    v->full_attn_blocks[0] = b ? 2 : 1;
    v->full_attn_blocks[1] = b ? 5 : 3;
    snprintf(c->name, sizeof c->name, "tiny-%c", variant);
    c->seed = seed;
    c->config_layout = CONFIG_FLAT;
    c->name_layout = NAMES_LEGACY;
    c->n_shards = 1;
    c->init_reference = 1;
    for (int k = 0; k < WEIGHT_KIND_COUNT; k++) c->dtypes[k] = DTYPE_F32;
    for (int k = 0; k < SCALE_COUNT; k++) c->scale[k] = 1.0;
    c->config = model_config_to_json(&cfg, CONFIG_FLAT, 0);
    json_object_set_new(c->config, "torch_dtype", json_string("float32"));
    c->generation = json_pack("{s:i, s:i, s:[i,i]}", "bos_token_id", 151643, "pad_token_id",
                              151643, "eos_token_id", 151645, 151643);
    ergo_status s = model_config_parse(&c->parsed, c->config, c->name, err);
    if (s) {
        ckpt_case_free(c);
        return s;
    }
    init_fields(c);
    return ERGO_OK;
}

/* ---- writing ---- */

typedef struct write_ctx {
    const ckpt_case *c;
    const weight_spec *specs;
    const int *spec_of; /* entry index -> spec index */
} write_ctx;

static ergo_status write_fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                              ergo_error *err) {
    const write_ctx *w = ctx;
    const weight_spec *sp = &w->specs[w->spec_of[index]];
    gen_fill(w->c, sp, w->c->dtypes[sp->kind], start, count, out);
    (void)err;
    return ERGO_OK;
}

static ergo_status ensure_dir(const char *dir, ergo_error *err) {
    if (dir_exists(dir)) return ERGO_OK;
    if (mkdir(dir, 0755) != 0)
        return ergo_fail(err, ERGO_E_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    return ERGO_OK;
}

static ergo_status write_json(const char *dir, const char *name, const json_t *j,
                              ergo_error *err) {
    char path[1024];
    ergo_status s = path_join(path, sizeof path, dir, name, err);
    if (s) return s;
    if (json_dump_file(j, path, JSON_INDENT(2)) != 0)
        return ergo_fail(err, ERGO_E_IO, "%s: cannot write", path);
    return ERGO_OK;
}

static ergo_status copy_file(const char *from_dir, const char *to_dir, const char *name,
                             ergo_error *err) {
    char from[1024], to[1024];
    ergo_status s;
    if ((s = path_join(from, sizeof from, from_dir, name, err))) return s;
    if ((s = path_join(to, sizeof to, to_dir, name, err))) return s;
    if (!file_exists(from)) return ERGO_OK;
    char *buf;
    size_t n;
    if ((s = file_read_all(from, (size_t)1 << 28, &buf, &n, err))) return s;
    s = file_write_all(to, buf, n, err);
    free(buf);
    return s;
}

ergo_status random_checkpoint_write(const ckpt_case *c, const char *dir,
                                    const char *tokenizer_dir, ergo_error *err) {
    ergo_status s;
    if ((s = ensure_dir(dir, err))) return s;
    if ((s = write_json(dir, "config.json", c->config, err))) return s;
    if (c->generation && (s = write_json(dir, "generation_config.json", c->generation, err)))
        return s;
    if (tokenizer_dir) {
        static const char *files[] = {"tokenizer.json", "tokenizer_config.json",
                                      "chat_template.json", "preprocessor_config.json",
                                      "vocab.json", "merges.txt"};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
            if ((s = copy_file(tokenizer_dir, dir, files[i], err))) return s;
    }

    int n = weights_spec(&c->parsed, NULL, NULL);
    weight_spec *specs = malloc(sizeof *specs * (size_t)n);
    st_write_entry *entries = malloc(sizeof *entries * (size_t)n);
    int *spec_of = malloc(sizeof *spec_of * (size_t)n);
    int *shard_of = malloc(sizeof *shard_of * (size_t)n);
    char(*names)[160] = malloc(sizeof *names * (size_t)n);
    json_t *weight_map = NULL;
    if (!specs || !entries || !spec_of || !shard_of || !names) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    weights_spec(&c->parsed, specs, NULL);
    if (c->n_shards > n) {
        s = ergo_fail(err, ERGO_E_ARG, "%s: %d shards for %d tensors", c->name, c->n_shards, n);
        goto done;
    }
    /* Shards the way a size-capped saver does: in parameter order, start a new
     * shard when the next tensor would push the current one past total/N. */
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += (uint64_t)specs[i].numel * (uint64_t)(dtype_bits(c->dtypes[specs[i].kind]) / 8);
    uint64_t cap = (total + (uint64_t)c->n_shards - 1) / (uint64_t)c->n_shards, cur = 0;
    int shard = 0, in_shard = 0;
    for (int i = 0; i < n; i++) {
        uint64_t b = (uint64_t)specs[i].numel * (uint64_t)(dtype_bits(c->dtypes[specs[i].kind]) / 8);
        if (in_shard > 0 && cur + b > cap && shard + 1 < c->n_shards) {
            shard++;
            cur = 0;
            in_shard = 0;
        }
        shard_of[i] = shard;
        cur += b;
        in_shard++;
        weights_layout_name(names[i], sizeof names[i], specs[i].name, c->name_layout);
    }
    if (shard + 1 != c->n_shards) {
        s = ergo_fail(err, ERGO_E_ARG, "%s: the tensors do not split into %d shards", c->name,
                      c->n_shards);
        goto done;
    }

    static const st_metadata_entry meta[1] = {{"format", "pt"}};
    weight_map = json_object();
    for (int k = 0; k < c->n_shards; k++) {
        char fname[128], path[1024];
        if (c->n_shards == 1) snprintf(fname, sizeof fname, "model.safetensors");
        else snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", k + 1, c->n_shards);
        if ((s = path_join(path, sizeof path, dir, fname, err))) goto done;
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (shard_of[i] != k) continue;
            entries[m].name = names[i];
            entries[m].dtype = c->dtypes[specs[i].kind];
            entries[m].n_dims = specs[i].n_dims;
            memcpy(entries[m].shape, specs[i].shape, sizeof specs[i].shape);
            spec_of[m] = i;
            json_object_set_new(weight_map, names[i], json_string(fname));
            m++;
        }
        write_ctx ctx = {c, specs, spec_of};
        if ((s = safetensors_write(path, entries, m, meta, 1, write_fill, &ctx, err))) goto done;
    }
    if (c->n_shards > 1) {
        /* transformers writes the weight_map sorted by name */
        json_t *sorted = json_object();
        const char **keys = malloc(sizeof *keys * (size_t)n);
        if (!keys) {
            json_decref(sorted);
            s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        for (int i = 0; i < n; i++) keys[i] = names[i];
        for (int i = 1; i < n; i++) /* insertion sort: a few thousand names at most */
            for (int j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
                const char *t = keys[j];
                keys[j] = keys[j - 1];
                keys[j - 1] = t;
            }
        for (int i = 0; i < n; i++)
            json_object_set(sorted, keys[i], json_object_get(weight_map, keys[i]));
        free(keys);
        json_t *index = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                                  "weight_map", sorted);
        s = write_json(dir, "model.safetensors.index.json", index, err);
        json_decref(index);
        if (s) goto done;
    }
done:
    if (weight_map) json_decref(weight_map);
    free(specs);
    free(entries);
    free(spec_of);
    free(shard_of);
    free(names);
    return s;
}

/* ---- in memory ---- */

ergo_status random_checkpoint_fill(model *m, const ckpt_case *c, ergo_error *err) {
    memset(m, 0, sizeof *m);
    ergo_status s;
    checkpoint *ck = &m->ckpt;
    char label[160];
    snprintf(label, sizeof label, "memory:%s", c->name);
    ck->dir = strdup(label);
    ck->config = json_deep_copy(c->config);
    if (c->generation) ck->generation = json_deep_copy(c->generation);
    snprintf(ck->config_path, sizeof ck->config_path, "%s/config.json", label);
    snprintf(ck->generation_path, sizeof ck->generation_path, "%s/generation_config.json", label);
    m->config = c->parsed;
    if ((s = generation_config_parse(&m->generation, c->generation, c->config,
                                     ck->generation_path, err)))
        goto fail;

    int n = weights_spec(&c->parsed, NULL, NULL);
    weight_spec *specs = malloc(sizeof *specs * (size_t)n);
    char(*names)[160] = malloc(sizeof *names * (size_t)n);
    ck->tensors = calloc((size_t)n, sizeof *ck->tensors);
    if (!specs || !names || !ck->tensors) {
        free(specs);
        free(names);
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", label);
        goto fail;
    }
    if ((s = checkpoint_adopt(ck, names, err))) {
        free(specs);
        goto fail;
    }
    weights_spec(&c->parsed, specs, NULL);
    /* one block, every tensor 64-byte aligned for the kernels */
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t b = (size_t)specs[i].numel * (size_t)(dtype_bits(c->dtypes[specs[i].kind]) / 8);
        total += (b + 63) / 64 * 64;
    }
    uint8_t *block = aligned_alloc(64, total ? total : 64);
    if (!block) {
        free(specs);
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: cannot allocate %zu bytes of weights", label, total);
        goto fail;
    }
    if ((s = checkpoint_adopt(ck, block, err))) {
        free(specs);
        goto fail;
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const weight_spec *sp = &specs[i];
        tensor *t = &ck->tensors[i];
        dtype dt = c->dtypes[sp->kind];
        weights_layout_name(names[i], sizeof names[i], sp->name, c->name_layout);
        t->name = names[i];
        t->dtype = dt;
        t->n_dims = sp->n_dims;
        memcpy(t->shape, sp->shape, sizeof sp->shape);
        t->numel = sp->numel;
        t->nbytes = (size_t)sp->numel * (size_t)(dtype_bits(dt) / 8);
        t->data = t->nbytes ? block + off : NULL;
        t->offset = off;
        gen_fill(c, sp, dt, 0, sp->numel, block + off);
        off += (t->nbytes + 63) / 64 * 64;
    }
    ck->n_tensors = n;
    free(specs);
    if ((s = checkpoint_build_index(ck, label, err))) goto fail;
    if ((s = weights_alloc(&m->weights, &m->config, err))) goto fail;
    if ((s = weights_bind(&m->weights, &m->config, ck, &m->names, err))) goto fail;
    return ERGO_OK;
fail:
    model_free(m);
    return s;
}
