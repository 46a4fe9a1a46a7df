/*
 * test_sft_data.c - SFT data lines to training examples (src/train/sft_data.c): the
 * loss mask against the tokenizer's own encoding of the assistant text, images (a
 * path and a data URL) against preprocess_image and mrope_positions over the whole
 * sequence, every refusal with its message, the dataset index / split / per-epoch
 * order / resume, a file with malformed lines, and the fuzz corpus replay.
 */
#include <nettle/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "check.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "model/mrope.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "train/sft_data.h"

#define ASSETS "assets/qwen2.5-vl-tokenizer"

typedef struct fixture {
    chat_template ct;
    tokenizer *tok;
    preprocess_config pp;
    sft_config cfg;
} fixture;

/* The decoded text of the target tokens, in order (what the model learns to say). */
static void decode_targets(const fixture *f, const sft_example *ex, tok_text *out) {
    tok_ids t = {0};
    ergo_error err = {0};
    for (int i = 0; i < ex->n; i++)
        if (ex->targets[i] >= 0) tok_ids_push(&t, ex->targets[i], &err);
    tokenizer_decode(f->tok, t.v, t.n, 0, out, &err);
    tok_text_append(out, "", 0, &err);
    tok_ids_free(&t);
}

/* The targets are the next ids wherever they are set, and the count matches. */
static void check_target_shape(const sft_example *ex, const char *label) {
    int bad = -1, count = 0;
    for (int i = 0; i < ex->n; i++) {
        if (ex->targets[i] >= 0) count++;
        if (ex->targets[i] >= 0 && (i + 1 >= ex->n || ex->targets[i] != ex->ids[i + 1]) && bad < 0)
            bad = i;
    }
    CHECK(bad < 0, "%s: targets[%d] = %d is not the next id", label, bad,
          bad >= 0 ? ex->targets[bad] : 0);
    CHECK_EQ_INT(count, ex->n_loss_tokens, "n_loss_tokens");
    CHECK_EQ_INT(ex->targets[ex->n - 1], -1, "the last position predicts nothing");
}

static ergo_status parse(const fixture *f, const char *line, const char *dir, sft_example *ex,
                         ergo_error *err) {
    return sft_parse_line(&f->cfg, line, strlen(line), dir, "t.jsonl:3", ex, err);
}

/* ---------------------------------------------------------------- text */

