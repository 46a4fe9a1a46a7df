/*
 * test_hub.c - src/io/hub.c against a loopback HTTP server of the test's own.
 *
 * The server (a thread, plain POSIX sockets, 127.0.0.1 on an ephemeral port, one
 * request per connection, stops by itself after SERVER_LIFETIME_S) answers in the
 * hub's layout: HEAD/GET <repo>/resolve/<rev>/<file> with X-Repo-Commit and ETag;
 * LFS files (*.safetensors, tokenizer.json) redirect to /cdn/<sha256> with
 * X-Linked-Etag / X-Linked-Size, as huggingface.co does; the CDN honours Range and
 * can cut a response halfway. It counts requests and records Range and
 * Authorization headers. No real network is used.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "base/sha256.h"
#include "check.h"
#include "io/hub.h"
#include "io/safetensors.h"

#define SERVER_LIFETIME_S 60
#define REPO "owner/tiny-ergo"
#define COMMIT "0123456789abcdef0123456789abcdef01234567"
#define TOKEN "hf_test_token_123"

typedef struct srv_file {
    char name[96];
    uint8_t *data;
    size_t size;
    char sha[65];
    int lfs;
    int hidden; /* answer 404 for it */
} srv_file;

typedef struct server {
    int fd, port;
    pthread_t thread;
    volatile int stop;
    pthread_mutex_t mu;
    srv_file files[12];
    int n_files;
    /* knobs */
    int cut_file;      /* index of the file whose next non-ranged CDN GET is cut halfway; -1 none */
    int bad_sha_file;  /* index whose X-Linked-Etag lies; -1 none */
    int gated;         /* answer 403 GatedRepo to every resolve request */
    /* records */
    int requests;
    int cdn_gets;
    int ranged_gets;
    char ranges[8][160];  /* "file:bytes=N-" */
    int auth_ok, auth_missing;
} server;

static server S;

static int send_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static void reply(int fd, const char *status, const char *headers, const void *body, size_t n,
                  size_t content_length) {
    char head[2048];
    int len = snprintf(head, sizeof head,
                       "HTTP/1.1 %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n", status,
                       content_length, headers);
    if (send_all(fd, head, (size_t)len) == 0 && n) send_all(fd, body, n);
}

static srv_file *find_file(const char *name) {
    for (int i = 0; i < S.n_files; i++)
        if (!strcmp(S.files[i].name, name) && !S.files[i].hidden) return &S.files[i];
    return NULL;
}

static void header_value(const char *req, const char *name, char *out, size_t size) {
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *p = strstr(req, "\r\n"); p; p = strstr(p + 2, "\r\n")) {
        if (!strncasecmp(p + 2, name, nl) && p[2 + nl] == ':') {
            const char *v = p + 3 + nl;
            while (*v == ' ') v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= size) n = size - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return;
        }
    }
}

