"""Flow Policy Optimization (McAllister et al. 2025), as akanazawa/fpo's MuJoCo Playground code
(playground/src/flow_policy/fpo.py) sets it up: the policy samples by the deterministic Euler ODE,
and the PPO ratio is built from conditional flow-matching losses over N (tau, eps) draws fixed at
rollout time and stored with the sample.

    x_tau = tau eps + (1 - tau) a                       (tau = 1 is noise, as ddrl's sigma)
    L(theta; tau, eps) = mean_D (eps - x1_hat)^2,  x1_hat = x_tau + (1 - tau) v_theta(x_tau, tau, o)
                       = (1 - tau)^2 mean_D (v_theta - (eps - a))^2      (the eps-space loss)
    rho = exp( mean_j L_old,j - mean_j L_theta,j )        (losses averaged before the exponential)

tau is drawn from the sampling grid {1, 1 - 1/K, ..., 1/K} (discretize_t_for_training). The
gridworld variant (gridworld/models/fpo.py) is `fpo.ratio per_draw`, `fpo.tau uniform`,
`fpo.space velocity`, N = 50, clip 0.2: per-draw differences clamped to +-3, their mean clamped
to +-3, then the exponential.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ...losses.ppo import clipped_surrogate, normalize_advantages
from ...options import option
from ...sampling import flow_ode_step
from ..policies import ChunkPolicy
from .base import ControlAlgorithm

DRAW_CLAMP = 3.0  # the gridworld variant's clamp of each loss difference and of their mean


@dataclass(frozen=True)
class FPOOptions:
    section: ClassVar[str] = "fpo"
    draws: int = option(8, "[1, inf)", "(tau, eps) draws per action chunk, stored at rollout (n_samples_per_action)")
    steps: int = option(10, "[1, inf)", "Euler steps of the sampling ODE (flow_steps)")
    clip_range: float = option(0.05, "(0, 1)", "PPO clip")
    ratio: Literal["mean_loss", "per_draw"] = option("mean_loss", None, "losses averaged before the exp, or "
                                                      "per-draw clamped differences (gridworld)")
    tau: Literal["grid", "uniform"] = option("grid", None, "tau on the sampling grid, or U[0, 1] (gridworld)")
    space: Literal["eps", "velocity"] = option("eps", None, "loss in eps space ((1-tau)^2-weighted), or velocity")


class FPO(ControlAlgorithm):
    options_class = FPOOptions

    def __init__(self, policy: ChunkPolicy, options: FPOOptions):
        if policy.kind != "flow":
            raise ValueError(f"FPO fine-tunes a flow policy, not {policy.kind!r}")
        self.policy, self.o = policy, options
        self.calls_per_chunk = options.steps + options.draws
        self.actor = copy.deepcopy(policy.net).requires_grad_(True)
        self.sigmas = torch.linspace(1, 0, options.steps + 1)

    def cfm_loss(self, obs, action, tau, eps):
        """(B, N) per-draw losses of the action chunks a (B, Ta, Da) at draws tau (B, N), eps (B, N, Ta, Da)."""
        b, n = tau.shape
        t = tau.view(b, n, 1, 1)
        x_tau = t * eps + (1 - t) * action[:, None]
        v = self.actor(x_tau.flatten(0, 1), tau.flatten(), obs.repeat_interleave(n, 0)).view_as(eps)
        if self.o.space == "eps":
            return ((eps - (x_tau + (1 - t) * v)) ** 2).mean((2, 3))
        return ((v - (eps - action[:, None])) ** 2).mean((2, 3))

    @torch.no_grad()
    def act(self, obs, generator):
        p, b = self.policy, len(obs)
        x = p.noise(b, generator)
        for k in range(self.o.steps):
            x = flow_ode_step(x, self.actor(x, torch.full((b,), float(self.sigmas[k])), obs), self.sigmas[k],
                              self.sigmas[k + 1])
        if self.o.tau == "grid":
            tau = self.sigmas[:-1][torch.randint(0, self.o.steps, (b, self.o.draws), generator=generator)]
        else:
            tau = torch.rand((b, self.o.draws), generator=generator)
        eps = torch.randn((b, self.o.draws, p.horizon, p.action_dim), generator=generator, dtype=x.dtype)
        return x, {"action": x, "tau": tau, "eps": eps, "old_loss": self.cfm_loss(obs, x, tau, eps)}

    def policy_loss(self, obs, records, advantages, rows, generator):
        new = self.cfm_loss(obs, records["action"], records["tau"], records["eps"])
        diff = records["old_loss"] - new
        if self.o.ratio == "mean_loss":
            log_ratio = diff.mean(1)
        else:
            log_ratio = diff.clamp(-DRAW_CLAMP, DRAW_CLAMP).mean(1).clamp(-DRAW_CLAMP, DRAW_CLAMP)
        loss, stats = clipped_surrogate(log_ratio, normalize_advantages(advantages), self.o.clip_range)
        stats["train/cfm_loss"] = float(new.detach().mean())
        return loss, log_ratio, stats

    def evaluation_actor(self):
        def act(obs, gen):
            x = self.policy.noise(len(obs), gen)
            for k in range(self.o.steps):
                s = torch.full((len(obs),), float(self.sigmas[k]))
                x = flow_ode_step(x, self.actor(x, s, obs), self.sigmas[k], self.sigmas[k + 1])
            return x.clamp(-1, 1)
        return act

    def describe(self) -> str:
        return (f"FPO: flow ODE {self.o.steps} steps, {self.o.draws} stored (tau, eps) draws, {self.o.space}-space loss, "
                f"ratio {self.o.ratio}, clip {self.o.clip_range:g}")
