"""How far deterministic flow solvers land from the exact flow map, on data whose map is known.

For 1-D Gaussian data N(mu, s^2) and the linear interpolant x_sigma = (1 - sigma) x_0 + sigma z,
the marginals stay Gaussian and the probability-flow ODE maps noise z to mu + s z exactly. Each
solver integrates the exact velocity field (tests/test_flow_math.py derives it) in float64 from
601 points z evenly spaced on [-3, 3], on flow_sigmas(steps, shift) (ending at sigma 0.001 before
the last step to 0, as SD3's scheduler); the table gives the largest and the mean |x - (mu + s z)|.

    python benchmarks/flow_solver_error.py [--out benchmarks/results/flow_solver_error.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

MU, S = 1.5, 0.5


def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma, x = sigma.view(-1, 1).double(), x.double()
    var = (1 - sigma) ** 2 * S**2 + sigma**2
    d = x - (1 - sigma) * MU
    return sigma / var * d - (MU + (1 - sigma) * S**2 / var * d)


def endpoint_errors(kind: str, steps: int, shift: float) -> tuple[float, float]:
    from ddrl.sampling import FlowSampler, flow_sigmas, rollout

    z = torch.linspace(-3, 3, 601, dtype=torch.float64).view(-1, 1)
    traj = rollout(velocity, z.clone(), FlowSampler(flow_sigmas(steps, shift), kind, 0.0), noise=lambda: None)
    err = (traj.final.double() - (MU + S * z)).abs()
    return float(err.max()), float(err.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/flow_solver_error.md")
    args = ap.parse_args()
    lines = ["# Flow solvers against the exact flow map (1-D Gaussian data N(1.5, 0.5^2))", "",
             "`python benchmarks/flow_solver_error.py`: largest / mean |x - (mu + s z)| over 601 points z "
             "on [-3, 3], exact velocity, float64.", "",
             "| shift | steps | Euler (flow-ode) largest | mean | DPM-Solver++(2M) (flow-dpm2) largest | mean |",
             "|---|---|---|---|---|---|"]
    for shift in (1.0, 3.0):
        for steps in (10, 20, 40, 80):
            (em, ea), (dm, da) = endpoint_errors("ode", steps, shift), endpoint_errors("dpm2", steps, shift)
            lines.append(f"| {shift:g} | {steps} | {em:.3f} | {ea:.3f} | {dm:.3f} | {da:.3f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
