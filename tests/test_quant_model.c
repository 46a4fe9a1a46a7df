/*
 * test_quant_model.c - the q8 and q4 weights in the whole language model
 * (issue 5, point 5), and their cache file.
 *
 * Accuracy: on the 7B-width fixture (hidden 3584, 28/4 heads, ffn 18944, the full
 * vocabulary, 2 layers; its lm_head scaled as the fixture's reference run), a
 * teacher-forced sequence of TF_TOKENS pseudo-random ids is run with the weights
 * as stored (f32 arithmetic: the reference's path) and quantised; at every position
 * the next-token distributions are compared: top-1 agreement and the mean
 * KL(p_stored || p_quant). Both quantised paths are measured: the prefill path
 * (panels dequantised to f32) and the decode path (one token at a time: int8
 * activations, VNNI). Floors: q8 >= 99%, q4 >= 90% agreement. Sanitizer builds and
 * the fast tier run a reduced variant (vocabulary 4096, fewer decode steps) with the
 * same floors; the full vocabulary runs in release builds of the full tier.
 *
 * Cache: on a tiny checkpoint, a written cache maps back to the same bytes and
 * the same logits; a cache of another format, of other weights, truncated, or with
 * a corrupt scale is refused with a note and the twins are rebuilt.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/rng.h"
#include "check.h"
#include "io/random_checkpoint.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "model/quantize.h"
#include "model/text.h"
#include "model/weights.h"

#if defined(__SANITIZE_ADDRESS__)
#define QM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QM_SANITIZED 1
#endif
#endif
#ifndef QM_SANITIZED
#define QM_SANITIZED 0
#endif

#define TF_TOKENS 320
#define TF_CHUNK 64
/* decode steps checked bit for bit against the one-piece int8 forward */
#define DECODE_CHECK 8

static const char *case_path(const char *dir, const char *name) {
    static char buf[2][1024];
    static int k;
    char *p = buf[k++ & 1];
    snprintf(p, 1024, "%s/%s/%s", fixtures_dir(), dir, name);
    return p;
}

/* The 7B-width case (vocab cut to `vocab` when > 0), in memory. */
static int load_case(model *m, const char *path, int vocab) {
    ckpt_case c;
    ergo_error err = {0};
    if (ckpt_case_load(&c, path, &err)) {
        CHECK(0, "%s: %s", path, err.msg);
        return 0;
    }
    if (vocab > 0) {
        json_object_set_new(c.config, "vocab_size", json_integer(vocab));
        c.parsed.text.vocab_size = vocab;
    }
    ergo_status s = random_checkpoint_fill(m, &c, &err);
    ckpt_case_free(&c);
    CHECK(s == ERGO_OK, "%s: %s", path, err.msg);
    return s == ERGO_OK;
}

/* Logits of every position of ids (n, V) in prefill chunks. */
/* Logits of every position of ids (n, V): ONE piece through text_forward_batch (in
 * rounds of TF_CHUNK rows), with quantised weights on the int8-activation path
 * (int8_rows = 1: what decode uses; every row is computed alone, so this equals n
 * single-token decode steps bit for bit, which test_accuracy checks on a prefix)
 * or on the f32 panel path (prefill); the KV cache in kvt. */
static int forward_all(const model *m, const int32_t *ids, const int32_t *pos, int n,
                       float *logits, int int8_rows, kv_dtype kvt) {
    ergo_error err = {0};
    text_state st;
    kv_pool pool;
    kv_seq kv = {0};
    const kv_pool_config kc = text_kv_config(&m->config.text, kvt, 0);
    if (text_state_init(&st, &m->config.text, TF_CHUNK, &err) || kv_pool_init(&pool, &kc, &err)) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    text_seq q = {&kv, {ids, {pos, pos, pos}, n, NULL, 0, m->config.image_token_id}, n, logits,
                  int8_rows, 0, 0};
    const int ok = text_forward_batch(m, &st, &pool, &q, 1, &err) == ERGO_OK;
    CHECK(ok, "forward: %s", err.msg);
    kv_seq_release(&pool, &kv);
    kv_pool_free(&pool);
    text_state_free(&st);
    return ok;
}

typedef struct agreement {
    int n, same;
    double kl_sum, kl_max;
} agreement;

static int argmax(const float *x, size_t n) {
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return (int)b;
}