static void handle(int c, const char *req) {
    char method[8] = "", path[512] = "", range[64], auth[256], hdr[1024];
    sscanf(req, "%7s %511s", method, path);
    int head = !strcmp(method, "HEAD");
    header_value(req, "Range", range, sizeof range);
    header_value(req, "Authorization", auth, sizeof auth);
    pthread_mutex_lock(&S.mu);
    S.requests++;
    if (!strcmp(auth, "Bearer " TOKEN)) S.auth_ok++;
    else S.auth_missing++;
    pthread_mutex_unlock(&S.mu);

    if (!strncmp(path, "/cdn/", 5)) {
        pthread_mutex_lock(&S.mu);
        S.cdn_gets += !head;
        pthread_mutex_unlock(&S.mu);
        srv_file *f = NULL;
        int idx = -1;
        for (int i = 0; i < S.n_files; i++)
            if (!strcmp(S.files[i].sha, path + 5)) f = &S.files[i], idx = i;
        if (!f) {
            reply(c, "404 Not Found", "", NULL, 0, 0);
            return;
        }
        snprintf(hdr, sizeof hdr, "ETag: \"%s\"\r\nAccept-Ranges: bytes\r\n", f->sha);
        size_t from = 0;
        if (range[0] && sscanf(range, "bytes=%zu-", &from) == 1) {
            pthread_mutex_lock(&S.mu);
            if (S.ranged_gets < 8) snprintf(S.ranges[S.ranged_gets], sizeof S.ranges[0], "%s:%s", f->name, range);
            S.ranged_gets++;
            pthread_mutex_unlock(&S.mu);
            if (from >= f->size) {
                reply(c, "416 Range Not Satisfiable", "", NULL, 0, 0);
                return;
            }
            size_t n = strlen(hdr);
            snprintf(hdr + n, sizeof hdr - n, "Content-Range: bytes %zu-%zu/%zu\r\n", from, f->size - 1,
                     f->size);
            reply(c, "206 Partial Content", hdr, head ? NULL : f->data + from,
                  head ? 0 : f->size - from, f->size - from);
            return;
        }
        if (!head && S.cut_file == idx) { /* promise everything, send half, hang up */
            S.cut_file = -1;
            reply(c, "200 OK", hdr, f->data, f->size / 2, f->size);
            return;
        }
        reply(c, "200 OK", hdr, head ? NULL : f->data, head ? 0 : f->size, f->size);
        return;
    }

    if (S.gated) {
        reply(c, "403 Forbidden", "X-Error-Code: GatedRepo\r\n", NULL, 0, 0);
        return;
    }
    /* /<owner>/<name>/resolve/<rev>/<file> */
    const char *rp = path + 1;
    if (strncmp(rp, REPO "/resolve/", strlen(REPO "/resolve/"))) {
        reply(c, "401 Unauthorized",
              "X-Error-Code: RepoNotFound\r\nX-Error-Message: Repository not found\r\n", NULL, 0, 0);
        return;
    }
    rp += strlen(REPO "/resolve/");
    const char *slash = strchr(rp, '/');
    if (!slash || !((slash - rp == 4 && !strncmp(rp, "main", 4)) ||
                    (slash - rp == 40 && !strncmp(rp, COMMIT, 40)))) {
        reply(c, "404 Not Found", "X-Error-Code: RevisionNotFound\r\n", NULL, 0, 0);
        return;
    }
    srv_file *f = find_file(slash + 1);
    if (!f) {
        reply(c, "404 Not Found", "X-Error-Code: EntryNotFound\r\nX-Repo-Commit: " COMMIT "\r\n", NULL,
              0, 0);
        return;
    }
    if (f->lfs) {
        const char *linked = f->sha;
        char bad[65];
        if (S.bad_sha_file >= 0 && f == &S.files[S.bad_sha_file]) {
            memcpy(bad, f->sha, 65);
            bad[0] = bad[0] == '0' ? '1' : '0';
            linked = bad;
        }
        snprintf(hdr, sizeof hdr,
                 "Location: http://127.0.0.1:%d/cdn/%s\r\nX-Repo-Commit: %s\r\n"
                 "X-Linked-Etag: \"%s\"\r\nX-Linked-Size: %zu\r\nETag: W/\"%.40s\"\r\n",
                 S.port, f->sha, COMMIT, linked, f->size, f->sha + 24);
        reply(c, "302 Found", hdr, NULL, 0, 0);
        return;
    }
    snprintf(hdr, sizeof hdr, "X-Repo-Commit: %s\r\nETag: \"%.40s\"\r\n", COMMIT, f->sha);
    reply(c, "200 OK", hdr, head ? NULL : f->data, head ? 0 : f->size, f->size);
}

