"""Diffusion-DPO (losses/dpo.py) offline and online, and the supervised baseline on winners.

- `dpo`: offline pairs (`data.pairs`), no sampling in the loop (SalesforceAIResearch/DiffusionDPO
  train.py). An epoch is `data.pairs_per_epoch` pairs of a stream that reshuffles the data by
  seed at every pass; each pair gets one noise level and noise shared by winner and loser, a
  prompt emptied with probability `data.empty_prompt_fraction`, and fresh latents from the cached
  VAE posterior (data/latent_cache.py).
- `online-dpo`: flow_grpo scripts/train_sd3_dpo.py. Each epoch samples a group per prompt from the
  reference policy; the best and worst of a group by the reward are a pair (argmax / argmin; a group
  whose rewards are all equal carries no pair). The reference, which samples and anchors the loss,
  is the base model, refreshed from the learner every `dpo.ref_update_steps` optimizer steps
  (flow_grpo: never for "DPO", 40 for "OnlineDPO").
- `sft`: flow_grpo scripts/train_sd3_sft.py. The same sampling; the plain denoising loss on the
  samples with their group's highest reward, averaged over all samples (weight 1 or 0).

Each of a pair's or sample's noise draws comes from its own keyed generator, so runs are
reproducible and resume exactly.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..config import ConfigError
from ..data import DataError, check_captions, pair_latents, read_pair_rows
from ..losses.dpo import diffusion_dpo_loss
from ..models.policy import Cond
from ..options import option
from .base import Algorithm, Context, EpochRewards, RolloutAlgorithm, Rollouts, mean_stats, minibatches
from .forward_process import ForwardProcess

# the effective beta of s = -beta * Delta when dpo.beta is not set (ALGORITHMS.md section 5)
DEFAULT_BETA = {"epsilon": 2500.0, "velocity": 50.0}


@dataclass(frozen=True)
class DPOOptions:
    """The options of dpo, online-dpo and sft."""

    section: ClassVar[str] = "dpo"
    beta: float | None = option(
        None, "(0, inf)", "dpo/online-dpo: the effective beta of s = -beta * Delta on per-element-mean errors; "
        "None: 2500 for diffusion models, 50 for flow models. Salesforce's --beta_dpo B and flow_grpo's "
        "train.beta B are B / 2 here (they scale by 1/2), diffusers' --beta_dpo B is B")
    ref_update_steps: int = option(
        40, "[0, inf)", "online-dpo/sft: optimizer steps between copies of the learner into the reference, which "
        "samples the pairs and anchors the loss (flow_grpo's OnlineDPO: 40; 0 never: pairs always from the base "
        "model, flow_grpo's DPO)")
    tied_groups: Literal["drop", "arbitrary"] = option(
        "drop", None, "online-dpo: a group whose rewards are all equal gives no pair (drop), or its second sample "
        "over its first, as flow_grpo's stat tracker (arbitrary)")


def dpo_beta(options: DPOOptions, prediction: str) -> float:
    return options.beta if options.beta is not None else DEFAULT_BETA[prediction]


def pair_step(ctx: Context, fp: ForwardProcess, x0_w: Tensor, x0_l: Tensor, cond: Cond,
              gens: list[torch.Generator], reference, beta: float) -> tuple[Tensor, dict[str, float]]:
    """The Diffusion-DPO loss of B pairs, their mean (with graph), and its statistics. The
    reference pass runs first: it may swap weights into the trained parameters."""
    level, noise = fp.draw(tuple(x0_w.shape[1:]), gens)
    level, noise = level.to(x0_w.device), noise.to(x0_w.device)
    x_w, target = fp.noised(x0_w, level, noise)
    x_l, target_l = fp.noised(x0_l, level, noise)
    x, t, c = torch.cat([x_w, x_l]), torch.cat([level, level]), Cond.cat([cond, cond])
    with torch.no_grad(), reference(), ctx.autocast():
        ref_err = fp.error(ctx.policy.predict(x, t, c), torch.cat([target, target_l]), t)
    with ctx.autocast():
        err = fp.error(ctx.policy.predict(x, t, c), torch.cat([target, target_l]), t)
    b = len(x0_w)
    loss, s = diffusion_dpo_loss(err[:b], err[b:], ref_err[:b], ref_err[b:], beta)
    e, r = err.detach(), ref_err
    return loss.mean(), {"train/loss": float(loss.detach().mean()), "train/implicit_accuracy": float((s > 0).float().mean()),
            "train/reward_margin": float(s.detach().mean()),
            "train/mse_gap_policy": float((e[:b] - e[b:]).mean()), "train/mse_gap_reference": float((r[:b] - r[b:]).mean()),
            "train/mse_policy": float(e.mean()), "train/mse_reference": float(r.mean())}


class DPO(Algorithm):
    """Offline Diffusion-DPO on `data.pairs`."""

    Options = DPOOptions
    prediction = None  # diffusion and flow models alike

    @classmethod
    def validate(cls, cfg) -> None:
        if not cfg.data.pairs:
            raise ConfigError("train.algorithm dpo trains on preference pairs: set data.pairs (a pairs JSONL such "
                              "as `ddrl reward-pairs` writes, a parquet/arrow file or a datasets hub id); "
                              "online-dpo samples its pairs instead")
        d = cfg.data
        if d.pairs_per_epoch % cfg.train.batch_size or (d.pairs_per_epoch // cfg.train.batch_size) % cfg.train.gradient_accumulation_steps:
            raise ConfigError(f"data.pairs_per_epoch ({d.pairs_per_epoch}) must be a multiple of train.batch_size "
                              f"({cfg.train.batch_size}) x train.gradient_accumulation_steps "
                              f"({cfg.train.gradient_accumulation_steps})")

    @classmethod
    def needs_reference(cls, cfg) -> bool:
        return True

    @classmethod
    def trained_steps(cls, cfg) -> int:
        return 1

    @classmethod
    def describe(cls, cfg, num_processes: int = 1) -> str:
        t = cfg.train
        return (f"{cfg.data.pairs_per_epoch or 'one pass over the'} pairs of {cfg.data.pairs} per epoch, optimizer "
                f"steps of {t.batch_size * t.gradient_accumulation_steps * num_processes} pairs")

    def __init__(self, options: DPOOptions, ctx: Context):
        super().__init__(options, ctx)
        cfg = ctx.cfg
        self.fp = ForwardProcess(ctx.policy)
        self.beta = dpo_beta(options, ctx.policy.prediction)
        factor = ctx.policy.pipe.vae_scale_factor
        resolution = cfg.data.resolution or ctx.policy.latent_shape[-1] * factor
        if resolution % (2 * factor):  # an even latent side, as the UNets' and transformers' 2x2 patches need
            raise ConfigError(f"data.resolution {resolution} must be a multiple of {2 * factor} for {cfg.model.name} "
                              f"(twice its VAE's downsampling factor {factor})")
        rows = check_captions(read_pair_rows(cfg.data), ctx.policy, cfg.data.skip_bad_rows)

        def latents():
            return pair_latents(rows, ctx.policy, cfg.model.name, resolution, cfg.data.hflip, cfg.data.cache_dir,
                                cfg.data.skip_bad_rows, progress=ctx.is_main)

        # the main process encodes and caches; the others wait for it and read the cache
        error = None
        if ctx.is_main:
            try:
                self.data, where, cached = latents()
            except ValueError as e:
                error = e
        if ctx.any_process(error is not None):
            raise error or DataError("the main process could not cache the pair latents (its error says why)")
        if not ctx.is_main:
            self.data, where, cached = latents()
        if ctx.is_main:
            skipped = f", {len(self.data.skipped)} bad rows skipped (first: {self.data.skipped[0]})" if self.data.skipped else ""
            ties = f", {self.data.ties} ties dropped" if self.data.ties else ""
            print(f"data: {len(self.data)} pairs at {resolution} px{ties}{skipped}; latents "
                  f"{'read from' if cached else 'cached in'} {where}")
        step = cfg.train.batch_size * ctx.num_processes * cfg.train.gradient_accumulation_steps
        self.per_epoch = cfg.data.pairs_per_epoch or (len(self.data) // step) * step
        if self.per_epoch == 0 or self.per_epoch % step:
            raise ConfigError(f"an epoch of {self.per_epoch or len(self.data)} pairs is not a whole number of optimizer "
                              f"steps of train.batch_size {cfg.train.batch_size} x {ctx.num_processes} processes x "
                              f"train.gradient_accumulation_steps {cfg.train.gradient_accumulation_steps} pairs; "
                              "change data.pairs_per_epoch or the batch sizes")
        self.position = 0  # pairs of the stream consumed so far (saved in checkpoints)
        self._perms: dict[int, Tensor] = {}

    def row(self, position: int) -> int:
        """The data row at a stream position: pass k is the data in the order of permutation k."""
        n = len(self.data)
        k = position // n
        if k not in self._perms:
            self._perms = {k: torch.randperm(n, generator=self.ctx.generator(k, purpose="data"))}
        return int(self._perms[k][position % n])

    def train_epoch(self, epoch: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.ctx.cfg
        bs, world, p = cfg.train.batch_size, ctx.num_processes, ctx.process_index
        frac, device = cfg.data.empty_prompt_fraction, ctx.policy.device
        stats: dict[str, list[float]] = defaultdict(list)
        acc = ctx.accumulation(stats)
        for mb in range(self.per_epoch // (bs * world)):
            positions = [self.position + mb * bs * world + p * bs + j for j in range(bs)]
            gens = [ctx.generator(epoch, pos, purpose="pairs") for pos in positions]
            idx = [self.row(pos) for pos in positions]
            x0_w, x0_l = self.data.draw(idx, gens)
            prompts = ["" if float(torch.rand((), generator=g)) < frac else self.data.prompts[i]
                       for i, g in zip(idx, gens)]
            with torch.no_grad():
                cond = ctx.policy.encode(prompts)
            loss, out = pair_step(ctx, self.fp, x0_w.to(device), x0_l.to(device), cond, gens, ctx.reference, self.beta)
            acc.backward(loss)
            for k, v in out.items():
                stats[k].append(v)
            acc.end_minibatch(mb)
        self.position += self.per_epoch
        return mean_stats(stats) | {"data/pairs_seen": float(self.position),
                                    "data/passes": self.position / len(self.data)}

    def state_dict(self):
        return {}, {"position": self.position, "num_pairs": len(self.data)}

    def load_state_dict(self, tensors, values) -> None:
        if values.get("num_pairs") != len(self.data):
            raise ConfigError(f"the checkpoint was trained on {values.get('num_pairs')} pairs, data.pairs now has "
                              f"{len(self.data)}: resume with the same data")
        self.position = int(values["position"])


def group_winners(batch: EpochRewards, tied: str) -> Tensor:
    """+1 at each group's first argmax, -1 at its first argmin, 0 elsewhere, (N,). A group whose
    rewards are all equal gets no pair (`tied` drop) or, as flow_grpo's stat tracker, its second
    sample as winner and first as loser (`tied` arbitrary)."""
    out = torch.zeros(len(batch.rewards))
    for g in batch.groups.unique():
        rows = (batch.groups == g).nonzero().flatten()
        r = batch.rewards[rows]
        hi, lo = int(r.argmax()), int(r.argmin())
        if hi == lo or r[hi] == r[lo]:
            if tied == "drop":
                continue
            hi, lo = 1, 0
        out[rows[hi]], out[rows[lo]] = 1.0, -1.0
    return out


class _SampledFromReference(RolloutAlgorithm):
    """Sampling from the reference, which is the base model until the first refresh and then a
    snapshot of the learner taken every `dpo.ref_update_steps` optimizer steps."""

    Options = DPOOptions
    prediction = None

    @classmethod
    def validate(cls, cfg) -> None:
        s, t = cfg.sample, cfg.train
        if cfg.data.pairs:
            raise ConfigError(f"train.algorithm {t.algorithm} samples its own pairs; data.pairs is read by dpo")
        if s.images_per_prompt < 2:
            raise ConfigError(f"train.algorithm {t.algorithm} compares the images of a prompt: set "
                              "sample.images_per_prompt >= 2")
        if t.batch_size % s.images_per_prompt:
            raise ConfigError(f"sample.images_per_prompt ({s.images_per_prompt}) must divide train.batch_size "
                              f"({t.batch_size}), so a group's images are trained on one process")

    @classmethod
    def needs_reference(cls, cfg) -> bool:
        return True

    @classmethod
    def trained_steps(cls, cfg) -> int:
        # flow_grpo draws int(num_steps * timestep_fraction) fresh noise levels per sample
        return max(1, int(cfg.sample.num_steps * cfg.train.timestep_fraction))

    def __init__(self, options: DPOOptions, ctx: Context):
        super().__init__(options, ctx)
        self.fp = ForwardProcess(ctx.policy)
        self.snapshot: dict[str, Tensor] | None = None
        self.refreshed_at = 0

    def reference(self):
        return self.ctx.reference() if self.snapshot is None else self.ctx.swapped(self.snapshot)

    def sampling_weights(self):
        return self.reference()

    def maybe_refresh(self) -> dict[str, float]:
        n, steps = self.options.ref_update_steps, self.ctx.optimizer_steps()
        if n and steps - self.refreshed_at >= n:
            self.snapshot = {k: v.clone() for k, v in self.ctx.trainable_state().items()}
            self.refreshed_at = steps
        return {"train/reference_age": float(steps - self.refreshed_at)}

    def state_dict(self):
        tensors = {f"reference.{k}": v for k, v in (self.snapshot or {}).items()}
        return tensors, {"refreshed_at": self.refreshed_at}

    def load_state_dict(self, tensors, values) -> None:
        device = self.ctx.policy.device
        self.snapshot = {k.removeprefix("reference."): v.to(device) for k, v in tensors.items()} or None
        self.refreshed_at = int(values.get("refreshed_at", 0))


class OnlineDPO(_SampledFromReference):
    def __init__(self, options: DPOOptions, ctx: Context):
        super().__init__(options, ctx)
        self.beta = dpo_beta(options, ctx.policy.prediction)

    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        out = group_winners(batch, self.options.tied_groups)
        metrics["train/pair_fraction"] = float((out > 0).sum() / batch.groups.unique().numel())
        return out

    def update(self, ro: Rollouts, signal: Tensor, epoch: int) -> dict[str, float]:
        ctx, k = self.ctx, self.trained_steps(self.ctx.cfg)
        group = ro.global_idx // ctx.cfg.sample.images_per_prompt
        loser_of = {int(group[i]): i for i in (signal < 0).nonzero().flatten().tolist()}
        stats: dict[str, list[float]] = defaultdict(list)
        acc = ctx.accumulation(stats)
        for _, mb, rows, gens in minibatches(ctx, ro, epoch, keep=signal > 0):
            if len(rows):
                losers = torch.tensor([loser_of[int(group[i])] for i in rows])
                x0_w, x0_l = ro.latents[rows, -1], ro.latents[losers, -1]
                cond = ctx.cond_table[ro.prompt_ids[rows]]
                for _ in range(k):  # the reference's loop over num_train_timesteps fresh draws
                    loss, out = pair_step(ctx, self.fp, x0_w, x0_l, cond, gens, self.reference, self.beta)
                    acc.backward(loss, k)  # the mean over the k draws
                    for key, v in out.items():
                        stats[key].append(v)
            acc.end_minibatch(mb)
        return mean_stats(stats) | self.maybe_refresh()


def group_best(batch: EpochRewards) -> Tensor:
    """1 at every sample with its group's highest reward (all of a tie), 0 elsewhere, (N,)."""
    best = torch.zeros(len(batch.rewards))
    for g in batch.groups.unique():
        rows = (batch.groups == g).nonzero().flatten()
        best[rows] = (batch.rewards[rows] == batch.rewards[rows].max()).float()
    return best


