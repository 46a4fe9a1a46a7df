/*
 * judge_cache.c - the judge's answers by (crop hash, question), with an append-only
 * JSONL file (judge_cache.h).
 */
#include "train/judge_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/file.h"
#include "base/sha256.h"

struct judge_cache {
    pthread_mutex_t mu;
    json_t *map;        /* key -> answer string */
    char *id;           /* the judge whose answers count */
    char *path;         /* NULL: memory only */
    int fd;             /* -1: memory only */
    int64_t loaded, foreign;
};

void judge_cache_key(const image *crop, const char *question, char key[JUDGE_KEY_SIZE]) {
    uint8_t dims[8];
    uint32_t w = (uint32_t)crop->width, h = (uint32_t)crop->height;
    for (int i = 0; i < 4; i++) dims[i] = (uint8_t)(w >> (8 * i)), dims[4 + i] = (uint8_t)(h >> (8 * i));
    const void *parts[2] = {dims, crop->rgb};
    size_t sizes[2] = {sizeof dims, (size_t)crop->width * (size_t)crop->height * 3};
    sha256_hex_parts(parts, sizes, 2, key);
    key[64] = '.';
    sha256_hex(question, strlen(question), key + 65);
}

/* Reads the file's lines of this judge into the map; *good_len = the bytes up to the
 * last complete line (a torn tail is cut off by the caller). */
static ergo_status load(judge_cache *jc, long *good_len, ergo_error *err) {
    *good_len = 0;
    if (!file_exists(jc->path)) return ERGO_OK;
    char *data = NULL;
    size_t size = 0;
    ergo_status s = file_read_all(jc->path, (size_t)1 << 34, &data, &size, err);
    if (s) return s;
    size_t pos = 0;
    int line_no = 0;
    while (!s && pos < size) {
        char *nl = memchr(data + pos, '\n', size - pos);
        size_t end = nl ? (size_t)(nl - data) : size;
        line_no++;
        if (!nl) break; /* a torn write: the last line, cut before its newline */
        if (end == pos) { pos = end + 1; *good_len = (long)pos; continue; }
        json_error_t je;
        json_t *j = json_loadb(data + pos, end - pos, 0, &je);
        const char *id = json_string_value(json_object_get(j, "judge"));
        const char *crop = json_string_value(json_object_get(j, "crop"));
        const char *q = json_string_value(json_object_get(j, "question_sha256"));
        json_t *ans = json_object_get(j, "answer");
        if (!id || !crop || !q || !json_is_string(ans) || strlen(crop) != 64 || strlen(q) != 64) {
            s = ergo_fail(err, ERGO_E_FORMAT, "%s line %d: not a judge cache record%s%s", jc->path, line_no,
                          j ? "" : ": ", j ? "" : je.text);
        } else if (strcmp(id, jc->id)) {
            jc->foreign++;
        } else {
            char key[JUDGE_KEY_SIZE];
            snprintf(key, sizeof key, "%s.%s", crop, q);
            if (!json_object_get(jc->map, key)) {
                if (json_object_set(jc->map, key, ans)) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
                else jc->loaded++;
            }
        }
        json_decref(j);
        pos = end + 1;
        *good_len = (long)pos;
    }
    free(data);
    return s;
}

ergo_status judge_cache_open(judge_cache **out, const char *path, const char *judge_id, ergo_error *err) {
    *out = NULL;
    judge_cache *jc = calloc(1, sizeof *jc);
    if (!jc) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    jc->fd = -1;
    pthread_mutex_init(&jc->mu, NULL);
    jc->map = json_object();
    jc->id = strdup(judge_id ? judge_id : "");
    if (path) jc->path = strdup(path);
    ergo_status s = ERGO_OK;
    if (!jc->map || !jc->id || (path && !jc->path)) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (!s && path) {
        long good = 0;
        s = load(jc, &good, err);
        if (!s) {
            jc->fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0666);
            if (jc->fd < 0 || ftruncate(jc->fd, good) != 0) /* drops a torn last line */
                s = ergo_fail(err, ERGO_E_IO, "cannot open the judge cache %s: %s", path, strerror(errno));
        }
    }
    if (s) {
        judge_cache_close(jc);
        return s;
    }
    *out = jc;
    return ERGO_OK;
}

void judge_cache_close(judge_cache *jc) {
    if (!jc) return;
    if (jc->fd >= 0) close(jc->fd);
    json_decref(jc->map);
    free(jc->id);
    free(jc->path);
    pthread_mutex_destroy(&jc->mu);
    free(jc);
}

int judge_cache_get(judge_cache *jc, const char *key, char **answer) {
    *answer = NULL;
    pthread_mutex_lock(&jc->mu);
    const char *a = json_string_value(json_object_get(jc->map, key));
    int r = 0;
    if (a) r = (*answer = strdup(a)) ? 1 : -1;
    pthread_mutex_unlock(&jc->mu);
    return r;
}

static ergo_status append_line(judge_cache *jc, const char *key, const char *question, json_t *ans,
                               ergo_error *err) {
    char crop[65], q[65];
    memcpy(crop, key, 64), crop[64] = 0;
    memcpy(q, key + 65, 64), q[64] = 0;
    json_t *rec = json_pack("{s:s, s:s, s:s, s:O}", "judge", jc->id, "crop", crop, "question_sha256", q,
                            "answer", ans);
    if (!rec) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    json_t *qs = json_string(question); /* NULL when not UTF-8: the hash alone is the key */
    if (qs) json_object_set_new(rec, "question", qs);
    char *txt = json_dumps(rec, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(rec);
    if (!txt) return ergo_fail(err, ERGO_E_NOMEM, "cannot format a judge cache record");
    size_t n = strlen(txt);
    txt[n] = '\n'; /* json_dumps leaves room: its NUL */
    size_t off = 0;
    while (off < n + 1) {
        ssize_t w = write(jc->fd, txt + off, n + 1 - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            free(txt);
            return ergo_fail(err, ERGO_E_IO, "cannot write %s: %s", jc->path, strerror(errno));
        }
        off += (size_t)w;
    }
    free(txt);
    if (fsync(jc->fd) != 0) return ergo_fail(err, ERGO_E_IO, "cannot fsync %s: %s", jc->path, strerror(errno));
    return ERGO_OK;
}

ergo_status judge_cache_put(judge_cache *jc, const char *key, const char *question, const char *answer,
                            ergo_error *err) {
    json_t *ans = json_string(answer);
    if (!ans) return ERGO_OK; /* not UTF-8 (decoded text and JSON strings always are): not kept */
    ergo_status s = ERGO_OK;
    pthread_mutex_lock(&jc->mu);
    if (!json_object_get(jc->map, key)) {
        if (json_object_set(jc->map, key, ans)) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        else if (jc->fd >= 0) s = append_line(jc, key, question, ans, err);
    }
    pthread_mutex_unlock(&jc->mu);
    json_decref(ans);
    return s;
}

int64_t judge_cache_loaded(const judge_cache *jc) { return jc->loaded; }
int64_t judge_cache_foreign(const judge_cache *jc) { return jc->foreign; }

int64_t judge_cache_size(judge_cache *jc) {
    pthread_mutex_lock(&jc->mu);
    int64_t n = (int64_t)json_object_size(jc->map);
    pthread_mutex_unlock(&jc->mu);
    return n;
}
