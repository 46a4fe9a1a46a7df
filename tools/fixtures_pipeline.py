#!/usr/bin/env python3
"""ERGO pipeline fixtures: the box parser table and the two-stage parity runs.

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_pipeline.py [--zoom-only]

1. zoom_cases.json: tricky stage-1 texts through the reference's own box logic
   (ERGO src/ergo/utils.py: smart_resize, parse_zoom_bbox_from_text, map_box,
   crop_with_zoom, restated below with the same semantics), on a blank original of the
   case's size. Outcome per case: "none" (the parser returns None: the reference falls
   back to the whole image), "ok" (box, crop, LANCZOS size), "raises" (the reference
   raises; ergo treats the box as missing), "blank" (a zero-area crop the reference
   resizes into a black image without raising; ergo treats it as missing too).
2. two_stage.json: ERGO's infer.py two-stage loop (prompts from src/ergo/const.py,
   processor.apply_chat_template + processor(...) + model.generate(do_sample=False))
   on a tiny random checkpoint (tools/fixtures_text.py's writer, same case the C test
   regenerates), once as generated and once with a forced stage-1 text holding a box.
"""
import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "pipeline"
FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 1280 * 28 * 28


# ---- the reference's box logic (same semantics as ERGO src/ergo/utils.py) ----
def smart_resize(height, width, factor=28, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h = round(height / beta / factor) * factor
        w = round(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def parse_zoom(content):
    try:
        m = re.search(r"<zoom>(.*?)</zoom>", content, re.DOTALL)
        if not m:
            return None
        inner = m.group(1)
        if re.match(r"^\s*\[\d+,\s*\d+,\s*\d+,\s*\d+\]\s*$", inner):
            return [int(n.strip()) for n in inner.strip().strip("[]").split(",")]
        found = re.findall(r"\[\d+,\s*\d+,\s*\d+,\s*\d+\]", inner)
        if len(found) == 1:
            return [int(n.strip()) for n in found[0].strip("[]").split(",")]
        return None
    except Exception:
        return None


def crop_with_zoom(image, response, sx, sy, ori_w, ori_h):
    """Returns (image, bbox, size, parsed) as the reference's crop_with_zoom (parsed
    added: the parser's result)."""
    w, h = image.size
    bbox = parse_zoom(response)
    if bbox is None or len(bbox) != 4:
        return image, [0, 0, w, h], (w, h), None
    x1, y1, x2, y2 = bbox
    x1, y1 = max(x1 * sx, 0), max(y1 * sy, 0)
    x2, y2 = min(x2 * sx, ori_w), min(y2 * sy, ori_h)
    x1, y1 = max(0, min(x1, w)), max(0, min(y1, h))
    x2, y2 = max(0, min(x2, w)), max(0, min(y2, h))
    x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
    nw, nh = smart_resize(x2 - x1, y2 - y1, factor=FACTOR, min_pixels=MIN_PIXELS,
                          max_pixels=MAX_PIXELS)
    crop = image.crop((x1, y1, x2, y2)).resize((nw, nh), Image.Resampling.LANCZOS)
    return crop, [x1, y1, x2, y2], (nw, nh), bbox


def stage1_geometry(width, height):
    h1, w1 = smart_resize(height, width)
    return w1, h1, width / w1, height / h1


def zoom_texts():
    """(name, text, width, height)."""
    big = "9" * 400
    W, H = 2250, 1500
    t = [
        ("plain", "<think>x</think><zoom>[10, 20, 300, 400]</zoom>", W, H),
        ("no_spaces", "<zoom>[10,20,300,400]</zoom>", W, H),
        ("spaces_around", "<zoom>  [10, 20, 300, 400]\n </zoom>", W, H),
        ("newlines_inside", "<zoom>\n[10,\n20,\n300,\n400]\n</zoom>", W, H),
        ("space_before_comma", "<zoom>[10 , 20, 300, 400]</zoom>", W, H),
        ("space_after_bracket", "<zoom>[ 10, 20, 300, 400]</zoom>", W, H),
        ("two_boxes", "<zoom>[1, 2, 30, 40] [5, 6, 70, 80]</zoom>", W, H),
        ("two_zoom_tags", "<zoom>[1, 2, 30, 40]</zoom><zoom>[5, 6, 70, 80]</zoom>", W, H),
        ("first_tag_empty", "<zoom></zoom><zoom>[5, 6, 70, 80]</zoom>", W, H),
        ("text_around_box", "<zoom>the box is [10, 20, 300, 400] here</zoom>", W, H),
        ("negative", "<zoom>[-10, 20, 300, 400]</zoom>", W, H),
        ("negative_and_one_box", "<zoom>[-10, 20, 300, 400] or [1, 2, 3, 4]</zoom>", W, H),
        ("float", "<zoom>[10.5, 20, 300, 400]</zoom>", W, H),
        ("floats_all", "<zoom>[0.1, 0.2, 0.5, 0.6]</zoom>", W, H),
        ("three_numbers", "<zoom>[10, 20, 300]</zoom>", W, H),
        ("five_numbers", "<zoom>[10, 20, 300, 400, 5]</zoom>", W, H),
        ("parentheses", "<zoom>(10, 20, 300, 400)</zoom>", W, H),
        ("missing_tags", "[10, 20, 300, 400]", W, H),
        ("unclosed", "<zoom>[10, 20, 300, 400]", W, H),
        ("unclosed_then_closed", "<zoom>[1, 2, 3, 4]<zoom>[10, 20, 300, 400]</zoom>", W, H),
        ("nested", "<zoom><zoom>[10, 20, 300, 400]</zoom></zoom>", W, H),
        ("close_before_open", "</zoom>[1,2,3,4]<zoom>[10, 20, 300, 400]</zoom>", W, H),
        ("upper_case_tag", "<ZOOM>[10, 20, 300, 400]</ZOOM>", W, H),
        ("nested_brackets", "<zoom>[[10, 20, 300, 400]]</zoom>", W, H),
        ("outside_image", "<zoom>[2000, 1400, 5000, 9000]</zoom>", W, H),
        ("fully_outside", "<zoom>[5000, 5000, 6000, 6000]</zoom>", W, H),
        ("x1_gt_x2", "<zoom>[300, 20, 10, 400]</zoom>", W, H),
        ("y1_gt_y2", "<zoom>[10, 400, 300, 20]</zoom>", W, H),
        ("zero_area_small", "<zoom>[10, 20, 10, 40]</zoom>", W, H),
        ("zero_area_long", "<zoom>[10, 20, 10, 900]</zoom>", W, H),
        ("zero_everything", "<zoom>[0, 0, 0, 0]</zoom>", W, H),
        ("tiny_box", "<zoom>[10, 20, 11, 21]</zoom>", W, H),
        ("whole_image", "<zoom>[0, 0, 1288, 868]</zoom>", W, H),
        ("leading_zeros", "<zoom>[0010, 0020, 00300, 000400]</zoom>", W, H),
        ("huge_int64", "<zoom>[10, 20, 99999999999999999999, 400]</zoom>", W, H),
        ("huge_overflow_float", "<zoom>[10, 20, " + big + ", 400]</zoom>", W, H),
        ("huge_x1", "<zoom>[" + "9" * 30 + ", 20, 300, 400]</zoom>", W, H),
        ("more_than_4300_digits", "<zoom>[10, 20, " + "1" * 4301 + ", 400]</zoom>", W, H),
        ("exactly_4300_digits", "<zoom>[10, 20, " + "1" * 4300 + ", 400]</zoom>", W, H),
        ("arabic_indic_digits", "<zoom>[\u0661\u0660, \u0662\u0660, \u0663\u0660\u0660, "
                                "\u0664\u0660\u0660]</zoom>", W, H),
        ("fullwidth_digits", "<zoom>[\uff11\uff10, 20, 300, 400]</zoom>", W, H),
        ("math_digits", "<zoom>[\U0001D7CF\U0001D7CE, 20, 300, 400]</zoom>", W, H),
        ("superscript_not_digit", "<zoom>[\u00b9\u2070, 20, 300, 400]</zoom>", W, H),
        ("nbsp_space", "<zoom>\u00a0[10,\u00a020, 300, 400]\u3000</zoom>", W, H),
        ("file_separator_space", "<zoom>\x1c[10,\x1f20, 300, 400]</zoom>", W, H),
        ("zero_width_space", "<zoom>[10,\u200b20, 300, 400]</zoom>", W, H),
        ("line_separator", "<zoom>[10,\u202820, 300, 400]\u2029</zoom>", W, H),
        ("trailing_newline", "<zoom>[10, 20, 300, 400]\n</zoom>", W, H),
        ("small_image", "<zoom>[3, 5, 40, 50]</zoom>", 30, 20),
        ("upscaled_image", "<zoom>[0, 0, 56, 28]</zoom>", 10, 5),
        ("thin_crop", "<zoom>[0, 0, 1288, 2]</zoom>", W, H),
        ("tall_image", "<zoom>[0, 10, 28, 900]</zoom>", 200, 8000),
        ("text_before_after", "I think <zoom>[100, 200, 600, 700]</zoom> then more", 1000, 1000),
    ]
    return t


def zoom_cases():
    out = []
    for name, text, W, H in zoom_texts():
        w1, h1, sx, sy = stage1_geometry(W, H)
        case = {"name": name, "text": text, "width": W, "height": H, "w1": w1, "h1": h1}
        parsed = parse_zoom(text)
        case["parsed"] = None if parsed is None else [str(v) for v in parsed]
        try:
            crop, bbox, size, _ = crop_with_zoom(Image.new("RGB", (W, H)), text, sx, sy, W, H)
            if parsed is None:
                case["outcome"] = "none"
            elif bbox[2] - bbox[0] == 0 or bbox[3] - bbox[1] == 0:
                case["outcome"] = "blank"
                case["crop"], case["size"] = bbox, list(size)
            else:
                case["outcome"] = "ok"
                case["crop"], case["size"] = bbox, list(size)
        except Exception as e:  # what the reference raises; ergo: an invalid box
            case["outcome"] = "raises"
            case["error"] = f"{type(e).__name__}: {e}"[:200]
        out.append(case)
    return out


def versions():
    import PIL
    import tokenizers
    import torch
    import transformers
    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "Pillow": PIL.__version__, "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0]}


def write_zoom():
    import unicodedata
    cases = zoom_cases()
    manifest = {"versions": versions(), "unicode": unicodedata.unidata_version,
                "factor": FACTOR, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
                "cases": cases}
    (OUT / "zoom_cases.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=True))
    # fuzz seeds: 4 bytes of size, then the text
    corpus = ROOT / "tests" / "fuzz_corpus" / "zoom"
    corpus.mkdir(parents=True, exist_ok=True)
    for c in cases:
        if len(c["text"]) > 600:
            continue
        head = bytes([c["width"] & 255, c["width"] >> 8, c["height"] & 255, c["height"] >> 8])
        (corpus / (c["name"] + ".txt")).write_bytes(head + c["text"].encode("utf-8"))
    print(f"zoom: {len(cases)} cases:",
          {o: sum(c['outcome'] == o for c in cases) for o in ("ok", "none", "raises", "blank")})


# ---- the two-stage parity runs -------------------------------------------------
# The prompt constants of ERGO's src/ergo/const.py (the model's interface).
SYSTEM_PROMPT = (
    "You are a helpful assistant. Given an image and one question. First, identify the "
    "coordinates of the key image area relevant to solving the problem. Append the "
    "coordinates in [x1, y1, x2, y2] format at the end of your response and stop. This will "
    "trigger cropping of the corresponding area in the original image and enlarge it for "
    "improved clarity. Once the enlarged image is available, provide the final answer.")
TEMPLATE1 = (
    "{Question} First, consider how to zoom in on the image to include only the region "
    "containing all the information necessary to answer the question. Output the thinking "
    "process in <think> </think> tags and then output the region's bounding box coordinates "
    "in the following format <zoom>[x1, y1, x2, y2]</zoom> tags.")
TEMPLATE2 = (
    "{Question}\nCarefully analyze both the original image and the enlarged sub-image to "
    "solve the question step by step. Present your reasoning clearly the following format "
    "strictly <think> ... <think>, and provide the final answer enclosed within <answer> ... "
    "</answer>")

CASE = ROOT / "tests" / "fixtures" / "text" / "cases" / "lm_tied_new.json"
MAX_NEW = 16
TOP = 64
RUNS = [
    # name, question, options, postfix, forced stage-1 text (None: generated)
    ("generated", "What colour is the square?", [], None, None),
    ("forced_box", "What colour is the square?", ["A. red", "B. blue"],
     "Answer with the option's letter from the given choices directly.",
     "<think>The square is near the top left.</think> <zoom>[40, 30, 300, 200]</zoom>"),
    ("forced_no_box", "Where is the circle?", [], None,
     "<think>I cannot tell.</think> <zoom>[300, 30, 40]</zoom>"),
]


def original_picture():
    """A smooth noise-free picture (compresses well) with a square and a circle."""
    import numpy as np
    w, h = 500, 330
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.stack([127 + 90 * np.sin(0.031 * x + 0.017 * y),
                    127 + 90 * np.sin(0.023 * x - 0.029 * y + 1.0),
                    127 + 90 * np.cos(0.011 * x + 0.041 * y)], -1)
    out[40:120, 60:140] = [220, 30, 30]
    out[((x - 380) ** 2 + (y - 220) ** 2) < 45 ** 2] = [30, 40, 210]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def full_question(q, options, postfix):
    if not options and postfix is None:
        return q  # infer.py: the bare question
    return q + "\n" + "\n".join(options) + "\n" + (postfix or "")


def run_two_stage(model, processor, img, name, q, options, postfix, forced):
    import numpy as np
    import torch
    W, H = img.size
    h1, w1 = smart_resize(H, W)
    sx, sy = W / w1, H / h1
    resized = img.resize((w1, h1), Image.BICUBIC)
    msgs = [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": TEMPLATE1.format(Question=q)}]}]

    def generate(messages, images):
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=images, videos=None, padding=True,
                           return_tensors="pt")
        with torch.inference_mode():
            g = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                               output_logits=True, return_dict_in_generate=True)
            last = model(**inputs).logits[0, -1].to(torch.float32)
        n = inputs["input_ids"].shape[1]
        new = g.sequences[0, n:].tolist()
        out = processor.batch_decode([new], skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)[0]
        seq = inputs["input_ids"][0].tolist()
        penalty = model.generation_config.repetition_penalty or 1.0
        margins = []
        for i, raw in enumerate(g.logits):
            s = raw[0].to(torch.float32).clone()
            idx = torch.tensor(sorted(set(seq + new[:i])), dtype=torch.long)
            sc = s[idx]
            s[idx] = torch.where(sc < 0, sc * penalty, sc / penalty)
            t = torch.topk(s, 2).values
            margins.append(float(t[0] - t[1]))
        return {"prompt_ids": seq, "grids": inputs["image_grid_thw"].tolist(), "generated": new,
                "text": out, "min_margin": min(margins) if margins else None,
                "last_logits_top": [[int(i), float(last[i])] for i in
                                    np.argsort(-last.numpy(), kind="stable")[:TOP]]}

    rec = {"name": name, "question": q, "options": options, "postfix": postfix,
           "stage1_text_forced": forced, "w1": w1, "h1": h1}
    if forced is None:
        s1 = generate(msgs, [resized])
        r1 = s1["text"]
    else:
        s1 = None
        text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[resized], return_tensors="pt")
        s1 = {"prompt_ids": inputs["input_ids"][0].tolist(),
              "grids": inputs["image_grid_thw"].tolist(),
              "generated": processor.tokenizer(forced)["input_ids"], "text": forced}
        r1 = forced
    rec["stage1"] = s1
    try:
        crop, bbox, size, parsed = crop_with_zoom(img, r1, sx, sy, W, H)
        rec["box"] = {"outcome": "ok" if parsed is not None else "none", "parsed": parsed,
                      "crop": bbox, "size": list(size)}
    except Exception as e:  # the reference raises here; ergo falls back (recorded, not run)
        rec["box"] = {"outcome": "raises", "error": f"{type(e).__name__}: {e}"}
        return rec
    msgs += [{"role": "assistant", "content": r1},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text":
                                          TEMPLATE2.format(Question=full_question(
                                              q, options, postfix))}]}]
    s2 = generate(msgs, [resized, crop])
    rec["stage2"] = s2
    if rec["box"]["outcome"] == "ok":
        crop.save(OUT / f"two_stage.{name}.crop.png")
        rec["crop_png"] = f"two_stage.{name}.crop.png"
    # does the reference's re-tokenized r1 equal the kept stage-1 ids?
    n1 = len(s1["prompt_ids"])
    kept = [t for t in s1["generated"] if t not in (151645, 151643)] \
        if forced is None else s1["generated"]
    rec["stage1_retokenizes"] = s2["prompt_ids"][n1:n1 + len(kept)] == kept and \
        s2["prompt_ids"][n1 + len(kept)] == 151645
    rec["stage1_prefix_kept"] = s2["prompt_ids"][:n1] == s1["prompt_ids"]
    return rec


