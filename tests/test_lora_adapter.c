/* Tests of src/model/lora_adapter.c, src/model/model_save.c, `--lora DIR` and
 * `ergo lora merge` against tests/fixtures/lora (tools/fixtures_lora.py: two PEFT
 * adapters with random non-zero lora_B on a tiny random base with the real
 * vocabulary; one in transformers 4.56's key layout with a list of targets that also
 * selects the vision blocks' MLPs, one in the older layout with a regex and rsLoRA):
 *   - merged weights: every adapted element equals the bf16 rounding of PEFT's
 *     merge_and_unload value (f32). Both compute W + (B @ A) * s in f32 and round once;
 *     the f32 sums can differ in their last bits (the order of the r products, fused
 *     multiply-adds in torch's matmul), so an element may be the other bf16 neighbour
 *     (1 ulp) only where PEFT's f32 value lies within that summation-order bound,
 *     1e-6 * (|W| + |s| * sum_k |B_ik A_kj|), of the midpoint between the two;
 *     everything not adapted keeps its bytes; a merge computed in pieces (the
 *     writer's chunks) equals the whole;
 *   - `ergo generate --lora DIR --dump-logits`: the last prompt position within 1e-3 of
 *     the reference running the merged model with its weights rounded to bf16 (the same
 *     weights; 1e-3 is the text fixtures' bound for f32 arithmetic in another order), and
 *     within that plus the reference's own bf16-rounding gap of PEFT's unmerged f32
 *     forward; and away from the base's logits by far more than that (the adapter
 *     matters);
 *   - `ergo lora merge`: a complete directory (no temporary left), refusing an existing
 *     --out without --force; it loads with model_load holding exactly the --lora merge's
 *     bytes, and `ergo generate` on it dumps byte-identical logits;
 *   - an `ergo train sft` LoRA run directory (checkpoint-N written by
 *     train_checkpoint_save): the newest checkpoint is read and merged as
 *     W + s * B @ A of the trainer's own adapters (independent double-precision sum);
 *   - the q8 weights cache: keyed by the adapter (its own automatic file; an explicit
 *     file written for one adapter is not reused for another);
 *   - refusals, each a clear error naming the file and field or tensor: missing
 *     directory / files, a full checkpoint given as adapter, malformed JSON, r that
 *     does not match the tensors, an adapter for another hidden size, an unknown
 *     module, a tensor of a layer the model lacks, a missing lora_B, targets that
 *     select nothing or an embedding, a bad regex, bias / fan_in_fan_out /
 *     modules_to_save / use_dora, a non-float tensor, a corrupt safetensors file; and a
 *     few through the CLI (one line, exit 1: under `make asan` that is the sanitized
 *     binary). */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/file.h"
#include "base/half.h"
#include "base/json.h"
#include "check.h"
#include "io/random_checkpoint.h"
#include "io/safetensors.h"
#include "model/lora_adapter.h"
#include "model/model_save.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "train/checkpoint.h"
#include "train/train_model.h"

#define TOK_DIR "assets/qwen2.5-vl-tokenizer"
#define LOGIT_TOL 1e-3

static const char *fx(const char *rel) {
    static char bufs[8][1024];
    static int k;
    char *p = bufs[k++ & 7];
    snprintf(p, 1024, "%s/lora/%s", fixtures_dir(), rel);
    return p;
}

static const char *scratch(const char *rel) {
    static char bufs[16][1024];
    static int k;
    char *p = bufs[k++ & 15];
    snprintf(p, 1024, "%s/lora/%s", scratch_dir(), rel);
    return p;
}

static int load_case(ckpt_case *c) {
    ergo_error err = {0};
    ergo_status s = ckpt_case_load(c, fx("case.json"), &err);
    CHECK(s == ERGO_OK, "lora case: %s", err.msg);
    return s == ERGO_OK;
}

static float *read_f32(const char *path, size_t *n) {
    ergo_error err = {0};
    char *buf = NULL;
    size_t size = 0;
    if (file_read_all(path, (size_t)1 << 30, &buf, &size, &err)) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    *n = size / sizeof(float);
    return (float *)buf;
}

/* ---- merged weights against PEFT ---- */

typedef struct tally {
    long exact, tie, bad;
    char first_bad[256];
} tally;

static float bf16_f(uint16_t h) { return bf16_to_f32_one(h); }

/* The element check of the header: e (ergo's bf16) against p (PEFT's f32 merge). */
static void check_elem(tally *t, uint16_t e, float p, double bound, const char *name, long idx) {
    const uint16_t r = f32_to_bf16_one(p);
    if (e == r) {
        t->exact++;
        return;
    }
    const double mid = 0.5 * ((double)bf16_f(e) + (double)bf16_f(r));
    const int adjacent = abs((int)(int16_t)e - (int)(int16_t)r) == 1;
    if (adjacent && fabs((double)p - mid) <= bound) {
        t->tie++;
        return;
    }
    if (!t->bad++)
        snprintf(t->first_bad, sizeof t->first_bad, "%s[%ld]: ergo %.9g, PEFT f32 %.9g (bf16 %.9g)",
                 name, idx, (double)bf16_f(e), (double)p, (double)bf16_f(r));
}

/* The adapted module of a, by canonical weight name. */
static const lora_module *module_of(const lora_adapter *a, const char *name) {
    for (int i = 0; i < a->n_modules; i++)
        if (!strcmp(a->modules[i].weight, name)) return &a->modules[i];
    return NULL;
}

