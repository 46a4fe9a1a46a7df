/* Tests of `ergo generate` (src/cli/cmd_generate.c, run as $ERGO_BIN) on the first
 * tiny case of tests/fixtures/text, written to a scratch directory with the
 * tokenizer files: for each recorded CLI run (a text prompt with the checkpoint's
 * sampling config, the demo photo with a system prompt and --greedy, two images)
 * the --json fields (token_ids, text, prompt_tokens, vision_tokens, stop_reason,
 * timings) and the --dump-logits file against the reference's processor +
 * model.generate; the streamed text; and the refusals, each exactly one line:
 * a prompt longer than the context, too many images for the context, an image
 * whose grid exceeds the configured limit, a checkpoint missing a tensor, a
 * missing image, and usage errors. Under `make asan` $ERGO_BIN is the sanitizer
 * build, so the demo-photo run is also the sanitizer run the issue asks for. */
#include <sys/wait.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "lm_fixture.h"

static const char *scratch(const char *name) {
    static char bufs[4][1024];
    static int k;
    char *p = bufs[k++ & 3];
    snprintf(p, 1024, "%s/%s", scratch_dir(), name);
    return p;
}

/* Appends ' quoted ' to cmd (single quotes, ' written as '\''). */
static void quote(char *cmd, size_t size, const char *arg) {
    size_t n = strlen(cmd);
    if (n + 3 < size) cmd[n++] = ' ', cmd[n++] = '\'';
    for (const char *p = arg; *p && n + 6 < size; p++) {
        if (*p == '\'') {
            memcpy(cmd + n, "'\\''", 4);
            n += 4;
        } else {
            cmd[n++] = *p;
        }
    }
    if (n + 2 < size) cmd[n++] = '\'';
    cmd[n] = 0;
}

