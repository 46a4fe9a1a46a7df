/* `ergo eval --endpoint` ($ERGO_BIN) against the real `ergo serve` (src/serve), started
 * in-process on an ephemeral 127.0.0.1 port over the tiny random-weight cli_case
 * checkpoint of tests/fixtures/text, on a 3-sample `ergo synth` V* set (issue 11 point 5).
 * Random weights never stop, so --max-new-tokens 4 bounds each stage (sent as max_tokens)
 * and --box-text gives stage 2 a small crop. Checked, for --concurrency 1 and 2: exit 0,
 * every sample "ok" (no failed request), results.jsonl and summary.json written, each
 * record's prompt/generated token counts from the server's usage (stage 2 longer than
 * stage 1, 1..4 generated), and /metrics of a fresh server per run: 2 requests per sample
 * answered 2xx and the stage-2 prompts served from the prefix cache (cached tokens >= half
 * the stage-1 prompts: the system prompt and first image at least). */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"
#include "io/random_checkpoint.h"
#include "lm_fixture.h"
#include "runtime/engine.h"
#include "serve/server.h"

#define ES_SAMPLES 3
#define ES_MAX_NEW 4

typedef struct es_buf { char *p; size_t n; } es_buf;

static size_t es_body(char *d, size_t sz, size_t nm, void *u) {
    es_buf *b = u;
    size_t n = sz * nm;
    char *q = realloc(b->p, b->n + n + 1);
    if (!q) return 0;
    memcpy(q + b->n, d, n);
    b->p = q, b->n += n, b->p[b->n] = 0;
    return n;
}