/* KL(softmax(p) || softmax(q)) in double. */
static double kl_logits(const float *p, const float *q, size_t n) {
    double mp = -INFINITY, mq = -INFINITY;
    for (size_t i = 0; i < n; i++) mp = fmax(mp, (double)p[i]), mq = fmax(mq, (double)q[i]);
    double zp = 0, zq = 0;
    for (size_t i = 0; i < n; i++) zp += exp((double)p[i] - mp), zq += exp((double)q[i] - mq);
    const double lzp = log(zp), lzq = log(zq);
    double kl = 0;
    for (size_t i = 0; i < n; i++) {
        const double lp = (double)p[i] - mp - lzp, lq = (double)q[i] - mq - lzq;
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

/* Compares n rows of logits (n, V). Each row is measured on its own (in parallel:
 * a full-vocabulary KL is ~1 ms of exp) and the sums are taken in row order, so the
 * numbers are those of one row at a time. */
static void agree_rows(agreement *a, const float *ref, const float *got, int n, size_t V) {
    int *same = malloc(sizeof *same * (size_t)n);
    double *kl = malloc(sizeof *kl * (size_t)n);
    if (!same || !kl) {
        CHECK(0, "out of memory");
        free(same), free(kl);
        return;
    }
#pragma omp parallel for schedule(dynamic, 4)
    for (int i = 0; i < n; i++) {
        same[i] = argmax(ref + (size_t)i * V, V) == argmax(got + (size_t)i * V, V);
        kl[i] = kl_logits(ref + (size_t)i * V, got + (size_t)i * V, V);
    }
    for (int i = 0; i < n; i++) {
        a->n++;
        a->same += same[i];
        a->kl_sum += kl[i];
        a->kl_max = fmax(a->kl_max, kl[i]);
    }
    free(same), free(kl);
}

/* Teacher-forced decode, one token at a time: the logits of every position (n, V). */
static int decode_steps(const model *m, const int32_t *ids, const int32_t *pos, int n,
                        float *logits) {
    ergo_error err = {0};
    text_state st;
    kv_pool pool;
    kv_seq kv = {0};
    const kv_pool_config kc = text_kv_config(&m->config.text, KV_F32, 0);
    if (text_state_init(&st, &m->config.text, 1, &err) || kv_pool_init(&pool, &kc, &err)) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    const size_t V = (size_t)m->config.text.vocab_size;
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        text_input in = {ids + i, {pos + i, pos + i, pos + i}, 1, NULL, 0,
                         m->config.image_token_id};
        ok = text_forward(m, &st, &pool, &kv, &in, 1, logits + (size_t)i * V, &err) == ERGO_OK;
        CHECK(ok, "decode: %s", err.msg);
    }
    kv_seq_release(&pool, &kv);
    kv_pool_free(&pool);
    text_state_free(&st);
    return ok;
}

/* Every 2-D linear weight: 7 per text layer, 5 per vision block + the merger's 2;
 * plus the head (in q8) when the layers are q4 (quantize.h). */
static int expected_twins(const model *m, quant_format f) {
    return 7 * m->config.text.n_layers + 5 * m->config.vision.depth + 2 + (f == QUANT_Q4);
}

static void test_accuracy(void) {
    /* the full vocabulary in release builds of the full tier; else the reduced variant */
    const int reduced = QM_SANITIZED || !test_tier_full();
    const int vocab = reduced ? 4096 : 0;
    const int n = reduced ? 256 : TF_TOKENS, n_decode = n;
    if (QM_SANITIZED)
        SKIP("q8/q4 accuracy on the full 7B-width vocabulary runs in release builds only (this "
             "sanitizer build runs vocabulary 4096 and 256 positions)");
    else if (reduced)
        SKIP("q8/q4 accuracy on the full 7B-width vocabulary: full tier (the fast tier runs "
             "vocabulary 4096 and 256 positions)");
    model m;
    double t0 = now_ms(), t[6] = {0}, tk; /* fill, reference, quantise, prefill, decode, compare */
    if (!load_case(&m, case_path("text/cases", "lm_7b_widths.json"), vocab)) return;
    t[0] = now_ms() - t0;
    const size_t V = (size_t)m.config.text.vocab_size;
    int32_t *ids = malloc(sizeof *ids * (size_t)n), *pos = malloc(sizeof *pos * (size_t)n);
    float *ref = malloc(sizeof *ref * V * (size_t)n), *got = malloc(sizeof *got * V * (size_t)n);
    if (!ids || !pos || !ref || !got) {
        CHECK(0, "out of memory");
        goto done;
    }
    /* ids from the ordinary vocabulary (below the special tokens), fixed seed */
    const int ordinary = (int)V < 151643 ? (int)V : 151643;
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)(rng_uniform(505, (uint64_t)i) * 0.5f * (float)ordinary + 0.5f * (float)ordinary);
        if (ids[i] >= ordinary) ids[i] = ordinary - 1;
        if (ids[i] < 0) ids[i] = 0;
        pos[i] = i;
    }
    tk = now_ms();
    if (!forward_all(&m, ids, pos, n, ref, 0, KV_F32)) goto done;
    t[1] = now_ms() - tk;
    {   /* keys and values kept in bf16 (--kv-dtype bf16) against the f32 cache */
        agreement kv16 = {0};
        if (forward_all(&m, ids, pos, n, got, 0, KV_BF16)) agree_rows(&kv16, ref, got, n, V);
        const double rate = kv16.n ? (double)kv16.same / kv16.n : 0;
        printf("  [quant_model] bf16 KV cache: top-1 agreement %d/%d = %.2f%%, mean KL %.3e, max "
               "KL %.3e\n",
               kv16.same, kv16.n, 100 * rate, kv16.n ? kv16.kl_sum / kv16.n : 0.0, kv16.kl_max);
        CHECK(kv16.n == n && rate >= 0.99, "bf16 KV cache: top-1 agreement %.4f below 0.99", rate);
    }
    {   /* --compute bf16 (activations rounded to bf16 at each product) on the stored
         * weights, the path prefill takes on a CPU with bf16 dot products */
        ergo_error err = {0};
        if (kernels_set_compute("bf16", &err) == ERGO_OK) {
            agreement c16 = {0};
            if (forward_all(&m, ids, pos, n, got, 0, KV_F32)) agree_rows(&c16, ref, got, n, V);
            kernels_set_compute("f32", &err);
            const double rate = c16.n ? (double)c16.same / c16.n : 0;
            printf("  [quant_model] --compute bf16 (stored weights): top-1 agreement %d/%d = "
                   "%.2f%%, mean KL %.3e, max KL %.3e\n",
                   c16.same, c16.n, 100 * rate, c16.n ? c16.kl_sum / c16.n : 0.0, c16.kl_max);
            CHECK(c16.n == n && rate >= 0.99, "--compute bf16: top-1 agreement %.4f below 0.99",
                  rate);
        } else
            SKIP("--compute bf16 accuracy: %s", err.msg);
    }
    const quant_format fmts[2] = {QUANT_Q8, QUANT_Q4};
    const double floor_agree[2] = {0.99, 0.90};
    double kl_mean[2][2] = {{0}};
    for (int f = 0; f < 2; f++) {
        ergo_error err = {0};
        quantize_opts qo = {.format = fmts[f]};
        quantize_report r;
        tk = now_ms();
        if (model_quantize(&m, &qo, &r, &err)) {
            CHECK(0, "quantize %s: %s", quant_format_name(fmts[f]), err.msg);
            break;
        }
        CHECK(r.n_tensors == expected_twins(&m, fmts[f]), "%s: %d tensors quantised, expected %d",
              quant_format_name(fmts[f]), r.n_tensors, expected_twins(&m, fmts[f]));
        const qmatrix *head = m.weights.text.lm_head.k.q;
        CHECK(fmts[f] == QUANT_Q8 ? head == NULL : (head && head->format == QUANT_Q8),
              "%s: the head's twin is %s", quant_format_name(fmts[f]),
              head ? quant_format_name(head->format) : "none");
        t[2] += now_ms() - tk;
        agreement pre = {0}, dec = {0}, pre16 = {0};
        if (kernels_set_compute("bf16", &err) == ERGO_OK) { /* the panels in bf16 */
            if (forward_all(&m, ids, pos, n, got, 0, KV_F32)) agree_rows(&pre16, ref, got, n, V);
            kernels_set_compute("f32", &err);
            const double rate = pre16.n ? (double)pre16.same / pre16.n : 0;
            printf("  [quant_model] %s prefill --compute bf16: top-1 agreement %d/%d = %.2f%%, "
                   "mean KL %.3e, max KL %.3e\n",
                   quant_format_name(fmts[f]), pre16.same, pre16.n, 100 * rate,
                   pre16.n ? pre16.kl_sum / pre16.n : 0.0, pre16.kl_max);
            CHECK(pre16.n == n && rate >= floor_agree[f],
                  "%s prefill --compute bf16: top-1 agreement %.4f below %.2f",
                  quant_format_name(fmts[f]), rate, floor_agree[f]);
        }
        tk = now_ms();
        if (forward_all(&m, ids, pos, n, got, 0, KV_F32)) {
            t[3] += now_ms() - tk;
            tk = now_ms();
            agree_rows(&pre, ref, got, n, V);
            t[5] += now_ms() - tk;
        }
        tk = now_ms();
        if (forward_all(&m, ids, pos, n_decode, got, 1, KV_F32)) {
            t[4] += now_ms() - tk;
            tk = now_ms();
            agree_rows(&dec, ref, got, n_decode, V);
            t[5] += now_ms() - tk;
            /* the one-piece int8 forward is what decode gives, token by token */
            float *steps = malloc(sizeof *steps * V * DECODE_CHECK);
            if (steps && decode_steps(&m, ids, pos, DECODE_CHECK, steps))
                CHECK(!memcmp(steps, got, sizeof *steps * V * DECODE_CHECK),
                      "%s: %d decode steps differ from the int8 forward of the same rows",
                      quant_format_name(fmts[f]), DECODE_CHECK);
            free(steps);
        }
        const agreement *both[2] = {&pre, &dec};
        const char *label[2] = {"prefill (dequantised panels)", "decode (int8 activations)"};
        for (int p = 0; p < 2; p++) {
            const agreement *a = both[p];
            const double rate = a->n ? (double)a->same / a->n : 0;
            kl_mean[f][p] = a->n ? a->kl_sum / a->n : (double)INFINITY;
            printf("  [quant_model] %s %s: top-1 agreement %d/%d = %.2f%%, mean KL %.3e, max KL "
                   "%.3e\n",
                   quant_format_name(fmts[f]), label[p], a->same, a->n, 100 * rate, kl_mean[f][p],
                   a->kl_max);
            CHECK(a->n >= (p ? n_decode : n), "%s %s: %d positions compared",
                  quant_format_name(fmts[f]), label[p], a->n);
            CHECK(rate >= floor_agree[f], "%s %s: top-1 agreement %.4f below %.2f",
                  quant_format_name(fmts[f]), label[p], rate, floor_agree[f]);
            CHECK(isfinite(kl_mean[f][p]) && kl_mean[f][p] >= 0, "%s %s: mean KL %g",
                  quant_format_name(fmts[f]), label[p], kl_mean[f][p]);
        }
        model_quant_free(&m);
    }
    /* 4 bits lose more than 8: a sanity check on the measurement itself */
    for (int p = 0; p < 2; p++)
        CHECK(kl_mean[0][p] < kl_mean[1][p], "mean KL q8 %g is not below q4 %g", kl_mean[0][p],
              kl_mean[1][p]);
    printf("  [quant_model] %zu-token vocabulary, %d positions: %.1f s (fill %.1f, reference "
           "prefill %.1f, quantise %.1f, quantised prefill %.1f, decode %.1f, compare %.1f)\n",
           V, n, (now_ms() - t0) / 1e3, t[0] / 1e3, t[1] / 1e3, t[2] / 1e3, t[3] / 1e3,
           t[4] / 1e3, t[5] / 1e3);