static void *serve(void *arg) {
    time_t deadline = time(NULL) + SERVER_LIFETIME_S;
    while (!S.stop && time(NULL) < deadline) {
        struct pollfd p = {.fd = S.fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        int c = accept(S.fd, NULL, NULL);
        if (c < 0) continue;
        struct timeval tv = {2, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char req[8192];
        size_t n = 0;
        while (n < sizeof req - 1) {
            ssize_t k = recv(c, req + n, sizeof req - 1 - n, 0);
            if (k <= 0) break;
            n += (size_t)k;
            req[n] = '\0';
            if (strstr(req, "\r\n\r\n")) break;
        }
        req[n] = '\0';
        if (strstr(req, "\r\n\r\n")) handle(c, req);
        close(c);
    }
    return NULL;
}

static int server_start(void) {
    S.fd = socket(AF_INET, SOCK_STREAM, 0);
    if (S.fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(S.fd, (struct sockaddr *)&a, sizeof a) || listen(S.fd, 16) ||
        getsockname(S.fd, (struct sockaddr *)&a, &len)) {
        close(S.fd);
        return -1;
    }
    S.port = ntohs(a.sin_port);
    pthread_mutex_init(&S.mu, NULL);
    if (pthread_create(&S.thread, NULL, serve, NULL)) {
        close(S.fd);
        return -1;
    }
    return 0;
}

static void server_stop(void) {
    S.stop = 1;
    pthread_join(S.thread, NULL);
    close(S.fd);
    pthread_mutex_destroy(&S.mu);
    for (int i = 0; i < S.n_files; i++) free(S.files[i].data);
}

static int add_file(const char *name, const void *data, size_t size, int lfs) {
    srv_file *f = &S.files[S.n_files];
    snprintf(f->name, sizeof f->name, "%s", name);
    f->data = malloc(size ? size : 1);
    if (!f->data) return -1;
    memcpy(f->data, data, size);
    f->size = size;
    f->lfs = lfs;
    sha256_hex(data, size, f->sha);
    return S.n_files++;
}

static int add_path(const char *name, const char *path, int lfs) {
    char *buf;
    size_t n;
    ergo_error err = {0};
    if (file_read_all(path, 64u << 20, &buf, &n, &err) != ERGO_OK) return -1;
    int i = add_file(name, buf, n, lfs);
    free(buf);
    return i;
}

/* Two shards of 64 KiB-ish F32 tensors with a deterministic pattern. */
static ergo_status fill(void *ctx, int index, int64_t start, int64_t count, void *out, ergo_error *err) {
    float *o = out;
    for (int64_t i = 0; i < count; i++) o[i] = (float)((start + i) % 97) * 0.25f + (float)index;
    return ERGO_OK;
}

static int make_shard(const char *dir, const char *name, const char *t1, const char *t2) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    st_write_entry e[2] = {{t1, DTYPE_F32, 2, {64, 256}}, {t2, DTYPE_F32, 1, {4096}}};
    ergo_error err = {0};
    if (safetensors_write(path, e, 2, NULL, 0, fill, NULL, &err) != ERGO_OK) {
        printf("  %s\n", err.msg);
        return -1;
    }
    return add_path(name, path, 1);
}

static void set_home(const char *sub) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", scratch_dir(), sub);
    setenv("HF_HOME", p, 1);
}

static int is_link_to(const char *path, const char *target) {
    char buf[1024];
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    if (n < 0) return 0;
    buf[n] = '\0';
    return !strcmp(buf, target);
}

static int same_bytes(const char *path, const srv_file *f) {
    char *buf;
    size_t n;
    ergo_error err = {0};
    if (file_read_all(path, 64u << 20, &buf, &n, &err) != ERGO_OK) return 0;
    int ok = n == f->size && !memcmp(buf, f->data, n);
    free(buf);
    return ok;
}

