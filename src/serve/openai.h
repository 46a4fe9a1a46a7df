/*
 * openai.h - the OpenAI Chat Completions surface of `ergo serve`: a request body
 * (JSON) checked into an oai_request (messages, content parts with their image
 * bytes, sampling fields, stop strings, stream options), and the error envelope
 * {"error": {"message", "type", "param", "code"}} with its HTTP status.
 *
 * Parsing never echoes the request into a message (vLLM #49239): messages name
 * the field (its path, e.g. messages[2].content[0].image_url.url), never its value.
 *
 *   oai_limits lim = {.max_images = 8, .local_media = "/data"};
 *   oai_request r;  oai_error e;
 *   if (oai_parse_chat(body, len, &lim, &r, &e)) { char *j = oai_error_json(&e); ... e.status }
 *   ... oai_request_free(&r);
 */
#ifndef ERGO_SERVE_OPENAI_H
#define ERGO_SERVE_OPENAI_H

#include <stddef.h>
#include <stdint.h>

/* An error answer: the HTTP status and the envelope's fields. */
typedef struct oai_error {
    int status;         /* 400, 401, 404, 413, 429, 500, 503, ... */
    const char *type;   /* "invalid_request_error", "authentication_error", ... */
    const char *code;   /* NULL (null) or e.g. "context_length_exceeded" */
    char param[96];     /* "" (null) or the field, e.g. "messages[0].role" */
    char message[320];
} oai_error;

/* Fills e (status, type, param or NULL, code or NULL, printf message); returns 1. */
int oai_fail(oai_error *e, int status, const char *type, const char *param, const char *code,
             const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* {"error":{...}} as a malloc'd string (NULL when out of memory). */
char *oai_error_json(const oai_error *e);

typedef struct oai_part {
    int is_image;
    char *text;          /* text part: UTF-8 (owned) */
    size_t text_len;
    uint8_t *image;      /* image part: the encoded file's bytes (owned; PNG or JPEG by magic) */
    size_t image_len;
} oai_part;

typedef struct oai_message {
    char role[16];       /* "system", "user", "assistant" */
    char *content;       /* string content (owned), NULL when parts are given */
    size_t content_len;
    oai_part *parts;     /* (n_parts) list content */
    int n_parts;
} oai_message;

#define OAI_MAX_STOPS 8

typedef struct oai_request {
    char model[128];
    oai_message *msgs;   /* (n_msgs) */
    int n_msgs;
    int n_images;
    long long max_tokens;               /* -1: unset (up to the context) */
    int has_temperature, has_top_p, has_top_k, has_min_p, has_seed, has_penalty;
    double temperature, top_p, min_p, repetition_penalty;
    long long top_k, seed;
    char *stops[OAI_MAX_STOPS];         /* owned, non-empty */
    int n_stops;
    int stream, include_usage;
    long long min_pixels, max_pixels;   /* mm_processor_kwargs; 0 = the server's */
} oai_request;

typedef struct oai_limits {
    int max_images;           /* images per request; 0 = 16 */
    size_t max_image_bytes;   /* decoded data: URL payload; 0 = 256 MiB */
    const char *local_media;  /* NULL: file:// refused; else the directory file:// may read */
    int allow_remote;         /* http(s) image URLs: always refused (not implemented), the
                                 message says which of the two reasons applies */
} oai_limits;

/* Parses and checks a /v1/chat/completions body. Returns 0 with *r filled (free it
 * with oai_request_free), or 1 with e filled (r freed and zeroed). */
int oai_parse_chat(const char *body, size_t len, const oai_limits *lim, oai_request *r,
                   oai_error *e);
void oai_request_free(oai_request *r);

/* Decodes standard base64 (padding optional, no whitespace) into a malloc'd buffer;
 * 0 on success. */
int oai_base64_decode(const char *s, size_t n, size_t max_out, uint8_t **out, size_t *out_len);

/* The fuzz entry point (fuzz/fuzz_openai.c, and the corpus replay of the tests):
 * returns 1 when the body parsed. */
int oai_fuzz_one(const uint8_t *data, size_t size);

#endif