done:
    free(ids), free(pos), free(ref), free(got);
    model_free(&m);
}

/* ---- the cache file ---- */

static int twins_equal(const model *a, const model *b, const char *what) {
    const int n = weights_spec(&a->config, NULL, NULL);
    weight_spec *sa = malloc(sizeof *sa * (size_t)n), *sb = malloc(sizeof *sb * (size_t)n);
    model_weights wa = a->weights, wb = b->weights;
    weights_spec(&a->config, sa, &wa);
    weights_spec(&b->config, sb, &wb);
    int same = 1, twins = 0;
    for (int i = 0; i < n && same; i++) {
        const qmatrix *x = sa[i].slot->k.q, *y = sb[i].slot->k.q;
        if (!x != !y) same = 0;
        if (!x || !y) continue;
        twins++;
        same = x->rows == y->rows && x->cols == y->cols && x->format == y->format &&
               !memcmp(x->q, y->q, (size_t)x->rows * quant_row_bytes(x->format, x->cols)) &&
               !memcmp(x->scale, y->scale,
                       sizeof(float) * (size_t)x->rows * quant_scale_count(x->cols));
    }
    CHECK(same && twins > 0, "%s: twins differ (%d compared)", what, twins);
    free(sa), free(sb);
    return same;
}

/* Overwrites n bytes at off, or flips the byte there when n == 0. */
static void corrupt_at(const char *path, long off, const void *bytes, size_t n) {
    FILE *f = fopen(path, "r+b");
    if (!f) return;
    uint8_t flipped;
    if (n == 0 && fseek(f, off, SEEK_SET) == 0 && fread(&flipped, 1, 1, f) == 1) {
        flipped ^= 0xff;
        bytes = &flipped;
        n = 1;
    }
    fseek(f, off, SEEK_SET);
    fwrite(bytes, 1, n, f);
    fclose(f);
}

