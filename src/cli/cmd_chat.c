/*
 * cmd_chat.c - `ergo chat`: an interactive conversation with a model, one turn per
 * line of stdin, all turns on one session (each new turn is appended to the live
 * KV cache; nothing earlier is computed again), the answer streamed as it is
 * generated. `/image FILE` attaches an image to the next turn; `/quit` (or the end
 * of input) ends. The exploration loop of llama.cpp's CLI, for Qwen2.5-VL / ERGO.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "progress.h"
#include "runtime/context.h"
#include "runtime/engine.h"
#include "tokenizer/chat_template.h"

#define CHAT_MAX_IMAGES 8 /* per turn */

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo chat -m|--model DIR [-i|--image FILE] [--system TEXT] [-n|--max-new-tokens N]\n"
            "                 [--greedy] [-t|--threads N] [--weights bf16|q8|q4]\n"
            "                 [--weights-cache auto|off|FILE] [--kv-dtype f32|bf16] [-q|--quiet]\n"
            "                 [--lora DIR]\n"
            "\n"
            "Reads one user turn per line from stdin and streams the answer to stdout; every\n"
            "turn continues the same session (KV cache), so earlier turns are not computed\n"
            "again. --image attaches FILE to the first turn; in the conversation:\n"
            "  /image FILE   attach FILE to the next turn (up to 8 per turn)\n"
            "  /quit         end (as does the end of input)\n"
            "Decoding follows DIR/generation_config.json (as `ergo generate`); --greedy decodes\n"
            "greedily; at most N new tokens per turn (default 1024). The conversation ends when\n"
            "it fills the model's context.\n");
    fputs(cli_lora_help, out);
}

static int fail(const char *msg) { return cli_fail("chat", msg); }

typedef struct chat {
    engine e;
    context c;
    session s;
    int c_ready, s_ready;
    chat_state cs;
    image pending[CHAT_MAX_IMAGES]; /* attached, not yet sent */
    int n_pending;
    int owed;                       /* the last generated id, not yet in the session */
    int32_t owed_id;
    int turns;
} chat;

static void chat_free(chat *ch) {
    for (int i = 0; i < ch->n_pending; i++) image_free(&ch->pending[i]);
    if (ch->s_ready) session_free(&ch->s);
    if (ch->c_ready) context_free(&ch->c);
    engine_free(&ch->e);
}

static ergo_status attach(chat *ch, const char *path, const preprocess_config *pc,
                          ergo_error *err) {
    if (ch->n_pending == CHAT_MAX_IMAGES)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: at most %d images per turn", path,
                         CHAT_MAX_IMAGES);
    image img = {0};
    ergo_status s = cli_check_image(path, pc, 0, &img, err);
    if (s) {
        image_free(&img);
        return s;
    }
    ch->pending[ch->n_pending++] = img;
    return ERGO_OK;
}

/* One user turn: [the owed id] [closing of the last answer] user(images, text),
 * generation prompt; prefilled, then the answer generated and streamed. */
static ergo_status turn(chat *ch, const char *system, const char *text, const generate_params *gp,
                        ergo_error *err) {
    const size_t D = (size_t)ch->e.m.config.text.hidden;
    chat_part parts[CHAT_MAX_IMAGES + 1];
    mrope_grid grids[CHAT_MAX_IMAGES];
    float *rows = NULL;
    int64_t n_rows = 0;
    tok_ids ids = {0};
    ergo_status s = ERGO_OK;
    const int n_img = ch->n_pending;
    for (int i = 0; i < n_img && !s; i++) {
        context_image im;
        progress p;
        progress_begin(&p, "encode image (%dx%d)", ch->pending[i].width, ch->pending[i].height);
        s = context_encode_image(&ch->c, &ch->pending[i], NULL, &im, err);
        float *g = s ? NULL : realloc(rows, sizeof *rows * (size_t)(n_rows + im.tokens) * D);
        if (!s && !g) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory for the vision rows");
        if (!s) {
            rows = g;
            memcpy(rows + (size_t)n_rows * D, im.rows, sizeof *rows * (size_t)im.tokens * D);
            n_rows += im.tokens;
            grids[i] = im.grid;
            parts[i] = (chat_part){CHAT_IMAGE, NULL, 0, (int32_t)im.tokens};
            progress_end(&p, "%lld vision tokens", (long long)im.tokens);
        } else {
            progress_abort(&p);
        }
        context_image_free(&im);
    }
    parts[n_img] = (chat_part){CHAT_TEXT, text, strlen(text), 0};
    if (!s && ch->owed) s = tok_ids_push(&ids, ch->owed_id, err);
    if (!s && ch->turns > 0) { /* "<|im_end|>\n" closing the last answer, via the template */
        tok_text txt = {0}, gen = {0};
        chat_message m = {"assistant", "", 0, NULL, 0};
        s = chat_render_message(&ch->e.ct, &ch->cs, &m, 0, &txt, err);
        if (!s) s = chat_render_generation_prompt(&gen, err);
        if (!s && (txt.n < gen.n || memcmp(txt.s, gen.s, gen.n)))
            s = ergo_fail(err, ERGO_E_FORMAT, "the chat template's assistant turn does not "
                                              "start with its generation prompt");
        if (!s) s = tokenizer_encode(ch->e.tok, txt.s + gen.n, txt.n - gen.n, &ids, err);
        tok_text_free(&txt);
        tok_text_free(&gen);
    }
    if (!s && ch->turns == 0 && system) {
        chat_message m = {"system", system, strlen(system), NULL, 0};
        s = chat_encode_message(&ch->e.ct, ch->e.tok, &ch->cs, &m, &ids, err);
    }
    chat_message u = {"user", NULL, 0, parts, (size_t)n_img + 1};
    if (!s) s = chat_encode_message(&ch->e.ct, ch->e.tok, &ch->cs, &u, &ids, err);
    if (!s) s = chat_encode_generation_prompt(ch->e.tok, &ids, err);
    context_prefill_out pf;
    if (!s) {
        context_piece piece = {ids.v, (int)ids.n, grids, n_img, rows};
        progress p;
        progress_begin(&p, "prefill %zu tokens", ids.n);
        s = context_prefill(&ch->c, &ch->s, &piece, &pf, err);
        if (s) progress_abort(&p);
        else progress_end(&p, "context %d tokens", pf.context_tokens);
    }
    free(rows);
    tok_ids_free(&ids);
    for (int i = 0; i < n_img; i++) image_free(&ch->pending[i]);
    ch->n_pending = 0;
    if (s) return s;
    ch->owed = 0;
    ch->turns++;
    generate_result res = {0};
    cli_decode_progress dp;
    cli_decode_progress_begin(&dp, stdout, gp->max_new_tokens);
    s = context_generate(&ch->c, &ch->s, pf.logits, gp, cli_decode_progress_text, &dp, &res, err);
    fputc('\n', stdout);
    fflush(stdout);
    cli_decode_progress_end(&dp, s, res.tokens.n, res.decode_ms);
    /* a run cut by the length limit still owes its last token to the session */
    if (!s && res.reason != STOP_EOS && res.tokens.n > 0) {
        ch->owed = 1;
        ch->owed_id = res.tokens.v[res.tokens.n - 1];
    }
    if (!s && res.reason == STOP_CONTEXT)
        s = ergo_fail(err, ERGO_E_LIMIT, "the conversation filled the context of %d tokens",
                      ch->s.max_context);
    generate_result_free(&res);
    return s;
}

