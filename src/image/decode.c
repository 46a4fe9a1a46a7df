/*
 * decode.c - JPEG (libjpeg-turbo) and PNG (libpng) to RGB, matching Pillow 11.3's
 * `Image.open(f).convert("RGB")`.
 *
 * JPEG mirrors Pillow's JpegDecode.c: libjpeg defaults (ISLOW DCT, fancy upsampling),
 * output colour space L / RGB / CMYK by component count, warnings ignored, and a
 * *suspending* source: running out of data before the last scanline is an error
 * ("image file is truncated", as Pillow raises without LOAD_TRUNCATED_IMAGES) rather
 * than libjpeg's usual grey fill; running out while looking for EOI afterwards is
 * accepted (Pillow ignores jpeg_finish_decompress's suspension). In practice the
 * Huffman decoder reads ahead, so even a missing EOI is an error in both; the
 * fixtures hold Pillow's verdict on every prefix of a few files.
 *
 * PNG mirrors PngImagePlugin + Pillow's unpackers: the CRCs of the chunks before the
 * first IDAT are checked (Pillow raises "broken PNG file"), IDAT CRCs are not (Pillow
 * never looks at them), the data is decoded as far as it goes (complete rows = an
 * image, whatever follows), and no transformation (gamma, tRNS, sBIT) is applied;
 * convert.c maps the raw samples to RGB.
 *
 * The pixel limit is checked from the header, before any pixel memory is allocated.
 * Errors from either library longjmp back here; every exit frees what was allocated.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h> /* jpeglib.h needs size_t and FILE declared first */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "base/file.h"
#include "image/convert.h"
#include "image/image.h"

static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static uint64_t limit_pixels(const image_limits *lim) {
    return lim && lim->max_pixels ? lim->max_pixels : IMAGE_DEFAULT_MAX_PIXELS;
}

/* Refuses sizes over the pixel limit (Pillow's DecompressionBombError) and sizes
 * whose buffers (up to 8 bytes per pixel for 16-bit RGBA) would overflow. */
static ergo_status check_size(uint64_t w, uint64_t h, const image_limits *lim, const char *what,
                              ergo_error *err) {
    if (w == 0 || h == 0)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: image size %llux%llu is empty", what,
                         (unsigned long long)w, (unsigned long long)h);
    if (w > INT32_MAX || h > INT32_MAX || w * h > SIZE_MAX / 8 || w * h / w != h)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: image size %llux%llu overflows memory sizes",
                         what, (unsigned long long)w, (unsigned long long)h);
    uint64_t max = limit_pixels(lim);
    if (w * h > max)
        return ergo_fail(err, ERGO_E_LIMIT,
                         "%s: image size %llux%llu (%llu pixels) exceeds the limit of %llu pixels",
                         what, (unsigned long long)w, (unsigned long long)h,
                         (unsigned long long)(w * h), (unsigned long long)max);
    return ERGO_OK;
}

/* ------------------------------------------------------------------------------ */
/* JPEG                                                                            */
/* ------------------------------------------------------------------------------ */

typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub;          /* must be first: libjpeg casts cinfo->err to us */
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
    int max_scans;                      /* 0 = unlimited */
    /* owned memory, freed on every exit (kept here, not in locals, because of longjmp) */
    uint8_t *row;                       /* (width * components) for grey and CMYK */
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

/* Warnings (corrupt data that libjpeg works around) are ignored, as Pillow does. */
static void jpeg_on_message(j_common_ptr cinfo) { (void)cinfo; }

static void jpeg_on_progress(j_common_ptr cinfo) {
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (c->max_scans > 0 && d->input_scan_number > c->max_scans) {
        snprintf(c->msg, sizeof c->msg, "more than %d progressive scans", c->max_scans);
        longjmp(c->jmp, 1);
    }
}

/* The suspending source: all bytes are in the buffer from the start, so a request for
 * more means the file ended early. libjpeg then returns "suspended" to its caller. */
static void jpeg_src_noop(j_decompress_ptr cinfo) { (void)cinfo; }
static boolean jpeg_src_fill(j_decompress_ptr cinfo) {
    (void)cinfo;
    return FALSE;
}
static void jpeg_src_skip(j_decompress_ptr cinfo, long n) {
    struct jpeg_source_mgr *src = cinfo->src;
    if (n <= 0) return;
    if ((size_t)n > src->bytes_in_buffer) n = (long)src->bytes_in_buffer;
    src->next_input_byte += n;
    src->bytes_in_buffer -= (size_t)n;
}

