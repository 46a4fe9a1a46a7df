/*
 * checkpoint.c - checkpoints of a training run (checkpoint.h).
 *
 * The published files follow their writers: model.safetensors as transformers'
 * save_pretrained (the safetensors crate's tensor order, {"format": "pt"}, a tied
 * head left out), adapter_model.safetensors + adapter_config.json as PEFT 0.17's
 * save_pretrained (json.dumps(indent=2, sort_keys=True), no final newline).
 */
#define _GNU_SOURCE /* renameat2 (RENAME_EXCHANGE) */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/half.h"
#include "base/json.h"
#include "io/safetensors.h"
#include "model/model_save.h"

int (*train_checkpoint_fault)(const char *stage) = NULL;

#define STATE_FORMAT "ergo-trainer-state"
#define STATE_VERSION 1

static ergo_status fault(const char *where, const char *stage, ergo_error *err) {
    if (train_checkpoint_fault && train_checkpoint_fault(stage))
        return ergo_fail(err, ERGO_E_IO, "%s: write failed (injected at stage %s)", where, stage);
    return ERGO_OK;
}

/* ---- directories ---- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int remove_tree(const char *path) {
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* mkdir -p */
static ergo_status make_dirs(const char *dir, ergo_error *err) {
    char p[1024];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return ergo_fail(err, ERGO_E_ARG, "path too long: %s", dir);
    for (char *q = p + 1;; q++) {
        const int end = *q == '\0';
        if (*q != '/' && !end) continue;
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return ergo_fail(err, ERGO_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
        if (end) break;
        *q = '/';
    }
    if (!dir_exists(dir)) return ergo_fail(err, ERGO_E_IO, "%s: not a directory", dir);
    return ERGO_OK;
}

/* Parses "checkpoint-<digits>" (complete, *pid = 0) or "checkpoint-<digits>.tmp-<pid>"
 * (a save in progress or interrupted). Returns 0 for any other name. */
static int parse_name(const char *name, int64_t *step, long *pid) {
    if (strncmp(name, "checkpoint-", 11)) return 0;
    const char *p = name + 11;
    int64_t v = 0;
    int nd = 0;
    for (; *p >= '0' && *p <= '9'; p++, nd++) {
        if (nd >= 18) return 0;
        v = v * 10 + (*p - '0');
    }
    if (nd == 0) return 0;
    *step = v;
    *pid = 0;
    if (*p == '\0') return 1;
    if (strncmp(p, ".tmp-", 5)) return 0;
    p += 5;
    long q = 0;
    nd = 0;
    for (; *p >= '0' && *p <= '9'; p++, nd++) {
        if (nd >= 9) return 0;
        q = q * 10 + (*p - '0');
    }
    if (nd == 0 || *p != '\0' || q == 0) return 0;
    *pid = q;
    return 1;
}

/* ---- the trainable parameters' shapes ---- */

typedef struct pshape {
    int n_dims;
    int64_t shape[5];
} pshape;

/* Shapes of tm->params[0..n_opt): the weight specs' for full training, (r, in) and
 * (out, r) for adapters. */
static ergo_status param_shapes(const train_model *tm, pshape *out, ergo_error *err) {
    if (tm->lora.linears) {
        int k = 0;
        for (int l = 0; l < tm->lora.n_layers; l++)
            for (int t = 0; t < LORA_N_TARGETS; t++) {
                const lora_linear *x = &tm->lora.linears[(size_t)l * LORA_N_TARGETS + t];
                if (!x->a) continue;
                if (k + 2 > tm->n_opt) break;
                out[k++] = (pshape){2, {tm->lora.rank, x->in}};
                out[k++] = (pshape){2, {x->out, tm->lora.rank}};
            }
        if (k != tm->n_opt)
            return ergo_fail(err, ERGO_E_ARG, "LoRA model: %d parameters, %d adapter tensors",
                             tm->n_opt, k);
        return ERGO_OK;
    }
    const int n = weights_spec(&tm->cfg, NULL, NULL);
    weight_spec *sp = malloc(sizeof *sp * (size_t)n);
    if (!sp) return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the weight list");
    weights_spec(&tm->cfg, sp, NULL);
    ergo_status s = ERGO_OK;
    int j = 0; /* params are in spec order: one walk */
    for (int i = 0; i < n && j < tm->n_opt; i++) {
        if (strcmp(sp[i].name, tm->params[j].name)) continue;
        out[j].n_dims = sp[i].n_dims;
        memcpy(out[j].shape, sp[i].shape, sizeof out[j].shape);
        j++;
    }
    if (j != tm->n_opt)
        s = ergo_fail(err, ERGO_E_ARG, "trainable parameter `%s' is not a weight of the model",
                      tm->params[j].name);
    free(sp);
    return s;
}

/* ---- model.safetensors (full training) ---- */

/* The base's tensors with the trainable ones replaced by their f32 masters, rounded
 * to the stored dtype (model_write_safetensors). */
static ergo_status write_model(const char *tmp, const train_model *tm, const model *base,
                               ergo_error *err) {
    const int n = weights_spec(&base->config, NULL, NULL);
    if (n != weights_spec(&tm->cfg, NULL, NULL))
        return ergo_fail(err, ERGO_E_ARG, "%s: the base model's config differs from the trained one",
                         tmp);
    weight_spec *sp = malloc(sizeof *sp * (size_t)n);
    const float **vals = calloc((size_t)n, sizeof *vals);
    ergo_status s = ERGO_OK;
    char path[1024];
    if (!sp || !vals) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", tmp);
        goto done;
    }
    if ((s = path_join(path, sizeof path, tmp, "model.safetensors", err))) goto done;
    weights_spec(&base->config, sp, NULL);
    int j = 0; /* params are in spec order: one walk */
    for (int i = 0; i < n && j < tm->n_opt; i++) {
        if (strcmp(tm->params[j].name, sp[i].name)) continue;
        if (tm->params[j].numel != sp[i].numel) {
            s = ergo_fail(err, ERGO_E_SHAPE, "%s: parameter `%s' has %lld values, the base %lld",
                          path, sp[i].name, (long long)tm->params[j].numel, (long long)sp[i].numel);
            goto done;
        }
        vals[i] = tm->params[j++].master;
    }
    if (j != tm->n_opt) {
        s = ergo_fail(err, ERGO_E_ARG, "%s: trainable parameter `%s' is not in the base model",
                      path, tm->params[j].name);
        goto done;
    }
    s = model_write_safetensors(path, base, vals, NULL, err);
done:
    free(sp);
    free(vals);
    return s;
}

