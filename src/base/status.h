/*
 * status.h - error codes and the error record every fallible function fills.
 *
 * Functions that touch input (files, JSON, images, text) return an ergo_status
 * and, on failure, write one human-readable line into the caller's ergo_error
 * naming the file and the problem. Only invariants that no input can violate
 * use ERGO_ASSERT, which aborts (the redis/SQLite split).
 *
 *   ergo_error err = {0};
 *   if (safetensors_open(&st, path, &err) != ERGO_OK) { fprintf(stderr, "%s\n", err.msg); ... }
 */
#ifndef ERGO_STATUS_H
#define ERGO_STATUS_H

#include <stdio.h>
#include <stdlib.h>

typedef enum ergo_status {
    ERGO_OK = 0,
    ERGO_E_IO,          /* a file is missing or unreadable */
    ERGO_E_FORMAT,      /* the bytes do not follow their format */
    ERGO_E_SHAPE,       /* a tensor or array has the wrong shape */
    ERGO_E_LIMIT,       /* the input is over a configured limit */
    ERGO_E_NOMEM,       /* allocation failed */
    ERGO_E_ARG,         /* a caller passed an invalid argument */
    ERGO_E_UNSUPPORTED, /* valid input that ergo does not handle (say so) */
} ergo_status;

typedef struct ergo_error {
    ergo_status code;
    char msg[768];
} ergo_error;

/* Formats the message into err (if not NULL) and returns code, so callers write
 * `return ergo_fail(err, ERGO_E_FORMAT, "%s: bad header", path);`. */
ergo_status ergo_fail(ergo_error *err, ergo_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message with more context ("while loading X: ..."). */
void ergo_error_prefix(ergo_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

const char *ergo_status_name(ergo_status code);

#define ERGO_ASSERT(cond)                                                             \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "ergo: internal error: %s:%d: assertion `%s' failed\n",  \
                    __FILE__, __LINE__, #cond);                                       \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#endif
