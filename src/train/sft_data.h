/*
 * sft_data.h - supervised fine-tuning data: one JSONL line (a conversation in the
 * OpenAI messages format) to a training example (token ids, next-token targets,
 * M-RoPE position ids, the images' pixel values), and a reader for a JSONL file
 * (line index, a seeded per-epoch order that a run can resume at any position, a
 * seeded held-out split).
 *
 * A line:
 *   {"messages": [{"role": "system" | "user" | "assistant",
 *                  "content": "text" | [part, ...]}, ...]}
 * with parts {"type": "text", "text": "..."}, {"type": "image", "image": SRC} or
 * OpenAI's {"type": "image_url", "image_url": {"url": SRC}} (or "image_url": SRC);
 * SRC is a data URL (data:<mime>;base64,<payload>, decoded by the server's base64
 * decoder), a file:// URL, an absolute path or a path relative to the directory of
 * the data file (never to the working directory). TRL's layout is accepted too: a
 * line-level "images": [SRC, ...] and bare {"type": "image"} parts that take its
 * entries in order (the counts must match). Images are allowed in system and user
 * messages. Other keys of the line and of the messages are ignored.
 *
 * The token sequence is exactly what chat_encode renders for the conversation
 * (the template's default system message when the first one is not "system"; no
 * generation prompt), encoded message by message so that we know which ids each
 * message produced; each image's <|image_pad|> is expanded to its merged vision
 * tokens (preprocess_image under the checkpoint's preprocessor_config.json).
 *
 * Which tokens carry loss (TRL's assistant_only_loss for the Qwen2 template, i.e.
 * transformers' return_assistant_tokens_mask with the generation span
 * "<|im_start|>assistant\n{% generation %}{{content}}<|im_end|>{% endgeneration %}\n"):
 * a token is predicted when any of its characters lies in an assistant message's
 * content or in the <|im_end|> that closes it. Never the "<|im_start|>assistant\n"
 * header, the system prompt, user turns, image pads, or the "\n" after <|im_end|>.
 * (When the content starts with a newline the tokenizer may merge the header's "\n"
 * with it; that token holds content characters and is predicted, as in TRL.)
 * targets[i] = ids[i + 1] when token i + 1 is predicted, else -1; targets[n-1] = -1.
 * So the header's last token predicts the first content token, and the last content
 * token predicts <|im_end|>.
 *
 *   sft_config cfg = {&ct, tok, &pp, mrope_ids_from_config(&m.config), 4096};
 *   sft_dataset ds;  sft_dataset_open(&ds, "data/train.jsonl", 16, seed, &err);
 *   sft_cursor cur;  sft_cursor_init(&cur, &ds, seed, resume_position, &err);
 *   sft_example ex = {0};
 *   int64_t rec = sft_cursor_next(&cur, &ds);
 *   if (sft_dataset_read(&ds, &cfg, rec, &ex, &err) != ERGO_OK) // "train.jsonl:7: ..."
 *   sft_example_free(&ex); sft_cursor_free(&cur); sft_dataset_close(&ds);
 */
#ifndef ERGO_SFT_DATA_H
#define ERGO_SFT_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "base/file.h"
#include "base/status.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "model/mrope.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

/* A hard ceiling on a conversation's tokens whatever max_tokens says (int indexing). */
#define SFT_MAX_TOKENS_CEILING (1 << 24)

/* What parsing a line needs; borrowed, not owned. */
typedef struct sft_config {
    const chat_template *ct;      /* Qwen2-VL template settings */
    const tokenizer *tok;
    const preprocess_config *pp;  /* the checkpoint's preprocessor; NULL: images refused */
    mrope_ids mrope;              /* image/vision-start ids and merge size (config.json) */
    int max_tokens;               /* longer conversations are refused; 0: no limit
                                     (SFT_MAX_TOKENS_CEILING still applies) */
    int max_images;               /* per conversation; 0: 64 */
    size_t max_image_bytes;       /* per encoded image (file or data URL); 0: 64 MiB */
    image_limits image_limits;    /* decoder limits (pixel count, JPEG scans) */
} sft_config;

/* One image of an example, in the order of its pads in ids. */
typedef struct sft_image {
    float *pixel_values; /* (n_patches, patch_dim), owned; preprocess.h's layout */
    int64_t n_patches;   /* grid.t * grid.h * grid.w */
    int patch_dim;       /* C * temporal_patch * patch^2 = 1176 */
    mrope_grid grid;     /* image_grid_thw in patches, e.g. (1, 4, 6) */
} sft_image;

/* One training conversation; every array is owned (sft_example_free). */
typedef struct sft_example {
    int32_t *ids;      /* (n) token ids */
    int32_t *targets;  /* (n) the id position i must predict, or -1 (see the rule above) */
    int32_t *pos;      /* (3, n) M-RoPE ids: pos[a * n + i], axis a = t, h, w */
    int n;
    sft_image *images; /* (n_images) */
    int n_images;
    int n_loss_tokens; /* targets != -1 (>= 1) */
} sft_example;

void sft_example_free(sft_example *ex);

