#!/usr/bin/env python3
"""Writes tests/fixtures/image/ (and tests/fuzz_corpus/image/) from the reference stack.

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_image.py

What it produces (manifest.json describes every case; arrays are little-endian):
  decode/      small JPEG/PNG files of every mode ergo must read, each with Pillow 11.3's
               `Image.open(f).convert("RGB")` stored as an 8-bit RGB PNG and as a SHA-256
               of the raw RGB bytes; truncated-prefix and one-byte-corruption verdicts of
               Pillow (accepted + SHA-256, or refused); a CMYK->RGB conversion table; the
               demo photo's decoded SHA-256 plus every 50th row.
  resize/      sources and Pillow `Image.resize` results (BILINEAR, BICUBIC, LANCZOS) and
               torchvision `F.resize(uint8, BICUBIC, antialias=True)` results; the demo
               photo at its ERGO stage-1 size, an ERGO-style crop + LANCZOS, and the
               processor's own resize of the demo (SHA-256 + sampled rows).
  smart_resize.json  ERGO's and the Qwen2-VL processor's smart_resize on many sizes.
  preprocess/  pixel_values (float32) + image_grid_thw from the processor that
               AutoProcessor loads (its class is recorded), for images it does not
               resize and images it resizes, and the demo photo (SHA-256 + sampled rows).

Nothing here is hand-written: every expected value comes from Pillow / torch / transformers.
The few JPEG variants Pillow cannot write (YCCK, 4:4:0, 4:1:1, arithmetic coding,
restart markers) are written by a tiny C program against the system libjpeg, compiled
on the fly; Pillow still decides what they decode to.
"""
import hashlib
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import PIL
import PIL.features
import tokenizers
import torch
import torchvision
import transformers
from PIL import Image
from torchvision.transforms.v2 import functional as TF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "image")
CORPUS = os.path.join(ROOT, "tests", "fuzz_corpus", "image")
ASSETS = os.path.join(ROOT, "assets")
DEMO = os.path.join(ASSETS, "demo.jpg")
MODEL_DIR = os.path.join(ASSETS, "qwen2.5-vl-tokenizer")

torch.set_num_threads(1)


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def versions():
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "Pillow": PIL.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "libjpeg_turbo (Pillow)": PIL.features.version("libjpeg_turbo"),
    }


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def save_rgb_png(path, arr):
    """An 8-bit RGB PNG (ergo's decoder reads it back; its SHA-256 is kept too)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB").save(buf, "PNG", optimize=True)
    write(path, buf.getvalue())


def pillow_rgb(data):
    """Pillow's verdict on bytes: ("ok", HxWx3 array) or ("error", message)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return "ok", np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any refusal counts as an error
        return "error", f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------
# Test pictures
# ----------------------------------------------------------------------------------

RNG = np.random.default_rng(20250917)


