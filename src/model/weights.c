/*
 * weights.c - the parameter list of Qwen2.5-VL and binding a checkpoint to it.
 *
 * Mirrors the modules of Qwen2_5_VLForConditionalGeneration (transformers
 * 4.56.2): Qwen2_5_VisionPatchEmbed (Conv3d, bias=False), Qwen2_5_VLVisionBlock
 * (norm1, norm2, attn.qkv, attn.proj, mlp with biases), Qwen2_5_VLPatchMerger
 * (ln_q, mlp.0, GELU, mlp.2), Qwen2_5_VLDecoderLayer (q/k/v with bias, o without,
 * MLP without biases, two RMSNorms), the final norm and lm_head. The legacy
 * checkpoint names are converted as the reference's _checkpoint_conversion_mapping
 * does: `visual.` <-> `model.visual.`, `model.` <-> `model.language_model.`.
 */
#include "weights.h"

#include "model/quantize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the parameter list ---- */

typedef struct spec_builder {
    weight_spec *out;
    int n;
} spec_builder;

static void add(spec_builder *b, weight *slot, weight_part part, weight_kind kind, int n_dims,
                const int64_t *shape, const char *fmt, int layer, const char *suffix) {
    if (b->out) {
        weight_spec *s = &b->out[b->n];
        memset(s, 0, sizeof *s);
        char base[80];
        snprintf(base, sizeof base, fmt, layer);
        snprintf(s->name, sizeof s->name, "%s%s", base, suffix);
        s->kind = kind;
        s->part = part;
        s->n_dims = n_dims;
        memcpy(s->shape, shape, sizeof(int64_t) * (size_t)n_dims);
        s->numel = shape_numel(shape, n_dims);
        s->fan_in = n_dims > 1 ? s->numel / shape[0] : 0;
        s->slot = slot;
    }
    b->n++;
}

/* A linear layer: weight (out, in) and, when slot_b is given, bias (out). */
static void add_linear(spec_builder *b, weight *slot_w, weight *slot_b, int has_bias,
                       weight_part part, int64_t out, int64_t in, const char *fmt, int layer) {
    int64_t ws[2] = {out, in}, bs[1] = {out};
    add(b, slot_w, part, WEIGHT_MATRIX, 2, ws, fmt, layer, ".weight");
    if (has_bias) add(b, slot_b, part, WEIGHT_BIAS, 1, bs, fmt, layer, ".bias");
}

static void add_norm(spec_builder *b, weight *slot, weight_part part, int64_t dim,
                     const char *fmt, int layer) {
    int64_t s[1] = {dim};
    add(b, slot, part, WEIGHT_NORM, 1, s, fmt, layer, ".weight");
}

