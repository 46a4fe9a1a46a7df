/*
 * sha256.h - SHA-256 digests (a thin layer over nettle), for fixtures that pin
 * large outputs by hash and for checking downloaded files.
 *
 *   char hex[65];
 *   sha256_hex(data, size, hex);
 *   sha256_hex_parts((const void *[]){hdr, px}, (size_t[]){8, npx}, 2, hex);
 */
#ifndef ERGO_SHA256_H
#define ERGO_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Writes the digest of size bytes as 64 lowercase hex digits and a NUL. */
void sha256_hex(const void *data, size_t size, char hex[65]);

/* The digest of n pieces hashed one after the other (= sha256_hex of their
 * concatenation, without building it). */
void sha256_hex_parts(const void *const *data, const size_t *size, int n, char hex[65]);

#endif