/* ---- adapter_model.safetensors + adapter_config.json (LoRA) ---- */

/* The f32 source of each entry (a plain copy). */
static ergo_status f32_fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                            ergo_error *err) {
    const float *const *src = ctx;
    (void)err;
    memcpy(out, src[index] + start, (size_t)count * sizeof(float));
    return ERGO_OK;
}

/* A JSON string as Python's json.dumps writes it (ensure_ascii). */
static void py_json_string(char *out, size_t size, const char *s) {
    size_t k = 0;
#define PUT(...) k += (size_t)snprintf(out + k, k < size ? size - k : 0, __VA_ARGS__)
    PUT("\"");
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        unsigned c = *p++;
        if (c >= 0x80) { /* decode UTF-8 (malformed bytes pass as themselves) */
            int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
            unsigned cp = c & (0x3Fu >> extra);
            for (int i = 0; i < extra && (*p & 0xC0) == 0x80; i++) cp = cp << 6 | (*p++ & 0x3F);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                PUT("\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                PUT("\\u%04x", cp);
            }
        } else if (c == '"') PUT("\\\"");
        else if (c == '\\') PUT("\\\\");
        else if (c == '\n') PUT("\\n");
        else if (c == '\r') PUT("\\r");
        else if (c == '\t') PUT("\\t");
        else if (c == '\b') PUT("\\b");
        else if (c == '\f') PUT("\\f");
        else if (c < 0x20) PUT("\\u%04x", c);
        else PUT("%c", (char)c);
    }
    PUT("\"");
