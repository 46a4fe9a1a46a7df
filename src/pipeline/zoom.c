/*
 * zoom.c - ERGO's box parser and crop mapping (reference: src/ergo/utils.py,
 * parse_zoom_bbox_from_text, map_box, crop_with_zoom) with Python 3.11 `re`
 * semantics for str patterns. The regexes are fixed and tiny, so they are matched
 * by hand here: \d and \s are disjoint from each other and from ",[]", which makes
 * the greedy walk below the only possible match.
 */
#include "pipeline/zoom.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "image/preprocess.h"

const char *zoom_status_name(zoom_status s) {
    switch (s) {
    case ZOOM_OK: return "ok";
    case ZOOM_NONE: return "none";
    case ZOOM_INVALID: return "invalid";
    }
    return "?";
}

/* The zero of every run of ten decimal digits (category Nd) in Unicode 14.0, the
 * version of Python 3.11's unicodedata (printed by tools/fixtures_pipeline.py's
 * check; pinned because a newer utf8proc would accept digits Python rejects). */
static const int32_t digit_zeros[] = {
    0x30,    0x660,   0x6F0,   0x7C0,   0x966,   0x9E6,   0xA66,   0xAE6,   0xB66,   0xBE6,
    0xC66,   0xCE6,   0xD66,   0xDE6,   0xE50,   0xED0,   0xF20,   0x1040,  0x1090,  0x17E0,
    0x1810,  0x1946,  0x19D0,  0x1A80,  0x1A90,  0x1B50,  0x1BB0,  0x1C40,  0x1C50,  0xA620,
    0xA8D0,  0xA900,  0xA9D0,  0xA9F0,  0xAA50,  0xABF0,  0xFF10,  0x104A0, 0x10D30, 0x11066,
    0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0,
    0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2,
    0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
};

/* Python's str.isspace() == re's \s for str (Py_UNICODE_ISSPACE), Unicode 14.0. */
int zoom_is_space(int32_t c) {
    if ((c >= 0x9 && c <= 0xD) || (c >= 0x1C && c <= 0x20)) return 1;
    if (c == 0x85 || c == 0xA0 || c == 0x1680) return 1;
    if (c >= 0x2000 && c <= 0x200A) return 1;
    return c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* The digit's value, or -1 when c is not \d. */
static int digit_value(int32_t c) {
    if (c < 0x30) return -1;
    for (size_t i = 0; i < sizeof digit_zeros / sizeof *digit_zeros; i++)
        if (c >= digit_zeros[i] && c < digit_zeros[i] + 10) return (int)(c - digit_zeros[i]);
    return -1;
}

/* The code point at p (end e); invalid UTF-8 counts as one character of one byte. */
static int32_t next_cp(const char *p, const char *e, size_t *n) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)p, e - p, &c);
    if (k <= 0) {
        *n = 1;
        return -1;
    }
    *n = (size_t)k;
    return c;
}

/* A number matched by \d+: its digits and value. */
typedef struct number {
    int n_digits;   /* all digits, leading zeros included (int()'s 4300-digit limit) */
    char ascii[420]; /* significant digits in ASCII when they fit, for strtod */
    int n_sig;      /* significant digits (leading zeros dropped) */
} number;

/* \d+ at *p: 1 and advances when at least one digit. */
static int match_digits(const char **p, const char *e, number *num) {
    num->n_digits = num->n_sig = 0;
    const char *q = *p;
    while (q < e) {
        size_t n;
        int d = digit_value(next_cp(q, e, &n));
        if (d < 0) break;
        num->n_digits++;
        if (d || num->n_sig) {
            if (num->n_sig < (int)sizeof num->ascii - 1) num->ascii[num->n_sig] = (char)('0' + d);
            num->n_sig++;
        }
        q += n;
    }
    if (!num->n_digits) return 0;
    num->ascii[num->n_sig < (int)sizeof num->ascii - 1 ? num->n_sig : 0] = '\0';
    *p = q;
    return 1;
}

static void skip_spaces(const char **p, const char *e) {
    while (*p < e) {
        size_t n;
        if (!zoom_is_space(next_cp(*p, e, &n))) return;
        *p += n;
    }
}

/* `\[\d+,\s*\d+,\s*\d+,\s*\d+\]` at *p: 1 and advances on a match. */
static int match_box(const char **p, const char *e, number nums[4]) {
    const char *q = *p;
    if (q >= e || *q != '[') return 0;
    q++;
    for (int k = 0; k < 4; k++) {
        if (k) {
            if (q >= e || *q != ',') return 0;
            q++;
            skip_spaces(&q, e);
        }
        if (!match_digits(&q, e, &nums[k])) return 0;
    }
    if (q >= e || *q != ']') return 0;
    *p = q + 1;
    return 1;
}

