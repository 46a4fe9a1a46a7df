/*
 * config.c - config.json and generation_config.json of a Qwen2.5-VL checkpoint.
 *
 * Mirrors Qwen2_5_VLConfig.__init__ (transformers 4.56.2): a `text_config`
 * object wins; without one, the text fields are read from the top level (the
 * flat layout of the published checkpoints). Absent keys take the reference's
 * class defaults (some of which are not the 7B values: hidden_size 8192,
 * rms_norm_eps 1e-5, vision hidden_size 3584), so a config that relies on them
 * means what it means to the reference.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/json.h"

/* Dimensions above this are refused: they would overflow int arithmetic long before
 * they fit in memory (the 7B's largest is vocab 152064). */
#define DIM_LIMIT (1 << 24)

static ergo_status get_dim(const json_t *obj, const char *key, int *out, int deflt,
                           const char *what, ergo_error *err) {
    int64_t v = deflt;
    ergo_status s = json_opt_int(obj, key, &v, what, err);
    if (s) return s;
    if (v <= 0 || v > DIM_LIMIT)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is %lld; want an integer in [1, %d]", what,
                         key, (long long)v, DIM_LIMIT);
    *out = (int)v;
    return ERGO_OK;
}

static ergo_status get_token_id(const json_t *obj, const char *key, int *out, int deflt,
                                const char *what, ergo_error *err) {
    int64_t v = deflt;
    ergo_status s = json_opt_int(obj, key, &v, what, err);
    if (s) return s;
    if (v < -1 || v > INT32_MAX)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is %lld, not a token id", what, key,
                         (long long)v);
    *out = (int)v;
    return ERGO_OK;
}

/* hidden_act must be what ergo implements (both towers of Qwen2.5-VL use silu). */
static ergo_status check_act(const json_t *obj, const char *what, const char *part,
                             ergo_error *err) {
    const json_t *v = json_object_get(obj, "hidden_act");
    if (!v || json_is_null(v)) return ERGO_OK; /* default "silu" */
    if (!json_is_string(v) || strcmp(json_string_value(v), "silu") != 0)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: %shidden_act is %s; ergo implements only \"silu\"", what, part,
                         json_is_string(v) ? json_string_value(v) : "not a string");
    return ERGO_OK;
}

/* rope_scaling: {"type": "mrope", "mrope_section": [...]} (published) or
 * {"rope_type": "default", "mrope_section": [...]} (saved by newer transformers).
 * The reference renames type "mrope" to "default" and lets `type` override
 * `rope_type`; any other rope type scales frequencies, which ergo does not do. */
static ergo_status parse_rope_scaling(text_config *t, const json_t *obj, const char *what,
                                      ergo_error *err) {
    const json_t *rs = json_object_get(obj, "rope_scaling");
    if (!rs || json_is_null(rs))
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: rope_scaling is missing; Qwen2.5-VL needs rope_scaling.mrope_section",
                         what);
    if (!json_is_object(rs))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: rope_scaling is not an object", what);
    const json_t *ty = json_object_get(rs, "type");
    if (!ty || json_is_null(ty)) ty = json_object_get(rs, "rope_type");
    if (ty && !json_is_null(ty)) {
        if (!json_is_string(ty))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: rope_scaling type is not a string", what);
        const char *name = json_string_value(ty);
        if (strcmp(name, "mrope") != 0 && strcmp(name, "default") != 0)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "%s: rope_scaling type \"%s\" is not supported (want \"mrope\" or "
                             "\"default\")",
                             what, name);
    }
    const json_t *ms = json_object_get(rs, "mrope_section");
    if (!ms || !json_is_array(ms) || json_array_size(ms) != 3)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: rope_scaling.mrope_section must be a list of 3 integers", what);
    for (int i = 0; i < 3; i++) {
        const json_t *e = json_array_get(ms, (size_t)i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 ||
            json_integer_value(e) > DIM_LIMIT)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: rope_scaling.mrope_section[%d] is not a non-negative integer",
                             what, i);
        t->mrope_section[i] = (int)json_integer_value(e);
    }
    return ERGO_OK;
}

