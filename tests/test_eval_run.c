/* Tests of `ergo eval` (src/eval/run.h, src/cli/cmd_eval.c, run as $ERGO_BIN) with the
 * tiny random-weight checkpoint (`cli_case` of tests/fixtures/text): random weights give
 * garbage answers, so the flow, the counts and the files are checked, not accuracies
 * (except against the loopback endpoint, whose answers the test chooses).
 *  - each committed benchmark layout (tests/fixtures/eval/data) end to end: one record
 *    per sample, the fixture's missing image counted as failed;
 *  - `ergo synth` data, --mode both, budgets 640,1280, --crop-probe gt: 4 groups + the
 *    probe, valid PNG plots, the paired table;
 *  - a run killed with SIGKILL mid-run, a torn line appended, then --resume: the same
 *    summary (times aside) as an uninterrupted run;
 *  - --shard 0/2 + 1/2 + `ergo eval merge` == one process; mpirun -np 2 == one process;
 *  - --endpoint against a libmicrohttpd loopback server that checks the reference's
 *    request shape and answers 429 once;
 *  - bad input: a missing data root, a malformed results line on --resume (its number),
 *    a corrupt image (that sample failed, the run goes on). */
#include <jansson.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/file.h"
#include "check.h"
#include "eval/bench_data.h"
#include "io/random_checkpoint.h"
#include "lm_fixture.h"
#include "pipeline/ergo.h"

static const char *scratch(const char *name) {
    static char bufs[8][1024];
    static int k;
    char *p = bufs[k++ & 7];
    snprintf(p, 1024, "%s/%s", scratch_dir(), name);
    return p;
}

/* Runs a shell command; returns its exit status, stderr captured into errtext. */
static int sh(const char *cmd, char *errtext, size_t errsize) {
    char full[9400], ef[1100];
    snprintf(ef, sizeof ef, "%s", scratch("sh_stderr.txt"));
    snprintf(full, sizeof full, "%s >/dev/null 2>%s", cmd, ef);
    int st = system(full);
    if (errtext) {
        errtext[0] = 0;
        FILE *f = fopen(ef, "rb");
        if (f) {
            size_t n = fread(errtext, 1, errsize - 1, f);
            errtext[n] = 0;
            fclose(f);
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_lines(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

static void strip_times(json_t *j) {
    if (json_is_object(j)) {
        json_object_del(j, "time_ms");
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) strip_times(v);
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) strip_times(v);
    }
}

static json_t *summary(const char *dir) {
    char p[1200];
    snprintf(p, sizeof p, "%s/summary.json", dir);
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    if (j) strip_times(j);
    return j;
}

static void check_same_summary(const char *a, const char *b, const char *what) {
    json_t *x = summary(a), *y = summary(b);
    CHECK(x && y, "%s: summary.json missing (%s, %s)", what, a, b);
    if (x && y && !json_equal(x, y)) {
        char *sx = json_dumps(x, JSON_COMPACT), *sy = json_dumps(y, JSON_COMPACT);
        CHECK(0, "%s: summaries differ:\n%.600s\n%.600s", what, sx, sy);
        free(sx), free(sy);
    }
    json_decref(x), json_decref(y);
}

static int is_png(const char *dir, const char *name) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    unsigned char b[8] = {0};
    size_t n = f ? fread(b, 1, 8, f) : 0;
    if (f) fclose(f);
    return n == 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8);
}

/* The number of samples a benchmark's fixture holds (filter: HR-Bench "4k"/"8k"). */
static int n_samples(bench_kind k, const char *root, const char *only) {
    bench_iter *it = NULL;
    ergo_error err = {0};
    if (bench_open(&it, k, root, NULL, &err)) return -1;
    int n = 0, done = 0;
    bench_sample s;
    for (;;) {
        memset(&s, 0, sizeof s);
        if (bench_next(it, &s, &done, &err) || done) break;
        n += !only || (s.category && !strcmp(s.category, only));
        bench_sample_free(&s);
    }
    bench_close(it);
    return n;
}

static char g_model[1024], g_bin[1024];
#define AIDS "--fixed-tokens 2,2,2 --box-text '<zoom>[4, 4, 60, 60]</zoom>' --no-progress --threads 1"

