#!/usr/bin/env python3
"""Reference fixtures for ergo's tokenizer and chat template (tests/fixtures/tokenizer/).

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_tokenizer.py
    /work/venv/bin/python tools/fixtures_tokenizer.py --bench-corpus /tmp/tok-bench.txt
(the second writes a 20 MB mixed text for measuring encoding speed; not a fixture)

Writes
  manifest.json   versions, classes, and what each file holds
  encode.json     [{name, text, ids}]: Qwen2TokenizerFast(text)["input_ids"], checked
                  against tokenizers.Tokenizer.from_file on the same file
  decode.json     [{name, ids, skip_special, text}]: tokenizer.decode(ids, skip_special_tokens)
  normalize.json  [{name, text, nfc}]: tokenizers' NFC normalizer
  case_folds.json {letter: [code points]}: what Oniguruma's (?i:letter) matches in the BMP
  chat.json       [{name, messages, add_generation_prompt, add_vision_id, images, image_tokens,
                    text, ids}]: processor.apply_chat_template(..., tokenize=False) and
                  processor(text=[text], images=images)["input_ids"]
  variants.json   small tokenizer.json files (variants/*.json) exercising the options the
                  Qwen file does not use (string merges, added-token flags, byte fallback,
                  unk, ignore_merges, GPT-2 ByteLevel regex), with their encode/decode results
  configs.json    tokenizer_config.json files for two variants, as AutoTokenizer loads them
                  (Qwen2TokenizerFast): clean_up_tokenization_spaces, split_special_tokens,
                  special tokens, model_max_length; and the configs ergo refuses
and copies the variants into tests/fuzz_corpus/tokenizer/ as fuzzing seeds, with a few
hand-written tiny seeds (two of them followed by a tokenizer_config.json, see
src/tokenizer/tokenizer_fuzz.h).
"""
import copy
import json
import os
import random
import shutil
import sys
import tempfile

import PIL
import tokenizers
import torch
import transformers
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoProcessor, AutoTokenizer

ASSETS = "assets/qwen2.5-vl-tokenizer"
OUT = "tests/fixtures/tokenizer"
FUZZ = "tests/fuzz_corpus/tokenizer"

# ERGO's prompts (spec/ergo-pipeline.md, from src/ergo/const.py of the reference code).
SYSTEM_PROMPT = (
    "You are a helpful assistant. Given an image and one question. First, identify the "
    "coordinates of the key image area relevant to solving the problem. Append the coordinates "
    "in [x1, y1, x2, y2] format at the end of your response and stop. This will trigger cropping "
    "of the corresponding area in the original image and enlarge it for improved clarity. Once "
    "the enlarged image is available, provide the final answer."
)
TEMPLATE1 = (
    "{Question} First, consider how to zoom in on the image to include only the region "
    "containing all the information necessary to answer the question. Output the thinking "
    "process in <think> </think> tags and then output the region's bounding box coordinates in "
    "the following format <zoom>[x1, y1, x2, y2]</zoom> tags."
)
TEMPLATE2 = (
    "{Question}\nCarefully analyze both the original image and the enlarged sub-image to solve "
    "the question step by step. Present your reasoning clearly the following format strictly "
    "<think> ... <think>, and provide the final answer enclosed within <answer> ... </answer>"
)


# ---------------------------------------------------------------- the encode corpus