#undef PUT
}

/* A number as Python writes it: an int when integral (PEFT's configs hold ints for
 * alpha as users give them), else repr's shortest round-trip form. */
static void py_number(char *out, size_t size, double v) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, size, "%lld", (long long)v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(out, size, "%.*g", p, v);
        if (strtod(out, NULL) == v) break;
    }
    if (!strpbrk(out, ".en")) strncat(out, ".0", size - strlen(out) - 1);
}

static ergo_status write_adapter(const char *tmp, const train_model *tm, const model *base,
                                 const char *base_dir, ergo_error *err) {
    const lora_set *ls = &tm->lora;
    const int n = tm->n_opt;
    st_write_entry *ent = calloc((size_t)(n ? n : 1), sizeof *ent);
    const float **src = calloc((size_t)(n ? n : 1), sizeof *src);
    char(*names)[192] = malloc(sizeof *names * (size_t)(n ? n : 1));
    char *text = NULL;
    ergo_status s = ERGO_OK;
    char path[1024];
    if (!ent || !src || !names) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", tmp);
        goto done;
    }
    if ((s = path_join(path, sizeof path, tmp, "adapter_model.safetensors", err))) goto done;
    int k = 0;
    for (int l = 0; l < ls->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_linear *x = &ls->linears[(size_t)l * LORA_N_TARGETS + t];
            if (!x->a || k + 2 > n) continue;
            char canon[128], mod[160];
            snprintf(canon, sizeof canon, "model.layers.%d.%s.%s.weight", l,
                     lora_target_parent((lora_target)t), lora_target_name((lora_target)t));
            weights_layout_name(mod, sizeof mod, canon, base->names);
            mod[strlen(mod) - 7] = '\0'; /* drop ".weight": the module path */
            snprintf(names[k], sizeof names[k], "base_model.model.%s.lora_A.weight", mod);
            ent[k] = (st_write_entry){names[k], DTYPE_F32, 2, {ls->rank, x->in}};
            src[k++] = x->a;
            snprintf(names[k], sizeof names[k], "base_model.model.%s.lora_B.weight", mod);
            ent[k] = (st_write_entry){names[k], DTYPE_F32, 2, {x->out, ls->rank}};
            src[k++] = x->b;
        }
    static const st_metadata_entry meta[1] = {{"format", "pt"}};
    if ((s = safetensors_write(path, ent, k, meta, 1, f32_fill, src, err))) goto done;
    if ((s = path_fsync(path, err))) goto done;

    /* adapter_config.json: asdict(LoraConfig) of PEFT 0.17.1 with inference_mode true,
     * keys sorted. target_modules is a regex (PEFT full-matches a string against each
     * module name) that names only the language model's adapted linears: a list of
     * short names would also catch the vision tower's mlp.gate_proj etc. */
    char targets[256] = "", tm_re[512], base_name[2200], alpha[64];
    for (int t = 0; t < LORA_N_TARGETS; t++)
        if (ls->targets & LORA_BIT(t)) {
            if (targets[0]) strcat(targets, "|");
            strcat(targets, lora_target_name((lora_target)t));
        }
    snprintf(tm_re, sizeof tm_re, "model\\.(language_model\\.)?layers\\.[0-9]+\\.(self_attn|mlp)\\.(%s)",
             targets);
    char tm_json[1100];
    py_json_string(tm_json, sizeof tm_json, tm_re);
    if (base_dir) py_json_string(base_name, sizeof base_name, base_dir);
    else snprintf(base_name, sizeof base_name, "null");
    py_number(alpha, sizeof alpha, (double)ls->alpha);
    const size_t cap = 8192;
    text = malloc(cap);
    if (!text) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", tmp);
        goto done;
    }
    int len = snprintf(text, cap,
                       "{\n"
                       "  \"alpha_pattern\": {},\n"
                       "  \"auto_mapping\": null,\n"
                       "  \"base_model_name_or_path\": %s,\n"
                       "  \"bias\": \"none\",\n"
                       "  \"corda_config\": null,\n"
                       "  \"eva_config\": null,\n"
                       "  \"exclude_modules\": null,\n"
                       "  \"fan_in_fan_out\": false,\n"
                       "  \"inference_mode\": true,\n"
                       "  \"init_lora_weights\": true,\n"
                       "  \"layer_replication\": null,\n"
                       "  \"layers_pattern\": null,\n"
                       "  \"layers_to_transform\": null,\n"
                       "  \"loftq_config\": {},\n"
                       "  \"lora_alpha\": %s,\n"
                       "  \"lora_bias\": false,\n"
                       "  \"lora_dropout\": 0.0,\n"
                       "  \"megatron_config\": null,\n"
                       "  \"megatron_core\": \"megatron.core\",\n"
                       "  \"modules_to_save\": null,\n"
                       "  \"peft_type\": \"LORA\",\n"
                       "  \"qalora_group_size\": 16,\n"
                       "  \"r\": %d,\n"
                       "  \"rank_pattern\": {},\n"
                       "  \"revision\": null,\n"
                       "  \"target_modules\": %s,\n"
                       "  \"target_parameters\": null,\n"
                       "  \"task_type\": \"CAUSAL_LM\",\n"
                       "  \"trainable_token_indices\": null,\n"
                       "  \"use_dora\": false,\n"
                       "  \"use_qalora\": false,\n"
                       "  \"use_rslora\": %s\n"
                       "}",
                       base_name, alpha, ls->rank, tm_json, ls->use_rslora ? "true" : "false");
    if (len < 0 || (size_t)len >= cap) {
        s = ergo_fail(err, ERGO_E_ARG, "%s: adapter_config.json does not fit (base path too long?)",
                      tmp);
        goto done;
    }
    s = model_save_file(tmp, "adapter_config.json", text, (size_t)len, err);
