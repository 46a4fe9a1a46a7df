#!/usr/bin/env python3
"""LoRA adapter fixtures: PEFT adapters on a tiny random base, what PEFT computes with them
unmerged and merged, and (optionally) a check of `ergo lora merge`'s output in transformers.

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_lora.py [--ergo build/ergo]

The base is the case in tests/fixtures/lora/case.json (the real vocabulary and tokenizer,
hidden 64, 2 layers, 2 vision blocks; regenerated bit for bit by the C side from the seed,
never committed). On it, in float32:
  - peft_new: get_peft_model(LoraConfig(r=8, lora_alpha=16, target_modules=[the seven
    linear names])): the list also selects the vision blocks' mlp.gate/up/down_proj, as
    it does on a real Qwen2.5-VL; lora_A from PEFT's kaiming init after
    torch.manual_seed(7), lora_B ~ N(0, 0.1) from torch.Generator().manual_seed(8)
    (non-zero, so the adapter changes the model); saved with save_pretrained under
    transformers 4.56 (keys in the new name layout, base_model.model.model.language_model.*);
  - peft_old_rslora: r=4, lora_alpha=8, use_rslora, target_modules a regex string (q, v,
    down_proj of the text layers, matching either layout), lora_B ~ N(0, 0.1) from seed 9;
    saved the same way, then its keys renamed to the layout PEFT wrote under transformers
    < 4.52 (base_model.model.model.layers.*), the tensors unchanged.
For each: the last prompt position's logits of `ergo generate --prompt PROMPT` (the chat
template's default system message) with the adapter unmerged (PEFT's forward), with PEFT's
merge_and_unload (f32), and with that merged model's weights rounded to bf16 (what a
merged checkpoint in the base's dtype holds: W' = bf16(W + (B @ A) * s), one rounding);
PEFT's merged f32 values of every adapted weight (<name>.merged_f32.safetensors, legacy
names); PEFT reloading its own saved adapter (the same logits); and the largest logit
change the bf16 rounding alone makes (unmerged f32 vs merged bf16), which bounds what
ergo's merge at load can differ from the unmerged reference by. The base's logits show
that each adapter moves them.

With --ergo BIN, `BIN lora merge` is run on each adapter and its output is loaded with
from_pretrained (no missing or unexpected keys), its adapted tensors compared with the
bf16 rounding of PEFT's merged f32 values, and its logits with the merged-bf16 ones;
the result is recorded under "ergo_merge" (rerun after building ergo).
"""
import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import fixtures_checkpoint as fc  # noqa: E402

import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "lora"
PROMPT = "Name three colours."
STRIDE = 8
TOP = 64
ATTN = "sdpa"
TEXT_CASE = ROOT / "tests" / "fixtures" / "text" / "cases" / "lm_untied_legacy.json"

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OLD_REGEX = r"model\.(language_model\.)?layers\.\d+\.(self_attn\.(q_proj|v_proj)|mlp\.down_proj)"
ADAPTERS = [
    dict(name="peft_new", r=8, alpha=16, rslora=False, targets=LINEARS, a_seed=7, b_seed=8,
         layout="new"),
    dict(name="peft_old_rslora", r=4, alpha=8, rslora=True, targets=OLD_REGEX, a_seed=17,
         b_seed=9, layout="legacy"),
]

torch.set_num_threads(2)


def base_case():
    case = json.loads(TEXT_CASE.read_text())
    case["name"] = "lora_base"
    case["seed"] = 611
    case["scale"] = {"lm_head": 10.0, "text_matrix": 1.5}
    return case


def load(d):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation=ATTN).eval()


def write_f32(path, arr):
    path.write_bytes(np.ascontiguousarray(np.asarray(arr, dtype="<f4")).tobytes())


def logits_record(row, prefix):
    row = row.detach().to(torch.float32).numpy()
    rec = {"stride": STRIDE, "file": f"{prefix}.logits.bin"}
    write_f32(OUT / rec["file"], row[::STRIDE])
    top = np.argsort(-row, kind="stable")[:TOP]
    rec["top"] = [[int(i), float(row[i])] for i in top]
    return rec


