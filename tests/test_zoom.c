/*
 * test_zoom.c - ERGO's box parser and crop mapping against the reference's own logic
 * run in Python (tests/fixtures/pipeline/zoom_cases.json, tools/fixtures_pipeline.py):
 * for every tricky text, the same accept/reject decision, the same parsed numbers,
 * the same crop in the original and the same LANCZOS target size. Where the reference
 * raises (or crops nothing) ergo must say "invalid". Then the fuzz seeds are replayed.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "base/json.h"
#include "check.h"
#include "pipeline/zoom.h"

static void check_case(const json_t *c, int factor, int64_t min_px, int64_t max_px) {
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *outcome = json_string_value(json_object_get(c, "outcome"));
    const json_t *text = json_object_get(c, "text");
    int W = (int)json_integer_value(json_object_get(c, "width"));
    int H = (int)json_integer_value(json_object_get(c, "height"));
    int w1 = (int)json_integer_value(json_object_get(c, "w1"));
    int h1 = (int)json_integer_value(json_object_get(c, "h1"));
    zoom_box box;
    zoom_status ps = zoom_parse(json_string_value(text), json_string_length(text), &box);
    const json_t *parsed = json_object_get(c, "parsed");
    char label[512];
    snprintf(label, sizeof label, "zoom case %s: parsed", name);
    CHECK_EQ_STR(zoom_status_name(ps), json_is_array(parsed) ? "ok" : "none", label);
    if (ps != ZOOM_OK || !json_is_array(parsed)) return;
    for (int k = 0; k < 4; k++) {
        const char *want = json_string_value(json_array_get(parsed, (size_t)k));
        if (strlen(want) > 18) {
            CHECK(box.i[k] == INT64_MAX, "zoom case %s: number %d should saturate", name, k);
            continue;
        }
        char got[32];
        snprintf(got, sizeof got, "%lld", (long long)box.i[k]);
        snprintf(label, sizeof label, "zoom case %s: number %d", name, k);
        CHECK_EQ_STR(got, want, label);
    }
    zoom_crop crop;
    zoom_status ms = zoom_map(&box, (double)W / w1, (double)H / h1, W, H, factor, min_px, max_px,
                              &crop);
    snprintf(label, sizeof label, "zoom case %s: mapped (%s)", name, crop.why);
    int want_ok = !strcmp(outcome, "ok");
    CHECK_EQ_STR(zoom_status_name(ms), want_ok ? "ok" : "invalid", label);
    if (!strcmp(outcome, "blank")) CHECK(crop.zero_area, "zoom case %s: zero area", name);
    if (!want_ok || ms != ZOOM_OK) return;
    const json_t *b = json_object_get(c, "crop"), *sz = json_object_get(c, "size");
    int got[6] = {crop.x1, crop.y1, crop.x2, crop.y2, crop.out_w, crop.out_h};
    for (int k = 0; k < 6; k++) {
        json_int_t want = json_integer_value(json_array_get(k < 4 ? b : sz, (size_t)(k % 4)));
        snprintf(label, sizeof label, "zoom case %s: crop field %d", name, k);
        CHECK_EQ_INT(got[k], want, label);
    }
}

static void replay(void *ctx, const char *name, const uint8_t *data, size_t size) {
    (void)name;
    zoom_fuzz_one(data, size);
    ++*(int *)ctx;
}

void test_zoom(void) {
    char path[1024];
    ergo_error err = {0};
    snprintf(path, sizeof path, "%s/pipeline/zoom_cases.json", fixtures_dir());
    json_t *m = json_load_path(path, &err);
    CHECK(m != NULL, "zoom fixtures: %s", err.msg);
    if (!m) return;
    int factor = (int)json_integer_value(json_object_get(m, "factor"));
    int64_t min_px = json_integer_value(json_object_get(m, "min_pixels"));
    int64_t max_px = json_integer_value(json_object_get(m, "max_pixels"));
    const json_t *cases = json_object_get(m, "cases");
    CHECK(json_array_size(cases) >= 40, "zoom fixtures: %zu cases", json_array_size(cases));
    size_t i;
    const json_t *c;
    json_array_foreach(cases, i, c) check_case(c, factor, min_px, max_px);
    json_decref(m);

    /* invalid UTF-8 around a box is just other characters */
    zoom_box box;
    const char bad[] = "\xff<zoom>\xc3[1, 2, 3, 4]\xe2\x82</zoom>";
    CHECK_EQ_STR(zoom_status_name(zoom_parse(bad, sizeof bad - 1, &box)), "ok", "invalid utf-8");
    int n = 0;
    for_each_corpus_file("zoom", replay, &n);
    CHECK(n >= 20, "zoom fuzz corpus: %d files", n);
}