int weights_spec(const model_config *cfg, weight_spec *out, model_weights *w) {
    spec_builder b = {out, 0};
    const vision_config *v = &cfg->vision;
    const text_config *t = &cfg->text;
#define SLOT(expr) (w ? &(expr) : NULL)
    /* vision tower (registered first in Qwen2_5_VLModel) */
    int64_t pe[5] = {v->hidden, v->in_channels, v->temporal_patch, v->patch, v->patch};
    add(&b, SLOT(w->vision.patch_embed), PART_VISION, WEIGHT_MATRIX, 5, pe,
        "visual.patch_embed.proj", 0, ".weight");
    for (int l = 0; l < v->depth; l++) {
        vision_block_weights *vb = w ? &w->vision.blocks[l] : NULL;
        add_norm(&b, SLOT(vb->norm1), PART_VISION, v->hidden, "visual.blocks.%d.norm1", l);
        add_norm(&b, SLOT(vb->norm2), PART_VISION, v->hidden, "visual.blocks.%d.norm2", l);
        add_linear(&b, SLOT(vb->qkv_w), SLOT(vb->qkv_b), 1, PART_VISION, 3 * (int64_t)v->hidden,
                   v->hidden, "visual.blocks.%d.attn.qkv", l);
        add_linear(&b, SLOT(vb->proj_w), SLOT(vb->proj_b), 1, PART_VISION, v->hidden, v->hidden,
                   "visual.blocks.%d.attn.proj", l);
        add_linear(&b, SLOT(vb->gate_w), SLOT(vb->gate_b), 1, PART_VISION, v->ffn, v->hidden,
                   "visual.blocks.%d.mlp.gate_proj", l);
        add_linear(&b, SLOT(vb->up_w), SLOT(vb->up_b), 1, PART_VISION, v->ffn, v->hidden,
                   "visual.blocks.%d.mlp.up_proj", l);
        add_linear(&b, SLOT(vb->down_w), SLOT(vb->down_b), 1, PART_VISION, v->hidden, v->ffn,
                   "visual.blocks.%d.mlp.down_proj", l);
    }
    int64_t mh = (int64_t)v->hidden * v->merge * v->merge;
    add_norm(&b, SLOT(w->vision.merger_ln_q), PART_VISION, v->hidden, "visual.merger.ln_q", 0);
    add_linear(&b, SLOT(w->vision.merger_fc1_w), SLOT(w->vision.merger_fc1_b), 1, PART_VISION, mh,
               mh, "visual.merger.mlp.0", 0);
    add_linear(&b, SLOT(w->vision.merger_fc2_w), SLOT(w->vision.merger_fc2_b), 1, PART_VISION,
               v->out_hidden, mh, "visual.merger.mlp.2", 0);

    /* language model */
    int64_t emb[2] = {t->vocab_size, t->hidden};
    add(&b, SLOT(w->text.embed), PART_TEXT, WEIGHT_EMBED, 2, emb, "model.embed_tokens", 0,
        ".weight");
    int64_t q = (int64_t)t->n_heads * t->head_dim, kv = (int64_t)t->n_kv_heads * t->head_dim;
    for (int l = 0; l < t->n_layers; l++) {
        text_layer_weights *tl = w ? &w->text.layers[l] : NULL;
        add_linear(&b, SLOT(tl->q_w), SLOT(tl->q_b), 1, PART_TEXT, q, t->hidden,
                   "model.layers.%d.self_attn.q_proj", l);
        add_linear(&b, SLOT(tl->k_w), SLOT(tl->k_b), 1, PART_TEXT, kv, t->hidden,
                   "model.layers.%d.self_attn.k_proj", l);
        add_linear(&b, SLOT(tl->v_w), SLOT(tl->v_b), 1, PART_TEXT, kv, t->hidden,
                   "model.layers.%d.self_attn.v_proj", l);
        add_linear(&b, SLOT(tl->o_w), NULL, 0, PART_TEXT, t->hidden, q,
                   "model.layers.%d.self_attn.o_proj", l);
        add_linear(&b, SLOT(tl->gate_w), NULL, 0, PART_TEXT, t->ffn, t->hidden,
                   "model.layers.%d.mlp.gate_proj", l);
        add_linear(&b, SLOT(tl->up_w), NULL, 0, PART_TEXT, t->ffn, t->hidden,
                   "model.layers.%d.mlp.up_proj", l);
        add_linear(&b, SLOT(tl->down_w), NULL, 0, PART_TEXT, t->hidden, t->ffn,
                   "model.layers.%d.mlp.down_proj", l);
        add_norm(&b, SLOT(tl->input_norm), PART_TEXT, t->hidden, "model.layers.%d.input_layernorm",
                 l);
        add_norm(&b, SLOT(tl->post_norm), PART_TEXT, t->hidden,
                 "model.layers.%d.post_attention_layernorm", l);
    }
    add_norm(&b, SLOT(w->text.norm), PART_TEXT, t->hidden, "model.norm", 0);
    if (!t->tie_word_embeddings)
        add(&b, SLOT(w->text.lm_head), PART_TEXT, WEIGHT_LM_HEAD, 2, emb, "lm_head", 0, ".weight");
#undef SLOT
    return b.n;
}

ergo_status weights_alloc(model_weights *w, const model_config *cfg, ergo_error *err) {
    memset(w, 0, sizeof *w);
    w->vision.blocks = calloc((size_t)cfg->vision.depth, sizeof *w->vision.blocks);
    w->text.layers = calloc((size_t)cfg->text.n_layers, sizeof *w->text.layers);
    if (!w->vision.blocks || !w->text.layers) {
        weights_free(w);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the weight tables");
    }
    return ERGO_OK;
}

void weights_free(model_weights *w) {
    if (!w) return;
    free(w->vision.blocks);
    free(w->text.layers);
    memset(w, 0, sizeof *w);
}

const char *name_layout_label(name_layout l) {
    return l == NAMES_NEW ? "new" : "legacy";
}

void weights_layout_name(char *out, size_t size, const char *canonical, name_layout layout) {
    if (layout == NAMES_NEW) {
        if (!strncmp(canonical, "visual.", 7)) {
            snprintf(out, size, "model.%s", canonical);
            return;
        }
        if (!strncmp(canonical, "model.", 6)) {
            snprintf(out, size, "model.language_model.%s", canonical + 6);
            return;
        }
    }
    snprintf(out, size, "%s", canonical);
}

/* ---- binding ---- */

