/*
 * vision.h - the Qwen2.5-VL vision encoder: pixel_values of one image -> one
 * embedding per merged 2x2 patch group, in the order of its <|image_pad|> tokens.
 *
 * Mirrors Qwen2_5_VisionTransformerPretrainedModel.forward (transformers 4.56.2,
 * modeling_qwen2_5_vl.py). The model (config + weights) is read-only and may be
 * shared; every buffer of a forward lives in a vision_state, allocated once for a
 * maximum number of patches (no allocation inside vision_encode). One state serves
 * one caller at a time; the work inside a call is spread over OpenMP threads.
 *
 *   vision_state vs;
 *   if (vision_state_init(&vs, &m.config.vision, 5120, &err) != ERGO_OK) ...
 *   // pix (gt*gh*gw, 1176) from preprocess_image; out (gt*gh*gw/4, out_hidden)
 *   if (vision_encode(&m, &vs, pix, gt, gh, gw, out, &err) != ERGO_OK) ...
 *   vision_state_free(&vs);
 */
#ifndef ERGO_VISION_H
#define ERGO_VISION_H

#include <stdint.h>

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"

/* Query rows per attention work item (a whole 64-patch window is one item; the
 * keys stream in tiles of ATTN_KTILE, kernels/attention.h). */
#define VISION_ATTN_QROWS 64
/* Extra floats per K^T row: rows 64 B further apart than N floats, so the rows of a
 * tile do not all map to the same L1 sets when N is a multiple of 256 (5120). */
#define VISION_KT_PAD 16
/* MLP rows per chunk: bounds the (rows, ffn) gate/up buffers whatever the image. */
#define VISION_MLP_ROWS 1024

/* Called, when set, with named intermediates as they are produced (names follow the
 * reference's modules, so a diff against PyTorch forward hooks lines up):
 *   "patch_embed"  (N, D)        processor order (before the window permutation)
 *   "blocks.%d"    (N, D)        window order, after block l
 *   "merger"       (N/4, out)    window order (before the inverse permutation) */
typedef void (*vision_trace_fn)(void *ctx, const char *name, const float *data, int rows,
                                int cols);

/* A vision_trace_fn that writes each intermediate as raw float32 to
 * <dir>/vision.<name>.f32 (ctx = the directory), e.g. for ERGO_TRACE=dir:
 *   st.trace = vision_trace_dump; st.trace_ctx = getenv("ERGO_TRACE"); */
void vision_trace_dump(void *dir, const char *name, const float *data, int rows, int cols);

/* N = patches of one image (all frames), U = merge^2 patches per unit (4),
 * D = hidden (1280), Dh = head dim (80), F = ffn (3420), Do = out_hidden (3584). */
typedef struct vision_state {
    vision_config cfg;       /* the config the buffers were sized for */
    int max_patches;         /* N limit: grid_t * grid_h * grid_w of one image */
    int n_threads;           /* OpenMP threads the attention scratch is sized for */
    /* bookkeeping of the current image (positions.h) */
    int32_t *row, *col;      /* (N) patch (row, col), processor order */
    int32_t *window_order;   /* (N/U) raster unit at window position i */
    int32_t *raster_order;   /* (N/U) window position of raster unit j */
    int32_t *window_len;     /* (N/U) units per window, non-empty windows only */
    int32_t *segment_len;    /* (N/U) patches per full-attention span (one per frame) */
    int32_t *work_window;    /* (n_work, 3) attention items: span start, span len, query start */
    int32_t *work_full;      /* (n_work, 3) the same for full-attention blocks */
    int max_work;            /* rows of each work list */
    float *inv_freq;         /* (Dh/4) rotary inverse frequencies */
    float *angles;           /* (N, Dh/2) rotary angles, processor order */
    float *cos, *sin;        /* (N, Dh/2) of the angles, window order */
    /* activations (window order unless noted) */
    float *x;                /* (N, D) residual stream */
    float *xn;               /* (N, D) normed input of a sub-layer / projection output */
    float *qkv;              /* (N, 3D) attn.qkv: q | k | v, heads of Dh inside each */
    float *kt;               /* (H, Dh, N + VISION_KT_PAD) k transposed per head (K^T tiles) */
    float *vh;               /* (H, N, Dh) v per head, rows contiguous (the P V tiles) */
    float *attn;             /* (N, D) attention output, heads concatenated; MLP output;
                                merger hidden (N/U, U*D) */
    float *gate, *up;        /* (VISION_MLP_ROWS, F) mlp.gate_proj / up_proj of a chunk */
    float *merged;           /* (N/U, Do) merger output, window order */
    float *scratch;          /* (n_threads, scratch_floats) attention tiles, sums, output */
    int scratch_floats;
    double *layer_ms;        /* (depth + 2) time of the last call: [0] patch embed and
                                bookkeeping, [1 + l] block l, [depth + 1] merger */
    vision_trace_fn trace;   /* optional, NULL = no tracing */
    void *trace_ctx;
} vision_state;

/* Allocates every buffer for images of up to max_patches patches (grid_t*grid_h*grid_w)
 * and the OpenMP threads available now. cfg is copied. vision_state_free releases it. */
ergo_status vision_state_init(vision_state *st, const vision_config *cfg, int max_patches,
                              ergo_error *err);
void vision_state_free(vision_state *st);

/* Checks a grid against the config and the state's limit: positive sides, grid_h and
 * grid_w multiples of the merge size, at most max_patches patches. */
ergo_status vision_check_grid(const vision_state *st, int grid_t, int grid_h, int grid_w,
                              ergo_error *err);

/* Encodes ONE image: pixel_values (grid_t*grid_h*grid_w, C*Tp*P*P) in the processor's
 * order -> out (grid_t*grid_h*grid_w/U, out_hidden) in raster merge-group order (the
 * order of the <|image_pad|> tokens). Each frame attends only to itself in the
 * full-attention blocks. */
ergo_status vision_encode(const model *m, vision_state *st, const float *pixel_values, int grid_t,
                          int grid_h, int grid_w, float *out, ergo_error *err);

/* The reference's batched call model.visual(pixel_values, grid_thw): n_images images
 * whose pixel rows are concatenated, grid_thw (n_images, 3). Every image attends only
 * to itself, so this is vision_encode per image, outputs concatenated in order. */
ergo_status vision_encode_batch(const model *m, vision_state *st, const float *pixel_values,
                                const int32_t *grid_thw, int n_images, float *out,
                                ergo_error *err);

#endif