static void test_text(const fixture *f) {
    ergo_error err = {0};
    sft_example ex;
    const char *line = "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"},"
                       " {\"role\": \"assistant\", \"content\": \"4, of course.\"}], \"id\": 7}";
    ergo_status st = parse(f, line, NULL, &ex, &err);
    CHECK(st == ERGO_OK, "text conversation: %s", err.msg);
    if (st != ERGO_OK) return;
    /* the ids are the template's, the default system prompt included */
    chat_message msgs[] = {{"user", "What is 2+2?", 12, NULL, 0},
                           {"assistant", "4, of course.", 13, NULL, 0}};
    tok_ids want = {0};
    CHECK(chat_encode(&f->ct, f->tok, msgs, 2, 0, &want, &err) == ERGO_OK, "%s", err.msg);
    CHECK_EQ_I32(ex.ids, (size_t)ex.n, want.v, want.n, "text ids = chat_encode");
    check_target_shape(&ex, "text");
    tok_text got = {0};
    decode_targets(f, &ex, &got);
    CHECK_EQ_STR(got.s, "4, of course.<|im_end|>", "text: decoded targets");
    /* the loss tokens are exactly the tokenizer's encoding of the content + <|im_end|>,
     * starting right after "<|im_start|>assistant\n" and ending before the final "\n" */
    tok_ids content = {0}, hdr = {0};
    tokenizer_encode(f->tok, "4, of course.<|im_end|>", 23, &content, &err);
    chat_encode_generation_prompt(f->tok, &hdr, &err);
    const int first = ex.n - 1 - (int)content.n; /* position of the final "\n" minus len */
    CHECK(first > 0 && !memcmp(ex.ids + first - (int)hdr.n, hdr.v, hdr.n * sizeof *hdr.v),
          "the header ends where the loss starts (position %d)", first);
    int ok = 1;
    for (int i = 0; i < ex.n; i++) {
        const int in = i >= first - 1 && i < first - 1 + (int)content.n;
        if (in != (ex.targets[i] >= 0)) ok = 0;
        if (in && ex.targets[i] != content.v[i - first + 1]) ok = 0;
    }
    CHECK(ok, "text: targets exactly on the %zu content tokens at %d", content.n, first);
    CHECK_EQ_INT(ex.n_loss_tokens, content.n, "text: loss tokens");
    /* text only: the three M-RoPE rows are 0, 1, 2, ... */
    int pos_ok = 1;
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < ex.n; i++) pos_ok &= ex.pos[a * ex.n + i] == i;
    CHECK(pos_ok, "text: positions are 0..n-1 on every axis");
    CHECK_EQ_INT(ex.n_images, 0, "text: no image");
    tok_text_free(&got);
    tok_ids_free(&content);
    tok_ids_free(&hdr);
    tok_ids_free(&want);
    sft_example_free(&ex);

    /* a system prompt, two assistant turns, list content and an empty answer */
    line = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
           "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hi\"}]},"
           "{\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"Hello\"},"
           "{\"type\": \"text\", \"text\": \" there\"}]},"
           "{\"role\": \"user\", \"content\": \"Bye\"}, {\"role\": \"assistant\", \"content\": \"\"}]}";
    st = parse(f, line, NULL, &ex, &err);
    CHECK(st == ERGO_OK, "two turns: %s", err.msg);
    if (st == ERGO_OK) {
        check_target_shape(&ex, "two turns");
        tok_text t = {0};
        decode_targets(f, &ex, &t);
        CHECK_EQ_STR(t.s, "Hello there<|im_end|><|im_end|>", "two turns: decoded targets");
        tok_text_free(&t);
        sft_example_free(&ex);
    }

    /* a content starting with newlines: the header's "\n" may merge with them; the loss
     * then starts at that merged token (it holds content characters), never earlier */
    line = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"},"
           "{\"role\": \"assistant\", \"content\": \"\\n\\nok\"}]}";
    st = parse(f, line, NULL, &ex, &err);
    CHECK(st == ERGO_OK, "newline content: %s", err.msg);
    if (st == ERGO_OK) {
        check_target_shape(&ex, "newline content");
        tok_text t = {0};
        decode_targets(f, &ex, &t);
        /* Qwen's tokenizer gives <|im_start|> assistant "\n\n\n" ok: the merged token
         * holds two content characters, so it is predicted (from "assistant") */
        CHECK_EQ_STR(t.s, "\n\n\nok<|im_end|>", "newline content: decoded targets");
        int at = 0;
        while (ex.targets[at] < 0) at++;
        size_t l1;
        const char *a = tokenizer_token_text(f->tok, ex.ids[at], &l1);
        CHECK(a && l1 == 9 && !memcmp(a, "assistant", 9),
              "newline content: the first target's position holds \"%.*s\"", (int)l1, a ? a : "");
        CHECK_EQ_INT(ex.n_loss_tokens, 3, "newline content: loss tokens (\\n\\n\\n, ok, <|im_end|>)");
        tok_text_free(&t);
        sft_example_free(&ex);
    }
}

/* ---------------------------------------------------------------- images */

static char *read_fixture(const char *name, size_t *size) {
    char path[1024], *bytes = NULL;
    ergo_error err = {0};
    snprintf(path, sizeof path, "%s/image/decode/%s", fixtures_dir(), name);
    if (file_read_all(path, (size_t)1 << 24, &bytes, size, &err) != ERGO_OK) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    return bytes;
}

/* What the processor gives for an image file, independently of sft_data. */
static int reference_image(const fixture *f, const char *path, preprocess_output *po) {
    image im = {0};
    ergo_error err = {0};
    ergo_status st = image_decode_file(&im, path, NULL, &err);
    if (st == ERGO_OK) st = preprocess_image(&f->pp, &im, po, &err);
    image_free(&im);
    CHECK(st == ERGO_OK, "reference preprocess of %s: %s", path, err.msg);
    return st == ERGO_OK;
}

