/*
 * test_batch.c - batched forwards equal solo runs, bit for bit (issue 9).
 *
 * The engine's exactness gives its own oracle: B sequences of different lengths
 * (text only and with an image, some prefilling while others decode, started at
 * different steps) run together through text_forward_batch must give every sequence
 * exactly the logits, and so the greedy tokens, it gets alone. Checked for
 * B = 1, 2, 3, 8 on every ISA this machine has, with the weights as stored, q8 and
 * q4, and with the KV cache in f32 and bf16; then generate_step (the request loop)
 * against generate_run, and forked sessions against deep copies, with the blocks
 * they share measured.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"
#include "lm_fixture.h"
#include "model/generate.h"
#include "model/quantize.h"
#include "model/session.h"
#include "model/text.h"
#include "runtime/scheduler.h"
#include "tokenizer/tokenizer.h"

#define N_SEQS 8
#define N_STEPS 5
#define MAX_PROMPT 160

/* One test sequence: its prompt (with an image for some), the tick it starts at. */
typedef struct seq_spec {
    int32_t ids[MAX_PROMPT];
    int n;
    mrope_grid grid;
    int has_image;
    float *vision; /* (image tokens, D) */
    int start;     /* the step at which it is prefilled */
} seq_spec;

/* Prompts of lengths 1..140, every third with a 1x4x6 image (6 merged tokens). */
static void make_specs(seq_spec *sp, const model *m) {
    static const int lens[N_SEQS] = {3, 17, 1, 70, 2, 41, 140, 5};
    static const int starts[N_SEQS] = {0, 0, 1, 0, 2, 1, 0, 3};
    const model_config *cfg = &m->config;
    const int D = cfg->text.hidden, V = 4096;
    for (int s = 0; s < N_SEQS; s++) {
        seq_spec *q = &sp[s];
        memset(q, 0, sizeof *q);
        q->start = starts[s];
        q->has_image = s % 3 == 1;
        int n = 0;
        for (int i = 0; i < lens[s]; i++) q->ids[n++] = (int32_t)((s * 7919 + i * 104729) % V);
        if (q->has_image) {
            q->grid = (mrope_grid){1, 4, 6};
            const int tokens = (int)mrope_grid_tokens(&q->grid, cfg->vision.merge);
            q->ids[n++] = cfg->vision_start_token_id;
            for (int i = 0; i < tokens; i++) q->ids[n++] = cfg->image_token_id;
            q->ids[n++] = cfg->vision_end_token_id;
            q->ids[n++] = 77;
            q->vision = malloc(sizeof(float) * (size_t)tokens * D);
            for (int i = 0; i < tokens * D; i++)
                q->vision[i] = (float)((i * 37 + s * 11) % 101) / 50.0f - 1.0f;
        }
        q->n = n;
    }
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* logits (N_STEPS + 1, V) per sequence: after the prompt, then after each greedy token. */
static int run_solo(const model *m, text_state *st, kv_pool *pool, const seq_spec *q,
                    float *logits) {
    const int V = m->config.text.vocab_size;
    session s;
    ergo_error err = {0};
    int ok = session_init(&s, m, pool, 4096, &err) == ERGO_OK;
    ok = ok && session_append(&s, st, q->ids, q->n, q->has_image ? &q->grid : NULL,
                              q->has_image, q->vision, logits, &err) == ERGO_OK;
    for (int t = 0; ok && t < N_STEPS; t++) {
        int32_t next = argmax(logits + (size_t)t * V, V);
        ok = session_append(&s, st, &next, 1, NULL, 0, NULL, logits + (size_t)(t + 1) * V,
                            &err) == ERGO_OK;
    }
    CHECK(ok, "solo run: %s", err.msg);
    session_free(&s);
    return ok;
}

/* The first B sequences together: at each tick the ones that start prefill their prompt
 * while the others decode one token, all in one text_forward_batch. */
static int run_batched(const model *m, text_state *st, kv_pool *pool, const seq_spec *sp, int B,
                       float *logits /* (B, N_STEPS + 1, V) */) {
    const int V = m->config.text.vocab_size;
    const size_t per = (size_t)(N_STEPS + 1) * V;
    session s[N_SEQS];
    int step[N_SEQS] = {0}; /* logits rows written so far */
    int32_t next[N_SEQS];
    ergo_error err = {0};
    int ok = 1;
    for (int b = 0; b < B && ok; b++) ok = session_init(&s[b], m, pool, 4096, &err) == ERGO_OK;
    for (int tick = 0; ok; tick++) {
        text_seq qs[N_SEQS];
        int idx[N_SEQS], n = 0;
        for (int b = 0; b < B && ok; b++) {
            const seq_spec *q = &sp[b];
            float *out = logits + b * per + (size_t)step[b] * V;
            if (tick < q->start || step[b] == N_STEPS + 1) continue;
            if (step[b] == 0) {
                ok = session_prepare(&s[b], q->ids, q->n, q->has_image ? &q->grid : NULL,
                                     q->has_image, q->vision, out, &qs[n], &err) == ERGO_OK;
            } else {
                next[b] = argmax(out - V, V);
                ok = session_prepare(&s[b], &next[b], 1, NULL, 0, NULL, out, &qs[n], &err) ==
                     ERGO_OK;
            }
            idx[n++] = b;
        }
        if (!n || !ok) break;
        ok = text_forward_batch(m, st, pool, qs, n, &err) == ERGO_OK;
        for (int k = 0; k < n; k++) {
            if (ok) session_commit(&s[idx[k]]), step[idx[k]]++;
            else session_abort(&s[idx[k]]);
        }
    }
    CHECK(ok, "batched run (B=%d): %s", B, err.msg);
    for (int b = 0; b < B; b++) session_free(&s[b]);
    return ok;
}

static void compare_runs(const model *m, const char *label, kv_dtype kvt) {
    const int V = m->config.text.vocab_size;
    const size_t per = (size_t)(N_STEPS + 1) * V;
    seq_spec sp[N_SEQS];
    make_specs(sp, m);
    text_state st;
    kv_pool pool;
    ergo_error err = {0};
    const kv_pool_config kc = text_kv_config(&m->config.text, kvt, 0);
    if (text_state_init(&st, &m->config.text, 48, &err) || kv_pool_init(&pool, &kc, &err)) {
        CHECK(0, "%s: %s", label, err.msg);
        return;
    }
    float *solo = malloc(sizeof(float) * per * N_SEQS);
    float *bat = malloc(sizeof(float) * per * N_SEQS);
    int ok = 1;
    for (int s = 0; s < N_SEQS && ok; s++) ok = run_solo(m, &st, &pool, &sp[s], solo + s * per);
    static const int Bs[] = {1, 2, 3, 8};
    for (size_t bi = 0; bi < sizeof Bs / sizeof Bs[0] && ok; bi++) {
        const int B = Bs[bi];
        if (!run_batched(m, &st, &pool, sp, B, bat)) break;
        for (int b = 0; b < B; b++) {
            size_t bad = per;
            for (size_t i = 0; i < per && bad == per; i++)
                if (memcmp(&solo[b * per + i], &bat[b * per + i], sizeof(float))) bad = i;
            CHECK(bad == per,
                  "%s: B=%d, sequence %d (%d prompt tokens%s): logits of step %zu differ from "
                  "its solo run at id %zu: %.9g vs %.9g",
                  label, B, b, sp[b].n, sp[b].has_image ? ", image" : "", bad / V, bad % V,
                  (double)bat[b * per + (bad < per ? bad : 0)],
                  (double)solo[b * per + (bad < per ? bad : 0)]);
        }
    }
    /* nothing leaked: every block went back (to the free list) */
    kv_pool_stats ps;
    kv_pool_stats_get(&pool, &ps);
    CHECK(ps.in_use == 0, "%s: %lld blocks still in use after every session ended", label,
          (long long)ps.in_use);
    free(solo);
    free(bat);
    for (int s = 0; s < N_SEQS; s++) free(sp[s].vision);
    kv_pool_free(&pool);
    text_state_free(&st);
}

/* generate_step over 3 requests == generate_run of each (tokens, text, reason). */
static void test_generate_step(const model *m, const tokenizer *tok) {
    seq_spec sp[N_SEQS];
    make_specs(sp, m);
    const int V = m->config.text.vocab_size;
    text_state st;
    kv_pool pool;
    ergo_error err = {0};
    text_state_init(&st, &m->config.text, 64, &err);
    lmf_pool(&pool, m);
    generate_params gp = {{0}, 9, NULL, 0, NULL, 0};
    sampler_config_from_generation(&gp.sampling, &m->generation); /* its repetition penalty */
    gp.sampling.do_sample = 0;
    int32_t stop = 0;
    enum { R = 3 };
    generate_result solo[R], bat[R];
    memset(solo, 0, sizeof solo);
    memset(bat, 0, sizeof bat);
    float *logits = malloc(sizeof(float) * V * R);
    session s[R];
    for (int r = 0; r < R; r++) {
        session_init(&s[r], m, &pool, 4096, &err);
        session_append(&s[r], &st, sp[r].ids, sp[r].n, sp[r].has_image ? &sp[r].grid : NULL,
                       sp[r].has_image, sp[r].vision, logits, &err);
        /* the second request stops at its own 4th token (a stop id), the others by length */
        if (r == 1) {
            generate_params g1 = gp;
            generate_result probe = {0};
            session f;
            session_fork(&f, &s[r], &err);
            generate_run(&f, &st, tok, &g1, logits, NULL, NULL, &probe, &err);
            stop = probe.tokens.n > 3 ? probe.tokens.v[3] : 0;
            generate_result_free(&probe);
            session_free(&f);
        }
        session_free(&s[r]);
    }
    for (int r = 0; r < R; r++) {
        session_init(&s[r], m, &pool, 4096, &err);
        session_append(&s[r], &st, sp[r].ids, sp[r].n, sp[r].has_image ? &sp[r].grid : NULL,
                       sp[r].has_image, sp[r].vision, logits, &err);
        generate_params g = gp;
        if (r == 1) g.stop_ids = &stop, g.n_stop_ids = 1;
        CHECK(generate_run(&s[r], &st, tok, &g, logits, NULL, NULL, &solo[r], &err) == ERGO_OK,
              "generate_run: %s", err.msg);
        session_free(&s[r]);
    }
    gen_request g[R], *set[R];
    generate_params gps[R];
    for (int r = 0; r < R; r++) {
        session_init(&s[r], m, &pool, 4096, &err);
        session_append(&s[r], &st, sp[r].ids, sp[r].n, sp[r].has_image ? &sp[r].grid : NULL,
                       sp[r].has_image, sp[r].vision, logits + (size_t)r * V, &err);
        gps[r] = gp;
        if (r == 1) gps[r].stop_ids = &stop, gps[r].n_stop_ids = 1;
        CHECK(gen_request_init(&g[r], &s[r], tok, &gps[r], logits + (size_t)r * V, NULL, NULL,
                               &bat[r], &err) == ERGO_OK,
              "gen_request_init: %s", err.msg);
        set[r] = &g[r];
    }
    int running = R, steps = 0;
    while (running && generate_step(set, R, &st, &running, &err) == ERGO_OK) steps++;
    for (int r = 0; r < R; r++) {
        gen_request_finish(&g[r]);
        CHECK(g[r].status == ERGO_OK, "request %d: %s", r, g[r].err.msg);
        CHECK_EQ_I32(bat[r].tokens.v, bat[r].tokens.n, solo[r].tokens.v, solo[r].tokens.n,
                     "generate_step tokens vs generate_run");
        CHECK(bat[r].reason == solo[r].reason, "request %d: reason %s vs %s", r,
              stop_reason_name(bat[r].reason), stop_reason_name(solo[r].reason));
        generate_result_free(&bat[r]);
        generate_result_free(&solo[r]);
        session_free(&s[r]);
    }
    CHECK(steps == 9, "3 requests of at most 9 tokens took %d steps (want 9)", steps);
    free(logits);
    for (int s2 = 0; s2 < N_SEQS; s2++) free(sp[s2].vision);
    kv_pool_free(&pool);
    text_state_free(&st);
}

/* The scheduler: the 8 requests submitted at different ticks, prompts cut into chunks
 * of a small tick budget while others decode; tokens == generate_run of each alone. */
static void test_scheduler(const model *m, const tokenizer *tok, const char *label) {
    seq_spec sp[N_SEQS];
    make_specs(sp, m);
    const int V = m->config.text.vocab_size;
    text_state st;
    kv_pool pool;
    ergo_error err = {0};
    text_state_init(&st, &m->config.text, 64, &err);
    lmf_pool(&pool, m);
    generate_params gp = {{0}, 7, m->generation.eos_token_ids, m->generation.n_eos, NULL, 0};
    sampler_config_from_generation(&gp.sampling, &m->generation);
    gp.sampling.do_sample = 0;
    generate_result solo[N_SEQS], got[N_SEQS];
    memset(solo, 0, sizeof solo);
    memset(got, 0, sizeof got);
    float *logits = malloc(sizeof(float) * V * N_SEQS);
    session s[N_SEQS];
    for (int r = 0; r < N_SEQS; r++) {
        session_init(&s[r], m, &pool, 4096, &err);
        session_append(&s[r], &st, sp[r].ids, sp[r].n, sp[r].has_image ? &sp[r].grid : NULL,
                       sp[r].has_image, sp[r].vision, logits, &err);
        CHECK(generate_run(&s[r], &st, tok, &gp, logits, NULL, NULL, &solo[r], &err) == ERGO_OK,
              "%s: solo: %s", label, err.msg);
        session_free(&s[r]);
    }
    scheduler sc;
    sched_init(&sc, m, &st, &pool, 16); /* 140-token prompt: 9+ ticks of chunks */
    sched_request rq[N_SEQS];
    memset(rq, 0, sizeof rq);
    for (int r = 0; r < N_SEQS; r++) session_init(&s[r], m, &pool, 4096, &err);
    int submitted = 0, max_active = 0;
    for (int tick = 0; submitted < N_SEQS || sched_active(&sc); tick++) {
        for (int r = 0; r < N_SEQS; r++)
            if (sp[r].start * 3 == tick) { /* staggered arrivals */
                rq[r] = (sched_request){.s = &s[r], .tokens = sp[r].ids, .n_tokens = sp[r].n,
                                        .grids = sp[r].has_image ? &sp[r].grid : NULL,
                                        .n_images = sp[r].has_image, .vision = sp[r].vision,
                                        .tok = tok, .params = gp,
                                        .logits = logits + (size_t)r * V, .out = &got[r]};
                CHECK(sched_submit(&sc, &rq[r], &err) == ERGO_OK, "submit: %s", err.msg);
                submitted++;
            }
        if (sched_active(&sc) > max_active) max_active = sched_active(&sc);
        if (sched_tick(&sc, &err) != ERGO_OK || tick > 10000) break;
    }
    CHECK(max_active >= 6, "%s: at most %d requests ran at once (want the staggered 8 to "
                           "overlap)", label, max_active);
    for (int r = 0; r < N_SEQS; r++) {
        CHECK(rq[r].phase == SCHED_DONE && rq[r].status == ERGO_OK, "%s: request %d: %s", label,
              r, rq[r].err.msg);
        char l2[128];
        snprintf(l2, sizeof l2, "%s: scheduled request %d vs alone", label, r);
        CHECK_EQ_I32(got[r].tokens.v, got[r].tokens.n, solo[r].tokens.v, solo[r].tokens.n, l2);
        CHECK(got[r].reason == solo[r].reason && got[r].text.n == solo[r].text.n &&
                  (!got[r].text.n || !memcmp(got[r].text.s, solo[r].text.s, got[r].text.n)),
              "%s: request %d: text/reason differ", label, r);
        generate_result_free(&got[r]);
        generate_result_free(&solo[r]);
        session_free(&s[r]);
    }
    sched_free(&sc);
    kv_pool_stats ps;
    kv_pool_stats_get(&pool, &ps);
    CHECK(ps.in_use == 0, "%s: %lld blocks in use after the scheduler's requests ended", label,
          (long long)ps.in_use);
    free(logits);
    for (int r = 0; r < N_SEQS; r++) free(sp[r].vision);
    kv_pool_free(&pool);
    text_state_free(&st);
}

/* Forks share blocks until one side writes; their outputs equal a deep copy's. */
static void test_fork_sharing(const model *m) {
    seq_spec sp[N_SEQS];
    make_specs(sp, m);
    const int V = m->config.text.vocab_size;
    text_state st;
    kv_pool pool;
    ergo_error err = {0};
    text_state_init(&st, &m->config.text, 64, &err);
    lmf_pool(&pool, m);
    const seq_spec *q = &sp[6]; /* 140 tokens: 3 blocks, the last one partial */
    session base, f[4], deep;
    float *lb = malloc(sizeof(float) * V), *lf = malloc(sizeof(float) * V * 4);
    session_init(&base, m, &pool, 4096, &err);
    session_append(&base, &st, q->ids, q->n, NULL, 0, NULL, lb, &err);
    kv_pool_stats a, b, c;
    kv_pool_stats_get(&pool, &a);
    for (int i = 0; i < 4; i++) session_fork(&f[i], &base, &err);
    kv_pool_stats_get(&pool, &b);
    CHECK(b.allocated == a.allocated && b.in_use == a.in_use,
          "4 forks of a %d-token session allocated %lld blocks (want 0)", q->n,
          (long long)(b.allocated - a.allocated));
    /* each fork appends a different token: each copies only the partial last block */
    for (int i = 0; i < 4; i++) {
        int32_t t = 100 + i;
        session_append(&f[i], &st, &t, 1, NULL, 0, NULL, lf + (size_t)i * V, &err);
    }
    kv_pool_stats_get(&pool, &c);
    CHECK(c.in_use - b.in_use == 4 && c.cow_copies - b.cow_copies == 4,
          "4 diverging forks: %lld more blocks in use, %lld copies (want 4 and 4)",
          (long long)(c.in_use - b.in_use), (long long)(c.cow_copies - b.cow_copies));
    /* a deep copy (the whole conversation prefilled again) gives the same logits */
    for (int i = 0; i < 4; i++) {
        int32_t ids[MAX_PROMPT + 1];
        memcpy(ids, q->ids, sizeof(int32_t) * (size_t)q->n);
        ids[q->n] = 100 + i;
        session_init(&deep, m, &pool, 4096, &err);
        session_append(&deep, &st, ids, q->n, NULL, 0, NULL, lb, &err);
        session_append(&deep, &st, ids + q->n, 1, NULL, 0, NULL, lb, &err);
        CHECK(!memcmp(lb, lf + (size_t)i * V, sizeof(float) * V),
              "fork %d: logits differ from a deep copy's", i);
        session_free(&deep);
    }
    for (int i = 0; i < 4; i++) session_free(&f[i]);
    session_free(&base);
    ergo_error e2 = {0};
    CHECK(kv_pool_check(&pool, NULL, 0, &e2) == 0, "pool consistency: %s", e2.msg);
    free(lb);
    free(lf);
    for (int s = 0; s < N_SEQS; s++) free(sp[s].vision);
    kv_pool_free(&pool);
    text_state_free(&st);
}

/* The first text case's checkpoint with its vocabulary cut to 8192 ids and the vision
 * ids moved inside it (the head is the cost of these runs, not what they test). */
static int load_small(model *m, const char *case_rel) {
    ckpt_case c;
    ergo_error err = {0};
    if (ckpt_case_load(&c, lmf_path(case_rel), &err)) {
        CHECK(0, "%s: %s", case_rel, err.msg);
        return 0;
    }
    static const char *keys[] = {"vision_start_token_id", "vision_end_token_id",
                                 "image_token_id", "video_token_id", "vocab_size"};
    static const int vals[] = {8100, 8101, 8102, 8103, 8192};
    for (int i = 0; i < 5; i++) json_object_set_new(c.config, keys[i], json_integer(vals[i]));
    c.parsed.vision_start_token_id = 8100;
    c.parsed.vision_end_token_id = 8101;
    c.parsed.image_token_id = 8102;
    c.parsed.video_token_id = 8103;
    c.parsed.text.vocab_size = 8192;
    ergo_status s = random_checkpoint_fill(m, &c, &err);
    ckpt_case_free(&c);
    CHECK(s == ERGO_OK, "%s: %s", case_rel, err.msg);
    return s == ERGO_OK;
}

void test_batch(void) {
    json_t *man = lmf_manifest();
    if (!man) return;
    const json_t *cs = json_array_get(json_object_get(man, "cases"), 0);
    model m;
    ergo_error err = {0};
    if (!load_small(&m, json_string_value(json_object_get(cs, "case")))) {
        json_decref(man);
        return;
    }
    tokenizer *tok = NULL;
    CHECK(tokenizer_load(&tok, "assets/qwen2.5-vl-tokenizer", &err) == ERGO_OK, "%s", err.msg);
    if (tok) test_generate_step(&m, tok);
    test_fork_sharing(&m);
    quantize_opts qo = {.format = QUANT_Q8};
    const cpu_isa best = cpu_best_isa();
    for (int fmt = 0; fmt < 3; fmt++) {
        if (fmt) {
            model_quant_free(&m);
            qo.format = fmt == 1 ? QUANT_Q8 : QUANT_Q4;
            quantize_report rep;
            CHECK(model_quantize(&m, &qo, &rep, &err) == ERGO_OK, "quantize: %s", err.msg);
        }
        if (tok) test_scheduler(&m, tok, fmt == 0 ? "stored" : fmt == 1 ? "q8" : "q4");
        for (int isa = ISA_REF; isa <= (int)best; isa++) {
            if (kernels_init(cpu_isa_name((cpu_isa)isa), &err)) continue;
            /* the bf16 cache once per ISA (with the stored weights) */
            for (int kvt = 0; kvt < (fmt == 0 ? 2 : 1); kvt++) {
                char label[96];
                snprintf(label, sizeof label, "%s weights, %s, %s KV",
                         fmt == 0 ? "stored" : fmt == 1 ? "q8" : "q4", cpu_isa_name((cpu_isa)isa),
                         kvt ? "bf16" : "f32");
                compare_runs(&m, label, kvt ? KV_BF16 : KV_F32);
            }
        }
    }
    kernels_init(NULL, &err);
    tokenizer_free(tok);
    model_free(&m);
    json_decref(man);
}
