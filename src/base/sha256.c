#include "sha256.h"

#include <nettle/sha2.h>

void sha256_hex(const void *data, size_t size, char hex[65]) {
    sha256_hex_parts(&data, &size, 1, hex);
}

void sha256_hex_parts(const void *const *data, const size_t *size, int n, char hex[65]) {
    struct sha256_ctx ctx;
    uint8_t digest[SHA256_DIGEST_SIZE];
    sha256_init(&ctx);
    for (int i = 0; i < n; i++) sha256_update(&ctx, size[i], data[i]);
    sha256_digest(&ctx, sizeof digest, digest);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = '\0';
}
