#include "json.h"

json_t *json_load_path(const char *path, ergo_error *err) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root)
        ergo_fail(err, ERGO_E_FORMAT, "%s: invalid JSON at line %d column %d: %s", path, je.line,
                  je.column, je.text);
    return root;
}

json_t *json_load_bytes(const char *bytes, size_t len, const char *what, ergo_error *err) {
    json_error_t je;
    json_t *root = json_loadb(bytes, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root)
        ergo_fail(err, ERGO_E_FORMAT, "%s: invalid JSON at byte %d: %s", what, je.position,
                  je.text);
    return root;
}

static ergo_status missing(const char *key, const char *what, ergo_error *err) {
    return ergo_fail(err, ERGO_E_FORMAT, "%s: key `%s' is missing", what, key);
}

ergo_status json_opt_int(const json_t *obj, const char *key, int64_t *out, const char *what,
                         ergo_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return ERGO_OK;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return ERGO_OK;
    }
    /* Some writers emit 1e6-style floats for integral fields; accept exact integers only. */
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == (double)(int64_t)d && d > -9.0e15 && d < 9.0e15) {
            *out = (int64_t)d;
            return ERGO_OK;
        }
    }
    return ergo_fail(err, ERGO_E_FORMAT, "%s: key `%s' is not an integer", what, key);
}

ergo_status json_get_int(const json_t *obj, const char *key, int64_t *out, const char *what,
                         ergo_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, what, err);
    return json_opt_int(obj, key, out, what, err);
}

ergo_status json_opt_number(const json_t *obj, const char *key, double *out, const char *what,
                            ergo_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return ERGO_OK;
    if (!json_is_number(v))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: key `%s' is not a number", what, key);
    *out = json_number_value(v);
    return ERGO_OK;
}

ergo_status json_get_number(const json_t *obj, const char *key, double *out, const char *what,
                            ergo_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, what, err);
    return json_opt_number(obj, key, out, what, err);
}

ergo_status json_opt_bool(const json_t *obj, const char *key, int *out, const char *what,
                          ergo_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return ERGO_OK;
    if (!json_is_boolean(v))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: key `%s' is not a boolean", what, key);
    *out = json_is_true(v);
    return ERGO_OK;
}

ergo_status json_get_bool(const json_t *obj, const char *key, int *out, const char *what,
                          ergo_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, what, err);
    return json_opt_bool(obj, key, out, what, err);
}

ergo_status json_get_string(const json_t *obj, const char *key, const char **out,
                            const char *what, ergo_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, what, err);
    if (!json_is_string(v))
        return ergo_fail(err, ERGO_E_FORMAT, "%s: key `%s' is not a string", what, key);
    *out = json_string_value(v);
    return ERGO_OK;
}
