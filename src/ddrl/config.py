"""Typed run configuration: frozen dataclasses, YAML files and dotted overrides (their checks
are in config_checks.py).

Sizes marked "per process" scale with the number of accelerate processes; derived global sizes
are properties of `Config` and printed at the start of a run. Every problem is reported before
any model is loaded, with the numbers involved.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

Sampler = Literal["ddim", "flow-sde", "flow-cps", "flow-ode", "flow-dpm2"]
AdvantageKind = Literal["per-prompt", "batch", "group"]
MixedPrecision = Literal["no", "fp16", "bf16"]
KLForm = Literal["code", "paper"]
NonFinite = Literal["stop", "skip"]
OptimizerKind = Literal["adamw", "adamw8bit", "adafactor"]
EmaPer = Literal["step", "minibatch"]

# keys renamed since earlier releases: old name -> new name (config files and --resume keep working).
# The algorithms' options moved from prefixed train.* keys into each algorithm's own section.
RENAMED = {"train.cfg": "train.rescore_with_guidance",
           "train.nft_beta": "nft.beta", "train.nft_loss": "nft.loss", "train.nft_old_decay": "nft.old_decay",
           "train.rwr_beta": "rwr.beta", "train.rwr_percentile": "rwr.percentile",
           "train.dpo_beta": "dpo.beta", "train.dpo_ref_update_steps": "dpo.ref_update_steps",
           "train.dpo_tied_groups": "dpo.tied_groups"}
class ConfigError(ValueError):
    """An invalid configuration; the message names the key and the accepted values."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "shapes-sd"
    """built-in model name, diffusers folder or hub id"""
    lora: bool = True
    """train a LoRA adapter (peft); false trains every weight of the denoiser"""
    lora_rank: int = 4
    lora_alpha: float = 4.0
    """LoRA scale is lora_alpha / lora_rank"""
    gradient_checkpointing: bool = False
    """recompute the denoiser's blocks in the backward pass instead of keeping their activations
    (diffusers' enable_gradient_checkpointing): less memory per sample, about a third more compute"""
    resolution: int = 0
    """SD3 and FLUX: the image side in pixels (flow_grpo and DiffusionNFT train SD3.5 at 512); 0: the
    model's default (SD3: its transformer's sample_size, 1024 for SD3.5; FLUX: 1024)"""
    max_sequence_length: int = 0
    """SD3 and FLUX: the T5 tokens a prompt is encoded to (flow_grpo and DiffusionNFT: 128); 0: the
    model's default (SD3: 256, FLUX: 512, or the folder's ddrl.json)"""


@dataclass(frozen=True)
class PromptConfig:
    source: str = "shapes:train"
    """training prompts: shapes:train|heldout|all, optionally of some categories
    (shapes:train:color_attr,position), animals, animal-activities, file:PATH (one prompt per
    line, or JSONL with metadata), or python:NAME (ddrl.register_prompts)"""
    eval_source: str = "shapes:heldout"
    """held-out prompts for the before/after evaluation (same syntax)"""


@dataclass(frozen=True)
class SampleConfig:
    num_steps: int = 20
    """denoising steps T of each rollout"""
    sampler: Sampler = "ddim"
    """ddim (epsilon/v/x0 models), or flow-sde, flow-cps, flow-ode, flow-dpm2 (flow-matching models;
    flow-dpm2 is the deterministic DPM-Solver++(2M), DiffusionNFT's rollout solver)"""
    eta: float = 1.0
    """DDIM stochasticity in (0, 1]; 1 is DDPM-like (DDPO's setting)"""
    noise_level: float = 0.7
    """flow-sde: a in sigma_t = a sqrt(t / (1 - t)) (Flow-GRPO: 0.7); flow-cps: eta in [0, 1] (0.8)"""
    noise_window_start: int = 0
    """first stochastic step of a flow sampler (the others are ODE steps and are not trained)"""
    noise_window_size: int = 0
    """stochastic steps from noise_window_start (0: all the rest)"""
    guidance_scale: float = 5.0
    """classifier-free guidance scale: 0 or 1 disables it (the conditional prediction alone), else > 1"""
    batch_size: int = 32
    """images per sampling forward, per process"""
    num_batches_per_epoch: int = 2
    """sampling batches per epoch, per process"""
    images_per_prompt: int = 1
    """consecutive samples that share a prompt (1: every sample draws its own prompt, as DDPO)"""