/* Runs $ERGO_BIN generate with args (NULL-terminated); stdout/stderr to strings. */
static int run_generate(const char *const *args, char **out, char **errtext) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s generate", getenv("ERGO_BIN"));
    for (int i = 0; args[i]; i++) quote(cmd, sizeof cmd, args[i]);
    size_t len = strlen(cmd);
    snprintf(cmd + len, sizeof cmd - len, " >%s 2>%s", scratch("gen.out"), scratch("gen.err"));
    int rc = system(cmd);
    ergo_error err = {0};
    size_t n;
    *out = *errtext = NULL;
    file_read_all(scratch("gen.out"), 1 << 24, out, &n, &err);
    file_read_all(scratch("gen.err"), 1 << 20, errtext, &n, &err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* A failure is exactly one line "ergo generate: ..." holding `want`. */
static void check_refusal(const char *const *args, int want_rc, const char *want,
                          const char *label) {
    char *out, *e;
    int rc = run_generate(args, &out, &e);
    const char *nl = e ? strchr(e, '\n') : NULL;
    CHECK(rc == want_rc && e && !strncmp(e, "ergo generate: ", 15) && nl && !nl[1] &&
              strstr(e, want),
          "%s: exit %d, stderr \"%s\" (want %d and \"%s\")", label, rc, e ? e : "", want_rc,
          want);
    free(out);
    free(e);
}

static void check_run(const json_t *man, const json_t *run, const char *dir) {
    const char *name = json_string_value(json_object_get(run, "name"));
    const char *args[64];
    int na = 0;
    char nbuf[32], minb[32], maxb[32];
    args[na++] = "--model";
    args[na++] = dir;
    const json_t *sys = json_object_get(run, "system");
    if (json_is_string(sys)) args[na++] = "--system", args[na++] = json_string_value(sys);
    const json_t *imgs = json_object_get(run, "images");
    for (size_t i = 0; i < json_array_size(imgs); i++)
        args[na++] = "--image", args[na++] = json_string_value(json_array_get(imgs, i));
    args[na++] = "--prompt";
    args[na++] = json_string_value(json_object_get(run, "prompt"));
    int n_gen;
    int32_t *want = lmf_ints(json_object_get(run, "generated"), &n_gen);
    snprintf(nbuf, sizeof nbuf, "%d", n_gen);
    args[na++] = "--max-new-tokens";
    args[na++] = nbuf;
    if (json_is_true(json_object_get(run, "greedy"))) args[na++] = "--greedy";
    if (json_is_integer(json_object_get(run, "min_pixels"))) {
        snprintf(minb, sizeof minb, "%lld", json_integer_value(json_object_get(run, "min_pixels")));
        snprintf(maxb, sizeof maxb, "%lld", json_integer_value(json_object_get(run, "max_pixels")));
        args[na++] = "--min-pixels", args[na++] = minb;
        args[na++] = "--max-pixels", args[na++] = maxb;
    }
    args[na++] = "--json";
    args[na++] = "--dump-logits";
    args[na++] = scratch("logits.bin");
    args[na] = NULL;
    char *out, *e;
    int rc = run_generate(args, &out, &e);
    CHECK(rc == 0, "%s: exit %d: %s", name, rc, e ? e : "");
    ergo_error err = {0};
    json_t *j = rc == 0 && out ? json_load_bytes(out, strlen(out), "ergo generate --json", &err)
                               : NULL;
    CHECK(j != NULL, "%s: output is not JSON: %s", name, err.msg);
    if (j) {
        const json_t *ids = json_object_get(j, "token_ids");
        int ng;
        int32_t *got = lmf_ints(ids, &ng);
        char label[128];
        snprintf(label, sizeof label, "%s token_ids", name);
        CHECK_EQ_I32(got, (size_t)ng, want, (size_t)n_gen, label);
        free(got);
        CHECK_EQ_STR(json_string_value(json_object_get(j, "text")),
                     json_string_value(json_object_get(run, "text_out")), "generated text");
        CHECK_EQ_INT(json_integer_value(json_object_get(j, "prompt_tokens")),
                     json_array_size(json_object_get(run, "input_ids")), "prompt_tokens");
        int64_t vt = 0;
        const json_t *g = json_object_get(run, "grids");
        for (size_t i = 0; i < json_array_size(g); i++) {
            const json_t *t = json_array_get(g, i);
            vt += json_integer_value(json_array_get(t, 0)) *
                  json_integer_value(json_array_get(t, 1)) *
                  json_integer_value(json_array_get(t, 2)) / 4;
        }
        CHECK_EQ_INT(json_integer_value(json_object_get(j, "vision_tokens")), vt,
                     "vision_tokens");
        CHECK_EQ_STR(json_string_value(json_object_get(j, "stop_reason")), "length",
                     "stop_reason");
        const json_t *tm = json_object_get(j, "timings");
        CHECK(json_is_number(json_object_get(tm, "vision_encode")) &&
                  json_is_number(json_object_get(tm, "prefill")) &&
                  json_is_number(json_object_get(tm, "decode")),
              "%s: timings {vision_encode, prefill, decode}", name);
        json_decref(j);
        /* --dump-logits: the last prompt position, V float32 */
        char *buf = NULL;
        size_t n = 0;
        if (file_read_all(scratch("logits.bin"), 1 << 30, &buf, &n, &err) == ERGO_OK) {
            CHECK_EQ_INT(n, 152064 * 4, "dumped logits size");
            if (n == 152064 * 4)
                lmf_check_logits((const float *)buf, 152064, json_object_get(run, "logits"),
                                 lmf_num(man, "logit_tol"), name);
        } else {
            CHECK(0, "%s: %s", name, err.msg);
        }
        free(buf);
    }
    free(out);
    free(e);
    if (!strcmp(name, "cli_text")) {
        /* streaming: the same text on stdout, then a newline */
        args[na - 3] = NULL;
        rc = run_generate(args, &out, &e);
        size_t tl = strlen(json_string_value(json_object_get(run, "text_out")));
        CHECK(rc == 0 && out && strlen(out) == tl + 1 &&
                  !strncmp(out, json_string_value(json_object_get(run, "text_out")), tl),
              "streamed text: exit %d \"%s\"", rc, out ? out : "");
        free(out);
        free(e);
        /* --stop: 3 bytes from the middle of the answer end it there */
        const char *txt = json_string_value(json_object_get(run, "text_out"));
        char stop[4] = {0};
        memcpy(stop, txt + tl / 2, 3);
        const char *sargs[] = {"--model", dir, "--prompt",
                               json_string_value(json_object_get(run, "prompt")),
                               "--max-new-tokens", nbuf, "--stop", stop, "--json", NULL};
        rc = run_generate(sargs, &out, &e);
        json_t *sj = rc == 0 && out ? json_load_bytes(out, strlen(out), "--stop", &err) : NULL;
        const char *reason = sj ? json_string_value(json_object_get(sj, "stop_reason")) : NULL;
        size_t ns = sj ? json_array_size(json_object_get(sj, "token_ids")) : 0;
        CHECK(reason && !strcmp(reason, "stop_string") && ns >= 1 && ns < (size_t)n_gen,
              "--stop: exit %d, reason %s after %zu tokens", rc, reason ? reason : "-", ns);
        json_decref(sj);
        free(out);
        free(e);
    }
    free(want);
}

/* Rewrites dir/model.safetensors without one tensor. */
typedef struct copy_ctx {
    const safetensors_file *src;
    const tensor **t;
} copy_ctx;

static ergo_status copy_fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                             ergo_error *err) {
    const copy_ctx *c = ctx;
    size_t esz = c->t[index]->nbytes / (size_t)(c->t[index]->numel ? c->t[index]->numel : 1);
    memcpy(out, (const char *)c->t[index]->data + (size_t)start * esz, (size_t)count * esz);
    (void)err;
    return ERGO_OK;
}

