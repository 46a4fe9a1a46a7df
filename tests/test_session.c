/* Tests of src/model/session.c and src/model/generate.c on tests/fixtures/text:
 *  - ERGO's stage-2 shape piece by piece: turn 1 (system, user [image 1, text],
 *    generation prompt) appended, its logits and greedy continuation against the
 *    reference; then the rest (assistant reply, user [image 2, text], generation
 *    prompt) appended to the live session: logits against the reference (1e-3) and
 *    against one prefill of the whole conversation (1e-4), and the greedy
 *    continuation after the append identical to the reference's;
 *  - greedy continuations (>= 32 tokens, the checkpoint's repetition penalty and
 *    eos ids) of every prompt identical to model.generate(do_sample=False);
 *  - token-by-token appends equal to one prefill; fork (independent copies);
 *    truncate (back to turn 1, then the same append again; refusal inside an
 *    image; next_pos recomputed); the context limit; failed appends change nothing. */
#include "lm_fixture.h"
#include "model/generate.h"
#include "model/session.h"
#include "tokenizer/tokenizer.h"

static float max_diff(const float *a, const float *b, int n) {
    float d = 0;
    for (int i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

typedef struct ctx {
    const json_t *man;
    model m;
    text_state st;
    kv_pool pool;
    tokenizer *tok;
    int V;
    double tol, session_tol;
} ctx;

/* Greedy continuation with the checkpoint's generation config (do_sample off). */
static void check_greedy(ctx *c, session *s, float *logits, const json_t *want_arr,
                         const char *label) {
    int nw;
    int32_t *want = lmf_ints(want_arr, &nw);
    generate_params gp = {{0}, nw, c->m.generation.eos_token_ids, c->m.generation.n_eos, NULL, 0};
    sampler_config_from_generation(&gp.sampling, &c->m.generation);
    gp.sampling.do_sample = 0;
    generate_result r = {0};
    ergo_error err = {0};
    CHECK(generate_run(s, &c->st, c->tok, &gp, logits, NULL, NULL, &r, &err) == ERGO_OK, "%s: %s",
          label, err.msg);
    char l2[200];
    snprintf(l2, sizeof l2, "%s greedy tokens", label);
    CHECK_EQ_I32(r.tokens.v, r.tokens.n, want, (size_t)nw, l2);
    CHECK(nw >= 32, "%s: only %d greedy tokens recorded", label, nw);
    CHECK(r.reason == (nw && (want[nw - 1] == 151645 || want[nw - 1] == 151643) ? STOP_EOS
                                                                                : STOP_LENGTH),
          "%s: stop reason %s", label, stop_reason_name(r.reason));
    generate_result_free(&r);
    free(want);
}

static float *vision_rows(const json_t *rec, int *rows) {
    size_t n;
    const json_t *f = json_object_get(rec, "vision_file");
    *rows = 0;
    if (!f) return NULL;
    *rows = (int)json_integer_value(json_object_get(rec, "vision_rows"));
    return lmf_read_f32(json_string_value(f), &n);
}

static void test_prompt(ctx *c, const json_t *pr, const char *label) {
    ergo_error err = {0};
    int n, nv;
    int32_t *ids = lmf_ints(json_object_get(pr, "input_ids"), &n);
    mrope_grid g[8];
    int ng = lmf_grids(json_object_get(pr, "grids"), g, 8);
    float *vis = vision_rows(pr, &nv);
    float *logits = malloc(sizeof *logits * c->V), *whole = malloc(sizeof *whole * c->V);
    session s;
    session_init(&s, &c->m, &c->pool, 4096, &err);
    CHECK(session_append(&s, &c->st, ids, n, g, ng, vis, whole, &err) == ERGO_OK, "%s: %s", label,
          err.msg);
    CHECK_EQ_INT(s.next_pos - s.n_cached, json_integer_value(json_object_get(pr, "rope_delta")),
                 "session rope delta");
    const json_t *t1 = json_object_get(pr, "turn1");
    if (t1) {
        /* the stage-2 shape: turn 1, then the rest appended to the live session */
        int n1 = (int)json_integer_value(json_object_get(t1, "n_tokens"));
        int i1 = (int)json_integer_value(json_object_get(t1, "n_images"));
        int rows1 = 0;
        for (int k = 0; k < i1; k++) rows1 += (int)mrope_grid_tokens(&g[k], 2);
        session a;
        session_init(&a, &c->m, &c->pool, 4096, &err);
        CHECK(session_append(&a, &c->st, ids, n1, g, i1, vis, logits, &err) == ERGO_OK,
              "%s turn 1: %s", label, err.msg);
        char l1[200];
        snprintf(l1, sizeof l1, "%s turn 1", label);
        double e1 = lmf_check_logits(logits, c->V, json_object_get(t1, "logits"), c->tol, l1);
        CHECK_EQ_INT(a.next_pos - a.n_cached, json_integer_value(json_object_get(t1, "rope_delta")),
                     "turn 1 rope delta");
        /* stage 1's greedy answer, on a fork (the live session stays at turn 1) */
        session f;
        CHECK(session_fork(&f, &a, &err) == ERGO_OK, "fork: %s", err.msg);
        float *lf = malloc(sizeof *lf * c->V);
        memcpy(lf, logits, sizeof *lf * c->V);
        check_greedy(c, &f, lf, json_object_get(t1, "generated"), l1);
        CHECK(f.n_cached > a.n_cached && a.n_cached == n1, "fork is independent: %d vs %d",
              f.n_cached, a.n_cached);
        session_free(&f);
        free(lf);
        /* append turn 2 (reply + user [image 2, text] + generation prompt) */
        CHECK(session_append(&a, &c->st, ids + n1, n - n1, g + i1, ng - i1,
                             vis + (size_t)rows1 * c->m.config.text.hidden, logits, &err) ==
                  ERGO_OK,
              "%s turn 2: %s", label, err.msg);
        char l2[200];
        snprintf(l2, sizeof l2, "%s appended", label);
        double e2 = lmf_check_logits(logits, c->V, json_object_get(pr, "logits"), c->tol, l2);
        float d = max_diff(logits, whole, c->V);
        CHECK((double)d <= c->session_tol, "%s: append differs from one prefill by %g", label, (double)d);
        CHECK(a.next_pos == s.next_pos && a.n_cached == s.n_cached && a.n_images == s.n_images,
              "counters after the append: pos %d/%d rows %d/%d", a.next_pos, s.next_pos,
              a.n_cached, s.n_cached);
        printf("  [session] %-30s turn 1 |err| %.2e; appended turn 2 |err| %.2e, vs one "
               "prefill %.2e\n", label, e1, e2, (double)d);
        /* truncate back to turn 1 and append again: the same logits */
        CHECK(session_truncate(&a, n1 + 3, &err) == ERGO_OK, "truncate: %s", err.msg);
        CHECK(session_truncate(&a, n1, &err) == ERGO_OK, "truncate: %s", err.msg);
        CHECK(a.n_images == i1 && a.n_cached == n1, "truncate keeps turn 1's images");
        CHECK_EQ_INT(a.next_pos - n1, json_integer_value(json_object_get(t1, "rope_delta")),
                     "next_pos after truncate");
        float *again = malloc(sizeof *again * c->V);
        CHECK(session_append(&a, &c->st, ids + n1, n - n1, g + i1, ng - i1,
                             vis + (size_t)rows1 * c->m.config.text.hidden, again, &err) ==
                  ERGO_OK,
              "append after truncate: %s", err.msg);
        CHECK(max_diff(again, logits, c->V) == 0.0f, "append after truncate differs");
        /* refusal: cutting through image 2's pads */
        int img2 = a.image_start[a.n_images - 1];
        int32_t before = a.next_pos;
        CHECK(session_truncate(&a, img2 + 1, &err) == ERGO_E_ARG && strstr(err.msg, "cut"),
              "truncate inside an image: %s", err.msg);
        CHECK(a.next_pos == before && a.n_cached == n, "failed truncate changes nothing");
        /* greedy after the append = the reference's greedy on the whole conversation */
        check_greedy(c, &a, logits, json_object_get(pr, "generated"), l2);
        free(again);
        session_free(&a);
    } else {
        check_greedy(c, &s, whole, json_object_get(pr, "generated"), label);
    }
    session_free(&s);
    free(ids);
    free(vis);
    free(logits);
    free(whole);
}

/* Token-by-token appends of a text prompt equal one prefill (the decode path). */
static void test_token_by_token(ctx *c, const json_t *pr) {
    ergo_error err = {0};
    int n;
    int32_t *ids = lmf_ints(json_object_get(pr, "input_ids"), &n);
    float *one = malloc(sizeof *one * c->V), *inc = malloc(sizeof *inc * c->V);
    session a, b;
    session_init(&a, &c->m, &c->pool, 4096, &err);
    session_init(&b, &c->m, &c->pool, 4096, &err);
    session_append(&a, &c->st, ids, n, NULL, 0, NULL, one, &err);
    for (int i = 0; i < n; i++) session_append(&b, &c->st, ids + i, 1, NULL, 0, NULL, inc, &err);
    float d = max_diff(one, inc, c->V);
    CHECK((double)d <= c->session_tol && b.n_cached == n && b.next_pos == n,
          "token by token vs one prefill: %g (rows %d pos %d)", (double)d, b.n_cached, b.next_pos);
    /* context limit: a session of n + 1 tokens refuses 2 more, unchanged */
    session small;
    session_init(&small, &c->m, &c->pool, n + 1, &err);
    CHECK(session_append(&small, &c->st, ids, n, NULL, 0, NULL, NULL, &err) == ERGO_OK, "%s",
          err.msg);
    CHECK(session_append(&small, &c->st, ids, 2, NULL, 0, NULL, inc, &err) == ERGO_E_LIMIT &&
              strstr(err.msg, "context"),
          "context limit: %s", err.msg);
    CHECK(small.n_cached == n && small.next_pos == n, "refused append changes nothing");
    /* an image pair without its grid is refused before anything runs */
    int32_t bad[3] = {151652, 151655, 151653};
    CHECK(session_append(&a, &c->st, bad, 3, NULL, 0, NULL, inc, &err) == ERGO_E_ARG &&
              strstr(err.msg, "image"),
          "image without a grid: %s", err.msg);
    CHECK(a.n_cached == n && a.next_pos == n, "refused append changes nothing");
    session_free(&small);
    session_free(&a);
    session_free(&b);
    free(ids);
    free(one);
    free(inc);
}

/* Stopping: a stop id ends the run with that token included but not appended; a
 * stop string ends it at the token that completes it; max_new_tokens 0 gives none. */
static void test_stops(ctx *c, const json_t *pr) {
    ergo_error err = {0};
    int n, nw;
    int32_t *ids = lmf_ints(json_object_get(pr, "input_ids"), &n);
    int32_t *want = lmf_ints(json_object_get(pr, "generated"), &nw);
    float *prompt_logits = malloc(sizeof *prompt_logits * c->V);
    float *logits = malloc(sizeof *logits * c->V);
    session base;
    session_init(&base, &c->m, &c->pool, 4096, &err);
    session_append(&base, &c->st, ids, n, NULL, 0, NULL, prompt_logits, &err);
    generate_params gp = {{0}, nw, &want[5], 1, NULL, 0};
    sampler_config_from_generation(&gp.sampling, &c->m.generation);
    gp.sampling.do_sample = 0;
    int first = 0; /* the first step whose token is want[5] */
    while (want[first] != want[5]) first++;
    session s;
    session_fork(&s, &base, &err);
    memcpy(logits, prompt_logits, sizeof *logits * c->V);
    generate_result r = {0};
    CHECK(generate_run(&s, &c->st, c->tok, &gp, logits, NULL, NULL, &r, &err) == ERGO_OK, "%s",
          err.msg);
    CHECK(r.reason == STOP_EOS && r.tokens.n == (size_t)first + 1 &&
              r.tokens.v[first] == want[5] && s.n_cached == n + first,
          "stop id: reason %s, %zu tokens (want %d), session %d", stop_reason_name(r.reason),
          r.tokens.n, first + 1, s.n_cached);
    /* the text of the first 8 greedy tokens; its last 3 bytes as a stop string */
    tok_text t8 = {0};
    tokenizer_decode(c->tok, want, 8, 0, &t8, &err);
    generate_result_free(&r);
    session_free(&s);
    if (t8.n >= 3) {
        char stop[8] = {0};
        memcpy(stop, t8.s + t8.n - 3, 3);
        const char *stops[1] = {stop};
        generate_params gs = {gp.sampling, nw, NULL, 0, stops, 1};
        session_fork(&s, &base, &err);
        memcpy(logits, prompt_logits, sizeof *logits * c->V);
        CHECK(generate_run(&s, &c->st, c->tok, &gs, logits, NULL, NULL, &r, &err) == ERGO_OK,
              "%s", err.msg);
        CHECK(r.reason == STOP_STRING && r.tokens.n <= 8 && r.tokens.n >= 1 &&
                  !memcmp(r.tokens.v, want, r.tokens.n * sizeof *want) &&
                  strstr(r.text.s ? r.text.s : "", stop),
              "stop string \"%s\": reason %s after %zu tokens", stop,
              stop_reason_name(r.reason), r.tokens.n);
        generate_result_free(&r);
        session_free(&s);
    }
    tok_text_free(&t8);
    gp.max_new_tokens = 0;
    session_fork(&s, &base, &err);
    CHECK(generate_run(&s, &c->st, c->tok, &gp, logits, NULL, NULL, &r, &err) == ERGO_OK &&
              r.tokens.n == 0 && r.reason == STOP_LENGTH,
          "max_new_tokens 0");
    generate_result_free(&r);
    session_free(&s);
    session_free(&base);
    free(ids);
    free(want);
    free(logits);
    free(prompt_logits);
}

void test_session(void) {
    ergo_error err = {0};
    kernels_init(NULL, &err);
    json_t *man = lmf_manifest();
    if (!man) return;
    ctx c;
    memset(&c, 0, sizeof c);
    c.man = man;
    c.tol = lmf_num(man, "logit_tol");
    c.session_tol = lmf_num(man, "session_tol");
    if (tokenizer_load(&c.tok, "assets/qwen2.5-vl-tokenizer", &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        json_decref(man);
        return;
    }
    const json_t *cases = json_object_get(man, "cases");
    for (size_t k = 0; k < json_array_size(cases); k++) {
        const json_t *cs = json_array_get(cases, k);
        const char *cname = json_string_value(json_object_get(cs, "name"));
        if (!lmf_margin_ok(man, lmf_num(cs, "min_margin"), cname)) continue;
        if (!lmf_model(&c.m, json_string_value(json_object_get(cs, "case")))) continue;
        c.V = c.m.config.text.vocab_size;
        text_state_init(&c.st, &c.m.config.text, 512, &err);
        lmf_pool(&c.pool, &c.m);
        const json_t *prompts = json_object_get(cs, "prompts");
        for (size_t i = 0; i < json_array_size(prompts); i++) {
            const json_t *pr = json_array_get(prompts, i);
            char label[160];
            snprintf(label, sizeof label, "%s/%s", cname,
                     json_string_value(json_object_get(pr, "name")));
            test_prompt(&c, pr, label);
            if (i == 0) test_token_by_token(&c, pr);
            if (i == 0) test_stops(&c, pr);
        }
        text_state_free(&c.st);
        kv_pool_free(&c.pool);
        model_free(&c.m);
    }
    tokenizer_free(c.tok);
    json_decref(man);
}