static void test_layouts(void) {
    char root[1100], cmd[8192], err[2048], out[1100], res[1200];
    snprintf(root, sizeof root, "%s/eval/data", fixtures_dir());
    const struct { const char *bench, *only; bench_kind k; } b[] = {
        {"vstar", NULL, BENCH_VSTAR}, {"hrbench", NULL, BENCH_HRBENCH},
        {"hrbench4k", "4k", BENCH_HRBENCH}, {"hrbench8k", "8k", BENCH_HRBENCH},
        {"mmerwl", NULL, BENCH_MMERWL}};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
        snprintf(out, sizeof out, "%s", scratch(b[i].bench));
        snprintf(cmd, sizeof cmd, "%s eval --bench %s --data-root %s --model %s --out %s "
                 "--max-vision-tokens 64 " AIDS, g_bin, b[i].bench, root, g_model, out);
        int rc = sh(cmd, err, sizeof err);
        CHECK(rc == 0, "%s: exit %d: %s", b[i].bench, rc, err);
        int want = n_samples(b[i].k, root, b[i].only);
        snprintf(res, sizeof res, "%s/results.jsonl", out);
        CHECK(want > 0 && count_lines(res) == want, "%s: %d result lines, want %d samples",
              b[i].bench, count_lines(res), want);
        json_t *s = summary(out);
        json_t *g = json_array_get(json_object_get(s, "groups"), 0);
        CHECK_EQ_INT((int)json_integer_value(json_object_get(g, "samples")), want, b[i].bench);
        if (b[i].k == BENCH_VSTAR) /* the fixture names a missing image */
            CHECK(json_integer_value(json_object_get(g, "failed")) == 1, "vstar: failed %lld, want 1",
                  (long long)json_integer_value(json_object_get(g, "failed")));
        json_decref(s);
    }
}

static int write_synth(const char *root, int count) {
    char cmd[2048], err[1024];
    mkdir(root, 0777);
    snprintf(cmd, sizeof cmd, "%s synth --out %s/vstar_bench --count %d --size 672 --quiet", g_bin,
             root, count);
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "synth: exit %d: %s", rc, err);
    return rc == 0;
}

static void test_synth_flow(const char *root) {
    char cmd[8192], err[2048], out[1100];
    snprintf(out, sizeof out, "%s", scratch("synth_both"));
    snprintf(cmd, sizeof cmd, "%s eval --bench vstar --data-root %s --model %s --out %s --mode both "
             "--max-vision-tokens 640,1280 --crop-probe gt --limit 2 " AIDS, g_bin, root, g_model, out);
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "synth both: exit %d: %s", rc, err);
    json_t *s = summary(out);
    CHECK_EQ_INT((int)json_array_size(json_object_get(s, "groups")), 6, "groups (ergo, baseline, probe x 2 budgets)");
    CHECK_EQ_INT((int)json_array_size(json_object_get(s, "paired")), 4, "paired rows");
    json_t *g = json_array_get(json_object_get(s, "groups"), 0);
    CHECK(json_object_get(g, "box_area_fraction") && json_object_get(g, "no_box_rate"),
          "ERGO group without box statistics");
    json_decref(s);
    CHECK(is_png(out, "accuracy.png") && is_png(out, "box_areas.png"), "plots are not PNG files");
    char md[1200], *txt = NULL;
    size_t n = 0;
    ergo_error e = {0};
    snprintf(md, sizeof md, "%s/summary.md", out);
    CHECK(file_read_all(md, 1 << 24, &txt, &n, &e) == 0 && strstr(txt, "===== Accuracy Report =====") &&
              strstr(txt, "Paired with ERGO"),
          "summary.md lacks the report or the paired table");
    free(txt);
}

#define RUN_ARGS "--mode both --max-vision-tokens 64 --limit 4 " AIDS

