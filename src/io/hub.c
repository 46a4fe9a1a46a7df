/*
 * hub.c - checkpoints from the Hugging Face hub (see hub.h for the cache layout).
 *
 * Mirrors huggingface_hub 0.36 file_download.py: for each file a HEAD request on
 * `<endpoint>/<repo>/resolve/<revision>/<file>` (no redirect followed except relative
 * ones) gives the commit (X-Repo-Commit), the blob name (X-Linked-Etag, else ETag,
 * quotes and W/ stripped), the size (X-Linked-Size, else Content-Length) and, for LFS
 * files, the CDN location to GET. The first file pins the commit: later files are
 * requested at that commit, as snapshot_download does, so one snapshot never mixes
 * two pushes. What we add: the SHA-256 of an LFS download is checked against its
 * etag, downloads resume from `<blob>.incomplete`, transient failures are retried
 * with backoff, and every safetensors file must parse and hold what the index says.
 */
#include "hub.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "base/file.h"
#include "base/json.h"
#include "base/sha256.h"
#include "io/safetensors.h"

#define HUB_PATH 4096
#define HUB_MAX_ATTEMPTS 5
#define HUB_BACKOFF_MS 250 /* doubled after each failed attempt */

/* The files of a Qwen2.5-VL checkpoint ergo reads; weights are handled apart. */
static const struct {
    const char *name;
    int optional;
} hub_files[] = {
    {"config.json", 0},          {"generation_config.json", 1}, {"tokenizer.json", 0},
    {"tokenizer_config.json", 0}, {"preprocessor_config.json", 0}, {"chat_template.json", 1},
};
#define N_HUB_FILES (sizeof hub_files / sizeof hub_files[0])
#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

typedef struct hub_ctx {
    char endpoint[512];    /* no trailing slash */
    char repo[200];        /* owner/name */
    char revision[256];    /* as asked (branch, tag or commit) */
    char commit[256];      /* pinned by the first response; empty before */
    char token[1024];      /* empty = anonymous */
    char cache[HUB_PATH];  /* the cache root */
    char repo_dir[HUB_PATH];
    char lock_dir[HUB_PATH];
    CURL *curl;
    int progress;          /* draw a progress bar on stderr */
} hub_ctx;

/* ---------------------------------------------------------------- names and paths */

static int repo_char_ok(char c) {
    return isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.';
}

/* huggingface_hub's validate_repo_id: [\w\-.]+ on each side, no "--" or "..", at
 * most 96 characters, neither part starting or ending with '-' or '.'. */
static int repo_part_ok(const char *s, size_t n) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (!repo_char_ok(s[i])) return 0;
    if (s[0] == '-' || s[0] == '.' || s[n - 1] == '-' || s[n - 1] == '.') return 0;
    for (size_t i = 0; i + 1 < n; i++)
        if ((s[i] == '-' && s[i + 1] == '-') || (s[i] == '.' && s[i + 1] == '.')) return 0;
    return 1;
}

/* A revision or a file name inside the repo: relative, no "." / ".." / empty parts
 * (they become paths under refs/ and snapshots/). */
static int rel_path_ok(const char *s) {
    if (!*s || *s == '/' || strlen(s) > 255 || strchr(s, '\\')) return 0;
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return 0;
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)p[i] < 0x20) return 0;
        if (!e) return 1;
        p = e + 1;
    }
}

static int split_repo_arg(const char *arg, char *repo, size_t repo_size, char *rev, size_t rev_size) {
    const char *at = strchr(arg, '@');
    size_t n = at ? (size_t)(at - arg) : strlen(arg);
    const char *slash = memchr(arg, '/', n);
    if (!slash || n > 96 || n >= repo_size) return 0;
    size_t owner = (size_t)(slash - arg);
    if (!repo_part_ok(arg, owner) || !repo_part_ok(slash + 1, n - owner - 1)) return 0;
    const char *r = at ? at + 1 : "main";
    if (!rel_path_ok(r) || strlen(r) >= rev_size) return 0;
    memcpy(repo, arg, n);
    repo[n] = '\0';
    snprintf(rev, rev_size, "%s", r);
    return 1;
}

int hub_is_repo_id(const char *s) {
    char repo[200], rev[256];
    return s && split_repo_arg(s, repo, sizeof repo, rev, sizeof rev);
}

static int env_true(const char *name) {
    const char *v = getenv(name);
    if (!v) return 0;
    return !strcasecmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") ||
           !strcasecmp(v, "true");
}

static int nonempty_env(const char *name, const char **out) {
    const char *v = getenv(name);
    if (v && *v) {
        *out = v;
        return 1;
    }
    return 0;
}

ergo_status hub_cache_dir(char *out, size_t out_size, ergo_error *err) {
    const char *v;
    int n;
    if (nonempty_env("HF_HUB_CACHE", &v)) n = snprintf(out, out_size, "%s", v);
    else if (nonempty_env("HF_HOME", &v)) n = snprintf(out, out_size, "%s/hub", v);
    else if (nonempty_env("XDG_CACHE_HOME", &v)) n = snprintf(out, out_size, "%s/huggingface/hub", v);
    else if (nonempty_env("HOME", &v)) n = snprintf(out, out_size, "%s/.cache/huggingface/hub", v);
    else
        return ergo_fail(err, ERGO_E_ARG,
                         "no cache directory for hub downloads: set HF_HOME (or HF_HUB_CACHE)");
    if (n < 0 || (size_t)n >= out_size)
        return ergo_fail(err, ERGO_E_LIMIT, "hub cache path too long");
    return ERGO_OK;
}