done:
    free(ent);
    free(src);
    free(names);
    free(text);
    return s;
}

/* ---- trainer_state.safetensors + trainer_state.json ---- */

static const char *const STATE_PREFIX[3] = {"master/", "exp_avg/", "exp_avg_sq/"};

static ergo_status write_state_tensors(const char *tmp, const train_model *tm, const pshape *ps,
                                       ergo_error *err) {
    const int n = 3 * tm->n_opt;
    st_write_entry *ent = calloc((size_t)(n ? n : 1), sizeof *ent);
    const float **src = calloc((size_t)(n ? n : 1), sizeof *src);
    char(*names)[128] = malloc(sizeof *names * (size_t)(n ? n : 1));
    ergo_status s = ERGO_OK;
    char path[1024];
    if (!ent || !src || !names) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", tmp);
        goto done;
    }
    if ((s = path_join(path, sizeof path, tmp, "trainer_state.safetensors", err))) goto done;
    for (int i = 0; i < tm->n_opt; i++)
        for (int k = 0; k < 3; k++) {
            const int e = 3 * i + k;
            snprintf(names[e], sizeof names[e], "%s%s", STATE_PREFIX[k], tm->params[i].name);
            ent[e].name = names[e];
            ent[e].dtype = DTYPE_F32;
            ent[e].n_dims = ps[i].n_dims;
            memcpy(ent[e].shape, ps[i].shape, sizeof ps[i].shape);
            src[e] = k == 0 ? tm->params[i].master : k == 1 ? tm->opt[i].m : tm->opt[i].v;
        }
    static const st_metadata_entry meta[1] = {{"format", "pt"}};
    s = safetensors_write(path, ent, n, meta, 1, f32_fill, src, err);
    if (!s) s = path_fsync(path, err);
done:
    free(ent);
    free(src);
    free(names);
    return s;
}