@dataclass(frozen=True)
class TrainConfig:
    algorithm: str = "ddpo-is"
    """a registered algorithm (`ddrl train --help` lists them); its own options are in the config
    section it names (nft.beta, rwr.percentile, dpo.beta, backprop.steps, ...)"""
    learning_rate: float | None = None
    """AdamW learning rate; None uses the default for LoRA or full fine-tuning"""
    batch_size: int = 16
    """samples per training minibatch, per process"""
    gradient_accumulation_steps: int = 1
    """minibatches per optimizer step"""
    num_inner_epochs: int = 1
    """passes over each epoch's samples"""
    timestep_fraction: float = 1.0
    """fraction of each trajectory's stochastic steps trained on: ddpo a random subset per sample,
    flow-grpo the first ones in order (its reference: 0.99, all but the last), nft random noise levels"""
    timesteps_per_forward: int = 1
    """trained steps batched into one network forward (same update, different speed)"""
    single_pass: bool = True
    """when every update is on-policy, keep the sampling graph instead of a second forward"""
    clip_range: float = 1e-4
    """PPO clip range of the ratio (per-dim-mean log-probs)"""
    adv_clip_max: float = 5.0
    max_grad_norm: float = 1.0
    optimizer: OptimizerKind = "adamw"
    """adamw; adamw8bit (bitsandbytes' 8-bit AdamW: the optimizer state in a quarter of the memory,
    `pip install ddrl[scale]`); or adafactor (transformers' Adafactor at a fixed learning rate, as
    Diffusion-DPO's SDXL run)"""
    lr_warmup_steps: int = 0
    """optimizer steps of linear warm-up from 0 (diffusers' constant_with_warmup); 0: none"""
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    rescore_with_guidance: bool = True
    """apply classifier-free guidance when re-scoring steps in training, as at sampling (the
    references' `train.cfg`, default on); false re-scores the conditional prediction alone"""
    kl_coef: float = 0.0
    """beta of the KL to the reference model (base model / LoRA off); 0 skips its forward. Reward
    backprop (refl, draft, alignprop): beta times the mean squared difference of the network outputs
    at the steps with gradients, the Gaussian steps' KL up to a per-step constant"""
    kl_form: KLForm = "code"
    """flow-grpo/pref-grpo with flow-sde: code divides (mean - mean_ref)^2 by 2 s^2 as flow_grpo's
    training script does (the papers' beta assume it); paper by the step's full variance 2 s^2 dt"""
    advantages: AdvantageKind = "per-prompt"
    """per-prompt (DDPO's stat tracking), batch, or group (GRPO: the images_per_prompt samples of a prompt)"""
    global_std: bool = True
    """group advantages divide by the batch's std (Flow-GRPO's default) instead of the group's
    (pref-grpo always uses its group's std, ddof 1, as its reference)"""
    filter_zero_std: bool = True
    """flow-grpo/pref-grpo: drop samples whose advantage is exactly 0 (groups whose rewards are all
    equal), KL term included, and re-batch the rest, as flow_grpo does"""
    ema_decay: float = 0.0
    """EMA of the trained weights (flow_grpo and DiffusionNFT: 0.9), used for evaluation, grids and
    the exported LoRA; the decay at update s is min((1 + s) / (10 + s), ema_decay); 0 disables it"""
    ema_update_interval: int = 1
    """optimizer steps between EMA updates (flow_grpo: 8, DiffusionNFT: 1)"""
    ema_per: EmaPer = "step"
    """when the EMA is checked: step (after each optimizer step, DiffusionNFT) or minibatch (after each
    training minibatch with the steps taken so far, flow_grpo's GRPO script: under gradient
    accumulation a step count that passes the interval test updates once per minibatch of its window)"""
    nonfinite: NonFinite = "stop"
    """a non-finite loss, gradient norm, weight or decoded image: stop (an error names it; the last
    checkpoint is kept), or skip the optimizer steps whose gradient is non-finite (counted in
    train/skipped_steps; non-finite weights or images still stop)"""
    buffer_size: int = 16
    """per-prompt FIFO length"""
    min_count: int = 16
    """rewards a prompt's buffer needs before its own statistics replace the batch's"""


