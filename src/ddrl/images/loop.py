"""The image loop every image algorithm shares, on the run core (ddrl.run):

    per epoch: algorithm.train_epoch(epoch) -> metrics   (rollout algorithms call ctx.collect:
               sample, score in a thread, gather; then their signal and update)
    around it: the optimizer step, EMA, the non-finite guard, metrics, grids, checkpoints

The loop never asks which algorithm runs; it hands it its options and a typed `Context`.

Every random draw is derived from (seed, epoch, purpose, global sample index), so a run gives
the same samples whatever its batch sizes or number of processes, and a resumed run continues
exactly where the checkpoint left it. Process p samples the slice of each global training
minibatch that it will train on; gradients are averaged across processes before each step.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..algorithms import Context, algorithm_class, options_of
from ..config import Config
from ..config_run import run_config_text
from ..config_checks import check_model_kind
from ..models.prompt_length import check_prompts
from ..prompts import load_prompt_records, shown
from ..rewards import get_reward
from ..run import NonFiniteError, OptimizerStep, Session, first_nonfinite, list_checkpoints, nonfinite_error
from ..run.checkpoint import load_latest_intact
from ..run.optim import average_gradients, make_optimizer
from ..run.sharding import check_launch, full_state, is_sharded, local, shard
from ..sampling import DDIMSampler, FlowSampler
from .evaluation import Evaluator
from .memory import estimate as memory_estimate
from .report import finish_run
from .rollouts import Collector
from .state import load_state, save_state
from .trainable import make_trainable

_PURPOSE = {"noise": 0, "prompt": 1, "train": 2, "data": 3, "pairs": 4, "truncation": 5, "pretrain": 6}


class ImageRun:
    def __init__(self, cfg: Config, run_dir: Path, accelerator=None):
        from accelerate import Accelerator

        check_launch()  # DeepSpeed and FSDP1 refused before accelerate is asked to set them up
        self.cfg, self.run_dir = cfg, run_dir
        self.accelerator = acc = accelerator or Accelerator(mixed_precision=cfg.run.mixed_precision,
                                                            cpu=not torch.cuda.is_available())
        self.is_main = acc.is_main_process
        self.sharded = is_sharded(acc)  # refuses DeepSpeed and FSDP1 before any model loads
        self.session = Session(run_dir, acc, seed=cfg.run.seed, epochs=cfg.run.epochs, save_every=cfg.run.save_every,
                               report_to=cfg.run.report_to, config=cfg.to_dict(), config_text=run_config_text(cfg))
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

        self.policy = load_policy(cfg.model.name, device=acc.device, resolution=cfg.model.resolution or None,
                                  max_sequence_length=cfg.model.max_sequence_length or None)
        algorithm, options = algorithm_class(cfg.train.algorithm), options_of(cfg)
        check_model_kind(cfg, self.policy.prediction)
        check_prompts(self.policy, self.train_prompts, f"prompts.source {cfg.prompts.source}")
        check_prompts(self.policy, self.eval_prompts, f"prompts.eval_source {cfg.prompts.eval_source}")
        self.sampler = self.make_sampler(cfg.sample.num_steps)
        with torch.no_grad():  # validates every prompt against the model before any work
            self.cond_table = self.policy.encode(self.train_prompts)
            self.uncond = self.policy.encode([""])
        params, self.frozen_reference = make_trainable(self.policy, cfg, algorithm.needs_reference(cfg))
        t = cfg.train
        optimizer = make_optimizer(params, t.optimizer, cfg.learning_rate, t.weight_decay,
                                   (t.adam_beta1, t.adam_beta2), t.adam_eps)
        if self.sharded:  # FSDP2: parameters, gradients and optimizer state become DTensor shards
            self.policy.denoiser, optimizer = shard(acc, self.policy.denoiser, optimizer)
            params = [p for p in self.policy.denoiser.parameters() if p.requires_grad]
        # FSDP averages gradients in the backward pass; an EMA of the trained weights is for
        # evaluation and export (flow_grpo's and DiffusionNFT's option)
        self.step = OptimizerStep(
            params, optimizer, lr=cfg.learning_rate, max_grad_norm=t.max_grad_norm, warmup_steps=t.lr_warmup_steps,
            skip_nonfinite=t.nonfinite == "skip",
            on_nonfinite=lambda norm: self.nonfinite(f"gradient norm ({norm})", skippable=True),
            average=None if self.sharded else lambda ps: average_gradients(ps, acc),
            named=self.trainable_state, ema_decay=t.ema_decay, ema_interval=t.ema_update_interval, ema_per=t.ema_per)
        self.epoch = 0
        self.collector = Collector(cfg, self.policy, self.sampler, self.cond_table, self.uncond, self.reward, acc,
                                   plan=self.plan, prompts_of=self.prompts_of, train_prompts=self.train_prompts,
                                   generator=self.generator, gather=self.gather, on_nonfinite=self.nonfinite,
                                   any_process=self.session.any_process)
        self.evaluator = Evaluator(cfg, self.policy, self.reward, self.train_prompts, self.eval_prompts,
                                   self.prompt_metadata, run_dir, self.is_main)
        self.algorithm_class = algorithm
        self.algorithm = algorithm(options, Context(
            cfg=cfg, policy=self.policy, sampler=self.sampler, cond_table=self.cond_table, uncond=self.uncond,
            autocast=acc.autocast, reference=self.reference, optimizer_step=lambda: self.optimizer_step(),
            optimizer_steps=lambda: self.step.steps, generator=self.generator, gather=self.gather,
            trainable_state=self.trainable_state, swapped=self.swapped, collect=self.collector,
            reward=self.reward, plan=self.plan, prompts_of=self.prompts_of, num_processes=acc.num_processes,
            process_index=acc.process_index, is_main=self.is_main, any_process=self.session.any_process,
            after_minibatch=lambda: self.step.after_minibatch()))

    # ------------------------------------------------------------------ setup
    def make_sampler(self, num_steps: int):
        s = self.cfg.sample
        if s.sampler == "ddim":
            return DDIMSampler(self.policy.schedule(num_steps), s.eta)
        return FlowSampler(self.policy.sigmas(num_steps), s.sampler.removeprefix("flow-"), s.noise_level,
                           s.noise_window_start, s.noise_window_size)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.step.params

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def optimizer_steps(self) -> int:
        return self.step.steps

    @property
    def ema(self) -> dict[str, Tensor] | None:
        return self.step.ema

    def optimizer_step(self) -> float:
        """Average, clip and step the trained weights (the algorithms' `ctx.optimizer_step`)."""
        return self.step()

    def memory_estimate(self):
        """The run's memory estimate (images/memory.py), printed at its start."""
        return memory_estimate(self.cfg, self.policy, self.sampler, self.params, self.frozen_reference,
                               self.cond_table, self.uncond, self.accelerator.autocast)

    @contextlib.contextmanager
    def swapped(self, weights: dict[str, Tensor] | None):
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
        return self.swapped(self.step.ema)

    @contextlib.contextmanager
    def reference(self):
        """The reference policy for the KL term: LoRA switched off, or a frozen copy of the
        pretrained weights in full fine-tuning."""
        if self.frozen_reference is None:
            with self.policy.reference():
                yield
            return
        trained = self.policy.denoiser
        self.policy.denoiser = self.frozen_reference
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
        return self.session.generator(_PURPOSE[purpose], *key)

    # ------------------------------------------------------------------ sample plan
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

    def gather(self, local: Tensor) -> Tensor:
        """Per-sample values of this process's samples (in `local_indices` order) -> those of every
        process, ordered by global index, on the CPU."""
        acc = self.accelerator
        g_idx = acc.gather(self.local_indices().to(acc.device)).cpu()
        return acc.gather(local.to(acc.device)).cpu()[torch.argsort(g_idx)]

    # ------------------------------------------------------------------ one epoch
    def nonfinite(self, what: str, skippable: bool = False) -> NonFiniteError:
        return nonfinite_error(what, self.epoch, self.step.steps, list_checkpoints(self.run_dir / "checkpoints"),
                               self.cfg.learning_rate, skippable)

    def run_epoch(self, epoch: int) -> dict[str, float]:
        self.step.skipped = 0
        t0 = time.perf_counter()
        metrics = self.algorithm.train_epoch(epoch)
        self._check_update(metrics)
        elapsed = time.perf_counter() - t0
        metrics.setdefault("perf/train_s", elapsed)  # an epoch that samples nothing is all training
        return metrics | {"perf/epoch_s": elapsed}

    def _check_update(self, metrics: dict[str, float]) -> None:
        bad = first_nonfinite({k: local(v) for k, v in self.trainable_state().items()})
        if self.session.any_process(bad is not None):  # a shard's check is this process's only
            raise self.nonfinite(f"weights ({bad or 'on another process'})")
        if not math.isfinite(metrics.get("train/loss", 0.0)) and self.cfg.train.nonfinite == "stop":
            raise self.nonfinite(f"loss ({metrics['train/loss']})", skippable=True)
        if self.cfg.train.nonfinite == "skip":
            metrics["train/skipped_steps"] = self.step.skipped

    # ------------------------------------------------------------------ checkpoints
    def save(self, epoch: int) -> None:
        lora = self.lora_layers() if self.cfg.model.lora else None
        save_state(self.run_dir / "checkpoints", epoch, weights=self.trainable_state(), step=self.step,
                   algorithm=self.algorithm, config_text=self.session.config_text, is_main=self.is_main,
                   keep=self.cfg.run.keep_checkpoints, lora=lora, policy=self.policy)
        self.accelerator.wait_for_everyone()

    def load(self, path: Path) -> None:
        self.epoch = load_state(path, params=dict(self.policy.denoiser.named_parameters()), step=self.step,
                                algorithm=self.algorithm, device=self.accelerator.device)

    def load_latest(self) -> None:
        """Resume from the newest intact checkpoint (a damaged one is moved aside)."""
        load_latest_intact(self.run_dir / "checkpoints", self.load, self.accelerator.wait_for_everyone, self.is_main)

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> dict:
        if resume:
            self.load_latest()
        if self.is_main or self.sharded:  # the estimate's probe is a forward: a collective under FSDP
            line = self.memory_estimate().line()
            if self.is_main:
                print(line)
        self.session.start(self.epoch, resume)
        try:
            return self._run()
        except BaseException:
            self.session.abandon(self.run_dir / "checkpoints")
            raise
        finally:
            self.session.close()
            self.collector.close()

    def evaluate(self, tag: str) -> dict:
        """The fixed-seed evaluation `tag` (before, after), cached in the run folder."""
        return self.evaluator.evaluate_once(tag, self.epoch, self.accelerator.wait_for_everyone, self.eval_weights,
                                            self.sharded)

    def _run(self) -> dict:
        cfg, session = self.cfg, self.session
        before = self.evaluate("before")
        if self.epoch == 0:
            session.log_image("grids/before", self.run_dir / "grids" / "before.png", 0)
        with session.interruptible():
            while self.epoch < cfg.run.epochs and not session.stopped:
                epoch = self.epoch
                metrics = self.run_epoch(epoch)
                self.epoch = epoch + 1
                if self.is_main:
                    session.log(epoch, metrics)
                    self._print(epoch, metrics)
                if cfg.eval.grid_every and self.epoch % cfg.eval.grid_every == 0:
                    self.grid(f"epoch_{self.epoch:04d}")
                if session.end_of_epoch(self.epoch):
                    self.save(self.epoch)
        if session.stopped:
            if self.is_main:
                print(f"stopped after epoch {self.epoch}; checkpoint saved. Continue with: "
                      f"ddrl train --resume {self.run_dir}")
            return {}
        after = self.evaluate("after")
        lora = self.lora_layers() if cfg.model.lora else None
        if self.is_main:
            finish_run(self.run_dir, cfg, self.epoch, self.algorithm_class.describe(cfg, self.accelerator.num_processes),
                       session.rows, before, after, self.policy, lora)
            session.log_image("grids/after", self.run_dir / "grids" / "after.png", self.epoch)
            session.log_image("reward_curve", self.run_dir / "reward_curve.png", self.epoch)
        return {"before": before, "after": after}

    def grid(self, name: str) -> None:
        if self.is_main or self.sharded:  # sampling is a collective under FSDP; the main process writes
            with self.eval_weights():
                self.evaluator.write_grid(name)
        if self.is_main:
            self.session.log_image(f"grids/{name.split('_')[0]}", self.run_dir / "grids" / f"{name}.png", self.epoch)
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
