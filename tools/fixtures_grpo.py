#!/usr/bin/env python3
"""GRPO objective fixtures: TRL's advantages, loss, gradient and metrics, and the
two-turn segment mask (tests/fixtures/grpo/grpo.json, read by tests/test_grpo.c).

Run from the repository root with the reference environment:
    /work/venv/bin/python tools/fixtures_grpo.py

The reference is TRL v0.23.0 trl/trainer/grpo_trainer.py (huggingface/trl tag v0.23.0),
ported line by line below with the line numbers of that file:
  - advantages: GRPOTrainer._generate_and_score_completions, lines 1441-1464 and the
    logged reward / reward_std / frac_reward_zero_std of lines 1501-1503;
  - loss: GRPOTrainer._compute_loss, lines 1624-1756 (importance_sampling_level
    "token", top_entropy_quantile 1.0, no vLLM importance-sampling correction); the
    gradient is torch autograd's d loss / d per_token_logps;
  - the completion mask of one turn: lines 1335-1340 (everything after the first EOS
    is masked, the EOS itself kept), applied per generated turn as training.md
    section 1.8 prescribes for a two-turn rollout (TRL >= 0.26 tool_mask layout).
TRL runs this in the logits' dtype (float32 / bfloat16); we run it in float64 on
float32-representable inputs, so the fixture holds the exact values of TRL's formulas
and a C implementation in double differs by rounding only.

The inputs are on a grid of 2^-12 (|values| < 8: exact in float32, and exact after
adding +-2^-12), so the C test can take central differences on the same cases.
Ratios are kept at least 1e-3 (in log space) away from every clip bound, so that no
token sits at a kink and the clip decisions cannot depend on rounding.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "grpo"
GRID = 2.0 ** -12
IM_END, IMAGE_PAD, ENDOFTEXT = 151645, 151655, 151643
IM_START, VISION_START, VISION_END = 151644, 151652, 151653


def q(x):
    """Round to the 2^-12 grid (float32- and float64-exact)."""
    return np.round(np.asarray(x, dtype=np.float64) / GRID) * GRID


# ---------------------------------------------------------------------------
# TRL v0.23.0, ported


def trl_advantages(rewards, num_generations, scale_rewards):
    """grpo_trainer.py lines 1443-1464, 1501-1503 (rewards already summed, line 1441)."""
    rewards = torch.tensor(rewards, dtype=torch.float64)
    # 1444: mean_grouped_rewards = rewards.view(-1, self.num_generations).mean(dim=1)
    mean_grouped_rewards = rewards.view(-1, num_generations).mean(dim=1)
    # 1447-1448
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean_grouped_rewards
    # 1450-1460
    if scale_rewards in ["group", "none"]:
        std_rewards = rewards.view(-1, num_generations).std(dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    elif scale_rewards == "batch":
        std_rewards = rewards.std().expand_as(rewards)
    else:
        raise ValueError(scale_rewards)
    # 1462-1464
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    # groups whose own std is zero (what ergo reports per group, whatever the mode)
    group_std = rewards.view(-1, num_generations).std(dim=1)
    zero_std = torch.isclose(group_std, torch.zeros_like(group_std))
    return {
        "advantages": advantages.tolist(),
        "zero_std": [int(z) for z in zero_std.tolist()],
        # 1501-1503
        "reward_mean": mean_grouped_rewards.mean().item(),
        "reward_std": std_rewards.mean().item(),
        "frac_zero_std": is_std_zero.float().mean().item(),
    }


def trl_compute_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, completion_mask,
                     advantages, beta, epsilon_low, epsilon_high, delta, loss_type,
                     max_completion_length, current_gradient_accumulation_steps,
                     num_items_in_batch, num_processes):
    """GRPOTrainer._compute_loss, lines 1650-1756, from per_token_logps on."""
    # 1651-1655: the KL to the reference
    if beta != 0.0:
        per_token_kl = (
            torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
        )
    # 1665
    old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
    # 1667-1669 (importance_sampling_level == "token")
    log_ratio = per_token_logps - old_per_token_logps
    log_importance_weights = log_ratio
    # 1681-1686
    coef_1 = torch.exp(log_importance_weights)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        coef_1 = torch.clamp(coef_1, max=delta)
    # 1688-1690
    per_token_loss1 = coef_1 * advantages.unsqueeze(1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    # 1697-1698
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    # 1700-1713
    if loss_type == "grpo":
        loss = ((per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)).mean()
        loss = loss / current_gradient_accumulation_steps
    elif loss_type == "bnpo":
        loss = (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)
        loss = loss / current_gradient_accumulation_steps
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * completion_mask).sum() / (per_token_loss.size(0) * max_completion_length)
        loss = loss / current_gradient_accumulation_steps
    elif loss_type == "dapo":
        normalizer = num_items_in_batch / num_processes
        loss = (per_token_loss * completion_mask).sum() / normalizer
    else:
        raise ValueError(f"Unknown loss type: {loss_type}")
    # 1718-1740: the metrics of one rank
    completion_token_count = completion_mask.sum().clamp(min=1.0)

    def masked_batch_mean(x):
        return (x * completion_mask).sum() / completion_token_count

    metrics = {}
    if beta != 0.0:
        metrics["kl"] = masked_batch_mean(per_token_kl).item()
    is_low_clipped = (coef_1 < 1 - epsilon_low) & (advantages.unsqueeze(1) < 0)
    is_high_clipped = (coef_1 > 1 + epsilon_high) & (advantages.unsqueeze(1) > 0)
    is_region_clipped = is_low_clipped | is_high_clipped
    metrics["clip_low"] = masked_batch_mean(is_low_clipped.float()).item()
    metrics["clip_high"] = masked_batch_mean(is_high_clipped.float()).item()
    metrics["clip_region"] = masked_batch_mean(is_region_clipped.float()).item()
    return loss, metrics


def turn_mask(ids, eos):
    """Lines 1335-1340 for one completion (a (1, T) batch): 1 up to the first EOS."""
    completion_ids = torch.tensor([ids])
    is_eos = completion_ids == eos
    eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long)
    eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
    sequence_indices = torch.arange(is_eos.size(1)).expand(is_eos.size(0), -1)
    completion_mask = (sequence_indices <= eos_idx.unsqueeze(1)).int()
    return completion_mask[0].tolist(), bool(is_eos.any())


# ---------------------------------------------------------------------------
# Cases


def far_from(x, bounds, gap=1e-3):
    return all(abs(math.log(x) - math.log(b)) > gap for b in bounds)


def loss_inputs(rng, B, T, mu, eps_low, eps_high, delta):
    """logp, old (or None), ref, mask, advantages of a (B, T) micro-batch.
    Lengths differ (right padding), one token inside is masked, and for mu = 2 the
    ratios spread over both clip bounds (and delta when set)."""
    bounds = [1 - eps_low, 1 + eps_high] + ([delta] if delta else [])
    logp = q(-rng.uniform(0.7, 4.0, (B, T)))  # so that old and ref stay < 0
    ref = q(logp + rng.uniform(-0.6, 0.6, (B, T)))
    old = None
    if mu > 1:
        old = np.zeros((B, T))
        for i in range(B):
            for t in range(T):
                while True:
                    lr = rng.uniform(-0.6, 0.6)
                    if delta and rng.uniform() < 0.2:
                        lr = rng.uniform(math.log(delta), math.log(delta) + 0.3)
                    o = float(q(logp[i, t] - lr))
                    if far_from(math.exp(logp[i, t] - o), bounds):
                        break
                old[i, t] = o
    lengths = [T, T - 1, T - 3, T - 2][:B]
    mask = np.zeros((B, T), dtype=np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    mask[0, 2] = 0  # a masked token inside a sequence (e.g. an injected turn)
    return logp, old, ref, mask


def loss_case(name, rng, loss_type, mu, beta, adv, eps_low=0.2, eps_high=0.2, delta=None,
              grad_accum=1, num_processes=1, extra_tokens=0, max_completion_length=8, T=6,
              empty_seq=False):
    B = len(adv)
    logp, old, ref, mask = loss_inputs(rng, B, T, mu, eps_low, eps_high, delta)
    if empty_seq:
        mask[B - 1, :] = 0
    lp = torch.tensor(logp, requires_grad=True)
    # dapo's num_items_in_batch: the gathered completion lengths of the whole generation
    # batch (line 1349), i.e. this micro-batch's plus those of other micro-batches / ranks
    num_items = int(mask.sum()) + extra_tokens
    loss, metrics = trl_compute_loss(
        lp, None if old is None else torch.tensor(old), torch.tensor(ref) if beta != 0.0 else None,
        torch.tensor(mask, dtype=torch.float64), torch.tensor(adv), beta, eps_low, eps_high, delta,
        loss_type, max_completion_length, grad_accum, torch.tensor(float(num_items)), num_processes)
    loss.backward()
    grad = lp.grad.numpy()
    # the k3 KL as a metric is also checked when beta = 0 (ergo reports it whenever a
    # reference is given): the same masked_batch_mean of the same expression
    with torch.no_grad():
        kl = (torch.exp(torch.tensor(ref) - lp) - (torch.tensor(ref) - lp) - 1)
        m = torch.tensor(mask, dtype=torch.float64)
        metrics["kl"] = ((kl * m).sum() / m.sum().clamp(min=1.0)).item()
    rho = np.exp(logp - (old if old is not None else logp))
    return {
        "name": name,
        "loss_type": loss_type, "mu": mu, "kl_beta": beta, "eps_low": eps_low, "eps_high": eps_high,
        "delta": delta or 0.0, "max_completion_length": max_completion_length,
        "grad_accum": grad_accum, "n_processes": num_processes, "global_tokens": num_items,
        "seqs": [{
            "logp": logp[i].tolist(),
            "old_logp": None if old is None else old[i].tolist(),
            "ref_logp": ref[i].tolist(),  # given to C always; the loss uses it only when beta > 0
            "mask": mask[i].tolist(),
            "advantage": float(adv[i]),
        } for i in range(B)],
        "loss": loss.item(),
        "grad": [grad[i].tolist() for i in range(B)],
        "kl": metrics["kl"], "clip_low": metrics["clip_low"], "clip_high": metrics["clip_high"],
        "clip_region": metrics["clip_region"],
        # for the reader: how many masked tokens are clipped on each side
        "n_rho_low": int(((rho < 1 - eps_low) & (mask > 0)).sum()),
        "n_rho_high": int(((rho > 1 + eps_high) & (mask > 0)).sum()),
    }


def loss_cases(rng):
    # advantages of 2 groups of 2 rollouts (TRL's rule, scale "group"), plus signs of both kinds
    adv_a = trl_advantages([1.0, 0.0, 2.5, 0.5], 2, "group")["advantages"]
    adv_b = [0.8, -1.3, 0.0, -0.4]  # a zero advantage: only the KL moves that sequence
    cases = []
    for lt in ["grpo", "bnpo", "dr_grpo", "dapo"]:
        for mu in [1, 2]:
            for beta in [0.0, 0.04]:
                adv = adv_a if beta == 0.0 else adv_b
                # mu = 2 runs with accumulation and 2 ranks: GA divides grpo / bnpo /
                # dr_grpo, and dapo's global count includes another rank's tokens
                ga, P, extra = (2, 2, 13) if mu == 2 else (1, 1, 0)
                cases.append(loss_case(f"{lt}_mu{mu}_beta{beta:g}", rng, lt, mu, beta, adv,
                                       grad_accum=ga, num_processes=P, extra_tokens=extra))
    cases.append(loss_case("grpo_mu2_clip_higher_delta", rng, "grpo", 2, 0.04, adv_b,
                           eps_high=0.28, delta=1.5))
    cases.append(loss_case("dapo_mu2_delta", rng, "dapo", 2, 0.0, adv_a, delta=1.4,
                           num_processes=2, extra_tokens=9))
    cases.append(loss_case("grpo_mu2_empty_sequence", rng, "grpo", 2, 0.04, adv_b, empty_seq=True))
    cases.append(loss_case("bnpo_mu2_single", rng, "bnpo", 2, 0.04, [-0.9]))
    return cases


def advantage_cases():
    out = []
    groups = [
        ("three_groups", 4, [1.0, 0.0, 0.5, 2.0, 1.5, 1.5, 1.5, 1.5, 0.0, 2.5, 0.0, 2.5]),
        # ERGO's R = r_region + 0.5 r_box + r_acc + r_format, G = 8, one group all equal
        ("ergo_g8", 8, [3.5, 2.0, 1.5, 3.5, 0.0, 1.0, 2.5, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("all_equal", 4, [0.5] * 8),
        ("fractional", 3, [0.1, 0.7, 0.3, 0.2, 0.2, 0.2000001]),
    ]
    for name, G, r in groups:
        for scale in ["group", "batch", "none"]:
            d = trl_advantages(r, G, scale)
            d.update({"name": f"{name}_{scale}", "group_size": G, "scale_rewards": scale, "rewards": r})
            out.append(d)
    return out


def rollout(rng, t1, t2, after_end1=0, truncated2=False, pads=0, image_pads=(6, 4)):
    """ids and segments of a two-turn rollout (turn 2 optional)."""
    text = lambda n: [int(x) for x in rng.integers(0, 151000, n)]  # noqa: E731
    prompt = [IM_START] + text(5) + [IM_END, 198, IM_START] + text(2) + [VISION_START] + \
        [IMAGE_PAD] * image_pads[0] + [VISION_END] + text(7) + [IM_END, 198, IM_START] + text(2)
    segs, ids = [], []

    def add(kind, toks):
        segs.append({"kind": kind, "start": len(ids), "len": len(toks)})
        ids.extend(toks)

    add(0, prompt)
    # turn 1: its <|im_end|> then tokens after it (a sampler that ran on)
    add(1, text(t1) + [IM_END] + text(after_end1))
    if t2:
        add(0, [198, IM_START] + text(1) + [198, VISION_START] + [IMAGE_PAD] * image_pads[1] +
            [VISION_END] + text(9) + [IM_END, 198, IM_START] + text(2))
        add(1, text(t2) + ([] if truncated2 else [IM_END]))
    ids.extend([ENDOFTEXT] * pads)
    return ids, segs


def mask_cases(rng):
    specs = [
        ("two_turns", dict(t1=7, t2=5), 0),
        ("two_turns_padded_run_on", dict(t1=4, t2=6, after_end1=3, pads=4), 0),
        ("one_turn", dict(t1=9, t2=0, pads=2), 0),
        ("turn2_truncated", dict(t1=5, t2=6, truncated2=True), 0),
        ("turn2_truncated_masked", dict(t1=5, t2=6, truncated2=True), 1),
    ]
    out = []
    for name, kw, mask_truncated in specs:
        ids, segs = rollout(rng, **kw)
        mask = [0] * len(ids)
        n_generated, truncated = 0, False
        for s in segs:
            if s["kind"] != 1:
                continue
            m, has_eos = turn_mask(ids[s["start"]:s["start"] + s["len"]], IM_END)
            truncated |= not has_eos
            for k, v in enumerate(m):
                mask[s["start"] + k] = v
            n_generated += sum(m)
        if truncated and mask_truncated:  # line 1352-1354, for the whole rollout
            mask = [0] * len(ids)
        targets = [ids[i + 1] if mask[i + 1] else -1 for i in range(len(ids) - 1)] + [-1]
        out.append({"name": name, "ids": ids, "segments": segs, "mask_truncated": mask_truncated,
                    "mask": mask, "targets": targets, "n_loss": sum(mask),
                    "n_generated": n_generated, "n_turns": sum(s["kind"] for s in segs),
                    "truncated": int(truncated)})
    return out


def main():
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(20260412)
    data = {
        "reference": "huggingface/trl v0.23.0 trl/trainer/grpo_trainer.py (_compute_loss lines "
                     "1624-1756, advantages lines 1441-1464), ported in tools/fixtures_grpo.py, "
                     "run in float64",
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "im_end_id": IM_END, "image_pad_id": IMAGE_PAD,
        "fd_step": GRID,
        "loss_cases": loss_cases(rng),
        "advantage_cases": advantage_cases(),
        "mask_cases": mask_cases(rng),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "grpo.json"
    path.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
    n_low = sum(c["n_rho_low"] for c in data["loss_cases"])
    n_high = sum(c["n_rho_high"] for c in data["loss_cases"])
    print(f"wrote {path} ({path.stat().st_size} bytes): {len(data['loss_cases'])} loss cases "
          f"({n_low} tokens below, {n_high} above the clip range), "
          f"{len(data['advantage_cases'])} advantage cases, {len(data['mask_cases'])} mask cases")


if __name__ == "__main__":
    main()