static void test_cache(void) {
    const char *cp = case_path("checkpoints/cases", "flat_legacy_bf16.json");
    char path[1024];
    snprintf(path, sizeof path, "%s/quant_cache.q4", scratch_dir());
    unlink(path);
    model fresh, cached;
    if (!load_case(&fresh, cp, 0)) return;
    if (!load_case(&cached, cp, 0)) {
        model_free(&fresh);
        return;
    }
    ergo_error err = {0};
    quantize_report r;
    quantize_opts qo = {.format = QUANT_Q4, .cache_path = path};
    CHECK(model_quantize(&fresh, &qo, &r, &err) == ERGO_OK, "%s", err.msg);
    CHECK(!r.from_cache && r.cache_written, "first load: from_cache %d written %d (%s)",
          r.from_cache, r.cache_written, r.cache_note);
    CHECK(model_quantize(&cached, &qo, &r, &err) == ERGO_OK, "%s", err.msg);
    CHECK(r.from_cache, "second load not from the cache: %s", r.cache_note);
    twins_equal(&fresh, &cached, "cache vs fresh");
    CHECK(model_quantize(&cached, &qo, &r, &err) != ERGO_OK, "quantising twice is refused");

    /* each corruption: refused with a note, rebuilt (and rewritten) */
    struct {
        const char *what;
        long off;
        uint8_t bytes[4];
        size_t n;
        const char *note;
    } bad[] = {
        {"magic", 0, {'X'}, 1, "not an ergo weights cache"},
        {"format", 8, {1, 0, 0, 0}, 4, "another format"},
        {"fingerprint", 30, {0}, 0, "other weights"},
        {"scale NaN", 0, {0x00, 0x00, 0xc0, 0x7f}, 4, "corrupt"},
    };
    {   /* the NaN goes over the first twin's first scale (its offset is in entry 0) */
        FILE *f = fopen(path, "rb");
        uint64_t s_off = 0;
        if (f && fseek(f, 56 + 24, SEEK_SET) == 0 && fread(&s_off, 8, 1, f) == 1)
            bad[3].off = (long)s_off;
        if (f) fclose(f);
        CHECK(bad[3].off > 4096, "the first scale's offset %ld", bad[3].off);
    }
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        model_quant_free(&cached);
        corrupt_at(path, bad[k].off, bad[k].bytes, bad[k].n);
        CHECK(model_quantize(&cached, &qo, &r, &err) == ERGO_OK, "%s: %s", bad[k].what, err.msg);
        CHECK(!r.from_cache && strstr(r.cache_note, bad[k].note) && r.cache_written,
              "%s: from_cache %d, note `%s'", bad[k].what, r.from_cache, r.cache_note);
        twins_equal(&fresh, &cached, bad[k].what);
    }
    /* a truncated file */
    model_quant_free(&cached);
    CHECK(truncate(path, 4096 + 100) == 0, "truncate");
    CHECK(model_quantize(&cached, &qo, &r, &err) == ERGO_OK, "%s", err.msg);
    CHECK(!r.from_cache && strstr(r.cache_note, "truncated"), "truncated: note `%s'", r.cache_note);
    /* the other format's cache path holding q4 bytes */
    model_quant_free(&cached);
    quantize_opts q8o = {.format = QUANT_Q8, .cache_path = path};
    CHECK(model_quantize(&cached, &q8o, &r, &err) == ERGO_OK, "%s", err.msg);
    CHECK(!r.from_cache && strstr(r.cache_note, "another format"), "q8 over a q4 cache: `%s'",
          r.cache_note);
    /* an unwritable place: a note, not a failure */
    model_quant_free(&cached);
    quantize_opts nowhere = {.format = QUANT_Q8, .cache_path = "/nonexistent-dir/x.q8"};
    CHECK(model_quantize(&cached, &nowhere, &r, &err) == ERGO_OK, "%s", err.msg);
    CHECK(!r.cache_written && strstr(r.cache_note, "not written"), "unwritable: `%s'",
          r.cache_note);
    unlink(path);
    model_free(&fresh);
    model_free(&cached);
}

void test_quant_model(void) {
    ergo_error err = {0};
    CHECK(kernels_init(NULL, &err) == ERGO_OK, "%s", err.msg);
    test_cache();
    test_accuracy();
}