def picture(w, h, noise=0.25, cell=6):
    """Gradients, random colour blocks (hard edges: overshoot and clipping) and noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    grad = np.stack([(xx * 255) // max(w - 1, 1), (yy * 255) // max(h - 1, 1),
                     ((xx + yy) * 127) // max(w + h - 2, 1)], -1)
    blocks = RNG.integers(0, 256, ((h + cell - 1) // cell, (w + cell - 1) // cell, 3))
    blocks = blocks.repeat(cell, 0).repeat(cell, 1)[:h, :w]
    mix = np.where(((xx // cell + yy // cell) % 3 == 0)[..., None], blocks, grad)
    if noise > 0:
        n = RNG.integers(0, 256, (h, w, 3))
        mix = np.where(RNG.random((h, w, 1)) < noise, n, mix)
    return mix.astype(np.uint8)


# ----------------------------------------------------------------------------------
# A PNG writer for the bit depths and colour types Pillow cannot write
# ----------------------------------------------------------------------------------

def _chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def _pack_row(samples, depth):
    """samples: 1-D array of per-sample values (already interleaved channels)."""
    if depth == 16:
        return samples.astype(">u2").tobytes()
    if depth == 8:
        return samples.astype(np.uint8).tobytes()
    per = 8 // depth
    s = samples.astype(np.uint16)
    pad = (-len(s)) % per
    s = np.concatenate([s, np.zeros(pad, np.uint16)]).reshape(-1, per)
    out = np.zeros(len(s), np.uint16)
    for i in range(per):
        out |= s[:, i] << (8 - depth * (i + 1))
    return out.astype(np.uint8).tobytes()


def _filter(row, prev, bpp, ftype):
    row = np.frombuffer(row, np.uint8).astype(np.int32)
    prev = np.frombuffer(prev, np.uint8).astype(np.int32) if prev is not None else np.zeros_like(row)
    out = np.zeros_like(row)
    for i in range(len(row)):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if ftype == 0:
            p = 0
        elif ftype == 1:
            p = a
        elif ftype == 2:
            p = b
        elif ftype == 3:
            p = (a + b) // 2
        else:
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i] = (row[i] - p) & 0xFF
    return bytes([ftype]) + out.astype(np.uint8).tobytes()


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png_bytes(samples, depth, ctype, plte=None, trns=None, interlace=False, extra=()):
    """samples: (h, w, channels) array of raw sample values."""
    h, w, ch = samples.shape
    bpp = max(1, ch * depth // 8)
    raw = b""
    images = [(samples, None)]
    if interlace:
        images = []
        for (x0, y0, dx, dy) in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                images.append((sub, None))
    k = 0
    for img, _ in images:
        prev = None
        for y in range(img.shape[0]):
            row = _pack_row(img[y].reshape(-1), depth)
            raw += _filter(row, prev, bpp, k % 5)
            prev = row
            k += 1
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 1 if interlace else 0))
    for t, d in extra:
        out += _chunk(t, d)
    if plte is not None:
        out += _chunk(b"PLTE", plte)
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    z = zlib.compress(raw, 9)
    out += _chunk(b"IDAT", z[: len(z) // 2]) + _chunk(b"IDAT", z[len(z) // 2:])  # two IDATs
    return out + _chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------
# JPEG variants Pillow cannot write: a tiny libjpeg program
# ----------------------------------------------------------------------------------

JPEG_HELPER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
/* usage: helper MODE W H in.raw out.jpg ; MODE: ycck h1v2 h4v1 arith restart */
int main(int argc, char **argv) {
    const char *mode = argv[1];
    int w = atoi(argv[2]), h = atoi(argv[3]);
    int comps = !strcmp(mode, "ycck") ? 4 : 3;
    FILE *fi = fopen(argv[4], "rb");
    unsigned char *px = malloc((size_t)w * h * comps);
    if (fread(px, 1, (size_t)w * h * comps, fi) != (size_t)w * h * comps) return 1;
    fclose(fi);
    struct jpeg_compress_struct c; struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e); jpeg_create_compress(&c);
    FILE *fo = fopen(argv[5], "wb"); jpeg_stdio_dest(&c, fo);
    c.image_width = w; c.image_height = h; c.input_components = comps;
    c.in_color_space = comps == 4 ? JCS_CMYK : JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 88, TRUE);
    if (comps == 4) jpeg_set_colorspace(&c, JCS_YCCK);  /* writes Adobe transform 2 */
    if (!strcmp(mode, "h1v2")) { c.comp_info[0].h_samp_factor = 1; c.comp_info[0].v_samp_factor = 2; }
    if (!strcmp(mode, "h4v1")) { c.comp_info[0].h_samp_factor = 4; c.comp_info[0].v_samp_factor = 1; }
    if (!strcmp(mode, "ycck")) { c.comp_info[0].h_samp_factor = 2; c.comp_info[0].v_samp_factor = 2;
                                  c.comp_info[3].h_samp_factor = 2; c.comp_info[3].v_samp_factor = 2; }
    if (!strcmp(mode, "arith")) c.arith_code = TRUE;
    if (!strcmp(mode, "restart")) c.restart_interval = 2;
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW r = px + (size_t)c.next_scanline * w * comps;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c); fclose(fo); jpeg_destroy_compress(&c);
    return 0;
}
"""