static ergo_status parse_text(text_config *t, const json_t *obj, const char *what,
                              const char *part, ergo_error *err) {
    ergo_status s;
    char key_what[512];
    /* messages name the sub-object: "config.json: text_config: ..." */
    snprintf(key_what, sizeof key_what, "%s%s%s", what, *part ? ": " : "", part);
    /* Qwen2_5_VLTextConfig defaults */
    if ((s = get_dim(obj, "vocab_size", &t->vocab_size, 152064, key_what, err))) return s;
    if ((s = get_dim(obj, "hidden_size", &t->hidden, 8192, key_what, err))) return s;
    if ((s = get_dim(obj, "intermediate_size", &t->ffn, 29568, key_what, err))) return s;
    if ((s = get_dim(obj, "num_hidden_layers", &t->n_layers, 80, key_what, err))) return s;
    if ((s = get_dim(obj, "num_attention_heads", &t->n_heads, 64, key_what, err))) return s;
    /* num_key_value_heads None means "as many as the query heads" */
    const json_t *kv = json_object_get(obj, "num_key_value_heads");
    int kv_default = (kv && json_is_null(kv)) ? t->n_heads : 8;
    if ((s = get_dim(obj, "num_key_value_heads", &t->n_kv_heads, kv_default, key_what, err)))
        return s;
    if ((s = get_dim(obj, "max_position_embeddings", &t->max_position_embeddings, 32768,
                     key_what, err)))
        return s;
    t->rms_eps = 1e-5;
    if ((s = json_opt_number(obj, "rms_norm_eps", &t->rms_eps, key_what, err))) return s;
    t->rope_theta = 1000000.0;
    if ((s = json_opt_number(obj, "rope_theta", &t->rope_theta, key_what, err))) return s;
    t->tie_word_embeddings = 0;
    if ((s = json_opt_bool(obj, "tie_word_embeddings", &t->tie_word_embeddings, key_what, err)))
        return s;
    if ((s = check_act(obj, key_what, "", err))) return s;
    if ((s = parse_rope_scaling(t, obj, key_what, err))) return s;

    /* Sliding-window attention is off in every Qwen2.5-VL config; ergo does not do it. */
    int sliding = 0;
    if ((s = json_opt_bool(obj, "use_sliding_window", &sliding, key_what, err))) return s;
    if (sliding)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: use_sliding_window is true; ergo implements full attention only",
                         key_what);
    const json_t *lt = json_object_get(obj, "layer_types");
    if (lt && !json_is_null(lt)) {
        if (!json_is_array(lt))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: layer_types is not a list", key_what);
        for (size_t i = 0; i < json_array_size(lt); i++) {
            const json_t *e = json_array_get(lt, i);
            if (!json_is_string(e) || strcmp(json_string_value(e), "full_attention") != 0)
                return ergo_fail(err, ERGO_E_UNSUPPORTED,
                                 "%s: layer_types[%zu] is not \"full_attention\"; ergo "
                                 "implements full attention only",
                                 key_what, i);
        }
    }
    t->head_dim = t->hidden / t->n_heads;
    return ERGO_OK;
}

