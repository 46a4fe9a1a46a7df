/*
 * chat_client.c - one chat-completions request with retries, and data URLs
 * (chat_client.h). Moved out of endpoint.c so the GRPO judge asks the same way.
 */
#include "eval/chat_client.h"

#include <gd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void chat_client_options_default(chat_client_options *o) {
    o->api_key = NULL;
    o->max_retries = 4;
    o->retry_base_ms = 500;
    o->timeout_ms = 600000;
    o->connect_timeout_ms = 5000;
}

void chat_client_reply_free(chat_client_reply *r) {
    free(r->content);
    memset(r, 0, sizeof *r);
}

char *chat_client_image_url(const image *im, const char *mime, ergo_error *err) {
    gdImagePtr g = gdImageCreateTrueColor(im->width, im->height);
    if (!g) { ergo_fail(err, ERGO_E_NOMEM, "out of memory (PNG)"); return NULL; }
    const uint8_t *p = im->rgb;
    for (int y = 0; y < im->height; y++)
        for (int x = 0; x < im->width; x++, p += 3) g->tpixels[y][x] = gdTrueColor(p[0], p[1], p[2]);
    int size = 0;
    unsigned char *png = gdImagePngPtr(g, &size);
    gdImageDestroy(g);
    if (!png) { ergo_fail(err, ERGO_E_NOMEM, "cannot encode a PNG"); return NULL; }
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char pre[96];
    int np = snprintf(pre, sizeof pre, "data:%s;base64,", mime);
    if (np < 0 || (size_t)np >= sizeof pre) {
        gdFree(png);
        ergo_fail(err, ERGO_E_ARG, "data URL: MIME type too long");
        return NULL;
    }
    size_t n = (size_t)size, out_n = (size_t)np + (n + 2) / 3 * 4;
    char *o = malloc(out_n + 1);
    if (!o) { gdFree(png); ergo_fail(err, ERGO_E_NOMEM, "out of memory (base64)"); return NULL; }
    memcpy(o, pre, (size_t)np);
    char *w = o + np;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)png[i] << 16 | (i + 1 < n ? (uint32_t)png[i + 1] << 8 : 0) |
                     (i + 2 < n ? png[i + 2] : 0);
        *w++ = tab[v >> 18 & 63];
        *w++ = tab[v >> 12 & 63];
        *w++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *w++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *w = 0;
    gdFree(png);
    return o;
}

typedef struct buf { char *p; size_t n; } buf;

static size_t on_body(char *d, size_t sz, size_t nm, void *u) {
    buf *b = u;
    size_t n = sz * nm;
    if (b->n + n > ((size_t)64 << 20)) return 0;
    char *q = realloc(b->p, b->n + n + 1);
    if (!q) return 0;
    memcpy(q + b->n, d, n);
    b->p = q, b->n += n, b->p[b->n] = 0;
    return n;
}

static void sleep_ms(double ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - 1000.0 * (double)(time_t)(ms / 1000)) * 1e6)};
    nanosleep(&ts, NULL);
}

ergo_status chat_client_post(CURL *h, const char *url, const chat_client_options *o, json_t *body,
                             chat_client_reply *r, ergo_error *err) {
    char *txt = json_dumps(body, JSON_COMPACT);
    if (!txt) return ergo_fail(err, ERGO_E_NOMEM, "out of memory (request)");
    char auth[512];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->api_key ? o->api_key : "EMPTY");
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    hd = curl_slist_append(hd, "Accept: application/json");
    hd = curl_slist_append(hd, auth);
    ergo_status s = ERGO_E_IO;
    double delay = o->retry_base_ms;
    for (int attempt = 0; attempt <= o->max_retries; attempt++) {
        buf b = {0};
        curl_easy_reset(h);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, txt);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(txt));
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, o->timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        CURLcode cc = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        r->attempts = attempt + 1;
        int retry = cc != CURLE_OK || code == 408 || code == 409 || code == 429 || code >= 500;
        r->transient = retry;
        if (cc == CURLE_OK && code == 200) {
            json_error_t je;
            json_t *j = json_loadb(b.p ? b.p : "", b.n, 0, &je);
            const char *ct = json_string_value(json_object_get(
                json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
            if (ct) {
                r->content = strdup(ct);
                json_t *u = json_object_get(j, "usage");
                r->prompt_tokens = json_integer_value(json_object_get(u, "prompt_tokens"));
                r->completion_tokens = json_integer_value(json_object_get(u, "completion_tokens"));
                s = r->content ? ERGO_OK : ergo_fail(err, ERGO_E_NOMEM, "out of memory");
            } else {
                s = ergo_fail(err, ERGO_E_FORMAT, "%s: the answer has no choices[0].message.content", url);
            }
            json_decref(j);
            free(b.p);
            break;
        }
        if (cc != CURLE_OK)
            s = ergo_fail(err, ERGO_E_IO, "%s: %s (attempt %d)", url, curl_easy_strerror(cc), attempt + 1);
        else
            s = ergo_fail(err, ERGO_E_IO, "%s: HTTP %ld (attempt %d): %.200s", url, code, attempt + 1,
                          b.p ? b.p : "");
        free(b.p);
        if (!retry) break;
        if (attempt < o->max_retries) sleep_ms(delay);
        delay = delay * 2 > 8000 ? 8000 : delay * 2;
    }
    curl_slist_free_all(hd);
    free(txt);
    return s;
}