def libjpeg_variants(tmp):
    src = os.path.join(tmp, "helper.c")
    exe = os.path.join(tmp, "helper")
    with open(src, "w") as f:
        f.write(JPEG_HELPER)
    subprocess.run(["cc", "-O1", src, "-ljpeg", "-o", exe], check=True)
    out = {}
    for mode in ["ycck", "h1v2", "h4v1", "arith", "restart"]:
        w, h = (35, 27)
        comps = 4 if mode == "ycck" else 3
        if comps == 4:
            px = np.concatenate([picture(w, h, 0.1), picture(w, h, 0.1)[..., :1]], -1)
        else:
            px = picture(w, h, 0.1)
        raw = os.path.join(tmp, mode + ".raw")
        px.tofile(raw)
        jpg = os.path.join(tmp, mode + ".jpg")
        subprocess.run([exe, mode, str(w), str(h), raw, jpg], check=True)
        with open(jpg, "rb") as f:
            out[mode] = f.read()
    return out


# ----------------------------------------------------------------------------------
# Decode cases
# ----------------------------------------------------------------------------------

def pil_save(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def decode_inputs(tmp):
    cases = {}
    rgb = picture(37, 23, 0.15)
    big = picture(97, 61, 0.1)
    grey = picture(33, 21, 0.15)[..., 0]
    cmyk = np.concatenate([picture(29, 19, 0.1), picture(29, 19, 0.1)[..., :1]], -1)
    im = Image.fromarray(rgb)
    cases["jpeg_baseline_420.jpg"] = pil_save(im, "JPEG", quality=85, subsampling=2)
    cases["jpeg_baseline_422.jpg"] = pil_save(im, "JPEG", quality=85, subsampling=1)
    cases["jpeg_baseline_444.jpg"] = pil_save(im, "JPEG", quality=85, subsampling=0)
    cases["jpeg_progressive_420.jpg"] = pil_save(Image.fromarray(big), "JPEG", quality=80, progressive=True)
    cases["jpeg_progressive_444.jpg"] = pil_save(im, "JPEG", quality=90, progressive=True, subsampling=0)
    cases["jpeg_optimized_q100.jpg"] = pil_save(im, "JPEG", quality=100, optimize=True)
    cases["jpeg_grey.jpg"] = pil_save(Image.fromarray(grey, "L"), "JPEG", quality=85)
    cases["jpeg_grey_progressive.jpg"] = pil_save(Image.fromarray(grey, "L"), "JPEG", quality=85, progressive=True)
    cases["jpeg_cmyk_adobe.jpg"] = pil_save(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=90)
    ex = Image.Exif()
    ex[0x0112] = 6  # orientation: rotate 90 - neither Pillow's open nor ergo applies it
    cases["jpeg_exif_orientation6.jpg"] = pil_save(im, "JPEG", quality=85, exif=ex)
    cases["jpeg_1x1.jpg"] = pil_save(Image.fromarray(rgb[:1, :1]), "JPEG", quality=85)
    for mode, data in libjpeg_variants(tmp).items():
        cases[f"jpeg_libjpeg_{mode}.jpg"] = data

    # PNG: every bit depth and colour type, with and without tRNS, interlaced or not.
    h, w = 19, 27
    g16 = RNG.integers(0, 65536, (h, w, 1))
    g16[0, :20, 0] = [0, 1, 2, 100, 254, 255, 256, 257, 511, 1000, 4095, 4096, 32767, 32768, 65279, 65280, 65534, 65535, 300, 258]
    for d in [1, 2, 4, 8, 16]:
        s = g16 >> (16 - d)
        cases[f"png_grey{d}.png"] = png_bytes(s, d, 0)
    cases["png_grey16_lowvalues.png"] = png_bytes(RNG.integers(0, 600, (h, w, 1)), 16, 0)
    cases["png_grey8_trns.png"] = png_bytes(g16 >> 8, 8, 0, trns=struct.pack(">H", 7))
    cases["png_grey16_gama.png"] = png_bytes(g16, 16, 0, extra=[(b"gAMA", struct.pack(">I", 45455))])
    ga = np.concatenate([g16, RNG.integers(0, 65536, (h, w, 1))], -1)
    cases["png_greyalpha8.png"] = png_bytes(ga >> 8, 8, 4)
    cases["png_greyalpha16.png"] = png_bytes(ga, 16, 4)
    c16 = RNG.integers(0, 65536, (h, w, 3))
    cases["png_rgb8.png"] = png_bytes(c16 >> 8, 8, 2)
    cases["png_rgb16.png"] = png_bytes(c16, 16, 2)
    cases["png_rgb8_trns.png"] = png_bytes(c16 >> 8, 8, 2, trns=struct.pack(">HHH", 1, 2, 3))
    cases["png_rgb8_srgb_chrm.png"] = png_bytes(c16 >> 8, 8, 2, extra=[(b"sRGB", b"\x00"), (b"gAMA", struct.pack(">I", 100000))])
    a16 = RNG.integers(0, 65536, (h, w, 4))
    a16[..., 3][a16[..., 3] < 20000] = 0  # fully transparent pixels keep their colour
    cases["png_rgba8.png"] = png_bytes(a16 >> 8, 8, 6)
    cases["png_rgba16.png"] = png_bytes(a16, 16, 6)
    for d in [1, 2, 4, 8]:
        n = 1 << d
        plte = RNG.integers(0, 256, n * 3).astype(np.uint8).tobytes()
        idx = RNG.integers(0, n, (h, w, 1))
        cases[f"png_palette{d}.png"] = png_bytes(idx, d, 3, plte=plte)
        trns = RNG.integers(0, 256, max(1, n // 2)).astype(np.uint8).tobytes()
        cases[f"png_palette{d}_trns.png"] = png_bytes(idx, d, 3, plte=plte, trns=trns)
    short = RNG.integers(0, 256, 5 * 3).astype(np.uint8).tobytes()
    cases["png_palette8_short.png"] = png_bytes(RNG.integers(0, 12, (h, w, 1)), 8, 3, plte=short)
    # interlaced (Adam7), including sizes where some passes are empty
    cases["png_grey1_interlaced.png"] = png_bytes(g16 >> 15, 1, 0, interlace=True)
    cases["png_grey16_interlaced.png"] = png_bytes(g16, 16, 0, interlace=True)
    cases["png_rgb8_interlaced.png"] = png_bytes(c16 >> 8, 8, 2, interlace=True)
    cases["png_rgba16_interlaced.png"] = png_bytes(a16, 16, 6, interlace=True)
    cases["png_palette4_interlaced.png"] = png_bytes(RNG.integers(0, 16, (h, w, 1)), 4, 3,
                                                     plte=RNG.integers(0, 256, 48).astype(np.uint8).tobytes(), interlace=True)
    cases["png_greyalpha8_interlaced.png"] = png_bytes(ga >> 8, 8, 4, interlace=True)
    cases["png_rgba8_3x5_interlaced.png"] = png_bytes(RNG.integers(0, 256, (5, 3, 4)), 8, 6, interlace=True)
    cases["png_rgb8_1x1.png"] = png_bytes(RNG.integers(0, 256, (1, 1, 3)), 8, 2)
    cases["png_rgb8_1x1_interlaced.png"] = png_bytes(RNG.integers(0, 256, (1, 1, 3)), 8, 2, interlace=True)
    # what Pillow itself writes
    cases["png_pillow_rgb.png"] = pil_save(Image.fromarray(rgb), "PNG")
    cases["png_pillow_L.png"] = pil_save(Image.fromarray(grey, "L"), "PNG")
    cases["png_pillow_1.png"] = pil_save(Image.fromarray(grey > 128), "PNG")
    cases["png_pillow_P.png"] = pil_save(Image.fromarray(rgb).quantize(37), "PNG")
    cases["png_pillow_RGBA.png"] = pil_save(Image.fromarray(a16[..., :4].astype(np.uint8)), "PNG")
    return cases


def make_decode(tmp, manifest):
    d = os.path.join(OUT, "decode")
    cases = []
    inputs = decode_inputs(tmp)
    for name, data in inputs.items():
        write(os.path.join(d, name), data)
        verdict, rgb = pillow_rgb(data)
        assert verdict == "ok", (name, rgb)
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
        exp = name.rsplit(".", 1)[0] + ".expect.png"
        save_rgb_png(os.path.join(d, exp), rgb)
        cases.append({"file": "decode/" + name, "pillow_mode": mode, "width": int(rgb.shape[1]),
                      "height": int(rgb.shape[0]), "expect_png": "decode/" + exp,
                      "rgb_sha256": sha256(rgb.tobytes())})
    manifest["decode"] = cases

    # Truncated prefixes: Pillow's verdict for every length of a few small files.
    trunc = []
    for name in ["jpeg_baseline_420.jpg", "jpeg_progressive_444.jpg", "jpeg_grey.jpg", "jpeg_libjpeg_restart.jpg",
                 "png_rgb8.png", "png_rgba16_interlaced.png", "png_palette4.png"]:
        data = inputs[name]
        ok = {}
        for n in range(len(data)):
            v, rgb = pillow_rgb(data[:n])
            if v == "ok":
                ok[str(n)] = sha256(rgb.tobytes())
        trunc.append({"file": "decode/" + name, "size": len(data), "pillow_accepts": ok})
    manifest["truncated"] = trunc

    # One-byte corruptions: Pillow's verdict on each (seeded offsets and values).
    corrupt = []
    rng = np.random.default_rng(7)
    for name in ["jpeg_baseline_420.jpg", "jpeg_progressive_420.jpg", "jpeg_cmyk_adobe.jpg",
                 "png_rgb8.png", "png_palette8_trns.png", "png_grey16_interlaced.png"]:
        data = inputs[name]
        muts = []
        for _ in range(120):
            off = int(rng.integers(0, len(data)))
            val = int(rng.integers(0, 256))
            if val == data[off]:
                val ^= 0x55
            m = bytearray(data)
            m[off] = val
            v, rgb = pillow_rgb(bytes(m))
            muts.append([off, val, sha256(rgb.tobytes()) if v == "ok" else None])
        corrupt.append({"file": "decode/" + name, "mutations": muts})
    manifest["corrupt"] = corrupt

    # CMYK -> RGB (Pillow's cmyk2rgb) on random values plus the extremes.
    cm = RNG.integers(0, 256, (64, 64, 4)).astype(np.uint8)
    cm[0, :16] = [[a, b, c, k] for a, b, c, k in [(0, 0, 0, 0), (255, 255, 255, 255), (255, 0, 0, 0), (0, 0, 0, 255),
                                                   (128, 128, 128, 128), (1, 2, 3, 4), (254, 253, 252, 251), (0, 255, 0, 1),
                                                   (255, 255, 0, 0), (17, 34, 51, 68), (200, 100, 50, 25), (0, 0, 255, 128),
                                                   (255, 128, 0, 254), (127, 127, 127, 0), (129, 129, 129, 255), (64, 192, 32, 160)]]
    out = np.asarray(Image.frombytes("CMYK", (64, 64), cm.tobytes()).convert("RGB"))
    write(os.path.join(d, "cmyk_pillow.bin"), cm.tobytes())
    write(os.path.join(d, "cmyk_rgb.bin"), out.tobytes())
    manifest["cmyk_table"] = {"cmyk": "decode/cmyk_pillow.bin", "rgb": "decode/cmyk_rgb.bin", "width": 64, "height": 64,
                              "note": "CMYK as Pillow holds it (after the CMYK;I unpacker) and Image.convert('RGB')"}

    # The demo photo: the full decode's SHA-256, and every 50th row to locate a mismatch.
    with open(DEMO, "rb") as f:
        demo_bytes = f.read()
    v, rgb = pillow_rgb(demo_bytes)
    rows = list(range(0, rgb.shape[0], 50))
    save_rgb_png(os.path.join(d, "demo_rows.png"), rgb[rows])
    manifest["demo_decode"] = {"file": "assets/demo.jpg", "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                               "rgb_sha256": sha256(rgb.tobytes()), "row_step": 50, "rows_png": "decode/demo_rows.png"}
    return inputs


# ----------------------------------------------------------------------------------
# Resize cases
# ----------------------------------------------------------------------------------

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def torch_resize(arr, w, h):
    t = TF.pil_to_tensor(Image.fromarray(arr))
    r = TF.resize(t[None], [h, w], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)[0]
    return r.permute(1, 2, 0).numpy()


def ergo_smart_resize(height, width, factor=28, min_pixels=256, max_pixels=1024):
    """nota-github/ERGO src/ergo/utils.py, verbatim logic."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = round(height / beta / factor) * factor
        w_bar = round(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


ERGO_MIN, ERGO_MAX = 4 * 28 * 28, 1280 * 28 * 28


def make_resize(manifest):
    d = os.path.join(OUT, "resize")
    sources = {
        "noise_37x23": picture(37, 23, 0.5, 3),
        "pic_401x299": picture(401, 299, 0.02, 9),
        "px_1x1": picture(1, 1),
        "pic_300x200": picture(300, 200, 0.02, 7),
        "strip_2000x3": picture(2000, 3, 0.3, 5),
        "pic_64x48": picture(64, 48, 0.2, 4),
        "noise_13x17": picture(13, 17, 0.6, 2),
    }
    for k, a in sources.items():
        save_rgb_png(os.path.join(d, k + ".png"), a)
    plan = [
        ("noise_37x23", 100, 61), ("pic_401x299", 57, 113), ("px_1x1", 3, 5), ("pic_300x200", 299, 201),
        ("strip_2000x3", 7, 1), ("pic_64x48", 32, 24), ("pic_64x48", 16, 12), ("pic_64x48", 128, 96),
        ("pic_64x48", 201, 150), ("pic_64x48", 64, 23), ("pic_64x48", 23, 48), ("pic_64x48", 5, 3),
        ("noise_13x17", 130, 170), ("noise_13x17", 14, 16), ("pic_300x200", 112, 84),
    ]
    cases = []
    for src, w, h in plan:
        a = sources[src]
        for fname in ["bicubic", "lanczos", "bilinear", "torch"]:
            if fname == "bilinear" and (w, h) not in [(100, 61), (57, 113), (32, 24), (128, 96), (7, 1)]:
                continue
            if fname == "torch":
                r = torch_resize(a, w, h)
            else:
                r = np.asarray(Image.fromarray(a).resize((w, h), FILTERS[fname]))
            exp = f"{src}_to_{w}x{h}_{fname}.png"
            save_rgb_png(os.path.join(d, exp), r)
            cases.append({"src": "resize/" + src + ".png", "width": w, "height": h, "filter": fname,
                          "expect_png": "resize/" + exp, "rgb_sha256": sha256(r.tobytes())})
    manifest["resize"] = cases

    # Pillow's crop with integer boxes, inside and reaching outside the source (black).
    crops = []
    a = sources["noise_37x23"]
    for box in [(5, 3, 20, 15), (-3, -2, 40, 30), (30, 20, 45, 28), (0, 0, 37, 23), (36, 22, 37, 23), (-5, 2, 0, 9)]:
        r = np.asarray(Image.fromarray(a).crop(box))
        exp = "noise_37x23_crop_%d_%d_%d_%d.png" % box
        save_rgb_png(os.path.join(d, exp), r)
        crops.append({"src": "resize/noise_37x23.png", "box": list(box), "expect_png": "resize/" + exp,
                      "rgb_sha256": sha256(r.tobytes())})
    manifest["crop"] = crops

    # The demo photo as ERGO's stage 1 resizes it, an ERGO crop (LANCZOS), and the
    # processor's own resize when handed the full photo (its default max_pixels).
    demo = Image.open(DEMO)
    W, H = demo.size
    h1, w1 = ergo_smart_resize(H, W, 28, ERGO_MIN, ERGO_MAX)
    big = []
    r = np.asarray(demo.resize((w1, h1), Image.BICUBIC))
    big.append(("demo_stage1_bicubic", "bicubic", None, w1, h1, r))
    box = (500, 300, 1100, 750)
    cw, ch = box[2] - box[0], box[3] - box[1]
    nw, nh = ergo_smart_resize(cw, ch, 28, ERGO_MIN, ERGO_MAX)  # ERGO passes width first
    r = np.asarray(demo.crop(box).resize((nw, nh), Image.LANCZOS))
    big.append(("demo_crop_lanczos", "lanczos", list(box), nw, nh, r))
    ip = transformers.AutoProcessor.from_pretrained(MODEL_DIR).image_processor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as qwen_smart_resize
    ph, pw = qwen_smart_resize(H, W, 28, ip.size["shortest_edge"], ip.size["longest_edge"])
    r = torch_resize(np.asarray(demo.convert("RGB")), pw, ph)
    big.append(("demo_processor_torch", "torch", None, pw, ph, r))
    out = []
    for name, fname, box_, w, h, r in big:
        step = 16 if w * h < 2_000_000 else 40
        save_rgb_png(os.path.join(d, name + "_rows.png"), r[::step])
        out.append({"name": name, "src": "assets/demo.jpg", "crop": box_, "width": int(w), "height": int(h),
                    "filter": fname, "rgb_sha256": sha256(r.tobytes()), "row_step": step,
                    "rows_png": "resize/" + name + "_rows.png"})
    manifest["resize_demo"] = out

    # How far Pillow's BICUBIC is from what the fast processor's torchvision resize gives.
    diffs = []
    for name, (w, h) in [("demo_processor_size", (pw, ph)), ("demo_stage1_size", (w1, h1))]:
        p = np.asarray(demo.convert("RGB").resize((w, h), Image.BICUBIC)).astype(int)
        t = torch_resize(np.asarray(demo.convert("RGB")), w, h).astype(int)
        dd = np.abs(p - t)
        diffs.append({"case": name, "width": int(w), "height": int(h), "max_abs": int(dd.max()),
                      "fraction_equal": float((dd == 0).mean())})
    manifest["pillow_vs_torchvision_bicubic"] = diffs


# ----------------------------------------------------------------------------------
# smart_resize
# ----------------------------------------------------------------------------------

def make_smart_resize(manifest):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as qwen

    def run(fn, *a):
        try:
            h, w = fn(*a)
            return [int(h), int(w)]
        except Exception as e:  # noqa: BLE001
            return "error: " + type(e).__name__

    sizes = [(1582, 2246), (2246, 1582), (1500, 2250), (28, 28), (1, 1), (3, 5), (27, 29), (14, 14), (13, 15),
             (50, 10000), (10000, 50), (49, 10000), (20, 100000), (100000, 20), (56, 11200), (28, 5600),
             (4000, 3000), (8192, 8192), (1024, 768), (7, 3000), (3000, 7), (42, 42), (70, 70), (98, 14)]
    rng = np.random.default_rng(3)
    for _ in range(300):
        sizes.append((int(rng.integers(1, 9000)), int(rng.integers(1, 9000))))
    for _ in range(100):
        sizes.append((int(rng.integers(1, 200)), int(rng.integers(1, 200))))
    limits = [(ERGO_MIN, ERGO_MAX), (3136, 12845056), (ERGO_MIN, 256 * 28 * 28), (56 * 56, 28 * 28 * 1280)]
    cases = []
    for (h, w) in sizes:
        for (mn, mx) in limits:
            e = run(ergo_smart_resize, h, w, 28, mn, mx)
            q = run(qwen, h, w, 28, mn, mx)
            c = {"height": h, "width": w, "factor": 28, "min_pixels": mn, "max_pixels": mx, "ergo": e, "qwen": q}
            if isinstance(e, list) and (mn, mx) == (ERGO_MIN, ERGO_MAX):
                # what the processor (its own limits from preprocessor_config.json) makes of
                # an image ERGO already resized
                c["qwen_after_ergo"] = run(qwen, e[0], e[1], 28, 3136, 12845056)
            cases.append(c)
    with open(os.path.join(OUT, "smart_resize.json"), "w") as f:
        json.dump({"versions": versions(), "source": "ERGO src/ergo/utils.py smart_resize; transformers "
                   "models/qwen2_vl/image_processing_qwen2_vl.py smart_resize", "cases": cases}, f, separators=(",", ":"))
        f.write("\n")


# ----------------------------------------------------------------------------------
# Processor output
# ----------------------------------------------------------------------------------

def make_preprocess(manifest):
    d = os.path.join(OUT, "preprocess")
    proc = transformers.AutoProcessor.from_pretrained(MODEL_DIR)
    ip = proc.image_processor
    slow = transformers.AutoImageProcessor.from_pretrained(MODEL_DIR, use_fast=False)
    cases = []
    # (w, h): sides multiples of 28 (no resize) with gh/2, gw/2 odd and even; then
    # sizes the processor resizes itself.
    for w, h, kind in [(56, 56, "sized"), (84, 140, "sized"), (112, 84, "sized"), (168, 56, "sized"),
                       (90, 60, "resized"), (37, 23, "resized")]:
        a = picture(w, h, 0.2, 5)
        name = f"{kind}_{w}x{h}"
        save_rgb_png(os.path.join(d, name + ".png"), a)
        im = Image.open(os.path.join(d, name + ".png"))  # what the test decodes
        out = ip(images=[im], return_tensors="pt")
        pv = out["pixel_values"].numpy().astype("<f4")
        thw = out["image_grid_thw"].numpy().tolist()[0]
        write(os.path.join(d, name + ".pixel_values.f32"), pv.tobytes())
        s = slow(images=[im], return_tensors="pt")["pixel_values"].numpy()
        cases.append({"image": "preprocess/" + name + ".png", "width": w, "height": h,
                      "pixel_values": "preprocess/" + name + ".pixel_values.f32", "shape": list(pv.shape),
                      "image_grid_thw": thw, "processor_resizes": kind == "resized",
                      "slow_processor_max_abs_diff": float(np.abs(s - pv).max())})
    manifest["preprocess"] = cases
    manifest["processor_class"] = type(ip).__name__
    manifest["processor_size"] = dict(ip.size)

    # The demo photo handed straight to the processor (it resizes to its own limits).
    demo = Image.open(DEMO)
    out = ip(images=[demo], return_tensors="pt")
    pv = out["pixel_values"].numpy().astype("<f4")
    step = 409
    write(os.path.join(d, "demo.sampled_rows.f32"), pv[::step].tobytes())
    manifest["preprocess_demo"] = {"image": "assets/demo.jpg", "shape": list(pv.shape),
                                   "image_grid_thw": out["image_grid_thw"].numpy().tolist()[0],
                                   "pixel_values_sha256": sha256(pv.tobytes()), "row_step": step,
                                   "sampled_rows": "preprocess/demo.sampled_rows.f32"}
    # And the ERGO stage-1 image (already a multiple of 28: the processor does not resize).
    W, H = demo.size
    h1, w1 = ergo_smart_resize(H, W, 28, ERGO_MIN, ERGO_MAX)
    st1 = demo.resize((w1, h1), Image.BICUBIC)
    out = ip(images=[st1], return_tensors="pt")
    pv = out["pixel_values"].numpy().astype("<f4")
    write(os.path.join(d, "demo_stage1.sampled_rows.f32"), pv[::step].tobytes())
    manifest["preprocess_demo_stage1"] = {"image": "assets/demo.jpg", "ergo_resize": [w1, h1], "shape": list(pv.shape),
                                          "image_grid_thw": out["image_grid_thw"].numpy().tolist()[0],
                                          "pixel_values_sha256": sha256(pv.tobytes()), "row_step": step,
                                          "sampled_rows": "preprocess/demo_stage1.sampled_rows.f32"}


def make_corpus(inputs):
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    os.makedirs(CORPUS)
    pick = ["jpeg_baseline_420.jpg", "jpeg_progressive_444.jpg", "jpeg_grey.jpg", "jpeg_cmyk_adobe.jpg",
            "jpeg_libjpeg_ycck.jpg", "jpeg_libjpeg_arith.jpg", "jpeg_libjpeg_restart.jpg", "jpeg_1x1.jpg",
            "png_grey1.png", "png_grey16.png", "png_greyalpha16.png", "png_rgb16.png", "png_rgba8.png",
            "png_palette4_trns.png", "png_palette8_short.png", "png_rgba8_3x5_interlaced.png",
            "png_grey16_interlaced.png"]
    for name in pick:
        write(os.path.join(CORPUS, name), inputs[name])
        data = inputs[name]
        write(os.path.join(CORPUS, "truncated_" + name), data[: len(data) * 2 // 3])


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    manifest = {"versions": versions(),
                "generator": "tools/fixtures_image.py",
                "decode_reference": "PIL.Image.open(f).convert('RGB')",
                "resize_reference": "PIL.Image.resize((w, h), filter); torch: torchvision.transforms.v2.functional."
                                    "resize(uint8 CHW, [h, w], BICUBIC, antialias=True)"}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_decode(tmp, manifest)
    make_resize(manifest)
    make_smart_resize(manifest)
    make_preprocess(manifest)
    make_corpus(inputs)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = 0
    for dp, _, fs in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print(f"wrote {OUT}: {total / 1e6:.2f} MB; processor {manifest['processor_class']}")


if __name__ == "__main__":
    sys.exit(main())
