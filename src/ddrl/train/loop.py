"""The training loop every image algorithm shares (ddrl.algorithms):

    sample (rollout, rewards scored in a thread as batches finish) -> gather rewards across
    processes -> algorithm.signal (advantages, weights, win rates) -> algorithm.update ->
    optimizer, EMA -> metrics, grids, checkpoint

The loop never asks which algorithm runs; it hands it a typed `Context` of what it shares.

Every random draw is derived from (seed, epoch, purpose, global sample index), so a run gives
the same samples whatever its batch sizes or number of processes, and a resumed run continues
exactly where the checkpoint left it. Process p samples the slice of each global training
minibatch that it will train on; gradients are averaged across processes before each step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..algorithms import Context, EpochRewards, Rollouts
from ..config import Config
from ..config_checks import algorithm_class, check_model_kind
from ..ema import ema_step_
from ..io import atomic_write_text
from ..models.policy import guided_prediction
from ..models.prompt_length import check_prompt_lengths
from ..prompts import load_prompt_records, shown
from ..rewards import get_reward, score
from ..sampling import DDIMSampler, FlowSampler, rollout
from .checkpoint import list_checkpoints
from .evaluation import evaluate_once, write_grid
from .finite import NonFiniteError, first_nonfinite, nonfinite_error
from .memory import estimate as memory_estimate
from .metrics import MetricsLog, reward_metrics
from .optim import average_gradients, make_optimizer, set_warmup_lr
from .report import finish_run
from .resume import run_config_text
from .sharding import full, full_state, is_sharded, local, shard
from .state import load_latest_intact, save_trainer
from .trackers import open_log
from .trainable import make_trainable

_PURPOSE = {"noise": 0, "prompt": 1, "train": 2, "data": 3, "pairs": 4, "truncation": 5, "pretrain": 6}


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, accelerator=None):
        from accelerate import Accelerator

        self.cfg, self.run_dir = cfg, run_dir
        self.accelerator = accelerator or Accelerator(mixed_precision=cfg.run.mixed_precision,
                                                          cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator.is_main_process
        self.sharded = is_sharded(self.accelerator)  # refuses DeepSpeed and FSDP1 before any model loads
        self.reward = get_reward(cfg.reward.name)
        train_records, eval_records = load_prompt_records(cfg.prompts.source), load_prompt_records(cfg.prompts.eval_source)
        self.train_prompts, self.eval_prompts = [p for p, _ in train_records], [p for p, _ in eval_records]
        self.prompt_metadata = {p: m for p, m in eval_records + train_records}  # what a routed reward reads
        if cfg.reward.name.startswith("shapes-"):  # the verifier reads shapes-world prompts only
            from ..worlds.shapes import parse_prompt

            for p in dict.fromkeys(self.train_prompts + self.eval_prompts):
                try:
                    parse_prompt(p)
                except ValueError:
                    raise ValueError(f"reward {cfg.reward.name!r} scores shapes-world prompts only; "
                                     f"{shown(p)} is not one (use prompts.source shapes:train)") from None
        from ..models.loading import load_policy

        self.policy = load_policy(cfg.model.name, device=self.accelerator.device)
        algorithm = algorithm_class(cfg.train.algorithm)
        check_model_kind(cfg, self.policy.prediction)
        check_prompt_lengths(self.policy, self.train_prompts, f"prompts.source {cfg.prompts.source}")
        check_prompt_lengths(self.policy, self.eval_prompts, f"prompts.eval_source {cfg.prompts.eval_source}")
        self.sampler = self.make_sampler(cfg.sample.num_steps)
        with torch.no_grad():  # validates every prompt against the model before any work
            self.cond_table = self.policy.encode(self.train_prompts)
            self.uncond = self.policy.encode([""])
        self.params, self._frozen_reference = make_trainable(self.policy, cfg)
        self.optimizer = make_optimizer(self.params, cfg)
        if self.sharded:  # FSDP2: parameters, gradients and optimizer state become DTensor shards
            self.policy.denoiser, self.optimizer = shard(self.accelerator, self.policy.denoiser, self.optimizer)
            self.params = [p for p in self.policy.denoiser.parameters() if p.requires_grad]
        # an EMA of the trained weights, for evaluation and export (flow_grpo's and DiffusionNFT's option)
        self.ema = {k: v.clone() for k, v in self.trainable_state().items()} if cfg.train.ema_decay > 0 else None
        self.epoch = 0
        self.skipped_steps = 0
        self.nonfinite_batch = 0
        self.optimizer_steps = 0
        self._stop = False
        self.log: MetricsLog | None = None
        self.algorithm = algorithm(Context(
            cfg=cfg, policy=self.policy, sampler=self.sampler, cond_table=self.cond_table, uncond=self.uncond,
            autocast=self.accelerator.autocast, reference=self.reference, optimizer_step=lambda: self.optimizer_step(),
            optimizer_steps=lambda: self.optimizer_steps, generator=self.generator, gather=self.gather,
            trainable_state=self.trainable_state, swapped=self._swapped,
            num_processes=self.accelerator.num_processes, process_index=self.accelerator.process_index,
            is_main=self.is_main, any_process=self._any_process, reward=self.reward, plan=self.plan,
            prompts_of=self.prompts_of))

    # ------------------------------------------------------------------ setup
    def make_sampler(self, num_steps: int):
        s = self.cfg.sample
        if s.sampler == "ddim":
            return DDIMSampler(self.policy.schedule(num_steps), s.eta)
        return FlowSampler(self.policy.sigmas(num_steps), s.sampler.removeprefix("flow-"), s.noise_level,
                           s.noise_window_start, s.noise_window_size)

    @contextlib.contextmanager
    def _swapped(self, weights: dict[str, Tensor] | None):
        """`weights` copied into the trainable parameters for the duration (nothing if None)."""
        if weights is None:
            yield
            return
        params = dict(self.policy.denoiser.named_parameters())
        with torch.no_grad():
            current = {k: params[k].detach().clone() for k in weights}
            for k, v in weights.items():
                params[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in current.items():
                    params[k].copy_(v)

    def eval_weights(self):
        """The weights that are evaluated and exported: the EMA when there is one."""
        return self._swapped(self.ema)

    @contextlib.contextmanager
    def reference(self):
        """The reference policy for the KL term: LoRA switched off, or a frozen copy of the
        pretrained weights in full fine-tuning."""
        if self._frozen_reference is None:
            with self.policy.reference():
                yield
            return
        trained = self.policy.denoiser
        self.policy.denoiser = self._frozen_reference
        try:
            yield
        finally:
            self.policy.denoiser = trained

    def trainable_state(self) -> dict[str, Tensor]:
        """The trained weights by name (DTensor shards under FSDP; `full_state` gathers them)."""
        return {n: p.detach() for n, p in self.policy.denoiser.named_parameters() if p.requires_grad}

    def lora_layers(self) -> dict[str, Tensor]:
        """The exported LoRA's weights (the EMA's when there is one), whole: a collective under FSDP."""
        from peft.utils import get_peft_model_state_dict

        with self.eval_weights():
            return full_state(get_peft_model_state_dict(self.policy.denoiser))

    def generator(self, *key: int, purpose: str = "train") -> torch.Generator:
        ss = np.random.SeedSequence([self.cfg.run.seed, _PURPOSE[purpose], *[k + 1 for k in key]])
        return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))

    # ------------------------------------------------------------------ sampling
    def local_indices(self) -> Tensor:
        """Global sample indices this process samples and trains on: its slice of every global
        training minibatch (train.batch_size per process, consecutive)."""
        cfg, p, world = self.cfg, self.accelerator.process_index, self.accelerator.num_processes
        bs, n = cfg.train.batch_size, cfg.samples_per_epoch
        return torch.tensor([k * bs * world + p * bs + j for k in range(n // bs) for j in range(bs)])

    def prompt_ids(self, epoch: int, global_idx: Tensor) -> Tensor:
        k = self.cfg.sample.images_per_prompt  # samples i with equal i // k share a prompt
        return torch.tensor([int(torch.randint(len(self.train_prompts), (), generator=self.generator(
            epoch, int(i) // k, purpose="prompt"))) for i in global_idx])

    def plan(self, epoch: int) -> tuple[Tensor, Tensor]:
        gidx = self.local_indices()
        return gidx, self.prompt_ids(epoch, gidx)

    def prompts_of(self, pids: Tensor) -> tuple[list[str], list[dict]]:
        prompts = [self.train_prompts[i] for i in pids]
        return prompts, [{"prompt_id": int(i), **self.prompt_metadata[p]} for i, p in zip(pids, prompts)]

    def collect(self, epoch: int, pool: ThreadPoolExecutor, bar) -> tuple[Rollouts | None, list[Future]]:
        """Sample this process's share of the epoch, scoring each batch in `pool` as it is done.
        A batch with non-finite images or log-probs ends sampling (None; run_epoch raises)."""
        cfg, policy, algorithm = self.cfg, self.policy, self.algorithm
        gidx, pids = self.plan(epoch)
        with_graph = algorithm.keeps_sampling_graph(cfg)
        latents, log_probs, graphs, futures = [], [], [], []
        for start in range(0, len(gidx), cfg.sample.batch_size):
            sl = slice(start, start + cfg.sample.batch_size)
            gens = [self.generator(epoch, int(i), purpose="noise") for i in gidx[sl]]

            def noise(gens=gens):
                return torch.stack([torch.randn(policy.latent_shape, generator=g) for g in gens])

            cond = self.cond_table[pids[sl]]
            uncond = self.uncond.repeat(len(cond))
            x_T = noise().to(self.accelerator.device)
            with torch.set_grad_enabled(with_graph), self.accelerator.autocast(), algorithm.sampling_weights():
                traj = rollout(lambda x, t: guided_prediction(policy, x, t, cond, uncond, cfg.sample.guidance_scale),
                               x_T, self.sampler, noise=noise, on_step=lambda: bar.update(1))
            with torch.no_grad():
                images = policy.decode(traj.final).cpu()
            if not (bool(torch.isfinite(images).all()) and bool(torch.isfinite(traj.log_probs).all())):
                self.nonfinite_batch = start // cfg.sample.batch_size + 1  # raised on every process after sampling
                break
            prompts, meta = self.prompts_of(pids[sl])
            if cfg.reward.asynchronous:
                futures.append(pool.submit(score, self.reward, images, prompts, meta))
            else:
                f: Future = Future()
                f.set_result(score(self.reward, images, prompts, meta))
                futures.append(f)
            algorithm.observe(images, prompts, gidx[sl])
            latents.append(traj.latents if with_graph else traj.latents.cpu())
            log_probs.append(traj.log_probs.detach())
            if with_graph:
                graphs.append(traj.log_probs)
        if self.nonfinite_batch:
            return None, futures
        return Rollouts(torch.cat(latents), torch.cat(log_probs), pids, gidx, graphs), futures

    def gather(self, local: Tensor) -> Tensor:
        """Per-sample values of this process's samples (in `local_indices` order) -> those of every
        process, ordered by global index, on the CPU."""
        acc = self.accelerator
        g_idx = acc.gather(self.local_indices().to(acc.device)).cpu()
        return acc.gather(local.to(acc.device)).cpu()[torch.argsort(g_idx)]

    # ------------------------------------------------------------------ one epoch
    def optimizer_step(self) -> float:
        if not self.sharded:  # FSDP averages gradients in the backward pass
            average_gradients(self.params, self.accelerator)
        t = self.cfg.train
        norm = full(torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm))
        if not torch.isfinite(norm):
            if t.nonfinite == "stop":
                raise self._nonfinite(f"gradient norm ({float(norm)})", skippable=True)
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return float(norm)
        set_warmup_lr(self.optimizer, self.cfg, self.optimizer_steps)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        if self.ema is not None:
            ema_step_(self.ema, self.trainable_state(), self.optimizer_steps, t.ema_decay, t.ema_update_interval)
        return float(norm)

    def _nonfinite(self, what: str, skippable: bool = False) -> NonFiniteError:
        return nonfinite_error(what, self.epoch, self.optimizer_steps, list_checkpoints(self.run_dir / "checkpoints"),
                               self.cfg.learning_rate, skippable)

    def run_epoch(self, epoch: int, pool: ThreadPoolExecutor) -> dict[str, float]:
        cfg, acc = self.cfg, self.accelerator
        self.skipped_steps = 0
        t0 = time.perf_counter()
        if not self.algorithm.uses_rollouts(cfg):
            metrics = self.algorithm.train_epoch(epoch)
            self._check_update(metrics)
            return metrics | {"perf/train_s": time.perf_counter() - t0, "perf/epoch_s": time.perf_counter() - t0}
        with tqdm(total=cfg.sample.num_batches_per_epoch * cfg.sample.num_steps, unit="step", leave=False,
                  desc=f"epoch {epoch + 1}/{cfg.run.epochs} sampling", disable=not self.is_main) as bar:
            self.nonfinite_batch = 0
            ro, futures = self.collect(epoch, pool, bar)
        if self._any_process(self.nonfinite_batch > 0):
            where = f"in sampling batch {self.nonfinite_batch}" if self.nonfinite_batch else "on another process"
            raise self._nonfinite(f"decoded images or log-probs {where}")
        t1 = time.perf_counter()
        results = [f.result() for f in futures]
        rewards = torch.cat([r[0] for r in results])
        t2 = time.perf_counter()
        # every process sees all rewards in global order, so signals and buffers agree everywhere
        g_rewards, g_pids = self.gather(rewards), self.gather(ro.prompt_ids)
        metrics = reward_metrics(self.accelerator, self.reward, self.cfg.reward.name, g_rewards, g_pids, results)
        batch = EpochRewards(g_rewards, g_pids, [self.train_prompts[i] for i in g_pids],
                             torch.arange(len(g_rewards)) // cfg.sample.images_per_prompt)
        per_sample = self.algorithm.signal(batch, metrics)[ro.global_idx]  # this process's samples
        ro.latents = ro.latents.to(acc.device)
        metrics |= self.algorithm.update(ro, per_sample.to(acc.device), epoch)
        self._check_update(metrics)
        t3 = time.perf_counter()
        n_global = len(g_rewards)
        metrics |= {"perf/sample_s": t1 - t0, "perf/reward_s": t2 - t1, "perf/train_s": t3 - t2,
                    "perf/epoch_s": t3 - t0, "perf/samples_per_s": n_global / (t3 - t0)}
        return metrics

    def _check_update(self, metrics: dict[str, float]) -> None:
        bad = first_nonfinite({k: local(v) for k, v in self.trainable_state().items()})
        if self._any_process(bad is not None):  # a shard's check is this process's only
            raise self._nonfinite(f"weights ({bad or 'on another process'})")
        if not math.isfinite(metrics.get("train/loss", 0.0)) and self.cfg.train.nonfinite == "stop":
            raise self._nonfinite(f"loss ({metrics['train/loss']})", skippable=True)
        if self.cfg.train.nonfinite == "skip":
            metrics["train/skipped_steps"] = self.skipped_steps

    # ------------------------------------------------------------------ the run
    def train(self, resume: bool = False) -> dict:
        cfg, run_dir = self.cfg, self.run_dir
        if resume:
            load_latest_intact(self)
        if self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", run_config_text(cfg))
        if self.is_main or self.sharded:  # the estimate's probe is a forward: a collective under FSDP
            line = memory_estimate(self).line()
            if self.is_main:
                print(line)
        self.log = open_log(self.run_dir, cfg, self.epoch, resume) if self.is_main else None
        try:
            return self._train()
        finally:
            if self.log is not None:
                self.log.close()

    def _log_image(self, name: str, step: int) -> None:
        path = self.run_dir / "grids" / f"{name}.png"
        if self.log is not None and path.exists():
            self.log.log_image(f"grids/{name.split('_')[0]}", path, step)

    def _train(self) -> dict:
        cfg, run_dir, log = self.cfg, self.run_dir, self.log
        before = evaluate_once(self, "before")
        if self.epoch == 0:
            self._log_image("before", 0)
        try:
            previous = signal.signal(signal.SIGINT, self._on_interrupt)
        except ValueError:  # not the main thread: Ctrl-C keeps its default behaviour
            previous = None
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            while self.epoch < cfg.run.epochs and not self._stop:
                epoch = self.epoch
                metrics = self.run_epoch(epoch, pool)
                self.epoch = epoch + 1
                if self.is_main:
                    log.log(epoch, metrics)
                    self._print(epoch, metrics)
                if cfg.eval.grid_every and self.epoch % cfg.eval.grid_every == 0:
                    self._grid(f"epoch_{self.epoch:04d}")
                stop = self._stop_everywhere()
                if self.epoch % cfg.run.save_every == 0 or self.epoch == cfg.run.epochs or stop:
                    save_trainer(self, self.epoch)
                self._stop = stop
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            pool.shutdown(wait=False, cancel_futures=True)
        if self._stop:
            if self.is_main:
                print(f"stopped after epoch {self.epoch}; checkpoint saved. Continue with: "
                      f"ddrl train --resume {run_dir}")
            return {}
        after = evaluate_once(self, "after")
        lora = self.lora_layers() if cfg.model.lora else None
        if self.is_main:
            finish_run(self, log.rows, before, after, lora)
            self._log_image("after", self.epoch)
            log.log_image("reward_curve", run_dir / "reward_curve.png", self.epoch)
        return {"before": before, "after": after}

    def _on_interrupt(self, signum, frame) -> None:
        if self._stop:  # second Ctrl-C: stop now; the last checkpoint is intact
            raise KeyboardInterrupt
        self._stop = True
        if self.is_main:
            print("\nCtrl-C: finishing this epoch and saving a checkpoint (Ctrl-C again to quit now)")

    def _any_process(self, flag: bool) -> bool:
        """Whether `flag` is true on any process (every process gets the same answer)."""
        t = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def _stop_everywhere(self) -> bool:
        return self._any_process(self._stop)

    def _grid(self, name: str) -> None:
        if self.is_main or self.sharded:  # sampling is a collective under FSDP; the main process writes
            with self.eval_weights():
                write_grid(self, name)
        if self.is_main:
            self._log_image(name, self.epoch)
        self.accelerator.wait_for_everyone()

    def _print(self, epoch: int, m: dict) -> None:
        if "reward/mean" not in m:  # an offline epoch: no samples, no rewards
            acc = f"  implicit accuracy {m['train/implicit_accuracy']:.3f}" if "train/implicit_accuracy" in m else ""
            tqdm.write(f"epoch {epoch + 1:>3}/{self.cfg.run.epochs}  loss {m.get('train/loss', float('nan')):.4f}"
                       f"{acc}  {m['perf/epoch_s']:.1f}s")
            return
        acc = f"  accuracy {m['reward/accuracy']:.3f}" if "reward/accuracy" in m else ""
        kl = f"  approx_kl {m['train/approx_kl']:.2e}  clipfrac {m['train/clipfrac']:.3f}" if "train/approx_kl" in m else ""
        parts = " ".join(f"{k} {m[f'perf/{k}_s']:.1f}" for k in ("sample", "reward", "train") if f"perf/{k}_s" in m)
        tqdm.write(f"epoch {epoch + 1:>3}/{self.cfg.run.epochs}  reward {m['reward/mean']:+.4f} "
                   f"(std {m['reward/std']:.3f}){acc}{kl}  {m['perf/epoch_s']:.1f}s [{parts}]")