ergo_status weights_bind(model_weights *w, const model_config *cfg, const checkpoint *ck,
                         name_layout *layout, ergo_error *err) {
    const char *what = ck->dir ? ck->dir : "checkpoint";
    /* The embedding's name tells the layout; a checkpoint with neither is missing it. */
    if (checkpoint_find(ck, "model.language_model.embed_tokens.weight")) *layout = NAMES_NEW;
    else if (checkpoint_find(ck, "model.embed_tokens.weight")) *layout = NAMES_LEGACY;
    else
        return ergo_fail(err, ERGO_E_FORMAT,
                         "%s: missing tensor `model.embed_tokens.weight' (or "
                         "`model.language_model.embed_tokens.weight')",
                         what);
    int n = weights_spec(cfg, NULL, NULL);
    weight_spec *specs = malloc(sizeof *specs * (size_t)n);
    if (!specs) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    weights_spec(cfg, specs, w);
    ergo_status s = ERGO_OK;
    for (int i = 0; i < n; i++) {
        const weight_spec *sp = &specs[i];
        char name[160];
        weights_layout_name(name, sizeof name, sp->name, *layout);
        const tensor *t = checkpoint_find(ck, name);
        if (!t) {
            s = ergo_fail(err, ERGO_E_FORMAT, "%s: missing tensor `%s' (%s name layout)", what,
                          name, name_layout_label(*layout));
            break;
        }
        int same = t->n_dims == sp->n_dims;
        for (int d = 0; same && d < sp->n_dims; d++) same = t->shape[d] == sp->shape[d];
        if (!same) {
            char got[160], want[160];
            s = ergo_fail(err, ERGO_E_SHAPE, "%s: tensor `%s' has shape %s; the config wants %s",
                          what, name, shape_format(got, sizeof got, t->shape, t->n_dims),
                          shape_format(want, sizeof want, sp->shape, sp->n_dims));
            break;
        }
        if (!dtype_is_weight(t->dtype)) {
            s = ergo_fail(err, ERGO_E_UNSUPPORTED,
                          "%s: tensor `%s' is stored as %s; ergo needs BF16, F16 or F32 weights",
                          what, name, dtype_name(t->dtype));
            break;
        }
        sp->slot->t = *t;
        sp->slot->k = kweight_of_tensor(t);
    }
    /* tied: lm_head reads the embedding (the reference ties the parameter) */
    if (!s && cfg->text.tie_word_embeddings) w->text.lm_head = w->text.embed;
    free(specs);
    return s;
}

void weights_count(const model_weights *w, const model_config *cfg, param_counts *out) {
    memset(out, 0, sizeof *out);
    int n = weights_spec(cfg, NULL, NULL);
    weight_spec *specs = malloc(sizeof *specs * (size_t)(n ? n : 1));
    if (!specs) return;
    model_weights *mw = (model_weights *)w; /* slots are only read */
    weights_spec(cfg, specs, mw);
    for (int i = 0; i < n; i++) {
        out->total += specs[i].numel;
        if (specs[i].part == PART_TEXT) out->text += specs[i].numel;
        else out->vision += specs[i].numel;
        out->bytes += specs[i].slot->t.nbytes;
    }
    free(specs);
}

/* ---- loading ---- */

void model_free(model *m) {
    if (!m) return;
    model_quant_free(m);
    weights_free(&m->weights);
    checkpoint_close(&m->ckpt);
    memset(m, 0, sizeof *m);
}

ergo_status model_load(model *m, const char *dir, ergo_error *err) {
    memset(m, 0, sizeof *m);
    ergo_status s;
    if ((s = checkpoint_open(&m->ckpt, dir, err))) return s;
    if ((s = model_config_parse(&m->config, m->ckpt.config, m->ckpt.config_path, err))) goto fail;
    if ((s = generation_config_parse(&m->generation, m->ckpt.generation, m->ckpt.config,
                                     m->ckpt.generation ? m->ckpt.generation_path
                                                        : m->ckpt.config_path,
                                     err)))
        goto fail;
    if ((s = weights_alloc(&m->weights, &m->config, err))) goto fail;
    if ((s = weights_bind(&m->weights, &m->config, &m->ckpt, &m->names, err))) goto fail;
    return ERGO_OK;
fail:
    model_free(m);
    return s;
}

kdtype tensor_kdtype(const tensor *t) {
    switch (t->dtype) {
    case DTYPE_BF16: return KDT_BF16;
    case DTYPE_F16: return KDT_F16;
    case DTYPE_F32: return KDT_F32;
    default: break;
    }
    ERGO_ASSERT(0 && "a bound weight of a dtype weights_bind refuses");
    return KDT_F32;
}

kweight kweight_of_tensor(const tensor *t) {
    kweight k = {tensor_kdtype(t), t->data, 1, (int)t->numel, NULL};
    if (t->n_dims >= 2) {
        k.rows = (int)t->shape[0];
        k.cols = t->shape[0] ? (int)(t->numel / t->shape[0]) : 0;
    }
    return k;
}