/* int(text) then float(): 0 when int() raises (more than 4300 digits). */
static int number_value(const number *num, double *v, int64_t *i) {
    if (num->n_digits > 4300) return 0;
    if (num->n_sig == 0) {
        *v = 0;
        *i = 0;
        return 1;
    }
    if (num->n_sig >= (int)sizeof num->ascii - 1) { /* >= 1e418: beyond any double */
        *v = INFINITY;
        *i = INT64_MAX;
        return 1;
    }
    /* strtod rounds correctly, as float(int) does; HUGE_VAL where float() overflows */
    errno = 0;
    *v = strtod(num->ascii, NULL);
    if (errno == ERANGE) *v = INFINITY;
    errno = 0;
    long long ll = strtoll(num->ascii, NULL, 10);
    *i = errno == ERANGE ? INT64_MAX : (int64_t)ll;
    return 1;
}

static const char *find(const char *p, const char *e, const char *needle) {
    size_t n = strlen(needle);
    for (; (size_t)(e - p) >= n; p++)
        if (!memcmp(p, needle, n)) return p;
    return NULL;
}

zoom_status zoom_parse(const char *text, size_t len, zoom_box *box) {
    memset(box, 0, sizeof *box);
    const char *end = text + len;
    /* re.search(r"<zoom>(.*?)</zoom>", DOTALL): the first opening tag, then the
     * first closing tag after it (a later opening tag has no closing one either) */
    const char *open = find(text, end, "<zoom>");
    if (!open) return ZOOM_NONE;
    const char *s = open + 6, *t = find(s, end, "</zoom>");
    if (!t) return ZOOM_NONE;
    number nums[4];
    /* re.match(r"^\s*\[\d+,\s*\d+,\s*\d+,\s*\d+\]\s*$") on the inside */
    const char *p = s;
    skip_spaces(&p, t);
    int full = match_box(&p, t, nums);
    if (full) skip_spaces(&p, t);
    if (full && p == t) {
        box->full_match = 1;
    } else {
        /* re.findall(r"\[\d+,\s*\d+,\s*\d+,\s*\d+\]"): exactly one match, else None */
        int count = 0;
        number cand[4];
        for (p = s; p < t && count < 2;) {
            if (match_box(&p, t, cand)) {
                if (count++ == 0) memcpy(nums, cand, sizeof cand);
                continue;
            }
            size_t n;
            next_cp(p, t, &n);
            p += n;
        }
        if (count != 1) return ZOOM_NONE;
    }
    /* int() of each number; its ValueError is caught by the reference: None */
    for (int k = 0; k < 4; k++)
        if (!number_value(&nums[k], &box->v[k], &box->i[k])) return ZOOM_NONE;
    return ZOOM_OK;
}

/* Python's max(a, b) / min(a, b): the first argument unless the second is larger
 * / smaller (equal values are equal here, so only the value matters). */
static double py_max(double a, double b) { return b > a ? b : a; }
static double py_min(double a, double b) { return b < a ? b : a; }

static zoom_status invalid(zoom_crop *out, const char *why) {
    size_t n = strlen(why);
    if (n >= sizeof out->why) n = sizeof out->why - 1;
    memcpy(out->why, why, n);
    out->why[n] = '\0';
    return ZOOM_INVALID;
}

zoom_status zoom_map(const zoom_box *box, double sx, double sy, int width, int height,
                     int factor, int64_t min_pixels, int64_t max_pixels, zoom_crop *out) {
    memset(out, 0, sizeof *out);
    for (int k = 0; k < 4; k++)
        if (isinf(box->v[k]))
            return invalid(out, "a coordinate is too large for a float (the reference "
                                "raises OverflowError)");
    /* map_box */
    double x1 = py_max(box->v[0] * sx, 0), y1 = py_max(box->v[1] * sy, 0);
    double x2 = py_min(box->v[2] * sx, width), y2 = py_min(box->v[3] * sy, height);
    /* crop_with_zoom: clamp into the original, truncate */
    x1 = py_max(0, py_min(x1, width));
    y1 = py_max(0, py_min(y1, height));
    x2 = py_max(0, py_min(x2, width));
    y2 = py_max(0, py_min(y2, height));
    out->x1 = (int)x1;
    out->y1 = (int)y1;
    out->x2 = (int)x2;
    out->y2 = (int)y2;
    int cw = out->x2 - out->x1, ch = out->y2 - out->y1;
    if (cw < 0 || ch < 0)
        return invalid(out, cw < 0 ? "x2 < x1 in the original (the reference's crop raises)"
                                   : "y2 < y1 in the original (the reference's crop raises)");
    if (cw == 0 || ch == 0) {
        out->zero_area = 1;
        return invalid(out, "the box has zero area in the original (the reference raises or "
                            "crops nothing)");
    }
    ergo_error err;
    int a, b;
    /* smart_resize(new_w, new_h): symmetric, the first output goes with the width */
    if (smart_resize_ergo(cw, ch, factor, min_pixels, max_pixels, &a, &b, &err) != ERGO_OK)
        return invalid(out, err.msg);
    if (a <= 0 || b <= 0)
        return invalid(out, "the crop's resized size has a side of 0 (the reference's resize "
                            "raises)");
    out->out_w = a;
    out->out_h = b;
    return ZOOM_OK;
}
