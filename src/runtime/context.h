/*
 * context.h - one worker's mutable scratch over a shared engine: the text state,
 * the vision state (grown to the largest image seen), the logits buffer; and the
 * three verbs every command is made of: encode an image, prefill a piece of a
 * session, generate on a session.
 *
 * A context serves one caller at a time; a thread (or request worker) owns one,
 * and any number of contexts may share one engine (read-only) at once. Sessions
 * (the KV cache and history of one conversation) belong to the caller and are
 * passed to each verb, so one context can serve several sessions one after the
 * other. The logits a verb produces come back in its result and stay valid until
 * the next verb on the same context (copy them to keep them).
 *
 *   context c;  context_init(&c, &e, &err);
 *   context_image im = {0};  context_encode_image(&c, &img, NULL, &im, &err);
 *   session s;  context_session_init(&c, &s, &err);
 *   context_piece p = {ids, n, &im.grid, 1, im.rows};
 *   context_prefill_out pf;  context_prefill(&c, &s, &p, &pf, &err);
 *   generate_result r = {0};
 *   context_generate(&c, &s, pf.logits, &params, on_text, NULL, &r, &err);
 *   generate_result_free(&r); session_free(&s); context_image_free(&im); context_free(&c);
 */
#ifndef ERGO_RUNTIME_CONTEXT_H
#define ERGO_RUNTIME_CONTEXT_H

#include <stdint.h>

#include "base/status.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "model/generate.h"
#include "model/mrope.h"
#include "model/session.h"
#include "model/text.h"
#include "model/vision.h"
#include "runtime/engine.h"

typedef struct context {
    const engine *e;     /* shared, read-only */
    text_state st;       /* chunks of e->prefill_chunk tokens; ms_layers / ms_head accumulate */
    vision_state vs;     /* valid when vs_patches > 0; layer_ms = the last encode's split */
    int vs_patches;      /* patches vs is sized for; 0 = not allocated */
    float *logits;       /* (V) the last verb's logits (prefill: the piece's last token) */
    kv_pool pool;        /* the KV blocks of this context's sessions (shareable by forks) */
} context;

/* Allocates the text state and the logits for e (the vision state waits for the
 * first image). With e->n_threads set, the calling thread's OpenMP thread count
 * is set to it (here and in every verb). context_free releases it. */
ergo_status context_init(context *c, const engine *e, ergo_error *err);
void context_free(context *c);

/* An empty session whose cache lives in c's pool (the engine's context limit);
 * session_free it before context_free. */
ergo_status context_session_init(context *c, session *s, ergo_error *err);

/* Grows the vision state to hold an image of n_patches patches (benchmarks size it
 * up front; the verbs grow it themselves). */
ergo_status context_reserve_vision(context *c, int n_patches, ergo_error *err);
/* Frees the vision state until the next image needs one (memory after a big image). */
void context_release_vision(context *c);

/* One image's vision rows and what the processor made of it. */
typedef struct context_image {
    mrope_grid grid;       /* image_grid_thw in patches, e.g. (1, 36, 54) */
    int width, height;     /* the image the encoder saw (after the processor) */
    int processor_resized; /* the processor resized the image it was given */
    int64_t n_patches;     /* grid.t * grid.h * grid.w */
    int64_t tokens;        /* merged vision tokens = rows = its <|image_pad|> count */
    float *rows;           /* (tokens, D) the encoder's output, owned (context_image_free) */
    double image_ms;       /* the processor (resize, normalise, patches) */
    double vision_ms;      /* vision_encode */
} context_image;

/* The processor with pc (NULL: the engine's), then the vision encoder. Refuses an
 * image whose patch grid exceeds pc's max_pixels / patch_size^2 patches (the
 * processor keeps a side of at least 28 px, so thin images can), ERGO_E_LIMIT,
 * naming the grid and the limit. out is overwritten; free it with
 * context_image_free (also after a failure). */
ergo_status context_encode_image(context *c, const image *img, const preprocess_config *pc,
                                 context_image *out, ergo_error *err);
void context_image_free(context_image *im);

/* A piece of a conversation: n token ids and the images among them (one grid per
 * <|vision_start|><|image_pad|>... run, their rows concatenated in order). */
typedef struct context_piece {
    const int32_t *ids;       /* (n) */
    int n;
    const mrope_grid *grids;  /* (n_images) */
    int n_images;
    const float *vision;      /* (sum of the images' tokens, D), NULL without images */
} context_piece;

typedef struct context_prefill_out {
    float *logits;            /* (V) logits of the piece's last token: c's buffer, valid
                                 until the next verb on c */
    int prompt_tokens;        /* tokens appended (p->n) */
    int context_tokens;       /* the session's length afterwards */
    double ms;                /* the forward over the piece */
} context_prefill_out;

/* Appends the piece to session s (created with context_session_init on c). A piece that does not fit in the session's context is refused with
 * ERGO_E_LIMIT before any work, saying how many tokens the images take; on any
 * failure the session is unchanged. */
ergo_status context_prefill(context *c, session *s, const context_piece *p,
                            context_prefill_out *out, ergo_error *err);

/* The decode loop (generate.h) on s, starting from `logits`, the logits of the
 * last piece appended to s (a prefill's out.logits; copied into c's buffer when
 * they are elsewhere). Chosen tokens that do not stop the run are appended to s.
 * on_text may be NULL; out must be zeroed (generate_result_free). Needs an engine
 * with a tokenizer. */
ergo_status context_generate(context *c, session *s, const float *logits,
                             const generate_params *p, generate_text_fn on_text, void *ctx,
                             generate_result *out, ergo_error *err);

#endif