static void test_resume_shard_mpi(const char *root) {
    char cmd[8192], err[2048], one[1100], killed[1100], res[1200];
    snprintf(one, sizeof one, "%s", scratch("one"));
    snprintf(cmd, sizeof cmd, "%s eval --bench vstar --data-root %s --model %s --out %s " RUN_ARGS,
             g_bin, root, g_model, one);
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "uninterrupted: exit %d: %s", rc, err);

    /* killed mid-run: as soon as 3 records are on disk */
    snprintf(killed, sizeof killed, "%s", scratch("killed"));
    snprintf(res, sizeof res, "%s/results.jsonl", killed);
    snprintf(cmd, sizeof cmd, "exec %s eval --bench vstar --data-root %s --model %s --out %s " RUN_ARGS
             " >/dev/null 2>&1", g_bin, root, g_model, killed);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int status = 0, exited = 0;
    while (count_lines(res) < 3) {
        if (waitpid(pid, &status, WNOHANG) == pid) { exited = 1; break; }
        usleep(2000);
    }
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    int lines = count_lines(res);
    CHECK(lines >= 3 && lines < 8, "killed run: %d lines (want 3..7: killed mid-run)", lines);
    FILE *f = fopen(res, "ab"); /* a torn write: half a record, no newline */
    if (f) { fputs("{\"id\":\"test_questions.jsonl:1|ergo|64\",\"bench\":\"vst", f); fclose(f); }
    snprintf(cmd, sizeof cmd, "%s eval --bench vstar --data-root %s --model %s --out %s --resume " RUN_ARGS,
             g_bin, root, g_model, killed);
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "resume: exit %d: %s", rc, err);
    CHECK_EQ_INT(count_lines(res), 8, "resumed results lines (4 samples x 2 modes)");
    check_same_summary(one, killed, "killed + resumed vs one run");

    /* shards + merge */
    char s0[1100], s1[1100], merged[1100];
    snprintf(s0, sizeof s0, "%s", scratch("shard0"));
    snprintf(s1, sizeof s1, "%s", scratch("shard1"));
    snprintf(merged, sizeof merged, "%s", scratch("merged"));
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s eval --bench vstar --data-root %s --model %s --out %s --shard %d/2 "
                 RUN_ARGS, g_bin, root, g_model, i ? s1 : s0, i);
        rc = sh(cmd, err, sizeof err);
        CHECK(rc == 0, "shard %d: exit %d: %s", i, rc, err);
    }
    snprintf(cmd, sizeof cmd, "%s eval merge %s %s %s", g_bin, merged, s0, s1);
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "merge: exit %d: %s", rc, err);
    check_same_summary(one, merged, "shards merged vs one run");

    /* Open MPI, when the binary was built with it and mpirun is here */
    if (system("command -v mpirun >/dev/null 2>&1") != 0) {
        SKIP("mpirun not found: the MPI run of ergo eval is not tested");
        return;
    }
    char help[4096];
    snprintf(cmd, sizeof cmd, "%s eval --help | grep -q 'mpirun'", g_bin);
    (void)help;
    char mpi[1100];
    snprintf(mpi, sizeof mpi, "%s", scratch("mpi"));
    /* leak checks off: Open MPI's own allocations live to exit */
    snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0 timeout 300 mpirun -np 2 --oversubscribe "
             "--allow-run-as-root %s eval --bench vstar --data-root %s --model %s --out %s " RUN_ARGS,
             g_bin, root, g_model, mpi);
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "mpirun -np 2: exit %d: %s", rc, err);
    struct stat sb;
    char r1[1200];
    snprintf(r1, sizeof r1, "%s/rank-1/results.jsonl", mpi);
    if (stat(r1, &sb) != 0) {
        SKIP("ergo built without Open MPI (no rank-1 output): the MPI run is not tested");
        return;
    }
    check_same_summary(one, mpi, "mpirun -np 2 vs one run");
}

/* ------------------------------------------------------------ loopback endpoint */

typedef struct server_state {
    int requests, n429, bad, stage1, stage2;
    char why[512];
} server_state;

typedef struct upload { char *p; size_t n; } upload;

static void bad(server_state *st, const char *why) {
    st->bad++;
    snprintf(st->why, sizeof st->why, "%s", why);
}