static ergo_status decode_jpeg(image *out, const uint8_t *data, size_t size, const char *what,
                               const image_limits *lim, ergo_error *err) {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_source_mgr src;
    jpeg_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.max_scans = lim ? lim->max_jpeg_scans : 0;
    out->rgb = NULL;
    out->width = out->height = 0;

    cinfo.err = jpeg_std_error(&ctx.pub);
    ctx.pub.error_exit = jpeg_on_error;
    ctx.pub.output_message = jpeg_on_message;
    if (setjmp(ctx.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        free(ctx.row);
        image_free(out);
        return ergo_fail(err, ERGO_E_FORMAT, "%s: broken JPEG data: %s", what, ctx.msg);
    }
    jpeg_create_decompress(&cinfo);
    memset(&src, 0, sizeof src);
    src.init_source = jpeg_src_noop;
    src.fill_input_buffer = jpeg_src_fill;
    src.skip_input_data = jpeg_src_skip;
    src.resync_to_restart = jpeg_resync_to_restart;
    src.term_source = jpeg_src_noop;
    src.next_input_byte = data;
    src.bytes_in_buffer = size;
    cinfo.src = &src;
    ctx.progress.progress_monitor = jpeg_on_progress;
    cinfo.progress = &ctx.progress;

    ergo_status st = ERGO_OK;
    const char *truncated = NULL;
    int r;
    /* Pillow reads past tables-only datastreams the same way. */
    do r = jpeg_read_header(&cinfo, FALSE);
    while (r == JPEG_HEADER_TABLES_ONLY);
    if (r == JPEG_SUSPENDED) {
        truncated = "in the header";
        goto done;
    }
    if (r != JPEG_HEADER_OK) {
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: no image in the JPEG data", what);
        goto done;
    }
    /* Pillow's SOF handler accepts only 8-bit samples and 1, 3 or 4 components. */
    if (cinfo.data_precision != 8) {
        st = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: cannot handle %d-bit JPEG samples", what,
                       cinfo.data_precision);
        goto done;
    }
    int nc = cinfo.num_components;
    if (nc == 1) cinfo.out_color_space = JCS_GRAYSCALE;
    else if (nc == 3) cinfo.out_color_space = JCS_RGB;
    else if (nc == 4) cinfo.out_color_space = JCS_CMYK;
    else {
        st = ergo_fail(err, ERGO_E_UNSUPPORTED, "%s: cannot handle %d-component JPEG images",
                       what, nc);
        goto done;
    }
    st = check_size(cinfo.image_width, cinfo.image_height, lim, what, err);
    if (st != ERGO_OK) goto done;
    /* The library defaults, which Pillow keeps unless draft() was called. */
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;

    if (!jpeg_start_decompress(&cinfo)) {
        truncated = "before the first scanline";
        goto done;
    }
    st = image_alloc(out, (int)cinfo.output_width, (int)cinfo.output_height, err);
    if (st != ERGO_OK) goto done;
    if (nc != 3) {
        ctx.row = malloc((size_t)out->width * (size_t)nc);
        if (!ctx.row) {
            st = ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
            goto done;
        }
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        size_t y = cinfo.output_scanline;
        uint8_t *dst = out->rgb + y * (size_t)out->width * 3;
        JSAMPROW rowp = nc == 3 ? dst : ctx.row;
        if (jpeg_read_scanlines(&cinfo, &rowp, 1) != 1) {
            truncated = "in the image data";
            goto done;
        }
        if (nc == 1) convert_grey_row(dst, ctx.row, out->width);
        else if (nc == 4) convert_cmyk_inverted_row(dst, ctx.row, out->width);
    }
    /* Suspension here (no EOI) is fine: every scanline is in; errors still longjmp. */
    (void)jpeg_finish_decompress(&cinfo);

done:
    if (truncated && st == ERGO_OK)
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: image file is truncated (JPEG data ends %s)",
                       what, truncated);
    jpeg_destroy_decompress(&cinfo);
    free(ctx.row);
    if (st != ERGO_OK) image_free(out);
    return st;
}