static ergo_status parse_vision(vision_config *v, const json_t *obj, const char *what,
                                ergo_error *err) {
    ergo_status s;
    char w[512];
    snprintf(w, sizeof w, "%s: vision_config", what);
    if (!json_is_object(obj)) return ergo_fail(err, ERGO_E_FORMAT, "%s is not an object", w);
    /* Qwen2_5_VLVisionConfig defaults */
    if ((s = get_dim(obj, "depth", &v->depth, 32, w, err))) return s;
    if ((s = get_dim(obj, "hidden_size", &v->hidden, 3584, w, err))) return s;
    if ((s = get_dim(obj, "num_heads", &v->n_heads, 16, w, err))) return s;
    if ((s = get_dim(obj, "intermediate_size", &v->ffn, 3420, w, err))) return s;
    if ((s = get_dim(obj, "in_channels", &v->in_channels, 3, w, err))) return s;
    if ((s = get_dim(obj, "patch_size", &v->patch, 14, w, err))) return s;
    if ((s = get_dim(obj, "temporal_patch_size", &v->temporal_patch, 2, w, err))) return s;
    if ((s = get_dim(obj, "spatial_merge_size", &v->merge, 2, w, err))) return s;
    if ((s = get_dim(obj, "window_size", &v->window, 112, w, err))) return s;
    if ((s = get_dim(obj, "out_hidden_size", &v->out_hidden, 3584, w, err))) return s;
    if ((s = get_dim(obj, "tokens_per_second", &v->tokens_per_second, 4, w, err))) return s;
    if ((s = check_act(obj, what, "vision_config.", err))) return s;
    v->rms_eps = 1e-6;
    v->head_dim = v->hidden / v->n_heads;
    const json_t *fa = json_object_get(obj, "fullatt_block_indexes");
    if (!fa || json_is_null(fa)) {
        static const int deflt[4] = {7, 15, 23, 31};
        v->n_full_attn = 4;
        memcpy(v->full_attn_blocks, deflt, sizeof deflt);
        return ERGO_OK;
    }
    if (!json_is_array(fa))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: fullatt_block_indexes is not a list", w);
    if (json_array_size(fa) > VISION_MAX_FULL_ATTN)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "%s: fullatt_block_indexes has %zu entries, over ergo's limit of %d", w,
                         json_array_size(fa), VISION_MAX_FULL_ATTN);
    v->n_full_attn = 0;
    for (size_t i = 0; i < json_array_size(fa); i++) {
        const json_t *e = json_array_get(fa, i);
        /* an index written as a string would silently never match in Python */
        if (!json_is_integer(e))
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: fullatt_block_indexes[%zu] is not an integer", w, i);
        json_int_t x = json_integer_value(e);
        if (x < 0 || x >= v->depth)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: fullatt_block_indexes[%zu] = %lld is outside the %d blocks "
                             "(depth)",
                             w, i, (long long)x, v->depth);
        v->full_attn_blocks[v->n_full_attn++] = (int)x;
    }
    return ERGO_OK;
}

ergo_status model_config_validate(const model_config *cfg, const char *what, ergo_error *err) {
    const text_config *t = &cfg->text;
    const vision_config *v = &cfg->vision;
    const char *tp = cfg->layout == CONFIG_NESTED ? "text_config." : ""; /* where the keys live */
    if (t->hidden % t->n_heads != 0)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: %snum_attention_heads %d does not divide hidden_size %d", what,
                         tp, t->n_heads, t->hidden);
    if (t->n_heads % t->n_kv_heads != 0)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: %snum_key_value_heads %d does not divide num_attention_heads %d", what,
                         tp, t->n_kv_heads, t->n_heads);
    if (t->head_dim % 2 != 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: text head dim %d is odd (rotary needs pairs)",
                         what, t->head_dim);
    int msum = t->mrope_section[0] + t->mrope_section[1] + t->mrope_section[2];
    if (msum != t->head_dim / 2)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: %srope_scaling.mrope_section [%d, %d, %d] sums to %d; want "
                         "head_dim/2 = %d",
                         what, tp, t->mrope_section[0], t->mrope_section[1], t->mrope_section[2], msum,
                         t->head_dim / 2);
    if (!(t->rms_eps > 0) || !isfinite(t->rms_eps))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: %srms_norm_eps %g is not positive", what,
                         tp, t->rms_eps);
    if (!(t->rope_theta > 0) || !isfinite(t->rope_theta))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: %srope_theta %g is not positive", what,
                         tp, t->rope_theta);
    if (v->hidden % v->n_heads != 0)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: vision_config.num_heads %d does not divide vision hidden_size %d",
                         what, v->n_heads, v->hidden);
    /* 2-D rotary: head_dim/2 rotated dims split evenly between row and column */
    if (v->head_dim % 4 != 0)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: vision head dim %d is not a multiple of 4 (2-D rotary)", what,
                         v->head_dim);
    if (v->in_channels != 3)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: vision_config.in_channels is %d; ergo feeds RGB (3)", what,
                         v->in_channels);
    if (v->window % (v->patch * v->merge) != 0)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: vision_config.window_size %d is not a multiple of patch_size * "
                         "spatial_merge_size = %d",
                         what, v->window, v->patch * v->merge);
    if (v->out_hidden != t->hidden)
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: vision_config.out_hidden_size %d differs from the text hidden_size "
                         "%d (image tokens replace text embeddings)",
                         what, v->out_hidden, t->hidden);
    for (int i = 0; i < v->n_full_attn; i++) {
        int b = v->full_attn_blocks[i];
        if (b < 0 || b >= v->depth)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: vision_config.fullatt_block_indexes[%d] = %d is outside the %d "
                             "blocks (depth)",
                             what, i, b, v->depth);
        for (int j = 0; j < i; j++)
            if (v->full_attn_blocks[j] == b)
                return ergo_fail(err, ERGO_E_FORMAT,
                                 "%s: vision_config.fullatt_block_indexes lists block %d twice",
                                 what, b);
    }
    return ERGO_OK;
}