static void test_images(const fixture *f) {
    ergo_error err = {0};
    const char *dir = scratch_dir();
    char jpg_path[1024], png_path[1024], data_path[1024];
    size_t jn, pn;
    char *jpg = read_fixture("demo_rows.png", &jn);
    char *png = read_fixture("png_rgba8.png", &pn);
    if (!jpg || !png) return;
    snprintf(jpg_path, sizeof jpg_path, "%s/sft_rows.png", dir);
    snprintf(png_path, sizeof png_path, "%s/sft_b.png", dir);
    CHECK(file_write_all(jpg_path, jpg, jn, &err) == ERGO_OK, "%s", err.msg);
    CHECK(file_write_all(png_path, png, pn, &err) == ERGO_OK, "%s", err.msg);
    char *b64 = malloc(BASE64_ENCODE_RAW_LENGTH(pn) + 1);
    base64_encode_raw(b64, pn, (const uint8_t *)png);
    b64[BASE64_ENCODE_RAW_LENGTH(pn)] = 0;
    const size_t line_cap = strlen(b64) + 1024;
    char *line = malloc(line_cap);
    snprintf(line, line_cap,
             "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
             "\"sft_rows.png\"}, {\"type\": \"text\", \"text\": \"Describe.\"}]},"
             " {\"role\": \"assistant\", \"content\": \"A cat.\"},"
             " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"And \"},"
             " {\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,%s\"}},"
             " {\"type\": \"text\", \"text\": \"this?\"}]},"
             " {\"role\": \"assistant\", \"content\": \"A dog.\"}]}\n",
             b64);
    /* read through the dataset so the image path is taken relative to the file */
    snprintf(data_path, sizeof data_path, "%s/images.jsonl", dir);
    CHECK(file_write_all(data_path, line, strlen(line), &err) == ERGO_OK, "%s", err.msg);
    sft_dataset ds;
    sft_example ex;
    ergo_status st = sft_dataset_open(&ds, data_path, 0, 1, &err);
    CHECK(st == ERGO_OK, "open %s: %s", data_path, err.msg);
    if (st == ERGO_OK) st = sft_dataset_read(&ds, &f->cfg, 0, &ex, &err);
    CHECK(st == ERGO_OK, "two images: %s", err.msg);
    preprocess_output pa = {0}, pb = {0};
    if (st == ERGO_OK && reference_image(f, jpg_path, &pa) && reference_image(f, png_path, &pb)) {
        CHECK_EQ_INT(ex.n_images, 2, "two images");
        const preprocess_output *ref[2] = {&pa, &pb};
        mrope_grid grids[2];
        int64_t tokens[2];
        for (int k = 0; k < 2 && k < ex.n_images; k++) {
            const sft_image *im = &ex.images[k];
            grids[k] = (mrope_grid){ref[k]->grid_t, ref[k]->grid_h, ref[k]->grid_w};
            tokens[k] = mrope_grid_tokens(&grids[k], 2);
            CHECK(im->grid.t == grids[k].t && im->grid.h == grids[k].h && im->grid.w == grids[k].w,
                  "image %d: grid (%d, %d, %d), want (%d, %d, %d)", k, im->grid.t, im->grid.h,
                  im->grid.w, grids[k].t, grids[k].h, grids[k].w);
            CHECK(im->n_patches == ref[k]->n_patches && im->patch_dim == ref[k]->patch_dim &&
                      !memcmp(im->pixel_values, ref[k]->pixel_values,
                              (size_t)im->n_patches * (size_t)im->patch_dim * sizeof(float)),
                  "image %d: pixel values differ from preprocess_image (%lld x %d)", k,
                  (long long)im->n_patches, im->patch_dim);
        }
        /* the ids are the template's with each image's pads */
        chat_part p0[] = {{CHAT_IMAGE, NULL, 0, (int32_t)tokens[0]}, {CHAT_TEXT, "Describe.", 9, 0}};
        chat_part p2[] = {{CHAT_TEXT, "And ", 4, 0},
                          {CHAT_IMAGE, NULL, 0, (int32_t)tokens[1]},
                          {CHAT_TEXT, "this?", 5, 0}};
        chat_message msgs[] = {{"user", NULL, 0, p0, 2},
                               {"assistant", "A cat.", 6, NULL, 0},
                               {"user", NULL, 0, p2, 3},
                               {"assistant", "A dog.", 6, NULL, 0}};
        tok_ids want = {0};
        CHECK(chat_encode(&f->ct, f->tok, msgs, 4, 0, &want, &err) == ERGO_OK, "%s", err.msg);
        CHECK_EQ_I32(ex.ids, (size_t)ex.n, want.v, want.n, "two images: ids = chat_encode");
        int64_t pads = 0;
        for (int i = 0; i < ex.n; i++) pads += ex.ids[i] == f->cfg.mrope.image_token_id;
        CHECK_EQ_INT(pads, tokens[0] + tokens[1], "two images: pads");
        /* the M-RoPE ids are mrope_positions over the whole sequence */
        int32_t *pos = malloc(3 * (size_t)ex.n * sizeof *pos), next = 0;
        st = mrope_positions(&f->cfg.mrope, ex.ids, ex.n, -1, grids, 2, &next, pos, ex.n, &err);
        CHECK(st == ERGO_OK, "mrope_positions: %s", err.msg);
        CHECK_EQ_I32(ex.pos, 3 * (size_t)ex.n, pos, 3 * (size_t)ex.n, "two images: M-RoPE ids");
        /* and they are not 0..n-1 (an image advances by max(h, w) merged units) */
        CHECK(ex.pos[ex.n - 1] < ex.n - 1, "two images: last position %d of %d tokens",
              ex.pos[ex.n - 1], ex.n);
        check_target_shape(&ex, "two images");
        int on_pad = 0;
        for (int i = 0; i < ex.n; i++) on_pad |= ex.targets[i] == f->cfg.mrope.image_token_id;
        CHECK(!on_pad, "two images: a target is an image pad");
        tok_text t = {0};
        decode_targets(f, &ex, &t);
        CHECK_EQ_STR(t.s, "A cat.<|im_end|>A dog.<|im_end|>", "two images: decoded targets");
        printf("  sft: two-image example: %d tokens, grids (%d,%d,%d) (%d,%d,%d), %d loss tokens\n",
               ex.n, grids[0].t, grids[0].h, grids[0].w, grids[1].t, grids[1].h, grids[1].w,
               ex.n_loss_tokens);
        tok_text_free(&t);
        tok_ids_free(&want);
        free(pos);
    }
    int32_t *ex_ids = NULL;
    int ex_n = 0, ex_ids_ok = 0;
    if (st == ERGO_OK && (ex_ids = malloc((size_t)ex.n * sizeof *ex_ids))) {
        memcpy(ex_ids, ex.ids, (size_t)ex.n * sizeof *ex_ids);
        ex_n = ex.n;
        ex_ids_ok = 1;
    }
    if (st == ERGO_OK) sft_example_free(&ex);
    preprocess_output_free(&pa);
    preprocess_output_free(&pb);
    sft_dataset_close(&ds);

    /* TRL's layout: bare image parts take the line's "images" in order */
    snprintf(line, line_cap,
             "{\"images\": [\"sft_rows.png\", \"data:image/png;base64,%s\"], \"messages\": "
             "[{\"role\": \"user\", \"content\": [{\"type\": \"image\"}, {\"type\": \"text\", "
             "\"text\": \"Describe.\"}]}, {\"role\": \"assistant\", \"content\": \"A cat.\"},"
             " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"And \"},"
             " {\"type\": \"image\"}, {\"type\": \"text\", \"text\": \"this?\"}]},"
             " {\"role\": \"assistant\", \"content\": \"A dog.\"}]}", b64);
    sft_example trl;
    st = parse(f, line, dir, &trl, &err);
    CHECK(st == ERGO_OK, "TRL images layout: %s", err.msg);
    if (st == ERGO_OK && ex_ids_ok) {
        CHECK_EQ_I32(trl.ids, (size_t)trl.n, ex_ids, (size_t)ex_n, "TRL layout: same ids");
        CHECK(trl.n_images == 2 && trl.images[0].grid.w == 160 && trl.images[1].grid.w == 6,
              "TRL layout: images in order");
    }
    if (st == ERGO_OK) sft_example_free(&trl);
    free(ex_ids);

    /* an absolute path is allowed; a relative one is never resolved against the cwd */
    snprintf(line, line_cap,
             "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
             "\"file://%s\"}]}, {\"role\": \"assistant\", \"content\": \"x\"}]}", jpg_path);
    st = parse(f, line, "/nonexistent-dir", &ex, &err);
    CHECK(st == ERGO_OK && ex.n_images == 1, "absolute file:// path: %s", err.msg);
    if (st == ERGO_OK) sft_example_free(&ex);
    snprintf(line, line_cap,
             "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
             "\"%s/image/decode/jpeg_1x1.jpg\"}]}, {\"role\": \"assistant\", \"content\": \"x\"}]}",
             fixtures_dir());
    st = parse(f, line, dir, &ex, &err);
    CHECK(st != ERGO_OK && strstr(err.msg, dir) && strstr(err.msg, "jpeg_1x1.jpg"),
          "a relative path resolves against the data file's directory only: %s", err.msg);
    free(line);
    free(b64);
    free(jpg);
    free(png);
}

