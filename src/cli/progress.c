#include "progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"

static int quiet = -1; /* -1: not decided yet ($ERGO_PROGRESS) */

void progress_set_quiet(int q) { quiet = q; }

int progress_quiet(void) {
    if (quiet < 0) {
        const char *v = getenv("ERGO_PROGRESS");
        quiet = v && !strcmp(v, "0");
    }
    return quiet;
}

int progress_is_tty(void) { return !progress_quiet() && isatty(2); }

static void clear_line(progress *p) {
    if (p->drawn) fputs("\r\033[K", stderr);
    p->drawn = 0;
}

void progress_begin(progress *p, const char *fmt, ...) {
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->label, sizeof p->label, fmt, ap);
    va_end(ap);
    p->t0 = now_ms();
    if (progress_is_tty()) {
        fprintf(stderr, "ergo: %s ...", p->label);
        fflush(stderr);
        p->drawn = 1;
    }
}

void progress_update(progress *p, double done, double total, const char *unit) {
    if (!progress_is_tty()) return;
    const double now = now_ms();
    if (p->drawn && now - p->last_draw < 100 && !(total > 0 && done >= total)) return;
    p->last_draw = now;
    const double el = (now - p->t0) / 1e3;
    clear_line(p);
    if (total > 0) {
        const double f = done / total > 1 ? 1 : done / total;
        char bar[21];
        const int k = (int)(f * 20);
        for (int i = 0; i < 20; i++) bar[i] = i < k ? '#' : '.';
        bar[20] = 0;
        const double eta = f > 0 ? el / f - el : 0;
        fprintf(stderr, "ergo: %s [%s] %3.0f%% %.0f/%.0f %s, %.1f s, ETA %.0f s", p->label, bar,
                100 * f, done, total, unit, el, eta);
    } else {
        fprintf(stderr, "ergo: %s: %.0f %s, %.1f s (%.1f %s/s)", p->label, done, unit, el,
                el > 0 ? done / el : 0.0, unit);
    }
    fflush(stderr);
    p->drawn = 1;
}

void progress_end(progress *p, const char *fmt, ...) {
    if (progress_quiet()) return;
    char sum[256] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(sum, sizeof sum, fmt, ap);
        va_end(ap);
    }
    clear_line(p);
    fprintf(stderr, "ergo: %s: %s%s%.1f s\n", p->label, sum, sum[0] ? ", " : "",
            (now_ms() - p->t0) / 1e3);
    fflush(stderr);
}

void progress_abort(progress *p) {
    if (progress_quiet()) return;
    clear_line(p);
    fflush(stderr);
}

void cli_prefill_rows(void *ctx, int64_t done, int64_t total) {
    progress_update(ctx, (double)done, (double)total, "tokens");
    /* the bar goes once the prefill is done: generated text may stream on this line */
    if (done >= total) progress_abort(ctx);
}