int cmd_chat(int argc, char **argv) {
    const char *model_dir = NULL, *image_path = NULL, *system = NULL, *weights = NULL;
    const char *weights_cache = NULL, *kv = NULL, *lora = NULL;
    long long max_new = 1024, threads = 0;
    int greedy = 0, quiet = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_dir, NULL, 0, 0, 0, 0, NULL},
        {"image", 'i', CLI_STR, &image_path, NULL, 0, 0, 0, 0, NULL},
        {"system", 0, CLI_STR, &system, NULL, 0, 0, 0, 0, NULL},
        {"max-new-tokens", 'n', CLI_INT, &max_new, NULL, 1, 1 << 20, 0, 0, NULL},
        {"threads", 't', CLI_INT, &threads, NULL, 1, 1024, 0, 0, NULL},
        {"weights", 0, CLI_STR, &weights, NULL, 0, 0, 0, 0, NULL},
        {"weights-cache", 0, CLI_STR, &weights_cache, NULL, 0, 0, 0, 0, NULL},
        {"kv-dtype", 0, CLI_STR, &kv, NULL, 0, 0, 0, 0, NULL},
        {"lora", 0, CLI_STR, &lora, NULL, 0, 0, 0, 0, NULL},
        {"greedy", 0, CLI_FLAG, &greedy, NULL, 0, 0, 0, 0, NULL},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("chat", opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (quiet) progress_set_quiet(1);
    if (!model_dir) return cli_usage_error("chat", "%s", "--model DIR is required");
    ergo_error err = {0};
    engine_options eo;
    engine_options_default(&eo);
    if (cli_engine_options(&eo, threads, weights, weights_cache, kv, &err))
        return cli_usage_error("chat", "%s", err.msg);
    eo.lora = lora;
    if (lora && cli_check_lora(lora, &err)) return fail(err.msg);
    if (system && cli_check_utf8("--system", system, &err)) return fail(err.msg);
    chat *ch = calloc(1, sizeof *ch);
    if (!ch) return fail("out of memory");
    preprocess_config pc;
    ergo_status s = cli_processor_config(&pc, model_dir, 0, 0, &err);
    if (!s && image_path) s = attach(ch, image_path, &pc, &err); /* before the load */
    if (!s) s = cli_load_engine("chat", &ch->e, model_dir, &eo, &err);
    if (!s && (s = context_init(&ch->c, &ch->e, &err)) == ERGO_OK) ch->c_ready = 1;
    if (!s && (s = context_session_init(&ch->c, &ch->s, &err)) == ERGO_OK) ch->s_ready = 1;
    if (s) {
        rc = fail(err.msg);
        chat_free(ch);
        free(ch);
        return rc;
    }
    generate_params gp = {{0}, (int)max_new, ch->e.stop_ids, ch->e.n_stop_ids, NULL, 0};
    sampler_config_from_generation(&gp.sampling, &ch->e.m.generation);
    if (greedy) gp.sampling.do_sample = 0;
    const int tty = isatty(0);
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        if (tty) {
            fputs(ch->n_pending ? "[image attached] > " : "> ", stdout);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!n) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strncmp(line, "/image ", 7)) {
            if (attach(ch, line + 7, &pc, &err)) cli_fail("chat", err.msg);
            continue;
        }
        if (line[0] == '/') {
            fprintf(stderr, "ergo chat: unknown command `%.40s' (/image FILE, /quit)\n", line);
            continue;
        }
        if (cli_check_utf8("the line", line, &err)) {
            cli_fail("chat", err.msg);
            continue;
        }
        if (turn(ch, system, line, &gp, &err)) { /* the session may be half-updated: end */
            rc = fail(err.msg);
            break;
        }
    }
    free(line);
    chat_free(ch);
    free(ch);
    if (fflush(stdout) != 0 && rc == 0) rc = fail("cannot write the output");
    return rc;
}
