/*
 * progress.h - what the commands show on stderr while a long phase runs (load,
 * quantise, vision encode, prefill, decode, download): on a terminal one line
 * redrawn in place with a bar and an ETA when the amount of work is known; on a
 * pipe or file one line per phase when it ends. progress_set_quiet(1) (--quiet)
 * silences all of it; errors are never progress and always print.
 *
 *   progress p;  progress_begin(&p, "encode image 1 (%s)", path);
 *   for (...) progress_update(&p, done, total, "patches");
 *   progress_end(&p, "%lld vision tokens", tokens);   // "ergo: encode image 1 (x.jpg): ... 1.2 s"
 */
#ifndef ERGO_CLI_PROGRESS_H
#define ERGO_CLI_PROGRESS_H

#include <stdint.h>

typedef struct progress {
    char label[160];
    double t0, last_draw; /* ms */
    int drawn;            /* a terminal line is showing */
} progress;

/* --quiet: nothing is drawn or printed. Also when $ERGO_PROGRESS=0. */
void progress_set_quiet(int quiet);
int progress_quiet(void);
/* 1 when progress draws in place (stderr is a terminal, not quiet). */
int progress_is_tty(void);

void progress_begin(progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* done of total units (total <= 0: unknown, the count and rate only); redrawn at
 * most 10 times a second, on a terminal only. */
void progress_update(progress *p, double done, double total, const char *unit);
/* Ends the phase with a summary (may be NULL): "ergo: <label>: <summary>, 1.2 s". */
void progress_end(progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clears a drawn line without a summary (an error follows). */
void progress_abort(progress *p);

/* A text_state.on_rows callback (ctx: a begun progress): the prefill's tokens done of
 * total, drawn as a bar with ETA on a terminal and cleared when the prefill ends. */
void cli_prefill_rows(void *ctx, int64_t done, int64_t total);

#endif
