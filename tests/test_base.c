/* Tests of src/base: errors, files, JSON helpers and the shared random generator. */
#include <stdlib.h>

#include "base/file.h"
#include "base/json.h"
#include "base/rng.h"
#include "check.h"

static void test_rng_known_values(void) {
    /* splitmix64 from state 0: the published first output is 0xE220A8397B1DCDAF. */
    CHECK(rng_u64(0, 0) == UINT64_C(0xE220A8397B1DCDAF), "splitmix64 first value %llx",
          (unsigned long long)rng_u64(0, 0));
    CHECK(rng_u64(0, 1) == UINT64_C(0x6E789E6AA1B965F4), "splitmix64 second value %llx",
          (unsigned long long)rng_u64(0, 1));
    /* FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c. */
    CHECK(rng_fnv1a("a") == UINT64_C(0xaf63dc4c8601ec8c), "fnv1a(a)");
    float lo = 1, hi = -1;
    for (uint64_t i = 0; i < 100000; i++) {
        float v = rng_uniform(7, i);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    CHECK(lo >= -1.0f && lo < -0.999f && hi < 1.0f && hi > 0.999f, "uniform range [%g, %g]",
          (double)lo, (double)hi);
}

static void test_error_messages(void) {
    ergo_error err = {0};
    mapped_file mf;
    CHECK_EQ_INT(file_map(&mf, "/nonexistent/x.safetensors", &err), ERGO_E_IO, "map missing");
    CHECK(strstr(err.msg, "/nonexistent/x.safetensors") != NULL, "message names file: %s",
          err.msg);
    json_t *j = json_load_bytes("{\"a\": 1, \"a\": 2}", 16, "dup.json", &err);
    CHECK(j == NULL && strstr(err.msg, "dup.json") && strstr(err.msg, "duplicate"),
          "duplicate keys refused: %s", err.msg);
    j = json_load_bytes("{\"n\": 3584, \"f\": 1e6, \"x\": 0.5}", 31, "cfg", &err);
    CHECK(j != NULL, "parse ok");
    int64_t v = 0;
    CHECK(json_get_int(j, "n", &v, "cfg", &err) == ERGO_OK && v == 3584, "int");
    CHECK(json_get_int(j, "f", &v, "cfg", &err) == ERGO_OK && v == 1000000, "integral float");
    CHECK(json_get_int(j, "x", &v, "cfg", &err) == ERGO_E_FORMAT && strstr(err.msg, "`x'"),
          "non-integer refused: %s", err.msg);
    CHECK(json_get_int(j, "missing", &v, "cfg", &err) == ERGO_E_FORMAT &&
              strstr(err.msg, "missing"),
          "missing key: %s", err.msg);
    json_decref(j);
    ergo_fail(&err, ERGO_E_FORMAT, "bad header");
    ergo_error_prefix(&err, "%s: ", "model.safetensors");
    CHECK_EQ_STR(err.msg, "model.safetensors: bad header", "error prefix");
}

static void test_read_write(void) {
    ergo_error err = {0};
    char path[512];
    CHECK(path_join(path, sizeof path, scratch_dir(), "rw.bin", &err) == ERGO_OK, "join");
    CHECK(file_write_all(path, "hello", 5, &err) == ERGO_OK, "write");
    char *buf;
    size_t n;
    CHECK(file_read_all(path, 100, &buf, &n, &err) == ERGO_OK && n == 5 && !strcmp(buf, "hello"),
          "read back");
    free(buf);
    CHECK(file_read_all(path, 4, &buf, &n, &err) == ERGO_E_LIMIT, "limit: %s", err.msg);
    mapped_file mf;
    CHECK(file_map(&mf, path, &err) == ERGO_OK && mf.size == 5 && !memcmp(mf.data, "hello", 5),
          "map");
    file_unmap(&mf);
}

void test_base(void) {
    test_rng_known_values();
    test_error_messages();
    test_read_write();
}
