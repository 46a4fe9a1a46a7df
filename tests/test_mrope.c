/* Tests of src/model/mrope.c (M-RoPE position ids) and the text model's rotary
 * tables (text_rope_init): the position ids and rope deltas of every prompt of
 * tests/fixtures/text against get_rope_index (transformers 4.56.2), the same ids
 * computed piece by piece at every cut that does not split an image (the session's
 * rule), hand-made sequences, refusals, and inv_freq / sections against the
 * reference's rotary_emb.inv_freq. */
#include "lm_fixture.h"
#include "model/text.h"

static const mrope_ids QWEN_IDS = {151655, 151656, 151652, 2};

/* Whole prompt at once, then every cut (piecewise), against the recorded ids. */
static void check_prompt(const json_t *p, const char *label) {
    int n;
    int32_t *ids = lmf_ints(json_object_get(p, "input_ids"), &n);
    mrope_grid grids[8];
    int ng = lmf_grids(json_object_get(p, "grids"), grids, 8);
    const json_t *pos = json_object_get(p, "positions");
    int32_t *want = malloc(sizeof *want * 3 * (size_t)n);
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < n; i++)
            want[a * n + i] = (int32_t)json_integer_value(json_array_get(json_array_get(pos, a), i));
    int32_t *got = malloc(sizeof *got * 3 * (size_t)n);
    ergo_error err = {0};
    int32_t next = 0;
    ergo_status s = mrope_positions(&QWEN_IDS, ids, n, -1, grids, ng, &next, got, n, &err);
    CHECK(s == ERGO_OK, "%s: %s", label, err.msg);
    char l2[200];
    snprintf(l2, sizeof l2, "%s positions", label);
    CHECK_EQ_I32(got, 3 * (size_t)n, want, 3 * (size_t)n, l2);
    /* rope_deltas = max + 1 - seq_len */
    CHECK_EQ_INT(next - n, json_integer_value(json_object_get(p, "rope_delta")), label);

    /* piecewise: cut at c (two pieces), images wholly in one piece */
    int cuts = 0, cut_bad = 0;
    for (int c = 1; c < n; c++) {
        if (ids[c] == QWEN_IDS.image_token_id && ids[c - 1] == QWEN_IDS.image_token_id) continue;
        int g1 = mrope_count_images(&QWEN_IDS, ids, c, -1);
        int32_t nx = 0;
        int32_t *p1 = malloc(sizeof *p1 * 3 * (size_t)n);
        ergo_status s1 = mrope_positions(&QWEN_IDS, ids, c, -1, grids, g1, &nx, p1, n, &err);
        ergo_status s2 = mrope_positions(&QWEN_IDS, ids + c, n - c, ids[c - 1], grids + g1,
                                         ng - g1, &nx, p1 + c, n, &err);
        if (s1 || s2 || nx != next) cut_bad++;
        for (int a = 0; a < 3 && !s1 && !s2; a++)
            if (memcmp(p1 + (size_t)a * n, want + (size_t)a * n, sizeof *p1 * (size_t)n))
                cut_bad++;
        if (cut_bad && cuts == 0) CHECK(0, "%s: cut at %d differs (%s)", label, c, err.msg);
        cuts++;
        free(p1);
    }
    CHECK(cut_bad == 0, "%s: %d of %d cuts give other positions", label, cut_bad, cuts);
    free(ids);
    free(want);
    free(got);
}

