/*
 * chat_template.c - the Qwen2-VL chat template, written out in C.
 *
 * Mirrors the Jinja template of Qwen2.5-VL's chat_template.json as transformers
 * 4.56.2 renders it (processor.apply_chat_template), and the expansion of each
 * <|image_pad|> to N pads that Qwen2_5_VLProcessor.__call__ does before
 * tokenizing. Rather than interpret Jinja we accept exactly that template (the
 * text below) and refuse any other, so a checkpoint with a different format
 * cannot be silently mis-rendered.
 */
#include "tokenizer/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "tokenizer/utf8.h"

/* chat_template.json of Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct. */
static const char qwen2_vl_template[] =
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for"
    " message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>syst"
    "em\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for "
    "content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or "
    "'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_visi"
    "on_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_"
    "end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value ="
    " video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<"
    "|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }"
    "}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<"
    "|im_start|>assistant\n{% endif %}"
;

static const char default_system[] = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";

/* ---------------------------------------------------------------- loading */

ergo_status chat_template_check(const char *text, size_t len, const char *what, ergo_error *err) {
    if (len == sizeof qwen2_vl_template - 1 && memcmp(text, qwen2_vl_template, len) == 0)
        return ERGO_OK;
    return ergo_fail(err, ERGO_E_UNSUPPORTED,
                     "%s: the chat template is not the Qwen2-VL template ergo implements", what);
}

ergo_status chat_template_load(chat_template *ct, const char *dir, ergo_error *err) {
    memset(ct, 0, sizeof *ct);
    char path[4096];
    ergo_status st;
    /* transformers prefers chat_template.jinja when both exist. */
    if ((st = path_join(path, sizeof path, dir, "chat_template.jinja", err))) return st;
    if (file_exists(path)) {
        char *buf;
        size_t n;
        if ((st = file_read_all(path, 1 << 20, &buf, &n, err))) return st;
        st = chat_template_check(buf, n, path, err);
        free(buf);
        return st;
    }
    if ((st = path_join(path, sizeof path, dir, "chat_template.json", err))) return st;
    if (!file_exists(path))
        return ergo_fail(err, ERGO_E_IO, "%s: no chat_template.jinja or chat_template.json", dir);
    json_t *root = json_load_path(path, err);
    if (!root) return err ? err->code : ERGO_E_FORMAT;
    const char *text;
    st = json_get_string(root, "chat_template", &text, path, err);
    if (st == ERGO_OK)
        st = chat_template_check(text, json_string_length(json_object_get(root, "chat_template")),
                                 path, err);
    json_decref(root);
    return st;
}

/* ---------------------------------------------------------------- rendering */

#define PUT(s, n)                                                    \
    do {                                                             \
        if ((st = tok_text_append(out, (s), (n), err))) return st;   \
    } while (0)
#define PUTS(lit) PUT(lit, sizeof(lit) - 1)

/* Records in cuts[] the offsets where the message's own text (role line and content,
 * never a template token) starts and ends: the runs [cuts[0],cuts[1]), [cuts[2],cuts[3])...
 * Each run sits between two added tokens, so encoding it apart equals encoding the whole. */
#define CUT()                                               \
    do {                                                    \
        if (cuts) cuts[(*n_cuts)++] = out->n;               \
    } while (0)

static ergo_status render_message(const chat_template *ct, chat_state *cs, const chat_message *m,
                                  int expand_images, tok_text *out, size_t *cuts, size_t *n_cuts,
                                  ergo_error *err) {
    ergo_status st;
    if (!m->role) return ergo_fail(err, ERGO_E_ARG, "chat message %zu has no role", cs->n_messages);
    size_t role_len = strlen(m->role);
    if (m->content && m->parts)
        return ergo_fail(err, ERGO_E_ARG, "chat message %zu has both string and list content",
                         cs->n_messages);
    /* Checked here so that a bad message fails cleanly, not in the tokenizer. */
    if (utf8_first_invalid((const uint8_t *)m->role, role_len) != role_len)
        return ergo_fail(err, ERGO_E_ARG, "chat message %zu: role is not valid UTF-8",
                         cs->n_messages);
    if (cs->n_messages == 0 && strcmp(m->role, "system") != 0) PUTS(default_system);
    PUTS("<|im_start|>");
    CUT();
    PUT(m->role, role_len);
    PUTS("\n");
    if (!m->parts) {
        if (m->content) PUT(m->content, m->content_len);
    } else {
        for (size_t i = 0; i < m->n_parts; i++) {
            const chat_part *p = &m->parts[i];
            if (p->type == CHAT_TEXT) {
                if (p->text_len && !p->text)
                    return ergo_fail(err, ERGO_E_ARG, "chat message %zu part %zu has no text",
                                     cs->n_messages, i);
                if (p->text) PUT(p->text, p->text_len);
            } else if (p->type == CHAT_IMAGE) {
                if (p->image_tokens < 1)
                    return ergo_fail(err, ERGO_E_ARG,
                                     "chat message %zu part %zu: an image needs at least one "
                                     "vision token (got %d)",
                                     cs->n_messages, i, p->image_tokens);
                cs->n_images++;
                if (ct->add_vision_id) {
                    char buf[48];
                    int k = snprintf(buf, sizeof buf, "Picture %d: ", cs->n_images);
                    PUT(buf, (size_t)k);
                }
                CUT();
                PUTS("<|vision_start|>");
                for (int32_t k = 0; k < (expand_images ? p->image_tokens : 1); k++)
                    PUTS("<|image_pad|>");
                PUTS("<|vision_end|>");
                CUT();
            } else {
                return ergo_fail(err, ERGO_E_ARG, "chat message %zu part %zu: unknown part type %d",
                                 cs->n_messages, i, (int)p->type);
            }
        }
    }
    CUT();
    PUTS("<|im_end|>\n");
    cs->n_messages++;
    return ERGO_OK;
}