/* ---------------------------------------------------------------- refusals */

static void expect_error(const fixture *f, const sft_config *cfg, const char *line,
                         const char *dir, const char *want, const char *label) {
    sft_example ex;
    ergo_error err = {0};
    ergo_status st = sft_parse_line(cfg ? cfg : &f->cfg, line, strlen(line), dir, "t.jsonl:3",
                                    &ex, &err);
    CHECK(st != ERGO_OK && !strncmp(err.msg, "t.jsonl:3: ", 11) && strstr(err.msg, want) &&
              ex.ids == NULL && ex.n == 0 && ex.images == NULL,
          "%s: want an error with \"%s\", got status %d: %s", label, want, (int)st, err.msg);
    if (st == ERGO_OK) sft_example_free(&ex);
}

#define U "{\"role\": \"user\", \"content\": \"q\"}"
#define A "{\"role\": \"assistant\", \"content\": \"a\"}"

static void test_errors(const fixture *f) {
    const char *dir = scratch_dir();
    char garbage[1024];
    ergo_error err = {0};
    snprintf(garbage, sizeof garbage, "%s/garbage.png", dir);
    CHECK(file_write_all(garbage, "not an image at all", 19, &err) == ERGO_OK, "%s", err.msg);

    expect_error(f, NULL, "{\"messages\": [" U, NULL, "malformed JSON", "truncated JSON");
    expect_error(f, NULL, "", NULL, "malformed JSON", "empty line");
    expect_error(f, NULL, "[" U "," A "]", NULL, "not a JSON object", "a list");
    expect_error(f, NULL, "{\"conversations\": []}", NULL, "no \"messages\" key", "no messages");
    expect_error(f, NULL, "{\"messages\": []}", NULL, "\"messages\" is empty", "empty messages");
    expect_error(f, NULL, "{\"messages\": {}}", NULL, "\"messages\" is not a list", "object");
    expect_error(f, NULL, "{\"messages\": [" U ", 3]}", NULL, "messages[1] is not an object",
                 "a number message");
    expect_error(f, NULL, "{\"messages\": [" U ", {\"role\": \"bot\", \"content\": \"a\"}]}", NULL,
                 "messages[1].role: unknown role \"bot\"", "unknown role");
    expect_error(f, NULL, "{\"messages\": [{\"content\": \"a\"}]}", NULL,
                 "messages[0].role is missing", "no role");
    expect_error(f, NULL, "{\"messages\": [{\"role\": 1, \"content\": \"a\"}]}", NULL,
                 "messages[0].role is not a string", "role type");
    expect_error(f, NULL, "{\"messages\": [" U ", {\"role\": \"assistant\"}]}", NULL,
                 "messages[1].content is missing", "no content");
    expect_error(f, NULL, "{\"messages\": [" U ", {\"role\": \"assistant\", \"content\": 5}]}",
                 NULL, "messages[1].content must be a string or a list of parts", "content 5");
    expect_error(f, NULL, "{\"messages\": [" U ", {\"role\": \"assistant\", \"content\": null}]}",
                 NULL, "(got null)", "content null");
    expect_error(f, NULL, "{\"messages\": [{\"role\": \"user\", \"content\": [\"hi\"]}," A "]}",
                 NULL, "messages[0].content[0] must be an object with a string \"type\"",
                 "a string part");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"audio\"}]}," A "]}",
                 NULL, "unknown part type \"audio\"", "audio part");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", "
                 "\"text\": 1}]}," A "]}",
                 NULL, "messages[0].content[0].text must be a string", "text not a string");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\"}]}," A "]}",
                 NULL, "messages[0].content[0].image must be a string", "image without source");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
                 "\"image_url\": {}}]}," A "]}",
                 NULL, "messages[0].content[0].image_url.url must be a string", "image_url {}");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", "
                 "\"image\": \"missing.png\"}]}," A "]}",
                 dir, "messages[0].content[0]: ", "missing image");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", "
                 "\"image\": \"missing.png\"}]}," A "]}",
                 dir, "missing.png", "missing image names the file");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", "
                 "\"image\": \"garbage.png\"}]}," A "]}",
                 dir, "garbage.png", "undecodable image");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
                 "\"image_url\": {\"url\": \"data:image/png;base64,!!!!\"}}]}," A "]}",
                 NULL, "not valid base64", "bad base64");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
                 "\"image_url\": {\"url\": \"data:image/png;base64,bm90IGFuIGltYWdl\"}}]}," A "]}",
                 NULL, "data URL", "a data URL that is not an image");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
                 "\"image_url\": \"https://example.com/a.png\"}]}," A "]}",
                 NULL, "remote (http/https) images are not fetched", "https image");
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", "
                 "\"image\": \"a.png\"}]}," A "]}",
                 NULL, "image paths are not allowed here", "paths without a base dir");
    expect_error(f, NULL,
                 "{\"messages\": [" U ", {\"role\": \"assistant\", \"content\": [{\"type\": "
                 "\"image\", \"image\": \"garbage.png\"}]}]}",
                 dir, "images are only supported in system and user messages", "assistant image");
    expect_error(f, NULL, "{\"messages\": [" U "," U "]}", NULL, "no assistant message",
                 "no assistant");
    expect_error(f, NULL, "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}]}", NULL,
                 "no assistant message", "system only");

    expect_error(f, NULL,
                 "{\"images\": [], \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": "
                 "\"image\"}]}," A "]}",
                 NULL, "more image parts than the 0 entries of \"images\"", "TRL: too few images");
    expect_error(f, NULL, "{\"images\": [\"a.png\"], \"messages\": [" U "," A "]}", NULL,
                 "\"images\" has 1 entries but the messages have 0 image parts",
                 "TRL: unused images");
    expect_error(f, NULL, "{\"images\": \"a.png\", \"messages\": [" U "," A "]}", NULL,
                 "\"images\" is not a list", "TRL: images not a list");

    /* over max_tokens: the default system prompt alone is ~20 tokens */
    sft_config small = f->cfg;
    small.max_tokens = 10;
    expect_error(f, &small, "{\"messages\": [" U "," A "]}", NULL,
                 "longer than max_tokens (10)", "max_tokens");
    /* images beyond max_images, and pads alone over max_tokens */
    small = f->cfg;
    small.max_images = 1;
    char two[1024];
    snprintf(two, sizeof two,
             "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
             "\"%s/image/decode/jpeg_1x1.jpg\"}, {\"type\": \"image\", \"image\": "
             "\"%s/image/decode/jpeg_1x1.jpg\"}]}," A "]}",
             fixtures_dir(), fixtures_dir());
    char cwd_dir[] = ".";
    expect_error(f, &small, two, cwd_dir, "more than 1 images", "max_images");
    small = f->cfg;
    small.max_tokens = 3;
    expect_error(f, &small, two, cwd_dir, "with the image of messages[0].content[0]",
                 "image pads over max_tokens");
    /* images without a preprocessor */
    small = f->cfg;
    small.pp = NULL;
    expect_error(f, &small, two, cwd_dir, "no preprocessor", "no preprocessor");
    /* text that spells image tokens without an image: the pads do not match */
    expect_error(f, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"<|vision_start|><|image_pad|>"
                 "<|vision_end|>\"}," A "]}",
                 NULL, "t.jsonl:3: ", "spelled image pads");
}

