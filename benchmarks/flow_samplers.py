"""Flow samplers and flow RL algorithms, measured:

1. fidelity: 1-D Gaussian data N(1.5, 0.5^2) with its exact velocity field; the final mean and
   std of the Euler ODE, Flow-SDE (a = 0.7), CPS (eta = 0.8) and DPM-Solver++(2M) (DiffusionNFT's
   rollout solver) samplers at 10 and 40 steps;
2. residual noise: the built-in shapes-flow model's final samples at 10 steps (as Flow-GRPO
   trains) under the SDE and CPS samplers against the ODE, as the high-frequency energy of the
   decoded images (the power above half the Nyquist frequency), with noise at every step and
   with noise only at the first three (the shapes-flow presets' window);
3. efficiency: verifier reward against reward queries for training runs given with --runs
   (e.g. the shapes-flow-grpo, shapes-flow-grpo-cps and shapes-nft presets, same seeds and
   budget), as a PNG and a table.

    python benchmarks/flow_samplers.py [--runs sde=runs/A cps=runs/B nft=runs/C] [--out docs/flow-benchmark.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def fidelity(n: int = 200_000, mu: float = 1.5, s: float = 0.5) -> list[tuple]:
    from ddrl.sampling import FlowSampler, flow_sigmas, rollout

    def v(x, sigma):  # E[x_1 - x_0 | x_sigma = x] for Gaussian data (derivation in tests/test_flow_math.py)
        sigma = sigma.view(-1, 1)
        var = (1 - sigma) ** 2 * s**2 + sigma**2
        d = x - (1 - sigma) * mu
        return sigma / var * d - (mu + (1 - sigma) * s**2 / var * d)

    rows = []
    for steps in (10, 40):
        for kind, eta in (("ode", 0.0), ("sde", 0.7), ("cps", 0.8), ("dpm2", 0.0)):
            g = torch.Generator().manual_seed(0)
            traj = rollout(v, torch.randn(n, 1, generator=g), FlowSampler(flow_sigmas(steps), kind, eta),
                           noise=lambda: torch.randn(n, 1, generator=g))
            rows.append((steps, kind, float(traj.final.mean()), float(traj.final.std())))
    return rows


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Per image: the mean power of the centred image's 2-D spectrum above half the Nyquist
    frequency (|f| > 0.25 cycles/pixel), averaged over channels."""
    x = images - images.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2 / (x.shape[-1] * x.shape[-2])
    fy = torch.fft.fftfreq(x.shape[-2]).abs()[:, None]
    fx = torch.fft.fftfreq(x.shape[-1]).abs()[None, :]
    return (power * (torch.maximum(fy, fx) > 0.25)).mean(dim=(1, 2, 3))


def residual_noise(n_prompts: int = 16, per_prompt: int = 4, steps: int = 10) -> dict[str, tuple[float, float]]:
    """High-frequency energy (mean, s.e.) per sampler: noise at every step, as Flow-GRPO samples,
    and (suffix "-w3") only at the first three steps, as the shapes-flow presets sample."""
    from ddrl.models import guided_prediction, load_policy
    from ddrl.sampling import FlowSampler, rollout
    from ddrl.worlds.shapes import split

    policy = load_policy("shapes-flow")
    prompts = [p for p in split("heldout")[:n_prompts] for _ in range(per_prompt)]
    sigmas = policy.sigmas(steps)
    out = {}
    with torch.no_grad():
        cond, uncond = policy.encode(prompts), policy.encode([""]).repeat(len(prompts))
        for name, kind, eta, window in (("ode", "ode", 0.0, 0), ("sde", "sde", 0.7, 0), ("cps", "cps", 0.8, 0),
                                        ("sde-w3", "sde", 0.7, 3), ("cps-w3", "cps", 0.8, 3)):
            g = torch.Generator().manual_seed(0)
            x_T = torch.randn(len(prompts), *policy.latent_shape, generator=g)
            traj = rollout(lambda x, t: guided_prediction(policy, x, t, cond, uncond, 5.0), x_T,
                           FlowSampler(sigmas, kind, eta, window_size=window),
                           noise=lambda: torch.randn(x_T.shape, generator=g))
            hf = high_frequency_energy(policy.decode(traj.final))
            out[name] = (float(hf.mean()), float(hf.std() / len(hf) ** 0.5))
    return out