/* The token: HF_TOKEN, else the file huggingface-cli login writes ($HF_TOKEN_PATH,
 * else $HF_HOME/token, else ~/.cache/huggingface/token). */
static void read_token(char *out, size_t size) {
    out[0] = '\0';
    const char *v;
    if (nonempty_env("HF_TOKEN", &v)) {
        snprintf(out, size, "%s", v);
        return;
    }
    char path[HUB_PATH];
    if (nonempty_env("HF_TOKEN_PATH", &v)) snprintf(path, sizeof path, "%s", v);
    else if (nonempty_env("HF_HOME", &v)) snprintf(path, sizeof path, "%s/token", v);
    else if (nonempty_env("XDG_CACHE_HOME", &v)) snprintf(path, sizeof path, "%s/huggingface/token", v);
    else if (nonempty_env("HOME", &v)) snprintf(path, sizeof path, "%s/.cache/huggingface/token", v);
    else return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(out, (int)size, f)) out[0] = '\0';
    fclose(f);
    size_t n = strlen(out);
    while (n && isspace((unsigned char)out[n - 1])) out[--n] = '\0';
}

static ergo_status mkdir_p(const char *path, ergo_error *err) {
    char buf[HUB_PATH];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return ergo_fail(err, ERGO_E_IO, "%s: cannot create directory: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return ERGO_OK;
}

static ergo_status mkdir_parent(const char *path, ergo_error *err) {
    char buf[HUB_PATH];
    snprintf(buf, sizeof buf, "%s", path);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf) return ERGO_OK;
    *slash = '\0';
    return mkdir_p(buf, err);
}

/* snprintf into a path buffer; 0 when it does not fit (callers treat that as missing). */
static int pathf(char *out, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < size;
}

#define PATHF(buf, err, ...)                                                                 \
    do {                                                                                     \
        if (!pathf((buf), sizeof(buf), __VA_ARGS__))                                         \
            return ergo_fail((err), ERGO_E_LIMIT, "path too long for the hub cache: %s", buf); \
    } while (0)

static int is_hex(const char *s, size_t n) {
    if (strlen(s) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i])) return 0;
    return 1;
}

/* ---------------------------------------------------------------- the cache */

/* The commit a revision points to in the cache: refs/<revision>, or the revision
 * itself when a snapshot of that name exists (a commit hash). 0 if unknown. */
static int cached_commit(const hub_ctx *h, char *commit, size_t size) {
    char path[HUB_PATH];
    if (!pathf(path, sizeof path, "%s/refs/%s", h->repo_dir, h->revision)) return 0;
    FILE *f = fopen(path, "r");
    if (f) {
        int ok = fgets(commit, (int)size, f) != NULL;
        fclose(f);
        size_t n = ok ? strlen(commit) : 0;
        while (n && isspace((unsigned char)commit[n - 1])) commit[--n] = '\0';
        if (n && rel_path_ok(commit)) return 1;
    }
    if (!pathf(path, sizeof path, "%s/snapshots/%s", h->repo_dir, h->revision)) return 0;
    if (dir_exists(path)) {
        snprintf(commit, size, "%s", h->revision);
        return 1;
    }
    return 0;
}

static int snap_has(const hub_ctx *h, const char *commit, const char *file) {
    char path[HUB_PATH];
    if (!pathf(path, sizeof path, "%s/snapshots/%s/%s", h->repo_dir, commit, file)) return 0;
    return file_exists(path); /* stat follows the symlink: a dangling link is missing */
}

static int no_exist(const hub_ctx *h, const char *commit, const char *file) {
    char path[HUB_PATH];
    if (!pathf(path, sizeof path, "%s/.no_exist/%s/%s", h->repo_dir, commit, file)) return 0;
    return file_exists(path);
}

/* Reads an index's weight_map; returns the parsed JSON (caller decrefs) or NULL. */
static json_t *load_index(const char *path, ergo_error *err) {
    json_t *root = json_load_path(path, err);
    if (!root) return NULL;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        ergo_fail(err, ERGO_E_FORMAT, "%s: no \"weight_map\" object", path);
        json_decref(root);
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) {
        if (!json_is_string(v) || !rel_path_ok(json_string_value(v))) {
            ergo_fail(err, ERGO_E_FORMAT, "%s: tensor %s maps to an invalid shard name", path, k);
            json_decref(root);
            return NULL;
        }
    }
    return root;
}

/* 1 when snapshots/<commit> holds every file ergo needs. strict: the optional files
 * are there or known absent (.no_exist), so nothing would be asked of the hub. */
static int cache_complete(const hub_ctx *h, const char *commit, int strict) {
    for (size_t i = 0; i < N_HUB_FILES; i++) {
        if (snap_has(h, commit, hub_files[i].name)) continue;
        if (!hub_files[i].optional) return 0;
        if (strict && !no_exist(h, commit, hub_files[i].name)) return 0;
    }
    if (snap_has(h, commit, INDEX_NAME)) {
        char path[HUB_PATH];
        if (!pathf(path, sizeof path, "%s/snapshots/%s/%s", h->repo_dir, commit, INDEX_NAME)) return 0;
        ergo_error e = {0};
        json_t *root = load_index(path, &e);
        if (!root) return 0;
        int ok = 1;
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(root, "weight_map"), k, v) {
            if (!snap_has(h, commit, json_string_value(v))) {
                ok = 0;
                break;
            }
        }
        json_decref(root);
        return ok;
    }
    return snap_has(h, commit, SINGLE_NAME);
}

