"""How far half precision moves a rollout step's log-prob, per model and per autocast dtype.

A rollout is sampled in fp32 on the built-in models (shapes-sd with DDIM eta 1, shapes-flow with
the Flow-GRPO SDE); each of its stochastic steps is re-scored with the network under CPU autocast
in bf16 and in fp16, step math in fp32. Printed: the median and max |log p_half - log p_fp32| per
transition (log-probs are per-dimension means, as DDPO's clip range assumes), and the share of
transitions whose PPO ratio would leave a clip range of 1e-4 from precision alone.

    python benchmarks/precision_logprob.py [--out benchmarks/results/precision_logprob.md]
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from ddrl.models.loading import load_policy
from ddrl.models.policy import guided_prediction
from ddrl.sampling import DDIMSampler, FlowSampler, rollout


def errors(name: str, n: int = 16, steps: int = 10) -> dict[str, list[float]]:
    policy = load_policy(name)
    if policy.prediction == "epsilon":
        sampler = DDIMSampler(policy.schedule(steps), 1.0)
    else:
        sampler = FlowSampler(policy.sigmas(steps), "sde", 0.7, 0, 0)
    from ddrl.prompts import load_prompt_records

    prompts = [p for p, _ in load_prompt_records("shapes:train")][:n]
    with torch.no_grad():
        cond, uncond = policy.encode(prompts), policy.encode([""]).repeat(n)
        g = torch.Generator().manual_seed(0)
        traj = rollout(lambda x, t: guided_prediction(policy, x, t, cond, uncond, 1.0),
                       torch.randn(n, *policy.latent_shape, generator=g), sampler,
                       noise=lambda: torch.randn(n, *policy.latent_shape, generator=g))
        out = {"bf16": [], "fp16": []}
        for j in sampler.stochastic.nonzero().flatten().tolist():
            x_t, x_prev, jj = traj.latents[:, j], traj.latents[:, j + 1], torch.full((n,), j)
            time = sampler.model_time(jj)
            lp = {}
            for prec in ("fp32", "bf16", "fp16"):
                ctx = (contextlib.nullcontext() if prec == "fp32" else
                       torch.autocast("cpu", dtype=torch.bfloat16 if prec == "bf16" else torch.float16))
                with ctx:
                    pred = guided_prediction(policy, x_t, time, cond, uncond, 1.0)
                lp[prec] = sampler.step(jj, x_t, pred, x_prev=x_prev).log_prob
            for prec in ("bf16", "fp16"):
                out[prec] += (lp[prec] - lp["fp32"]).abs().tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    lines = ["| model | autocast | median abs log-prob error | max | transitions with error > 1e-4 |",
             "|---|---|---|---|---|"]
    for name in ("shapes-sd", "shapes-flow"):
        for prec, e in errors(name).items():
            t = torch.tensor(e)
            lines.append(f"| {name} | {prec} | {float(t.median()):.2e} | {float(t.max()):.2e} | "
                         f"{float((t > 1e-4).float().mean()):.0%} of {len(e)} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Log-prob error of half-precision network passes (CPU autocast)\n\n"
                    "`python benchmarks/precision_logprob.py`: 16 prompts, 10 steps, seed 0; DDIM eta 1 for "
                    "shapes-sd, the Flow-GRPO SDE (noise level 0.7) for shapes-flow; step math in fp32.\n\n"
                    + text + "\n")


if __name__ == "__main__":
    main()