static void test_merged_weights(const json_t *ad) {
    const char *name = json_string_value(json_object_get(ad, "name"));
    ckpt_case c;
    if (!load_case(&c)) return;
    model m, orig;
    ergo_error err = {0};
    int ok = random_checkpoint_fill(&m, &c, &err) == ERGO_OK &&
             random_checkpoint_fill(&orig, &c, &err) == ERGO_OK;
    ckpt_case_free(&c);
    CHECK(ok, "%s: base: %s", name, err.msg);
    if (!ok) return;
    lora_adapter a;
    ergo_status s = lora_adapter_load(&a, fx(json_string_value(json_object_get(ad, "dir"))),
                                      &m.config, &err);
    CHECK(s == ERGO_OK, "%s: load: %s", name, err.msg);
    if (s) {
        model_free(&m);
        model_free(&orig);
        return;
    }
    const json_t *mods = json_object_get(ad, "adapted_modules");
    CHECK_EQ_INT(a.n_modules, json_array_size(mods), "adapted modules");
    CHECK(a.rank == json_integer_value(json_object_get(ad, "r")), "%s: rank %d", name, a.rank);
    CHECK(a.scale == (float)json_number_value(json_object_get(ad, "scaling")),
          "%s: scale %.9g, PEFT's scaling %.9g", name, (double)a.scale,
          json_number_value(json_object_get(ad, "scaling")));
    CHECK(strlen(a.hash) == 64, "%s: hash", name);

    /* a merge in pieces (the writer's chunks, cutting rows) equals the whole */
    const int n = weights_spec(&m.config, NULL, NULL);
    weight_spec *sp = malloc(sizeof *sp * (size_t)n), *so = malloc(sizeof *so * (size_t)n);
    weights_spec(&m.config, sp, &m.weights);
    weights_spec(&orig.config, so, &orig.weights);
    const lora_module *lm0 = &a.modules[0];
    const tensor *t0 = &so[lm0->spec_index].slot->t;
    uint16_t *whole = malloc(t0->nbytes), *parts = malloc(t0->nbytes);
    lora_merge_range(&a, lm0, t0->dtype, t0->data, 0, t0->numel, whole);
    for (int64_t at = 0, step = 37; at < t0->numel; at += step, step = step * 3 % 1001 + 1) {
        const int64_t cnt = at + step > t0->numel ? t0->numel - at : step;
        lora_merge_range(&a, lm0, t0->dtype, t0->data, at, cnt, parts + at);
    }
    CHECK(!memcmp(whole, parts, t0->nbytes), "%s: a merge in pieces differs from the whole", name);
    free(whole);
    free(parts);

    s = lora_adapter_apply(&m, &a, &err);
    CHECK(s == ERGO_OK, "%s: apply: %s", name, err.msg);
    safetensors_file ref = {0};
    s = s ? s : safetensors_open(&ref, fx(json_string_value(json_object_get(ad, "merged_file"))), &err);
    CHECK(s == ERGO_OK, "%s: %s", name, err.msg);
    tally t = {0};
    int untouched_ok = 1, n_ref = 0;
    for (int i = 0; !s && i < n; i++) {
        const tensor *got = &sp[i].slot->t, *base = &so[i].slot->t;
        const lora_module *lm = module_of(&a, sp[i].name);
        const tensor *want = safetensors_find(&ref, sp[i].name);
        if (!lm) {
            untouched_ok &= !want && got->nbytes == base->nbytes &&
                            !memcmp(got->data, base->data, got->nbytes);
            continue;
        }
        n_ref++;
        CHECK(want && want->dtype == DTYPE_F32 && want->numel == got->numel &&
                  got->dtype == DTYPE_BF16,
              "%s: `%s': PEFT's merged tensor missing or of another size", name, sp[i].name);
        if (!want || want->numel != got->numel || got->dtype != DTYPE_BF16) continue;
        const uint16_t *e = got->data, *w = base->data;
        const float *p = want->data;
        const int r = a.rank, in = lm->in;
        for (int64_t k = 0; k < got->numel; k++) {
            const int64_t row = k / in, col = k % in;
            double mag = 0;
            for (int q = 0; q < r; q++)
                mag += fabs((double)lm->b[row * r + q] * (double)lm->a[(int64_t)q * in + col]);
            const double bound = 1e-6 * (fabs((double)bf16_f(w[k])) + fabs((double)a.scale) * mag);
            check_elem(&t, e[k], p[k], bound, sp[i].name, (long)k);
        }
    }
    CHECK(untouched_ok, "%s: a weight the adapter does not adapt changed (or PEFT merged it)",
          name);
    CHECK(n_ref == ref.n_tensors, "%s: %d adapted weights, PEFT merged %d", name, n_ref,
          ref.n_tensors);
    CHECK(t.bad == 0 && t.exact > 0, "%s: %ld elements of %ld beyond the tolerance, first %s",
          name, t.bad, t.exact + t.tie + t.bad, t.first_bad);
    /* ties decided the other way are rare: a sign of the same arithmetic */
    CHECK(t.tie * 1000 <= t.exact, "%s: %ld of %ld elements on the other side of a tie", name,
          t.tie, t.exact);
    safetensors_close(&ref);
    free(sp);
    free(so);
    lora_adapter_free(&a);
    model_free(&m);
    model_free(&orig);
}

/* ---- the CLI ---- */

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