static json_t *loss_json(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static ergo_status write_state_json(const char *tmp, const train_model *tm,
                                    const train_run_state *rs, ergo_error *err) {
    if (rs->n_rng < 0 || rs->n_rng > TRAIN_CKPT_MAX_RNG)
        return ergo_fail(err, ERGO_E_ARG, "%s: %d RNG words (at most %d)", tmp, rs->n_rng,
                         TRAIN_CKPT_MAX_RNG);
    if (rs->config && !json_is_object(rs->config))
        return ergo_fail(err, ERGO_E_ARG, "%s: the run's config is not a JSON object", tmp);
    json_t *root = json_object(), *rng = json_array();
    for (int i = 0; i < rs->n_rng; i++) {
        char hex[24];
        snprintf(hex, sizeof hex, "0x%016llx", (unsigned long long)rs->rng[i]);
        json_array_append_new(rng, json_string(hex));
    }
    json_object_set_new(root, "format", json_string(STATE_FORMAT));
    json_object_set_new(root, "version", json_integer(STATE_VERSION));
    json_object_set_new(root, "kind", json_string(tm->lora.linears ? "lora" : "full"));
    json_object_set_new(root, "step", json_integer(rs->step));
    json_object_set_new(root, "epoch", json_integer(rs->epoch));
    json_object_set_new(root, "data_pos", json_integer(rs->data_pos));
    json_object_set_new(root, "lr_step", json_integer(rs->lr_step));
    json_object_set_new(root, "rng", rng);
    json_object_set_new(root, "last_loss", loss_json(rs->last_loss));
    json_object_set_new(root, "best_loss", loss_json(rs->best_loss));
    json_object_set_new(root, "best_step", json_integer(rs->best_step));
    json_object_set_new(root, "n_params", json_integer(tm->n_opt));
    json_object_set_new(root, "n_trainable", json_integer(tm->n_trainable));
    if (tm->lora.linears) {
        json_t *targets = json_array();
        for (int t = 0; t < LORA_N_TARGETS; t++)
            if (tm->lora.targets & LORA_BIT(t))
                json_array_append_new(targets, json_string(lora_target_name((lora_target)t)));
        json_object_set_new(root, "lora",
                            json_pack("{s:i, s:f, s:o, s:b}", "rank", tm->lora.rank, "alpha",
                                      (double)tm->lora.alpha, "targets", targets, "use_rslora",
                                      tm->lora.use_rslora));
    }
    json_object_set(root, "config", rs->config ? rs->config : json_null());
    ergo_status s = model_save_json(tmp, "trainer_state.json", root, err);
    json_decref(root);
    return s;
}

/* ---- save ---- */

/* Deletes complete checkpoints beyond the newest `keep`, never `current`. Failures
 * to delete leave an old checkpoint behind, which is harmless. */
static void prune(const char *out_dir, int keep, int64_t current) {
    DIR *d = opendir(out_dir);
    if (!d) return;
    int64_t *steps = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t st;
        long pid;
        if (!parse_name(e->d_name, &st, &pid) || pid) continue;
        if (n == cap) {
            int64_t *g = realloc(steps, sizeof *g * (size_t)(cap = cap ? 2 * cap : 16));
            if (!g) break;
            steps = g;
        }
        steps[n++] = st;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* descending */
        for (int j = i; j > 0 && steps[j - 1] < steps[j]; j--) {
            int64_t t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    for (int i = keep; i < n; i++) {
        if (steps[i] == current) continue;
        char p[1024];
        if (snprintf(p, sizeof p, "%s/checkpoint-%lld", out_dir, (long long)steps[i]) <
            (int)sizeof p)
            remove_tree(p);
    }
    free(steps);
}

ergo_status train_checkpoint_save(const char *out_dir, const train_model *tm, const model *base,
                                  const char *base_dir, const train_run_state *rs, int keep,
                                  char *path_out, size_t path_size, ergo_error *err) {
    if (rs->step < 0) return ergo_fail(err, ERGO_E_ARG, "checkpoint step %lld is negative",
                                       (long long)rs->step);
    ergo_status s;
    if ((s = make_dirs(out_dir, err))) return s;
    char tmp[1024], final[1024];
    if (snprintf(tmp, sizeof tmp, "%s/checkpoint-%lld.tmp-%ld", out_dir, (long long)rs->step,
                 (long)getpid()) >= (int)sizeof tmp ||
        snprintf(final, sizeof final, "%s/checkpoint-%lld", out_dir, (long long)rs->step) >=
            (int)sizeof final)
        return ergo_fail(err, ERGO_E_ARG, "path too long: %s", out_dir);
    if (dir_exists(tmp)) remove_tree(tmp); /* our own earlier failed attempt */
    if (mkdir(tmp, 0755) != 0)
        return ergo_fail(err, ERGO_E_IO, "%s: cannot create directory: %s", tmp, strerror(errno));

    const int lora = tm->lora.linears != NULL;
    pshape *ps = calloc((size_t)(tm->n_opt ? tm->n_opt : 1), sizeof *ps);
    if (!ps) {
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        goto fail;
    }
    if ((s = param_shapes(tm, ps, err))) goto fail;
    if (lora) {
        if ((s = fault(tmp, "adapter", err)) || (s = write_adapter(tmp, tm, base, base_dir, err)))
            goto fail;
    } else {
        if ((s = fault(tmp, "model", err)) || (s = write_model(tmp, tm, base, err))) goto fail;
    }
    if ((s = fault(tmp, "files", err)) || (s = model_copy_files(tmp, base, base_dir, !lora, err)))
        goto fail;
    if ((s = fault(tmp, "state", err)) || (s = write_state_tensors(tmp, tm, ps, err))) goto fail;
    if ((s = fault(tmp, "state_json", err)) || (s = write_state_json(tmp, tm, rs, err))) goto fail;
    if ((s = fault(tmp, "fsync", err)) || (s = path_fsync(tmp, err))) goto fail;
    if ((s = fault(tmp, "rename", err))) goto fail;
    if (dir_exists(final)) {
        /* the same step saved again (a resumed run): swap atomically, then drop the old */
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) != 0) {
            s = ergo_fail(err, ERGO_E_IO, "%s: cannot replace with %s: %s", final, tmp,
                          strerror(errno));
            goto fail;
        }
    } else if (rename(tmp, final) != 0) {
        s = ergo_fail(err, ERGO_E_IO, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
        goto fail;
    }
    free(ps);
    if (dir_exists(tmp)) remove_tree(tmp); /* the replaced checkpoint, after an exchange */
    /* the rename is durable once the parent is synced: an error here means the new
     * checkpoint may not survive a power loss, though the old ones are intact */
    if ((s = path_fsync(out_dir, err))) return s;
    if (keep > 0) prune(out_dir, keep, rs->step);
    if (path_out && snprintf(path_out, path_size, "%s", final) >= (int)path_size)
        return ergo_fail(err, ERGO_E_ARG, "path too long: %s", final);
    return ERGO_OK;
fail:
    free(ps);
    remove_tree(tmp);
    return s;
}

/* ---- latest ---- */

ergo_status train_checkpoint_latest(const char *out_dir, char *path_out, size_t path_size,
                                    int64_t *step, ergo_error *err) {
    if (path_size) path_out[0] = '\0';
    if (step) *step = -1;
    DIR *d = opendir(out_dir);
    if (!d) {
        if (errno == ENOENT) return ERGO_OK;
        return ergo_fail(err, ERGO_E_IO, "%s: cannot list: %s", out_dir, strerror(errno));
    }
    int64_t best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t st;
        long pid;
        if (!parse_name(e->d_name, &st, &pid)) continue;
        char p[1024], marker[1100];
        if (snprintf(p, sizeof p, "%s/%s", out_dir, e->d_name) >= (int)sizeof p) continue;
        if (pid) {
            /* an interrupted save: remove it once its writer is gone */
            if (pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH) remove_tree(p);
            continue;
        }
        snprintf(marker, sizeof marker, "%s/trainer_state.json", p);
        if (dir_exists(p) && file_exists(marker) && st > best) best = st;
    }
    closedir(d);
    if (best < 0) return ERGO_OK;
    if (snprintf(path_out, path_size, "%s/checkpoint-%lld", out_dir, (long long)best) >=
        (int)path_size)
        return ergo_fail(err, ERGO_E_ARG, "path too long: %s", out_dir);
    if (step) *step = best;
    return ERGO_OK;
}

