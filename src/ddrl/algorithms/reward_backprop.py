"""Reward backpropagation through the sampling chain (ALGORITHMS.md section 6): ReFL (Xu et al.
2023), DRaFT-K and DRaFT-LV (Clark et al. 2023), AlignProp (Prabhudesai et al. 2023).

Each minibatch is sampled from noise with the training sampler. Steps 0..b-1 run without
gradients; steps b..T-1 run with them, so the gradient reaches the weights through every later
step's output and through its input x_t, as in an unrolled recurrent network. With
`backprop.checkpointing` each network call with gradients is recomputed in the backward pass
(torch.utils.checkpoint), so activation memory does not grow with T - b. The final latents are
decoded with gradients, scored by a differentiable reward r, and phi(r) (losses/reward_backprop.py)
is descended. Where b lies:

- draft (DRaFT-K): b = T - K.
- draft with lv_samples n (DRaFT-LV, K = 1): the whole chain without gradients to x_0; then n
  copies q(x_{t_last} | x_0) = noise_to(T - 1, x_0, eps_i) at the last step's noise level, each
  denoised to its data prediction with gradients; the loss averages the n copies.
- alignprop: b drawn per minibatch as int(N(T - mean_steps, std)), redrawn until in [1, T)
  (mihirp1998/AlignProp sd_pipeline.py, backprop_strategy "gaussian": mean 42 of 50 steps, std 5),
  or uniform over [1, T), or fixed.
- refl: m ~ U{first..last}; steps before m without gradients, one network call at m with
  gradients, and its data prediction x0_hat, not a further step, is decoded and scored
  (THUDM/ImageReward ReFL.py: 40 steps, m in [30, 39]).

Regularisers (both off by default, as in the references): `train.kl_coef` times the mean squared
difference between the network's and the reference's outputs at the steps with gradients (for a
Gaussian step, the KL between the two steps is this times a per-step constant), and
`backprop.pretrain_loss`, one optimizer step on the denoising loss of the base model's own samples
before each reward step (ReFL's SDXL script does this on a dataset).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch
import torch.utils.checkpoint
from torch import Tensor

from ..config import ConfigError
from ..losses.reward_backprop import DEFAULTS, reward_loss
from ..models.policy import Cond, guided_prediction
from ..rewards import RewardError, check_output, non_differentiable, parse
from ..options import option
from .base import Algorithm, Context, mean_stats
from .forward_process import ForwardProcess


@dataclass(frozen=True)
class BackpropOptions:
    """The options of refl, draft and alignprop; None: the algorithm's reference value."""

    section: ClassVar[str] = "backprop"
    loss: Literal["neg", "relu", "abs"] | None = option(
        None, None, "phi(r) minimised: neg (-r; draft, alignprop), relu (ReLU(target - r); refl) or abs (|r - target|)")
    target: float | None = option(None, "(-inf, inf)", "lambda of relu (refl: 2) or the target of abs "
                                  "(AlignProp's aesthetic run: 10)")
    scale: float | None = option(None, "(0, inf)", "the loss's factor (refl's grad_scale 1e-3, alignprop's "
                                 "loss_coeff 0.01, draft 1)")
    steps: int = option(1, "[1, inf)", "draft: K, the last steps backpropagated through (DRaFT-K); alignprop with "
                        "truncation fixed")
    lv_samples: int = option(0, "[0, inf)", "draft: n > 0 is DRaFT-LV (K = 1): n noised copies of each sample's x0 "
                             "each take the last step with grad")
    refl_first_step: int | None = option(None, "[0, inf)", "refl: the grad step m ~ U{first..last} (step indices "
                                         "from 0); None: 3T/4 (ReFL: 30 of 40)")
    refl_last_step: int | None = option(None, "[0, inf)", "refl: None: T - 1 (ReFL: 39 of 40)")
    truncation: Literal["gaussian", "uniform", "fixed"] = option(
        "gaussian", None, "alignprop: where backprop starts, drawn per minibatch: gaussian (b = int(N(T - "
        "mean_steps, std))), uniform over [1, T), or fixed (the last `steps`); b is redrawn until in [1, T), as AlignProp")
    truncation_mean_steps: float = option(8.0, "(0, inf)", "alignprop gaussian: mean steps backpropagated "
                                          "(AlignProp: mean 42 of 50 steps)")
    truncation_std: float = option(5.0, "[0, inf)", "alignprop gaussian: std of the truncation point")
    checkpointing: bool = option(True, None, "recompute each network call with gradients in the backward pass "
                                 "(torch.utils.checkpoint), so activation memory does not grow with the steps "
                                 "backpropagated (AlignProp: always)")
    pretrain_loss: bool = option(False, None, "before each reward step, an optimizer step on the denoising loss of "
                                 "the base model's own samples (ReFL's SDXL script's --apply_pre_loss, which uses a dataset)")


