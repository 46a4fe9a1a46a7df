#!/usr/bin/env python3
"""Vision-encoder fixtures: the reference's model.visual(pixel_values, grid_thw).

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_vision.py

For each run (a checkpoint case + one or more images) this script
  1. draws small synthetic RGB images (smooth patterns, PNG, committed in
     tests/fixtures/vision/images/) whose sides give the window layouts we want to
     cover: an exact multiple of the 4x4-unit window in both directions, edge windows
     in both directions, 1-unit-wide and 1-unit-tall images, an image smaller than a
     window, and one that the processor resizes by itself; runs with several frames
     (grid_t > 1, as a video gives) take pixel_values from the generator shared with
     ergo instead (the processor gives t = 1 for images);
  2. runs the fast processor (Qwen2VLImageProcessorFast, the class AutoProcessor
     loads for Qwen2.5-VL) with its class defaults and records the SHA-256 of each
     image's pixel_values (float32 little-endian) and its grid; the C test rebuilds
     pixel_values with preprocess_image and asserts the same bytes first;
  3. writes the case's checkpoint (tools/fixtures_checkpoint.py, the generator shared
     with ergo), loads it with Qwen2_5_VLForConditionalGeneration.from_pretrained
     (dtype=float32, attn_implementation="sdpa") and runs model.model.visual on the
     run's images in ONE call, as the reference batches them, recording through
     forward hooks the output of patch_embed, of every block, and the final output;
  4. records the reference's bookkeeping (get_window_index, cu_window_seqlens after
     unique_consecutive, cu_seqlens, rot_pos_emb angles, inv_freq);
  5. for runs of several images, encodes each image alone and records how far that
     is from the batched result (each image attends only to itself), and for every
     run, how far the eager attention path is from SDPA and float32 from float64 (the
     reference's own spread; a run whose float32 result is not within a tenth of the
     tolerance of float64 is refused as ill-conditioned).

Case descriptions are those of tests/fixtures/checkpoints/cases/ plus the vision
cases written here to tests/fixtures/vision/cases/ (large-magnitude weights, 56 px
windows with head dim 8, and the 7B vision widths). Weights are never committed.
"""
import copy
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import ergo_random as er  # noqa: E402
import fixtures_checkpoint as fc  # noqa: E402

import PIL  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorFast  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "vision"
CKPT_CASES = ROOT / "tests" / "fixtures" / "checkpoints" / "cases"
TOLERANCE = 1e-4  # max-abs error over max-abs of the reference (issue 3)
F16_MAX = 65504.0

# ---------------------------------------------------------------------------
# Synthetic images: smooth, so the PNGs stay small, but different everywhere.


