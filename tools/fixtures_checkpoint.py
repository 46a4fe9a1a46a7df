#!/usr/bin/env python3
"""Checkpoint fixtures: tiny random Qwen2.5-VL checkpoints loaded by the reference.

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_checkpoint.py

For each case (tiny configs of the exact architecture, real vocabulary 152064)
this script
  1. writes the case description to tests/fixtures/checkpoints/cases/<name>.json
     (config.json content, seed, dtypes, layouts, shards, scale multipliers: the
     weights are never committed);
  2. generates the checkpoint with numpy from the generator shared with ergo
     (tools/ergo_random.py == src/base/rng.h), rounds with torch's .to(dtype),
     saves it with safetensors (the reference writer) in the case's layouts, and
     copies the tokenizer files from assets/qwen2.5-vl-tokenizer/;
  3. loads it with Qwen2_5_VLForConditionalGeneration.from_pretrained (float32)
     and asserts there are no missing, unexpected or mismatched keys (this proves
     the names, shapes and both layouts are exact);
  4. checks that its own parameter list (names and shapes from the config) is the
     model's state_dict, and records for every tensor, under its legacy name:
     shape, stored dtype, and a float64 fingerprint (sum, sum of squares, values
     at fixed indices, and an exact checksum of the float32 bits), plus the
     parameter counts, the config and the generation config as the reference
     parsed them;
  5. checks that cases marked identical_to load to bit-identical parameters.
It also records the state_dict names and shapes of the real 7B model
(instantiated on the meta device from the published config.json) as spec_7b.json.

The C side (tests/test_checkpoint.c) regenerates each checkpoint with
src/io/random_checkpoint.c, loads it with src/model/weights.c, and compares.
"""
import copy
import json
import math
import os
import shutil
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

import PIL  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "checkpoints"
TOKENIZER_DIR = ROOT / "assets" / "qwen2.5-vl-tokenizer"

# ---------------------------------------------------------------------------
# The generator's scale rule (the same words as src/io/random_checkpoint.h)

SCALE_KEYS = ["embed", "lm_head", "text_matrix", "text_bias", "text_norm",
              "vision_matrix", "vision_bias", "vision_norm"]
KINDS = ["embed", "lm_head", "matrix", "bias", "norm"]
TORCH_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
ST_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def kind_of(name, shape):
    if name == "model.embed_tokens.weight":
        return "embed"
    if name == "lm_head.weight":
        return "lm_head"
    if name.endswith(".bias"):
        return "bias"
    if len(shape) == 1:
        return "norm"
    return "matrix"


def part_of(name):
    return "vision" if name.startswith("visual.") else "text"


def scale_of(case, name, shape):
    m = {k: 1.0 for k in SCALE_KEYS}
    m.update(case.get("scale") or {})
    kind, part = kind_of(name, shape), part_of(name)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 0
    if kind == "embed":
        s = 1.0 * m["embed"]
    elif kind == "lm_head":
        s = m["lm_head"] * (1.0 / math.sqrt(fan_in))
    elif kind == "matrix":
        s = m[f"{part}_matrix"] * (1.0 / math.sqrt(fan_in))
    elif kind == "bias":
        s = 0.02 * m[f"{part}_bias"]
    else:
        s = 0.1 * m[f"{part}_norm"]
    return np.float32(s), kind


def dtype_of(case, kind):
    d = case.get("dtype", "bf16")
    if isinstance(d, str):
        return TORCH_DTYPES[d]
    return TORCH_DTYPES[d.get(kind, d.get("default", "bf16"))]


def generate(case, name, shape):
    """Value i of canonical tensor `name`, rounded to the case's dtype by torch."""
    n = math.prod(shape)
    s, kind = scale_of(case, name, shape)
    u = er.uniform(er.stream_seed(case["seed"], name), n)
    v = u * s  # float32 * float32: one rounding, as in C
    if kind == "norm":
        v = np.float32(1.0) + v
    t = torch.from_numpy(v.astype(np.float32)).reshape(shape)
    return t.to(dtype_of(case, kind))


