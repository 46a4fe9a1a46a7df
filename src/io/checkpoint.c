/*
 * checkpoint.c - open a checkpoint directory: config files, index, shards.
 *
 * Mirrors the local-directory path of PreTrainedModel.from_pretrained
 * (transformers 4.56.2, modeling_utils.py `_get_resolved_checkpoint_files` and
 * utils/hub.py `get_checkpoint_shard_files`): model.safetensors.index.json wins
 * over model.safetensors; its weight_map names the shard of each tensor. The
 * reference only reads the shards the index names; we also refuse a tensor that
 * is not where the index says, so a stale index cannot silently change weights.
 */
#include "checkpoint.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"

const char *checkpoint_file_name(const checkpoint *ck, int i) {
    const char *p = ck->files[i].path;
    const char *slash = strrchr(p, '/');
    return slash ? slash + 1 : p;
}

ergo_status checkpoint_adopt(checkpoint *ck, void *buf, ergo_error *err) {
    if (ck->n_owned == ck->cap_owned) {
        int cap = ck->cap_owned ? ck->cap_owned * 2 : 16;
        void **p = realloc(ck->owned, sizeof *p * (size_t)cap);
        if (!p) {
            free(buf);
            return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        }
        ck->owned = p;
        ck->cap_owned = cap;
    }
    ck->owned[ck->n_owned++] = buf;
    return ERGO_OK;
}

void checkpoint_close(checkpoint *ck) {
    if (!ck) return;
    for (int i = 0; i < ck->n_files; i++) safetensors_close(&ck->files[i]);
    free(ck->files);
    free(ck->tensors);
    free(ck->file_of);
    free(ck->by_name);
    for (int i = 0; i < ck->n_owned; i++) free(ck->owned[i]);
    free(ck->owned);
    if (ck->config) json_decref(ck->config);
    if (ck->generation) json_decref(ck->generation);
    free(ck->dir);
    memset(ck, 0, sizeof *ck);
}

static int cmp_tensor_names(const void *a, const void *b) {
    return strcmp((*(const tensor *const *)a)->name, (*(const tensor *const *)b)->name);
}

ergo_status checkpoint_build_index(checkpoint *ck, const char *what, ergo_error *err) {
    free(ck->by_name);
    ck->by_name = malloc(sizeof *ck->by_name * (size_t)(ck->n_tensors ? ck->n_tensors : 1));
    if (!ck->by_name) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    ck->tensor_bytes = 0;
    for (int i = 0; i < ck->n_tensors; i++) {
        ck->by_name[i] = &ck->tensors[i];
        ck->tensor_bytes += ck->tensors[i].nbytes;
    }
    qsort(ck->by_name, (size_t)ck->n_tensors, sizeof *ck->by_name, cmp_tensor_names);
    for (int i = 1; i < ck->n_tensors; i++)
        if (!strcmp(ck->by_name[i - 1]->name, ck->by_name[i]->name)) {
            const tensor *a = ck->by_name[i - 1], *b = ck->by_name[i];
            int fa = ck->file_of ? ck->file_of[a - ck->tensors] : -1;
            int fb = ck->file_of ? ck->file_of[b - ck->tensors] : -1;
            if (fa >= 0 && fb >= 0)
                return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' is stored twice (in %s and %s)",
                                 what, a->name, checkpoint_file_name(ck, fa),
                                 checkpoint_file_name(ck, fb));
            return ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' is stored twice", what, a->name);
        }
    return ERGO_OK;
}

const tensor *checkpoint_find(const checkpoint *ck, const char *name) {
    int lo = 0, hi = ck->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->by_name[mid]->name, name);
        if (c == 0) return ck->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