static ergo_status write_text(const char *path, const char *text, ergo_error *err) {
    ergo_status s = mkdir_parent(path, err);
    if (s) return s;
    return file_write_all(path, text, strlen(text), err);
}

/* ---------------------------------------------------------------- HTTP */

typedef struct http_meta {
    long status;
    char etag[256];         /* ETag, normalised */
    char linked_etag[256];  /* X-Linked-Etag, normalised */
    char commit[256];       /* X-Repo-Commit */
    char location[2048];
    char error_code[64];    /* X-Error-Code: RepoNotFound, EntryNotFound, GatedRepo, ... */
    char error_message[256];
    long long linked_size, content_length; /* -1 when absent */
    long long range_start;  /* first byte of a 206's Content-Range, -1 when absent */
} http_meta;

static void meta_reset(http_meta *m) {
    memset(m, 0, sizeof *m);
    m->linked_size = m->content_length = m->range_start = -1;
}

/* huggingface_hub's _normalize_etag: strips W/ and quotes. */
static void copy_etag(char *out, size_t size, const char *v) {
    if (!strncmp(v, "W/", 2)) v += 2;
    while (*v == '"') v++;
    snprintf(out, size, "%s", v);
    size_t n = strlen(out);
    while (n && out[n - 1] == '"') out[--n] = '\0';
}

static size_t on_header(char *buf, size_t sz, size_t nitems, void *ud) {
    http_meta *m = ud;
    size_t len = sz * nitems;
    char line[2304];
    size_t n = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, buf, n);
    line[n] = '\0';
    while (n && (line[n - 1] == '\r' || line[n - 1] == '\n' || line[n - 1] == ' ')) line[--n] = '\0';
    if (!strncmp(line, "HTTP/", 5)) { /* a new response (after a redirect or 100) */
        meta_reset(m);
        const char *sp = strchr(line, ' ');
        m->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        return len;
    }
    char *colon = strchr(line, ':');
    if (!colon) return len;
    *colon = '\0';
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    if (!strcasecmp(line, "ETag")) copy_etag(m->etag, sizeof m->etag, v);
    else if (!strcasecmp(line, "X-Linked-Etag")) copy_etag(m->linked_etag, sizeof m->linked_etag, v);
    else if (!strcasecmp(line, "X-Repo-Commit")) snprintf(m->commit, sizeof m->commit, "%s", v);
    else if (!strcasecmp(line, "Location")) snprintf(m->location, sizeof m->location, "%s", v);
    else if (!strcasecmp(line, "X-Error-Code")) snprintf(m->error_code, sizeof m->error_code, "%s", v);
    else if (!strcasecmp(line, "X-Error-Message"))
        snprintf(m->error_message, sizeof m->error_message, "%s", v);
    else if (!strcasecmp(line, "X-Linked-Size")) m->linked_size = strtoll(v, NULL, 10);
    else if (!strcasecmp(line, "Content-Length")) m->content_length = strtoll(v, NULL, 10);
    else if (!strcasecmp(line, "Content-Range") && !strncmp(v, "bytes ", 6))
        m->range_start = strtoll(v + 6, NULL, 10);
    return len;
}

static size_t discard_body(char *p, size_t sz, size_t n, void *ud) {
    return sz * n;
}

static void reset_curl(hub_ctx *h, http_meta *m, char *errbuf) {
    CURL *c = h->curl;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "ergo/0.1 (libcurl)");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
    /* no total timeout (a shard takes minutes); a stalled connection is cut instead */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 30L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, m);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    errbuf[0] = '\0';
    meta_reset(m);
}

static struct curl_slist *auth_headers(const hub_ctx *h, const char *url) {
    /* the token goes to the endpoint only, never to a CDN it redirects to */
    if (!h->token[0] || strncmp(url, h->endpoint, strlen(h->endpoint))) return NULL;
    char line[1100];
    snprintf(line, sizeof line, "Authorization: Bearer %s", h->token);
    return curl_slist_append(NULL, line);
}

static int transient_curl(CURLcode rc) {
    return rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR ||
           rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_GOT_NOTHING ||
           rc == CURLE_HTTP2 || rc == CURLE_HTTP2_STREAM;
}