/* ------------------------------------------------------------------------------ */
/* PNG                                                                             */
/* ------------------------------------------------------------------------------ */

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t crc32_png(const uint8_t *p, size_t n) {
    static uint32_t table[256];
    static int ready;
    if (!ready) { /* benign race: every thread writes the same values */
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* Pillow checks the CRC of every chunk it reads before the image data (and raises
 * "broken PNG file"), but not those of IDAT chunks. libpng cannot make that split,
 * so we check here and tell libpng to ignore CRCs. */
static ergo_status png_check_chunks(const uint8_t *data, size_t size, const char *what,
                                    ergo_error *err) {
    size_t pos = 8;
    for (;;) {
        if (size - pos < 8)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: image file is truncated (PNG ends before the image data)", what);
        uint32_t len = be32(data + pos);
        const uint8_t *type = data + pos + 4;
        if (len > 0x7fffffffu)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: broken PNG file (chunk length %u)", what,
                             len);
        if (!memcmp(type, "IDAT", 4)) return ERGO_OK;
        if (size - pos - 8 < (size_t)len + 4)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: image file is truncated (in PNG chunk %.4s)", what,
                             (const char *)type);
        uint32_t want = be32(data + pos + 8 + len);
        if (crc32_png(type, (size_t)len + 4) != want) {
            char name[5];
            for (int i = 0; i < 4; i++) name[i] = (type[i] >= 32 && type[i] < 127) ? (char)type[i] : '?';
            name[4] = 0;
            return ergo_fail(err, ERGO_E_FORMAT, "%s: broken PNG file (bad checksum in chunk %s)",
                             what, name);
        }
        pos += 12 + (size_t)len;
    }
}