static void check_shape(server_state *st, json_t *b, int *stage) {
    *stage = 0;
    json_t *msgs = json_object_get(b, "messages");
    if (strcmp(json_string_value(json_object_get(b, "model")) ? json_string_value(json_object_get(b, "model")) : "", "ergo"))
        bad(st, "model is not \"ergo\"");
    if (json_number_value(json_object_get(b, "temperature")) != 0.0 || !json_object_get(b, "temperature"))
        bad(st, "temperature is not 0");
    if (json_integer_value(json_object_get(b, "max_tokens")) != 1024) bad(st, "max_tokens is not 1024");
    if (json_integer_value(json_object_get(b, "seed")) != 42) bad(st, "seed is not 42");
    json_t *stop = json_object_get(b, "stop");
    if (json_array_size(stop) != 1 || strcmp(json_string_value(json_array_get(stop, 0)), "<|im_end|>"))
        bad(st, "stop is not [\"<|im_end|>\"]");
    if (json_object_get(b, "stream") || json_object_get(b, "max_completion_tokens")) bad(st, "extra fields");
    size_t n = json_array_size(msgs);
    if (n != 2 && n != 4) { bad(st, "not 2 or 4 messages"); return; }
    json_t *sys = json_array_get(msgs, 0);
    if (strcmp(json_string_value(json_object_get(sys, "role")), "system") ||
        !json_is_string(json_object_get(sys, "content")) ||
        strcmp(json_string_value(json_object_get(sys, "content")), ergo_system_prompt))
        bad(st, "messages[0] is not the system prompt as a string");
    for (size_t k = 1; k < n; k += 2) {
        json_t *u = json_object_get(json_array_get(msgs, k), "content");
        json_t *p0 = json_array_get(u, 0), *p1 = json_array_get(u, 1);
        const char *url = json_string_value(json_object_get(json_object_get(p0, "image_url"), "url"));
        if (strcmp(json_string_value(json_object_get(p0, "type")), "image_url") || !url ||
            strncmp(url, "data:image/jpeg;base64,iVBORw0KGgo", 34))
            bad(st, "user turn: not an image part first with a PNG labelled image/jpeg");
        if (strcmp(json_string_value(json_object_get(p1, "type")), "text")) bad(st, "user turn: no text part");
    }
    if (n == 4) {
        json_t *a = json_array_get(msgs, 2);
        if (strcmp(json_string_value(json_object_get(a, "role")), "assistant") ||
            strcmp(json_string_value(json_object_get(a, "content")), "<think>x</think> <zoom>[2, 2, 40, 40]</zoom>"))
            bad(st, "messages[2] is not the stage-1 answer verbatim");
        const char *t2 = json_string_value(json_object_get(json_array_get(json_object_get(json_array_get(msgs, 3), "content"), 1), "text"));
        if (!t2 || !strstr(t2, "\n(A) ")) bad(st, "stage-2 text has no options");
    }
    *stage = n == 2 ? 1 : 2;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *data, size_t *data_size, void **con_cls) {
    server_state *st = cls;
    upload *u = *con_cls;
    if (!u) {
        *con_cls = calloc(1, sizeof(upload));
        return MHD_YES;
    }
    if (*data_size) {
        char *q = realloc(u->p, u->n + *data_size + 1);
        if (!q) return MHD_NO;
        memcpy(q + u->n, data, *data_size);
        u->p = q, u->n += *data_size, u->p[u->n] = 0;
        *data_size = 0;
        return MHD_YES;
    }
    st->requests++;
    const char *reply;
    unsigned code = 200;
    char buf[512];
    json_t *b = json_loadb(u->p ? u->p : "", u->n, 0, NULL);
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    int stage = 0;
    if (strcmp(url, "/v1/chat/completions") || strcmp(method, "POST")) bad(st, "not POST /v1/chat/completions");
    if (!auth || strcmp(auth, "Bearer K1")) bad(st, "no Authorization: Bearer K1");
    if (!b) bad(st, "body is not JSON");
    else check_shape(st, b, &stage);
    if (st->n429 == 0) { /* the first request is throttled once */
        st->n429++;
        code = 429;
        reply = "{\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit\"}}";
    } else {
        st->stage1 += stage == 1, st->stage2 += stage == 2;
        snprintf(buf, sizeof buf,
                 "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
                 "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":7}}",
                 stage == 1 ? "<think>x</think> <zoom>[2, 2, 40, 40]</zoom>" : "<answer>A</answer>",
                 stage == 1 ? 100 : 200);
        reply = buf;
    }
    json_decref(b);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(reply), (void *)reply, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t) {
    upload *u = *con_cls;
    if (u) free(u->p);
    free(u);
    *con_cls = NULL;
}