static void test_fixture_positions(const json_t *man) {
    const json_t *cases = json_object_get(man, "cases");
    for (size_t c = 0; c < json_array_size(cases); c++) {
        const json_t *cs = json_array_get(cases, c);
        const json_t *prompts = json_object_get(cs, "prompts");
        for (size_t k = 0; k < json_array_size(prompts); k++) {
            const json_t *p = json_array_get(prompts, k);
            char label[160];
            snprintf(label, sizeof label, "%s/%s", json_string_value(json_object_get(cs, "name")),
                     json_string_value(json_object_get(p, "name")));
            check_prompt(p, label);
            const json_t *t1 = json_object_get(p, "turn1");
            if (t1) {
                /* turn 1 alone: its ids are the prefix; its recorded positions too */
                int n;
                int32_t *ids = lmf_ints(json_object_get(p, "input_ids"), &n);
                int n1 = (int)json_integer_value(json_object_get(t1, "n_tokens"));
                mrope_grid g[8];
                lmf_grids(json_object_get(p, "grids"), g, 8);
                int32_t *got = malloc(sizeof *got * 3 * (size_t)n1), next = 0;
                ergo_error err = {0};
                int ni = (int)json_integer_value(json_object_get(t1, "n_images"));
                CHECK(mrope_positions(&QWEN_IDS, ids, n1, -1, g, ni, &next, got, n1, &err) == 0,
                      "%s turn 1: %s", label, err.msg);
                const json_t *pos = json_object_get(t1, "positions");
                int bad = 0;
                for (int a = 0; a < 3; a++)
                    for (int i = 0; i < n1; i++)
                        bad += got[a * n1 + i] !=
                               json_integer_value(json_array_get(json_array_get(pos, a), i));
                CHECK(bad == 0, "%s turn 1: %d positions differ", label, bad);
                CHECK_EQ_INT(next - n1, json_integer_value(json_object_get(t1, "rope_delta")),
                             "turn 1 rope delta");
                free(ids);
                free(got);
            }
        }
    }
}

/* Small sequences worked out by hand from the reference's rule. */
static void test_hand_made(void) {
    ergo_error err = {0};
    const int32_t S = 151652, P = 151655, E = 151653;
    /* text, image of grid (1, 4, 6) = 2x3 merged tokens, text */
    int32_t ids[] = {10, 11, S, P, P, P, P, P, P, E, 12};
    mrope_grid g = {1, 4, 6};
    int32_t pos[3 * 11], next = 0;
    CHECK(mrope_positions(&QWEN_IDS, ids, 11, -1, &g, 1, &next, pos, 11, &err) == 0, "%s",
          err.msg);
    const int32_t want[3][11] = {{0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7},
                                 {0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7},
                                 {0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7}};
    CHECK_EQ_I32(pos, 33, &want[0][0], 33, "hand-made image positions");
    CHECK_EQ_INT(next, 8, "next position after the image");
    /* a running start: the same sequence after 100 positions shifts by 100 */
    next = 100;
    mrope_positions(&QWEN_IDS, ids, 11, 7, &g, 1, &next, pos, 11, &err);
    CHECK(pos[3] == 103 && pos[11 + 6] == 104 && pos[22 + 5] == 105 && next == 108,
          "shifted start: %d %d %d next %d", pos[3], pos[11 + 6], pos[22 + 5], next);
    /* two frames (t = 2): every frame takes temporal index 0 (second_per_grid_t = 0) */
    int32_t ids2[] = {S, P, P, P, P, P, P, P, P, E};
    mrope_grid g2 = {2, 4, 4};
    int32_t pos2[30];
    next = 0;
    CHECK(mrope_positions(&QWEN_IDS, ids2, 10, -1, &g2, 1, &next, pos2, 10, &err) == 0, "%s",
          err.msg);
    CHECK(pos2[1] == 1 && pos2[5] == 1 && pos2[10 + 5] == 1 && pos2[20 + 6] == 2 && next == 4,
          "two frames: %d %d %d %d next %d", pos2[1], pos2[5], pos2[15], pos2[26], next);
    /* the vision_start / image_pad pair straddling two pieces */
    next = 0;
    int32_t a[] = {10, S}, b[] = {P, P, P, P, P, P, E};
    int32_t pa[6], pb[21];
    CHECK(mrope_positions(&QWEN_IDS, a, 2, -1, NULL, 0, &next, pa, 2, &err) == 0, "%s", err.msg);
    CHECK(mrope_positions(&QWEN_IDS, b, 7, S, &g, 1, &next, pb, 7, &err) == 0, "%s", err.msg);
    CHECK(pb[0] == 2 && pb[7 + 3] == 3 && pb[14 + 2] == 4 && pb[6] == 5 && next == 6,
          "straddling pair: %d %d %d %d next %d", pb[0], pb[10], pb[16], pb[6], next);
    CHECK_EQ_INT(mrope_grid_tokens(&g2, 2), 8, "grid tokens");
}

