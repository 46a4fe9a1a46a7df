#!/usr/bin/env python3
"""One GRPO update of a tiny random Qwen2.5-VL from fixed two-turn rollouts
(tests/fixtures/grpo/update.json + update.*.safetensors, read by tests/test_grpo_train.c).

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_grpo_train.py

The checkpoint is tools/fixtures_train.py's train_tied (512-token vocabulary, hidden 64,
regenerated bit for bit on the C side from tests/fixtures/train/cases/train_tied.json),
visual.* frozen. A group of G = 4 rollouts of one prompt, each two assistant turns with
an image in the prompt and a crop in the injected user turn (training.md section 1.8):
  [prompt: system, user(image + text), assistant header]  [turn 1 + <im_end>]
  [injected: "\\n", user(crop + text), <im_end>, "\\n", assistant header]  [turn 2 + <im_end>]
one rollout's turn 2 is truncated (no <im_end>, trained on as VLM-R1 does) and one has
tokens after its turn-1 <im_end> (masked). The mask is TRL v0.23.0's first-EOS rule
(grpo_trainer.py lines 1335-1340) per generated turn (tools/fixtures_grpo.py turn_mask).

The update, as TRL v0.23.0's GRPOTrainer does it with num_iterations 2 (old
log-probabilities given) and beta 0.04:
  per_token_logps = log_softmax(logits[:, :-1] / temperature) at the next ids
      (_get_per_token_logps_and_entropies: logits / self.temperature, then
       selective_log_softmax), temperature 0.7 (the rollout temperature);
  old / ref log-probabilities: the policy's own, perturbed (fixed data: a policy one
      step older and a different reference), stored in the fixture;
  advantages from fixed rewards (scale "group");
  the loss: tools/fixtures_grpo.py trl_compute_loss (loss_type "grpo", eps 0.2,
      epsilon_high 0.28), on the (B, T) right-padded batch of the rollouts;
  backward, clip_grad_norm_(1.0), one torch.optim.AdamW step (lr 1e-3, weight decay 0.1
      on the Trainer's decay group, as fixtures_train.py's adamw_5).
Recorded: the rollouts (ids, segments, M-RoPE positions, grids; pixel values in
update.inputs.safetensors: image1, the prompt's, and crop<i> of rollout i), per-token logp of the policy (for the C forward), old and
ref logp, advantages, the loss, every parameter gradient (update.grads.safetensors),
the gradient norm and the weights after the step (update.weights.safetensors). The same
run in float64 gives the float32 reference's own error (f32_vs_f64).
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import fixtures_train as ft  # noqa: E402
import fixtures_checkpoint as fc  # noqa: E402
from fixtures_grpo import trl_advantages, trl_compute_loss, turn_mask  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "grpo"
TAU = 0.7
G = 4
LR, WD, MAX_NORM = 1e-3, 0.1, 1.0
EPS_LOW, EPS_HIGH, BETA = 0.2, 0.28, 0.04
GRID1, GRID2 = (1, 4, 8), (1, 4, 4)


class Rollout:
    def __init__(self):
        self.ids, self.segs, self.grids = [], [], []

    def add(self, kind, toks):
        self.segs.append({"kind": kind, "start": len(self.ids), "len": len(toks)})
        self.ids += toks


def image_tokens(grid):
    t, h, w = grid
    return [ft.VISION_START] + [ft.IMAGE] * (t * (h // ft.MERGE) * (w // ft.MERGE)) + [ft.VISION_END]


def make_rollouts(rng):
    text = lambda n: rng.randint(0, ft.TEXT_MAX, n).tolist()  # noqa: E731
    prompt = ([ft.IM_START] + text(1) + text(3) + [ft.IM_END] + text(1) +
              [ft.IM_START] + text(1) + image_tokens(GRID1) + text(4) + [ft.IM_END] + text(1) +
              [ft.IM_START] + text(1))
    out = []
    for k in range(G):
        r = Rollout()
        r.add(0, prompt)
        t1 = text(5 + k) + [ft.IM_END] + (text(2) if k == 1 else [])  # rollout 1 runs on
        r.add(1, t1)
        r.add(0, text(1) + [ft.IM_START] + text(1) + image_tokens(GRID2) + text(3) + [ft.IM_END] +
              text(1) + [ft.IM_START] + text(1))
        r.add(1, text(3 + k) + ([] if k == 2 else [ft.IM_END]))  # rollout 2 is truncated
        r.grids = [list(GRID1), list(GRID2)]
        out.append(r)
    return out


def build_mask(r):
    mask = [0] * len(r.ids)
    for s in r.segs:
        if s["kind"] == 1:
            m, _ = turn_mask(r.ids[s["start"]:s["start"] + s["len"]], ft.IM_END)
            mask[s["start"]:s["start"] + s["len"]] = m
    return mask


def policy_logps(model, r, pix, dtype):
    """Per-position log-probabilities of the next id at temperature TAU (positions
    0..n-2), as TRL's _get_per_token_logps_and_entropies computes them."""
    ids = torch.tensor([r.ids])
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
          "pixel_values": pix.to(dtype), "image_grid_thw": torch.tensor(r.grids)}
    logits = model(**kw).logits[0, :-1]  # (n-1, V): position i predicts ids[i+1]
    logits = logits / TAU
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)


