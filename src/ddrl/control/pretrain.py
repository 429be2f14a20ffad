"""Behaviour cloning of the shipped control policies from the demonstrations (DPPO's pretraining
recipe, scaled to a laptop): Adam at lr 1e-3 cosine-decayed to 1e-4, weight decay 1e-6, batch
128, an EMA of the weights (decay 0.995) which is what is saved, as DPPO and ReinFlow fine-tune
from the EMA weights."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .demos import Demos
from .episodes import policy_actor, run_episodes
from .policies import ChunkPolicy, save_policy

EMA_DECAY = 0.995


def behaviour_clone(demos: Demos, kind: str, *, horizon: int, epochs: int, seed: int, width: int = 128,
                    depth: int = 3, steps: int = 20, batch: int = 128, progress: bool = True) -> ChunkPolicy:
    obs, chunks = demos.windows(horizon)
    torch.manual_seed(seed)  # the initial weights; the draws below use their own generator
    policy = ChunkPolicy(kind, obs.shape[1], chunks.shape[2], horizon, width=width, depth=depth, steps=steps,
                         obs_low=demos.obs.min(0), obs_high=demos.obs.max(0),
                         act_low=demos.actions.min(0), act_high=demos.actions.max(0))
    o = policy.obs_norm(torch.from_numpy(obs))
    a = policy.act_norm(torch.from_numpy(chunks))
    params = [p for n, p in policy.named_parameters() if not n.startswith("net.log_std")]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-6)
    per_epoch = max(1, len(o) // batch)
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / total)))
    ema = copy.deepcopy(policy).requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc=f"BC {kind}", disable=not progress)
    for _ in bar:
        perm = torch.randperm(len(o), generator=gen)
        for b in range(per_epoch):
            idx = perm[b * batch:(b + 1) * batch]
            loss = policy.bc_loss(o[idx], a[idx], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), policy.parameters()):
                    pe.lerp_(p, 1 - EMA_DECAY)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema


def success_rate(policy: ChunkPolicy, episodes: int, seed: int) -> tuple[float, float, dict]:
    stats = run_episodes(policy_actor(policy), policy.config["env"], policy.horizon, episodes, seed)
    summary = stats.summary("eval")
    return summary["eval/success"], summary["eval/success_se"], summary


def model_card(policy: ChunkPolicy, demos: Demos, summary: dict, epochs: int, seed: int, command: str) -> str:
    c = policy.config
    routes = demos.meta.get("routes", [])
    demo_success = float(np.mean(demos.meta.get("successes", [np.nan])))
    freq = ", ".join(f"{r} {summary[f'eval/route_{r}']:.0%}" for r in ("wide", "narrow", "crash", "none"))
    demo_freq = ", ".join(f"{r} {routes.count(r) / max(len(routes), 1):.0%}" for r in ("wide", "narrow", "crash"))
    return (f"# routes-{c['kind']}: a behaviour-cloned {c['kind']} policy for ddrl/Routes-v0\n\n"
            f"- chunk: {c['horizon']} actions of {c['action_dim']} dims from {c['obs_dim']}-dim observations\n"
            f"- network: residual MLP, width {c['width']}, {c['depth']} blocks"
            f"{'' if c['kind'] == 'gaussian' else ', %d denoising steps' % c['steps']}\n"
            f"- data: {len(routes)} scripted demonstrations (seed {demos.meta.get('seed')}), demo success "
            f"{demo_success:.1%}, routes {demo_freq}\n"
            f"- training: {epochs} epochs of behaviour cloning, seed {seed}, EMA weights\n"
            f"- **BC success {summary['eval/success']:.1%} ± {summary['eval/success_se']:.1%} (s.e.)** over "
            f"{int(summary['eval/episodes'])} deterministic-evaluation episodes; return {summary['eval/return']:.2f}\n"
            f"- routes taken: {freq}\n\n"
            f"Made by `{command}`.\n")


def write_policy(policy: ChunkPolicy, out: Path, card: str) -> None:
    save_policy(policy, out, card)