@dataclass(frozen=True)
class DataConfig:
    pairs: str = ""
    """preference pairs for train.algorithm dpo: a JSONL of {prompt, chosen, rejected} image paths
    (`ddrl reward-pairs` writes PAIRS/train.jsonl), a parquet/arrow file or folder, or a datasets
    hub id, in Pick-a-Pic v2's columns"""
    split: str = "train"
    """the dataset split (hub datasets and save_to_disk folders)"""
    caption_column: str = "caption"
    image_0_column: str = "jpg_0"
    image_1_column: str = "jpg_1"
    label_column: str = "label_0"
    """1: image 0 preferred, 0: image 1 preferred, 0.5: a tie (dropped, as the reference)"""
    max_pairs: int = 0
    """use the first N usable rows (0: all)"""
    resolution: int = 0
    """image side in pixels, after resizing the shorter side and centre-cropping (0: the model's)"""
    hflip: bool = True
    """mirror each image at random, as the reference (off for prompts that say left or right)"""
    empty_prompt_fraction: float = 0.2
    """pairs trained with the empty prompt (the reference: 0.2)"""
    pairs_per_epoch: int = 0
    """pairs per epoch, all processes together (0: one pass over the data, rounded down to whole steps)"""
    skip_bad_rows: bool = False
    """skip rows with missing or undecodable images or bad labels, and count them, instead of stopping"""
    cache_dir: str = ""
    """where VAE latents are cached (empty: $DDRL_CACHE/pair-latents or ~/.cache/ddrl/pair-latents)"""


@dataclass(frozen=True)
class RewardConfig:
    name: str = "shapes-verifier"
    """a registered reward (`ddrl rewards list`)"""
    pairwise: str = ""
    """pref-grpo: a reward that compares two images (e.g. vlm-judge), whose win rates within each
    group replace the comparison of `name`'s scores; `name` is still scored and logged"""
    asynchronous: bool = True
    """score a batch in a thread while the next batch samples"""


@dataclass(frozen=True)
class EvalConfig:
    num_steps: int = 0
    """sampling steps of the evaluation and grids (ODE or eta 0); 0: sample.num_steps"""
    images_per_prompt: int = 2
    """images per held-out prompt in the before/after evaluation"""
    train_images_per_prompt: int = 1
    """images per training prompt in the before/after evaluation (0: held-out prompts only)"""
    max_prompts: int = 0
    """evaluate at most this many prompts of each split, spread over categories (0: all)"""
    grid_every: int = 5
    """epochs between fixed-seed sample grids (0: only before and after)"""
    grid_size: int = 16


