/*
 * chat_template.h - the Qwen2-VL / Qwen2.5-VL conversation format, as
 * processor.apply_chat_template renders it and the processor then tokenizes it
 * (each image's single <|image_pad|> expanded to its N merged vision tokens).
 *
 * Rendering works message by message with a running chat_state, so a session
 * can append one new turn to a live KV cache: rendering (or encoding) the
 * messages one at a time and then the generation prompt gives exactly the text
 * (and ids) of rendering the whole conversation at once.
 *
 *   chat_template ct;  chat_template_load(&ct, dir, &err);
 *   chat_part parts[] = {{CHAT_IMAGE, NULL, 0, 300}, {CHAT_TEXT, q, strlen(q), 0}};
 *   chat_message msgs[] = {{"system", sys, strlen(sys), NULL, 0}, {"user", NULL, 0, parts, 2}};
 *   tok_ids ids = {0};
 *   chat_encode(&ct, tok, msgs, 2, 1, &ids, &err);  // ... <|im_start|>assistant\n
 */
#ifndef ERGO_CHAT_TEMPLATE_H
#define ERGO_CHAT_TEMPLATE_H

#include "base/status.h"
#include "tokenizer/tokenizer.h"

typedef enum chat_part_type {
    CHAT_TEXT,
    CHAT_IMAGE,
} chat_part_type;

typedef struct chat_part {
    chat_part_type type;
    const char *text;     /* CHAT_TEXT: UTF-8 */
    size_t text_len;      /* bytes */
    int32_t image_tokens; /* CHAT_IMAGE: merged vision tokens N = t*h*w/4, e.g. 1280 */
} chat_part;

typedef struct chat_message {
    const char *role;       /* "system", "user", "assistant" (rendered as given) */
    const char *content;    /* string content; NULL when the content is a list of parts */
    size_t content_len;     /* bytes */
    const chat_part *parts; /* list content: images and text in any order */
    size_t n_parts;
} chat_message;

typedef struct chat_template {
    int add_vision_id; /* "Picture k: " before each image; off unless the caller asks */
    /* chat_encode*: a user message's text is encoded with special tokens split (a
     * "<|im_start|>" typed by the user stays text); the template's own stay special.
     * Off by default (the reference tokenizes the rendered string as a whole). */
    int literal_user_text;
} chat_template;

/* Where a conversation stands, for rendering it one message at a time. */
typedef struct chat_state {
    size_t n_messages; /* messages rendered so far (the first one decides the default system) */
    int32_t n_images;  /* images so far (numbering for add_vision_id) */
} chat_state;

/* Reads the processor's chat template from dir (chat_template.jinja, else
 * chat_template.json) and checks that it is the Qwen2-VL template ergo implements. */
ergo_status chat_template_load(chat_template *ct, const char *dir, ergo_error *err);
/* Checks a template's text; `what` names its source in the message. */
ergo_status chat_template_check(const char *text, size_t len, const char *what, ergo_error *err);

/* Appends one message. With expand_images each image gets its N <|image_pad|>
 * (what the model sees); without, one (apply_chat_template(tokenize=False)). */
ergo_status chat_render_message(const chat_template *ct, chat_state *st, const chat_message *m,
                                 int expand_images, tok_text *out, ergo_error *err);
/* Appends "<|im_start|>assistant\n". */
ergo_status chat_render_generation_prompt(tok_text *out, ergo_error *err);
/* A whole conversation from a fresh state. */
ergo_status chat_render(const chat_template *ct, const chat_message *msgs, size_t n,
                        int add_generation_prompt, int expand_images, tok_text *out,
                        ergo_error *err);

/* The same, tokenized (always with expanded images); ids are appended. */
ergo_status chat_encode_message(const chat_template *ct, const tokenizer *tok, chat_state *st,
                                const chat_message *m, tok_ids *ids, ergo_error *err);
ergo_status chat_encode_generation_prompt(const tokenizer *tok, tok_ids *ids, ergo_error *err);
ergo_status chat_encode(const chat_template *ct, const tokenizer *tok, const chat_message *msgs,
                        size_t n, int add_generation_prompt, tok_ids *ids, ergo_error *err);

#endif