def efficiency(runs: dict[str, Path], out: Path) -> list[tuple]:
    """Plot the training reward (10-epoch mean) against reward queries; per run, the held-out
    score and per-image accuracy before and after with the paired change and its s.e."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    from ddrl.run.report import paired_change

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = []
    for name, run in runs.items():
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        sample = yaml.safe_load((run / "config.yaml").read_text())["sample"]
        per_epoch = sample["batch_size"] * sample["num_batches_per_epoch"]  # one process
        queries = np.arange(1, len(metrics) + 1) * per_epoch
        reward = np.array([m["reward/mean"] for m in metrics])
        # the same seeds draw the same prompts in every run, so the runs' curves are comparable
        # epoch by epoch; a 10-epoch mean smooths the prompt draws
        smooth = np.convolve(reward, np.ones(10) / 10, mode="valid")
        ax.plot(queries[9:], smooth, label=name)
        before = json.loads((run / "eval_before.json").read_text())
        after = json.loads((run / "eval_after.json").read_text())
        row = [name, int(queries[-1]), reward[:10].mean(), reward[-10:].mean()]
        for key, per_image in (("score", "reward"), ("accuracy_per_image", "correct"), ("accuracy", None)):
            b, a = before["heldout"].get(key), after["heldout"].get(key)
            change = (paired_change(before["per_image"]["heldout"][per_image], after["per_image"]["heldout"][per_image])
                      if per_image and "per_image" in before else (a - b, float("nan")))
            row += [b, a, *change]
        rows.append(tuple(row))
    ax.set_xlabel("reward queries (images scored)")
    ax.set_ylabel("training reward (10-epoch mean)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=[], help="NAME=RUN_DIR pairs of finished training runs")
    ap.add_argument("--out", default="docs/flow-benchmark.png")
    args = ap.parse_args()

    print("## 1-D Gaussian data N(1.5, 0.5^2), exact velocity, 200k samples\n")
    print("| steps | sampler | final mean | final std | std / data std |\n|---|---|---|---|---|")
    for steps, kind, mean, std in fidelity():
        print(f"| {steps} | {kind} | {mean:.4f} | {std:.4f} | {std / 0.5:.3f} |")

    print("\n## Residual noise of final samples, shapes-flow, 10 steps, 64 images\n")
    print("| sampler | high-frequency energy (x1e-4) | vs ODE |\n|---|---|---|")
    hf = residual_noise()
    for kind, (m, se) in hf.items():
        print(f"| {kind} | {1e4 * m:.3f} ± {1e4 * se:.3f} | {m / hf['ode'][0]:.2f}x |")

    if args.runs:
        runs = {k: Path(v) for k, v in (r.split("=", 1) for r in args.runs)}
        print(f"\n## Reward against reward queries (plot: {args.out})\n")
        print("Held-out prompts, ODE, fixed seeds: before -> after (paired change ± s.e.)\n")
        print("| run | queries | train reward, first 10 epochs -> last 10 | held-out score | held-out accuracy "
              "(per image) | held-out accuracy (category mean) |\n|---|---|---|---|---|---|")
        for name, q, r0, r1, *m in efficiency(runs, Path(args.out)):
            cells = [f"{m[i]:.3f} -> {m[i + 1]:.3f} ({m[i + 2]:+.3f} ± {m[i + 3]:.3f})" for i in (0, 4)]
            cells.append(f"{m[8]:.3f} -> {m[9]:.3f}")
            print(f"| {name} | {q} | {r0:.3f} -> {r1:.3f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