def write_two_stage():
    import shutil
    import tempfile
    sys.path.insert(0, str(ROOT / "tools"))
    import fixtures_checkpoint as fc
    import fixtures_text as ft
    case = json.loads(CASE.read_text())
    img = original_picture()
    img.save(OUT / "two_stage.original.png")
    img = Image.open(OUT / "two_stage.original.png")  # as the reference opens a file
    tmp = Path(tempfile.mkdtemp())
    try:
        d = tmp / "ck"
        fc.write_checkpoint(case, d)
        model, processor = ft.load(d)
        runs = [run_two_stage(model, processor, img, *r) for r in RUNS]
        manifest = {"versions": versions(), "attn_implementation": ft.ATTN,
                    "processor_class": type(processor.image_processor).__name__,
                    "case": "text/cases/lm_tied_new.json", "image": "two_stage.original.png",
                    "max_new_tokens": MAX_NEW, "max_pixels": MAX_PIXELS,
                    "min_pixels": MIN_PIXELS, "runs": runs}
        (OUT / "two_stage.json").write_text(json.dumps(manifest, indent=1))
        for r in runs:
            print(r["name"], "box", r["box"], "retokenizes", r.get("stage1_retokenizes"),
                  "margins", r["stage1"].get("min_margin"), r.get("stage2", {}).get("min_margin"))
    finally:
        shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoom-only", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    write_zoom()
    if not args.zoom_only:
        write_two_stage()


if __name__ == "__main__":
    main()
