/*
 * run_log.c - a training run's log, curves and terminal helpers (run_log.h).
 */
#include "run_log.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"

/* Keeps the log's records up to `step`, rewriting it whole (temporary + rename). */
static ergo_status log_truncate(const char *path, int64_t step, ergo_error *err) {
    char *buf = NULL;
    size_t size = 0;
    if (!file_exists(path)) return ERGO_OK;
    ergo_status s = file_read_all(path, (size_t)1 << 31, &buf, &size, err);
    if (s) return s;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(buf);
        return ergo_fail(err, ERGO_E_IO, "cannot write %s: %s", tmp, strerror(errno));
    }
    for (size_t a = 0; a < size;) {
        size_t b = a;
        while (b < size && buf[b] != '\n') b++;
        if (b == size) break; /* a torn last line: dropped */
        json_t *j = json_loadb(buf + a, b - a, 0, NULL);
        const json_t *st = j ? json_object_get(j, "step") : NULL;
        if (json_is_integer(st) && json_integer_value(st) <= step) fwrite(buf + a, 1, b - a + 1, f);
        json_decref(j);
        a = b + 1;
    }
    free(buf);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0)
        return ergo_fail(err, ERGO_E_IO, "cannot rewrite %s: %s", path, strerror(errno));
    return ERGO_OK;
}

ergo_status run_log_open(run_log *lg, const char *path, int64_t resumed_step, ergo_error *err) {
    lg->fd = -1;
    if (snprintf(lg->path, sizeof lg->path, "%s", path) >= (int)sizeof lg->path)
        return ergo_fail(err, ERGO_E_ARG, "log path too long: %.100s", path);
    if (resumed_step >= 0) {
        ergo_status s = log_truncate(path, resumed_step, err);
        if (s) return s;
    }
    lg->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | (resumed_step >= 0 ? 0 : O_TRUNC), 0644);
    if (lg->fd < 0) return ergo_fail(err, ERGO_E_IO, "cannot open %s: %s", path, strerror(errno));
    return ERGO_OK;
}

ergo_status run_log_write(run_log *lg, json_t *rec, ergo_error *err) {
    ergo_status s = ERGO_OK;
    if (lg->fd >= 0) {
        char *txt = rec ? json_dumps(rec, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
        if (!txt) s = ergo_fail(err, ERGO_E_NOMEM, "cannot format a log record");
        size_t n = txt ? strlen(txt) : 0, off = 0;
        if (txt) txt[n++] = '\n'; /* json_dumps leaves room: its NUL */
        while (!s && off < n) {
            ssize_t w = write(lg->fd, txt + off, n - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) s = ergo_fail(err, ERGO_E_IO, "cannot write %s: %s", lg->path, strerror(errno));
            else off += (size_t)w;
        }
        if (!s && fsync(lg->fd) != 0)
            s = ergo_fail(err, ERGO_E_IO, "cannot fsync %s: %s", lg->path, strerror(errno));
        free(txt);
    }
    json_decref(rec);
    return s;
}

void run_log_close(run_log *lg) {
    if (lg->fd >= 0) close(lg->fd);
    lg->fd = -1;
}

void run_curve_add(run_curve *c, double x, double y) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 256;
        double *nx = realloc(c->x, sizeof(double) * (size_t)cap), *ny = NULL;
        if (nx) c->x = nx;
        if (nx) ny = realloc(c->y, sizeof(double) * (size_t)cap);
        if (!nx || !ny) return;
        c->y = ny, c->cap = cap;
    }
    c->x[c->n] = x, c->y[c->n] = y, c->n++;
}

void run_curve_free(run_curve *c) {
    free(c->x);
    free(c->y);
    memset(c, 0, sizeof *c);
}

ergo_status run_mkdir_p(const char *dir, ergo_error *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return ergo_fail(err, ERGO_E_ARG, "--out %s: path too long", dir);
    for (char *p = buf + 1;; p++) {
        const int end = *p == 0;
        if (*p == '/' || end) {
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return ergo_fail(err, ERGO_E_IO, "cannot create %s: %s", buf, strerror(errno));
            if (end) break;
            *p = '/';
        }
    }
    return ERGO_OK;
}

void run_format_eta(char *buf, size_t n, double seconds) {
    if (!(seconds >= 0) || seconds > 1e8) snprintf(buf, n, "?");
    else if (seconds >= 3600) snprintf(buf, n, "%dh%02dm", (int)(seconds / 3600), (int)fmod(seconds / 60, 60));
    else snprintf(buf, n, "%dm%02ds", (int)(seconds / 60), (int)fmod(seconds, 60));
}

const char *run_nonfinite_grad(const train_model *tm) {
    for (int i = 0; i < tm->n_opt; i++)
        for (size_t j = 0; j < tm->opt[i].n; j++)
            if (!isfinite(tm->opt[i].g[j])) return tm->params[i].name;
    return NULL;
}
