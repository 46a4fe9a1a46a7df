/*
 * judge_cache.h - the judge's answers keyed by (crop, question): in memory, and
 * optionally in an append-only JSONL file (each line fsynced) that a resumed run
 * reads back, so a crop asked about before costs nothing.
 *
 * The key is "<crop>.<question>": the SHA-256 (hex) of the crop's width and height (two
 * little-endian uint32) followed by its RGB bytes, then the SHA-256 of the question's
 * bytes. One line per answer:
 *   {"judge": ID, "crop": HEX, "question_sha256": HEX, "question": TEXT, "answer": TEXT}
 * Only lines whose "judge" equals the cache's judge id are loaded (another judge's
 * answers are kept in the file but never used); a torn last line (a crash mid-write)
 * is cut off; a line that is not such a record elsewhere is an error naming its number.
 * A key present twice keeps its first answer; an answer that is not UTF-8 (decoded text
 * and JSON strings always are) is not kept.
 *
 *   judge_cache *jc;  judge_cache_open(&jc, "runs/a/judge_cache.jsonl", "endpoint:...", &err);
 *   char key[JUDGE_KEY_SIZE];  judge_cache_key(&crop, question, key);
 *   char *ans = NULL;  if (judge_cache_get(jc, key, &ans) == 1) ...; free(ans);
 *   judge_cache_put(jc, key, question, "B", &err);
 *   judge_cache_close(jc);
 */
#ifndef ERGO_TRAIN_JUDGE_CACHE_H
#define ERGO_TRAIN_JUDGE_CACHE_H

#include <stdint.h>

#include "base/status.h"
#include "image/image.h"

#define JUDGE_KEY_SIZE 130 /* 64 + '.' + 64 + NUL */

typedef struct judge_cache judge_cache;

/* path NULL: memory only. judge_id names the judge whose answers count (copied). All
 * calls are thread-safe. */
ergo_status judge_cache_open(judge_cache **out, const char *path, const char *judge_id, ergo_error *err);
void judge_cache_close(judge_cache *jc);

void judge_cache_key(const image *crop, const char *question, char key[JUDGE_KEY_SIZE]);

/* 1 and *answer (malloc'd) on a hit, 0 on a miss, -1 when out of memory. */
int judge_cache_get(judge_cache *jc, const char *key, char **answer);

/* Stores an answer (memory, then one fsynced line when the cache has a file). */
ergo_status judge_cache_put(judge_cache *jc, const char *key, const char *question, const char *answer,
                            ergo_error *err);

/* Answers loaded from the file at open; lines of other judges skipped. */
int64_t judge_cache_loaded(const judge_cache *jc);
int64_t judge_cache_foreign(const judge_cache *jc);
/* Answers held. */
int64_t judge_cache_size(judge_cache *jc);

#endif