# ---------------------------------------------------------------------------
# The parameter list, from the config as the reference reads it

def spec(config_json):
    cfg = Qwen2_5_VLConfig(**copy.deepcopy(config_json))
    t, v = cfg.text_config, cfg.vision_config
    out = []
    add = lambda name, *shape: out.append((name, list(shape)))  # noqa: E731
    add("visual.patch_embed.proj.weight", v.hidden_size, v.in_channels, v.temporal_patch_size,
        v.patch_size, v.patch_size)
    for i in range(v.depth):
        p = f"visual.blocks.{i}."
        add(p + "norm1.weight", v.hidden_size)
        add(p + "norm2.weight", v.hidden_size)
        add(p + "attn.qkv.weight", 3 * v.hidden_size, v.hidden_size)
        add(p + "attn.qkv.bias", 3 * v.hidden_size)
        add(p + "attn.proj.weight", v.hidden_size, v.hidden_size)
        add(p + "attn.proj.bias", v.hidden_size)
        for proj, o, i_ in (("gate_proj", v.intermediate_size, v.hidden_size),
                            ("up_proj", v.intermediate_size, v.hidden_size),
                            ("down_proj", v.hidden_size, v.intermediate_size)):
            add(p + f"mlp.{proj}.weight", o, i_)
            add(p + f"mlp.{proj}.bias", o)
    mh = v.hidden_size * v.spatial_merge_size ** 2
    add("visual.merger.ln_q.weight", v.hidden_size)
    add("visual.merger.mlp.0.weight", mh, mh)
    add("visual.merger.mlp.0.bias", mh)
    add("visual.merger.mlp.2.weight", v.out_hidden_size, mh)
    add("visual.merger.mlp.2.bias", v.out_hidden_size)
    hd = t.hidden_size // t.num_attention_heads
    add("model.embed_tokens.weight", t.vocab_size, t.hidden_size)
    for i in range(t.num_hidden_layers):
        p = f"model.layers.{i}."
        add(p + "self_attn.q_proj.weight", t.num_attention_heads * hd, t.hidden_size)
        add(p + "self_attn.q_proj.bias", t.num_attention_heads * hd)
        add(p + "self_attn.k_proj.weight", t.num_key_value_heads * hd, t.hidden_size)
        add(p + "self_attn.k_proj.bias", t.num_key_value_heads * hd)
        add(p + "self_attn.v_proj.weight", t.num_key_value_heads * hd, t.hidden_size)
        add(p + "self_attn.v_proj.bias", t.num_key_value_heads * hd)
        add(p + "self_attn.o_proj.weight", t.hidden_size, t.num_attention_heads * hd)
        add(p + "mlp.gate_proj.weight", t.intermediate_size, t.hidden_size)
        add(p + "mlp.up_proj.weight", t.intermediate_size, t.hidden_size)
        add(p + "mlp.down_proj.weight", t.hidden_size, t.intermediate_size)
        add(p + "input_layernorm.weight", t.hidden_size)
        add(p + "post_attention_layernorm.weight", t.hidden_size)
    add("model.norm.weight", t.hidden_size)
    if not t.tie_word_embeddings:
        add("lm_head.weight", t.vocab_size, t.hidden_size)
    return out, cfg


def to_layout(name, layout):
    if layout == "new":
        if name.startswith("visual."):
            return "model." + name
        if name.startswith("model."):
            return "model.language_model." + name[len("model."):]
    return name


def to_legacy(key):
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


# ---------------------------------------------------------------------------
# Writing a checkpoint directory

