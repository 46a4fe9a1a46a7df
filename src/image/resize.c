/*
 * resize.c - separable resampling of RGB images, bit-exact with two references:
 *
 *   image_resize        Pillow 11.3 Image.resize (libImaging/Resample.c:
 *                       precompute_coeffs, normalize_coeffs_8bpc, ImagingResampleInner)
 *   image_resize_torch  torch 2.8 / torchvision 0.23 F.resize of a uint8 tensor with
 *                       BICUBIC + antialias (ATen UpSampleKernel.cpp:
 *                       _compute_indices_min_size_weights_aa,
 *                       _compute_index_ranges_int16_weights, the separable uint8 loops)
 *
 * Both compute, per axis and per output pixel, a window of input pixels and weights
 * in double (the filter is widened by the scale factor when shrinking), normalise the
 * weights to sum 1, turn them into fixed point, and then run a horizontal pass (only
 * over the rows the vertical pass will read) and a vertical pass, each rounded and
 * clipped to 8 bits. They differ in the cubic's expression, the fixed-point precision
 * (Pillow: 22 bits in int32; ATen: int16 with as many bits as the largest weight
 * allows) and a clamp of the window size; ATen's comments say it follows Pillow.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image/image.h"

/* ------------------------------------------------------------------------------ */
/* Filters (double precision, expressions kept exactly as the references write them) */
/* ------------------------------------------------------------------------------ */

static double filter_bilinear(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

/* Pillow's bicubic_filter, a = -0.5. */
static double filter_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

/* Pillow's lanczos_filter: sinc(x) * sinc(x/3) on [-3, 3). */
static double filter_lanczos(double x) {
    if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3);
    return 0.0;
}

/* ATen's HelperInterpCubic::aa_filter: cubic_convolution1/2 with A = -0.5. The
 * second piece is written differently from Pillow's, so weights differ in the last
 * bits of a double (and, after int16 rounding, sometimes by one unit). */
static double filter_torch_cubic(double x) {
    const double A = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((A + 2) * x - (A + 3)) * x * x + 1;
    if (x < 2.0) return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
    return 0.0;
}

/* ------------------------------------------------------------------------------ */
/* Coefficients for one axis                                                       */
/* ------------------------------------------------------------------------------ */

typedef struct resample_axis {
    int out_size;
    int ksize;      /* weights stored per output pixel */
    int *bounds;    /* (out_size, 2): first input index, number of inputs */
    int32_t *k;     /* (out_size, ksize): fixed-point weights */
    int precision;  /* fixed-point bits: the result is (sum + 2^(p-1)) >> p */
} resample_axis;

static void axis_free(resample_axis *ax) {
    free(ax->bounds);
    free(ax->k);
    ax->bounds = NULL;
    ax->k = NULL;
}