class SFT(_SampledFromReference):
    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        best = group_best(batch)
        metrics["train/winner_fraction"] = float(best.mean())
        return best

    def update(self, ro: Rollouts, weights: Tensor, epoch: int) -> dict[str, float]:
        ctx, k = self.ctx, self.trained_steps(self.ctx.cfg)
        stats: dict[str, list[float]] = defaultdict(list)
        acc = ctx.accumulation(stats)
        for _, mb, rows, gens in minibatches(ctx, ro, epoch):
            keep = weights[rows].cpu() > 0
            if keep.any():  # rows of weight 0 add nothing but still count in the mean, as the reference
                kept = rows[keep]
                x0, cond = ro.latents[kept, -1], ctx.cond_table[ro.prompt_ids[kept]]
                kept_gens = [g for g, m in zip(gens, keep.tolist()) if m]
                for _ in range(k):
                    level, noise = self.fp.draw(tuple(x0.shape[1:]), kept_gens)
                    level, noise = level.to(x0.device), noise.to(x0.device)
                    x_t, target = self.fp.noised(x0, level, noise)
                    with ctx.autocast():
                        err = self.fp.error(ctx.policy.predict(x_t, level, cond), target, level)
                    acc.backward(err.sum(), len(rows) * k)
                    stats["train/loss"].append(float(err.detach().sum() / len(rows)))
            acc.end_minibatch(mb)
        return mean_stats(stats) | self.maybe_refresh()
