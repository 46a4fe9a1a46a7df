#!/usr/bin/env python3
"""Checks that the checkpoints ergo's training writes load in the reference stack, and
records what the reference computes with them: tests/fixtures/train_ckpt/reference.json.

The directories tests/fixtures/train_ckpt/full (model.safetensors + configs of a
full-training checkpoint of the tiny case in case.json), .../lora (PEFT's
adapter_model.safetensors + adapter_config.json, legacy-layout base) and .../lora_new
(the same adapter for the base in the new name layout) are written by ergo's test
(tests/test_train_checkpoint.c), which also checks that ergo still writes them byte
for byte. Regenerate them, then this file:

    ERGO_TRAIN_CKPT_FIXTURE_OUT=tests/fixtures/train_ckpt ./build/ergo_tests =train_checkpoint
    /work/venv/bin/python tools/fixtures_train_ckpt.py

Pinned stack: torch 2.8.0, transformers 4.56.2, peft 0.17.1 (tools/requirements.txt).
"""
import json
import os
import sys
import tempfile
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "train_ckpt")
IDS = [1, 5, 17, 100, 3, 64, 127]


def new_name(legacy):
    """transformers 4.56's module names for a legacy-layout tensor name."""
    if legacy.startswith("visual."):
        return "model." + legacy
    if legacy.startswith("model.") and not legacy.startswith("model.language_model."):
        return "model.language_model." + legacy[6:]
    return legacy


def main():
    from transformers import Qwen2_5_VLForConditionalGeneration
    import peft
    from peft import PeftModel
    import transformers

    full = os.path.join(ROOT, "full")
    lora = os.path.join(ROOT, "lora")
    out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__},
           "ids": IDS}

    with safe_open(os.path.join(full, "model.safetensors"), "pt") as f:
        out["metadata"] = f.metadata()
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        full, dtype=torch.float32, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    out["loading_info"] = {k: [str(x) for x in v] for k, v in bad.items()}
    out["transformers_loaded"] = not bad

    # every tensor of the file is the model's parameter, exactly (widened to f32)
    stored = load_file(os.path.join(full, "model.safetensors"))
    params = dict(model.named_parameters())
    mismatched = [k for k, v in stored.items()
                  if new_name(k) not in params or
                  not torch.equal(params[new_name(k)].detach(), v.to(torch.float32))]
    out["weights_mismatched"] = mismatched
    out["weights_match"] = not mismatched and len(stored) == len(
        {n for n in params if n != "lm_head.weight" or not model.config.tie_word_embeddings})

    ids = torch.tensor([IDS])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    out["logits"] = [[float("%.9g" % x) for x in row] for row in logits]

    # PEFT: the adapter onto the same architecture (the full checkpoint as base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(model, lora)
    out["peft_warnings"] = [str(w.message) for w in caught if "adapter" in str(w.message).lower()
                            or "missing" in str(w.message).lower()]
    adapter = load_file(os.path.join(lora, "adapter_model.safetensors"))
    lora_params = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    matched, wrong = 0, []
    for n, p in lora_params.items():
        # base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight
        key = n.replace(".default", "")
        cand = [k for k in adapter if new_name(k[len("base_model.model."):]) ==
                key[len("base_model.model."):]]
        if len(cand) == 1 and torch.equal(p.detach(), adapter[cand[0]]):
            matched += 1
        else:
            wrong.append(n)
    out["peft_adapted_modules"] = len(lora_params) // 2
    out["peft_mismatched"] = wrong
    out["peft_loaded"] = not wrong and matched == len(adapter) and not out["peft_warnings"]
    # PEFT's own save_pretrained of what it loaded: under transformers 4.56 it writes the
    # new-layout keys, which is what ergo writes for a new-layout base (lora_new); the
    # config differs only in base_model_name_or_path (ergo: the base's directory)
    with tempfile.TemporaryDirectory() as d:
        pm.save_pretrained(d)
        with open(os.path.join(d, "adapter_model.safetensors"), "rb") as f:
            peft_st = f.read()
        with open(os.path.join(d, "adapter_config.json")) as f:
            peft_cfg = json.load(f)
    with open(os.path.join(ROOT, "lora_new", "adapter_model.safetensors"), "rb") as f:
        ergo_st = f.read()
    with open(os.path.join(ROOT, "lora_new", "adapter_config.json")) as f:
        ergo_cfg_text = f.read()
    ergo_cfg = json.loads(ergo_cfg_text)
    peft_cfg["base_model_name_or_path"] = ergo_cfg["base_model_name_or_path"]
    out["peft_resave_safetensors_identical"] = peft_st == ergo_st
    out["peft_resave_config_identical"] = json.dumps(peft_cfg, indent=2, sort_keys=True) == ergo_cfg_text
    out["peft_resave_identical"] = (out["peft_resave_safetensors_identical"] and
                                    out["peft_resave_config_identical"])
    with torch.no_grad():
        plog = pm(input_ids=ids).logits[0]
    out["lora_logits"] = [[float("%.9g" % x) for x in row] for row in plog]

    path = os.path.join(ROOT, "reference.json")
    with open(path, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print("wrote", path, "transformers_loaded", out["transformers_loaded"], "weights_match",
          out["weights_match"], "peft_loaded", out["peft_loaded"], "adapted modules",
          out["peft_adapted_modules"], "peft_resave_identical", out["peft_resave_identical"])
    return 0 if (out["transformers_loaded"] and out["weights_match"] and out["peft_loaded"] and
                 out["peft_resave_identical"]) else 1


if __name__ == "__main__":
    sys.exit(main())
