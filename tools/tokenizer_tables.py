#!/usr/bin/env python3
"""Writes src/tokenizer/unicode_tables.c: the Unicode facts where ergo's libraries
(PCRE2 10.42 / utf8proc 2.6, Unicode 14 / 13) and the reference (tokenizers 0.22.1:
Oniguruma with Unicode 16 for its regexes, a Unicode 9-era crate for NFC) disagree.

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/tokenizer_tables.py

What it measures, by asking the reference itself about every code point:
  * the members of Oniguruma's \\s, \\p{L} and \\p{N} (as used by the Split
    pre-tokenizer of tokenizer.json), as ranges; ergo substitutes these for the
    escapes before compiling the pattern with PCRE2;
  * the code points where utf8proc's NFC/NFD differs from the reference's on
    probes that reveal decompositions and non-zero combining classes; ergo treats
    them as inert (no decomposition, combining class 0), as the reference does.
"""
import ctypes
import ctypes.util
import sys

import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers

OUT = "src/tokenizer/unicode_tables.c"
ALL = [c for c in range(0x110000) if not (0xD800 <= c <= 0xDFFF)]


def onig_members(pattern):
    """Code points matched by a one-character Oniguruma pattern, via Split(removed)."""
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
    text = "".join(map(chr, ALL))
    kept = set()
    for piece, _ in split.pre_tokenize_str(text):
        kept.update(map(ord, piece))
    return [c for c in ALL if c not in kept]


def ranges(cps):
    out = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


# ---------------------------------------------------------------- utf8proc via ctypes
lib = ctypes.CDLL(ctypes.util.find_library("utf8proc") or "libutf8proc.so.2")
lib.utf8proc_map.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t,
                             ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
lib.utf8proc_map.restype = ctypes.c_ssize_t
lib.utf8proc_unicode_version.restype = ctypes.c_char_p
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
STABLE, COMPOSE, DECOMPOSE = 1 << 1, 1 << 3, 1 << 4


def u8p(s, opts):
    b = s.encode("utf-8", "surrogatepass")
    out = ctypes.c_void_p()
    n = lib.utf8proc_map(b, len(b), ctypes.byref(out), opts)
    if n < 0:
        raise RuntimeError("utf8proc_map failed")
    r = ctypes.string_at(out, n).decode("utf-8")
    libc.free(out)
    return r


def batch(fn, strings):
    # One call per batch: join with a separator that every normalizer leaves alone.
    sep = "\x00"
    out = fn(sep.join(strings)).split(sep)
    assert len(out) == len(strings)
    return out


def nfc_exceptions():
    cps = [c for c in ALL if c != 0]
    probes = {
        "nfd": lambda c: chr(c),
        "nfc": lambda c: chr(c),
        "after_ccc1": lambda c: chr(c) + "\u0334",   # reorders when ccc(c) > 1
        "before_ccc230": lambda c: "\u0301" + chr(c),  # reorders when 0 < ccc(c) < 230
    }
    ref_nfd, ref_nfc = normalizers.NFD(), normalizers.NFC()
    diff = set()
    for name, mk in probes.items():
        strings = [mk(c) for c in cps]
        if name == "nfc":
            a = batch(ref_nfc.normalize_str, strings)
            b = batch(lambda s: u8p(s, STABLE | COMPOSE), strings)
        else:
            a = batch(ref_nfd.normalize_str, strings)
            b = batch(lambda s: u8p(s, STABLE | DECOMPOSE), strings)
        for c, x, y in zip(cps, a, b):
            if x != y:
                diff.add(c)
    # A composite that only utf8proc knows also composes from its parts; its second
    # part (a new character to the reference) must not compose either.
    for c in sorted(diff):
        d = u8p(chr(c), STABLE | DECOMPOSE)
        if len(d) > 1 and ref_nfd.normalize_str(chr(c)) == chr(c):
            for p in d[1:]:
                if ref_nfd.normalize_str(chr(0x61) + p) == chr(0x61) + p:
                    diff.add(ord(p))
    return sorted(diff)


lib.utf8proc_get_property.argtypes = [ctypes.c_int32]
lib.utf8proc_get_property.restype = ctypes.POINTER(ctypes.c_int16)


def nfc_unstable(inert):
    """Code points >= U+0300 that NFC may change or that may change their
    neighbours (to utf8proc): a non-zero combining class, a canonical
    decomposition, or a non-first part of one (it may compose with what precedes
    it). Text without them is already NFC; nfc_inert ones are left out, as the
    reference leaves them alone."""
    out = set()
    for c in ALL:
        if c < 0x300:
            continue
        ccc = lib.utf8proc_get_property(c)[1]  # category, combining_class, ...
        d = u8p(chr(c), STABLE | DECOMPOSE)
        if ccc != 0 or d != chr(c):
            out.add(c)
        for p in d[1:]:
            out.add(ord(p))
    out.update(range(0x1161, 0x1176))  # Hangul vowel and trailing jamo compose algorithmically
    out.update(range(0x11A8, 0x11C3))
    return sorted(c for c in out if c >= 0x300 and c not in inert)


def c_ranges(name, rs):
    lines = [f"const uint32_t {name}[][2] = {{"]
    row = []
    for a, b in rs:
        row.append(f"{{0x{a:X}, 0x{b:X}}}")
        if len(row) == 6:
            lines.append("    " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("    " + ", ".join(row) + ",")
    lines.append("};")
    lines.append(f"const size_t {name}_n = {len(rs)};")
    return "\n".join(lines)


def main():
    space = ranges(onig_members(r"\s"))
    letter = ranges(onig_members(r"\p{L}"))
    number = ranges(onig_members(r"\p{N}"))
    inert_cps = nfc_exceptions()
    inert = ranges(inert_cps)
    unstable = ranges(nfc_unstable(set(inert_cps)))
    ver = lib.utf8proc_unicode_version().decode()
    body = f"""/*
 * unicode_tables.c - GENERATED by tools/tokenizer_tables.py (do not edit by hand).
 *
 * Unicode facts measured on the reference, tokenizers {tokenizers.__version__}:
 *  - onig_space / onig_letter / onig_number: the code points Oniguruma's \\s, \\p{{L}}
 *    and \\p{{N}} match inside tokenizers (Unicode 16 data; PCRE2 10.42 has Unicode 14,
 *    and its \\s lacks U+0085). pretokenize.c substitutes them into the Split pattern.
 *  - nfc_inert: code points that utf8proc {ver} (Unicode version) decomposes or
 *    gives a non-zero combining class, but the reference's NFC (a Unicode 9-era
 *    table) treats as plain starters. normalize.c splits the text around them.
 *  - nfc_unstable: code points >= U+0300 that NFC may change or that may combine
 *    with a neighbour (to utf8proc), nfc_inert excluded; text without any is NFC.
 */
#include "unicode_tables.h"

const char unicode_tables_utf8proc_version[] = "{ver}";

{c_ranges("onig_space", space)}

{c_ranges("onig_letter", letter)}

{c_ranges("onig_number", number)}

{c_ranges("nfc_inert", inert)}

{c_ranges("nfc_unstable", unstable)}
"""
    with open(OUT, "w") as f:
        f.write(body)
    print(f"{OUT}: space {len(space)} letter {len(letter)} number {len(number)} "
          f"nfc_inert {len(inert)} nfc_unstable {len(unstable)} ranges (utf8proc Unicode {ver})", file=sys.stderr)


if __name__ == "__main__":
    main()