static int transient_status(long st) {
    return st == 408 || st == 429 || st == 500 || st == 502 || st == 503 || st == 504;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static ergo_status no_network(const hub_ctx *h, CURLcode rc, const char *errbuf, ergo_error *err) {
    const char *name = strchr(h->repo, '/') + 1;
    return ergo_fail(err, ERGO_E_IO,
                     "cannot reach %s (%s): no network? Download the model elsewhere and pass its "
                     "directory: --model /path/to/%s",
                     h->endpoint, errbuf[0] ? errbuf : curl_easy_strerror(rc), name);
}

/* The one-line message for an HTTP error status on `file`. */
static ergo_status http_fail(const hub_ctx *h, const char *file, const http_meta *m, ergo_error *err) {
    const char *tok = h->token[0] ? "the token in HF_TOKEN was refused or lacks access"
                                  : "set HF_TOKEN to a token with access";
    const char *rev = h->commit[0] ? h->commit : h->revision;
    if (!strcmp(m->error_code, "GatedRepo") || (m->status == 403 && !m->error_code[0]))
        return ergo_fail(err, ERGO_E_IO,
                         "%s is a gated repository (HTTP %ld): accept its conditions on its hub page "
                         "and %s",
                         h->repo, m->status, tok);
    if (!strcmp(m->error_code, "RepoNotFound") || m->status == 401)
        return ergo_fail(err, ERGO_E_IO,
                         "%s: no such repository on %s, or it is private (HTTP %ld): check the name, "
                         "or %s; a local checkpoint is passed as --model DIR",
                         h->repo, h->endpoint, m->status, tok);
    if (!strcmp(m->error_code, "RevisionNotFound"))
        return ergo_fail(err, ERGO_E_IO, "%s has no revision `%s' (HTTP %ld)", h->repo, h->revision,
                         m->status);
    if (m->status == 404)
        return ergo_fail(err, ERGO_E_IO, "%s@%s has no %s (HTTP 404)", h->repo, rev, file);
    if (m->status == 403)
        return ergo_fail(err, ERGO_E_IO, "%s: access to %s refused (HTTP 403%s%s): %s", h->repo, file,
                         m->error_message[0] ? ": " : "", m->error_message, tok);
    return ergo_fail(err, ERGO_E_IO, "%s: %s: HTTP %ld from %s%s%s", h->repo, file, m->status,
                     h->endpoint, m->error_message[0] ? ": " : "", m->error_message);
}

/* HEAD on the resolve URL, following relative redirects only (renamed repos), as
 * huggingface_hub's get_hf_file_metadata. On success *m holds the final response
 * and download_url where the bytes are. */
static ergo_status head_file(hub_ctx *h, const char *file, http_meta *m, char *download_url,
                             size_t url_size, ergo_error *err) {
    /* as hf_hub_url: the revision quoted whole (refs/pr/1 -> refs%2Fpr%2F1), the
     * file name quoted segment by segment */
    char *esc_rev = curl_easy_escape(h->curl, h->commit[0] ? h->commit : h->revision, 0);
    char url[4096], errbuf[CURL_ERROR_SIZE];
    int n = snprintf(url, sizeof url, "%s/%s/resolve/%s/", h->endpoint, h->repo, esc_rev ? esc_rev : "");
    curl_free(esc_rev);
    for (const char *p = file; n >= 0 && (size_t)n < sizeof url;) {
        const char *e = strchr(p, '/');
        int len = e ? (int)(e - p) : (int)strlen(p);
        char *seg = curl_easy_escape(h->curl, p, len);
        if (!seg) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", file);
        n += snprintf(url + n, sizeof url - (size_t)n, "%s%s", seg, e ? "/" : "");
        curl_free(seg);
        if (!e) break;
        p = e + 1;
    }
    if (n < 0 || (size_t)n >= sizeof url) return ergo_fail(err, ERGO_E_LIMIT, "%s: URL too long", file);
    for (int hop = 0, attempt = 0;;) {
        reset_curl(h, m, errbuf);
        struct curl_slist *hdr = auth_headers(h, url);
        hdr = curl_slist_append(hdr, "Accept-Encoding: identity");
        curl_easy_setopt(h->curl, CURLOPT_URL, url);
        curl_easy_setopt(h->curl, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(h->curl, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, discard_body);
        CURLcode rc = curl_easy_perform(h->curl);
        curl_slist_free_all(hdr);
        if (rc == CURLE_OK) curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &m->status);
        /* a timeout here is most likely no route to the hub: say so now, not in minutes */
        int again = rc != CURLE_OK ? transient_curl(rc) && rc != CURLE_OPERATION_TIMEDOUT
                                   : transient_status(m->status);
        if (again && ++attempt < HUB_MAX_ATTEMPTS) {
            sleep_ms((long)HUB_BACKOFF_MS << (attempt - 1));
            continue;
        }
        if (rc != CURLE_OK) return no_network(h, rc, errbuf, err);
        if (m->status >= 300 && m->status < 400 && m->location[0]) {
            if (m->location[0] == '/') { /* relative: the hub itself, follow */
                if (++hop > 5) return ergo_fail(err, ERGO_E_IO, "%s: too many redirects", file);
                const char *p = strstr(h->endpoint, "://");
                const char *host_end = p ? strchr(p + 3, '/') : NULL;
                int origin = host_end ? (int)(host_end - h->endpoint) : (int)strlen(h->endpoint);
                n = snprintf(url, sizeof url, "%.*s%s", origin, h->endpoint, m->location);
                if (n < 0 || (size_t)n >= sizeof url)
                    return ergo_fail(err, ERGO_E_LIMIT, "%s: redirect URL too long", file);
                attempt = 0;
                continue;
            }
            if (!pathf(download_url, url_size, "%s", m->location)) /* an LFS file on the CDN */
                return ergo_fail(err, ERGO_E_LIMIT, "%s: redirect URL too long", file);
            return ERGO_OK;
        }
        if (m->status >= 200 && m->status < 300) {
            if (!pathf(download_url, url_size, "%s", url))
                return ergo_fail(err, ERGO_E_LIMIT, "%s: URL too long", file);
            return ERGO_OK;
        }
        return http_fail(h, file, m, err);
    }
}

/* ---------------------------------------------------------------- download */

typedef struct dl_state {
    hub_ctx *h;
    const http_meta *meta;
    FILE *f;
    long long start;      /* bytes already in the file when the request began */
    long long total;      /* expected size, -1 unknown */
    int truncated;        /* a 200 arrived for a Range request: restarted from 0 */
    int write_error;
    int bad_range;
    const char *label;
    double t0, last_draw;
    long long last_bytes;
} dl_state;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
    dl_state *d = ud;
    long st = 0;
    curl_easy_getinfo(d->h->curl, CURLINFO_RESPONSE_CODE, &st);
    if (st != 200 && st != 206) return sz * n; /* an error page: not part of the file */
    if (st == 206 && d->meta->range_start != d->start) { /* not the bytes we asked for */
        d->bad_range = 1;
        return 0;
    }
    if (st == 200 && d->start > 0 && !d->truncated) {
        /* the server ignored the Range: start over */
        if (fflush(d->f) != 0 || ftruncate(fileno(d->f), 0) != 0 || fseek(d->f, 0, SEEK_SET) != 0) {
            d->write_error = errno ? errno : EIO;
            return 0;
        }
        d->truncated = 1;
        d->start = 0;
    }
    if (fwrite(p, sz, n, d->f) != n) {
        d->write_error = errno ? errno : EIO;
        return 0;
    }
    return sz * n;
}

