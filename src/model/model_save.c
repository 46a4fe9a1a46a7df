/*
 * model_save.c - a loaded model as a published checkpoint directory (model_save.h).
 *
 * model.safetensors follows transformers' save_pretrained (the safetensors crate's
 * tensor order through safetensors_write, {"format": "pt"}, a tied head left out);
 * src/train/checkpoint.c writes its full checkpoints through the same functions.
 */
#define _GNU_SOURCE /* renameat2 (RENAME_EXCHANGE), nftw */
#include "model_save.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/half.h"

/* ---- directories ---- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path) { nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* The directory holding path ("." for a bare name). */
static void parent_of(char *out, size_t size, const char *path) {
    snprintf(out, size, "%s", path);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/') out[--n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, size, ".");
    else if (slash == out) out[1] = '\0';
    else *slash = '\0';
}

/* ---- files, each synced after it is written ---- */

ergo_status model_save_file(const char *dir, const char *name, const void *data, size_t n,
                            ergo_error *err) {
    char path[2048];
    ergo_status s;
    if ((s = path_join(path, sizeof path, dir, name, err))) return s;
    if ((s = file_write_all(path, data, n, err))) return s;
    return path_fsync(path, err);
}

ergo_status model_save_json(const char *dir, const char *name, const json_t *j,
                            ergo_error *err) {
    char *text = json_dumps(j, JSON_INDENT(2));
    if (!text) return ergo_fail(err, ERGO_E_NOMEM, "%s/%s: cannot format JSON", dir, name);
    ergo_status s = model_save_file(dir, name, text, strlen(text), err);
    free(text);
    return s;
}

/* The base's non-weight files (configs, tokenizer, processor, chat templates). */
static int wanted_file(const char *name) {
    static const char *const names[] = {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
        "preprocessor_config.json", "video_preprocessor_config.json"};
    if (!strncmp(name, "chat_template", 13)) return 1;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(name, names[i])) return 1;
    return 0;
}

ergo_status model_copy_files(const char *dir, const model *m, const char *src_dir,
                             int with_configs, ergo_error *err) {
    int have_config = 0, have_gen = 0;
    ergo_status s = ERGO_OK;
    if (src_dir) {
        DIR *d = opendir(src_dir);
        if (!d)
            return ergo_fail(err, ERGO_E_IO, "%s: cannot list: %s", src_dir, strerror(errno));
        struct dirent *e;
        while (!s && (e = readdir(d))) {
            const int is_cfg = !strcmp(e->d_name, "config.json"),
                      is_gen = !strcmp(e->d_name, "generation_config.json");
            if (!wanted_file(e->d_name) || ((is_cfg || is_gen) && !with_configs)) continue;
            char from[2048];
            if ((s = path_join(from, sizeof from, src_dir, e->d_name, err))) break;
            if (!file_exists(from)) continue;
            char *buf;
            size_t n;
            if ((s = file_read_all(from, (size_t)1 << 30, &buf, &n, err))) break;
            s = model_save_file(dir, e->d_name, buf, n, err);
            free(buf);
            have_config |= is_cfg;
            have_gen |= is_gen;
        }
        closedir(d);
        if (s) return s;
    }
    if (!with_configs) return ERGO_OK;
    if (!have_config) {
        if (!m->ckpt.config)
            return ergo_fail(err, ERGO_E_ARG, "%s: the model has no config.json to write", dir);
        if ((s = model_save_json(dir, "config.json", m->ckpt.config, err))) return s;
    }
    if (!have_gen && m->ckpt.generation)
        s = model_save_json(dir, "generation_config.json", m->ckpt.generation, err);
    return s;
}

/* ---- model.safetensors ---- */

typedef struct tensor_src {
    dtype dt;
    const uint8_t *raw;       /* the stored bytes */
    const float *f32;         /* values to round to dt instead, or NULL */
    const lora_module *mod;   /* merged on the way, or NULL */
} tensor_src;

typedef struct fill_ctx {
    const lora_adapter *a;
    const tensor_src *src;
} fill_ctx;

static ergo_status fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                        ergo_error *err) {
    const fill_ctx *f = ctx;
    const tensor_src *t = &f->src[index];
    (void)err;
    if (t->f32) {
        const float *v = t->f32 + start;
        if (t->dt == DTYPE_F32) memcpy(out, v, (size_t)count * sizeof(float));
        else if (t->dt == DTYPE_BF16)
            for (int64_t k = 0; k < count; k++) ((uint16_t *)out)[k] = f32_to_bf16_one(v[k]);
        else
            for (int64_t k = 0; k < count; k++) ((uint16_t *)out)[k] = f32_to_f16_one(v[k]);
    } else if (t->mod) {
        lora_merge_range(f->a, t->mod, t->dt, t->raw, start, count, out);
    } else {
        const size_t es = (size_t)dtype_bits(t->dt) / 8;
        memcpy(out, t->raw + (size_t)start * es, (size_t)count * es);
    }
    return ERGO_OK;
}