static void test_refusals(void) {
    ergo_error err = {0};
    const int32_t S = 151652, P = 151655, E = 151653, VID = 151656;
    int32_t ids[] = {S, P, P, P, P, P, P, E};
    int32_t pos[3 * 8], next = 0;
    mrope_grid g = {1, 4, 6};
    CHECK(mrope_positions(&QWEN_IDS, ids, 8, -1, NULL, 0, &next, pos, 8, &err) == ERGO_E_ARG &&
              strstr(err.msg, "1 image(s)") && strstr(err.msg, "0 image grid"),
          "missing grid: %s", err.msg);
    mrope_grid big = {1, 4, 8};
    CHECK(mrope_positions(&QWEN_IDS, ids, 8, -1, &big, 1, &next, pos, 8, &err) == ERGO_E_ARG &&
              strstr(err.msg, "do not match"),
          "pad count: %s", err.msg);
    mrope_grid odd = {1, 3, 6};
    CHECK(mrope_positions(&QWEN_IDS, ids, 8, -1, &odd, 1, &next, pos, 8, &err) == ERGO_E_ARG &&
              strstr(err.msg, "merge"),
          "odd grid: %s", err.msg);
    int32_t vid[] = {S, VID, E};
    CHECK(mrope_positions(&QWEN_IDS, vid, 3, -1, NULL, 0, &next, pos, 3, &err) ==
              ERGO_E_UNSUPPORTED,
          "video: %s", err.msg);
    /* pads split over two pieces: the first piece holds a pair but too few pads */
    CHECK(mrope_positions(&QWEN_IDS, ids, 4, -1, &g, 1, &next, pos, 8, &err) == ERGO_E_ARG,
          "image cut: %s", err.msg);
    CHECK_EQ_INT(next, 0, "next_pos untouched by failures");
}

/* inv_freq and the section of each frequency, against the reference's buffer. */
static void test_rope_tables(const json_t *man) {
    const json_t *cases = json_object_get(man, "cases");
    for (size_t c = 0; c <= json_array_size(cases); c++) {
        const json_t *cs = c < json_array_size(cases) ? json_array_get(cases, c) : NULL;
        json_t *rec7 = NULL;
        ergo_error err = {0};
        if (!cs) {
            rec7 = json_load_path(lmf_path(json_string_value(json_object_get(man, "case_7b"))),
                                  &err);
            if (!rec7) {
                SKIP("7B-width fixture absent: %s", err.msg);
                return;
            }
            cs = rec7;
        }
        ckpt_case cc;
        if (ckpt_case_load(&cc, lmf_path(json_string_value(json_object_get(cs, "case"))), &err)) {
            CHECK(0, "%s", err.msg);
            json_decref(rec7);
            continue;
        }
        const text_config *tc = &cc.parsed.text;
        int half = tc->head_dim / 2;
        float inv[TEXT_MAX_HEAD_DIM / 2];
        int8_t axis[TEXT_MAX_HEAD_DIM / 2];
        text_rope_init(inv, axis, tc);
        const json_t *want = json_object_get(cs, "inv_freq");
        CHECK_EQ_INT(json_array_size(want), half, "inv_freq length");
        int ulps = 0;
        for (int j = 0; j < half && j < (int)json_array_size(want); j++) {
            float w = (float)json_number_value(json_array_get(want, j));
            if (inv[j] != w) ulps += fabsf(inv[j] - w) <= fabsf(nextafterf(w, 0) - w) ? 1 : 1000;
        }
        CHECK(ulps < 1000, "%s: inv_freq differs from the reference by more than 1 ulp",
              cc.name);
        if (ulps) printf("  note [mrope] %s: %d inv_freq values 1 ulp from torch\n", cc.name, ulps);
        /* sections: [s0, s1, s2] frequencies on the t, h, w axes in that order */
        int j = 0, bad = 0;
        for (int a = 0; a < 3; a++)
            for (int k = 0; k < tc->mrope_section[a]; k++) bad += axis[j++] != a;
        CHECK(bad == 0 && j == half, "%s: frequency sections", cc.name);
        ckpt_case_free(&cc);
        json_decref(rec7);
    }
}

void test_mrope(void) {
    json_t *man = lmf_manifest();
    test_hand_made();
    test_refusals();
    if (!man) return;
    test_fixture_positions(man);
    test_rope_tables(man);
    json_decref(man);
}