ergo_status model_config_parse(model_config *cfg, const json_t *root, const char *path,
                               ergo_error *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(root))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", path);
    const json_t *mt = json_object_get(root, "model_type");
    if (!mt || !json_is_string(mt))
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: model_type is missing; want \"qwen2_5_vl\" (Qwen2.5-VL)", path);
    if (strcmp(json_string_value(mt), "qwen2_5_vl") != 0)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "%s: model_type is \"%s\"; ergo loads only \"qwen2_5_vl\" (Qwen2.5-VL)",
                         path, json_string_value(mt));
    ergo_status s;
    const json_t *tc = json_object_get(root, "text_config");
    if (tc && !json_is_null(tc)) {
        if (!json_is_object(tc))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: text_config is not an object", path);
        const json_t *tmt = json_object_get(tc, "model_type");
        if (tmt && json_is_string(tmt) && strncmp(json_string_value(tmt), "qwen2_5_vl", 10) != 0)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "%s: text_config.model_type is \"%s\"; want \"qwen2_5_vl_text\"",
                             path, json_string_value(tmt));
        cfg->layout = CONFIG_NESTED;
        if ((s = parse_text(&cfg->text, tc, path, "text_config", err))) return s;
    } else {
        cfg->layout = CONFIG_FLAT;
        if ((s = parse_text(&cfg->text, root, path, "", err))) return s;
    }
    const json_t *vc = json_object_get(root, "vision_config");
    if (vc && json_is_object(vc)) {
        const json_t *vmt = json_object_get(vc, "model_type");
        if (vmt && json_is_string(vmt) && strncmp(json_string_value(vmt), "qwen2_5_vl", 10) != 0)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "%s: vision_config.model_type is \"%s\"; want \"qwen2_5_vl\"", path,
                             json_string_value(vmt));
    }
    if (vc && !json_is_null(vc)) {
        if ((s = parse_vision(&cfg->vision, vc, path, err))) return s;
    } else {
        json_t *empty = json_object(); /* no vision_config: all the reference's defaults */
        s = parse_vision(&cfg->vision, empty, path, err);
        json_decref(empty);
        if (s) return s;
    }
    if ((s = get_token_id(root, "image_token_id", &cfg->image_token_id, 151655, path, err)))
        return s;
    if ((s = get_token_id(root, "video_token_id", &cfg->video_token_id, 151656, path, err)))
        return s;
    if ((s = get_token_id(root, "vision_start_token_id", &cfg->vision_start_token_id, -1, path,
                          err)))
        return s;
    if ((s = get_token_id(root, "vision_end_token_id", &cfg->vision_end_token_id, -1, path, err)))
        return s;
    return model_config_validate(cfg, path, err);
}

int vision_layer_is_full_attention(const vision_config *v, int l) {
    for (int i = 0; i < v->n_full_attn; i++)
        if (v->full_attn_blocks[i] == l) return 1;
    return 0;
}