/* Runs `$ERGO_BIN download <args>`; returns the exit status, stdout and stderr in out/errtext. */
static int run_download(const char *args, char **out, char **errtext) {
    char cmd[4096], o[1024], e[1024];
    snprintf(o, sizeof o, "%s/download.out", scratch_dir());
    snprintf(e, sizeof e, "%s/download.err", scratch_dir());
    snprintf(cmd, sizeof cmd, "%s download %s >%s 2>%s", getenv("ERGO_BIN"), args, o, e);
    int rc = system(cmd);
    ergo_error err = {0};
    size_t n;
    *out = *errtext = NULL;
    file_read_all(o, 1 << 20, out, &n, &err);
    file_read_all(e, 1 << 20, errtext, &n, &err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* `ergo download` in a child process against the same server. */
static void test_cli(void) {
    if (!getenv("ERGO_BIN")) {
        SKIP("hub: ERGO_BIN not set (run through make test)");
        return;
    }
    set_home("hf_cli");
    char *out, *e, want[4096];
    int rc = run_download("--model " REPO, &out, &e);
    snprintf(want, sizeof want, "%s/hf_cli/hub/models--owner--tiny-ergo/snapshots/" COMMIT "\n",
             scratch_dir());
    CHECK(rc == 0 && out && !strcmp(out, want), "ergo download: exit %d, stdout \"%s\", stderr \"%s\"",
          rc, out ? out : "", e ? e : "");
    free(out);
    free(e);
    /* again: the hub is asked (HEAD) but nothing is downloaded */
    int requests = S.requests, gets = S.cdn_gets;
    rc = run_download("--model " REPO, &out, &e);
    CHECK(rc == 0 && out && !strcmp(out, want) && S.requests > requests && S.cdn_gets == gets,
          "ergo download again: exit %d, %d requests, %d downloads, stderr \"%s\"", rc,
          S.requests - requests, S.cdn_gets - gets, e ? e : "");
    free(out);
    free(e);
    rc = run_download("--model owner/nope", &out, &e);
    const char *nl = e ? strchr(e, '\n') : NULL;
    CHECK(rc == 1 && e && !strncmp(e, "ergo download: ", 15) && nl && !nl[1] &&
              strstr(e, "no such repository"),
          "ergo download of an unknown repo: exit %d, stderr \"%s\"", rc, e ? e : "");
    free(out);
    free(e);
    rc = run_download("--model " REPO "@main --revision main", &out, &e);
    CHECK_EQ_INT(rc, 2, "ergo download with two revisions");
    free(out);
    free(e);
}

static void test_cache_dir(void) {
    char d[4096];
    ergo_error err = {0};
    setenv("HF_HUB_CACHE", "/x/hub-cache", 1);
    setenv("HF_HOME", "/x/hf-home", 1);
    setenv("XDG_CACHE_HOME", "/x/xdg", 1);
    CHECK(hub_cache_dir(d, sizeof d, &err) == ERGO_OK && !strcmp(d, "/x/hub-cache"), "HF_HUB_CACHE: %s", d);
    unsetenv("HF_HUB_CACHE");
    CHECK(hub_cache_dir(d, sizeof d, &err) == ERGO_OK && !strcmp(d, "/x/hf-home/hub"), "HF_HOME: %s", d);
    unsetenv("HF_HOME");
    CHECK(hub_cache_dir(d, sizeof d, &err) == ERGO_OK && !strcmp(d, "/x/xdg/huggingface/hub"),
          "XDG_CACHE_HOME: %s", d);
    unsetenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (home) {
        char want[4096];
        snprintf(want, sizeof want, "%s/.cache/huggingface/hub", home);
        CHECK(hub_cache_dir(d, sizeof d, &err) == ERGO_OK && !strcmp(d, want), "HOME: %s", d);
    }
}

static void test_repo_ids(void) {
    CHECK(hub_is_repo_id("nota-ai/ERGO-7B"), "nota-ai/ERGO-7B is a repo id");
    CHECK(hub_is_repo_id("Qwen/Qwen2.5-VL-7B-Instruct@main"), "with @revision");
    CHECK(hub_is_repo_id("a/b@refs/pr/1"), "revision with slashes");
    CHECK(!hub_is_repo_id("ERGO-7B"), "no owner");
    CHECK(!hub_is_repo_id("/abs/path"), "absolute path");
    CHECK(!hub_is_repo_id("a/b/c"), "three parts");
    CHECK(!hub_is_repo_id("a--x/b"), "double dash");
    CHECK(!hub_is_repo_id("a/b@../x"), "revision escaping refs/");
    CHECK(!hub_is_repo_id("./model"), "dot owner");
}

/* The environment this suite changes, restored at its end for the suites after it. */
static const char *const saved_names[] = {"HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "HF_ENDPOINT",
                                          "HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE",
                                          "TRANSFORMERS_OFFLINE"};
#define N_SAVED (sizeof saved_names / sizeof saved_names[0])
static char *saved_values[N_SAVED];

static void env_save(void) {
    for (size_t i = 0; i < N_SAVED; i++) {
        const char *v = getenv(saved_names[i]);
        saved_values[i] = v ? strdup(v) : NULL;
    }
}

static void env_restore(void) {
    for (size_t i = 0; i < N_SAVED; i++) {
        if (saved_values[i]) setenv(saved_names[i], saved_values[i], 1);
        else unsetenv(saved_names[i]);
        free(saved_values[i]);
        saved_values[i] = NULL;
    }
}

static void test_server(void);

void test_hub(void) {
    env_save();
    test_server();
    env_restore();
}

static void test_server(void) {
    test_repo_ids();
    test_cache_dir();
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_HUB_OFFLINE");
    unsetenv("TRANSFORMERS_OFFLINE");
    unsetenv("HF_TOKEN_PATH");

    char dir[4096];
    ergo_error err = {0};
    /* an existing directory comes back as is, without any network */
    CHECK(hub_resolve_model(scratch_dir(), dir, sizeof dir, &err) == ERGO_OK && !strcmp(dir, scratch_dir()),
          "existing directory: %s", err.msg);
    CHECK(hub_resolve_model("no-such-dir", dir, sizeof dir, &err) == ERGO_E_ARG, "not a repo id");

    memset(&S, 0, sizeof S);
    S.cut_file = S.bad_sha_file = -1;
    char src[1024], tok[1024];
    snprintf(src, sizeof src, "%s/hub_src", scratch_dir());
    mkdir(src, 0777);
    snprintf(tok, sizeof tok, "%s/../../assets/qwen2.5-vl-tokenizer", fixtures_dir());
    const char *cfg = "{\"model_type\": \"qwen2_5_vl\"}\n";
    add_file("config.json", cfg, strlen(cfg), 0);
    const char *tfiles[] = {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                            "chat_template.json"};
    for (int i = 0; i < 4; i++) {
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", tok, tfiles[i]);
        if (add_path(tfiles[i], p, i == 0) < 0) {
            SKIP("hub: cannot read %s", p);
            return;
        }
    }
    int i_tokenizer = 1; /* files[1] is tokenizer.json */
    int sh1 = make_shard(src, "model-00001-of-00002.safetensors", "a.weight", "a.bias");
    int sh2 = make_shard(src, "model-00002-of-00002.safetensors", "b.weight", "b.bias");
    const char *index = "{\"metadata\": {\"total_size\": 163840}, \"weight_map\": {"
                        "\"a.bias\": \"model-00001-of-00002.safetensors\", "
                        "\"a.weight\": \"model-00001-of-00002.safetensors\", "
                        "\"b.bias\": \"model-00002-of-00002.safetensors\", "
                        "\"b.weight\": \"model-00002-of-00002.safetensors\"}}";
    add_file("model.safetensors.index.json", index, strlen(index), 0);
    CHECK(sh1 >= 0 && sh2 >= 0, "shards written");
    if (sh1 < 0 || sh2 < 0 || server_start() != 0) {
        CHECK(0, "loopback server could not start: %s", strerror(errno));
        return;
    }
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d/", S.port);
    setenv("HF_ENDPOINT", endpoint, 1);
    setenv("HF_TOKEN", TOKEN, 1);
    set_home("hf1");

    /* An earlier run left the first 1000 bytes of shard 2 (resume across runs), and
     * the first GET of shard 1 is cut halfway (resume within the run). */
    char repo_dir[2048], p[8192], q[8400];
    snprintf(repo_dir, sizeof repo_dir, "%s/hf1/hub/models--owner--tiny-ergo", scratch_dir());
    snprintf(p, sizeof p, "%s/blobs", repo_dir);
    ergo_error e2 = {0};
    char mk[4200];
    snprintf(mk, sizeof mk, "%s/hf1", scratch_dir());
    mkdir(mk, 0777);
    snprintf(mk, sizeof mk, "%s/hf1/hub", scratch_dir());
    mkdir(mk, 0777);
    mkdir(repo_dir, 0777);
    mkdir(p, 0777);
    snprintf(q, sizeof q, "%s/%s.incomplete", p, S.files[sh2].sha);
    CHECK(file_write_all(q, S.files[sh2].data, 1000, &e2) == ERGO_OK, "seed partial: %s", e2.msg);
    S.cut_file = sh1;

    ergo_status s = hub_resolve_model(REPO, dir, sizeof dir, &err);
    CHECK(s == ERGO_OK, "resolve " REPO ": %s", err.msg);
    snprintf(p, sizeof p, "%s/snapshots/" COMMIT, repo_dir);
    CHECK_EQ_STR(dir, p, "snapshot directory");
    /* refs/main holds the commit, without newline, as huggingface_hub writes it */
    char *ref = NULL;
    size_t ref_n = 0;
    snprintf(p, sizeof p, "%s/refs/main", repo_dir);
    if (file_read_all(p, 1024, &ref, &ref_n, &e2) == ERGO_OK) CHECK_EQ_STR(ref, COMMIT, "refs/main");
    else CHECK(0, "refs/main: %s", e2.msg);
    free(ref);
    for (int i = 0; i < S.n_files; i++) {
        const srv_file *f = &S.files[i];
        char target[200];
        /* LFS blobs are named by their SHA-256; others by the ETag (git oid) */
        snprintf(target, sizeof target, "../../blobs/%.*s", f->lfs ? 64 : 40, f->sha);
        snprintf(p, sizeof p, "%s/%s", dir, f->name);
        CHECK(is_link_to(p, target), "%s: not a symlink to %s", f->name, target);
        CHECK(same_bytes(p, f), "%s: bytes differ from the server's", f->name);
        snprintf(q, sizeof q, "%s/blobs/%.*s.incomplete", repo_dir, f->lfs ? 64 : 40, f->sha);
        CHECK(!file_exists(q), "%s: .incomplete left behind", f->name);
    }
    snprintf(p, sizeof p, "%s/.no_exist/" COMMIT "/generation_config.json", repo_dir);
    CHECK(file_exists(p), "absent optional file recorded in .no_exist");
    char want1[128], want2[128];
    snprintf(want1, sizeof want1, "model-00001-of-00002.safetensors:bytes=%zu-", S.files[sh1].size / 2);
    snprintf(want2, sizeof want2, "model-00002-of-00002.safetensors:bytes=1000-");
    int seen1 = 0, seen2 = 0;
    for (int i = 0; i < S.ranged_gets && i < 8; i++) {
        seen1 |= !strcmp(S.ranges[i], want1);
        seen2 |= !strcmp(S.ranges[i], want2);
    }
    CHECK_EQ_INT(S.ranged_gets, 2, "ranged GETs");
    CHECK(seen1, "cut download resumed with %s (got %s, %s)", want1, S.ranges[0], S.ranges[1]);
    CHECK(seen2, "earlier partial resumed with %s (got %s, %s)", want2, S.ranges[0], S.ranges[1]);
    CHECK(S.auth_ok > 0 && S.auth_missing == 0, "token: %d requests with it, %d without", S.auth_ok,
          S.auth_missing);

    /* a second resolve is served from the cache: no request */
    int before = S.requests;
    char dir2[4096];
    CHECK(hub_resolve_model(REPO, dir2, sizeof dir2, &err) == ERGO_OK && !strcmp(dir, dir2),
          "second resolve: %s", err.msg);
    CHECK_EQ_INT(S.requests - before, 0, "requests on a complete cache");
    /* pinned commit */
    CHECK(hub_resolve_model(REPO "@" COMMIT, dir2, sizeof dir2, &err) == ERGO_OK && !strcmp(dir, dir2),
          "resolve at the commit: %s", err.msg);
    CHECK_EQ_INT(S.requests - before, 0, "requests for a cached commit");

    /* offline: the cache is enough; without it, a clear refusal and no request */
    setenv("HF_HUB_OFFLINE", "1", 1);
    CHECK(hub_resolve_model(REPO, dir2, sizeof dir2, &err) == ERGO_OK && !strcmp(dir, dir2),
          "offline with cache: %s", err.msg);
    set_home("hf_offline");
    s = hub_resolve_model(REPO, dir2, sizeof dir2, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "HF_HUB_OFFLINE") && strstr(err.msg, "--model DIR"),
          "offline without cache: %s", err.msg);
    CHECK_EQ_INT(S.requests - before, 0, "requests offline");
    unsetenv("HF_HUB_OFFLINE");

    /* a download whose SHA-256 is not what the hub promised is refused */
    set_home("hf_badsha");
    S.bad_sha_file = sh2;
    s = hub_resolve_model(REPO, dir2, sizeof dir2, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "SHA-256") && strstr(err.msg, "model-00002-of-00002"),
          "checksum mismatch: %s", err.msg);
    snprintf(p, sizeof p, "%s/hf_badsha/hub/models--owner--tiny-ergo/snapshots/" COMMIT
             "/model-00002-of-00002.safetensors", scratch_dir());
    CHECK(!file_exists(p), "mismatching shard linked into the snapshot");
    S.bad_sha_file = -1;

    /* a required file the repo lacks */
    set_home("hf_404");
    S.files[i_tokenizer].hidden = 1;
    s = hub_resolve_model(REPO, dir2, sizeof dir2, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "has no tokenizer.json") && strstr(err.msg, "404"),
          "404 of a required file: %s", err.msg);
    S.files[i_tokenizer].hidden = 0;

    /* an unknown repository (the hub answers 401 RepoNotFound to anonymous and wrong tokens) */
    s = hub_resolve_model("owner/nope", dir2, sizeof dir2, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "no such repository") && strstr(err.msg, "owner/nope"),
          "unknown repo: %s", err.msg);
    s = hub_resolve_model(REPO "@v9", dir2, sizeof dir2, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "no revision `v9'"), "unknown revision: %s", err.msg);
    S.gated = 1;
    s = hub_resolve_model(REPO, dir2, sizeof dir2, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "gated") && strstr(err.msg, "HF_TOKEN"), "gated repo: %s",
          err.msg);
    S.gated = 0;
    test_cli();
    server_stop();

    /* nothing listens: the no-network message, which says how to pass a directory */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd); /* bound then closed: connection refused */
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", ntohs(a.sin_port));
    setenv("HF_ENDPOINT", endpoint, 1);
    set_home("hf_refused");
    s = hub_resolve_model(REPO, dir2, sizeof dir2, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, "cannot reach http://127.0.0.1") &&
              strstr(err.msg, "no network?") && strstr(err.msg, "--model /path/to/tiny-ergo"),
          "connection refused: %s", err.msg);
}