def synth_image(h, w, seed):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    s = float(seed)
    r = 127.5 + 110 * np.sin(x / (5.0 + s) + s) * np.cos(y / (9.0 + 0.5 * s))
    g = 255.0 * (x + 2 * y) / (w + 2 * h) + 20 * np.sin((x + y) / 3.0)
    b = 127.5 + 120 * np.cos(np.hypot(x - w / 3, y - h / 2) / (6.0 + s))
    img = np.stack([r, g, b], axis=-1)
    # a checkerboard block and a flat rectangle, so some patches are sharp or flat
    cy, cx = h // 3, w // 4
    cb = ((np.arange(h)[:, None] // 4 + np.arange(w)[None, :] // 4) % 2) * 255.0
    img[cy:cy + h // 4, cx:cx + w // 3, 0] = cb[cy:cy + h // 4, cx:cx + w // 3]
    img[h - h // 5:, : w // 2, :] = [30 + 10 * seed, 200, 90]
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


# (height, width): what each one covers, in 2x2-patch units (28 px) and 4x4-unit windows
IMAGES = {
    "a_224x336": (224, 336, 1),  # 8x12 units: exact multiple of the window both ways
    "b_252x196": (252, 196, 2),  # 9x7 units: edge windows in both directions
    "c_140x28": (140, 28, 3),    # 5x1 units: one unit wide (28 x N)
    "d_28x168": (28, 168, 4),    # 1x6 units: one unit tall
    "e_84x56": (84, 56, 5),      # 3x2 units: smaller than one window
    "f_250x190": (250, 190, 6),  # not a multiple of 28: the processor resizes to 252x196
    "g_84x140": (84, 140, 7),    # 3x5 units (the 7B-width run)
}

# ---------------------------------------------------------------------------
# Vision cases of our own (same schema as tests/fixtures/checkpoints/cases)


def vision_cases():
    base = json.loads((CKPT_CASES / "flat_legacy_bf16.json").read_text())
    out = []
    # weights scaled so activations exceed the f16 range (65504) from block 1 on, while
    # the float32 reference stays within a few 1e-6 of float64 (larger matrix scales
    # make attention so peaked that float32 itself drifts by 1e-3: no valid test)
    big = copy.deepcopy(base)
    big.update(name="vision_large_scale", seed=5005,
               scale={"vision_matrix": 16.0, "vision_bias": 5000.0})
    out.append(big)
    # 56 px windows (2x2 units), head dim 8 (2 rotary frequencies per axis), depth 3
    # with the full-attention block last
    w56 = copy.deepcopy(base)
    w56.update(name="vision_window56", seed=6006, dtype="f32")
    w56["config"]["vision_config"].update(depth=3, hidden_size=24, num_heads=3,
                                          intermediate_size=40, window_size=56,
                                          fullatt_block_indexes=[2])
    out.append(w56)
    # the 7B vision widths (hidden 1280, 16 heads of 80, ffn 3420, out 3584) with two
    # blocks, the second one full attention; the text side is as small as the
    # out_hidden = hidden rule allows (one layer, small ffn and vocabulary, tied)
    b7 = copy.deepcopy(base)
    b7.update(name="vision_7b_width", seed=7007, dtype="bf16")
    b7["config"].update(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                        intermediate_size=64, num_hidden_layers=1, vocab_size=1024,
                        tie_word_embeddings=True)
    b7["config"]["rope_scaling"] = {"type": "mrope", "mrope_section": [16, 24, 24]}
    b7["config"]["vision_config"].update(depth=2, hidden_size=1280, num_heads=16,
                                         intermediate_size=3420, out_hidden_size=3584,
                                         fullatt_block_indexes=[1])
    out.append(b7)
    return out


def load_case(name):
    p = CKPT_CASES / f"{name}.json"
    if p.exists():
        return json.loads(p.read_text()), f"checkpoints/cases/{name}.json"
    for c in vision_cases():
        if c["name"] == name:
            return c, f"vision/cases/{name}.json"
    raise KeyError(name)


# run name -> (case, images, intermediates: None = all rows, int = first rows only)
RUNS = [
    ("bf16_a", "flat_legacy_bf16", ["a_224x336"], None),
    ("bf16_b", "flat_legacy_bf16", ["b_252x196"], None),
    ("bf16_batch_cde", "flat_legacy_bf16", ["c_140x28", "d_28x168", "e_84x56"], 0),
    ("mixed_b", "nested_legacy_mixed", ["b_252x196"], None),
    ("mixed_batch_ea", "nested_legacy_mixed", ["e_84x56", "a_224x336"], 0),
    ("f16_f", "nested_new_f16_tied", ["f_250x190"], None),
    ("large_b", "vision_large_scale", ["b_252x196"], None),
    ("window56_b", "vision_window56", ["b_252x196"], None),
    ("width7b_g", "vision_7b_width", ["g_84x140"], 16),
    # several frames (grid_t > 1, as a video gives): each frame its own windows and its
    # own full-attention span. The processor gives t = 1 for images, so pixel_values
    # come from the shared generator: value i = 2 * uniform(stream_seed(seed, name), i)
    ("bf16_frames", "flat_legacy_bf16", [{"frames": [2, 8, 10], "seed": 11}], None),
    ("mixed_frames_batch", "nested_legacy_mixed",
     [{"frames": [3, 4, 4], "seed": 12}, {"frames": [2, 6, 2], "seed": 13}], 0),
]
SYNTH_STREAM = "pixel_values"


def synthetic_pixels(spec, patch_dim):
    t, h, w = spec["frames"]
    n = t * h * w * patch_dim
    u = er.uniform(er.stream_seed(spec["seed"], SYNTH_STREAM), n)
    v = (u * np.float32(2.0)).astype(np.float32)  # exact: u has 24 significant bits
    return torch.from_numpy(v).reshape(t * h * w, patch_dim), torch.tensor([[t, h, w]])

# ---------------------------------------------------------------------------


def write_f32(path, t):
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    path.write_bytes(a.tobytes())
    return list(a.shape)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def run_visual(visual, pixel_values, grid_thw):
    """model.visual on one batch with hooks; returns (output, {name: tensor})."""
    taps = {}
    hooks = [visual.patch_embed.register_forward_hook(
        lambda m, i, o: taps.__setitem__("patch_embed", o.detach().clone()))]
    for k, blk in enumerate(visual.blocks):
        hooks.append(blk.register_forward_hook(
            lambda m, i, o, k=k: taps.__setitem__(f"blocks.{k}", o.detach().clone())))
    hooks.append(visual.merger.register_forward_hook(
        lambda m, i, o: taps.__setitem__("merger", o.detach().clone())))
    with torch.no_grad():
        y = visual(pixel_values, grid_thw)
    for h in hooks:
        h.remove()
    return y, taps


def main():
    torch.manual_seed(0)
    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "Pillow": PIL.__version__, "tokenizers": tokenizers.__version__,
                "numpy": np.__version__}
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    (OUT / "cases").mkdir(parents=True, exist_ok=True)
    for c in vision_cases():
        (OUT / "cases" / f"{c['name']}.json").write_text(json.dumps(c, indent=1) + "\n")

    proc = Qwen2VLImageProcessorFast()
    pil = {}
    for name, (h, w, seed) in IMAGES.items():
        im = synth_image(h, w, seed)
        im.save(OUT / "images" / f"{name}.png", optimize=True)
        pil[name] = Image.open(OUT / "images" / f"{name}.png").convert("RGB")  # as decoded

    manifest = {
        "versions": versions,
        "processor": {"class": type(proc).__name__,
                      "min_pixels": proc.size["shortest_edge"],
                      "max_pixels": proc.size["longest_edge"]},
        "model": "Qwen2_5_VLForConditionalGeneration.from_pretrained(dir, dtype=float32, "
                 "attn_implementation=\"sdpa\").model.visual",
        "tolerance": {"output_rel": TOLERANCE, "note": "max |ergo - ref| / max |ref|"},
        "runs": [],
    }
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="ergo-vision-") as tmp:
        for run, case_name, images, inter_rows in RUNS:
            print(f"  {run}", flush=True)
            case, case_path = load_case(case_name)
            if case_name not in loaded:
                d = Path(tmp) / case_name
                fc.write_checkpoint(case, d)
                model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                    str(d), dtype=torch.float32, attn_implementation="sdpa",
                    output_loading_info=True)
                for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
                    assert not info[k], f"{case_name}: {k}: {info[k]}"
                loaded = {case_name: model.model.visual.eval()}  # one model in memory at a time
                del model
            visual = loaded[case_name]
            assert visual.config._attn_implementation == "sdpa"

            rd = OUT / run
            rd.mkdir(exist_ok=True)
            for f in rd.iterdir():
                f.unlink()
            # the processor, per image (so each image's bytes can be checked alone)
            pix, grids, img_recs = [], [], []
            for name in images:
                if isinstance(name, dict):
                    vcfg = visual.config
                    pv, g = synthetic_pixels(name, vcfg.in_channels * vcfg.temporal_patch_size
                                             * vcfg.patch_size ** 2)
                    raw = np.ascontiguousarray(pv.numpy().astype("<f4")).tobytes()
                    img_recs.append({"synthetic": {"seed": name["seed"], "stream": SYNTH_STREAM,
                                                   "scale": 2.0},
                                     "grid_thw": g[0].tolist(),
                                     "pixel_values_shape": list(pv.shape),
                                     "pixel_values_sha256": hashlib.sha256(raw).hexdigest(),
                                     "pixel_values_sum": float(pv.double().sum())})
                    pix.append(pv)
                    grids.append(g)
                    continue
                bf = proc(images=[pil[name]], return_tensors="pt")
                pv, g = bf["pixel_values"], bf["image_grid_thw"]
                assert pv.dtype == torch.float32
                raw = np.ascontiguousarray(pv.numpy().astype("<f4")).tobytes()
                img_recs.append({"file": f"images/{name}.png", "grid_thw": g[0].tolist(),
                                 "source_size": [pil[name].height, pil[name].width],
                                 "pixel_values_shape": list(pv.shape),
                                 "pixel_values_sha256": hashlib.sha256(raw).hexdigest(),
                                 "pixel_values_sum": float(pv.double().sum())})
                pix.append(pv)
                grids.append(g)
            pixel_values = torch.cat(pix)
            grid_thw = torch.cat(grids)
            if not isinstance(images[0], dict):
                # the batched call must be what the processor gives for the list
                batch = proc(images=[pil[n] for n in images], return_tensors="pt")
                assert torch.equal(batch["pixel_values"], pixel_values)
                assert torch.equal(batch["image_grid_thw"], grid_thw)

            y, taps = run_visual(visual, pixel_values, grid_thw)
            rec = {"name": run, "case": case_path, "images": img_recs,
                   "grid_thw": grid_thw.tolist()}
            rec["output"] = {"file": f"{run}/output.f32", "shape": write_f32(rd / "output.f32", y),
                             "max_abs": float(y.abs().max())}

            # bookkeeping as the reference computes it
            window_index, cu_window = visual.get_window_index(grid_thw)
            cu_window = torch.unique_consecutive(torch.tensor(cu_window, dtype=torch.int32))
            cu_seqlens = torch.nn.functional.pad(torch.repeat_interleave(
                grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0]).cumsum(0), (1, 0))
            angles = visual.rot_pos_emb(grid_thw)
            rec["window_index"] = window_index.tolist()
            rec["cu_window_seqlens"] = cu_window.tolist()
            rec["cu_seqlens"] = cu_seqlens.tolist()
            rec["angles"] = {"file": f"{run}/angles.f32", "shape": write_f32(rd / "angles.f32", angles)}
            rec["inv_freq"] = visual.rotary_pos_emb.inv_freq.tolist()
            # the merger's output in window order is the output gathered by window_index
            assert torch.equal(taps["merger"], y[window_index])

            # intermediates (None = every row; an int = only that many first rows; 0 = none)
            rec["intermediates"] = []
            for name in ["patch_embed"] + [f"blocks.{k}" for k in range(len(visual.blocks))]:
                t = taps[name]
                entry = {"name": name, "rows": t.shape[0], "cols": t.shape[1],
                         "max_abs": float(t.abs().max())}
                if inter_rows != 0:
                    keep = t if inter_rows is None else t[:inter_rows]
                    fname = f"{run}/{name}.f32"
                    write_f32(OUT / fname, keep)
                    entry.update(file=fname, stored_rows=keep.shape[0])
                rec["intermediates"].append(entry)
            if case_name == "vision_large_scale":
                late = max(e["max_abs"] for e in rec["intermediates"][2:])
                assert late > F16_MAX, f"{run}: late blocks peak at {late}, not over {F16_MAX}"
                rec["exceeds_f16"] = True

            # each image alone equals its slice of the batched call
            if len(images) > 1:
                worst, tok = 0.0, 0
                for pv, g in zip(pix, grids):
                    with torch.no_grad():
                        yi = visual(pv, g)
                    worst = max(worst, float((yi - y[tok:tok + yi.shape[0]]).abs().max()))
                    tok += yi.shape[0]
                assert tok == y.shape[0]
                rec["per_image_vs_batch_max_abs"] = worst
                assert worst <= TOLERANCE * float(y.abs().max()), worst
            # the reference's own spread: eager attention vs SDPA
            visual.config._attn_implementation = "eager"
            with torch.no_grad():
                ye = visual(pixel_values, grid_thw)
            visual.config._attn_implementation = "sdpa"
            rec["eager_vs_sdpa_rel"] = rel_err(ye, y)
            # and how far float32 is from float64: a case whose float32 reference drifts
            # by more than a tenth of the tolerance is ill-conditioned, not a test
            v64 = copy.deepcopy(visual).double()
            with torch.no_grad():
                y64 = v64(pixel_values.double(), grid_thw)
            del v64
            rec["f32_vs_f64_rel"] = rel_err(y.double(), y64)
            assert rec["f32_vs_f64_rel"] < TOLERANCE / 10, f"{run}: ill-conditioned"
            manifest["runs"].append(rec)
            print(f"    grids {grid_thw.tolist()}  out {list(y.shape)}  max|out| "
                  f"{rec['output']['max_abs']:.4g}  eager/sdpa {rec['eager_vs_sdpa_rel']:.2e}  "
                  f"f32/f64 {rec['f32_vs_f64_rel']:.2e}",
                  flush=True)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {len(RUNS)} runs to {OUT.relative_to(ROOT)} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