def run(ckpt, rollouts, pixs, old_d, ref_d, adv, tmp, dtype):
    model = ft.load(ckpt, tmp, dtype)
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    decay = ft.decay_names(model)
    named = [(fc.to_legacy(k), p) for k, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": WD},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    T = max(len(r.ids) for r in rollouts) - 1
    B = len(rollouts)
    lp = torch.zeros(B, T, dtype=dtype)
    mask = torch.zeros(B, T, dtype=dtype)
    old = torch.zeros(B, T, dtype=dtype)
    ref = torch.zeros(B, T, dtype=dtype)
    rows = []
    for i, r in enumerate(rollouts):
        x = policy_logps(model, r, pixs[i], dtype)
        n = x.shape[0]
        m = torch.tensor(build_mask(r)[1:], dtype=dtype)  # position i carries token i+1's mask
        row = torch.cat([x, torch.zeros(T - n, dtype=dtype)])
        rows.append(row)
        mask[i, :n] = m
        sel = m.bool()
        o = torch.zeros(T, dtype=dtype)
        f = torch.zeros(T, dtype=dtype)
        o[:n][sel] = torch.tensor(old_d[i], dtype=dtype)
        f[:n][sel] = torch.tensor(ref_d[i], dtype=dtype)
        old[i], ref[i] = o, f
    lp = torch.stack(rows)
    # padded / unmasked positions: finite values, multiplied by mask 0 (as in TRL)
    old = torch.where(mask.bool(), old, lp.detach())
    ref = torch.where(mask.bool(), ref, lp.detach())
    loss, metrics = trl_compute_loss(lp, old, ref, mask, torch.tensor(adv, dtype=dtype), BETA,
                                     EPS_LOW, EPS_HIGH, None, "grpo", 0, 1, None, 1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone().contiguous() for n, p in named}
    norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], max_norm=MAX_NORM)
    opt.step()
    w = {n: p.detach().clone().contiguous() for n, p in named}
    logps = [lp[i][mask[i].bool()].detach().tolist() for i in range(B)]
    return loss.item(), metrics, logps, grads, float(norm), w, decay, named


