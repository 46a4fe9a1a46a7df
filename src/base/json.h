/*
 * json.h - a thin layer over jansson for the JSON files ergo reads
 * (config.json, tokenizer.json, safetensors headers, fixtures).
 *
 * jansson parses and validates UTF-8; these helpers add messages that name the
 * file and the key, and typed getters that fail instead of guessing.
 *
 *   json_t *cfg = json_load_path("config.json", &err);   // json_decref(cfg) when done
 *   int64_t hidden; json_get_int(cfg, "hidden_size", &hidden, "config.json", &err);
 */
#ifndef ERGO_JSON_H
#define ERGO_JSON_H

#include <jansson.h>
#include <stdint.h>

#include "status.h"

/* Parses a file; duplicate keys are an error (a lying header could otherwise
 * say two things about one tensor). Returns NULL and fills err on failure. */
json_t *json_load_path(const char *path, ergo_error *err);

/* Parses len bytes; `what` names the source in messages. */
json_t *json_load_bytes(const char *bytes, size_t len, const char *what, ergo_error *err);

/* Typed getters: fail with "<what>: key `k' missing / not an integer ..." */
ergo_status json_get_int(const json_t *obj, const char *key, int64_t *out, const char *what,
                         ergo_error *err);
ergo_status json_get_number(const json_t *obj, const char *key, double *out, const char *what,
                            ergo_error *err);
ergo_status json_get_bool(const json_t *obj, const char *key, int *out, const char *what,
                          ergo_error *err);
/* The returned string is owned by obj. */
ergo_status json_get_string(const json_t *obj, const char *key, const char **out,
                            const char *what, ergo_error *err);

/* Same, but leave *out untouched and return ERGO_OK when the key is absent or null. */
ergo_status json_opt_int(const json_t *obj, const char *key, int64_t *out, const char *what,
                         ergo_error *err);
ergo_status json_opt_number(const json_t *obj, const char *key, double *out, const char *what,
                            ergo_error *err);
ergo_status json_opt_bool(const json_t *obj, const char *key, int *out, const char *what,
                          ergo_error *err);

#endif