static int drop_tensor(const char *dir, const char *name) {
    ergo_error err = {0};
    char path[1100], tmp[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s/model.tmp", dir);
    safetensors_file st;
    if (safetensors_open(&st, path, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    st_write_entry *e = calloc((size_t)st.n_tensors, sizeof *e);
    const tensor **ts = calloc((size_t)st.n_tensors, sizeof *ts);
    int n = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const tensor *t = &st.tensors[i];
        if (!strcmp(t->name, name)) continue;
        e[n].name = t->name;
        e[n].dtype = t->dtype;
        e[n].n_dims = t->n_dims;
        memcpy(e[n].shape, t->shape, sizeof t->shape);
        ts[n++] = t;
    }
    copy_ctx c = {&st, ts};
    ergo_status s = safetensors_write(tmp, e, n, NULL, 0, copy_fill, &c, &err);
    CHECK(s == ERGO_OK && n == st.n_tensors - 1, "rewrite without %s: %s", name, err.msg);
    safetensors_close(&st);
    free(e);
    free(ts);
    return s == ERGO_OK && rename(tmp, path) == 0;
}

static void test_refusals(const char *dir, const char *small_dir, const char *broken_dir) {
    /* usage */
    const char *no_prompt[] = {"--model", dir, NULL};
    check_refusal(no_prompt, 2, "--prompt", "no prompt");
    const char *both[] = {"--model", dir, "--prompt", "x", "--greedy", "--temperature", "0.5",
                          NULL};
    check_refusal(both, 2, "--greedy", "greedy and sampling");
    const char *bad_num[] = {"--model", dir, "--prompt", "x", "--max-new-tokens", "many", NULL};
    check_refusal(bad_num, 2, "--max-new-tokens", "bad number");
    char *out, *e;
    const char *help[] = {"--help", NULL};
    CHECK(run_generate(help, &out, &e) == 0 && out && strstr(out, "usage: ergo generate"),
          "--help");
    free(out);
    free(e);
    /* bad input */
    const char *no_image[] = {"--model", dir, "--image", "tests/fixtures/text/nope.png",
                              "--prompt", "x", NULL};
    check_refusal(no_image, 1, "nope.png", "missing image");
    const char *wide[] = {"--model", dir, "--image", "tests/fixtures/text/wide_28x3000.png",
                          "--max-pixels", "78400", "--prompt", "x", NULL};
    check_refusal(wide, 1, "exceeds the limit of 400 patches", "grid over the limit");
    char longp[4096] = "";
    for (int i = 0; i < 60; i++) strcat(longp, "word ");
    const char *too_long[] = {"--model", small_dir, "--prompt", longp, NULL};
    check_refusal(too_long, 1, "longer than the context of 40", "prompt over the context");
    const char *img = "tests/fixtures/text/img_84x112.png";
    const char *too_many[] = {"--model", small_dir, "--image", img, "--image", img, "--image",
                              img, "--prompt", "Hi", NULL};
    check_refusal(too_many, 1, "too many images for the context", "images over the context");
    /* refused before the load: no q8 weights cache is written for a prompt that cannot fit */
    const char *too_long_q8[] = {"--model", small_dir, "--weights", "q8", "--prompt", longp, NULL};
    check_refusal(too_long_q8, 1, "longer than the context of 40", "prompt over the context, q8");
    char cache[1200];
    snprintf(cache, sizeof cache, "%s/ergo-weights.q8", small_dir);
    CHECK(!file_exists(cache), "a refused prompt still quantised the model (%s exists)", cache);
    /* ergo run: ERGO's stage-1 prompt (its system prompt alone is over 40 tokens) is
     * refused before the load too */
    {
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "%s run --model %s --image %s --question hi --weights q8 >%s 2>%s",
                 getenv("ERGO_BIN"), small_dir, img, scratch("run.out"), scratch("run.err"));
        const int rc = system(cmd);
        char *rerr = NULL;
        size_t n = 0;
        ergo_error ferr = {0};
        file_read_all(scratch("run.err"), 1 << 20, &rerr, &n, &ferr);
        CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1 && rerr &&
                  strstr(rerr, "longer than the context of 40") && !strstr(rerr, "load "),
              "run with a stage-1 prompt over the context: exit %d, stderr \"%s\"",
              WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, rerr ? rerr : "");
        CHECK(!file_exists(cache), "run quantised the model before refusing the prompt");
        free(rerr);
    }
    const char *broken[] = {"--model", broken_dir, "--prompt", "x", NULL};
    check_refusal(broken, 1, "model.layers.1.mlp.up_proj.weight", "missing tensor");
    const char *bad_temp[] = {"--model", dir, "--prompt", "x", "--temperature", "0", NULL};
    check_refusal(bad_temp, 2, "--temperature: 0 is below", "temperature 0");
}