void model_config_7b(model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->layout = CONFIG_FLAT;
    text_config *t = &cfg->text;
    t->vocab_size = 152064;
    t->hidden = 3584;
    t->ffn = 18944;
    t->n_layers = 28;
    t->n_heads = 28;
    t->n_kv_heads = 4;
    t->head_dim = 128;
    t->rms_eps = 1e-6;
    t->rope_theta = 1000000.0;
    t->mrope_section[0] = 16;
    t->mrope_section[1] = 24;
    t->mrope_section[2] = 24;
    t->max_position_embeddings = 128000;
    t->tie_word_embeddings = 0;
    vision_config *v = &cfg->vision;
    v->depth = 32;
    v->hidden = 1280;
    v->n_heads = 16;
    v->head_dim = 80;
    v->ffn = 3420;
    v->in_channels = 3;
    v->patch = 14;
    v->temporal_patch = 2;
    v->merge = 2;
    v->window = 112;
    v->out_hidden = 3584;
    v->tokens_per_second = 2;
    v->rms_eps = 1e-6;
    v->n_full_attn = 4;
    for (int i = 0; i < 4; i++) v->full_attn_blocks[i] = 7 + 8 * i;
    cfg->image_token_id = 151655;
    cfg->video_token_id = 151656;
    cfg->vision_start_token_id = 151652;
    cfg->vision_end_token_id = 151653;
}

/* ---- writing config.json ---- */

static json_t *mrope_json(const text_config *t, int rope_type_default) {
    json_t *rs = json_object();
    if (rope_type_default) json_object_set_new(rs, "rope_type", json_string("default"));
    else json_object_set_new(rs, "type", json_string("mrope"));
    json_t *ms = json_array();
    for (int i = 0; i < 3; i++) json_array_append_new(ms, json_integer(t->mrope_section[i]));
    json_object_set_new(rs, "mrope_section", ms);
    return rs;
}

static void set_text_fields(json_t *o, const text_config *t, int rope_type_default) {
    json_object_set_new(o, "attention_dropout", json_real(0.0));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "hidden_size", json_integer(t->hidden));
    json_object_set_new(o, "initializer_range", json_real(0.02));
    json_object_set_new(o, "intermediate_size", json_integer(t->ffn));
    json_object_set_new(o, "max_position_embeddings", json_integer(t->max_position_embeddings));
    json_object_set_new(o, "max_window_layers", json_integer(t->n_layers));
    json_object_set_new(o, "num_attention_heads", json_integer(t->n_heads));
    json_object_set_new(o, "num_hidden_layers", json_integer(t->n_layers));
    json_object_set_new(o, "num_key_value_heads", json_integer(t->n_kv_heads));
    json_object_set_new(o, "rms_norm_eps", json_real(t->rms_eps));
    json_object_set_new(o, "rope_scaling", mrope_json(t, rope_type_default));
    json_object_set_new(o, "rope_theta", json_real(t->rope_theta));
    json_object_set_new(o, "sliding_window", json_integer(32768));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(t->tie_word_embeddings));
    json_object_set_new(o, "use_cache", json_true());
    json_object_set_new(o, "use_sliding_window", json_false());
    json_object_set_new(o, "vocab_size", json_integer(t->vocab_size));
}

static json_t *vision_json(const vision_config *v) {
    json_t *o = json_object();
    json_object_set_new(o, "depth", json_integer(v->depth));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "hidden_size", json_integer(v->hidden));
    json_object_set_new(o, "intermediate_size", json_integer(v->ffn));
    json_object_set_new(o, "num_heads", json_integer(v->n_heads));
    json_object_set_new(o, "in_chans", json_integer(v->in_channels));
    json_object_set_new(o, "out_hidden_size", json_integer(v->out_hidden));
    json_object_set_new(o, "patch_size", json_integer(v->patch));
    json_object_set_new(o, "spatial_merge_size", json_integer(v->merge));
    json_object_set_new(o, "spatial_patch_size", json_integer(v->patch));
    json_object_set_new(o, "window_size", json_integer(v->window));
    json_t *fa = json_array();
    for (int i = 0; i < v->n_full_attn; i++)
        json_array_append_new(fa, json_integer(v->full_attn_blocks[i]));
    json_object_set_new(o, "fullatt_block_indexes", fa);
    json_object_set_new(o, "tokens_per_second", json_integer(v->tokens_per_second));
    json_object_set_new(o, "temporal_patch_size", json_integer(v->temporal_patch));
    return o;
}