@torch.no_grad()
def last_logits(model, ids):
    return model(input_ids=ids).logits[0, -1].clone()


def to_old_key(k):
    """An adapter key of transformers >= 4.52's layout in the older one."""
    p = "base_model.model."
    assert k.startswith(p), k
    m = k[len(p):]
    if m.startswith("model.language_model."):
        m = "model." + m[len("model.language_model."):]
    elif m.startswith("model.visual."):
        m = m[len("model."):]
    return p + m


def make_adapter(spec, base, ids, tmp):
    torch.manual_seed(spec["a_seed"])  # lora_A: PEFT's kaiming_uniform_
    lc = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                    target_modules=spec["targets"], use_rslora=spec["rslora"], bias="none",
                    task_type="CAUSAL_LM")
    pm = get_peft_model(copy.deepcopy(base), lc).eval()
    gen = torch.Generator().manual_seed(spec["b_seed"])
    with torch.no_grad():
        for k, p in sorted(pm.named_parameters()):
            if "lora_B" in k:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    adapted = sorted(k[len("base_model.model."):-len(".lora_A")]
                     for k, _ in pm.named_modules() if k.endswith(".lora_A"))
    unmerged = last_logits(pm, ids)

    ad = OUT / spec["name"]
    if ad.exists():
        shutil.rmtree(ad)
    pm.save_pretrained(str(ad))
    (ad / "README.md").unlink(missing_ok=True)  # PEFT's model card template
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "tests/fixtures/lora/case.json"
    if isinstance(cfg["target_modules"], list):  # a set inside PEFT: its order is hash-seeded
        cfg["target_modules"] = sorted(cfg["target_modules"])
    (ad / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    st = ad / "adapter_model.safetensors"
    keys = sorted(safetensors.safe_open(str(st), "pt").keys())
    if spec["layout"] == "legacy":
        t = load_file(str(st))
        save_file({to_old_key(k): v for k, v in t.items()}, str(st), metadata={"format": "pt"})
        keys = sorted(to_old_key(k) for k in keys)

    # PEFT reloading what it saved (the new layout only: PEFT 0.17 has no key conversion)
    reload_equal = None
    if spec["layout"] == "new":
        rm = PeftModel.from_pretrained(copy.deepcopy(base), str(ad)).eval()
        reload_equal = bool(torch.equal(last_logits(rm, ids), unmerged))

    merged = pm.merge_and_unload()
    merged_logits = last_logits(merged, ids)
    sd = merged.state_dict()
    merged_f32 = {}
    for m in adapted:
        merged_f32[fc.to_legacy(m) + ".weight"] = sd[m + ".weight"].detach().contiguous().clone()
    save_file(merged_f32, str(OUT / f"{spec['name']}.merged_f32.safetensors"),
              metadata={"format": "pt"})

    # the merged model with its adapted weights in bf16 (the rest is stored bf16 already)
    with torch.no_grad():
        for m in adapted:
            w = dict(merged.named_parameters())[m + ".weight"]
            w.copy_(w.to(torch.bfloat16).to(torch.float32))
    bf16_logits = last_logits(merged, ids)
    gap = float((unmerged - bf16_logits).abs().max())
    return {
        "name": spec["name"], "dir": spec["name"], "r": spec["r"], "lora_alpha": spec["alpha"],
        "use_rslora": spec["rslora"], "target_modules": spec["targets"],
        "key_layout": spec["layout"], "keys": keys, "adapted_modules": adapted,
        "scaling": float(spec["alpha"] / (spec["r"] ** 0.5 if spec["rslora"] else spec["r"])),
        "merged_file": f"{spec['name']}.merged_f32.safetensors",
        "logits_unmerged": logits_record(unmerged, f"{spec['name']}.unmerged"),
        "logits_merged_bf16": logits_record(bf16_logits, f"{spec['name']}.merged_bf16"),
        "merge_f32_vs_unmerged": float((unmerged - merged_logits).abs().max()),
        "bf16_rounding_gap": gap,
        "peft_reload_equal": reload_equal,
        "lora_A_init": f"torch.manual_seed({spec['a_seed']}) before get_peft_model",
        "lora_B_init": f"N(0, 0.1) from torch.Generator().manual_seed({spec['b_seed']})",
    }


def bf16_bits(t):
    return t.to(torch.bfloat16).view(torch.int16).to(torch.int32)


def check_ergo(ergo, rec, base_dir, ids, tmp):
    """`ergo lora merge` for one adapter, loaded back by transformers."""
    out = tmp / f"ergo_merged_{rec['name']}"
    p = subprocess.run([ergo, "lora", "merge", "--model", str(base_dir), "--lora",
                        str(OUT / rec["dir"]), "--out", str(out), "--quiet"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"ok": False, "error": p.stderr.strip()}
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation=ATTN, output_loading_info=True)
    model.eval()
    bad = {k: [str(x) for x in v] for k, v in info.items() if v}
    stored = load_file(str(out / "model.safetensors"))
    ref = load_file(str(OUT / rec["merged_file"]))
    exact = off_by_one = worse = 0
    for k, v in ref.items():
        e = stored[k]
        assert e.dtype == torch.bfloat16, (k, e.dtype)
        d = (e.view(torch.int16).to(torch.int32) - bf16_bits(v)).abs()
        exact += int((d == 0).sum())
        off_by_one += int((d == 1).sum())
        worse += int((d > 1).sum())
    logits = last_logits(model, ids)
    want = np.fromfile(OUT / rec["logits_merged_bf16"]["file"], dtype="<f4")
    got = logits.numpy()[::STRIDE]
    return {"ok": not bad and worse == 0, "loading_info": bad, "elements_exact": exact,
            "elements_1ulp": off_by_one, "elements_worse": worse,
            "max_logit_diff_vs_merged_bf16_strided": float(np.abs(got - want).max())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ergo", help="an ergo binary: check `ergo lora merge` in transformers")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    case = base_case()
    (OUT / "case.json").write_text(json.dumps(case, indent=1) + "\n")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        d = tmp / "base"
        fc.write_checkpoint(case, d)
        base = load(d)
        processor = AutoProcessor.from_pretrained(str(d))
        msgs = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
        text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = processor(text=[text], return_tensors="pt")["input_ids"]
        rec = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "peft": peft.__version__, "safetensors": safetensors.__version__},
               "case": "case.json", "prompt": PROMPT, "prompt_text": text,
               "input_ids": ids[0].tolist(), "attn_implementation": ATTN,
               "logits_base": logits_record(last_logits(base, ids), "base"),
               "adapters": []}
        for spec in ADAPTERS:
            print("adapter", spec["name"], flush=True)
            rec["adapters"].append(make_adapter(spec, base, ids, tmp))
        if args.ergo:
            rec["ergo_merge"] = {a["name"]: check_ergo(args.ergo, a, d, ids, tmp)
                                 for a in rec["adapters"]}
        elif (OUT / "reference.json").exists():
            old = json.loads((OUT / "reference.json").read_text())
            if "ergo_merge" in old:
                rec["ergo_merge_previous_run"] = old["ergo_merge"]
    (OUT / "reference.json").write_text(json.dumps(rec, indent=1) + "\n")
    for a in rec["adapters"]:
        print(a["name"], "modules", len(a["adapted_modules"]), "gap", a["bf16_rounding_gap"],
              "merge_f32_vs_unmerged", a["merge_f32_vs_unmerged"], "reload", a["peft_reload_equal"])
    if "ergo_merge" in rec:
        print("ergo_merge", json.dumps(rec["ergo_merge"], indent=1))
        return 0 if all(v["ok"] for v in rec["ergo_merge"].values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
