"""Flow samplers and flow RL algorithms, measured:

1. fidelity: 1-D Gaussian data N(1.5, 0.5^2) with its exact velocity field; the final mean and
   std of the Euler ODE, Flow-SDE (a = 0.7) and CPS (eta = 0.8) samplers at 10 and 40 steps;
2. residual noise: the built-in shapes-flow model's final samples at 10 steps (as Flow-GRPO
   trains) under the SDE and CPS samplers against the ODE, as the high-frequency energy of the
   decoded images (the power above half the Nyquist frequency);
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
        for kind, eta in (("ode", 0.0), ("sde", 0.7), ("cps", 0.8)):
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
    from ddrl.models import guided_prediction, load_policy
    from ddrl.sampling import FlowSampler, rollout
    from ddrl.worlds.shapes import split

    policy = load_policy("shapes-flow")
    prompts = [p for p in split("heldout")[:n_prompts] for _ in range(per_prompt)]
    sigmas = policy.sigmas(steps)
    out = {}
    with torch.no_grad():
        cond, uncond = policy.encode(prompts), policy.encode([""]).repeat(len(prompts))
        for kind, eta in (("ode", 0.0), ("sde", 0.7), ("cps", 0.8)):
            g = torch.Generator().manual_seed(0)
            x_T = torch.randn(len(prompts), *policy.latent_shape, generator=g)
            traj = rollout(lambda x, t: guided_prediction(policy, x, t, cond, uncond, 5.0), x_T,
                           FlowSampler(sigmas, kind, eta), noise=lambda: torch.randn(x_T.shape, generator=g))
            hf = high_frequency_energy(policy.decode(traj.final))
            out[kind] = (float(hf.mean()), float(hf.std() / len(hf) ** 0.5))
    return out


def efficiency(runs: dict[str, Path], out: Path) -> list[tuple]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = []
    for name, run in runs.items():
        import yaml

        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        sample = yaml.safe_load((run / "config.yaml").read_text())["sample"]
        per_epoch = sample["batch_size"] * sample["num_batches_per_epoch"]  # one process
        queries = np.arange(1, len(metrics) + 1) * per_epoch
        reward = np.array([m["reward/mean"] for m in metrics])
        smooth = np.convolve(reward, np.ones(5) / 5, mode="valid")
        ax.plot(queries[4:], smooth, label=name)
        before = json.loads((run / "eval_before.json").read_text())["heldout"]
        after = json.loads((run / "eval_after.json").read_text())["heldout"] if (run / "eval_after.json").exists() else {}
        rows.append((name, int(queries[-1]), reward[:5].mean(), reward[-5:].mean(), before.get("score"),
                     after.get("score"), before.get("accuracy"), after.get("accuracy")))
    ax.set_xlabel("reward queries (images scored)")
    ax.set_ylabel("verifier partial credit, training samples (5-epoch mean)")
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
        print("| run | queries | train reward, first 5 epochs | last 5 epochs | held-out score before | after "
              "| held-out accuracy before | after |\n|---|---|---|---|---|---|---|---|")
        for name, q, r0, r1, s0, s1, a0, a1 in efficiency(runs, Path(args.out)):
            fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
            print(f"| {name} | {q} | {r0:.3f} | {r1:.3f} | {fmt(s0)} | {fmt(s1)} | {fmt(a0)} | {fmt(a1)} |")


if __name__ == "__main__":
    main()