static void set_token_ids(json_t *o, const model_config *cfg) {
    json_object_set_new(o, "bos_token_id", json_integer(151643));
    json_object_set_new(o, "eos_token_id", json_integer(151645));
    if (cfg->vision_start_token_id >= 0)
        json_object_set_new(o, "vision_start_token_id", json_integer(cfg->vision_start_token_id));
    if (cfg->vision_end_token_id >= 0)
        json_object_set_new(o, "vision_end_token_id", json_integer(cfg->vision_end_token_id));
    json_object_set_new(o, "image_token_id", json_integer(cfg->image_token_id));
    json_object_set_new(o, "video_token_id", json_integer(cfg->video_token_id));
}

json_t *model_config_to_json(const model_config *cfg, config_layout layout, int rope_type_default) {
    json_t *o = json_object();
    json_t *arch = json_array();
    json_array_append_new(arch, json_string("Qwen2_5_VLForConditionalGeneration"));
    json_object_set_new(o, "architectures", arch);
    json_object_set_new(o, "model_type", json_string("qwen2_5_vl"));
    set_token_ids(o, cfg);
    if (layout == CONFIG_FLAT) {
        /* as Qwen2.5-VL-7B-Instruct's config.json: text fields at the top level */
        set_text_fields(o, &cfg->text, rope_type_default);
        json_object_set_new(o, "vision_config", vision_json(&cfg->vision));
    } else {
        /* as transformers 4.56 saves it: text_config + vision_config */
        json_t *tc = json_object();
        set_text_fields(tc, &cfg->text, rope_type_default);
        json_object_set_new(tc, "model_type", json_string("qwen2_5_vl_text"));
        json_t *lt = json_array();
        for (int i = 0; i < cfg->text.n_layers; i++)
            json_array_append_new(lt, json_string("full_attention"));
        json_object_set_new(tc, "layer_types", lt);
        json_object_set_new(o, "text_config", tc);
        json_t *vc = vision_json(&cfg->vision);
        json_object_set_new(vc, "model_type", json_string("qwen2_5_vl"));
        json_object_del(vc, "in_chans");
        json_object_del(vc, "spatial_patch_size");
        json_object_set_new(vc, "in_channels", json_integer(cfg->vision.in_channels));
        json_object_set_new(o, "vision_config", vc);
    }
    return o;
}

/* ---- generation_config.json ---- */

static ergo_status gen_int(const json_t *o, const char *key, int *out, const char *what,
                           ergo_error *err) {
    int64_t v = *out;
    ergo_status s = json_opt_int(o, key, &v, what, err);
    if (s) return s;
    if (v < -1 || v > INT32_MAX)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is %lld, out of range", what, key,
                         (long long)v);
    *out = (int)v;
    return ERGO_OK;
}

static ergo_status gen_eos(generation_config *g, const json_t *o, const char *what,
                           ergo_error *err) {
    const json_t *e = json_object_get(o, "eos_token_id");
    if (!e || json_is_null(e)) return ERGO_OK;
    if (json_is_integer(e)) {
        int64_t v = json_integer_value(e);
        if (v < 0 || v > INT32_MAX)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: eos_token_id %lld is not a token id", what,
                             (long long)v);
        g->n_eos = 1;
        g->eos_token_ids[0] = (int)v;
        return ERGO_OK;
    }
    if (!json_is_array(e))
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: eos_token_id is neither an integer nor a list of integers", what);
    if (json_array_size(e) > GEN_MAX_EOS)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: eos_token_id lists %zu ids, over the limit of %d",
                         what, json_array_size(e), GEN_MAX_EOS);
    g->n_eos = 0;
    for (size_t i = 0; i < json_array_size(e); i++) {
        const json_t *x = json_array_get(e, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            json_integer_value(x) > INT32_MAX)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: eos_token_id[%zu] is not a token id", what,
                             i);
        g->eos_token_ids[g->n_eos++] = (int)json_integer_value(x);
    }
    return ERGO_OK;
}

