/* Tests of src/model/sample.c and the stop rules of src/model/generate.c:
 *  - the logits processors against the reference's own list: for each recorded
 *    generation config (greedy with a penalty, Qwen's published sampling config,
 *    top-k/top-p/min-p mixes, a penalty < 1), GenerationMixin._get_logits_processor
 *    (transformers 4.56.2) applied to random rows with ties and a history; the C
 *    sampler must remove exactly the same entries and leave the same values;
 *  - the processors' order is the reference's (recorded class names);
 *  - greedy = the first maximum; top-k 1 sampling = greedy; a seeded draw is
 *    reproducible and follows the distribution; config refusals;
 *  - stop strings overlap the last token (StopStringCriteria's rule). */
#include "lm_fixture.h"
#include "model/generate.h"
#include "model/sample.h"

static void test_processors(const json_t *man) {
    const json_t *rows = json_object_get(man, "sampling");
    CHECK(json_array_size(rows) >= 10, "sampling fixtures present (%zu)", json_array_size(rows));
    const char *order[] = {"RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper",
                           "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper"};
    for (size_t r = 0; r < json_array_size(rows); r++) {
        const json_t *row = json_array_get(rows, r);
        const json_t *cfg = json_object_get(row, "config");
        sampler_config sc = {0, 1.0f, 0, 1.0f, 0.0f, 1.0f, 0};
        sc.do_sample = json_is_true(json_object_get(cfg, "do_sample"));
        if (json_object_get(cfg, "temperature")) sc.temperature = (float)lmf_num(cfg, "temperature");
        if (json_object_get(cfg, "top_k")) sc.top_k = (int)json_integer_value(json_object_get(cfg, "top_k"));
        if (json_object_get(cfg, "top_p")) sc.top_p = (float)lmf_num(cfg, "top_p");
        if (json_object_get(cfg, "min_p")) sc.min_p = (float)lmf_num(cfg, "min_p");
        if (json_object_get(cfg, "repetition_penalty"))
            sc.repetition_penalty = (float)lmf_num(cfg, "repetition_penalty");
        /* the reference's list holds the processors in our order */
        const json_t *procs = json_object_get(row, "processors");
        int at = 0, ok = 1;
        for (size_t k = 0; k < json_array_size(procs); k++) {
            const char *name = json_string_value(json_array_get(procs, k));
            while (at < 5 && strcmp(order[at], name)) at++;
            ok &= at < 5;
        }
        CHECK(ok, "row %zu: processors in an unexpected order", r);
        int V, nh;
        const json_t *lj = json_object_get(row, "logits");
        V = (int)json_array_size(lj);
        float *x = malloc(sizeof *x * V);
        for (int i = 0; i < V; i++) x[i] = (float)json_number_value(json_array_get(lj, i));
        int32_t *hist = lmf_ints(json_object_get(row, "history"), &nh);
        uint8_t *seen = calloc((size_t)V, 1);
        sample_pair *scratch = malloc(sizeof *scratch * V);
        sample_repetition_penalty(x, V, hist, (size_t)nh, sc.repetition_penalty, seen);
        if (sc.do_sample) sample_warp(&sc, x, V, scratch);
        const json_t *kept = json_object_get(row, "kept"), *vals = json_object_get(row, "values");
        int n_kept = 0, bad_set = 0;
        double worst = 0;
        for (int i = 0; i < V; i++) n_kept += isfinite(x[i]);
        for (size_t k = 0; k < json_array_size(kept); k++) {
            int id = (int)json_integer_value(json_array_get(kept, k));
            if (!isfinite(x[id])) {
                bad_set++;
                continue;
            }
            double e = fabs((double)x[id] - json_number_value(json_array_get(vals, k)));
            if (e > worst) worst = e;
        }
        CHECK(bad_set == 0 && n_kept == (int)json_array_size(kept),
              "row %zu: kept %d entries, the reference %zu", r, n_kept,
              json_array_size(kept));
        CHECK(worst <= 1e-5, "row %zu: processed values differ by %g", r, worst);
        int zero = 1;
        for (int i = 0; i < V; i++) zero &= !seen[i];
        CHECK(zero, "penalty leaves its scratch zeroed");
        free(x);
        free(hist);
        free(seen);
        free(scratch);
    }
}