def _options(cfg) -> BackpropOptions:
    return cfg.options if isinstance(cfg.options, BackpropOptions) else BackpropOptions()


def predict(ctx: Context, x: Tensor, t: Tensor, cond: Cond, uncond: Cond, checkpointed: bool) -> Tensor:
    """The guided network output; under `checkpointed` its activations are recomputed in backward."""
    def f(x_t: Tensor) -> Tensor:
        with ctx.autocast():
            return guided_prediction(ctx.policy, x_t, t, cond, uncond, ctx.cfg.sample.guidance_scale)

    return torch.utils.checkpoint.checkpoint(f, x, use_reentrant=False) if checkpointed else f(x)


def sample_with_grad(ctx: Context, x_T: Tensor, cond: Cond, uncond: Cond, noise: Callable[[], Tensor],
                     first_grad_step: int, *, stop_at: int | None = None, checkpointed: bool = True,
                     kl: bool = False) -> tuple[Tensor, list[Tensor], int]:
    """(final latents, or the data prediction at step `stop_at`; per-step (B,) output errors to the
    reference at the steps with gradients when `kl`; the number of network calls with gradients).
    Steps from `first_grad_step` on keep their graph; earlier ones run without it."""
    sampler = ctx.sampler
    x, previous, kl_terms, calls = x_T, None, [], 0
    last = len(sampler) if stop_at is None else stop_at + 1
    for j in range(last):
        jt = torch.tensor(j)
        t = sampler.model_time(jt).expand(len(x)).to(x.device)
        grad = j >= first_grad_step
        with torch.set_grad_enabled(grad):
            out = predict(ctx, x, t, cond, uncond, checkpointed and grad)
            calls += grad
            if grad and kl:
                with torch.no_grad(), ctx.reference():
                    ref = predict(ctx, x, t, cond, uncond, False)
                kl_terms.append(((out.float() - ref.float()) ** 2).flatten(1).mean(1))
            if j == stop_at:
                return sampler.x0_prediction(jt, x, out), kl_terms, calls
            z = noise() if sampler.stochastic[j] else None
            step = sampler.step(jt, x, out, noise=z, previous=previous)
        previous, x = (x, out), step.x_prev
    return x, kl_terms, calls


def noise_of(gens: list[torch.Generator], shape: tuple[int, ...], device) -> Callable[[], Tensor]:
    """A function drawing one (len(gens), *shape) noise batch, a row from each sample's generator."""
    return lambda: torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


MAX_TRUNCATION_DRAWS = 10_000
MIN_TRUNCATION_ACCEPTANCE = 0.01


def alignprop_acceptance(T: int, truncation: str, mean_steps: float, std: float) -> float:
    """P(1 <= b < T) for one draw of `alignprop_first_step`. Gaussian: b = int(x), x ~ N(mu, std)
    with mu = T - mean_steps; int() truncates toward zero, so for integers 1 and T, int(x) >= 1
    iff x >= 1 and int(x) < T iff x < T: P = Phi((T - mu)/std) - Phi((1 - mu)/std); with std 0,
    1 if 1 <= mu < T else 0. Uniform over {0..T-1}: (T - 1)/T. Fixed: 1 (no draw)."""
    if truncation == "fixed":
        return 1.0
    if truncation == "uniform":
        return (T - 1) / T
    mu = T - mean_steps
    if std == 0:
        return float(1 <= mu < T)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    return phi((T - mu) / std) - phi((1 - mu) / std)