/* Reads the fields we use from one object; absent keys leave g unchanged. */
static ergo_status gen_fields(generation_config *g, const json_t *o, const char *what,
                              ergo_error *err) {
    ergo_status s;
    if ((s = json_opt_bool(o, "do_sample", &g->do_sample, what, err))) return s;
    if ((s = json_opt_number(o, "temperature", &g->temperature, what, err))) return s;
    if ((s = gen_int(o, "top_k", &g->top_k, what, err))) return s;
    if ((s = json_opt_number(o, "top_p", &g->top_p, what, err))) return s;
    if ((s = json_opt_number(o, "min_p", &g->min_p, what, err))) return s;
    if ((s = json_opt_number(o, "repetition_penalty", &g->repetition_penalty, what, err)))
        return s;
    if ((s = gen_int(o, "max_new_tokens", &g->max_new_tokens, what, err))) return s;
    if ((s = gen_int(o, "max_length", &g->max_length, what, err))) return s;
    if ((s = gen_int(o, "pad_token_id", &g->pad_token_id, what, err))) return s;
    if ((s = gen_int(o, "bos_token_id", &g->bos_token_id, what, err))) return s;
    return gen_eos(g, o, what, err);
}

static void gen_defaults(generation_config *g) {
    memset(g, 0, sizeof *g);
    g->do_sample = 0;
    g->temperature = 1.0;
    g->top_k = 50;
    g->top_p = 1.0;
    g->repetition_penalty = 1.0;
    g->max_new_tokens = -1;
    g->max_length = 20;
    g->pad_token_id = -1;
    g->bos_token_id = -1;
}

/* Field-wise "still at the default" test, as from_model_config does it. */
static void gen_fill_unset(generation_config *g, const generation_config *from) {
    generation_config d;
    gen_defaults(&d);
    if (g->do_sample == d.do_sample) g->do_sample = from->do_sample;
    if (g->temperature == d.temperature) g->temperature = from->temperature;
    if (g->top_k == d.top_k) g->top_k = from->top_k;
    if (g->top_p == d.top_p) g->top_p = from->top_p;
    if (g->min_p == d.min_p) g->min_p = from->min_p;
    if (g->repetition_penalty == d.repetition_penalty)
        g->repetition_penalty = from->repetition_penalty;
    if (g->max_new_tokens == d.max_new_tokens) g->max_new_tokens = from->max_new_tokens;
    if (g->max_length == d.max_length) g->max_length = from->max_length;
    if (g->pad_token_id == d.pad_token_id) g->pad_token_id = from->pad_token_id;
    if (g->bos_token_id == d.bos_token_id) g->bos_token_id = from->bos_token_id;
    if (g->n_eos == 0) {
        g->n_eos = from->n_eos;
        memcpy(g->eos_token_ids, from->eos_token_ids, sizeof g->eos_token_ids);
    }
}

ergo_status generation_config_parse(generation_config *gen, const json_t *gen_root,
                                    const json_t *config_root, const char *path,
                                    ergo_error *err) {
    ergo_status s;
    gen_defaults(gen);
    if (gen_root) {
        if (!json_is_object(gen_root))
            return ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", path);
        gen->from_file = 1;
        if ((s = gen_fields(gen, gen_root, path, err))) return s;
    } else if (config_root && json_is_object(config_root)) {
        /* GenerationConfig.from_model_config: the top level of config.json, then what
         * is still unset from the decoder's text_config. */
        if ((s = gen_fields(gen, config_root, path, err))) return s;
        const json_t *tc = json_object_get(config_root, "text_config");
        if (tc && json_is_object(tc)) {
            generation_config from;
            gen_defaults(&from);
            if ((s = gen_fields(&from, tc, path, err))) return s;
            gen_fill_unset(gen, &from);
        }
    }
    if (!(gen->temperature >= 0) || !isfinite(gen->temperature))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: temperature %g is not a non-negative number",
                         path, gen->temperature);
    if (!(gen->top_p >= 0 && gen->top_p <= 1))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: top_p %g is outside [0, 1]", path, gen->top_p);
    if (!(gen->min_p >= 0 && gen->min_p <= 1))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: min_p %g is outside [0, 1]", path, gen->min_p);
    if (gen->top_k < 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: top_k %d is negative", path, gen->top_k);
    if (!(gen->repetition_penalty > 0) || !isfinite(gen->repetition_penalty))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: repetition_penalty %g is not positive", path,
                         gen->repetition_penalty);
    return ERGO_OK;
}