@dataclass(frozen=True)
class RunConfig:
    epochs: int = 20
    seed: int = 0
    output_dir: str = ""
    """run directory; empty: runs/<preset>-<date>"""
    save_every: int = 1
    """epochs between checkpoints (the last epoch is always saved)"""
    keep_checkpoints: int = 2
    mixed_precision: MixedPrecision = "no"
    """no, fp16 or bf16: network passes under autocast, step math and log-probs in fp32 (accelerate)"""
    report_to: str = "tensorboard"
    """trackers besides metrics.jsonl, comma-separated: tensorboard, wandb, trackio, mlflow, or none"""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    options: Any = None
    """the chosen algorithm's own options (its `Options` dataclass), written under its section
    (nft, rwr, dpo, backprop, ...); None: its defaults. apply_overrides and load_config fill it"""

    # ---- derived sizes (per process unless named global) ----
    @property
    def samples_per_epoch(self) -> int:
        return self.sample.batch_size * self.sample.num_batches_per_epoch

    def global_samples_per_epoch(self, num_processes: int = 1) -> int:
        return self.samples_per_epoch * num_processes

    @property
    def minibatches_per_epoch(self) -> int:
        return self.samples_per_epoch // self.train.batch_size

    @property
    def optimizer_steps_per_epoch(self) -> int:
        return self.minibatches_per_epoch * self.train.num_inner_epochs // self.train.gradient_accumulation_steps

    @property
    def stochastic_steps(self) -> int:
        """steps of a rollout that have a log-prob (all of them for DDIM with eta > 0)"""
        s = self.sample
        if s.sampler == "ddim":
            return s.num_steps
        size = s.noise_window_size or s.num_steps - s.noise_window_start
        # CPS's last step (to sigma = 0) adds no noise: it is an ODE step
        return size - int(s.sampler == "flow-cps" and s.noise_window_start + size == s.num_steps)

    @property
    def eval_steps(self) -> int:
        return self.eval.num_steps or self.sample.num_steps

    @property
    def learning_rate(self) -> float:
        if self.train.learning_rate is not None:
            return self.train.learning_rate
        return DEFAULT_LR_LORA if self.model.lora else DEFAULT_LR_FULL

    def to_dict(self) -> dict:
        """The config as nested dicts: the sections, with the algorithm's options under theirs."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self) if f.name != "options"}
        if self.options is not None and dataclasses.fields(self.options):
            sections = list(out.items())
            sections.insert(4, (self.options.section, dataclasses.asdict(self.options)))  # after train
            out = dict(sections)
        return out


DEFAULT_LR_LORA = 3e-3
DEFAULT_LR_FULL = 1e-4


# ---------------------------------------------------------------- building from dicts and overrides

def _hint(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, typ) -> Any:
    """A value from YAML or the command line, converted to the field's type."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}"
                              f"{_hint(str(value), [str(a) for a in args])}")
        return value
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        typ = next(a for a in args if a is not type(None))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {value!r}") from None


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config) if f.name != "options"}


def _keys(sections: dict[str, type]) -> list[str]:
    return [f"{s}.{f.name}" for s, c in sections.items() for f in fields(c)]


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """`{"train.clip_range": 1e-4, "nft.beta": 2, ...}` (hyphens or underscores) applied to `cfg`.
    The sections' keys are applied first, then the chosen algorithm's options (a changed
    train.algorithm starts from its options' defaults). Old prefixed keys (train.nft_beta) are
    read under their new names."""
    sections = _sections()
    changes: dict[str, dict[str, Any]] = {}
    options: list[tuple[str, str, str, Any]] = []
    for raw_key, value in overrides.items():
        key = raw_key.replace("-", "_")
        key = RENAMED.get(key, key)
        section, _, name = key.partition(".")
        if section in sections and name:
            hints = typing.get_type_hints(sections[section])
            if name not in hints:
                raise ConfigError(f"unknown config key {raw_key!r}"
                                  f"{_hint(key, [f'{section}.{n}' for n in hints])}")
            changes.setdefault(section, {})[name] = _coerce(raw_key, value, hints[name])
        elif name and "." not in name:
            options.append((raw_key, section, name, value))
        else:
            raise ConfigError(f"unknown config key {raw_key!r}{_hint(key, _keys(sections))}")
    cfg = dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **c) for s, c in changes.items()})
    from .config_options import apply_options

    return apply_options(cfg, options)


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in nested.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    from .io import read_text

    try:
        data = yaml.safe_load(read_text(path, "config file"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, sample, train, ...)")
    return flatten(data)


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