static void test_endpoint(const char *root) {
    server_state st = {0};
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handler, &st,
                                            MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (!d) {
        SKIP("cannot start a loopback HTTP server: the endpoint mode is not tested");
        return;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = info ? info->port : 0;
    char cmd[8192], err[2048], out[1100];
    snprintf(out, sizeof out, "%s", scratch("endpoint"));
    snprintf(cmd, sizeof cmd, "%s eval --bench vstar --data-root %s --endpoint http://127.0.0.1:%d/v1 "
             "--api-key K1 --out %s --limit 3 --max-vision-tokens 64 --no-progress --concurrency 2", g_bin, root, port, out);
    int rc = sh(cmd, err, sizeof err);
    MHD_stop_daemon(d);
    CHECK(rc == 0, "endpoint: exit %d: %s", rc, err);
    CHECK(st.bad == 0, "endpoint: %d badly shaped requests, last: %s", st.bad, st.why);
    CHECK(st.n429 == 1 && st.stage1 == 3 && st.stage2 == 3,
          "endpoint: 429s %d, stage-1 %d, stage-2 %d (want 1, 3, 3; %d requests)", st.n429, st.stage1,
          st.stage2, st.requests);
    /* the answers are "A": accuracy = the share of labels that are A */
    char res[1200];
    snprintf(res, sizeof res, "%s/results.jsonl", out);
    json_t *s = summary(out);
    json_t *g = json_array_get(json_object_get(s, "groups"), 0);
    FILE *f = fopen(res, "rb");
    int want = 0, n = 0;
    char line[1 << 16];
    while (f && fgets(line, sizeof line, f)) {
        json_t *r = json_loads(line, 0, NULL);
        want += !strcmp(json_string_value(json_object_get(r, "label")), "A");
        n += !strcmp(json_string_value(json_object_get(r, "status")), "ok");
        json_decref(r);
    }
    if (f) fclose(f);
    CHECK_EQ_INT(n, 3, "endpoint records ok");
    CHECK_EQ_INT((int)json_integer_value(json_object_get(g, "correct")), want, "endpoint: correct = labels A");
    json_decref(s);
}

/* ------------------------------------------------------------ bad input */

static void test_bad_input(const char *root) {
    char cmd[8192], err[2048], out[1100], res[1200];
    snprintf(cmd, sizeof cmd, "%s eval --bench hrbench --data-root %s --model %s --out %s " AIDS, g_bin,
             scratch("nowhere"), g_model, scratch("bad1"));
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 1 && strstr(err, "nowhere") && strchr(err, '\n') == err + strlen(err) - 1,
          "missing data root: exit %d, stderr %s", rc, err);

    /* a malformed line in the middle of results.jsonl is refused with its number */
    snprintf(out, sizeof out, "%s", scratch("bad2"));
    mkdir(out, 0777);
    snprintf(res, sizeof res, "%s/results.jsonl", out);
    FILE *f = fopen(res, "wb");
    if (f) { fputs("{\"id\":\"a|ergo|64\"}\nnot json\n{\"id\":\"b|ergo|64\"}\n", f); fclose(f); }
    snprintf(cmd, sizeof cmd, "%s eval --bench vstar --data-root %s --model %s --out %s --resume " AIDS,
             g_bin, root, g_model, out);
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 1 && strstr(err, "line 2"), "malformed results line: exit %d, stderr %s", rc, err);

    /* a corrupt image: that sample fails, the others run */
    char broot[1100], img[1300];
    snprintf(broot, sizeof broot, "%s", scratch("corrupt"));
    if (!write_synth(broot, 3)) return;
    snprintf(img, sizeof img, "%s/vstar_bench/images/test_000001.png", broot);
    f = fopen(img, "r+b");
    CHECK(f != NULL, "no synth image %s", img);
    if (f) { fseek(f, 40, SEEK_SET); fputs("garbage garbage garbage garbage", f); fclose(f); }
    snprintf(out, sizeof out, "%s", scratch("corrupt_out"));
    snprintf(cmd, sizeof cmd, "%s eval --bench vstar --data-root %s --model %s --out %s --max-vision-tokens 64 "
             AIDS, g_bin, broot, g_model, out);
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "corrupt image: exit %d: %s", rc, err);
    json_t *s = summary(out);
    json_t *g = json_array_get(json_object_get(s, "groups"), 0);
    CHECK(json_integer_value(json_object_get(g, "samples")) == 3 &&
              json_integer_value(json_object_get(g, "failed")) == 1,
          "corrupt image: samples %lld failed %lld (want 3, 1)",
          (long long)json_integer_value(json_object_get(g, "samples")),
          (long long)json_integer_value(json_object_get(g, "failed")));
    json_decref(s);
}

void test_eval_run(void) {
    const char *bin = getenv("ERGO_BIN");
    if (!bin) {
        SKIP("ERGO_BIN not set: the eval CLI tests need the ergo binary (make test sets it)");
        return;
    }
    snprintf(g_bin, sizeof g_bin, "%s", bin);
    json_t *man = lmf_manifest();
    if (!man) return;
    ergo_error err = {0};
    ckpt_case c;
    if (ckpt_case_load(&c, lmf_path(json_string_value(json_object_get(man, "cli_case"))), &err)) {
        CHECK(0, "%s", err.msg);
        json_decref(man);
        return;
    }
    snprintf(g_model, sizeof g_model, "%s", scratch("eval_model"));
    int ok = random_checkpoint_write(&c, g_model, "assets/qwen2.5-vl-tokenizer", &err) == ERGO_OK;
    CHECK(ok, "writing the checkpoint: %s", err.msg);
    ckpt_case_free(&c);
    json_decref(man);
    if (!ok) return;
    test_layouts();
    char root[1100];
    snprintf(root, sizeof root, "%s", scratch("synth"));
    if (write_synth(root, 4)) {
        test_synth_flow(root);
        test_resume_shard_mpi(root);
        test_endpoint(root);
    }
    test_bad_input(root);
}