def write_checkpoint(case, d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(case["config"], indent=2))
    if case.get("generation_config") is not None:
        (d / "generation_config.json").write_text(json.dumps(case["generation_config"], indent=2))
    for f in TOKENIZER_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, d / f.name)
    params, _ = spec(case["config"])
    layout = case["name_layout"]
    tensors = [(to_layout(n, layout), generate(case, n, s)) for n, s in params]
    nbytes = [t.numel() * t.element_size() for _, t in tensors]
    total = sum(nbytes)
    n_shards = case.get("shards", 1)
    # the same split as random_checkpoint.c: a new shard when the next tensor
    # would push the current one past ceil(total / N)
    cap = -(-total // n_shards)
    shard_of, shard, cur, count = [], 0, 0, 0
    for b in nbytes:
        if count > 0 and cur + b > cap and shard + 1 < n_shards:
            shard, cur, count = shard + 1, 0, 0
        shard_of.append(shard)
        cur += b
        count += 1
    assert shard + 1 == n_shards, "case does not split into its shard count"
    meta = {"format": "pt"}
    if n_shards == 1:
        save_file(dict(tensors), str(d / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for k in range(n_shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: t for (n, t), s in zip(tensors, shard_of) if s == k}
        save_file(part, str(d / fname), metadata=meta)
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": total},
             "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def stored_dtypes(d):
    """Tensor name (legacy) -> dtype as stored, read back with the reference reader."""
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                out[to_legacy(k)] = st.get_slice(k).get_dtype()
    return out


# ---------------------------------------------------------------------------
# Fingerprints

def sample_indices(n):
    return sorted({i for i in (0, 1, n // 7, (3 * n) // 11, n // 2, (5 * n) // 13,
                               (9 * n) // 17, n - 2, n - 1) if 0 <= i < n})


def fingerprint(t):
    """float64 sums, samples, and an exact checksum: sum_i bits32(v_i) * (i % 65521 + 1)
    mod 2^64 over the float32 values (the loaded model is float32)."""
    v = t.detach().to(torch.float32).contiguous().reshape(-1)
    n = v.numel()
    d = v.double()
    bits = v.numpy().view(np.uint32).astype(np.uint64)
    w = (np.arange(n, dtype=np.uint64) % np.uint64(65521)) + np.uint64(1)
    with np.errstate(over="ignore"):
        checksum = int(np.sum(bits * w, dtype=np.uint64))
    return {
        "sum": float(d.sum()),
        "sumsq": float((d * d).sum()),
        "checksum": f"{checksum:016x}",
        "samples": [[i, float(v[i])] for i in sample_indices(n)],
    }


def text_config_record(cfg):
    t, v = cfg.text_config, cfg.vision_config
    return {
        "text": {
            "vocab_size": t.vocab_size, "hidden": t.hidden_size, "ffn": t.intermediate_size,
            "n_layers": t.num_hidden_layers, "n_heads": t.num_attention_heads,
            "n_kv_heads": t.num_key_value_heads, "head_dim": t.hidden_size // t.num_attention_heads,
            "rms_eps": t.rms_norm_eps, "rope_theta": t.rope_theta,
            "mrope_section": list(t.rope_scaling["mrope_section"]),
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": bool(t.tie_word_embeddings),
        },
        "vision": {
            "depth": v.depth, "hidden": v.hidden_size, "n_heads": v.num_heads,
            "head_dim": v.hidden_size // v.num_heads, "ffn": v.intermediate_size,
            "patch": v.patch_size, "temporal_patch": v.temporal_patch_size,
            "merge": v.spatial_merge_size, "window": v.window_size,
            "out_hidden": v.out_hidden_size, "in_channels": v.in_channels,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
        },
        "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id,
    }


def generation_record(g):
    eos = g.eos_token_id
    if eos is None:
        eos = []
    elif isinstance(eos, int):
        eos = [eos]
    return {
        "do_sample": bool(g.do_sample), "temperature": g.temperature, "top_k": g.top_k,
        "top_p": g.top_p, "repetition_penalty": g.repetition_penalty,
        "max_new_tokens": -1 if g.max_new_tokens is None else g.max_new_tokens,
        "max_length": g.max_length, "eos_token_id": list(eos),
        "pad_token_id": -1 if g.pad_token_id is None else g.pad_token_id,
        "bos_token_id": -1 if g.bos_token_id is None else g.bos_token_id,
    }


# ---------------------------------------------------------------------------
# The cases

GEN_7B_INSTRUCT = {
    "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
    "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.1,
    "top_p": 0.001, "top_k": 1, "transformers_version": "4.37.0",
}

TINY_TEXT = dict(vocab_size=152064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                 rope_theta=1000000.0, max_position_embeddings=128000)


def tiny_vision(fullatt):
    return dict(depth=4, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=fullatt, tokens_per_second=2, hidden_act="silu")


def flat_config(tie, fullatt, rope):
    """As Qwen2.5-VL-7B-Instruct's config.json: text fields at the top level."""
    c = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
        "hidden_act": "silu", "initializer_range": 0.02, "max_window_layers": 2,
        "model_type": "qwen2_5_vl", "sliding_window": 32768, "use_cache": True,
        "use_sliding_window": False, "tie_word_embeddings": tie, "torch_dtype": "bfloat16",
    }
    c.update(TINY_TEXT)
    v = tiny_vision(fullatt)
    v["in_chans"] = 3  # the published spelling; the reference reads in_channels (default 3)
    c["vision_config"] = v
    c["rope_scaling"] = rope
    return c


def nested_config(tie, fullatt, rope):
    """As transformers 4.56.2 saves a Qwen2_5_VLConfig: text_config + vision_config."""
    text = dict(TINY_TEXT, tie_word_embeddings=tie, rope_scaling=copy.deepcopy(rope))
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=tiny_vision(fullatt),
                           bos_token_id=151643, eos_token_id=151645,
                           vision_start_token_id=151652, vision_end_token_id=151653)
    d = json.loads(cfg.to_json_string(use_diff=True))
    assert "text_config" in d and "vision_config" in d
    return d


MROPE = {"type": "mrope", "mrope_section": [2, 3, 3]}
ROPE_DEFAULT = {"rope_type": "default", "mrope_section": [2, 3, 3]}

CASES = [
    dict(name="flat_legacy_bf16", seed=1001, config_layout="flat", name_layout="legacy",
         shards=1, dtype="bf16", generation_config=GEN_7B_INSTRUCT,
         config=flat_config(False, [1, 3], MROPE)),
    dict(name="nested_new_bf16", seed=1001, config_layout="nested", name_layout="new",
         shards=1, dtype="bf16", generation_config=GEN_7B_INSTRUCT,
         config=nested_config(False, [1, 3], ROPE_DEFAULT), identical_to="flat_legacy_bf16"),
    dict(name="flat_legacy_bf16_3shards", seed=1001, config_layout="flat",
         name_layout="legacy", shards=3, dtype="bf16", generation_config=GEN_7B_INSTRUCT,
         config=flat_config(False, [1, 3], MROPE), identical_to="flat_legacy_bf16"),
    dict(name="nested_new_f16_tied", seed=2002, config_layout="nested", name_layout="new",
         shards=1, dtype="f16", generation_config=None,
         config=nested_config(True, [0, 3], MROPE)),
    dict(name="flat_new_f32_tied", seed=3003, config_layout="flat", name_layout="new",
         shards=1, dtype="f32", generation_config={"eos_token_id": 151645, "max_new_tokens": 512,
                                                   "do_sample": False},
         scale={"text_matrix": 2.0, "vision_norm": 0.5, "embed": 0.25, "vision_bias": 3.0},
         config=flat_config(True, [1, 3], ROPE_DEFAULT)),
    dict(name="nested_legacy_mixed", seed=4004, config_layout="nested", name_layout="legacy",
         shards=2, dtype={"default": "bf16", "norm": "f32", "bias": "f32", "embed": "f16"},
         generation_config=GEN_7B_INSTRUCT, config=nested_config(False, [0, 3], MROPE)),
]

# Qwen2.5-VL-7B-Instruct's config.json as published (flat layout).
CONFIG_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2",
    "use_cache": True, "use_sliding_window": False,
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
        "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}


def run_case(case, tmp, loaded):
    name = case["name"]
    d = tmp / name
    write_checkpoint(case, d)
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(d), dtype=torch.float32, output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[k], f"{name}: {k}: {info[k]}"
    sd = model.state_dict()
    params, cfg = spec(case["config"])
    want = {n: s for n, s in params}
    if cfg.text_config.tie_word_embeddings:
        want["lm_head.weight"] = want["model.embed_tokens.weight"]
        # tied: the reference shares one parameter
        assert model.lm_head.weight.data_ptr() == \
            model.model.language_model.embed_tokens.weight.data_ptr()
    got = {to_legacy(k): list(v.shape) for k, v in sd.items()}
    assert got == want, f"{name}: parameter list differs from the model's state_dict: " \
        f"{sorted(set(got) ^ set(want))}"
    stored = stored_dtypes(d)
    tensors = []
    for k, v in sd.items():
        n = to_legacy(k)
        # the loaded values are the generated ones (float32 upcast of the stored dtype)
        if n in stored:
            ref = generate(case, n, list(v.shape)).to(torch.float32)
            assert torch.equal(ref, v), f"{name}: {n} differs from the generator"
        rec = {"name": n, "shape": list(v.shape),
               "dtype": stored.get(n, stored.get("model.embed_tokens.weight"))}
        rec.update(fingerprint(v))
        tensors.append(rec)
    vision = sum(p.numel() for k, p in model.named_parameters() if k.startswith("model.visual."))
    total = model.num_parameters()
    gen = generation_record(model.generation_config)
    loaded[name] = {k: v.clone() for k, v in ((to_legacy(k), v) for k, v in sd.items())}
    if case.get("identical_to"):
        other = loaded[case["identical_to"]]
        assert other.keys() == loaded[name].keys()
        for k in other:
            assert torch.equal(other[k], loaded[name][k]), f"{name}: {k} differs"
    files = sorted(p.name for p in d.glob("*.safetensors"))
    return {
        "name": name,
        # asserted above: the reference loads this case to exactly that case's parameters
        "identical_in_reference_to": case.get("identical_to"),
        "loaded_with": "Qwen2_5_VLForConditionalGeneration.from_pretrained(dir, dtype=float32)",
        "files": files,
        "param_count": {"total": total, "vision": vision, "text": total - vision},
        "config": text_config_record(cfg),
        "generation": gen,
        "tensors": tensors,
    }


def spec_7b():
    params, cfg = spec(CONFIG_7B)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    got = [[to_legacy(k), list(v.shape)] for k, v in model.state_dict().items()]
    assert {n: s for n, s in got} == {n: s for n, s in params}, "7B list differs"
    return {"config": CONFIG_7B, "parsed": text_config_record(cfg),
            "param_count": model.num_parameters(),
            "tensors": got}


# ---------------------------------------------------------------------------
# The safetensors writer's golden file and the fuzz seed corpus

WRITER_ENTRIES = [("b.weight", "F32", [2, 3]), ("a.bias", "BF16", [4]), ("z", "F16", [3, 1]),
                  ("m.0", "I64", [2]), ("emb", "U8", [5]), ("k", "I8", [3]), ("d", "F64", [1]),
                  ("empty", "I32", [0]), ("s", "F32", []), ("a.weight", "BF16", [2, 2])]
ST_TORCH = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
            "I64": torch.int64, "U8": torch.uint8, "I8": torch.int8, "F64": torch.float64,
            "I32": torch.int32}


def writer_golden():
    """A file written by the reference writer (safetensors.torch.save_file); element
    bytes are (entry index * 31 + byte index) & 0xFF, as tests/test_safetensors.c fills."""
    tensors = {}
    for i, (name, dt, shape) in enumerate(WRITER_ENTRIES):
        td = ST_TORCH[dt]
        n = math.prod(shape) * torch.empty((), dtype=td).element_size()
        if n == 0:
            tensors[name] = torch.empty(shape, dtype=td)
            continue
        b = bytearray(((i * 31 + k) & 0xFF) for k in range(n))
        tensors[name] = torch.frombuffer(b, dtype=td).clone().reshape(shape)
    save_file(tensors, str(OUT / "writer_golden.safetensors"), metadata={"format": "pt"})
    (OUT / "writer_golden.json").write_text(json.dumps({
        "written_by": f"safetensors {safetensors.__version__} safetensors.torch.save_file",
        "entries": [{"name": n, "dtype": d, "shape": s} for n, d, s in WRITER_ENTRIES]},
        indent=1) + "\n")


def fuzz_corpus():
    """Tiny valid files (reference writer) and invalid ones (hand-made), as fuzz seeds."""
    d = ROOT / "tests" / "fuzz_corpus" / "safetensors"
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    valid = {
        "valid_f32": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        "valid_mixed": {"a": torch.ones(2, dtype=torch.bfloat16), "b": torch.zeros(3, dtype=torch.float16),
                        "c": torch.arange(2, dtype=torch.int64), "s": torch.tensor(1.5)},
        "valid_empty": {},
        "valid_zero_size": {"e": torch.empty(0, 4)},
    }
    for name, t in valid.items():
        save_file(t, str(d / f"{name}.safetensors"), metadata={"format": "pt"})

    def raw(header, data=b"", n=None):
        h = header.encode()
        return (len(h) if n is None else n).to_bytes(8, "little") + h + data
    invalid = {
        "truncated": b"\x08\x00\x00",
        "len_past_end": raw("{}", n=1000),
        "not_json": raw('{"a": {dtype'),
        "not_object": raw("[1]"),
        "unknown_dtype": raw('{"w":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}', b"\0"),
        "bad_bytes": raw('{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8),
        "gap": raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                   '"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}', b"\0" * 3),
        "overlap": raw('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                       '"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"\0" * 2),
        "out_of_range": raw('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"\0"),
        "overflow": raw('{"a":{"dtype":"F64","shape":[4294967296,4294967296],'
                        '"data_offsets":[0,8]}}', b"\0" * 8),
        "metadata_int": raw('{"__metadata__":{"a":1}}'),
        "f4_odd": raw('{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}', b"\0"),
    }
    for name, b in invalid.items():
        (d / f"invalid_{name}.safetensors").write_bytes(b)


def main():
    torch.manual_seed(0)
    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "safetensors": safetensors.__version__, "tokenizers": tokenizers.__version__,
                "Pillow": PIL.__version__, "numpy": np.__version__}
    (OUT / "cases").mkdir(parents=True, exist_ok=True)
    (OUT / "expected").mkdir(parents=True, exist_ok=True)
    manifest = {"versions": versions, "cases": []}
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="ergo-ckpt-") as tmp:
        for case in CASES:
            print(f"  {case['name']}", flush=True)
            rec = run_case(case, Path(tmp), loaded)
            desc = {k: v for k, v in case.items() if k != "identical_to"}
            (OUT / "cases" / f"{case['name']}.json").write_text(json.dumps(desc, indent=1) + "\n")
            (OUT / "expected" / f"{case['name']}.json").write_text(json.dumps(rec) + "\n")
            manifest["cases"].append({
                "name": case["name"], "case": f"cases/{case['name']}.json",
                "expected": f"expected/{case['name']}.json",
                "identical_to": case.get("identical_to")})
            shutil.rmtree(Path(tmp) / case["name"])
    writer_golden()
    fuzz_corpus()
    (OUT / "spec_7b.json").write_text(json.dumps(spec_7b()) + "\n")
    manifest["spec_7b"] = "spec_7b.json"
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(CASES)} cases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
