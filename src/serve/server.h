/*
 * server.h - `ergo serve`: an OpenAI-compatible HTTP server (libmicrohttpd) over one
 * shared engine. One thread per connection parses the request, decodes its images and
 * runs the vision encoder in its slot's own context (so encoding never blocks other
 * streams), tokenizes the conversation, then hands a sched_request to the ONE
 * scheduler thread, which owns the scheduler, its text state and the KV pool of every
 * session and runs sched_tick while there is work (all decoding requests advance one
 * token per tick in one batched forward; prompts are admitted in chunks).
 *
 * Endpoints: POST /v1/chat/completions (stream or not), GET /v1/models, GET /health,
 * GET /metrics. Admission: at most `parallel` requests hold a slot and `queue` more
 * wait for one; beyond that 429 with Retry-After. A streaming client that disconnects
 * cancels its generation (sched_cancel) and frees its slot.
 *
 * Prefix cache (llama.cpp's slot cache, token-exact): finished sessions stay in the
 * scheduler's pool, idle, least recently used evicted beyond cache_bytes. A request
 * forks the one with the longest common prefix (token ids; each image compared by
 * the SHA-256 of its width, height, grid and RGB bytes), truncates it there (never
 * inside an image) and prefills only the rest: usage.prompt_tokens_details.cached_tokens.
 * Vision-row cache: each image's encoded rows are kept (LRU within vision_cache_bytes,
 * shared by the slots), keyed by SHA-256 over width, height, min/max pixels and the RGB
 * bytes; a repeated image skips the encoder (timings.vision_encodes, /metrics).
 *
 *   serve_options o;  serve_options_default(&o);  o.port = 0;  // ephemeral
 *   server *sv;  if (server_start(&sv, &engine, &o, &err)) ...;
 *   printf("%d\n", server_port(sv));  ...  server_stop(sv);
 */
#ifndef ERGO_SERVE_SERVER_H
#define ERGO_SERVE_SERVER_H

#include <stdint.h>

#include "base/status.h"
#include "runtime/engine.h"

typedef struct serve_options {
    const char *host;          /* "127.0.0.1" (dotted IPv4) */
    int port;                  /* 8080; 0 = an ephemeral port (server_port) */
    const char *api_key;       /* NULL: no authentication */
    const char *model_name;    /* "ergo": the id of /v1/models and the accepted "model" */
    int parallel;              /* slots: concurrent generations (2) */
    int queue;                 /* requests waiting for a slot beyond them (8) */
    int64_t max_body_bytes;    /* 413 above (256 MiB) */
    int max_images;            /* per request (16) */
    const char *local_media;   /* --allowed-local-media-path, or NULL */
    int allow_remote_media;    /* accepted but remote fetching is not implemented */
    size_t cache_bytes;        /* prefix cache: KV bytes of idle sessions kept (2 GiB; 0 = off) */
    size_t vision_cache_bytes; /* encoded vision rows of recent images, its own budget beside
                                  cache_bytes (256 MiB; 0 = off) */
    int timeout_s;             /* a generation still running after this is cancelled (600) */
    int log;                   /* one line per request on stderr */
} serve_options;

void serve_options_default(serve_options *o);

typedef struct server server;

/* Binds, starts the scheduler thread and the HTTP daemon. e must outlive the server. */
ergo_status server_start(server **out, const engine *e, const serve_options *o,
                         ergo_error *err);
int server_port(const server *sv);
/* Refuses new requests (503), cancels running generations, waits for every thread,
 * frees everything. */
void server_stop(server *sv);

#endif
