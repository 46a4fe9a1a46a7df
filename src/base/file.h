/*
 * file.h - reading files: whole-file reads and read-only memory maps.
 *
 * A mapped_file owns its mapping; file_unmap releases it. Weights that are used
 * as stored point straight into such a mapping (no copy). Empty files map to
 * data == NULL, size == 0 (mmap refuses length 0).
 *
 *   mapped_file mf;
 *   if (file_map(&mf, "model.safetensors", &err) != ERGO_OK) ...
 *   file_unmap(&mf);
 */
#ifndef ERGO_FILE_H
#define ERGO_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct mapped_file {
    const uint8_t *data; /* read-only bytes, NULL when size == 0 */
    size_t size;         /* bytes */
} mapped_file;

ergo_status file_map(mapped_file *mf, const char *path, ergo_error *err);
void file_unmap(mapped_file *mf);

/* Reads a whole file into a malloc'd buffer with a NUL after the last byte;
 * the caller frees *out. Files larger than max_bytes are refused (ERGO_E_LIMIT). */
ergo_status file_read_all(const char *path, size_t max_bytes, char **out, size_t *size,
                          ergo_error *err);

/* Writes size bytes to path (created or truncated). */
ergo_status file_write_all(const char *path, const void *data, size_t size, ergo_error *err);

/* fsync(2) of a file or a directory (open read-only, fsync, close): makes a written
 * file's bytes, or a directory's entries (a create, a rename), durable. */
ergo_status path_fsync(const char *path, ergo_error *err);

int file_exists(const char *path);
int dir_exists(const char *path);

/* Joins dir and name into out (of out_size bytes); fails when it does not fit. */
ergo_status path_join(char *out, size_t out_size, const char *dir, const char *name,
                      ergo_error *err);

#endif