/* /metrics' value of the line `name value` (-1 when absent or unreachable). */
static double es_metric(int port, const char *name) {
    char url[128], key[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    es_buf b = {0};
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, es_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = rc == CURLE_OK && b.p ? strstr(b.p, key) : NULL;
    double v = p ? strtod(p + strlen(key), NULL) : -1;
    free(b.p);
    return v;
}

static int es_sh(const char *cmd, char *errtext, size_t errsize) {
    char full[9400], ef[1100];
    snprintf(ef, sizeof ef, "%s/eval_serve_stderr.txt", scratch_dir());
    snprintf(full, sizeof full, "%s >/dev/null 2>%s", cmd, ef);
    int st = system(full);
    errtext[0] = 0;
    FILE *f = fopen(ef, "rb");
    if (f) {
        size_t n = fread(errtext, 1, errsize - 1, f);
        errtext[n] = 0;
        fclose(f);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *g_es_bin, *g_es_root;

/* One `ergo eval --endpoint` run at `conc` parallel requests against a fresh server (an
 * empty prefix cache, so only stage 2 can hit it). */
static void es_run(const engine *e, int conc) {
    serve_options o;
    serve_options_default(&o);
    o.port = 0;
    o.parallel = 2;
    o.queue = 4;
    server *sv;
    ergo_error serr = {0};
    if (server_start(&sv, e, &o, &serr)) {
        SKIP("cannot start ergo serve on 127.0.0.1: %s", serr.msg);
        return;
    }
    const int port = server_port(sv);
    CHECK(port > 0, "port %d", port);
    char out[1100], cmd[8192], err[4096];
    snprintf(out, sizeof out, "%s/eval_serve_c%d", scratch_dir(), conc);
    const double req0 = es_metric(port, "ergo_requests_total{status=\"2xx\"}");
    const double cached0 = es_metric(port, "ergo_cached_tokens_total");
    snprintf(cmd, sizeof cmd,
             "%s eval --bench vstar --data-root %s --endpoint http://127.0.0.1:%d/v1 --out %s "
             "--limit %d --max-vision-tokens 64 --max-new-tokens %d --box-text '<zoom>[2, 2, 60, 60]</zoom>' "
             "--no-progress --concurrency %d",
             g_es_bin, g_es_root, port, out, ES_SAMPLES, ES_MAX_NEW, conc);
    int rc = es_sh(cmd, err, sizeof err);
    CHECK(rc == 0, "eval --endpoint (concurrency %d): exit %d: %s", conc, rc, err);

    char res[1200], line[1 << 16];
    snprintf(res, sizeof res, "%s/results.jsonl", out);
    FILE *f = fopen(res, "rb");
    CHECK(f != NULL, "concurrency %d: no %s", conc, res);
    int n = 0, ok = 0;
    long long p1_sum = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *r = json_loads(line, 0, NULL);
        n++;
        const char *st = json_string_value(json_object_get(r, "status"));
        const int is_ok = st && !strcmp(st, "ok");
        ok += is_ok;
        if (!is_ok) {
            CHECK(0, "concurrency %d: record %d status %s: %.300s", conc, n, st ? st : "(none)", line);
            json_decref(r);
            continue;
        }
        json_t *pt = json_object_get(r, "prompt_tokens"), *gt = json_object_get(r, "generated_tokens");
        const long long p1 = json_integer_value(json_array_get(pt, 0)), p2 = json_integer_value(json_array_get(pt, 1));
        const long long g1 = json_integer_value(json_array_get(gt, 0)), g2 = json_integer_value(json_array_get(gt, 1));
        p1_sum += p1;
        CHECK(p1 > 64 && p2 > p1 && g1 >= 1 && g1 <= ES_MAX_NEW && g2 >= 1 && g2 <= ES_MAX_NEW,
              "concurrency %d record %d: prompt tokens %lld, %lld; generated %lld, %lld (want p1 > 64, "
              "p2 > p1, 1..%d generated)", conc, n, p1, p2, g1, g2, ES_MAX_NEW);
        json_decref(r);
    }
    if (f) fclose(f);
    CHECK(n == ES_SAMPLES && ok == ES_SAMPLES, "concurrency %d: %d records, %d ok (want %d)", conc, n, ok,
          ES_SAMPLES);

    char sp[1200];
    snprintf(sp, sizeof sp, "%s/summary.json", out);
    json_t *s = json_load_file(sp, 0, NULL);
    json_t *g = json_array_get(json_object_get(s, "groups"), 0);
    CHECK(g && json_integer_value(json_object_get(g, "samples")) == ES_SAMPLES &&
              json_integer_value(json_object_get(g, "failed")) == 0,
          "concurrency %d: summary %s: samples %lld failed %lld (want %d, 0)", conc, sp,
          (long long)json_integer_value(json_object_get(g, "samples")),
          (long long)json_integer_value(json_object_get(g, "failed")), ES_SAMPLES);
    json_decref(s);

    /* two requests per sample; every stage 2 reuses its stage 1's session: at least the
     * system prompt and the first image (more than half of stage 1's prompt) are cached */
    const double req = es_metric(port, "ergo_requests_total{status=\"2xx\"}") - req0;
    const double cached = es_metric(port, "ergo_cached_tokens_total") - cached0;
    CHECK(req == 2 * ES_SAMPLES, "concurrency %d: %g requests answered 2xx (want %d)", conc, req, 2 * ES_SAMPLES);
    CHECK(cached > 0 && cached >= (double)p1_sum / 2,
          "concurrency %d: %g prompt tokens cached (stage-1 prompts sum to %lld)", conc, cached, p1_sum);
    printf("  eval_serve: concurrency %d: %d samples ok, %g requests, %g cached tokens (stage-1 prompts %lld)\n",
           conc, ok, req, cached, p1_sum);
    server_stop(sv);
}

void test_eval_serve(void) {
    g_es_bin = getenv("ERGO_BIN");
    if (!g_es_bin) {
        SKIP("ERGO_BIN not set: eval against ergo serve needs the ergo binary (make test sets it)");
        return;
    }
    json_t *man = lmf_manifest();
    if (!man) return;
    ergo_error err = {0};
    ckpt_case c;
    if (ckpt_case_load(&c, lmf_path(json_string_value(json_object_get(man, "cli_case"))), &err)) {
        CHECK(0, "%s", err.msg);
        json_decref(man);
        return;
    }
    char dir[1100], root[1100], cmd[4096], e2[4096];
    snprintf(dir, sizeof dir, "%s/eval_serve_ck", scratch_dir());
    int ok = random_checkpoint_write(&c, dir, "assets/qwen2.5-vl-tokenizer", &err) == ERGO_OK;
    ckpt_case_free(&c);
    json_decref(man);
    CHECK(ok, "writing the checkpoint: %s", err.msg);
    if (!ok) return;
    snprintf(root, sizeof root, "%s/eval_serve_data", scratch_dir());
    g_es_root = root;
    mkdir(root, 0777);
    snprintf(cmd, sizeof cmd, "%s synth --out %s/vstar_bench --count %d --size 672 --quiet", g_es_bin, root,
             ES_SAMPLES);
    int rc = es_sh(cmd, e2, sizeof e2);
    CHECK(rc == 0, "synth: exit %d: %s", rc, e2);
    if (rc) return;

    engine e;
    engine_options eo;
    engine_options_default(&eo);
    if (engine_load(&e, dir, &eo, &err)) {
        CHECK(0, "engine_load: %s", err.msg);
        engine_free(&e);
        return;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    es_run(&e, 1);
    es_run(&e, 2);
    curl_global_cleanup();
    engine_free(&e);
}