ergo_status model_write_safetensors(const char *path, const model *m,
                                   const float *const *f32_values, const lora_adapter *a,
                                   ergo_error *err) {
    const int n = weights_spec(&m->config, NULL, NULL);
    weight_spec *sp = malloc(sizeof *sp * (size_t)n);
    st_write_entry *ent = malloc(sizeof *ent * (size_t)n);
    tensor_src *src = calloc((size_t)n, sizeof *src);
    char(*names)[160] = malloc(sizeof *names * (size_t)n);
    ergo_status s = ERGO_OK;
    if (!sp || !ent || !src || !names) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", path);
        goto done;
    }
    weights_spec(&m->config, sp, (model_weights *)&m->weights); /* slots are only read */
    for (int i = 0; i < n; i++) {
        const tensor *t = &sp[i].slot->t;
        const float *v = f32_values ? f32_values[i] : NULL;
        if (!dtype_is_weight(t->dtype)) {
            s = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: tensor `%s' is stored as %s", path,
                          sp[i].name, dtype_name(t->dtype));
            goto done;
        }
        if (!v && !t->data && sp[i].numel > 0) {
            s = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: the stored values of tensor `%s' were "
                          "released (a quantised model): cannot write it", path, sp[i].name);
            goto done;
        }
        weights_layout_name(names[i], sizeof names[i], sp[i].name, m->names);
        ent[i].name = names[i];
        ent[i].dtype = t->dtype;
        ent[i].n_dims = sp[i].n_dims;
        memset(ent[i].shape, 0, sizeof ent[i].shape);
        memcpy(ent[i].shape, sp[i].shape, sizeof sp[i].shape);
        src[i].dt = t->dtype;
        src[i].raw = t->data;
        src[i].f32 = v;
    }
    for (int k = 0; a && k < a->n_modules; k++) {
        const lora_module *lm = &a->modules[k];
        const int i = lm->spec_index;
        if (i < 0 || i >= n || strcmp(sp[i].name, lm->weight) || sp[i].shape[0] != lm->out ||
            sp[i].fan_in != lm->in || src[i].f32) {
            s = ergo_fail(err, ERGO_E_ARG, "%s: the adapter was checked against another model "
                          "(`%s')", a->dir, lm->weight);
            goto done;
        }
        src[i].mod = lm;
    }
    static const st_metadata_entry meta[1] = {{"format", "pt"}};
    fill_ctx fc = {a, src};
    s = safetensors_write(path, ent, n, meta, 1, fill, &fc, err);
    if (!s) s = path_fsync(path, err);
done:
    free(sp);
    free(ent);
    free(src);
    free(names);
    return s;
}

/* ---- the directory ---- */

ergo_status model_save_dir(const model *m, const lora_adapter *a, const char *src_dir,
                           const char *out_dir, int replace, ergo_error *err) {
    struct stat sb;
    const int exists = lstat(out_dir, &sb) == 0;
    if (exists && !S_ISDIR(sb.st_mode))
        return ergo_fail(err, ERGO_E_ARG, "%s exists and is not a directory", out_dir);
    if (exists && !replace)
        return ergo_fail(err, ERGO_E_ARG, "%s exists (--force replaces it)", out_dir);
    char tmp[2048], parent[2048];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid()) >= (int)sizeof tmp)
        return ergo_fail(err, ERGO_E_ARG, "path too long: %s", out_dir);
    parent_of(parent, sizeof parent, out_dir);
    if (!dir_exists(parent))
        return ergo_fail(err, ERGO_E_IO, "%s: no such directory (the parent of %s)", parent,
                         out_dir);
    if (dir_exists(tmp)) remove_tree(tmp); /* our own earlier attempt */
    if (mkdir(tmp, 0755) != 0)
        return ergo_fail(err, ERGO_E_IO, "%s: cannot create directory: %s", tmp, strerror(errno));
    ergo_status s;
    char path[2048];
    if ((s = path_join(path, sizeof path, tmp, "model.safetensors", err)) ||
        (s = model_write_safetensors(path, m, NULL, a, err)) ||
        (s = model_copy_files(tmp, m, src_dir, 1, err)) || (s = path_fsync(tmp, err)))
        goto fail;
    if (exists) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out_dir, RENAME_EXCHANGE) != 0) {
            s = ergo_fail(err, ERGO_E_IO, "%s: cannot replace with %s: %s", out_dir, tmp,
                          strerror(errno));
            goto fail;
        }
        remove_tree(tmp); /* now the old directory */
    } else if (rename(tmp, out_dir) != 0) {
        s = ergo_fail(err, ERGO_E_IO, "%s: cannot rename to %s: %s", tmp, out_dir, strerror(errno));
        goto fail;
    }
    return path_fsync(parent, err);
fail:
    remove_tree(tmp);
    return s;
}