static void test_choice(void) {
    ergo_error err = {0};
    sampler s;
    float x[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f, -3.0f};
    sampler_config greedy = {0, 1.0f, 0, 1.0f, 0.0f, 1.0f, 0};
    CHECK(sampler_init(&s, &greedy, 6, &err) == ERGO_OK, "%s", err.msg);
    float y[6];
    memcpy(y, x, sizeof x);
    CHECK_EQ_INT(sampler_next(&s, y, NULL, 0), 1, "greedy takes the first maximum");
    /* penalty 2 on ids 1 and 5 (history with repeats): 2 -> 1, -3 -> -6 */
    memcpy(y, x, sizeof x);
    s.cfg.repetition_penalty = 2.0f;
    int32_t hist[] = {1, 5, 1, 5, 1};
    CHECK_EQ_INT(sampler_next(&s, y, hist, 5), 3, "greedy after the penalty");
    CHECK(y[1] == 1.0f && y[5] == -6.0f && y[3] == 2.0f, "penalty once per id: %g %g %g",
          (double)y[1], (double)y[5], (double)y[3]);
    sampler_free(&s);
    /* Qwen2.5-VL's published config samples with top_k 1: always the maximum */
    sampler_config qwen = {1, 0.1f, 1, 0.001f, 0.0f, 1.05f, 42};
    CHECK(sampler_init(&s, &qwen, 6, &err) == ERGO_OK, "%s", err.msg);
    int same = 1;
    for (int k = 0; k < 50; k++) {
        memcpy(y, x, sizeof x);
        y[4] = 2.5f;
        same &= sampler_next(&s, y, NULL, 0) == 4;
    }
    CHECK(same, "top_k 1 sampling is greedy");
    sampler_free(&s);
    /* plain sampling: reproducible per seed, frequencies follow softmax */
    sampler_config plain = {1, 1.0f, 0, 1.0f, 0.0f, 1.0f, 7};
    sampler a, b;
    sampler_init(&a, &plain, 4, &err);
    sampler_init(&b, &plain, 4, &err);
    float base[4] = {0.0f, logf(2.0f), logf(3.0f), logf(4.0f)}; /* p = 0.1 .. 0.4 */
    int count[4] = {0}, differ = 0;
    const int N = 20000;
    for (int k = 0; k < N; k++) {
        float u[4], v[4];
        memcpy(u, base, sizeof u);
        memcpy(v, base, sizeof v);
        int ia = sampler_next(&a, u, NULL, 0), ib = sampler_next(&b, v, NULL, 0);
        differ += ia != ib;
        count[ia]++;
    }
    CHECK(differ == 0, "the same seed gives the same draws");
    for (int i = 0; i < 4; i++) {
        double f = (double)count[i] / N, p = (i + 1) / 10.0;
        CHECK(fabs(f - p) < 0.015, "draw frequency of %d: %.4f, want %.2f", i, f, p);
    }
    sampler_free(&a);
    sampler_free(&b);
    /* refusals */
    sampler_config bad = plain;
    bad.temperature = 0.0f;
    CHECK(sampler_init(&s, &bad, 4, &err) == ERGO_E_ARG && strstr(err.msg, "temperature"),
          "temperature 0: %s", err.msg);
    bad = plain;
    bad.top_p = 1.5f;
    CHECK(sampler_config_check(&bad, &err) == ERGO_E_ARG && strstr(err.msg, "top-p"), "top_p");
    bad = plain;
    bad.repetition_penalty = 0.0f;
    CHECK(sampler_config_check(&bad, &err) == ERGO_E_ARG && strstr(err.msg, "penalty"),
          "penalty 0");
    bad = plain;
    bad.top_k = -1;
    CHECK(sampler_config_check(&bad, &err) == ERGO_E_ARG, "top_k -1");
    bad = greedy;
    bad.temperature = 0.0f; /* ignored when not sampling, as the reference ignores it */
    CHECK(sampler_config_check(&bad, &err) == ERGO_OK, "greedy ignores the temperature");
}

static void test_defaults(void) {
    generation_config g = {0};
    g.do_sample = 1;
    g.temperature = 0.1;
    g.top_k = 1;
    g.top_p = 0.001;
    g.repetition_penalty = 1.05;
    sampler_config sc;
    sampler_config_from_generation(&sc, &g);
    CHECK(sc.do_sample == 1 && sc.top_k == 1 && sc.temperature == 0.1f && sc.top_p == 0.001f &&
              sc.repetition_penalty == 1.05f && sc.min_p == 0.0f,
          "defaults from generation_config");
}

static void test_stop_strings(void) {
    const char *stops[] = {"stop", "</answer>"};
    /* ["st", "op"]: the string ends inside the last token's text */
    CHECK(generate_stop_string_hit("xx stop", 7, 5, stops, 2), "st|op");
    CHECK(generate_stop_string_hit("lastopper", 9, 3, stops, 2), "las|topper");
    /* ["stop", "at"]: the last token does not touch it */
    CHECK(!generate_stop_string_hit("stopat", 6, 4, stops, 2), "stop|at");
    CHECK(generate_stop_string_hit("a</answer>", 10, 9, stops, 2), "ends with '>'");
    CHECK(!generate_stop_string_hit("sto", 3, 2, stops, 2), "incomplete");
    CHECK_EQ_STR(stop_reason_name(STOP_EOS), "eos", "reason name");
    CHECK_EQ_STR(stop_reason_name(STOP_LENGTH), "length", "reason name");
}

void test_sample(void) {
    test_choice();
    test_defaults();
    test_stop_strings();
    json_t *man = lmf_manifest();
    if (!man) return;
    test_processors(man);
    json_decref(man);
}