def alignprop_first_step(gen: torch.Generator, T: int, truncation: str, mean_steps: float, std: float,
                         steps: int) -> int:
    """AlignProp's truncation point b (sd_pipeline.py): gaussian int(N(T - mean_steps, std)),
    truncated toward zero as Python's int(); uniform randint(0, T); redrawn until 1 <= b < T.
    The config check requires an acceptance of at least 1% per draw (`alignprop_acceptance`), so
    10,000 draws all failing has probability below 1e-43; the bound turns an impossible setting
    that slipped past the check into an error instead of a hang."""
    if truncation == "fixed":
        return T - steps
    for _ in range(MAX_TRUNCATION_DRAWS):
        if truncation == "gaussian":
            b = int(torch.normal(float(T - mean_steps), float(std), (), generator=gen))
        else:
            b = int(torch.randint(0, T, (), generator=gen))
        if 1 <= b < T:
            return b
    raise RuntimeError(f"alignprop: no truncation point in [1, {T}) in {MAX_TRUNCATION_DRAWS} draws "
                       f"({truncation}, mean_steps {mean_steps}, std {std})")


class RewardBackprop(Algorithm):
    """The shared minibatch loop; subclasses say where gradients start and what is scored."""

    Options = BackpropOptions
    prediction = None  # diffusion (DDIM) and flow models alike
    key: str

    @classmethod
    def validate(cls, cfg) -> None:
        bad = non_differentiable(parse(cfg.reward.name))
        if bad:
            from ..rewards import REWARDS

            ok = ", ".join(k for k, s in REWARDS.items() if s.differentiable)
            raise ConfigError(f"train.algorithm {cfg.train.algorithm} backpropagates the reward's gradient, but "
                              f"{', '.join(map(repr, bad))} in reward.name {cfg.reward.name!r} has none. "
                              f"Differentiable rewards: {ok}. For any reward, use a policy-gradient "
                              "algorithm (ddpo-is, flow-grpo)")
        loss, target, _ = cls.loss_settings(cfg)
        if loss in ("relu", "abs") and target is None:
            raise ConfigError(f"backprop.loss {loss} needs backprop.target")
        t, n = cfg.train, cfg.samples_per_epoch
        if n % (t.batch_size * t.gradient_accumulation_steps):
            raise ConfigError(f"samples per epoch ({cfg.sample.batch_size} x {cfg.sample.num_batches_per_epoch} = {n}) "
                              f"must be a multiple of train.batch_size ({t.batch_size}) x "
                              f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps})")

    @classmethod
    def loss_settings(cls, cfg) -> tuple[str, float | None, float]:
        b, (loss, target, scale) = _options(cfg), DEFAULTS[cls.key]
        return (b.loss or loss, target if b.target is None else b.target, scale if b.scale is None else b.scale)

    @classmethod
    def needs_reference(cls, cfg) -> bool:
        return cfg.train.kl_coef > 0 or _options(cfg).pretrain_loss

    @classmethod
    def describe(cls, cfg, num_processes: int = 1) -> str:
        return (f"{cfg.global_samples_per_epoch(num_processes)} samples per epoch, each sampled in "
                f"{cfg.sample.num_steps} steps with about {cls.trained_steps(cfg)} backpropagated through; "
                f"{cfg.samples_per_epoch // (cfg.train.batch_size * cfg.train.gradient_accumulation_steps)} "
                f"optimizer step(s) per epoch")

    def __init__(self, options: BackpropOptions, ctx: Context):
        super().__init__(options, ctx)
        self.loss, self.target, self.scale = self.loss_settings(ctx.cfg)
        self.fp = ForwardProcess(ctx.policy) if _options(ctx.cfg).pretrain_loss else None

    def final_latents(self, x_T: Tensor, cond: Cond, uncond: Cond, noise, gen: torch.Generator
                      ) -> tuple[Tensor, list[Tensor], int, int]:
        """(latents to decode and score, with graph; KL terms; calls with gradients; copies per sample)."""
        raise NotImplementedError

    def train_epoch(self, epoch: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.ctx.cfg
        bs, ga, device = cfg.train.batch_size, cfg.train.gradient_accumulation_steps, ctx.policy.device
        gidx, pids = ctx.plan(epoch)
        stats: dict[str, list[float]] = defaultdict(list)
        acc = ctx.accumulation(stats)
        rewards, queries = [], 0
        for mb, start in enumerate(range(0, len(gidx), bs)):
            sl = slice(start, start + bs)
            noise = noise_of([ctx.generator(epoch, int(i), purpose="noise") for i in gidx[sl]],
                             ctx.policy.latent_shape, device)
            cond, uncond = ctx.cond_table[pids[sl]], ctx.uncond.repeat(len(gidx[sl]))
            prompts, metadata = ctx.prompts_of(pids[sl])
            if self.fp is not None and mb % ga == 0:  # its own draws: the sampling noise stays the same
                gens = [ctx.generator(epoch, int(i), purpose="pretrain") for i in gidx[sl]]
                stats["train/pretrain_loss"].append(self.pretrain_step(cond, uncond, gens))
            # one draw per global minibatch, so every process truncates its slice alike
            gen = ctx.generator(epoch, int(gidx[start]) // (bs * ctx.num_processes), purpose="truncation")
            latents, kl_terms, calls, copies = self.final_latents(noise(), cond, uncond, noise, gen)
            images = ctx.policy.decode(latents)
            out = ctx.reward(images.to(ctx.reward.device), prompts * copies, metadata * copies)
            r = check_output(ctx.reward.name, out, len(images))
            if images.requires_grad and not r.requires_grad:  # else every step would be a silent zero gradient
                raise RewardError(f"reward {ctx.reward.name!r} is declared differentiable, but its scores carry no "
                                  "gradient to the images (computed under torch.no_grad, detached, or through numpy "
                                  "or PIL?); return a tensor computed from the images in torch")
            r = r if r.dtype == torch.float64 else r.float()
            loss = reward_loss(r, self.loss, self.target, self.scale)
            if kl_terms:
                kl = torch.stack(kl_terms).mean()
                loss = loss + cfg.train.kl_coef * kl
                stats["train/kl_ref"].append(float(kl.detach()))
            acc.backward(loss)
            stats["train/loss"].append(float(loss.detach()))
            stats["train/backprop_steps"].append(float(calls))
            rewards.append(r.detach().cpu().view(copies, -1).mean(0))  # one value per sample
            queries += len(r)
            acc.end_minibatch(mb)
        g = ctx.gather(torch.cat(rewards))
        mean, std = float(g.mean()), float(g.std(unbiased=False))
        return mean_stats(stats) | {"reward/mean": mean, "reward/std": std, f"reward/{cfg.reward.name}/mean": mean,
                                    f"reward/{cfg.reward.name}/std": std,
                                    "train/reward_queries": float(queries * ctx.num_processes)}

    def pretrain_step(self, cond: Cond, uncond: Cond, gens: list[torch.Generator]) -> float:
        """One optimizer step on the denoising loss of the base model's samples for these prompts."""
        ctx = self.ctx
        noise = noise_of(gens, ctx.policy.latent_shape, ctx.policy.device)
        with torch.no_grad(), ctx.reference():
            x0, _, _ = sample_with_grad(ctx, noise(), cond, uncond, noise, len(ctx.sampler), checkpointed=False)
        level, eps = self.fp.draw(tuple(x0.shape[1:]), gens)
        x_t, target = self.fp.noised(x0, level, eps.to(x0.device))
        with ctx.autocast():
            pred = ctx.policy.predict(x_t, level.to(x0.device), cond)
        loss = self.fp.error(pred, target, level).mean()
        loss.backward()
        ctx.optimizer_step()
        return float(loss.detach())


class DRaFT(RewardBackprop):
    """DRaFT-K (backprop.steps = K), or DRaFT-LV with backprop.lv_samples = n."""

    key = "draft"

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        b, T = _options(cfg), cfg.sample.num_steps
        if not 1 <= b.steps <= T:
            raise ConfigError(f"backprop.steps (K = {b.steps}) must be in [1, sample.num_steps = {T}]")
        if b.lv_samples < 0 or (b.lv_samples and b.steps != 1):
            raise ConfigError(f"DRaFT-LV (backprop.lv_samples {b.lv_samples}) is defined for K = 1; "
                              f"backprop.steps is {b.steps}")

    @classmethod
    def trained_steps(cls, cfg) -> int:
        return _options(cfg).steps

    def final_latents(self, x_T, cond, uncond, noise, gen):
        ctx, b = self.ctx, self.options
        T, kl, ck = len(ctx.sampler), ctx.cfg.train.kl_coef > 0, b.checkpointing
        n = b.lv_samples
        if not n:
            x, kl_terms, calls = sample_with_grad(ctx, x_T, cond, uncond, noise, T - b.steps, checkpointed=ck, kl=kl)
            return x, kl_terms, calls, 1
        with torch.no_grad():
            x0, _, _ = sample_with_grad(ctx, x_T, cond, uncond, noise, T, checkpointed=False)
        last = torch.tensor(T - 1)
        x1 = torch.cat([ctx.sampler.noise_to(last, x0, noise()) for _ in range(n)])  # (n B, C, H, W)
        t = ctx.sampler.model_time(last).expand(len(x1)).to(x1.device)
        cond_n, uncond_n = Cond.cat([cond] * n), Cond.cat([uncond] * n)
        out = predict(ctx, x1, t, cond_n, uncond_n, ck)
        kl_terms = []
        if kl:
            with torch.no_grad(), ctx.reference():
                ref = predict(ctx, x1, t, cond_n, uncond_n, False)
            kl_terms.append(((out.float() - ref.float()) ** 2).flatten(1).mean(1))
        return ctx.sampler.x0_prediction(last, x1, out), kl_terms, 1, n


class AlignProp(RewardBackprop):
    key = "alignprop"

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        b, T = _options(cfg), cfg.sample.num_steps
        if T < 2:
            raise ConfigError("alignprop draws its truncation point in [1, T): sample.num_steps must be >= 2")
        if b.truncation == "fixed" and not 1 <= b.steps < T:
            raise ConfigError(f"backprop.steps ({b.steps}) must be in [1, {T - 1}] with truncation fixed")
        if b.truncation == "gaussian" and (b.truncation_std < 0 or not 0 < b.truncation_mean_steps < T):
            raise ConfigError(f"backprop.truncation_mean_steps ({b.truncation_mean_steps}) must be in (0, {T}) and "
                              f"truncation_std ({b.truncation_std}) >= 0")
        p = alignprop_acceptance(T, b.truncation, b.truncation_mean_steps, b.truncation_std)
        if p < MIN_TRUNCATION_ACCEPTANCE:
            raise ConfigError(
                f"backprop.truncation_mean_steps {b.truncation_mean_steps} with truncation_std {b.truncation_std} "
                f"draws a truncation point in [1, {T}) with probability {p:.2g} per draw (the draw is repeated "
                f"until it is): use truncation_mean_steps in (0, {T - 1}] or a larger truncation_std")

    @classmethod
    def trained_steps(cls, cfg) -> int:
        b = _options(cfg)
        return b.steps if b.truncation == "fixed" else round(b.truncation_mean_steps)

    def final_latents(self, x_T, cond, uncond, noise, gen):
        ctx, b = self.ctx, self.options
        T = len(ctx.sampler)
        first = alignprop_first_step(gen, T, b.truncation, b.truncation_mean_steps, b.truncation_std, b.steps)
        x, kl_terms, calls = sample_with_grad(ctx, x_T, cond, uncond, noise, first, checkpointed=b.checkpointing,
                                              kl=ctx.cfg.train.kl_coef > 0)
        return x, kl_terms, calls, 1


def refl_window(cfg) -> tuple[int, int]:
    """ReFL's [first, last] grad-step window; None defaults to [3T/4, T - 1] ([30, 39] for T = 40)."""
    b, T = _options(cfg), cfg.sample.num_steps
    first = b.refl_first_step if b.refl_first_step is not None else (3 * T) // 4
    return first, b.refl_last_step if b.refl_last_step is not None else T - 1


class ReFL(RewardBackprop):
    key = "refl"

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        first, last = refl_window(cfg)
        if not 0 <= first <= last < cfg.sample.num_steps:
            raise ConfigError(f"the ReFL window backprop.refl_first_step..refl_last_step ({first}..{last}) must lie "
                              f"in [0, sample.num_steps - 1 = {cfg.sample.num_steps - 1}]")

    @classmethod
    def trained_steps(cls, cfg) -> int:
        return 1

    def final_latents(self, x_T, cond, uncond, noise, gen):
        ctx = self.ctx
        first, last = refl_window(ctx.cfg)
        m = int(torch.randint(first, last + 1, (), generator=gen))
        x0_hat, kl_terms, calls = sample_with_grad(ctx, x_T, cond, uncond, noise, m, stop_at=m,
                                                   checkpointed=_options(ctx.cfg).checkpointing,
                                                   kl=ctx.cfg.train.kl_coef > 0)
        return x0_hat, kl_terms, calls, 1