def main():
    torch.manual_seed(0)
    rng = np.random.RandomState(4242)
    ckpt = ft.CKPTS["train_tied"]
    rollouts = make_rollouts(rng)
    # the prompt's image is the same in every rollout; the crops differ
    image1 = ft.pixels([GRID1], 100)
    crops = [ft.pixels([GRID2], 200 + i) for i in range(G)]
    pixs = [torch.cat([image1, c]) for c in crops]
    rewards = [3.5, 1.0, 0.0, 2.5]
    adv = trl_advantages(rewards, G, "group")["advantages"]
    with tempfile.TemporaryDirectory(prefix="ergo-grpo-") as tmpd:
        tmp = Path(tmpd)
        # the policy's own logp, to perturb into old / ref (fixed data from here on)
        model = ft.load(ckpt, tmp, torch.float32)
        base = []
        with torch.no_grad():
            for i, r in enumerate(rollouts):
                x = policy_logps(model, r, pixs[i], torch.float32)
                m = torch.tensor(build_mask(r)[1:]).bool()
                base.append(x[m].double().numpy())
            positions = [ft.rope_ids(model, r)[0] for r in rollouts]
        prng = np.random.default_rng(77)
        # old: ratios spread over both clip bounds; float32 values
        old_d = [(b - prng.uniform(-0.5, 0.5, b.shape)).astype(np.float32).astype(np.float64).tolist()
                 for b in base]
        ref_d = [(b + prng.uniform(-0.4, 0.4, b.shape)).astype(np.float32).astype(np.float64).tolist()
                 for b in base]
        loss, metrics, logps, grads, norm, w, decay, named = run(
            ckpt, rollouts, pixs, old_d, ref_d, adv, tmp, torch.float32)
        loss64, _, logps64, grads64, norm64, w64, _, _ = run(
            ckpt, rollouts, pixs, old_d, ref_d, adv, tmp, torch.float64)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({"image1": image1.contiguous(), **{f"crop{i}": c.contiguous() for i, c in enumerate(crops)}},
              str(OUT / "update.inputs.safetensors"), metadata={"format": "pt"})
    save_file({k: v.float() for k, v in grads.items()}, str(OUT / "update.grads.safetensors"),
              metadata={"format": "pt"})
    save_file(w, str(OUT / "update.weights.safetensors"), metadata={"format": "pt"})
    recs = []
    for i, r in enumerate(rollouts):
        recs.append({"ids": r.ids, "segments": r.segs, "positions": positions[i],
                     "image_grid_thw": r.grids,
                     "mask": build_mask(r), "old_logp": old_d[i], "ref_logp": ref_d[i],
                     "logp": logps[i]})
    dev_lp = max(abs(a - b) for x, y in zip(logps, logps64) for a, b in zip(x, y))
    rec = {
        "reference": "TRL v0.23.0 GRPOTrainer (see tools/fixtures_grpo_train.py), torch "
                     f"{torch.__version__}, transformers {ft.transformers.__version__}",
        "case": "cases/train_tied.json", "trainable": "text (visual.* frozen)",
        "token_ids": {"im_end": ft.IM_END, "image": ft.IMAGE},
        "temperature": TAU, "group_size": G, "rewards": rewards, "advantages": adv,
        "scale_rewards": "group", "loss_type": "grpo", "kl_beta": BETA,
        "eps_low": EPS_LOW, "eps_high": EPS_HIGH,
        "optimizer": {"lr": LR, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": WD},
        "max_grad_norm": MAX_NORM,
        "no_decay": sorted(n for n, _ in named if n not in decay),
        "rollouts": recs, "inputs_file": "update.inputs.safetensors",
        "grads_file": "update.grads.safetensors", "weights_file": "update.weights.safetensors",
        "grads": {k: list(v.shape) for k, v in grads.items()},
        "loss": loss, "grad_norm": norm, "metrics": metrics,
        "f32_vs_f64": {"loss": abs(loss - loss64), "logp": dev_lp,
                       "grad_norm": abs(norm - norm64), "grads": ft.deviation(grads, grads64),
                       "weights": ft.deviation(w, w64),
                       "weights_changed_over_1e-5": ft.adamw_outliers(w, w64, 1e-5)},
    }
    (OUT / "update.json").write_text(json.dumps(rec, allow_nan=False) + "\n")
    total = sum((OUT / f).stat().st_size for f in ["update.json", "update.inputs.safetensors",
                                                   "update.grads.safetensors",
                                                   "update.weights.safetensors"])
    print(f"wrote {OUT.relative_to(ROOT)}/update.* ({total / 1e6:.2f} MB): loss {loss:.6g}, "
          f"grad norm {norm:.6g}, clip {metrics}, f32 vs f64 {rec['f32_vs_f64']}")


if __name__ == "__main__":
    main()