static void human_bytes(char *out, size_t size, double b) {
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4) b /= 1000, i++;
    snprintf(out, size, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void draw_bar(dl_state *d, long long have, int final) {
    double t = now_s();
    if (!final && t - d->last_draw < 0.1) return;
    double rate = t > d->t0 ? (double)(have - d->last_bytes) / (t - d->t0) : 0;
    d->last_draw = t;
    char a[32], b[32], r[32], eta[32] = "";
    human_bytes(a, sizeof a, (double)have);
    human_bytes(r, sizeof r, rate);
    int pct = 0, width = 24, fill = 0;
    if (d->total > 0) {
        human_bytes(b, sizeof b, (double)d->total);
        pct = (int)(100.0 * (double)have / (double)d->total);
        fill = (int)((double)width * (double)have / (double)d->total);
        if (rate > 0 && have < d->total) {
            long s = (long)((double)(d->total - have) / rate);
            snprintf(eta, sizeof eta, " ETA %ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
        }
    } else {
        snprintf(b, sizeof b, "?");
    }
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%-36.36s [%s] %3d%% %s / %s  %s/s%s\033[K", d->label, bar, pct, a, b, r, eta);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ut, curl_off_t un) {
    dl_state *d = ud;
    draw_bar(d, d->start + (long long)dlnow, 0);
    return 0;
}

static long long file_size_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* GETs url into path (appending from its current size with a Range request),
 * retrying transient failures with backoff, until it holds `total` bytes. */
static ergo_status download(hub_ctx *h, const char *file, const char *url, const char *path,
                            long long total, ergo_error *err) {
    char errbuf[CURL_ERROR_SIZE];
    http_meta m;
    for (int attempt = 0;;) {
        long long have = file_size_of(path);
        if (have < 0) have = 0;
        if (total >= 0 && have > total) { /* not ours to trust: start over */
            if (truncate(path, 0) != 0)
                return ergo_fail(err, ERGO_E_IO, "%s: cannot truncate: %s", path, strerror(errno));
            have = 0;
        }
        if (total >= 0 && have == total) return ERGO_OK;
        FILE *f = fopen(path, "ab");
        if (!f) return ergo_fail(err, ERGO_E_IO, "%s: cannot write: %s", path, strerror(errno));
        dl_state d = {.h = h, .meta = &m, .f = f, .start = have, .total = total, .label = file, .t0 = now_s(),
                      .last_bytes = have};
        reset_curl(h, &m, errbuf);
        struct curl_slist *hdr = auth_headers(h, url);
        char range[64];
        if (have > 0) {
            snprintf(range, sizeof range, "Range: bytes=%lld-", have);
            hdr = curl_slist_append(hdr, range);
        }
        curl_easy_setopt(h->curl, CURLOPT_URL, url);
        curl_easy_setopt(h->curl, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(h->curl, CURLOPT_MAXREDIRS, 10L);
        curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, &d);
        if (h->progress) {
            curl_easy_setopt(h->curl, CURLOPT_NOPROGRESS, 0L);
            curl_easy_setopt(h->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
            curl_easy_setopt(h->curl, CURLOPT_XFERINFODATA, &d);
        }
        CURLcode rc = curl_easy_perform(h->curl);
        curl_slist_free_all(hdr);
        long st = 0;
        curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &st);
        int closed = fclose(f);
        if (d.write_error || closed != 0)
            return ergo_fail(err, ERGO_E_IO, "%s: cannot write: %s", path,
                             strerror(d.write_error ? d.write_error : errno));
        if (h->progress) draw_bar(&d, file_size_of(path), 1);
        if (d.bad_range) {
            unlink(path);
            return ergo_fail(err, ERGO_E_IO,
                             "%s: the server answered a resume request with other bytes "
                             "(Content-Range from %lld, asked %lld); partial download deleted, run again",
                             file, m.range_start, have);
        }
        if (rc == CURLE_OK && st == 416 && have > 0) { /* our range is past the end: restart */
            if (truncate(path, 0) != 0)
                return ergo_fail(err, ERGO_E_IO, "%s: cannot truncate: %s", path, strerror(errno));
            if (++attempt < HUB_MAX_ATTEMPTS) continue;
        }
        if (rc == CURLE_OK && (st == 200 || st == 206)) {
            long long got = file_size_of(path);
            if (total < 0 || got == total) return ERGO_OK;
            if (got > total) {
                if (truncate(path, 0) != 0)
                    return ergo_fail(err, ERGO_E_IO, "%s: cannot truncate: %s", path, strerror(errno));
                return ergo_fail(err, ERGO_E_FORMAT,
                                 "%s: the server sent %lld bytes, the hub announced %lld", file, got,
                                 total);
            }
            rc = CURLE_PARTIAL_FILE; /* short: resume */
        }
        int again = rc != CURLE_OK ? transient_curl(rc) || rc == CURLE_COULDNT_CONNECT
                                   : transient_status(st);
        if (again && ++attempt < HUB_MAX_ATTEMPTS) {
            sleep_ms((long)HUB_BACKOFF_MS << (attempt - 1));
            continue;
        }
        if (rc != CURLE_OK) {
            long long got = file_size_of(path);
            return ergo_fail(err, ERGO_E_IO,
                             "%s: download interrupted at %lld of %lld bytes (%s) after %d attempts; "
                             "run again to resume from %s",
                             file, got, total, errbuf[0] ? errbuf : curl_easy_strerror(rc),
                             again ? attempt : attempt + 1, path);
        }
        m.status = st;
        return http_fail(h, file, &m, err);
    }
}

/* Refuses to start a download that cannot fit (huggingface_hub only warns; a full
 * disk halfway through a 4 GB shard is worse than a clear message now). */
static ergo_status check_space(const char *blob, const char *incomplete, long long total,
                               ergo_error *err) {
    if (total < 0) return ERGO_OK;
    long long have = file_size_of(incomplete);
    long long need = total - (have > 0 ? have : 0);
    char dir[HUB_PATH];
    snprintf(dir, sizeof dir, "%s", blob);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    struct statvfs v;
    if (need <= 0 || statvfs(dir, &v) != 0) return ERGO_OK;
    long long avail = (long long)v.f_bavail * (long long)v.f_frsize;
    if (avail >= need) return ERGO_OK;
    char a[32], b[32];
    human_bytes(a, sizeof a, (double)need);
    human_bytes(b, sizeof b, (double)avail);
    return ergo_fail(err, ERGO_E_IO, "not enough disk space in %s: %s to download, %s free", dir, a, b);
}

static ergo_status sha256_file(const char *path, char hex[65], ergo_error *err) {
    mapped_file mf;
    ergo_status s = file_map(&mf, path, err);
    if (s) return s;
    sha256_hex(mf.data ? (const void *)mf.data : "", mf.size, hex);
    file_unmap(&mf);
    return ERGO_OK;
}

/* snapshots/<commit>/<file> -> ../../blobs/<name> (one more ../ per directory in file). */
static ergo_status link_pointer(const hub_ctx *h, const char *file, const char *blob_name,
                                ergo_error *err) {
    char pointer[HUB_PATH], target[HUB_PATH] = "";
    PATHF(pointer, err, "%s/snapshots/%s/%s", h->repo_dir, h->commit, file);
    ergo_status s = mkdir_parent(pointer, err);
    if (s) return s;
    for (const char *p = file; *p; p++)
        if (*p == '/') strcat(target, "../");
    size_t n = strlen(target);
    snprintf(target + n, sizeof target - n, "../../blobs/%s", blob_name);
    unlink(pointer);
    if (symlink(target, pointer) != 0)
        return ergo_fail(err, ERGO_E_IO, "%s: cannot create symlink: %s", pointer, strerror(errno));
    return ERGO_OK;
}

/* Fetches one file into the cache. *missing is set (and OK returned) when an
 * optional file is absent from the repo (404). */
static ergo_status fetch_file(hub_ctx *h, const char *file, int optional, int *missing,
                              ergo_error *err) {
    *missing = 0;
    http_meta m;
    char url[2048];
    ergo_status s = head_file(h, file, &m, url, sizeof url, err);
    if (s) {
        if (!optional || m.status != 404 || !strcmp(m.error_code, "RepoNotFound") ||
            !strcmp(m.error_code, "RevisionNotFound"))
            return s;
        *missing = 1;
        if (!h->commit[0] && m.commit[0] && rel_path_ok(m.commit))
            snprintf(h->commit, sizeof h->commit, "%s", m.commit);
        if (h->commit[0]) { /* as huggingface_hub: remember the absence for this commit */
            char path[HUB_PATH];
            PATHF(path, err, "%s/.no_exist/%s/%s", h->repo_dir, h->commit, file);
            ergo_error ignore = {0};
            write_text(path, "", &ignore);
        }
        return ERGO_OK;
    }
    if (!h->commit[0]) { /* the first answer pins the commit for the whole snapshot */
        const char *c = m.commit[0] && rel_path_ok(m.commit) ? m.commit : h->revision;
        snprintf(h->commit, sizeof h->commit, "%s", c);
        if (strcmp(h->commit, h->revision)) {
            char ref[HUB_PATH];
            PATHF(ref, err, "%s/refs/%s", h->repo_dir, h->revision);
            if ((s = write_text(ref, h->commit, err))) return s;
        }
    }
    if (snap_has(h, h->commit, file)) return ERGO_OK;

    const char *etag = m.linked_etag[0] ? m.linked_etag : m.etag;
    long long size = m.linked_size >= 0 ? m.linked_size : m.content_length;
    int is_sha = is_hex(etag, 64);
    char etag_l[65] = "";
    if (is_sha)
        for (int i = 0; i <= 64; i++) etag_l[i] = (char)tolower((unsigned char)etag[i]);
    /* Without an etag the blob is named after the content's SHA-256 once downloaded. */
    char blob_name[300], blob[HUB_PATH], incomplete[HUB_PATH + 16], lock_path[HUB_PATH];
    if (etag[0] && strlen(etag) < 256 && !strchr(etag, '/') && strcmp(etag, ".") && strcmp(etag, ".."))
        snprintf(blob_name, sizeof blob_name, "%s", is_sha ? etag_l : etag);
    else
        blob_name[0] = '\0';
    char tmp_name[300];
    snprintf(tmp_name, sizeof tmp_name, "%s", blob_name[0] ? blob_name : "no-etag-");
    if (!blob_name[0]) /* a stable name per file, so an interrupted download resumes */
        for (const char *p = file; *p && strlen(tmp_name) < 250; p++) {
            size_t k = strlen(tmp_name);
            tmp_name[k] = *p == '/' ? '_' : *p;
            tmp_name[k + 1] = '\0';
        }
    PATHF(blob, err, "%s/blobs/%s", h->repo_dir, tmp_name);
    PATHF(incomplete, err, "%s.incomplete", blob);
    PATHF(lock_path, err, "%s/%s.lock", h->lock_dir, tmp_name);
    if ((s = mkdir_parent(blob, err)) || (s = mkdir_parent(lock_path, err))) return s;

    /* As huggingface_hub's WeakFileLock (filelock's flock): one writer per blob. */
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (lock < 0) return ergo_fail(err, ERGO_E_IO, "%s: cannot open: %s", lock_path, strerror(errno));
    while (flock(lock, LOCK_EX) != 0 && errno == EINTR) {
    }
    if (!blob_name[0] || !file_exists(blob)) {
        s = check_space(blob, incomplete, size, err);
        if (!s) s = download(h, file, url, incomplete, size, err);
        if (!s && (is_sha || !blob_name[0])) {
            char hex[65];
            if (!(s = sha256_file(incomplete, hex, err))) {
                if (!blob_name[0]) {
                    snprintf(blob_name, sizeof blob_name, "%s", hex);
                    int n = snprintf(blob, sizeof blob, "%s/blobs/%s", h->repo_dir, hex);
                    if (n < 0 || (size_t)n >= sizeof blob) s = ergo_fail(err, ERGO_E_LIMIT, "path too long");
                } else if (strcmp(hex, etag_l)) {
                    unlink(incomplete); /* never resume on top of bad bytes */
                    s = ergo_fail(err, ERGO_E_FORMAT,
                                  "%s: SHA-256 of the download is %s, the hub promised %s: refused "
                                  "(download deleted; run again to retry)",
                                  file, hex, etag_l);
                }
            }
        }
        if (!s && rename(incomplete, blob) != 0)
            s = ergo_fail(err, ERGO_E_IO, "%s: cannot rename to %s: %s", incomplete, blob, strerror(errno));
    }
    close(lock);
    if (s) return s;
    return link_pointer(h, file, blob_name, err);
}

/* Parses every safetensors file of the snapshot, and checks that each tensor the
 * index names is in the shard it names. */
static ergo_status verify_weights(const hub_ctx *h, json_t *index, ergo_error *err) {
    char dir[HUB_PATH], path[HUB_PATH];
    PATHF(dir, err, "%s/snapshots/%s", h->repo_dir, h->commit);
    if (!index) {
        PATHF(path, err, "%s/%s", dir, SINGLE_NAME);
        safetensors_file st;
        ergo_status s = safetensors_open(&st, path, err);
        safetensors_close(&st);
        return s;
    }
    json_t *map = json_object_get(index, "weight_map");
    json_t *done = json_object();
    const char *k;
    json_t *v;
    ergo_status s = ERGO_OK;
    json_object_foreach(map, k, v) {
        const char *shard = json_string_value(v);
        if (json_object_get(done, shard)) continue;
        json_object_set_new(done, shard, json_true());
        int n = snprintf(path, sizeof path, "%s/%s", dir, shard);
        if (n < 0 || (size_t)n >= sizeof path) {
            s = ergo_fail(err, ERGO_E_LIMIT, "%s: path too long", shard);
            break;
        }
        safetensors_file st;
        if ((s = safetensors_open(&st, path, err))) break;
        const char *k2;
        json_t *v2;
        json_object_foreach(map, k2, v2) {
            if (strcmp(json_string_value(v2), shard) || safetensors_find(&st, k2)) continue;
            s = ergo_fail(err, ERGO_E_FORMAT, "%s: %s names tensor %s in %s, which does not hold it",
                          h->repo, INDEX_NAME, k2, shard);
            break;
        }
        safetensors_close(&st);
        if (s) break;
    }
    json_decref(done);
    return s;
}

static ergo_status fetch_all(hub_ctx *h, ergo_error *err) {
    ergo_status s;
    int missing;
    for (size_t i = 0; i < N_HUB_FILES; i++)
        if ((s = fetch_file(h, hub_files[i].name, hub_files[i].optional, &missing, err))) return s;
    if ((s = fetch_file(h, INDEX_NAME, 1, &missing, err))) return s;
    json_t *index = NULL;
    if (missing) {
        s = fetch_file(h, SINGLE_NAME, 1, &missing, err);
        if (s) return s;
        if (missing)
            return ergo_fail(err, ERGO_E_IO, "%s@%s has neither %s nor %s (HTTP 404)", h->repo,
                             h->revision, INDEX_NAME, SINGLE_NAME);
    } else {
        char path[HUB_PATH];
        PATHF(path, err, "%s/snapshots/%s/%s", h->repo_dir, h->commit, INDEX_NAME);
        if (!(index = load_index(path, err))) return err ? err->code : ERGO_E_FORMAT;
        json_t *done = json_object();
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(index, "weight_map"), k, v) {
            const char *shard = json_string_value(v);
            if (json_object_get(done, shard)) continue;
            json_object_set_new(done, shard, json_true());
            if ((s = fetch_file(h, shard, 0, &missing, err))) break;
        }
        json_decref(done);
        if (s) {
            json_decref(index);
            return s;
        }
    }
    s = verify_weights(h, index, err);
    json_decref(index);
    return s;
}

static ergo_status snapshot_out(const hub_ctx *h, const char *commit, char *out, size_t size,
                                ergo_error *err) {
    int n = snprintf(out, size, "%s/snapshots/%s", h->repo_dir, commit);
    if (n < 0 || (size_t)n >= size) return ergo_fail(err, ERGO_E_LIMIT, "snapshot path too long");
    return ERGO_OK;
}

static ergo_status resolve(const char *model_arg, int refresh, char *dir_out, size_t dir_out_size,
                           ergo_error *err);

ergo_status hub_resolve_model(const char *model_arg, char *dir_out, size_t dir_out_size,
                              ergo_error *err) {
    return resolve(model_arg, 0, dir_out, dir_out_size, err);
}

ergo_status hub_download(const char *repo_arg, char *dir_out, size_t dir_out_size, ergo_error *err) {
    if (!hub_is_repo_id(repo_arg))
        return ergo_fail(err, ERGO_E_ARG, "`%s' is not a hub repository id (owner/name[@revision])",
                         repo_arg ? repo_arg : "");
    return resolve(repo_arg, 1, dir_out, dir_out_size, err);
}

static ergo_status resolve(const char *model_arg, int refresh, char *dir_out, size_t dir_out_size,
                           ergo_error *err) {
    if (!model_arg || !*model_arg) return ergo_fail(err, ERGO_E_ARG, "--model: empty");
    if (!refresh && dir_exists(model_arg)) {
        if (strlen(model_arg) >= dir_out_size)
            return ergo_fail(err, ERGO_E_LIMIT, "%s: path too long", model_arg);
        snprintf(dir_out, dir_out_size, "%s", model_arg);
        return ERGO_OK;
    }
    static hub_ctx h; /* large; hub_resolve_model is not reentrant anyway (curl global init) */
    memset(&h, 0, sizeof h);
    if (!split_repo_arg(model_arg, h.repo, sizeof h.repo, h.revision, sizeof h.revision))
        return ergo_fail(err, ERGO_E_ARG,
                         "--model %s: no such directory, and not a hub repository id (owner/name or "
                         "owner/name@revision)",
                         model_arg);
    ergo_status s = hub_cache_dir(h.cache, sizeof h.cache, err);
    if (s) return s;
    char folder[256];
    snprintf(folder, sizeof folder, "models--%s", h.repo);
    for (char *p = folder; *p; p++)
        if (*p == '/') { /* huggingface_hub's repo_folder_name: "/" becomes "--" */
            memmove(p + 2, p + 1, strlen(p + 1) + 1);
            p[0] = p[1] = '-';
        }
    PATHF(h.repo_dir, err, "%s/%s", h.cache, folder);
    PATHF(h.lock_dir, err, "%s/.locks/%s", h.cache, folder);

    char commit[256];
    int offline = env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE");
    if ((!refresh || offline) && cached_commit(&h, commit, sizeof commit) &&
        cache_complete(&h, commit, !offline))
        return snapshot_out(&h, commit, dir_out, dir_out_size, err);
    if (offline)
        return ergo_fail(err, ERGO_E_IO,
                         "%s@%s is not in the hub cache %s and HF_HUB_OFFLINE is set: unset it to "
                         "download, or pass a local checkpoint directory with --model DIR",
                         h.repo, h.revision, h.cache);

    const char *ep;
    if (!nonempty_env("HF_ENDPOINT", &ep)) ep = "https://huggingface.co";
    snprintf(h.endpoint, sizeof h.endpoint, "%s", ep);
    for (size_t n = strlen(h.endpoint); n && h.endpoint[n - 1] == '/';) h.endpoint[--n] = '\0';
    read_token(h.token, sizeof h.token);
    h.progress = isatty(2);

    static int curl_ready;
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return ergo_fail(err, ERGO_E_IO, "cannot initialise libcurl");
        curl_ready = 1;
    }
    if (!(h.curl = curl_easy_init())) return ergo_fail(err, ERGO_E_NOMEM, "cannot initialise libcurl");
    if (h.progress) fprintf(stderr, "downloading %s@%s into %s\n", h.repo, h.revision, h.repo_dir);
    s = fetch_all(&h, err);
    curl_easy_cleanup(h.curl);
    h.curl = NULL;
    if (s) return s;
    return snapshot_out(&h, h.commit, dir_out, dir_out_size, err);
}