/* Runs $ERGO_BIN with args; stdout and stderr into strings (malloc'd). */
static int run_ergo(const char *const *args, char **out, char **errtext) {
    char cmd[16384];
    /* a bound, so a refusal that regressed into a running server cannot hang the suite */
    snprintf(cmd, sizeof cmd, "timeout 300 %s", getenv("ERGO_BIN"));
    for (int i = 0; args[i]; i++) quote(cmd, sizeof cmd, args[i]);
    size_t len = strlen(cmd);
    snprintf(cmd + len, sizeof cmd - len, " >%s 2>%s", scratch("cli.out"), scratch("cli.err"));
    int rc = system(cmd);
    ergo_error err = {0};
    size_t n;
    *out = *errtext = NULL;
    file_read_all(scratch("cli.out"), 1 << 24, out, &n, &err);
    file_read_all(scratch("cli.err"), 1 << 20, errtext, &n, &err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* `ergo generate` of the fixture's prompt (1 token); the dumped logits (V floats). */
static float *generate_logits(const char *model_dir, const char *lora, const char *dump,
                              size_t *n) {
    const char *args[] = {"generate", "--model", model_dir, "--prompt", "Name three colours.",
                          "--max-new-tokens", "1", "--greedy", "--quiet", "--dump-logits", dump,
                          lora ? "--lora" : NULL, lora, NULL};
    char *out, *e;
    int rc = run_ergo(args, &out, &e);
    CHECK(rc == 0, "generate --model %s --lora %s: exit %d: %s", model_dir, lora ? lora : "-", rc,
          e ? e : "");
    free(out);
    free(e);
    return rc == 0 ? read_f32(dump, n) : NULL;
}

/* max |row[j * stride] - want[j]| over the stored entries, and the top list exactly. */
static double logits_diff(const float *row, size_t V, const json_t *rec) {
    size_t n = 0;
    const int stride = (int)json_integer_value(json_object_get(rec, "stride"));
    float *want = read_f32(fx(json_string_value(json_object_get(rec, "file"))), &n);
    if (!want) return HUGE_VAL;
    double worst = 0;
    CHECK(n == (V + (size_t)stride - 1) / (size_t)stride, "%zu strided logits for V %zu", n, V);
    for (size_t j = 0; j < n && j * (size_t)stride < V; j++) {
        const double d = fabs((double)row[j * (size_t)stride] - (double)want[j]);
        if (!(d <= worst)) worst = d;
    }
    const json_t *top = json_object_get(rec, "top");
    for (size_t i = 0; i < json_array_size(top); i++) {
        const json_t *p = json_array_get(top, i);
        const size_t id = (size_t)json_integer_value(json_array_get(p, 0));
        const double d = id < V ? fabs((double)row[id] - json_number_value(json_array_get(p, 1)))
                                : HUGE_VAL;
        if (!(d <= worst)) worst = d;
    }
    free(want);
    return worst;
}

static int same_file(const char *a, const char *b) {
    ergo_error err = {0};
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = !file_read_all(a, (size_t)1 << 30, &x, &nx, &err) &&
               !file_read_all(b, (size_t)1 << 30, &y, &ny, &err) && nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

/* No leftover `<out>.tmp-*` beside out. */
static int no_temporaries(const char *parent, const char *base) {
    DIR *d = opendir(parent);
    if (!d) return 0;
    struct dirent *e;
    int clean = 1;
    char pre[256];
    snprintf(pre, sizeof pre, "%s.tmp-", base);
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, pre, strlen(pre))) clean = 0;
    closedir(d);
    return clean;
}

/* The merged checkpoint holds exactly what --lora merges in memory. */
static void check_merged_dir(const char *merged, const char *adapter_dir) {
    ckpt_case c;
    if (!load_case(&c)) return;
    model m, got;
    ergo_error err = {0};
    lora_adapter a;
    int ok = random_checkpoint_fill(&m, &c, &err) == ERGO_OK;
    ckpt_case_free(&c);
    const int loaded = ok && lora_adapter_load(&a, adapter_dir, &m.config, &err) == ERGO_OK;
    ok = loaded && lora_adapter_apply(&m, &a, &err) == ERGO_OK;
    if (loaded) lora_adapter_free(&a);
    ok = ok && model_load(&got, merged, &err) == ERGO_OK;
    CHECK(ok, "merged %s: %s", merged, err.msg);
    if (!ok) {
        model_free(&m);
        return;
    }
    CHECK(got.names == m.names, "merged: name layout %s, the base's %s",
          name_layout_label(got.names), name_layout_label(m.names));
    const int n = weights_spec(&m.config, NULL, NULL);
    weight_spec *sa = malloc(sizeof *sa * (size_t)n), *sb = malloc(sizeof *sb * (size_t)n);
    weights_spec(&m.config, sa, &m.weights);
    weights_spec(&got.config, sb, &got.weights);
    int bad = -1;
    for (int i = 0; i < n && bad < 0; i++)
        if (sa[i].slot->t.dtype != sb[i].slot->t.dtype ||
            sa[i].slot->t.nbytes != sb[i].slot->t.nbytes ||
            memcmp(sa[i].slot->t.data, sb[i].slot->t.data, sa[i].slot->t.nbytes))
            bad = i;
    CHECK(bad < 0, "merged checkpoint: tensor `%s' differs from the --lora merge",
          bad >= 0 ? sa[bad].name : "");
    free(sa);
    free(sb);
    model_free(&got);
    model_free(&m);
}

static void test_cli(const json_t *ref, const char *base_dir) {
    size_t V = 0, nb = 0;
    float *base = generate_logits(base_dir, NULL, scratch("base.logits"), &nb);
    if (!base) return;
    V = nb;
    CHECK_EQ_INT(V, 152064, "dumped logits");
    const double d_base = logits_diff(base, V, json_object_get(ref, "logits_base"));
    CHECK(d_base <= LOGIT_TOL, "base logits: max diff %.3g vs the reference (tol %g)", d_base,
          LOGIT_TOL);
    /* an `ergo train sft` output directory (test_train_output's run on the same base):
     * its newest checkpoint, said in a note */
    if (dir_exists(scratch("sft_run"))) {
        const char *args[] = {"generate", "--model", base_dir, "--prompt", "Hi", "--quiet",
                              "--max-new-tokens", "1", "--lora", scratch("sft_run"), NULL};
        char *out, *e;
        int rc = run_ergo(args, &out, &e);
        CHECK(rc == 0 && e && strstr(e, "note: ") && strstr(e, "using the newest, checkpoint-12"),
              "generate --lora RUN_DIR: exit %d, stderr \"%s\"", rc, e ? e : "");
        free(out);
        free(e);
    }
    const json_t *ads = json_object_get(ref, "adapters");
    for (size_t i = 0; i < json_array_size(ads); i++) {
        const json_t *ad = json_array_get(ads, i);
        const char *name = json_string_value(json_object_get(ad, "name"));
        const char *dir = fx(json_string_value(json_object_get(ad, "dir")));
        char dump[1100], mdump[1100], merged[1024];
        snprintf(dump, sizeof dump, "%s", scratch(name));
        strcat(dump, ".logits");
        size_t n = 0;
        float *got = generate_logits(base_dir, dir, dump, &n);
        if (!got) continue;
        const double gap = json_number_value(json_object_get(ad, "bf16_rounding_gap"));
        const double d_bf16 = logits_diff(got, n, json_object_get(ad, "logits_merged_bf16"));
        const double d_unm = logits_diff(got, n, json_object_get(ad, "logits_unmerged"));
        CHECK(d_bf16 <= LOGIT_TOL, "%s: --lora logits differ by %.3g from the reference's "
              "merged bf16 model (tol %g)", name, d_bf16, LOGIT_TOL);
        CHECK(d_unm <= gap + LOGIT_TOL, "%s: --lora logits differ by %.3g from PEFT's unmerged "
              "forward (tol %g = the reference's bf16 rounding gap %.3g + %g)", name, d_unm,
              gap + LOGIT_TOL, gap, LOGIT_TOL);
        double moved = 0;
        for (size_t j = 0; j < n && j < V; j++)
            if (fabs((double)got[j] - (double)base[j]) > moved) moved = fabs((double)got[j] - (double)base[j]);
        CHECK(moved > 20 * (gap + LOGIT_TOL), "%s: the adapter moves the logits by only %.3g",
              name, moved);

        /* ergo lora merge: refuses an existing --out, writes a complete directory */
        snprintf(merged, sizeof merged, "%s", scratch(name));
        strcat(merged, ".merged");
        const char *margs[] = {"lora", "merge", "--model", base_dir, "--lora", dir, "--out",
                               merged, "--quiet", NULL, NULL};
        char *out, *e;
        int rc = run_ergo(margs, &out, &e);
        CHECK(rc == 0 && out && strstr(out, "wrote"), "%s: lora merge: exit %d: %s", name, rc,
              e ? e : "");
        free(out);
        free(e);
        char p1[1100], p2[1100], p3[1100];
        snprintf(p1, sizeof p1, "%s/model.safetensors", merged);
        snprintf(p2, sizeof p2, "%s/tokenizer.json", merged);
        snprintf(p3, sizeof p3, "%s/config.json", merged);
        CHECK(file_exists(p1) && file_exists(p2) && file_exists(p3), "%s: merged directory "
              "lacks model.safetensors, tokenizer.json or config.json", name);
        CHECK(no_temporaries(scratch(""), strrchr(merged, '/') + 1), "%s: a temporary left", name);
        rc = run_ergo(margs, &out, &e);
        CHECK(rc == 1 && e && strstr(e, "exists (--force replaces it)") && strchr(e, '\n') &&
                  !strchr(e, '\n')[1],
              "%s: lora merge onto an existing --out: exit %d: %s", name, rc, e ? e : "");
        free(out);
        free(e);
        margs[9] = "--force";
        rc = run_ergo(margs, &out, &e);
        CHECK(rc == 0, "%s: lora merge --force: exit %d: %s", name, rc, e ? e : "");
        free(out);
        free(e);
        check_merged_dir(merged, dir);
        snprintf(mdump, sizeof mdump, "%s.logits", merged);
        size_t nm = 0;
        float *mg = generate_logits(merged, NULL, mdump, &nm);
        CHECK(mg && same_file(dump, mdump), "%s: the merged checkpoint's logits differ from "
              "--lora's", name);
        free(mg);
        free(got);
    }
    free(base);
}

/* ---- an `ergo train sft` LoRA output directory ---- */

static void test_train_output(void) {
    ckpt_case c;
    if (!load_case(&c)) return;
    model base;
    ergo_error err = {0};
    int ok = random_checkpoint_fill(&base, &c, &err) == ERGO_OK;
    ckpt_case_free(&c);
    CHECK(ok, "base: %s", err.msg);
    if (!ok) return;
    train_config tc = {.lora_rank = 4, .lora_alpha = 6.0f,
                       .lora_targets = LORA_BIT(LORA_Q) | LORA_BIT(LORA_DOWN), .seed = 5};
    train_model tm;
    if (train_model_init(&tm, &base, &tc, &err)) {
        CHECK(0, "train_model_init: %s", err.msg);
        model_free(&base);
        return;
    }
    /* B away from zero, as after some steps */
    for (int i = 0; i < tm.n_opt; i++)
        if (strstr(tm.params[i].name, "lora_B"))
            for (int64_t k = 0; k < tm.params[i].numel; k++)
                tm.params[i].master[k] = 0.05f * (float)((k * 7 + i) % 11 - 5);
    const char *run = scratch("sft_run");
    train_run_state rs = {.step = 3, .last_loss = NAN, .best_loss = NAN, .best_step = -1};
    ok = train_checkpoint_save(run, &tm, &base, NULL, &rs, 0, NULL, 0, &err) == ERGO_OK;
    rs.step = 12;
    ok = ok && train_checkpoint_save(run, &tm, &base, NULL, &rs, 0, NULL, 0, &err) == ERGO_OK;
    CHECK(ok, "train_checkpoint_save: %s", err.msg);
    char dir[1024], note[256];
    ergo_status s = ok ? lora_adapter_resolve(run, dir, sizeof dir, note, sizeof note, &err) : 1;
    CHECK(s == ERGO_OK && strstr(dir, "checkpoint-12") && strstr(note, "checkpoint-12"),
          "resolve %s: %s (dir %s, note %s)", run, err.msg, s ? "" : dir, s ? "" : note);
    lora_adapter a;
    s = s ? s : lora_adapter_load(&a, dir, &base.config, &err);
    CHECK(s == ERGO_OK, "train output adapter: %s", err.msg);
    if (!s) {
        CHECK_EQ_INT(a.n_modules, 2 * base.config.text.n_layers, "modules of the train adapter");
        CHECK(a.scale == 1.5f, "scale %g (alpha 6 / r 4)", (double)a.scale);
        /* merged = bf16(W + s * B A), checked by an independent double sum */
        model copy;
        ckpt_case c2;
        load_case(&c2);
        random_checkpoint_fill(&copy, &c2, &err);
        ckpt_case_free(&c2);
        s = lora_adapter_apply(&copy, &a, &err);
        CHECK(s == ERGO_OK, "apply: %s", err.msg);
        const text_layer_weights *L = &copy.weights.text.layers[1], *B0 = &base.weights.text.layers[1];
        const lora_linear *q = lora_at(&tm.lora, 1, LORA_Q);
        long bad = 0;
        for (int i = 0; q && i < q->out; i++)
            for (int j = 0; j < q->in; j++) {
                double d = 0;
                for (int k = 0; k < tm.lora.rank; k++)
                    d += (double)q->b[i * tm.lora.rank + k] * (double)q->a[k * q->in + j];
                const size_t at = (size_t)i * (size_t)q->in + (size_t)j;
                const double want = (double)bf16_f(((const uint16_t *)B0->q_w.t.data)[at]) + 1.5 * d;
                const double got = bf16_f(((const uint16_t *)L->q_w.t.data)[at]);
                if (fabs(got - want) > fabs(want) * (1.0 / 256) + 1e-7) bad++;
            }
        CHECK(q && bad == 0, "train adapter q_proj: %ld elements off by more than 1 bf16 ulp", bad);
        model_free(&copy);
        lora_adapter_free(&a);
    }
    train_model_free(&tm);
    model_free(&base);
}

/* ---- the q8 cache, keyed by the adapter ---- */

static void test_quant_cache(const char *base_dir, const char *a1, const char *a2) {
    engine_options o;
    engine_options_default(&o);
    o.weights = QUANT_Q8;
    o.model_only = 1;
    o.lora = a1;
    engine e;
    ergo_error err = {0};
    ergo_status s = engine_load(&e, base_dir, &o, &err);
    CHECK(s == ERGO_OK && e.quant.cache_written && e.lora_modules > 0,
          "q8 + lora: %s (written %d)", err.msg, e.quant.cache_written);
    char path[2048] = "";
    if (!s) {
        snprintf(path, sizeof path, "%s/ergo-weights.q8-lora-%.16s", base_dir, e.lora_hash);
        CHECK(file_exists(path), "no cache %s", path);
    }
    engine_free(&e);
    s = engine_load(&e, base_dir, &o, &err);
    CHECK(s == ERGO_OK && e.quant.from_cache, "q8 + lora again: not from the cache (%s)",
          s ? err.msg : e.quant.cache_note);
    engine_free(&e);
    /* one explicit file for two adapters: the second must not map the first's */
    o.weights_cache = scratch("shared.q8");
    s = engine_load(&e, base_dir, &o, &err);
    CHECK(s == ERGO_OK && e.quant.cache_written, "explicit cache, adapter 1: %s", err.msg);
    engine_free(&e);
    o.lora = a2;
    s = engine_load(&e, base_dir, &o, &err);
    CHECK(s == ERGO_OK && !e.quant.from_cache && strstr(e.quant.cache_note, "other weights"),
          "explicit cache, adapter 2: from_cache %d, note \"%s\" %s", e.quant.from_cache,
          e.quant.cache_note, s ? err.msg : "");
    engine_free(&e);
    o.lora = NULL;
    s = engine_load(&e, base_dir, &o, &err);
    CHECK(s == ERGO_OK && !e.quant.from_cache, "explicit cache, no adapter: reused an adapter's");
    engine_free(&e);
}

/* ---- refusals ---- */

typedef struct st_copy {
    const tensor **t;
    const float *const *extra; /* f32 data of added tensors (NULL for copies) */
} st_copy;

static ergo_status copy_fill(void *ctx, int index, int64_t start, int64_t count, void *out,
                             ergo_error *err) {
    const st_copy *c = ctx;
    (void)err;
    if (c->t[index]) {
        const size_t es = c->t[index]->nbytes / (size_t)(c->t[index]->numel ? c->t[index]->numel : 1);
        memcpy(out, (const char *)c->t[index]->data + (size_t)start * es, (size_t)count * es);
    } else {
        memcpy(out, c->extra[index] + start, (size_t)count * sizeof(float));
    }
    return ERGO_OK;
}

/* Writes dir/adapter_model.safetensors: the tensors of src (a safetensors path) except
 * `drop`, renamed `from` -> `to` (substring, may be NULL), plus one extra f32 tensor
 * (extra_name, shape d0 x d1, or none) of dtype extra_dt (its bytes from zeros). */
static void write_tensors(const char *dir, const char *src, const char *drop, const char *from,
                          const char *to, const char *extra_name, int64_t d0, int64_t d1,
                          dtype extra_dt) {
    ergo_error err = {0};
    safetensors_file st;
    if (safetensors_open(&st, src, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const int n = st.n_tensors + 1;
    st_write_entry *e = calloc((size_t)n, sizeof *e);
    const tensor **ts = calloc((size_t)n, sizeof *ts);
    const float **extra = calloc((size_t)n, sizeof *extra);
    char(*names)[256] = calloc((size_t)n, sizeof *names);
    float *zeros = calloc((size_t)(d0 * d1 > 0 ? d0 * d1 : 1), sizeof(float));
    int k = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const tensor *t = &st.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        const char *hit = from ? strstr(t->name, from) : NULL;
        if (hit)
            snprintf(names[k], sizeof names[k], "%.*s%s%s", (int)(hit - t->name), t->name, to,
                     hit + strlen(from));
        else
            snprintf(names[k], sizeof names[k], "%s", t->name);
        e[k] = (st_write_entry){names[k], t->dtype, t->n_dims, {0}};
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        ts[k++] = t;
    }
    if (extra_name) {
        snprintf(names[k], sizeof names[k], "%s", extra_name);
        e[k] = (st_write_entry){names[k], extra_dt, 2, {d0, d1}};
        extra[k++] = zeros; /* I32 zeros have the bytes of f32 zeros */
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    st_copy cc = {ts, (const float *const *)extra};
    CHECK(safetensors_write(path, e, k, NULL, 0, copy_fill, &cc, &err) == ERGO_OK, "%s", err.msg);
    safetensors_close(&st);
    free(e);
    free(ts);
    free(extra);
    free(names);
    free(zeros);
}

/* dir/adapter_config.json: the fixture's config with one field set (JSON text, or
 * NULL: removed); the raw text instead when raw is not NULL. */
static void write_config(const char *dir, const char *src_dir, const char *field,
                         const char *value, const char *raw) {
    ergo_error err = {0};
    char path[1100];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (raw) {
        CHECK(file_write_all(path, raw, strlen(raw), &err) == ERGO_OK, "%s", err.msg);
        return;
    }
    char src[1100];
    snprintf(src, sizeof src, "%s/adapter_config.json", src_dir);
    json_t *j = json_load_path(src, &err);
    if (!j) {
        CHECK(0, "%s", err.msg);
        return;
    }
    if (field && value) json_object_set_new(j, field, json_loads(value, JSON_DECODE_ANY, NULL));
    else if (field) json_object_del(j, field);
    CHECK(json_dump_file(j, path, JSON_INDENT(2)) == 0, "cannot write %s", path);
    json_decref(j);
}

static const char *bad_dir(const char *name) {
    const char *d = scratch(name);
    mkdir(d, 0755);
    return d;
}

static void expect_refusal(const char *dir, const model_config *cfg, const char *want,
                           const char *label) {
    ergo_error err = {0};
    char resolved[1024];
    lora_adapter a;
    ergo_status s = lora_adapter_resolve(dir, resolved, sizeof resolved, NULL, 0, &err);
    if (!s) s = lora_adapter_load(&a, resolved, cfg, &err);
    CHECK(s != ERGO_OK && strstr(err.msg, want) && !strchr(err.msg, '\n'),
          "%s: status %d, message \"%s\" (want \"%s\")", label, (int)s, s ? err.msg : "", want);
    if (!s) lora_adapter_free(&a);
}

static void test_refusals(const char *base_dir) {
    ckpt_case c;
    if (!load_case(&c)) return;
    const model_config *cfg = &c.parsed;
    const char *good = fx("peft_new");
    char good_st[1100];
    snprintf(good_st, sizeof good_st, "%s/adapter_model.safetensors", good);
    const char *q0 = "base_model.model.model.language_model.layers.0.self_attn.q_proj";
    char q0b[256];
    snprintf(q0b, sizeof q0b, "%s.lora_B.weight", q0);

    expect_refusal(scratch("nope"), cfg, "no such adapter directory", "missing directory");
    expect_refusal(bad_dir("empty"), cfg, "no adapter_config.json", "empty directory");
    expect_refusal(base_dir, cfg, "a full checkpoint (model.safetensors), not a LoRA adapter",
                   "a full checkpoint");
    {
        /* a full-training run directory */
        char sub[1100], f[1200];
        const char *run = bad_dir("full_run");
        snprintf(sub, sizeof sub, "%s/checkpoint-7", run);
        mkdir(sub, 0755);
        snprintf(f, sizeof f, "%s/model.safetensors", sub);
        ergo_error e2 = {0};
        file_write_all(f, "x", 1, &e2);
        expect_refusal(run, cfg, "holds full-training checkpoints, not LoRA adapters: pass",
                       "a full-training run directory");
    }
    const char *d = bad_dir("no_tensors");
    write_config(d, good, NULL, NULL, NULL);
    expect_refusal(d, cfg, "adapter_model.safetensors: missing", "no safetensors");
    d = bad_dir("malformed");
    write_config(d, good, NULL, NULL, "{\"r\": 8, \"lora_alpha\": ");
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "adapter_config.json", "malformed JSON");
    d = bad_dir("rank");
    write_config(d, good, "r", "4", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "with r = 4 it must be (4, 128)", "r does not match the tensors");
    d = bad_dir("no_r");
    write_config(d, good, "r", NULL, NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`r' is missing", "no r");
    d = bad_dir("bias");
    write_config(d, good, "bias", "\"all\"", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`bias' is all", "bias all");
    d = bad_dir("fifo");
    write_config(d, good, "fan_in_fan_out", "true", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`fan_in_fan_out' is true", "fan_in_fan_out");
    d = bad_dir("mts");
    write_config(d, good, "modules_to_save", "[\"lm_head\"]", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`modules_to_save' is [\"lm_head\"]", "modules_to_save");
    d = bad_dir("dora");
    write_config(d, good, "use_dora", "true", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`use_dora' is true", "use_dora");
    d = bad_dir("no_targets");
    write_config(d, good, "target_modules", NULL, NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`target_modules' is missing", "no target_modules");
    d = bad_dir("targets_none");
    write_config(d, good, "target_modules", "[\"nope_proj\"]", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "selects no linear layer", "targets that select nothing");
    d = bad_dir("targets_embed");
    write_config(d, good, "target_modules", "[\"q_proj\", \"embed_tokens\"]", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`model.language_model.embed_tokens', an embedding", "embedding target");
    d = bad_dir("all_linear");
    write_config(d, good, "target_modules", "\"All-Linear\"", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "no tensor base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight",
                   "all-linear selects the vision attention too");
    d = bad_dir("exclude");
    write_config(d, good, "exclude_modules", "\"model\\\\.visual\\\\..*\"", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "module `model.visual.blocks.0.mlp.down_proj' is not one target_modules",
                   "exclude_modules drops the vision modules");
    d = bad_dir("regex");
    write_config(d, good, "target_modules", "\"model\\\\.(layers\"", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "`target_modules' is not a valid regex", "bad regex");
    d = bad_dir("unknown_module");
    write_config(d, good, NULL, NULL, NULL);
    write_tensors(d, good_st, NULL, NULL, NULL,
                  "base_model.model.model.language_model.layers.0.self_attn.foo_proj.lora_A.weight",
                  8, 64, DTYPE_F32);
    expect_refusal(d, cfg, "the model has no module `model.language_model.layers.0.self_attn.foo_proj'",
                   "unknown module");
    d = bad_dir("layer5");
    write_config(d, good, NULL, NULL, NULL);
    write_tensors(d, good_st, NULL, NULL, NULL,
                  "base_model.model.model.language_model.layers.5.self_attn.q_proj.lora_A.weight",
                  8, 64, DTYPE_F32);
    expect_refusal(d, cfg, "no module `model.language_model.layers.5.self_attn.q_proj'",
                   "a layer the model lacks");
    d = bad_dir("not_selected");
    write_config(d, good, "target_modules", "[\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", "
                 "\"gate_proj\", \"up_proj\"]", NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "is not one target_modules selects", "a tensor of an unselected module");
    d = bad_dir("no_b");
    write_config(d, good, NULL, NULL, NULL);
    write_tensors(d, good_st, q0b, NULL, NULL, NULL, 0, 0, DTYPE_F32);
    expect_refusal(d, cfg, "no tensor base_model.model.model.language_model.layers.0.self_attn."
                   "q_proj.lora_B.weight", "missing lora_B");
    d = bad_dir("not_lora");
    write_config(d, good, NULL, NULL, NULL);
    write_tensors(d, good_st, NULL, NULL, NULL, "something.else", 2, 2, DTYPE_F32);
    expect_refusal(d, cfg, "tensor `something.else' is not a LoRA weight", "a foreign tensor");
    d = bad_dir("int_tensor");
    write_config(d, good, NULL, NULL, NULL);
    write_tensors(d, good_st, q0b, NULL, NULL, q0b, 64, 8, DTYPE_I32);
    expect_refusal(d, cfg, "is stored as I32", "an I32 tensor");
    d = bad_dir("corrupt");
    write_config(d, good, NULL, NULL, NULL);
    {
        char p[1100];
        snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
        ergo_error err = {0};
        file_write_all(p, "\x10\0\0\0\0\0\0\0{\"a\":", 14, &err);
    }
    expect_refusal(d, cfg, "adapter_model.safetensors", "a corrupt safetensors file");

    /* an adapter made for a model of hidden size 32: every q_proj A is (8, 32) */
    d = bad_dir("hidden32");
    write_config(d, good, "target_modules", "[\"q_proj\"]", NULL);
    {
        const float zeros[8 * 64] = {0};
        const float *data[4] = {zeros, zeros, zeros, zeros};
        char names[4][128];
        st_write_entry e[4];
        for (int l = 0; l < 2; l++) {
            snprintf(names[2 * l], 128, "base_model.model.model.language_model.layers.%d.self_attn."
                     "q_proj.lora_A.weight", l);
            snprintf(names[2 * l + 1], 128, "base_model.model.model.language_model.layers.%d."
                     "self_attn.q_proj.lora_B.weight", l);
            e[2 * l] = (st_write_entry){names[2 * l], DTYPE_F32, 2, {8, 32}};
            e[2 * l + 1] = (st_write_entry){names[2 * l + 1], DTYPE_F32, 2, {32, 8}};
        }
        const tensor *none[4] = {0};
        st_copy cc = {none, data};
        char p[1100];
        snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
        ergo_error err = {0};
        CHECK(safetensors_write(p, e, 4, NULL, 0, copy_fill, &cc, &err) == ERGO_OK, "%s", err.msg);
    }
    expect_refusal(d, cfg, "has shape (8, 32); for the model's model.language_model.layers.0."
                   "self_attn.q_proj (64, 64) with r = 8 it must be (8, 64)",
                   "an adapter for another hidden size");

    /* the same refusals through the CLI: one line, exit 1, before the model loads */
    if (getenv("ERGO_BIN")) {
        const char *cases[][2] = {{"rank", "it must be (4, 128)"},
                                  {"malformed", "adapter_config.json"},
                                  {"hidden32", "(an adapter for another model or rank?)"},
                                  {"nope", "no such adapter directory"}};
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            const char *args[] = {"generate", "--model", base_dir, "--prompt", "Hi", "--quiet",
                                  "--lora", scratch(cases[i][0]), NULL};
            char *out, *e;
            int rc = run_ergo(args, &out, &e);
            const char *nl = e ? strchr(e, '\n') : NULL;
            CHECK(rc == 1 && e && !strncmp(e, "ergo generate: ", 15) && nl && !nl[1] &&
                      strstr(e, cases[i][1]),
                  "generate --lora %s: exit %d, stderr \"%s\"", cases[i][0], rc, e ? e : "");
            free(out);
            free(e);
        }
        const char *args[] = {"lora", "merge", "--model", base_dir, "--lora", scratch("bias"),
                              "--out", scratch("bias_merged"), NULL};
        char *out, *e;
        int rc = run_ergo(args, &out, &e);
        CHECK(rc == 1 && e && strstr(e, "ergo lora merge: ") && strstr(e, "`bias' is all") &&
                  !dir_exists(scratch("bias_merged")),
              "lora merge with a bad adapter: exit %d, stderr \"%s\"", rc, e ? e : "");
        free(out);
        free(e);
        const char *help[] = {"lora", "merge", "--help", NULL};
        rc = run_ergo(help, &out, &e);
        CHECK(rc == 0 && out && strstr(out, "usage: ergo lora merge"), "lora merge --help");
        free(out);
        free(e);
        static const char *const takers[] = {"generate", "run", "chat", "serve", "eval"};
        for (size_t i = 0; i < sizeof takers / sizeof *takers; i++) {
            const char *h[] = {takers[i], "--help", NULL};
            rc = run_ergo(h, &out, &e);
            CHECK(rc == 0 && out && strstr(out, "--lora DIR"), "%s --help does not document --lora",
                  takers[i]);
            free(out);
            free(e);
        }
        /* serve refuses a bad adapter before it listens */
        const char *sargs[] = {"serve", "--model", base_dir, "--port", "0", "--lora",
                               scratch("nope"), NULL};
        rc = run_ergo(sargs, &out, &e);
        CHECK(rc == 1 && e && strstr(e, "ergo serve: ") && strstr(e, "no such adapter directory"),
              "serve --lora nope: exit %d, stderr \"%s\"", rc, e ? e : "");
        free(out);
        free(e);
        const char *eargs[] = {"eval", "--bench", "vstar", "--data-root", scratch(""), "--out",
                               scratch("ev"), "--endpoint", "http://127.0.0.1:9/v1", "--lora",
                               fx("peft_new"), NULL};
        rc = run_ergo(eargs, &out, &e);
        CHECK(rc == 2 && e && strstr(e, "--lora needs --model"), "eval --endpoint --lora: exit %d, "
              "stderr \"%s\"", rc, e ? e : "");
        free(out);
        free(e);
    }
    ckpt_case_free(&c);
}

/* The adapters ergo's trainer and PEFT wrote for the other fixtures load too. */
static void test_other_fixtures(void) {
    ergo_error err = {0};
    char full[1024];
    snprintf(full, sizeof full, "%s/train_ckpt/full", fixtures_dir());
    model m;
    if (model_load(&m, full, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const char *dirs[2] = {"train_ckpt/lora", "train_ckpt/lora_new"};
    char rpath[1024];
    snprintf(rpath, sizeof rpath, "%s/train_ckpt/reference.json", fixtures_dir());
    json_t *tref = json_load_path(rpath, &err);
    CHECK(tref != NULL, "%s", err.msg);
    const int peft_modules = (int)json_integer_value(json_object_get(tref, "peft_adapted_modules"));
    json_decref(tref);
    uint8_t *first = NULL;
    size_t first_n = 0;
    for (int i = 0; i < 2; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", fixtures_dir(), dirs[i]);
        lora_adapter a;
        ergo_status s = lora_adapter_load(&a, dir, &m.config, &err);
        CHECK(s == ERGO_OK && a.n_modules == peft_modules, "%s: %s (%d modules, PEFT adapted %d)",
              dirs[i], s ? err.msg : "module count", s ? 0 : a.n_modules, peft_modules);
        if (s) continue;
        /* both layouts hold the same adapter: the same A of layer 1's down_proj */
        const lora_module *lm = module_of(&a, "model.layers.1.mlp.down_proj.weight");
        const size_t n = lm ? (size_t)a.rank * (size_t)lm->in * sizeof(float) : 0;
        if (!first && lm) {
            first = malloc(n);
            memcpy(first, lm->a, n);
            first_n = n;
        } else {
            CHECK(lm && n == first_n && !memcmp(first, lm->a, n),
                  "legacy and new-layout adapters differ");
        }
        lora_adapter_free(&a);
    }
    free(first);
    model_free(&m);

    /* PEFT's own save_pretrained of the training fixture (tied head, regex targets) */
    char dir[1024], cpath[1100];
    snprintf(dir, sizeof dir, "%s/train/lora_adapter", fixtures_dir());
    snprintf(cpath, sizeof cpath, "%s/adapter_config.json", dir);
    json_t *acfg = json_load_path(cpath, &err);
    const char *base = acfg ? json_string_value(json_object_get(acfg, "base_model_name_or_path")) : NULL;
    ckpt_case c;
    if (base && ckpt_case_load(&c, base, &err) == ERGO_OK) {
        lora_adapter a;
        ergo_status s = lora_adapter_load(&a, dir, &c.parsed, &err);
        CHECK(s == ERGO_OK && a.n_modules == 7 * c.parsed.text.n_layers && a.scale == 2.0f,
              "train/lora_adapter: %s", s ? err.msg : "modules or scale");
        if (!s) lora_adapter_free(&a);
        ckpt_case_free(&c);
    } else {
        CHECK(0, "train/lora_adapter's base case: %s", base ? err.msg : "not named");
    }
    if (acfg) json_decref(acfg);
}

/* ---- fuzz corpus replay ---- */

typedef struct replay_ctx {
    const model_config *cfg;
    int valid;
} replay_ctx;

static void replay(void *ctx, const char *name, const uint8_t *data, size_t size) {
    replay_ctx *r = ctx;
    CHECK_EQ_INT(lora_adapter_fuzz_one(data, size, r->cfg), 0, name);
    lora_adapter a;
    ergo_error err = {0};
    const int ok = lora_adapter_parse_bytes(&a, data, size, r->cfg, &err) == ERGO_OK;
    const int valid = !strncmp(name, "valid_", 6);
    CHECK(ok == valid, "fuzz corpus %s: %s (%s)", name, ok ? "accepted" : "refused", err.msg);
    if (ok) lora_adapter_free(&a);
    r->valid += valid;
}

static void test_fuzz_corpus(void) {
    ckpt_case c;
    if (!load_case(&c)) return;
    replay_ctx r = {&c.parsed, 0};
    const int n = for_each_corpus_file("lora_adapter", replay, &r);
    CHECK(n >= 8 && r.valid >= 1, "lora_adapter fuzz corpus: %d inputs, %d valid", n, r.valid);
    ckpt_case_free(&c);
}

void test_lora_adapter(void) {
    ergo_error err = {0};
    json_t *ref = json_load_path(fx("reference.json"), &err);
    CHECK(ref != NULL, "lora fixtures: %s", err.msg);
    if (!ref) return;
    mkdir(scratch(""), 0755);
    const json_t *ads = json_object_get(ref, "adapters");
    CHECK(json_array_size(ads) == 2, "two adapters in the fixture");
    for (size_t i = 0; i < json_array_size(ads); i++) test_merged_weights(json_array_get(ads, i));
    test_other_fixtures();
    test_train_output();
    test_fuzz_corpus();

    ckpt_case c;
    char base_dir[1024];
    snprintf(base_dir, sizeof base_dir, "%s", scratch("base"));
    int ok = load_case(&c) && random_checkpoint_write(&c, base_dir, TOK_DIR, &err) == ERGO_OK;
    CHECK(ok, "writing the base: %s", err.msg);
    ckpt_case_free(&c);
    if (ok) {
        test_refusals(base_dir);
        test_quant_cache(base_dir, fx("peft_new"), fx("peft_old_rslora"));
        if (getenv("ERGO_BIN")) test_cli(ref, base_dir);
        else SKIP("ERGO_BIN not set: the --lora / lora merge CLI tests need the ergo binary");
    }
    json_decref(ref);
}
