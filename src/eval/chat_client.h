/*
 * chat_client.h - one OpenAI chat-completions request with libcurl: the POST, its
 * retries with doubling backoff on transient failures, the timeouts, and the
 * assistant text of the answer; and an image as a base64 data URL. Shared by
 * `ergo eval --endpoint` (endpoint.c) and the GRPO judge (train/judge.c).
 *
 * Transient = a connection error or timeout (any CURLcode other than OK) or HTTP
 * 408, 409, 429 or 5xx; anything else (400, 404, a 200 without
 * choices[0].message.content) fails at once. Call curl_global_init before any thread
 * uses this.
 *
 *   chat_client_options o; chat_client_options_default(&o);
 *   CURL *h = curl_easy_init();
 *   char *url = chat_client_image_url(&img, "image/png", &err);
 *   chat_client_reply r = {0};
 *   if (!chat_client_post(h, "http://127.0.0.1:8000/v1/chat/completions", &o, body, &r, &err))
 *       puts(r.content);
 *   chat_client_reply_free(&r); free(url); curl_easy_cleanup(h);
 */
#ifndef ERGO_EVAL_CHAT_CLIENT_H
#define ERGO_EVAL_CHAT_CLIENT_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdint.h>

#include "base/status.h"
#include "image/image.h"

typedef struct chat_client_options {
    const char *api_key;     /* sent as "Authorization: Bearer KEY"; NULL: "EMPTY" (as the reference) */
    int max_retries;         /* attempts after the first on a transient failure (4) */
    double retry_base_ms;    /* first backoff, doubling, capped at 8 s (500) */
    long timeout_ms;         /* the whole request, connection included (600000) */
    long connect_timeout_ms; /* (5000) */
} chat_client_options;

void chat_client_options_default(chat_client_options *o);

typedef struct chat_client_reply {
    char *content;            /* choices[0].message.content, malloc'd */
    int64_t prompt_tokens;    /* usage.prompt_tokens (0 when absent) */
    int64_t completion_tokens;
    int attempts;             /* requests sent, retries included */
    int transient;            /* on failure: the last attempt failed transiently (timeout,
                                 connection, 408/409/429/5xx), i.e. retries ran out */
} chat_client_reply;

void chat_client_reply_free(chat_client_reply *r);

/* POSTs body (JSON, not consumed) to url on handle h (reset here) until it succeeds,
 * fails for good, or o->max_retries retries are spent. On failure err names the
 * url, the HTTP status or curl's reason, and the attempt; r->attempts and
 * r->transient say what happened. r must be zeroed. */
ergo_status chat_client_post(CURL *h, const char *url, const chat_client_options *o, json_t *body,
                             chat_client_reply *r, ergo_error *err);

/* The image as a PNG in a "data:MIME;base64,..." URL (MIME is only the label: the
 * reference labels its PNGs "image/jpeg"). malloc'd; NULL with err on failure. */
char *chat_client_image_url(const image *im, const char *mime, ergo_error *err);

#endif