def corpus():
    c = []

    def add(name, text):
        c.append((name, text))

    add("empty", "")
    add("hello", "Hello world")
    add("sentence", "The quick brown fox jumps over the lazy dog. It's 3:45pm!")
    add("punct", "Wait... what?! (Really) [yes] {no} <maybe> \"quoted\" 'single' -- dash — em…")
    # contractions: every one, every case, glued and spaced
    for w in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]:
        variants = {w, w.upper(), w.title(), w[0] + w[1:].swapcase()}
        for i, v in enumerate(sorted(variants)):
            add(f"contraction{w}{i}", f"it{v} x{v}y {v} {v}{v}")
    add("contractions_sentence", "I'm sure they'll say we've done what you'd've done; don't, WON'T, Can'T.")
    add("contraction_long_s", "it'ſ and IT'ſ and 'ſ alone, 'ſt")
    add("contraction_kelvin", "it'K 'Kelvin 'k 'K")
    add("contraction_dotted_i", "it'İ 'ı 'i")
    add("contraction_quotes", "it’s it‘s it`s it''s ''s")
    add("rocknroll", "rock'n'roll isn't o'clock 'tis")
    # multilingual
    add("chinese", "我们今天去北京天安门广场，看到了很多游客。这是一个测试！")
    add("japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字。ｶﾀｶﾅ")
    add("korean", "안녕하세요, 세계! 한국어 텍스트입니다. 갑니다")
    add("arabic", "مرحبا بالعالم! هذا نص عربي مع أرقام ١٢٣٤ و 5678.")
    add("hebrew", "שלום עולם, זהו טקסט בעברית עם ניקוד: בְּרֵאשִׁית")
    add("hindi", "नमस्ते दुनिया! यह हिंदी पाठ है। क़ ख़ ग़")
    add("thai", "สวัสดีชาวโลก นี่คือข้อความภาษาไทย ๑๒๓")
    add("cyrillic", "Привет, мир! Съешь же ещё этих мягких французских булок. ЁЖ")
    add("greek", "Γειά σου Κόσμε! Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. ΐΰ")
    add("vietnamese", "Tiếng Việt có dấu: Người ta nói rằng, mọi thứ đều ổn.")
    add("turkish", "İstanbul'da ıspanak yedim; I ı İ i")
    add("german", "Straße, Größe, Maß; STRASSE ẞ")
    add("armenian_georgian", "Բարեւ աշխարհ ქართული ენა")
    add("tamil_bengali", "வணக்கம் உலகம் ওহে বিশ্ব")
    add("amharic", "ሰላም ልዑል")
    add("mixed_scripts", "English中文한국어Русскийالعربية123abc")
    # emoji
    add("emoji_basic", "I love 🍕 and 🎉! 😀😃😄")
    add("emoji_zwj", "Family: 👨‍👩‍👧‍👦, couple: 👩‍❤️‍👨, tech: 🧑🏽‍💻")
    add("emoji_flags", "Flags: 🇯🇵🇺🇸🇫🇷🇩🇪 and 🏳️‍🌈 🏴‍☠️")
    add("emoji_skin", "👍👍🏻👍🏼👍🏽👍🏾👍🏿")
    add("emoji_keycap_vs", "1️⃣ #️⃣ ❤️ ❤ ☺️ ©️")
    # code
    add("code_c", "#include <stdio.h>\n\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n")
    add("code_python", "def f(x):\n    if x > 0:\n        return [i ** 2 for i in range(x)]\n    else:\n        return None\n\n\nclass A:\n    pass\n")
    add("code_json", '{"key": [1, 2.5, -3e10, true, null], "nested": {"a": "b"}}')
    add("code_html", "<div class=\"x\"><p>Hello&nbsp;world</p><br/></div>")
    add("code_shell", "for f in *.txt; do echo \"$f\" | grep -E '^[a-z]+$' >> out.log; done")
    add("code_latex", "\\begin{equation} E = mc^2 \\quad \\sum_{i=1}^{n} x_i^2 \\end{equation}")
    add("markdown_table", "| a | b |\n|---|---|\n| 1 | 2 |\n\n- item\n* item\n1. item")
    # whitespace
    for n in [1, 2, 3, 4, 7, 16, 100, 1000]:
        add(f"spaces{n}", "a" + " " * n + "b")
    add("spaces_only", "     ")
    add("spaces_trailing", "word   ")
    add("spaces_leading", "   word")
    add("tabs", "a\tb\t\tc\t\t\t\td")
    add("tabs_spaces_mixed", "a \t \t b\t  \t c  \t")
    add("indent_mixed", "x\n\t  \ty\n  \t\tz\n")
    add("spaces_newline", "a   \nb  \n\n  c")
    # newlines
    add("newline", "line1\nline2")
    add("crlf", "line1\r\nline2\r\nline3")
    add("cr", "line1\rline2\rline3")
    add("newline_runs", "a\n\n\nb\n\n\n\n\n\nc")
    add("newline_mixed", "a\r\r\nb\n\rc\r\n\r\nd\n \n e")
    add("newline_only", "\n\n\n")
    add("newline_punct", "end.\n\n(new)\r\n!!\n")
    add("vt_ff", "a\x0bb\x0cc \x0b \x0c d")
    # digits
    add("digits", "1234567890")
    add("digits_long", "3141592653589793238462643383279502884197169399375105820974944592307816406286")
    add("numbers", "3.14159 1,000,000 -42 +7 1e-9 0x1F 0b1010 12:30 2024-01-31")
    add("digits_fullwidth", "２０２４年１２月")
    add("digits_arabic_indic", "١٢٣٤٥ ۱۲۳ ٠")
    add("digits_other", "x² ½ Ⅻ ⅷ ① ߁ 𝟙")
    # special tokens
    add("special_chat", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    add("special_glued", "abc<|im_start|>def<|im_end|>ghi")
    add("special_image_pad", "<|vision_start|>" + "<|image_pad|>" * 12 + "<|vision_end|>")
    add("special_adjacent", "<|im_start|><|im_end|><|endoftext|><|object_ref_start|><|box_end|>")
    add("special_partial", "<|im_sta <|im_start <|im_start| <|im_start|>> <<|im_end|>> |im_end|> <|im_end")
    add("special_case", "<|IM_START|> <|Im_start|> < |im_start|>")
    add("special_spaces", " <|im_end|> \n<|im_end|>\n <|endoftext|>  ")
    add("special_nonspecial", "<tool_call>{\"name\": \"f\"}</tool_call><|fim_prefix|>x<|fim_middle|>y<|fim_suffix|>z<|fim_pad|><|repo_name|>r<|file_sep|>")
    add("special_think", "<think> reasoning </think><zoom>[10, 20, 30, 40]</zoom><answer>B</answer>")
    add("special_video", "<|vision_start|><|video_pad|><|vision_end|><|vision_pad|><|quad_start|><|quad_end|>")
    # NFC
    add("nfc_decomposed", "Cafe\u0301 re\u0301sume\u0301 nai\u0308ve A\u030A")
    add("nfc_singletons", "\u212B \u2126 \u212A \u0340\u0341 \u037E")
    add("nfc_hangul_jamo", "\u1100\u1161\u11A8 \u1112\u1161\u11AB\u1100\u116E\u11AF \u1100\u1161")
    add("nfc_reorder", "a\u0328\u0301 a\u0301\u0328 q\u0307\u0323 \u1E9B\u0323")
    add("nfc_exclusion", "\u0915\u093C \u0958 \u2ADC \u2ADD\u0338")
    add("nfc_vietnamese", "Vie\u0323\u0302t Nam ho\u0302\u0300 Chi\u0301 Minh")
    add("nfc_inert_new_marks", "a\u0898b \u08CA\u0301 x\u1ABF\u0301 \U00011935\U00011930 \u0C3C\u0C3C")
    add("nfc_ligature", "ﬁ ﬀ ﬃ ℌ ① ㎏")
    # unusual spaces and invisibles
    add("nbsp", "a\u00a0b \u00a0 c\u00a0\u00a0d")
    add("unicode_spaces", "a\u2000b\u2001c\u2002d\u2003e\u2004f\u2005g\u2006h\u2007i\u2008j\u2009k\u200al")
    add("ideographic_space", "日本\u3000語 \u3000 x\u3000\u3000y")
    add("nel", "a\u0085b \u0085 c\u0085\u0085d\u0085")
    add("line_para_sep", "a\u2028b\u2029c \u2028 d")
    add("zero_width", "a\u200bb\u200cc\u200dd\ufeffe \u200b f")
    add("bom_start", "\ufeffHello")
    add("other_spaces", "a\u1680b\u180ec\u202fd\u205fe \u205f f")
    add("spaces_before_newline_unicode", "a\u3000\nb\u00a0\r\nc\u2028\n")
    # newest letters (Unicode 15/16 in Oniguruma, unknown to PCRE2 10.42)
    add("new_letters", "a\U00031350b x\U00011F04y a\U0001E4D0b z\U0001E5D0w")
    # misc
    add("url_email", "Visit https://example.com/path?q=1&r=2#frag or mail foo.bar+baz@ex.co.uk")
    add("hashtags", "#hashtag @mention $VAR %PATH% ~user ^caret")
    add("math", "∑_{i=1}^n x_i² ≤ ∞, ∀x∈ℝ: √x ≥ 0 → ∂f/∂x ≠ 0")
    add("currency", "€100 ¥200 $3.50 £4 ₹5 ₿0.1")
    add("box_braille", "┌─┐│ │└─┘ ⠓⠑⠇⠇⠕")
    add("controls", "a\x00b\x01c\x02\x7f\x1b[0m")
    add("byte_level_chars", "ĠĊ ĉ Ā ā Ń ń ġ")
    add("private_use", "\ue000\U000f0000\U0010fffd")
    add("noncharacters", "\ufffe\uffff\U0010ffff \ufffd")
    add("replacement_char", "bad \ufffd byte")
    add("repeated_chars", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + "!" * 50 + "=" * 80)
    add("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis" * 5)
    add("ergo_question", TEMPLATE1.format(Question="Is the orange luggage on the left or right side of the purple umbrella?"))
    add("ergo_template2", TEMPLATE2.format(Question="What color is the car?\n(A) red\n(B) blue\nAnswer with the option's letter from the given choices directly."))
    add("ergo_system", SYSTEM_PROMPT)
    add("long_text", long_text())
    return c


def long_text():
    rnd = random.Random(1234)
    paras = [
        "The committee met on {d} to review {n} proposals. It's clear they'll need more time.",
        "数据显示，{n}个城市的人口在{d}年增长了{p}%。",
        "def process_{n}(items):\n    total = 0\n    for item in items:\n        total += item * {p}\n    return total\n",
        "Température: {p}°C — «très chaud» à {d}.",
        "Москва, {d}: температура {p} градусов. Ёлка!",
        "👍🏽 {n} likes · 🇯🇵 · 👨‍👩‍👧 family of {p}",
        "   indented line with trailing spaces   \t\n\n",
        "<|im_start|>user\nQuestion {n}?<|im_end|>\n",
        "مرحبا {n} مرة في {d}.",
        "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ {n} ＡＢＣ",
    ]
    out = []
    size = 0
    while size < 50_000:
        t = rnd.choice(paras).format(d=f"{rnd.randint(1900, 2100)}-{rnd.randint(1, 12):02d}",
                                     n=rnd.randint(0, 10 ** rnd.randint(1, 9)),
                                     p=round(rnd.uniform(-50, 150), rnd.randint(0, 4)))
        out.append(t)
        out.append(rnd.choice([" ", "\n", "\n\n", "  ", "\r\n", "\t"]))
        size += len(t.encode()) + 1
    return "".join(out)


# ---------------------------------------------------------------- decode cases

def decode_cases(tok):
    cases = []

    def byte_ids(bs):
        # one id per byte: the byte-level character of each byte
        from_bytes = bytes_to_unicode()
        return [tok.convert_tokens_to_ids(from_bytes[b]) for b in bs]

    def add(name, ids):
        for skip in (False, True):
            cases.append({"name": name, "ids": ids, "skip_special": skip,
                          "text": tok.decode(ids, skip_special_tokens=skip)})

    add("chat", tok("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    add("specials_mixed", tok("<tool_call>x</tool_call><|endoftext|><|fim_pad|>a<|image_pad|>")["input_ids"])
    add("multilingual", tok("我们 Привет مرحبا 😀👨‍👩‍👧 e\u0301")["input_ids"])
    add("spaces", tok("  a\t\n\n   b   ")["input_ids"])
    add("empty", [])
    emoji = "😀".encode()
    add("emoji_bytes_in_order", byte_ids(emoji))
    add("emoji_bytes_truncated", byte_ids(emoji[:3]))
    add("emoji_bytes_reversed", byte_ids(emoji[::-1]))
    add("emoji_bytes_rotated", byte_ids(emoji[3:] + emoji[:3]))
    add("emoji_split_by_text", byte_ids(emoji[:2]) + tok("A")["input_ids"] + byte_ids(emoji[2:]))
    add("emoji_split_by_special", byte_ids(emoji[:2]) + [tok.convert_tokens_to_ids("<|im_end|>")] + byte_ids(emoji[2:]))
    add("euro_then_partial", byte_ids("€".encode() + emoji[:1]))
    add("overlong", byte_ids(b"\xc0\x80 \xe0\x80\x80 \xf0\x80\x80\x80"))
    add("surrogate_bytes", byte_ids(b"\xed\xa0\x80x\xed\xbf\xbf"))
    add("above_max", byte_ids(b"\xf4\x90\x80\x80\xf5\xff\xfe"))
    add("lone_continuations", byte_ids(b"\x80\xbf\x80a\xbf"))
    add("truncated_sequences", byte_ids(b"\xe2\x82 \xf0\x9f\x98 \xe2"))
    add("all_bytes", byte_ids(bytes(range(256))))
    add("cjk_split", byte_ids("中文".encode()[:4]) + byte_ids("中文".encode()[4:]))
    return cases


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ---------------------------------------------------------------- NFC cases

def normalize_cases():
    nfc = normalizers.NFC()
    rnd = random.Random(7)
    marks = ["\u0301", "\u0300", "\u0328", "\u0323", "\u0334", "\u0898", "\u08CA", "\u1ABF", "\u0C3C",
             "\u05B0", "\u0F72", "\u1DCE", "\u0345", "\u302A", "\u3099", "\u093C", "\u0338"]
    bases = ["a", "e", "o", "A", "\u1100", "\u1161", "\u11A8", "\u0915", "\u3046", "\U00011935", "\U00011930",
             "\u00e9", "\u212B", " ", "\u0398"]
    cases = []
    for i in range(200):
        s = "".join(rnd.choice(bases + marks) for _ in range(rnd.randint(1, 8)))
        cases.append({"name": f"random{i}", "text": s, "nfc": nfc.normalize_str(s)})
    # A wider pool: marks of many blocks, composition parts with combining class 0,
    # Hangul jamo and syllables, decomposable letters, inert characters, CJK.
    def span(a, b, step=1):
        return [chr(c) for c in range(a, b + 1, step)]
    pool = (span(0x300, 0x36F, 3) + span(0x591, 0x5C7, 5) + span(0x610, 0x61A, 2) + span(0x64B, 0x65F, 3) +
            span(0x93C, 0x94D, 3) + span(0x1AB0, 0x1ACE, 4) + span(0x1DC0, 0x1DFF, 5) + span(0x20D0, 0x20F0, 4) +
            span(0x302A, 0x302F) + ["\u3099", "\u309A", "\uFE20", "\uFE2F"] +
            [chr(c) for c in [0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57, 0x0DCF,
                              0x0DDF, 0x102E, 0x1B35, 0x0C56, 0x09BE, 0x09D7, 0x11127, 0x1133E, 0x11357,
                              0x0B47, 0x0BC6, 0x0BC7, 0x0CBF, 0x0CC6, 0x0D46, 0x0D47, 0x0DD9, 0x1025, 0x1B05,
                              0x0C46, 0x09C7, 0x11131, 0x11347, 0x0F71, 0x0F72, 0x0F74, 0x0F80, 0x0FB5]] +
            span(0x1100, 0x1112, 3) + span(0x1161, 0x1175, 3) + span(0x11A8, 0x11C2, 4) +
            ["\uAC00", "\uAC01", "\uD7A3", "\uAE4C"] + span(0xC0, 0xFF, 7) + span(0x1E00, 0x1EFF, 17) +
            ["\u212B", "\u2126", "\u212A", "\uF900", "\u2ADC", "\u0344", "\u0F73", "\u1F71"] +
            ["\u0898", "\u08CA", "\u1ABF", "\u0C3C", "\U00011930", "\U00011935"] +
            list("aeiouAEIOU kn") + ["\u4e2d", "\u3042", "\u0627", "\u05d0", "\u0915", "\u0e01", "\U0001F600"])
    for i in range(400):
        s = "".join(rnd.choice(pool) for _ in range(rnd.randint(1, 12)))
        cases.append({"name": f"pool{i}", "text": s, "nfc": nfc.normalize_str(s)})
    return cases


# ---------------------------------------------------------------- regex case folding

def case_folds():
    """For each letter of the contractions, the BMP characters Oniguruma's (?i:x)
    matches (e.g. s: S, s and the long s U+017F)."""
    bmp = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, bmp))
    out = {}
    for letter in "strevmld":
        split = pre_tokenizers.Split(tokenizers.Regex(f"(?i:{letter})"), behavior="removed")
        kept = set()
        for piece, _ in split.pre_tokenize_str(text):
            kept.update(map(ord, piece))
        out[letter] = [c for c in bmp if c not in kept]
    return out


# ---------------------------------------------------------------- chat cases

def chat_cases():
    q = "Is the orange luggage on the left or right side of the purple umbrella?"
    r1 = ("<think>The luggage and the umbrella are in the lower half.</think> "
          "<zoom>[120, 340, 560, 610]</zoom>")
    full_q = "What is the color of the bag?\n(A) red\n(B) orange\nAnswer with the option's letter from the given choices directly."
    img = lambda w, h: {"type": "image", "width": w, "height": h}
    txt = lambda t: {"type": "text", "text": t}
    return [
        {"name": "single_image_text", "add_generation_prompt": True,
         "messages": [{"role": "user", "content": [img(56, 56), txt("Describe this image.")]}]},
        {"name": "two_images_text", "add_generation_prompt": True,
         "messages": [{"role": "user", "content": [img(84, 140), img(28, 280), txt("Compare the two images.")]}]},
        {"name": "ergo_stage1", "add_generation_prompt": True,
         "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": [img(140, 84), txt(TEMPLATE1.format(Question=q))]}]},
        {"name": "ergo_stage2", "add_generation_prompt": True,
         "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": [img(140, 84), txt(TEMPLATE1.format(Question=q))]},
                      {"role": "assistant", "content": r1},
                      {"role": "user", "content": [img(56, 112), txt(TEMPLATE2.format(Question=full_q))]}]},
        {"name": "text_only_string", "add_generation_prompt": True,
         "messages": [{"role": "user", "content": "What is 2 + 2?"}]},
        {"name": "user_system_prompt", "add_generation_prompt": True,
         "messages": [{"role": "system", "content": "You are a pirate. Answer in pirate speak."},
                      {"role": "user", "content": "Where is the treasure?"}]},
        {"name": "no_generation_prompt", "add_generation_prompt": False,
         "messages": [{"role": "user", "content": [img(56, 56), txt("Hi")]},
                      {"role": "assistant", "content": "Hello! How can I help?"}]},
        {"name": "text_before_image", "add_generation_prompt": True,
         "messages": [{"role": "user", "content": [txt("Look at this: "), img(28, 280), txt(" What is it?")]}]},
        {"name": "system_as_list", "add_generation_prompt": True,
         "messages": [{"role": "system", "content": [txt("Be brief.")]},
                      {"role": "user", "content": [txt("Name a colour."), txt(" Just one.")]}]},
        {"name": "assistant_list_multi_turn", "add_generation_prompt": True,
         "messages": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": [txt("Hello")]},
                      {"role": "user", "content": [img(84, 140), txt("And this?")]},
                      {"role": "assistant", "content": "A picture."},
                      {"role": "user", "content": "Thanks\n"}]},
        {"name": "vision_ids", "add_generation_prompt": True, "add_vision_id": True,
         "messages": [{"role": "user", "content": [img(56, 56), txt("first")]},
                      {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": [img(28, 280), img(84, 140), txt("second and third")]}]},
        {"name": "images_only", "add_generation_prompt": True,
         "messages": [{"role": "user", "content": [img(56, 56), img(56, 56)]}]},
        {"name": "empty_and_special_text", "add_generation_prompt": False,
         "messages": [{"role": "user", "content": ""},
                      {"role": "assistant", "content": "x<|im_end|>y <|endoftext|>"}]},
        {"name": "unicode_text", "add_generation_prompt": True,
         "messages": [{"role": "user", "content": [img(84, 140), txt("这是什么？ 🤔 e\u0301\n\n  ")]}]},
    ]


def run_chat(processor):
    out = []
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (250, 250, 250)]
    for k, case in enumerate(chat_cases()):
        msgs = copy.deepcopy(case["messages"])
        images = []
        for m in msgs:
            if isinstance(m["content"], list):
                for part in m["content"]:
                    if part["type"] == "image":
                        images.append(Image.new("RGB", (part["width"], part["height"]),
                                                colours[len(images) % len(colours)]))
        kw = {}
        if case.get("add_vision_id"):
            kw["add_vision_id"] = True
        text = processor.apply_chat_template(msgs, tokenize=False,
                                             add_generation_prompt=case["add_generation_prompt"], **kw)
        enc = processor(text=[text], images=images or None)
        ids = enc["input_ids"][0]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        merge = processor.image_processor.merge_size ** 2
        grids = enc["image_grid_thw"].tolist() if images else []
        ntok = [int(t * h * w // merge) for t, h, w in grids]
        out.append({**case, "add_vision_id": bool(case.get("add_vision_id")), "image_grids": grids,
                    "image_tokens": ntok, "text": text, "ids": ids})
    return out


# ---------------------------------------------------------------- variants

QWEN_SPLIT = json.load(open(os.path.join(ASSETS, "tokenizer.json")))["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's fine, they'll see.",
    "héllo wörld café naïve résumé über straße",
    "def main():\n    return 0\n\nint x = 42;\n",
    "Привет мир 你好 世界 😀 👍🏽",
    "    spaces and\ttabs\n\nnewlines 1234567890",
] * 20


def base_variant():
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(TRAIN_TEXT, trainer)
    return json.loads(tk.to_str())


def with_added(d):
    tk = Tokenizer.from_str(json.dumps(d))
    tk.add_special_tokens([AddedToken("<|s|>", special=True, normalized=False),
                           AddedToken("[L]", special=True, lstrip=True, normalized=False),
                           AddedToken("[R]", special=True, rstrip=True, normalized=False),
                           AddedToken("[LR]", special=True, lstrip=True, rstrip=True, normalized=False)])
    tk.add_tokens([AddedToken("word", single_word=True, normalized=False),
                   AddedToken("ca\u0301fe", normalized=True),          # matched after NFC as "café"
                   AddedToken("e\u0301", normalized=False),             # raw only: never after NFC
                   AddedToken("héllo wörld", normalized=False),         # has a space: decodes raw
                   AddedToken("the", normalized=False),                 # already in the vocabulary
                   AddedToken("<sw>", single_word=True, lstrip=True, normalized=False)])
    return json.loads(tk.to_str())


VARIANT_TEXTS = [
    "", "Hello world", "The quick brown fox", "héllo wörld and he\u0301llo wo\u0308rld",
    "ca\u0301fe café cafe\u0301 CAFÉ", "e\u0301 é", "a<|s|>b <|s|> <|s|", "x  [L]y  \t[L] [L][L]",
    "[R]   z [R]\n\nw", "  [LR]  q", "word words sword word, _word wordé 1word",
    "a <sw> b a<sw>b  <sw>", "the them bathe", "Привет 你好 😀 👍🏽 ZZZ ~~~ \u00a0\u3000",
    "it's IT'S they'll 1234567890", "\t\n\r\n  \n", "ſ ǅ ẞ",
]


def make_variants():
    base = base_variant()
    added = with_added(base)
    vs = {}
    vs["pairs"] = added
    v = copy.deepcopy(added)
    v["model"]["merges"] = [" ".join(m) for m in v["model"]["merges"]]
    vs["string_merges"] = v
    v = copy.deepcopy(base)
    v["model"]["ignore_merges"] = True
    vs["ignore_merges"] = v
    # vocabularies missing some byte characters
    alphabet = bytes_to_unicode()
    missing = {alphabet[b] for b in "ZQ~€😀".encode()} | {alphabet[b] for b in "你".encode()}

    def drop_chars(d):
        voc = d["model"]["vocab"]
        bad = {t for t in voc if any(ch in missing for ch in t)}
        keep = [t for t in sorted(voc, key=voc.get) if t not in bad]
        d["model"]["vocab"] = {t: i for i, t in enumerate(keep)}
        d["model"]["merges"] = [m for m in d["model"]["merges"]
                                if m[0] not in bad and m[1] not in bad and (m[0] + m[1]) not in bad]
        return d
    v = drop_chars(copy.deepcopy(base))
    vs["dropped_chars"] = v
    v = drop_chars(copy.deepcopy(base))
    v["model"]["vocab"]["<unk>"] = len(v["model"]["vocab"])
    v["model"]["unk_token"] = "<unk>"
    vs["unk"] = v
    v = copy.deepcopy(vs["unk"])
    v["model"]["fuse_unk"] = True
    vs["unk_fused"] = v
    v = drop_chars(copy.deepcopy(base))
    n = len(v["model"]["vocab"])
    for b in range(256):
        v["model"]["vocab"][f"<0x{b:02X}>"] = n + b
    v["model"]["byte_fallback"] = True
    vs["byte_fallback"] = v
    v = copy.deepcopy(vs["byte_fallback"])
    v["model"]["unk_token"] = "<unk>"
    v["model"]["vocab"]["<unk>"] = len(v["model"]["vocab"])
    for b in [0xF0, 0x9F]:  # some fallbacks missing: those characters go to unk instead
        del v["model"]["vocab"][f"<0x{b:02X}>"]
    vs["byte_fallback_unk"] = v
    v = copy.deepcopy(base)
    v["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    vs["gpt2_bytelevel"] = v
    v = copy.deepcopy(base)
    v["normalizer"] = None
    vs["no_normalizer"] = v
    v = copy.deepcopy(base)
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"String": "o"}
    vs["split_string"] = v
    v = copy.deepcopy(base)
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": "(?=[A-Z])|x*|\\b"}
    vs["split_empty_matches"] = v
    v = copy.deepcopy(base)
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": "\\h+|\\pL+|\\PN{2}|^ |\\S\\s$"}
    vs["split_onig_escapes"] = v
    return vs


def run_variants():
    os.makedirs(os.path.join(OUT, "variants"), exist_ok=True)
    result = []
    for name, d in make_variants().items():
        path = os.path.join(OUT, "variants", name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(d, f, ensure_ascii=False, indent=1)
        tk = Tokenizer.from_file(path)
        enc = [{"text": t, "ids": tk.encode(t).ids} for t in VARIANT_TEXTS]
        ids_all = sorted(set(range(tk.get_vocab_size(with_added_tokens=True))))
        dec = []
        rnd = random.Random(len(name))
        for k in range(6):
            ids = [rnd.choice(ids_all) for _ in range(rnd.randint(0, 12))]
            for skip in (False, True):
                dec.append({"ids": ids, "skip_special": skip, "text": tk.decode(ids, skip_special_tokens=skip)})
        for e in enc[:8]:
            dec.append({"ids": e["ids"], "skip_special": True, "text": tk.decode(e["ids"], skip_special_tokens=True)})
        result.append({"name": name, "file": f"variants/{name}.json", "encode": enc, "decode": dec})
    return result


# ---------------------------------------------------------------- tokenizer_config.json

# Texts whose decode clean_up_tokenization changes (" ." " ?" " !" " ," " ' " " n't" " 'm"
# " 's" " 've" " 're"), including overlaps between the replacements.
CLEAN_TEXTS = [
    "Hello , world . Is it ? Yes ! ok",
    "it 's I 'm we 've they 're don n't ' quoted ' s",
    " ' ' ' x ' 's ' 'm  n't .  . ,, ?? !!",
    "a . b .. c , d ' e 'se 'ree 'vee n'tn't",
    "  .x ' . ' , ' 're' 've'",
]


def config_base(d):
    """A tokenizer_config.json for a variant shaped like Qwen's (tokenizer_class, the
    special tokens, added_tokens_decoder equal to tokenizer.json's)."""
    return {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in d["added_tokens"]},
        "additional_special_tokens": ["<|s|>", "[L]"],
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|s|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|s|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


def config_cases(vs):
    pairs, gpt2 = vs["pairs"], vs["gpt2_bytelevel"]
    b = config_base(pairs)
    no_atd = {k: v for k, v in b.items() if k != "added_tokens_decoder"}
    atd_flags = copy.deepcopy(b["added_tokens_decoder"])
    atd_flags[next(k for k, v in atd_flags.items() if v["content"] == "[L]")]["lstrip"] = False
    # a named special token missing from added_tokens_decoder is not re-added, so stays as it is
    atd_partial = {k: v for k, v in b["added_tokens_decoder"].items() if v["content"] != "word"}
    atd_extra = dict(b["added_tokens_decoder"], **{"500": {"content": "<extra>", "special": True}})
    accepted = [
        ("qwen_like", "pairs", b),
        ("clean_up", "pairs", dict(b, clean_up_tokenization_spaces=True)),
        ("split_special", "pairs", dict(b, split_special_tokens=True)),
        # non-special added tokens named as special tokens become special (one normalized)
        ("promoted", "pairs", dict(b, additional_special_tokens=["<|s|>", "word", "ca\u0301fe"],
                                   added_tokens_decoder=None)),
        ("promoted_split", "pairs", dict(no_atd, additional_special_tokens=["word", "ca\u0301fe"],
                                         extra_special_tokens={"image_token": "<sw>"},
                                         split_special_tokens=True)),
        ("decoder_partial", "pairs", dict(b, added_tokens_decoder=atd_partial,
                                          additional_special_tokens=["<|s|>", "word"])),
        # settings Qwen2TokenizerFast does not act on
        ("bos_eos_ignored", "pairs", dict(b, add_bos_token=True, add_eos_token=True, bos_token="[R]")),
        ("prefix_space_sequence", "pairs", dict(b, add_prefix_space=True)),
        ("mask_dict", "pairs", dict(b, mask_token={"__type": "AddedToken", "content": "[LR]", "lstrip": False,
                                                   "rstrip": False, "normalized": True, "single_word": False})),
        ("huge_max_length", "pairs", dict(no_atd, model_max_length=1000000000000000019884624838656)),
        ("max_len_alias", "pairs", dict({k: v for k, v in no_atd.items() if k != "model_max_length"}, max_len=77)),
        ("no_max_length", "pairs", {k: v for k, v in no_atd.items() if k != "model_max_length"}),
        ("gpt2_bytelevel", "gpt2_bytelevel",
         {"tokenizer_class": "Qwen2TokenizerFast", "eos_token": None, "pad_token": None, "unk_token": None,
          "add_prefix_space": False, "clean_up_tokenization_spaces": True}),
    ]
    refused = [
        ("new_special", "pairs", dict(b, additional_special_tokens=["<new>"])),
        ("vocab_special", "pairs", dict(b, eos_token="ab")),
        ("default_specials", "pairs", {"tokenizer_class": "Qwen2Tokenizer"}),
        ("decoder_flags", "pairs", dict(b, added_tokens_decoder=atd_flags)),
        ("decoder_extra", "pairs", dict(b, added_tokens_decoder=atd_extra)),
        ("additional_dict_flags", "pairs",
         dict(b, additional_special_tokens=[{"__type": "AddedToken", "content": "[L]", "lstrip": False}])),
        ("other_class", "pairs", dict(b, tokenizer_class="GPT2Tokenizer")),
        ("prefix_space_bytelevel", "gpt2_bytelevel",
         {"tokenizer_class": "Qwen2Tokenizer", "eos_token": None, "pad_token": None, "unk_token": None,
          "add_prefix_space": True}),
    ]
    for _, _, c in accepted + refused:
        if c.get("added_tokens_decoder", 0) is None:
            del c["added_tokens_decoder"]
    return accepted, refused


def reference_results(tk, texts):
    """What a transformers tokenizer does with the variant texts: ids, decodes, specials."""
    enc = [{"text": t, "ids": tk(t)["input_ids"]} for t in texts]
    n = len(tk)
    rnd = random.Random(n)
    dec = []
    for e in enc:
        for skip in (False, True):
            dec.append({"ids": e["ids"], "skip_special": skip, "text": tk.decode(e["ids"], skip_special_tokens=skip)})
    for k in range(6):
        ids = [rnd.randrange(n) for _ in range(rnd.randint(1, 16))]
        for skip in (False, True):
            dec.append({"ids": ids, "skip_special": skip, "text": tk.decode(ids, skip_special_tokens=skip)})
    added = sorted(tk._tokenizer.get_added_tokens_decoder())
    special = [i for i in added if tk._tokenizer.decode([i], skip_special_tokens=True) == ""]
    return {"encode": enc, "decode": dec, "special_ids": special}


def run_configs(vs, tmp):
    """Variant tokenizer.json + tokenizer_config.json in a folder, loaded the way
    ergo's reference loads Qwen (AutoTokenizer.from_pretrained)."""
    accepted, refused = config_cases(vs)
    texts = VARIANT_TEXTS + CLEAN_TEXTS + ["a word b <sw> c ca\u0301fe [L] [R] [LR] <|s|>"]

    def load(name, variant, cfg):
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(OUT, "variants", variant + ".json"), os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False)
        return AutoTokenizer.from_pretrained(d)

    cases = []
    for name, variant, cfg in accepted:
        tk = load(name, variant, cfg)
        assert type(tk).__name__ == "Qwen2TokenizerFast", name
        r = reference_results(tk, texts)
        mml = tk.model_max_length
        # the config as text: model_max_length may be int(1e30), beyond jansson's integers
        cases.append({"name": name, "file": f"variants/{variant}.json",
                      "config_text": json.dumps(cfg, ensure_ascii=False),
                      "model_max_length": mml if mml < 2**63 else None,
                      "clean_up_tokenization_spaces": bool(tk.clean_up_tokenization_spaces),
                      "split_special_tokens": bool(tk.split_special_tokens), **r})
    # Each refused config really changes what the reference does (else ergo should accept it).
    out_refused = []
    for name, variant, cfg in refused:
        plain = reference_results(AutoTokenizer.from_pretrained(os.path.join(tmp, "qwen_like" if variant == "pairs" else "gpt2_bytelevel")), texts)
        tk = load(name, variant, cfg)
        r = reference_results(tk, texts)
        changed = type(tk).__name__ != "Qwen2TokenizerFast" or r != plain
        assert changed, f"{name}: the reference does not change; ergo should accept it"
        out_refused.append({"name": name, "file": f"variants/{variant}.json",
                            "config_text": json.dumps(cfg, ensure_ascii=False),
                            "reference_class": type(tk).__name__})
    return {"cases": cases, "refused": out_refused}


# ---------------------------------------------------------------- tiny fuzzing seeds

def write_tiny_seeds():
    """Hand-written tokenizer.json files of a few hundred bytes: the fuzzer mutates
    small inputs far better than the 13 KB variants. Each must load in tokenizers."""
    def added(i, content, **flags):
        d = {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": False}
        d.update(flags)
        return d
    split = {"type": "Split", "pattern": {"Regex": "\\s+|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Isolated", "invert": False}
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    vocab = {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120a": 4, "c": 5, "abc": 6, "1": 7}
    seeds = {
        "tiny": {"version": "1.0", "added_tokens": [added(8, "<s>", special=True)],
                 "normalizer": {"type": "NFC"},
                 "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, bl]},
                 "post_processor": None, "decoder": bl,
                 "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", "\u0120 a", "ab c"]}},
        "tiny_flags": {"version": "1.0",
                       "added_tokens": [added(8, "[L]", lstrip=True, special=True), added(9, "[R]", rstrip=True),
                                        added(10, "w", single_word=True), added(11, "e\u0301", normalized=True)],
                       "normalizer": {"type": "NFC"},
                       "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, bl]},
                       "decoder": bl,
                       "model": {"type": "BPE", "unk_token": "c", "fuse_unk": True, "vocab": vocab,
                                 "merges": [["a", "b"], ["\u0120", "a"], ["ab", "c"]]}},
        "tiny_gpt2": {"version": "1.0", "added_tokens": [], "normalizer": None,
                      "pre_tokenizer": dict(bl, use_regex=True),
                      "decoder": bl,
                      "model": {"type": "BPE", "byte_fallback": True, "ignore_merges": True,
                                "vocab": dict(vocab, **{"<0xC4>": 8, "<0xA0>": 9}), "merges": ["a b"]}},
    }
    for name, d in seeds.items():
        text = json.dumps(d, ensure_ascii=False)
        Tokenizer.from_str(text).encode("ab abc a1 [L] w e\u0301 <s>")  # the reference accepts it
        with open(os.path.join(FUZZ, name + ".json"), "w", encoding="utf-8") as f:
            f.write(text)
    # tokenizer.json + "\n#tokenizer_config.json\n" + tokenizer_config.json (see tokenizer_fuzz.h)
    configs = {
        "tiny_config": ("tiny", {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<s>", "pad_token": None,
                                 "unk_token": None, "clean_up_tokenization_spaces": True,
                                 "model_max_length": 64, "additional_special_tokens": ["<s>"],
                                 "added_tokens_decoder": {"8": added(8, "<s>", special=True) | {"id": None}}}),
        "tiny_flags_config": ("tiny_flags", {"tokenizer_class": "Qwen2TokenizerFast", "eos_token": "[L]",
                                             "pad_token": {"__type": "AddedToken", "content": "[R]"},
                                             "unk_token": None, "split_special_tokens": True,
                                             "extra_special_tokens": {"x": "w"}, "max_len": 9}),
    }
    for name, (base, cfg) in configs.items():
        for t in cfg.get("added_tokens_decoder", {}).values():
            t.pop("id")
        with tempfile.TemporaryDirectory() as tmp:  # the reference loads it
            with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(seeds[base], f, ensure_ascii=False)
            with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump(cfg, f, ensure_ascii=False)
            AutoTokenizer.from_pretrained(tmp)("ab abc a1 [L] w e\u0301 <s>")
        with open(os.path.join(FUZZ, name + ".json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(seeds[base], ensure_ascii=False) + "\n#tokenizer_config.json\n" +
                    json.dumps(cfg, ensure_ascii=False))


# ---------------------------------------------------------------- main

def dump(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=0)
        f.write("\n")


def bench_corpus(path, megabytes=20):
    """A large mixed text for measuring encoding speed (not a fixture)."""
    rnd = random.Random(99)
    texts = [t for _, t in corpus() if t]
    seps = [" ", "\n", "\n\n", "\t", "  "]
    out, size = [], 0
    while size < megabytes * 1_000_000:
        t = rnd.choice(texts)
        out.append(t)
        out.append(rnd.choice(seps))
        size += len(t.encode()) + 1
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(out))
    print(f"{path}: {size / 1e6:.1f} MB", file=sys.stderr)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--bench-corpus":
        bench_corpus(sys.argv[2])
        return
    os.makedirs(OUT, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(ASSETS)
    core = Tokenizer.from_file(os.path.join(ASSETS, "tokenizer.json"))
    processor = AutoProcessor.from_pretrained(ASSETS)

    enc = []
    for name, text in corpus():
        ids = tok(text)["input_ids"]
        ids2 = core.encode(text).ids
        assert ids == ids2, f"{name}: transformers and tokenizers disagree"
        enc.append({"name": name, "text": text, "ids": ids})
    assert len({e["name"] for e in enc}) == len(enc)
    dump("encode.json", enc)
    dump("decode.json", decode_cases(tok))
    dump("normalize.json", normalize_cases())
    dump("case_folds.json", case_folds())
    chat = run_chat(processor)
    dump("chat.json", chat)
    variants = run_variants()
    dump("variants.json", variants)
    with tempfile.TemporaryDirectory() as tmp:
        configs = run_configs(make_variants(), tmp)
    configs["qwen"] = {"model_max_length": tok.model_max_length,
                       "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
                       "split_special_tokens": tok.split_special_tokens}
    dump("configs.json", configs)

    os.makedirs(FUZZ, exist_ok=True)
    write_tiny_seeds()
    for v in variants:
        shutil.copy(os.path.join(OUT, v["file"]), os.path.join(FUZZ, "variant_" + v["name"] + ".json"))

    manifest = {
        "generator": "tools/fixtures_tokenizer.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "torch": torch.__version__, "Pillow": PIL.__version__},
        "tokenizer_class": type(tok).__name__,
        "processor_class": type(processor).__name__,
        "image_processor_class": type(processor.image_processor).__name__,
        "assets": ASSETS,
        "files": {
            "encode.json": f"{len(enc)} texts: tokenizer(text)['input_ids'] (== tokenizers.Tokenizer.from_file)",
            "decode.json": "tokenizer.decode(ids, skip_special_tokens=...)",
            "normalize.json": "tokenizers.normalizers.NFC().normalize_str(text)",
            "case_folds.json": "BMP code points Oniguruma's (?i:x) matches, for the letters of the contractions",
            "chat.json": f"{len(chat)} conversations: processor.apply_chat_template(tokenize=False) then processor(text=[text], images=...)['input_ids']",
            "variants.json": f"{len(variants)} small tokenizer.json variants with encode/decode results (tokenizers.Tokenizer)",
            "configs.json": f"{len(configs['cases'])} tokenizer_config.json files next to variants, loaded with AutoTokenizer.from_pretrained: "
                            f"encode/decode/special ids; {len(configs['refused'])} configs ergo refuses (each changes the reference's results); "
                            "the Qwen config's settings",
        },
    }
    dump("manifest.json", manifest)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"{OUT}: {len(enc)} encode texts, {len(chat)} chat cases, {len(variants)} variants, "
          f"{total / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