/* ---------------------------------------------------------------- dataset */

static void write_lines(const char *path, const char *text) {
    ergo_error err = {0};
    CHECK(file_write_all(path, text, strlen(text), &err) == ERGO_OK, "%s", err.msg);
}

static int is_permutation_of(const int64_t *a, const int64_t *b, int64_t n) {
    /* b is ascending and distinct (ds->train) */
    for (int64_t i = 0; i < n; i++) {
        int found = 0;
        for (int64_t j = 0; j < n; j++) found |= a[i] == b[j];
        if (!found) return 0;
        for (int64_t j = 0; j < i; j++)
            if (a[j] == a[i]) return 0;
    }
    return 1;
}

static void test_dataset(const fixture *f) {
    const char *dir = scratch_dir();
    char path[1024];
    ergo_error err = {0};
    snprintf(path, sizeof path, "%s/ten.jsonl", dir);
    /* 12 conversations; blank lines (one with spaces, one CRLF) are not records */
    char text[8192] = "";
    for (int i = 0; i < 12; i++) {
        char l[256];
        snprintf(l, sizeof l,
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"q%d\"}, {\"role\": "
                 "\"assistant\", \"content\": \"a%d\"}]}%s",
                 i, i, i == 3 ? "\r\n" : "\n");
        strcat(text, l);
        if (i == 1) strcat(text, "\n   \n");
        if (i == 6) strcat(text, "\r\n");
    }
    write_lines(path, text);
    sft_dataset ds, ds2;
    ergo_status st = sft_dataset_open(&ds, path, 3, 42, &err);
    CHECK(st == ERGO_OK, "open: %s", err.msg);
    if (st != ERGO_OK) return;
    CHECK_EQ_INT(ds.n_records, 12, "records");
    CHECK_EQ_INT(ds.line_no[0], 1, "line of record 0");
    CHECK_EQ_INT(ds.line_no[2], 5, "line of record 2 (after two blank lines)");
    CHECK_EQ_INT(ds.line_no[7], 11, "line of record 7 (after a CRLF blank line)");
    size_t len;
    int64_t ln;
    const char *l3 = sft_dataset_line(&ds, 3, &len, &ln);
    CHECK(len > 0 && l3[len - 1] == '}' && ln == 6, "record 3 drops its \\r (line %lld)",
          (long long)ln);
    sft_example ex;
    st = sft_dataset_read(&ds, &f->cfg, 7, &ex, &err);
    CHECK(st == ERGO_OK, "read record 7: %s", err.msg);
    if (st == ERGO_OK) {
        tok_text t = {0};
        decode_targets(f, &ex, &t);
        CHECK_EQ_STR(t.s, "a7<|im_end|>", "record 7's answer");
        tok_text_free(&t);
        sft_example_free(&ex);
    }
    /* the split: disjoint, complete, seeded */
    CHECK(ds.n_train == 9 && ds.n_heldout == 3, "split 9 + 3: %lld + %lld", (long long)ds.n_train,
          (long long)ds.n_heldout);
    int seen[12] = {0}, ok = 1;
    for (int64_t i = 0; i < ds.n_train; i++) seen[ds.train[i]]++;
    for (int64_t i = 0; i < ds.n_heldout; i++) seen[ds.heldout[i]]++;
    for (int i = 0; i < 12; i++) ok &= seen[i] == 1;
    for (int64_t i = 1; i < ds.n_heldout; i++) ok &= ds.heldout[i] > ds.heldout[i - 1];
    CHECK(ok, "train and held-out partition the records, in file order");
    st = sft_dataset_open(&ds2, path, 3, 42, &err);
    CHECK(st == ERGO_OK && !memcmp(ds.heldout, ds2.heldout, 3 * sizeof *ds.heldout),
          "same split seed, same held-out records");
    if (st == ERGO_OK) sft_dataset_close(&ds2);
    int differs = 0;
    for (uint64_t s = 43; s < 47 && !differs; s++) {
        if (sft_dataset_open(&ds2, path, 3, s, &err) != ERGO_OK) break;
        differs = memcmp(ds.heldout, ds2.heldout, 3 * sizeof *ds.heldout) != 0;
        sft_dataset_close(&ds2);
    }
    CHECK(differs, "another split seed picks other held-out records");
    printf("  sft: held-out records %lld %lld %lld of 12 (seed 42)\n", (long long)ds.heldout[0],
           (long long)ds.heldout[1], (long long)ds.heldout[2]);
    CHECK_EQ_INT(sft_heldout_count(12, 0.1), 1, "heldout 10% of 12");
    CHECK_EQ_INT(sft_heldout_count(12, 0.25), 3, "heldout 25% of 12");
    CHECK_EQ_INT(sft_heldout_count(12, 0.0), 0, "heldout 0");
    CHECK_EQ_INT(sft_heldout_count(12, 1.0), 11, "heldout 100% keeps one to train");
    CHECK_EQ_INT(sft_heldout_count(1, 0.5), 0, "one record: none held out");
    CHECK_EQ_INT(sft_heldout_count(1000, 0.0001), 1, "a tiny fraction holds out one");

    /* per-epoch order: a permutation of the training records, the same for the same seed */
    int64_t o1[9], o2[9], o3[9];
    sft_dataset_epoch_order(&ds, 5, 0, o1);
    sft_dataset_epoch_order(&ds, 5, 0, o2);
    sft_dataset_epoch_order(&ds, 5, 1, o3);
    CHECK(is_permutation_of(o1, ds.train, 9), "epoch order is a permutation of the train set");
    CHECK(is_permutation_of(o3, ds.train, 9), "epoch 1 order is a permutation");
    CHECK(!memcmp(o1, o2, sizeof o1), "same seed and epoch, same order");
    CHECK(memcmp(o1, o3, sizeof o1) != 0, "epochs 0 and 1 differ");
    sft_dataset_epoch_order(&ds, 6, 0, o2);
    CHECK(memcmp(o1, o2, sizeof o1) != 0, "another seed, another order");

    /* resume: a cursor started at position p yields what an uninterrupted one yields */
    sft_cursor c;
    int64_t seq[40];
    CHECK(sft_cursor_init(&c, &ds, 5, 0, &err) == ERGO_OK, "%s", err.msg);
    for (int i = 0; i < 40; i++) seq[i] = sft_cursor_next(&c, &ds);
    sft_cursor_free(&c);
    CHECK(!memcmp(seq, o1, sizeof o1) && !memcmp(seq + 9, o3, sizeof o3),
          "the cursor follows the epoch orders");
    const int starts[] = {1, 8, 9, 13, 27};
    for (int k = 0; k < 5; k++) {
        CHECK(sft_cursor_init(&c, &ds, 5, starts[k], &err) == ERGO_OK, "%s", err.msg);
        int same = 1;
        for (int i = starts[k]; i < 40; i++) same &= sft_cursor_next(&c, &ds) == seq[i];
        CHECK(same, "resume at position %d gives the same records", starts[k]);
        CHECK_EQ_INT(c.position, 40, "cursor position after resuming");
        sft_cursor_free(&c);
    }
    CHECK(sft_cursor_init(&c, &ds, 5, -1, &err) != ERGO_OK && strstr(err.msg, "negative"),
          "negative position: %s", err.msg);
    CHECK(sft_dataset_read(&ds, &f->cfg, 12, &ex, &err) != ERGO_OK && strstr(err.msg, "out of range"),
          "record out of range: %s", err.msg);
    sft_dataset_close(&ds);

    /* files that cannot be datasets */
    st = sft_dataset_open(&ds, path, 12, 1, &err);
    CHECK(st != ERGO_OK && strstr(err.msg, "leaves none to train on"), "held-out 12 of 12: %s",
          err.msg);
    snprintf(path, sizeof path, "%s/blank.jsonl", dir);
    write_lines(path, "\n  \n\r\n");
    st = sft_dataset_open(&ds, path, 0, 1, &err);
    CHECK(st != ERGO_OK && strstr(err.msg, "no conversations"), "blank file: %s", err.msg);
    snprintf(path, sizeof path, "%s/empty.jsonl", dir);
    write_lines(path, "");
    st = sft_dataset_open(&ds, path, 0, 1, &err);
    CHECK(st != ERGO_OK && strstr(err.msg, "no conversations"), "empty file: %s", err.msg);
    st = sft_dataset_open(&ds, "/nonexistent/x.jsonl", 0, 1, &err);
    CHECK(st != ERGO_OK && strstr(err.msg, "/nonexistent/x.jsonl"), "missing file: %s", err.msg);
}