/* A shard name from the index must stay inside the directory. */
static int plain_file_name(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Gathers every tensor of every file into ck->tensors; copies misaligned ones. */
static ergo_status gather_tensors(checkpoint *ck, ergo_error *err) {
    int total = 0;
    for (int f = 0; f < ck->n_files; f++) total += ck->files[f].n_tensors;
    ck->tensors = calloc((size_t)(total ? total : 1), sizeof *ck->tensors);
    ck->file_of = calloc((size_t)(total ? total : 1), sizeof *ck->file_of);
    if (!ck->tensors || !ck->file_of) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", ck->dir);
    for (int f = 0; f < ck->n_files; f++)
        for (int i = 0; i < ck->files[f].n_tensors; i++) {
            tensor *t = &ck->tensors[ck->n_tensors];
            *t = ck->files[f].tensors[i];
            ck->file_of[ck->n_tensors++] = f;
            /* Files from other writers may leave the data of a tensor misaligned for
             * its element type (the crate pads headers to 8, nothing forces others to).
             * Kernels read weights as typed arrays, so such a tensor gets an aligned copy. */
            size_t esize = (size_t)(dtype_bits(t->dtype) / 8);
            if (t->nbytes && esize > 1 && (uintptr_t)t->data % esize != 0) {
                void *copy = malloc(t->nbytes);
                if (!copy) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", ck->dir);
                memcpy(copy, t->data, t->nbytes);
                t->data = copy;
                ck->n_copies++;
                ergo_status s = checkpoint_adopt(ck, copy, err);
                if (s) return s;
            }
        }
    return checkpoint_build_index(ck, ck->dir, err);
}

static ergo_status open_sharded(checkpoint *ck, const char *index_path, ergo_error *err) {
    ergo_status s = ERGO_OK;
    json_t *idx = json_load_path(index_path, err);
    const char **names = NULL;
    if (!idx) return err ? err->code : ERGO_E_FORMAT;
    const json_t *wm = json_is_object(idx) ? json_object_get(idx, "weight_map") : NULL;
    if (!wm || !json_is_object(wm)) {
        s = ergo_fail(err, ERGO_E_FORMAT, "%s: weight_map is missing or not an object",
                      index_path);
        goto done;
    }
    /* the distinct shard names, sorted (transformers sorts them too) */
    size_t n_map = json_object_size(wm);
    names = calloc(n_map ? n_map : 1, sizeof *names);
    if (!names) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    size_t n_names = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)wm, key, val) {
        if (!json_is_string(val) || !plain_file_name(json_string_value(val))) {
            s = ergo_fail(err, ERGO_E_FORMAT,
                          "%s: weight_map entry of `%s' is not a file name in the directory",
                          index_path, key);
            goto done;
        }
        names[n_names++] = json_string_value(val);
    }
    qsort(names, n_names, sizeof *names, cmp_str);
    size_t n_unique = 0;
    for (size_t i = 0; i < n_names; i++)
        if (n_unique == 0 || strcmp(names[n_unique - 1], names[i]) != 0) names[n_unique++] = names[i];

    ck->files = calloc(n_unique ? n_unique : 1, sizeof *ck->files);
    if (!ck->files) {
        s = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < n_unique; i++) {
        char path[1024];
        if ((s = path_join(path, sizeof path, ck->dir, names[i], err))) goto done;
        if (!file_exists(path)) {
            s = ergo_fail(err, ERGO_E_IO, "%s: names shard %s, which does not exist (%s)",
                          index_path, names[i], path);
            goto done;
        }
        if ((s = safetensors_open(&ck->files[i], path, err))) goto done;
        ck->n_files++;
    }
    if ((s = gather_tensors(ck, err))) goto done;

    /* every tensor where the index says, and every stored tensor listed */
    json_object_foreach((json_t *)wm, key, val) {
        const tensor *t = checkpoint_find(ck, key);
        if (!t) {
            s = ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' is not in %s, where the index puts it",
                          index_path, key, json_string_value(val));
            goto done;
        }
        int f = ck->file_of[t - ck->tensors];
        if (strcmp(checkpoint_file_name(ck, f), json_string_value(val)) != 0) {
            s = ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' is in %s, but the index puts it in %s",
                          index_path, key, checkpoint_file_name(ck, f), json_string_value(val));
            goto done;
        }
    }
    for (int i = 0; i < ck->n_tensors; i++)
        if (!json_object_get(wm, ck->tensors[i].name)) {
            s = ergo_fail(err, ERGO_E_FORMAT, "%s: tensor `%s' in %s is not listed in the index",
                          index_path, ck->tensors[i].name,
                          checkpoint_file_name(ck, ck->file_of[i]));
            goto done;
        }
done:
    free(names);
    json_decref(idx);
    return s;
}

ergo_status checkpoint_open(checkpoint *ck, const char *dir, ergo_error *err) {
    memset(ck, 0, sizeof *ck);
    ergo_status s;
    ck->dir = strdup(dir);
    if (!ck->dir) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (!dir_exists(dir)) {
        s = ergo_fail(err, ERGO_E_IO, "%s: not a directory", dir);
        goto fail;
    }
    if ((s = path_join(ck->config_path, sizeof ck->config_path, dir, "config.json", err))) goto fail;
    if (!file_exists(ck->config_path)) {
        s = ergo_fail(err, ERGO_E_IO, "%s: missing (not a checkpoint directory?)", ck->config_path);
        goto fail;
    }
    if (!(ck->config = json_load_path(ck->config_path, err))) {
        s = err ? err->code : ERGO_E_FORMAT;
        goto fail;
    }
    if ((s = path_join(ck->generation_path, sizeof ck->generation_path, dir,
                       "generation_config.json", err)))
        goto fail;
    if (file_exists(ck->generation_path) &&
        !(ck->generation = json_load_path(ck->generation_path, err))) {
        s = err ? err->code : ERGO_E_FORMAT;
        goto fail;
    }

    char index_path[1024], single_path[1024];
    if ((s = path_join(index_path, sizeof index_path, dir, "model.safetensors.index.json", err)))
        goto fail;
    if ((s = path_join(single_path, sizeof single_path, dir, "model.safetensors", err))) goto fail;
    if (file_exists(index_path)) {
        ck->sharded = 1;
        if ((s = open_sharded(ck, index_path, err))) goto fail;
    } else if (file_exists(single_path)) {
        ck->files = calloc(1, sizeof *ck->files);
        if (!ck->files) {
            s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
            goto fail;
        }
        if ((s = safetensors_open(&ck->files[0], single_path, err))) goto fail;
        ck->n_files = 1;
        if ((s = gather_tensors(ck, err))) goto fail;
    } else {
        s = ergo_fail(err, ERGO_E_IO,
                      "%s: no model.safetensors and no model.safetensors.index.json", dir);
        goto fail;
    }
    return ERGO_OK;
fail:
    checkpoint_close(ck);
    return s;
}