void test_generate_cli(void) {
    if (!getenv("ERGO_BIN")) {
        SKIP("ERGO_BIN not set: the generate CLI tests need the ergo binary (make test sets it)");
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
    const char *tok = "assets/qwen2.5-vl-tokenizer";
    char dir[1024], small_dir[1024], broken_dir[1024];
    snprintf(dir, sizeof dir, "%s", scratch("gen_model"));
    snprintf(small_dir, sizeof small_dir, "%s", scratch("gen_small_context"));
    snprintf(broken_dir, sizeof broken_dir, "%s", scratch("gen_broken"));
    int ok = random_checkpoint_write(&c, dir, tok, &err) == ERGO_OK;
    CHECK(ok, "writing the checkpoint: %s", err.msg);
    /* the same weights with a context of 40 tokens */
    json_object_set_new(c.config, "max_position_embeddings", json_integer(40));
    c.parsed.text.max_position_embeddings = 40;
    ok = ok && random_checkpoint_write(&c, small_dir, tok, &err) == ERGO_OK;
    ok = ok && random_checkpoint_write(&c, broken_dir, tok, &err) == ERGO_OK &&
         drop_tensor(broken_dir, "model.layers.1.mlp.up_proj.weight");
    CHECK(ok, "writing the checkpoints: %s", err.msg);
    ckpt_case_free(&c);
    if (ok) {
        const json_t *runs = json_object_get(man, "cli");
        for (size_t i = 0; i < json_array_size(runs); i++) {
            const json_t *run = json_array_get(runs, i);
            if (!lmf_margin_ok(man, lmf_num(run, "min_margin"),
                               json_string_value(json_object_get(run, "name"))))
                continue;
            check_run(man, run, dir);
        }
        test_refusals(dir, small_dir, broken_dir);
    }
    json_decref(man);
}
