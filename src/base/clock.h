/*
 * clock.h - a monotonic wall clock in milliseconds, for timings reported to the
 * user and to BENCHMARKS.md (never for decisions).
 */
#ifndef ERGO_CLOCK_H
#define ERGO_CLOCK_H

#include <time.h>

static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

#endif