/* ---- load ---- */

static ergo_status get_i64(const json_t *root, const char *key, int64_t *out, const char *path,
                           ergo_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!json_is_integer(v))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is missing or not an integer", path, key);
    *out = json_integer_value(v);
    return ERGO_OK;
}

static ergo_status get_loss(const json_t *root, const char *key, double *out, const char *path,
                            ergo_error *err) {
    const json_t *v = json_object_get(root, key);
    if (json_is_null(v)) *out = NAN;
    else if (json_is_number(v)) *out = json_number_value(v);
    else return ergo_fail(err, ERGO_E_FORMAT, "%s: `%s' is missing or not a number or null", path, key);
    return ERGO_OK;
}

static ergo_status load_state_json(const char *path, const train_model *tm, train_run_state *rs,
                                   ergo_error *err) {
    json_t *root = json_load_path(path, err);
    if (!root) return err ? err->code : ERGO_E_FORMAT;
    ergo_status s = ERGO_OK;
    const char *kind_want = tm->lora.linears ? "lora" : "full";
    const json_t *fmt = json_object_get(root, "format"), *kind = json_object_get(root, "kind");
    int64_t version = 0, n_params = 0;
    if (!json_is_object(root)) {
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: not a JSON object", path);
    } else if (!json_is_string(fmt) || strcmp(json_string_value(fmt), STATE_FORMAT)) {
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: `format' is not \"%s\"", path, STATE_FORMAT);
    } else if ((s = get_i64(root, "version", &version, path, err))) {
    } else if (version != STATE_VERSION) {
        s = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: version %lld (this ergo reads %d)", path,
                      (long long)version, STATE_VERSION);
    } else if (!json_is_string(kind) || strcmp(json_string_value(kind), kind_want)) {
        s = ergo_fail(err, ERGO_E_ARG, "%s: a `%s' checkpoint; this run trains `%s'", path,
                      json_is_string(kind) ? json_string_value(kind) : "?", kind_want);
    } else if ((s = get_i64(root, "n_params", &n_params, path, err))) {
    } else if (n_params != tm->n_opt) {
        s = ergo_fail(err, ERGO_E_ARG, "%s: %lld trainable parameters; this run has %d", path,
                      (long long)n_params, tm->n_opt);
    }
    if (s) goto done;
    if ((s = get_i64(root, "step", &rs->step, path, err)) ||
        (s = get_i64(root, "epoch", &rs->epoch, path, err)) ||
        (s = get_i64(root, "data_pos", &rs->data_pos, path, err)) ||
        (s = get_i64(root, "lr_step", &rs->lr_step, path, err)) ||
        (s = get_i64(root, "best_step", &rs->best_step, path, err)) ||
        (s = get_loss(root, "last_loss", &rs->last_loss, path, err)) ||
        (s = get_loss(root, "best_loss", &rs->best_loss, path, err)))
        goto done;
    if (rs->step < 0 || rs->epoch < 0 || rs->data_pos < 0 || rs->lr_step < 0) {
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: a negative step, epoch, data_pos or lr_step", path);
        goto done;
    }
    const json_t *rng = json_object_get(root, "rng");
    if (!json_is_array(rng) || json_array_size(rng) > TRAIN_CKPT_MAX_RNG) {
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: `rng' is not an array of at most %d words", path,
                      TRAIN_CKPT_MAX_RNG);
        goto done;
    }
    rs->n_rng = (int)json_array_size(rng);
    for (int i = 0; i < rs->n_rng; i++) {
        const json_t *w = json_array_get(rng, (size_t)i);
        const char *h = json_is_string(w) ? json_string_value(w) : "";
        char *end = NULL;
        errno = 0;
        unsigned long long v = strncmp(h, "0x", 2) ? 0 : strtoull(h + 2, &end, 16);
        if (strlen(h) != 18 || !end || *end || errno) {
            s = ergo_fail(err, ERGO_E_FORMAT, "%s: rng[%d] is not a 0x-prefixed 16-digit hex word",
                          path, i);
            goto done;
        }
        rs->rng[i] = (uint64_t)v;
    }
    if (tm->lora.linears) {
        const json_t *lo = json_object_get(root, "lora");
        int64_t rank = 0;
        if (!json_is_object(lo) || (s = get_i64(lo, "rank", &rank, path, err))) {
            if (!s) s = ergo_fail(err, ERGO_E_FORMAT, "%s: `lora' is missing", path);
            goto done;
        }
        if (rank != tm->lora.rank) {
            s = ergo_fail(err, ERGO_E_ARG, "%s: LoRA rank %lld; this run has rank %d", path,
                          (long long)rank, tm->lora.rank);
            goto done;
        }
    }
    const json_t *cfg = json_object_get(root, "config");
    if (cfg && !json_is_null(cfg) && !json_is_object(cfg)) {
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: `config' is not an object", path);
        goto done;
    }
    rs->config = json_is_object(cfg) ? json_incref((json_t *)cfg) : NULL;
done:
    json_decref(root);
    return s;
}

ergo_status train_checkpoint_load_state(const char *dir, train_model *tm, train_run_state *rs,
                                        ergo_error *err) {
    char jpath[1024], spath[1024];
    ergo_status s;
    if ((s = path_join(jpath, sizeof jpath, dir, "trainer_state.json", err)) ||
        (s = path_join(spath, sizeof spath, dir, "trainer_state.safetensors", err)))
        return s;
    train_run_state got = {0};
    if ((s = load_state_json(jpath, tm, &got, err))) return s;
    pshape *ps = calloc((size_t)(tm->n_opt ? tm->n_opt : 1), sizeof *ps);
    const tensor **found = calloc((size_t)(3 * tm->n_opt + 1), sizeof *found);
    safetensors_file st = {0};
    if (!ps || !found) {
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        goto done;
    }
    if ((s = param_shapes(tm, ps, err))) goto done;
    if ((s = safetensors_open(&st, spath, err))) goto done;
    /* check everything before writing anything into tm */
    for (int i = 0; i < tm->n_opt; i++)
        for (int k = 0; k < 3; k++) {
            char name[160];
            snprintf(name, sizeof name, "%s%s", STATE_PREFIX[k], tm->params[i].name);
            const tensor *t = safetensors_find(&st, name);
            if (!t) {
                s = ergo_fail(err, ERGO_E_FORMAT, "%s: missing tensor `%s'", spath, name);
                goto done;
            }
            int same = t->n_dims == ps[i].n_dims;
            for (int d = 0; same && d < t->n_dims; d++) same = t->shape[d] == ps[i].shape[d];
            if (!same) {
                char a[128], b[128];
                s = ergo_fail(err, ERGO_E_SHAPE, "%s: tensor `%s' has shape %s; the model wants %s",
                              spath, name, shape_format(a, sizeof a, t->shape, t->n_dims),
                              shape_format(b, sizeof b, ps[i].shape, ps[i].n_dims));
                goto done;
            }
            if (t->dtype != DTYPE_F32) {
                s = ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' is %s, not F32", spath, name,
                              dtype_name(t->dtype));
                goto done;
            }
            found[3 * i + k] = t;
        }
    if (st.n_tensors != 3 * tm->n_opt) {
        const char *extra = "?";
        for (int j = 0; j < st.n_tensors; j++) {
            int known = 0;
            for (int i = 0; i < 3 * tm->n_opt && !known; i++) known = found[i] == &st.tensors[j];
            if (!known) {
                extra = st.tensors[j].name;
                break;
            }
        }
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' is not a parameter of this run (%d "
                      "tensors, %d expected)", spath, extra, st.n_tensors, 3 * tm->n_opt);
        goto done;
    }
    for (int i = 0; i < tm->n_opt; i++) {
        float *dst[3] = {tm->params[i].master, tm->opt[i].m, tm->opt[i].v};
        for (int k = 0; k < 3; k++)
            if (found[3 * i + k]->nbytes)
                memcpy(dst[k], found[3 * i + k]->data, found[3 * i + k]->nbytes);
    }
    *rs = got;
    got.config = NULL;
done:
    if (got.config) json_decref(got.config);
    safetensors_close(&st);
    free(ps);
    free(found);
    return s;
}
