/*
 * image_fuzz.h - the entry point the image libFuzzer target (fuzz/fuzz_image.c) and the
 * corpus replay test (tests/test_image.c) share.
 */
#ifndef ERGO_IMAGE_FUZZ_H
#define ERGO_IMAGE_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* Decodes data as a JPEG or PNG with a small pixel limit (so a lying header cannot
 * make it allocate gigabytes) and, when that works, crops and resizes the result a
 * little with every filter. Returns 1 when the bytes decoded, 0 when they were
 * refused; any crash, leak or sanitizer report is the bug being looked for. */
int image_fuzz_one(const uint8_t *data, size_t size);

#endif