/* Shared allocation: out_size * ksize doubles for the float weights. */
static ergo_status axis_alloc(resample_axis *ax, int out_size, int ksize, double **kd,
                              ergo_error *err) {
    ax->out_size = out_size;
    ax->ksize = ksize;
    ax->bounds = NULL;
    ax->k = NULL;
    *kd = NULL;
    /* Pillow's own overflow check: outSize > INT_MAX / (ksize * sizeof(double)). */
    if (ksize <= 0 || out_size > INT_MAX / (ksize * (int)sizeof(double)))
        return ergo_fail(err, ERGO_E_LIMIT, "resize: %d outputs x %d taps is too many", out_size,
                         ksize);
    size_t n = (size_t)out_size * (size_t)ksize;
    ax->bounds = malloc((size_t)out_size * 2 * sizeof(int));
    ax->k = malloc(n * sizeof(int32_t));
    *kd = malloc(n * sizeof(double));
    if (!ax->bounds || !ax->k || !*kd) {
        axis_free(ax);
        free(*kd);
        *kd = NULL;
        return ergo_fail(err, ERGO_E_NOMEM, "resize: out of memory for coefficients");
    }
    return ERGO_OK;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc (22-bit int32 weights). */
static ergo_status axis_pillow(resample_axis *ax, int in_size, int out_size, image_filter f,
                               ergo_error *err) {
    double (*filter)(double) = f == IMAGE_FILTER_BILINEAR  ? filter_bilinear
                               : f == IMAGE_FILTER_LANCZOS ? filter_lanczos
                                                           : filter_bicubic;
    double fsupport = f == IMAGE_FILTER_BILINEAR ? 1.0 : f == IMAGE_FILTER_LANCZOS ? 3.0 : 2.0;
    /* Pillow passes the box edges as float: (double)(in1 - in0) is a float difference. */
    float in0 = 0.0f, in1 = (float)in_size;
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = fsupport * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *kd;
    ergo_status st = axis_alloc(ax, out_size, ksize, &kd, err);
    if (st != ERGO_OK) return st;
    ax->precision = 22; /* PRECISION_BITS = 32 - 8 - 2 */
    for (int xx = 0; xx < out_size; xx++) {
        double center = (double)in0 + (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = kd + (size_t)xx * ksize;
        int x;
        for (x = 0; x < xmax; x++) {
            double w = filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        ax->bounds[2 * xx] = xmin;
        ax->bounds[2 * xx + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * ksize; i++)
        ax->k[i] = kd[i] < 0 ? (int32_t)(-0.5 + kd[i] * (1 << 22))
                             : (int32_t)(0.5 + kd[i] * (1 << 22));
    free(kd);
    return ERGO_OK;
}

/* ATen's _compute_index_ranges_weights (antialias) + _compute_index_ranges_int16_weights
 * for the bicubic filter, align_corners=False and no explicit scale factor. */
static ergo_status axis_torch(resample_axis *ax, int in_size, int out_size, ergo_error *err) {
    double scale = (double)in_size / out_size;
    double support = scale >= 1.0 ? (4 * 0.5) * scale : 4 * 0.5;
    int ksize = (int)ceil(support) * 2 + 1;
    double *kd;
    ergo_status st = axis_alloc(ax, out_size, ksize, &kd, err);
    if (st != ERGO_OK) return st;
    double wt_max = 0.0;
    for (int i = 0; i < out_size; i++) {
        double center = scale * (i + 0.5);
        double total = 0.0, invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
        int64_t xmin = (int64_t)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xend = (int64_t)(center + support + 0.5);
        if (xend > in_size) xend = in_size;
        int64_t xsize = xend - xmin;
        /* "rare cases when due to precision xsize can be larger than max_interp_size" */
        if (xsize < 0) xsize = 0;
        if (xsize > ksize) xsize = ksize;
        double *w = kd + (size_t)i * ksize;
        int64_t j;
        for (j = 0; j < xsize; j++) {
            double v = filter_torch_cubic((j + xmin - center + 0.5) * invscale);
            w[j] = v;
            total += v;
        }
        if (total != 0.0)
            for (j = 0; j < xsize; j++) {
                w[j] /= total;
                if (w[j] > wt_max) wt_max = w[j];
            }
        for (j = xsize; j < ksize; j++) w[j] = 0.0;
        ax->bounds[2 * i] = (int)xmin;
        ax->bounds[2 * i + 1] = (int)xsize;
    }
    /* The most bits such that the largest weight still fits an int16. */
    int p;
    for (p = 0; p < 22; ++p) {
        int next = (int)(0.5 + wt_max * (1 << (p + 1)));
        if (next >= (1 << 15)) break;
    }
    ax->precision = p;
    for (size_t i = 0; i < (size_t)out_size * ksize; i++) {
        double v = kd[i] * (1 << p);
        ax->k[i] = (int16_t)(v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v));
    }
    free(kd);
    return ERGO_OK;
}

/* ------------------------------------------------------------------------------ */
/* The two passes                                                                  */
/* ------------------------------------------------------------------------------ */

static inline uint8_t clip_shift(int32_t ss, int p) {
    int32_t v = ss >> p; /* arithmetic shift, as both references do */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Only fan out over threads when a pass is big enough to pay for it. */
#define RESIZE_PARALLEL_MIN_OPS (1 << 20)

/* out (rows, ax->out_size, 3) from in rows [row0, row0 + rows) of width in_w. */
static void pass_horizontal(uint8_t *out, const uint8_t *in, int in_w, int row0, int rows,
                            const resample_axis *ax) {
    const int ow = ax->out_size, ks = ax->ksize, p = ax->precision;
    const int32_t half = (int32_t)1 << (p - 1);
    long long ops = (long long)rows * ow * ks;
#pragma omp parallel for schedule(static) if (ops > RESIZE_PARALLEL_MIN_OPS)
    for (int y = 0; y < rows; y++) {
        const uint8_t *src = in + ((size_t)(row0 + y) * (size_t)in_w) * 3;
        uint8_t *dst = out + (size_t)y * (size_t)ow * 3;
        for (int xx = 0; xx < ow; xx++) {
            const int xmin = ax->bounds[2 * xx], n = ax->bounds[2 * xx + 1];
            const int32_t *k = ax->k + (size_t)xx * ks;
            const uint8_t *s = src + (size_t)xmin * 3;
            int32_t s0 = half, s1 = half, s2 = half;
            for (int x = 0; x < n; x++, s += 3) {
                s0 += s[0] * k[x];
                s1 += s[1] * k[x];
                s2 += s[2] * k[x];
            }
            dst[3 * xx] = clip_shift(s0, p);
            dst[3 * xx + 1] = clip_shift(s1, p);
            dst[3 * xx + 2] = clip_shift(s2, p);
        }
    }
}

/* out (ax->out_size, w, 3) from in (any rows, w, 3); bounds are relative to in.
 * Each output row is summed in segments that fit a stack buffer (and the cache). */
static void pass_vertical(uint8_t *out, const uint8_t *in, int w, const resample_axis *ax) {
    enum { SEG = 1536 };
    const int oh = ax->out_size, ks = ax->ksize, p = ax->precision;
    const size_t n = (size_t)w * 3;
    const int32_t half = (int32_t)1 << (p - 1);
    long long ops = (long long)oh * w * ks;
#pragma omp parallel for schedule(static) if (ops > RESIZE_PARALLEL_MIN_OPS)
    for (int yy = 0; yy < oh; yy++) {
        int32_t acc[SEG];
        const int ymin = ax->bounds[2 * yy], cnt = ax->bounds[2 * yy + 1];
        const int32_t *k = ax->k + (size_t)yy * ks;
        uint8_t *dst = out + (size_t)yy * n;
        for (size_t i0 = 0; i0 < n; i0 += SEG) {
            size_t m = n - i0 < SEG ? n - i0 : SEG;
            for (size_t i = 0; i < m; i++) acc[i] = half;
            for (int y = 0; y < cnt; y++) {
                const uint8_t *src = in + (size_t)(ymin + y) * n + i0;
                const int32_t ky = k[y];
                for (size_t i = 0; i < m; i++) acc[i] += src[i] * ky;
            }
            for (size_t i = 0; i < m; i++) dst[i0 + i] = clip_shift(acc[i], p);
        }
    }
}

/* ImagingResampleInner: horizontal pass over the rows the vertical pass needs, then
 * the vertical pass with its bounds shifted to those rows. */
static ergo_status resample(image *out, const image *in, resample_axis *hx, resample_axis *vy,
                            int need_h, int need_v, ergo_error *err) {
    int ow = need_h ? hx->out_size : in->width, oh = need_v ? vy->out_size : in->height;
    ergo_status st = image_alloc(out, ow, oh, err);
    if (st != ERGO_OK) return st;
    if (!need_h && !need_v) {
        memcpy(out->rgb, in->rgb, (size_t)ow * oh * 3);
        return ERGO_OK;
    }
    if (!need_v) {
        pass_horizontal(out->rgb, in->rgb, in->width, 0, in->height, hx);
        return ERGO_OK;
    }
    int first = vy->bounds[0];
    int last = vy->bounds[2 * oh - 2] + vy->bounds[2 * oh - 1];
    uint8_t *tmp = NULL;
    const uint8_t *vin = in->rgb;
    if (need_h) {
        tmp = malloc((size_t)ow * (size_t)(last - first) * 3 + 1);
        if (!tmp) {
            image_free(out);
            return ergo_fail(err, ERGO_E_NOMEM, "resize: out of memory");
        }
        pass_horizontal(tmp, in->rgb, in->width, first, last - first, hx);
        for (int i = 0; i < oh; i++) vy->bounds[2 * i] -= first;
        vin = tmp;
    }
    pass_vertical(out->rgb, vin, ow, vy);
    free(tmp);
    return ERGO_OK;
}

static ergo_status check_args(image *out, const image *in, int width, int height,
                              ergo_error *err) {
    out->rgb = NULL;
    out->width = out->height = 0;
    if (width <= 0 || height <= 0)
        return ergo_fail(err, ERGO_E_ARG, "resize: target %dx%d: height and width must be > 0",
                         width, height);
    if (!in->rgb || in->width <= 0 || in->height <= 0)
        return ergo_fail(err, ERGO_E_ARG, "resize: empty source image");
    return ERGO_OK;
}

ergo_status image_resize(image *out, const image *in, int width, int height, image_filter filter,
                         ergo_error *err) {
    ergo_status st = check_args(out, in, width, height, err);
    if (st != ERGO_OK) return st;
    if (filter != IMAGE_FILTER_BILINEAR && filter != IMAGE_FILTER_BICUBIC &&
        filter != IMAGE_FILTER_LANCZOS)
        return ergo_fail(err, ERGO_E_ARG, "resize: unknown filter %d", (int)filter);
    int need_h = width != in->width, need_v = height != in->height;
    resample_axis hx = {0}, vy = {0};
    if (need_h && (st = axis_pillow(&hx, in->width, width, filter, err)) != ERGO_OK) return st;
    if (need_v && (st = axis_pillow(&vy, in->height, height, filter, err)) != ERGO_OK) {
        axis_free(&hx);
        return st;
    }
    st = resample(out, in, &hx, &vy, need_h, need_v, err);
    axis_free(&hx);
    axis_free(&vy);
    return st;
}

ergo_status image_resize_torch(image *out, const image *in, int width, int height,
                               ergo_error *err) {
    ergo_status st = check_args(out, in, width, height, err);
    if (st != ERGO_OK) return st;
    int need_h = width != in->width, need_v = height != in->height;
    resample_axis hx = {0}, vy = {0};
    if (need_h && (st = axis_torch(&hx, in->width, width, err)) != ERGO_OK) return st;
    if (need_v && (st = axis_torch(&vy, in->height, height, err)) != ERGO_OK) {
        axis_free(&hx);
        return st;
    }
    st = resample(out, in, &hx, &vy, need_h, need_v, err);
    axis_free(&hx);
    axis_free(&vy);
    return st;
}
