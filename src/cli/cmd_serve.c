/*
 * cmd_serve.c - `ergo serve`: the OpenAI-compatible server (src/serve/server.h)
 * until SIGINT or SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "commands.h"
#include "io/hub.h"
#include "runtime/engine.h"
#include "serve/server.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo serve --model DIR|OWNER/NAME [options]\n\n"
            "An OpenAI-compatible HTTP server: POST /v1/chat/completions (text and image_url\n"
            "parts, stream), GET /v1/models, GET /health, GET /metrics. Decoding of all\n"
            "running requests is batched into one forward per token (continuous batching).\n\n"
            "  --model DIR|OWNER/NAME   checkpoint directory or hub repo id (required)\n"
            "  --host ADDR              IPv4 address to listen on (127.0.0.1)\n"
            "  --port N                 TCP port (8080; 0 = any free port, printed)\n"
            "  --api-key KEY            require Authorization: Bearer KEY (401 otherwise)\n"
            "  --served-model-name NAME the model id clients send (ergo)\n"
            "  --parallel N             concurrent generations, slots (2)\n"
            "  --queue N                requests waiting for a slot; beyond: 429 (8)\n"
            "  --ctx N                  tokens per conversation (the checkpoint's maximum)\n"
            "  --max-body-mb N          request body limit, 413 above (256)\n"
            "  --limit-images N         images per request (16)\n"
            "  --timeout N              seconds before a generation is cancelled (600)\n"
            "  --cache-mb N             prefix cache: KV of finished conversations kept (2048; 0 off)\n"
            "  --vision-cache-mb N      encoded vision rows of recent images kept (256; 0 off)\n"
            "  --allowed-local-media-path DIR  allow file:// image URLs under DIR\n"
            "  --allow-remote-media     accepted; http(s) fetching is not implemented and refused\n"
            "  --weights bf16|q8|q4     how the linear weights are read (bf16)\n"
            "  --lora DIR               merge a PEFT LoRA adapter (or an `ergo train sft` output)\n"
            "                           into the weights at load (see `ergo generate --help`)\n"
            "  --threads N              OpenMP threads per forward (all)\n"
            "  --min-pixels N, --max-pixels N  the processor's image budget (the checkpoint's)\n"
            "  --quiet                  no per-request log line\n");
}

static volatile sig_atomic_t quit;
static void on_signal(int sig) { quit = sig; }

int cmd_serve(int argc, char **argv) {
    serve_options so;
    serve_options_default(&so);
    so.log = 1;
    engine_options eo;
    engine_options_default(&eo);
    const char *model_arg = NULL, *weights = NULL, *lora = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--allow-remote-media")) { so.allow_remote_media = 1; continue; }
        if (!strcmp(a, "--quiet")) { so.log = 0; continue; }
        if (i + 1 >= argc) return cli_usage_error("serve", "%s needs a value or is unknown", a);
        const char *val = argv[++i];
        int ok = 1;
        if (!strcmp(a, "--model")) model_arg = val;
        else if (!strcmp(a, "--host")) so.host = val;
        else if (!strcmp(a, "--api-key")) so.api_key = val;
        else if (!strcmp(a, "--served-model-name")) so.model_name = val;
        else if (!strcmp(a, "--allowed-local-media-path")) so.local_media = val;
        else if (!strcmp(a, "--weights")) weights = val;
        else if (!strcmp(a, "--lora")) lora = val;
        else {
            /* the numeric options: name, range, destination */
            long long mp = 0, xp = 0, body = -1, ctx = -1, thr = -1;
            long long cmb = -1, vmb = -1, port = -1, par = -1, q = -1, img = -1, to = -1;
            const struct { const char *name; long long lo, hi, *dst; } num[] = {
                {"--port", 0, 65535, &port},          {"--parallel", 1, 256, &par},
                {"--queue", 0, 4096, &q},             {"--ctx", 1, 1 << 24, &ctx},
                {"--max-body-mb", 1, 1 << 16, &body}, {"--limit-images", 1, 4096, &img},
                {"--timeout", 1, 1 << 24, &to},       {"--cache-mb", 0, 1 << 24, &cmb},
       {"--threads", 1, 4096, &thr},
                {"--vision-cache-mb", 0, 1 << 24, &vmb},
                {"--min-pixels", 1, (long long)1 << 40, &mp},
                {"--max-pixels", 1, (long long)1 << 40, &xp},
            };
            size_t k = 0;
            while (k < sizeof num / sizeof *num && strcmp(a, num[k].name)) k++;
            if (k == sizeof num / sizeof *num)
                return cli_usage_error("serve", "unknown option `%s'", a);
            ok = cli_parse_long(val, num[k].lo, num[k].hi, num[k].dst);
            if (port >= 0) so.port = (int)port;
            if (par >= 0) so.parallel = (int)par;
            if (q >= 0) so.queue = (int)q;
            if (ctx >= 0) eo.max_context = (int)ctx;
            if (body >= 0) so.max_body_bytes = (int64_t)body << 20;
            if (img >= 0) so.max_images = (int)img;
            if (to >= 0) so.timeout_s = (int)to;
            if (cmb >= 0) so.cache_bytes = (size_t)cmb << 20;
            if (vmb >= 0) so.vision_cache_bytes = (size_t)vmb << 20;
            if (thr >= 0) eo.n_threads = (int)thr;
            if (mp) eo.min_pixels = mp;
            if (xp) eo.max_pixels = xp;
        }
        if (!ok) return cli_usage_error("serve", "bad value for %s", a);
    }
    if (!model_arg) return cli_usage_error("serve", "%s", "--model DIR is required");

    ergo_error err = {0};
    char dir[4096];
    if (hub_resolve_model(model_arg, dir, sizeof dir, &err)) return cli_fail("serve", err.msg);
    if (cli_weights_options(&eo, weights, NULL, &err)) return cli_fail("serve", err.msg);
    if (lora && cli_check_lora(lora, &err)) return cli_fail("serve", err.msg);
    eo.lora = lora;
    engine e;
    if (engine_load(&e, dir, &eo, &err)) {
        engine_free(&e);
        return cli_fail("serve", err.msg);
    }
    if (e.lora_note[0]) fprintf(stderr, "ergo serve: note: %s\n", e.lora_note);
    if (e.lora_dir[0])
        fprintf(stderr, "ergo serve: LoRA %s merged into %d linears (adapter %.12s)\n", e.lora_dir,
                e.lora_modules, e.lora_hash);
    cli_engine_warning("serve", &e);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    server *sv;
    if (server_start(&sv, &e, &so, &err)) {
        engine_free(&e);
        return cli_fail("serve", err.msg);
    }
    fprintf(stderr, "ergo serve: listening on http://%s:%d (model \"%s\", %d slots, queue %d)\n",
            so.host, server_port(sv), so.model_name, so.parallel, so.queue);
    while (!quit) pause();
    fprintf(stderr, "ergo serve: stopping (signal %d)\n", (int)quit);
    server_stop(sv);
    engine_free(&e);
    return 0;
}