/* A file with malformed lines: each bad record fails naming file:line, the others parse. */
static void test_malformed_file(const fixture *f) {
    char path[1024];
    snprintf(path, sizeof path, "%s/mixed.jsonl", scratch_dir());
    write_lines(path, "{\"messages\": [" U "," A "]}\n"                        /* 1: good */
                      "{\"messages\": [" U "," A "\n"                          /* 2: truncated */
                      "\n"                                                     /* 3: blank */
                      "{\"messages\": [" U "]}\n"                              /* 4: no answer */
                      "{\"messages\": [" U ",{\"role\":\"tool\",\"content\":\"x\"}]}\n" /* 5 */
                      "not json at all\n"                                      /* 6 */
                      "{\"messages\": [" U "," A "]}");                         /* 7: good, no \n */
    sft_dataset ds;
    ergo_error err = {0};
    ergo_status st = sft_dataset_open(&ds, path, 0, 1, &err);
    CHECK(st == ERGO_OK, "open mixed: %s", err.msg);
    if (st != ERGO_OK) return;
    CHECK_EQ_INT(ds.n_records, 6, "mixed: records");
    const int want_line[] = {1, 2, 4, 5, 6, 7};
    const char *want_msg[] = {NULL, "malformed JSON", "no assistant message", "unknown role \"tool\"",
                              "malformed JSON", NULL};
    for (int64_t r = 0; r < ds.n_records && r < 6; r++) {
        sft_example ex;
        st = sft_dataset_read(&ds, &f->cfg, r, &ex, &err);
        char where[1100];
        snprintf(where, sizeof where, "%s:%d: ", path, want_line[r]);
        if (!want_msg[r]) {
            CHECK(st == ERGO_OK, "mixed line %d: %s", want_line[r], err.msg);
            if (st == ERGO_OK) sft_example_free(&ex);
        } else {
            CHECK(st != ERGO_OK && !strncmp(err.msg, where, strlen(where)) &&
                      strstr(err.msg, want_msg[r]),
                  "mixed line %d: want \"%s%s\", got %s", want_line[r], where, want_msg[r], err.msg);
        }
    }
    sft_dataset_close(&ds);
}

