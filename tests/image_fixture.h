/*
 * image_fixture.h - helpers shared by the image and preprocess suites: paths into
 * tests/fixtures/image (or the repository's assets/) and typed reads of manifest fields.
 */
#ifndef ERGO_IMAGE_FIXTURE_H
#define ERGO_IMAGE_FIXTURE_H

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

/* A path for a fixture-relative name; "assets/..." stays as is. Eight rotating buffers,
 * so a few results can be used in one expression. */
static inline const char *fx(const char *rel) {
    static char buf[8][1024];
    static int i;
    i = (i + 1) % 8;
    if (!strncmp(rel, "assets/", 7)) snprintf(buf[i], sizeof buf[i], "%s", rel);
    else snprintf(buf[i], sizeof buf[i], "%s/image/%s", fixtures_dir(), rel);
    return buf[i];
}

/* Field readers that give "" / 0 for a missing field (the checks then fail loudly). */
static inline const char *jstr(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

static inline int jint(const json_t *o, const char *k) {
    return (int)json_integer_value(json_object_get(o, k));
}

#endif
