/*
 * sha256.h - SHA-256 digests (a thin layer over nettle), for fixtures that pin
 * large outputs by hash and for checking downloaded files.
 *
 *   char hex[65];
 *   sha256_hex(data, size, hex);
 */
#ifndef ERGO_SHA256_H
#define ERGO_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Writes the digest of size bytes as 64 lowercase hex digits and a NUL. */
void sha256_hex(const void *data, size_t size, char hex[65]);

#endif