/* Parses one line (len bytes, no '\n' needed) into *out (which must be zeroed or
 * freed; on failure it is left empty). base_dir is the directory relative image paths
 * are resolved against; NULL refuses image paths and file:// URLs (only data URLs:
 * the fuzzer). `where` ("train.jsonl:12") starts every message, e.g.
 *   "train.jsonl:12: messages[1].role: unknown role \"bot\" (system, user or assistant)".
 * Refused: malformed JSON, not an object, no or empty "messages", a message that is
 * not an object, a missing or unknown role, content of the wrong type, a bad part,
 * an image in an assistant message, an image that is missing, cannot be decoded or
 * preprocessed, more images than max_images, more than max_tokens tokens, no
 * assistant message (no loss token). Any input returns; none crashes. */
ergo_status sft_parse_line(const sft_config *cfg, const char *line, size_t len,
                           const char *base_dir, const char *where, sft_example *out,
                           ergo_error *err);

/* ---------------------------------------------------------------- dataset */

/* A JSONL file mapped read-only with the offsets of its records. A record is a
 * line holding anything but white space (blank lines are skipped, not counted);
 * line numbers in messages are the file's own (1-based). A trailing '\r' is
 * dropped. The file is not parsed when opened: a malformed line fails when read.
 *
 * Held-out split: exactly n_heldout records chosen by the split seed (the first
 * n_heldout of a Fisher-Yates permutation of all records, see sft_cursor), listed
 * in file order; the training set is every other record, in file order. The split
 * depends only on (number of records, n_heldout, split_seed). */
typedef struct sft_dataset {
    char *path;          /* as given, owned */
    char *dir;           /* directory of path ("." when it has none): relative images */
    mapped_file map;
    int64_t n_records;
    int64_t *offset;     /* (n_records) byte offset of each record's first byte */
    int64_t *length;     /* (n_records) bytes, without '\n' (and a final '\r') */
    int64_t *line_no;    /* (n_records) 1-based line number */
    int64_t n_train;
    int64_t *train;      /* (n_train) record indices, ascending */
    int64_t n_heldout;
    int64_t *heldout;    /* (n_heldout) record indices, ascending */
} sft_dataset;

/* Opens and indexes path; n_heldout in [0, records - 1]. Fails on a missing or
 * empty file (no record). */
ergo_status sft_dataset_open(sft_dataset *ds, const char *path, int64_t n_heldout,
                             uint64_t split_seed, ergo_error *err);
void sft_dataset_close(sft_dataset *ds);

/* The held-out count for a fraction of the records: round(fraction * n) clamped to
 * [fraction > 0 ? 1 : 0, n - 1]. */
int64_t sft_heldout_count(int64_t n_records, double fraction);

/* Record r's bytes (not NUL-terminated) and line number. r must be < n_records. */
const char *sft_dataset_line(const sft_dataset *ds, int64_t r, size_t *len, int64_t *line_no);

/* Parses record r (sft_parse_line with where = "path:line", base_dir = ds->dir). */
ergo_status sft_dataset_read(const sft_dataset *ds, const sft_config *cfg, int64_t r,
                             sft_example *out, ergo_error *err);

/* The training records of one epoch in the order they are used: ds->train shuffled
 * by Fisher-Yates (for i = n-1 down to 1: swap(a[i], a[j]), j = u_k mod (i + 1),
 * u_k = rng_u64(epoch_seed, k) for k = 0, 1, ...; epoch_seed = rng_u64(
 * rng_stream_seed(seed, "sft.epoch"), epoch)). The modulo's bias is below n / 2^64.
 * Same (seed, epoch, dataset) -> same order. order has room for ds->n_train. */
void sft_dataset_epoch_order(const sft_dataset *ds, uint64_t seed, int64_t epoch,
                             int64_t *order);

/* Where a run is in the data: position = samples consumed since the start of the
 * run, over all epochs (epoch = position / n_train). A run saves `position` in its
 * checkpoint; sft_cursor_init at it yields exactly the records an uninterrupted run
 * would have read next. */
typedef struct sft_cursor {
    uint64_t seed;
    int64_t position; /* next sample's position */
    int64_t epoch;    /* the epoch `order` holds */
    int64_t *order;   /* (n_train) */
} sft_cursor;

ergo_status sft_cursor_init(sft_cursor *c, const sft_dataset *ds, uint64_t seed,
                            int64_t position, ergo_error *err);
/* The record index of the sample at c->position, then advances (recomputing the
 * order when an epoch ends). */
int64_t sft_cursor_next(sft_cursor *c, const sft_dataset *ds);
void sft_cursor_free(sft_cursor *c);

/* ---------------------------------------------------------------- fuzzing */

/* The fuzz entry point (fuzz/fuzz_sft_line.c, and the tests' corpus replay): parses
 * the bytes as a line with a small built-in byte-level tokenizer, the default
 * preprocessor at small limits and no image paths (data URLs only). Returns 1 when
 * the line parsed; checks the example's invariants (aborts only if one breaks). */
int sft_fuzz_line(const uint8_t *data, size_t size);

#endif
