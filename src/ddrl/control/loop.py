"""The control loop on the run core: per iteration, a rollout in the vector environment, values
and GAE, the algorithm's PPO update, metrics (x-axis: environment steps), periodic deterministic
evaluation, and checkpoints that resume exactly at iteration boundaries (every environment is
reset there with keyed seeds; weights, optimizer states, the return scaler and the counters are
saved; every draw comes from a generator keyed by (seed, iteration, ...))."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..advantages import gae
from ..io import atomic_write_text
from ..run.checkpoint import list_checkpoints, load_checkpoint, load_latest_intact, load_optimizer, optimizer_tensors, save_checkpoint
from ..run.finite import first_nonfinite
from ..run.resume import config_text
from ..run.session import Session
from ..run.step import OptimizerStep
from .algorithms import REGISTRY
from .algorithms.base import Batch
from .config import ControlConfig
from .envs import make_envs
from .episodes import run_episodes
from .nets import Critic
from .policies import load_policy
from .returns import RunningReturnScale
from .rollout import collect

UPDATE_PURPOSE, INIT_PURPOSE = 43, 44
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "control"
BUILTIN_POLICIES = ("routes-ddpm", "routes-flow", "routes-gaussian")


class _OneProcess:
    """What Session needs of an accelerator, for a loop that runs in one process."""

    is_main_process, device = True, torch.device("cpu")

    def reduce(self, t, reduction="sum"):
        return t


def policy_folder(path: str) -> Path:
    return ASSETS / path if path in BUILTIN_POLICIES else Path(path)


def build_run(cfg: ControlConfig):
    """(policy, algorithm, critic), weights initialised from the run seed without touching the
    global RNG."""
    policy = load_policy(policy_folder(cfg.policy.path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([cfg.run.seed, INIT_PURPOSE]).generate_state(1)[0]))
        algo = REGISTRY[cfg.run.algorithm](policy, cfg.options)
        critic = Critic(policy.obs_dim, cfg.ppo.critic_width, cfg.ppo.critic_depth)
    return policy, algo, critic


class ControlRun:
    def __init__(self, cfg: ControlConfig, run_dir: Path, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.policy, self.algo, self.critic = build_run(cfg)
        p = cfg.ppo
        actor_params = [q for q in self.algo.actor.parameters() if q.requires_grad]
        norm = p.max_grad_norm if p.max_grad_norm > 0 else math.inf
        self.actor_step = OptimizerStep(actor_params, torch.optim.Adam(actor_params, lr=p.actor_lr), lr=p.actor_lr,
                                        max_grad_norm=norm)
        critic_params = list(self.critic.parameters())
        self.critic_step = OptimizerStep(critic_params, torch.optim.Adam(critic_params, lr=p.critic_lr), lr=p.critic_lr,
                                         max_grad_norm=math.inf)
        self.scaler = RunningReturnScale(cfg.env.n_envs, p.gamma)
        self.iteration, self.env_steps = 0, 0
        text = config_text(cfg.to_dict())
        self.session = Session(self.run_dir, _OneProcess(), seed=cfg.run.seed, epochs=cfg.run.iterations,
                               save_every=cfg.run.save_every, report_to=cfg.run.report_to, config=cfg.to_dict(),
                               config_text=text)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        weights = {f"actor.{k}": v for k, v in self.algo.actor.state_dict().items()}
        weights |= {f"critic.{k}": v for k, v in self.critic.state_dict().items()}
        critic_opt = optimizer_tensors(self.critic_step.optimizer)

        def write_critic_opt(folder: Path) -> None:
            from safetensors.torch import save_file

            save_file({k: v.cpu() for k, v in critic_opt[0].items()}, str(folder / "critic_optimizer.safetensors"),
                      metadata={"param_groups": critic_opt[1]})

        def write_config(folder: Path) -> None:
            (folder / "config.yaml").write_text(self.session.config_text)

        state = {"iteration": self.iteration, "env_steps": self.env_steps, "return_scale": self.scaler.state_dict(),
                 "actor_steps": self.actor_step.steps, "critic_steps": self.critic_step.steps}
        save_checkpoint(self.run_dir / "checkpoints", self.iteration, weights, self.actor_step.optimizer, state,
                        extra_files={"critic_optimizer.safetensors": write_critic_opt, "config.yaml": write_config},
                        keep=self.cfg.run.keep_checkpoints)

    def load(self, path: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights, opt, groups, state = load_checkpoint(path)
        self.algo.actor.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("actor.")})
        self.critic.load_state_dict({k[7:]: v for k, v in weights.items() if k.startswith("critic.")})
        load_optimizer(self.actor_step.optimizer, opt, groups)
        with safe_open(str(path / "critic_optimizer.safetensors"), "pt") as f:
            critic_groups = f.metadata()["param_groups"]
        load_optimizer(self.critic_step.optimizer, load_file(str(path / "critic_optimizer.safetensors")), critic_groups)
        self.iteration, self.env_steps = state["iteration"], state["env_steps"]
        self.scaler.load_state_dict(state["return_scale"])
        self.actor_step.steps, self.critic_step.steps = state["actor_steps"], state["critic_steps"]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, episodes: int, keep_paths: bool = False):
        act = self.algo.evaluation_actor()
        policy = self.policy

        def actor(obs, gen):
            return policy.to_env(act(policy.obs_norm(obs.float()), gen))

        return run_episodes(actor, self.cfg.env.id, self.cfg.env.horizon, episodes, self.cfg.eval.seed, keep_paths)

    # ------------------------------------------------------------------ one iteration
    def advantages(self, r) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.cfg.ppo
        rewards = self.scaler(r.rewards, r.firsts) if p.reward_scaling else r.rewards
        with torch.no_grad():
            values = self.critic(r.obs.flatten(0, 1)).view(r.rewards.shape)
            next_values = self.critic(r.next_obs.flatten(0, 1)).view(r.rewards.shape)
        adv = gae(torch.as_tensor(rewards, dtype=torch.float32), values, next_values, torch.as_tensor(r.terminated),
                  torch.as_tensor(r.truncated), gamma=p.gamma, lam=p.gae_lambda)
        return adv, adv + values

    def iterate(self, envs) -> dict[str, float]:
        from .update import ppo_update

        cfg, it = self.cfg, self.iteration
        self.algo.start_iteration(it, cfg.run.iterations)
        r = collect(envs, self.algo, self.policy, cfg.run.seed, it, cfg.env.n_steps)
        start = time.perf_counter()
        adv, returns = self.advantages(r)
        batch = Batch(r.obs.flatten(0, 1), {k: v.flatten(0, 1) for k, v in r.records.items()}, adv.flatten(),
                      returns.flatten())
        metrics = ppo_update(self.algo, self.critic, batch, cfg.ppo, self.actor_step, self.critic_step,
                             self.session.generator(UPDATE_PURPOSE, it), train_actor=it >= cfg.ppo.critic_warmup)
        self.env_steps += r.env_steps
        metrics |= r.episodes.summary("train") | {
            "env_steps": float(self.env_steps), "train/chunk_reward": float(r.rewards.mean()),
            "perf/rollout_s": r.seconds, "perf/update_s": time.perf_counter() - start,
            "perf/calls_per_chunk": float(self.algo.calls_per_chunk)}
        bad = first_nonfinite({f"actor.{k}": v for k, v in self.algo.actor.state_dict().items()})
        if bad is not None:
            raise ValueError(f"iteration {it}: actor weight {bad} became non-finite; the last checkpoint in "
                             f"{self.run_dir / 'checkpoints'} is intact (lower ppo.actor_lr and resume)")
        return metrics

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> dict:
        if resume:
            load_latest_intact(self.run_dir / "checkpoints", self.load)
        self.session.start(self.iteration, resume)
        try:
            return self._run()
        except BaseException:
            self.session.abandon(self.run_dir / "checkpoints")
            raise
        finally:
            self.session.close()

    def _before(self) -> dict:
        path = self.run_dir / "eval_before.json"
        if path.is_file():
            return json.loads(path.read_text())
        stats = self.evaluate(self.cfg.eval.final_episodes, keep_paths=True)
        out = {"successes": stats.successes, "returns": stats.returns, "routes": stats.routes,
               "paths": [p.tolist() for p in stats.paths[:100]]}
        atomic_write_text(path, json.dumps(out))
        return out

    def _run(self) -> dict:
        from tqdm import tqdm

        from .report import finish

        cfg, session = self.cfg, self.session
        before = self._before()
        envs = make_envs(cfg.env.id, cfg.env.n_envs, cfg.env.horizon)
        bar = tqdm(total=cfg.run.iterations, initial=self.iteration, desc=cfg.run.algorithm, disable=not self.progress)
        with session.interruptible():
            while self.iteration < cfg.run.iterations and not session.stopped:
                it = self.iteration
                metrics = {}
                if it % cfg.eval.every == 0:
                    metrics |= self.evaluate(cfg.eval.episodes).summary("eval")
                metrics |= self.iterate(envs)
                self.iteration = it + 1
                session.log(it, metrics)
                bar.update(1)
                bar.set_postfix(success=f"{metrics.get('train/success', float('nan')):.2f}",
                                steps=int(self.env_steps))
                if session.end_of_epoch(self.iteration):
                    self.save()
        bar.close()
        envs.close()
        if session.stopped:
            print(f"stopped after iteration {self.iteration}; checkpoint saved. Continue with: "
                  f"ddrl control train --resume {self.run_dir}")
            return {}
        after_stats = self.evaluate(cfg.eval.final_episodes, keep_paths=True)
        after = {"successes": after_stats.successes, "returns": after_stats.returns, "routes": after_stats.routes,
                 "paths": [p.tolist() for p in after_stats.paths[:100]]}
        atomic_write_text(self.run_dir / "eval_after.json", json.dumps(after))
        summary = finish(self.run_dir, cfg, self.algo.describe(), session.rows, before, after)
        for name in ("curves", "trajectories", "routes"):
            session.log_image(name, self.run_dir / f"{name}.png", self.iteration)
        return summary


def latest_iteration(run_dir: Path) -> int:
    ckpts = list_checkpoints(run_dir / "checkpoints")
    return int(ckpts[-1].name.split("_")[1]) if ckpts else 0
