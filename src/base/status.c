#include "status.h"

#include <stdarg.h>
#include <string.h>

ergo_status ergo_fail(ergo_error *err, ergo_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void ergo_error_prefix(ergo_error *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Shift the old message right and put the prefix in front, truncating the tail. */
    size_t cap = sizeof err->msg - 1, pl = strlen(prefix), ol = strnlen(err->msg, cap);
    if (pl > cap) pl = cap;
    if (pl + ol > cap) ol = cap - pl;
    memmove(err->msg + pl, err->msg, ol);
    memcpy(err->msg, prefix, pl);
    err->msg[pl + ol] = '\0';
}

const char *ergo_status_name(ergo_status code) {
    switch (code) {
    case ERGO_OK: return "ok";
    case ERGO_E_IO: return "io";
    case ERGO_E_FORMAT: return "format";
    case ERGO_E_SHAPE: return "shape";
    case ERGO_E_LIMIT: return "limit";
    case ERGO_E_NOMEM: return "nomem";
    case ERGO_E_ARG: return "arg";
    case ERGO_E_UNSUPPORTED: return "unsupported";
    }
    return "unknown";
}