typedef struct png_ctx {
    jmp_buf jmp;
    char msg[256];
    const char *what;
    const image_limits *lim;
    ergo_error *err;
    ergo_status st;         /* set by png_on_info when it refuses the header */
    image *out;
    int color_type, bit_depth, interlaced;
    uint8_t palette[256 * 3];
    uint8_t *rgb_row;       /* (width, 3) scratch for interlaced passes (owned) */
    uint64_t rows_done;     /* rows delivered to png_on_row */
    uint64_t rows_needed;   /* rows libpng delivers over all passes */
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* After IHDR (and PLTE, tRNS, ...): check the size, set up rows and the output. */
static void png_on_info(png_structp png, png_infop info) {
    png_ctx *c = png_get_progressive_ptr(png);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    c->st = check_size(w, h, c->lim, c->what, c->err);
    if (c->st != ERGO_OK) png_error(png, "refused");
    c->color_type = ctype;
    c->bit_depth = depth;
    c->interlaced = interlace != PNG_INTERLACE_NONE;
    if (ctype == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte;
        int n = 0;
        if (png_get_PLTE(png, info, &plte, &n) & PNG_INFO_PLTE)
            for (int i = 0; i < n && i < 256; i++) {
                c->palette[3 * i] = plte[i].red;
                c->palette[3 * i + 1] = plte[i].green;
                c->palette[3 * i + 2] = plte[i].blue;
            }
    }
    if (depth < 8) png_set_packing(png);
    /* No png_set_interlace_handling: png_on_row puts each pass's pixels in place. */
    for (int p = 0; p < (c->interlaced ? 7 : 1); p++) {
        png_uint_32 rows = c->interlaced ? PNG_PASS_ROWS(h, p) : h;
        png_uint_32 cols = c->interlaced ? PNG_PASS_COLS(w, p) : w;
        if (rows && cols) c->rows_needed += rows; /* libpng skips empty passes */
    }
    c->st = image_alloc(c->out, (int)w, (int)h, c->err);
    if (c->st != ERGO_OK) png_error(png, "refused");
    c->rgb_row = malloc((size_t)w * 3);
    if (!c->rgb_row) {
        c->st = ergo_fail(c->err, ERGO_E_NOMEM, "%s: out of memory", c->what);
        png_error(png, "refused");
    }
    png_start_read_image(png);
}

/* One decoded row of pass `pass` (row_num counts rows within the pass). */
static void png_on_row(png_structp png, png_bytep row, png_uint_32 row_num, int pass) {
    png_ctx *c = png_get_progressive_ptr(png);
    image *out = c->out;
    if (!row) return;
    if (!c->interlaced) {
        if (row_num >= (png_uint_32)out->height) png_error(png, "too many rows");
        convert_png_row(out->rgb + (size_t)row_num * out->width * 3, row, out->width,
                        c->color_type, c->bit_depth, c->palette);
    } else {
        png_uint_32 y = PNG_ROW_FROM_PASS_ROW(row_num, pass);
        int n = (int)PNG_PASS_COLS((png_uint_32)out->width, pass);
        if (pass < 0 || pass > 6 || y >= (png_uint_32)out->height) png_error(png, "bad interlace row");
        convert_png_row(c->rgb_row, row, n, c->color_type, c->bit_depth, c->palette);
        uint8_t *dst = out->rgb + (size_t)y * out->width * 3;
        for (int i = 0; i < n; i++)
            memcpy(dst + (size_t)PNG_COL_FROM_PASS_COL((png_uint_32)i, pass) * 3,
                   c->rgb_row + (size_t)i * 3, 3);
    }
    c->rows_done++;
}

/* libpng's progressive (push) reader decodes as far as the bytes go, like Pillow's
 * decoder fed by ImageFile.load: a file that ends after the last row's data (in the
 * zlib checksum, the IDAT CRC or IEND) still gives the whole image; one that ends
 * before is "truncated". A zlib checksum that is present and wrong is an error, as
 * in Pillow. */
static ergo_status decode_png(image *out, const uint8_t *data, size_t size, const char *what,
                              const image_limits *lim, ergo_error *err) {
    out->rgb = NULL;
    out->width = out->height = 0;
    ergo_status st = png_check_chunks(data, size, what, err);
    if (st != ERGO_OK) return st;

    png_ctx *ctx = calloc(1, sizeof *ctx); /* on the heap: safe to read after longjmp */
    if (!ctx) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    ctx->what = what;
    ctx->lim = lim;
    ctx->err = err;
    ctx->out = out;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, ctx, png_on_error,
                                             png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        free(ctx);
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    }
    if (setjmp(ctx->jmp)) {
        st = ctx->st != ERGO_OK ? ctx->st
                                : ergo_fail(err, ERGO_E_FORMAT, "%s: broken PNG data: %s", what,
                                            ctx->msg);
        goto done;
    }
    /* Pillow checked the CRCs that matter above (png_check_chunks) and never checks
     * IDAT's; libpng's default 1,000,000-pixel side limit is not Pillow's. */
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
    png_set_user_limits(png, 0x7fffffffu, 0x7fffffffu);
    png_set_progressive_read_fn(png, ctx, png_on_info, png_on_row, NULL);
    png_process_data(png, info, (png_bytep)(uintptr_t)data, size);
    if (!out->rgb || ctx->rows_done < ctx->rows_needed)
        st = ergo_fail(err, ERGO_E_FORMAT, "%s: image file is truncated (%llu of %llu PNG rows)",
                       what, (unsigned long long)ctx->rows_done,
                       (unsigned long long)ctx->rows_needed);

done:
    png_destroy_read_struct(&png, &info, NULL);
    free(ctx->rgb_row);
    free(ctx);
    if (st != ERGO_OK) image_free(out);
    return st;
}

/* ------------------------------------------------------------------------------ */
/* Entry points                                                                    */
/* ------------------------------------------------------------------------------ */

ergo_status image_decode_memory(image *out, const uint8_t *data, size_t size, const char *what,
                                const image_limits *limits, ergo_error *err) {
    out->rgb = NULL;
    out->width = out->height = 0;
    if (!what) what = "image";
    /* Pillow's format checks: JPEG starts FF D8 FF, PNG with its 8-byte signature. */
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return decode_jpeg(out, data, size, what, limits, err);
    if (size >= 8 && !memcmp(data, png_signature, 8))
        return decode_png(out, data, size, what, limits, err);
    char head[3 * 8 + 1] = "";
    for (size_t i = 0; i < size && i < 8; i++) snprintf(head + 3 * i, 4, " %02x", data[i]);
    return ergo_fail(err, ERGO_E_UNSUPPORTED,
                     "%s: cannot identify image file (not JPEG or PNG; %zu bytes, starting%s)",
                     what, size, size ? head : " with nothing");
}

ergo_status image_decode_file(image *out, const char *path, const image_limits *limits,
                              ergo_error *err) {
    mapped_file mf;
    out->rgb = NULL;
    out->width = out->height = 0;
    ergo_status st = file_map(&mf, path, err);
    if (st != ERGO_OK) return st;
    st = image_decode_memory(out, mf.data, mf.size, path, limits, err);
    file_unmap(&mf);
    return st;
}