/* ---------------------------------------------------------------- fuzz corpus */

static void replay(void *ctx, const char *name, const uint8_t *data, size_t size) {
    const int ok = sft_fuzz_line(data, size);
    if (getenv("ERGO_SFT_CORPUS_VERBOSE")) printf("  sft corpus %s: %s\n", name, ok ? "parsed" : "refused");
    *(int *)ctx += ok;
}

static void test_corpus(void) {
    int parsed = 0;
    int n = for_each_corpus_file("sft_line", replay, &parsed);
    CHECK(n >= 5, "sft_line corpus: %d files", n);
    CHECK(parsed >= 2 && parsed < n, "sft_line corpus: %d of %d parsed (want some of each)", parsed,
          n);
}

void test_sft_data(void) {
    fixture f;
    memset(&f, 0, sizeof f);
    ergo_error err = {0};
    char pp_path[256];
    snprintf(pp_path, sizeof pp_path, "%s/preprocessor_config.json", ASSETS);
    if (!dir_exists(ASSETS)) {
        SKIP("%s is missing (the tokenizer assets)", ASSETS);
        test_corpus();
        return;
    }
    ergo_status st = chat_template_load(&f.ct, ASSETS, &err);
    CHECK(st == ERGO_OK, "template: %s", err.msg);
    if (st == ERGO_OK) st = tokenizer_load(&f.tok, ASSETS, &err);
    CHECK(st == ERGO_OK, "tokenizer: %s", err.msg);
    if (st == ERGO_OK) st = preprocess_config_load(&f.pp, pp_path, &err);
    CHECK(st == ERGO_OK, "preprocessor: %s", err.msg);
    if (st != ERGO_OK) {
        tokenizer_free(f.tok);
        return;
    }
    f.cfg.ct = &f.ct;
    f.cfg.tok = f.tok;
    f.cfg.pp = &f.pp;
    f.cfg.mrope = (mrope_ids){tokenizer_token_id(f.tok, "<|image_pad|>", 13),
                              tokenizer_token_id(f.tok, "<|video_pad|>", 13),
                              tokenizer_token_id(f.tok, "<|vision_start|>", 16), 2};
    f.cfg.max_tokens = 4096;
    CHECK(f.cfg.mrope.image_token_id == 151655 && f.cfg.mrope.vision_start_token_id == 151652,
          "image ids %d %d", f.cfg.mrope.image_token_id, f.cfg.mrope.vision_start_token_id);
    test_text(&f);
    test_images(&f);
    test_errors(&f);
    test_dataset(&f);
    test_malformed_file(&f);
    test_corpus();
    tokenizer_free(f.tok);
}