ergo_status chat_render_message(const chat_template *ct, chat_state *cs, const chat_message *m,
                                 int expand_images, tok_text *out, ergo_error *err) {
    return render_message(ct, cs, m, expand_images, out, NULL, NULL, err);
}

ergo_status chat_render_generation_prompt(tok_text *out, ergo_error *err) {
    ergo_status st;
    PUTS("<|im_start|>assistant\n");
    return ERGO_OK;
}

ergo_status chat_render(const chat_template *ct, const chat_message *msgs, size_t n,
                        int add_generation_prompt, int expand_images, tok_text *out,
                        ergo_error *err) {
    chat_state cs = {0};
    ergo_status st = tok_text_append(out, "", 0, err);
    for (size_t i = 0; i < n && st == ERGO_OK; i++)
        st = chat_render_message(ct, &cs, &msgs[i], expand_images, out, err);
    if (st == ERGO_OK && add_generation_prompt) st = chat_render_generation_prompt(out, err);
    return st;
}

/* ---------------------------------------------------------------- encoding */

/* Every rendering starts with <|im_start|>, an added token, so the tokenizer
 * cuts there whatever came before: encoding piece by piece equals encoding the
 * concatenation (tests/test_chat_template.c checks it on the fixtures). */
static ergo_status encode_message(const chat_template *ct, const tokenizer *tok, chat_state *cs,
                                  const chat_message *m, tok_ids *ids, ergo_error *err) {
    tok_text text = {0};
    const int literal = ct->literal_user_text && m->role && !strcmp(m->role, "user");
    size_t n_cuts = 0, *cuts = NULL;
    if (literal && !(cuts = malloc(sizeof *cuts * (4 + 2 * (m->parts ? m->n_parts : 0)))))
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    ergo_status st = render_message(ct, cs, m, 1, &text, cuts, &n_cuts, err);
    /* template tokens with the tokenizer's setting, the user's runs with specials split */
    size_t at = 0;
    for (size_t k = 0; k <= n_cuts && st == ERGO_OK; k++) {
        const size_t end = k < n_cuts ? cuts[k] : text.n;
        if (end > at)
            st = (k & 1) ? tokenizer_encode_split(tok, text.s + at, end - at, 1, ids, err)
                         : tokenizer_encode(tok, text.s + at, end - at, ids, err);
        at = end;
    }
    free(cuts);
    tok_text_free(&text);
    return st;
}

ergo_status chat_encode_message(const chat_template *ct, const tokenizer *tok, chat_state *cs,
                                const chat_message *m, tok_ids *ids, ergo_error *err) {
    size_t index = cs->n_messages;
    ergo_status st = encode_message(ct, tok, cs, m, ids, err);
    if (st != ERGO_OK) ergo_error_prefix(err, "chat message %zu: ", index);
    return st;
}

ergo_status chat_encode_generation_prompt(const tokenizer *tok, tok_ids *ids, ergo_error *err) {
    static const char prompt[] = "<|im_start|>assistant\n";
    return tokenizer_encode(tok, prompt, sizeof prompt - 1, ids, err);
}

/* The whole conversation is rendered and tokenized at once, as the reference does. */
ergo_status chat_encode(const chat_template *ct, const tokenizer *tok, const chat_message *msgs,
                        size_t n, int add_generation_prompt, tok_ids *ids, ergo_error *err) {
    if (ct->literal_user_text) { /* message by message (equal: see chat_encode_message) */
        chat_state cs = {0};
        ergo_status st = ERGO_OK;
        for (size_t i = 0; i < n && st == ERGO_OK; i++)
            st = chat_encode_message(ct, tok, &cs, &msgs[i], ids, err);
        if (st == ERGO_OK && add_generation_prompt) st = chat_encode_generation_prompt(tok, ids, err);
        return st;
    }
    tok_text text = {0};
    ergo_status st = chat_render(ct, msgs, n, add_generation_prompt, 1, &text, err);
    if (st == ERGO_OK) st = tokenizer_encode(tok, text.s, text.n, ids, err);
    tok_text_free(&text);
    return st;
}
