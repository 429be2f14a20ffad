"""Pretraining of the built-in models: `ddrl pretrain {vae,shapes-sd,shapes-flow}`.

Stages share one work directory:
  data.safetensors   rendered images (uint8) and prompts, made once
  vae/               the AutoencoderKL, trained with an L1 + tiny KL loss
  latents.safetensors the VAE posterior (mean, std) of every image, and the latent statistics
  shapes-sd/ shapes-flow/  denoiser training state, checkpointed atomically and resumable

shapes-sd learns epsilon-prediction under Stable Diffusion's scaled-linear DDPM schedule
(Ho et al. 2020, eq. 14); shapes-flow learns the rectified-flow velocity x_1 - x_0 with
logit-normal time sampling (Esser et al. 2024, SD3 section 3.1). Both train their text encoders
jointly and drop the prompt 10% of the time (to the empty prompt) for classifier-free guidance;
the exported weights are an exponential moving average.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..sampling import diffusion_noised, flow_noised
from . import components as C
from .data import render_dataset

MODELS = ("vae", "shapes-sd", "shapes-flow")


@dataclass(frozen=True)
class PretrainConfig:
    model: str
    """one of vae, shapes-sd, shapes-flow"""
    work_dir: Path
    """where data, checkpoints and intermediate stages live"""
    out: Path | None = None
    """diffusers folder to export the finished model to"""
    steps: int = 5000
    """optimizer steps in all (a resumed stage continues to this count)"""
    minutes: float = float("inf")
    """stop once the stage has trained this long in all, minutes (then resume to continue)"""
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    """probability of training on the empty prompt (for classifier-free guidance)"""
    num_images: int = 40000
    seed: int = 0
    checkpoint_every: int = 250
    threads: int | None = None
    """torch threads; None keeps torch's default"""


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def prepare_data(cfg: PretrainConfig) -> tuple[torch.Tensor, list[str]]:
    path = cfg.work_dir / "data.safetensors"
    if not path.exists():
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        images, prompts = render_dataset(cfg.num_images, cfg.seed)
        _atomic_save({"images": images}, path, {"prompts": json.dumps(prompts)})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
    return load_file(str(path))["images"], prompts


def _to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1.0


def _save_state(path: Path, modules: dict, ema: dict, opt, step: int, gen: torch.Generator) -> None:
    # named_parameters() skips tied copies (T5's shared / embed_tokens), which safetensors refuses.
    state = {f"model.{n}.{k}": v.detach() for n, m in modules.items()
             for k, v in m.named_parameters()}
    state |= {f"ema.{k}": v for k, v in ema.items()}
    osd = opt.state_dict()
    for i, s in osd["state"].items():
        for k, v in s.items():
            state[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    state["rng"] = gen.get_state()
    meta = {"step": str(step), "param_groups": json.dumps(osd["param_groups"])}
    _atomic_save(state, path, meta)


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint, or a one-line error naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        return load_file(str(path)), meta
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                         "delete it to restart this stage") from e


def _load_state(path: Path, modules: dict, ema: dict, opt, gen: torch.Generator) -> int:
    state, meta = _read_checkpoint(path)
    for n, m in modules.items():
        result = m.load_state_dict({k[len(f"model.{n}."):]: v for k, v in state.items()
                                    if k.startswith(f"model.{n}.")}, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{path}: unexpected weights for {n}: {result.unexpected_keys[:3]}")
    for k in ema:
        ema[k].copy_(state[f"ema.{k}"])
    opt_state: dict = {}
    for k, v in state.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    gen.set_state(state["rng"])
    return int(meta["step"])


def _loop(cfg: PretrainConfig, stage_dir: Path, modules: dict, loss_fn, desc: str) -> dict:
    """Shared optimisation loop: AdamW, EMA, atomic resumable checkpoints, time budget.
    Returns the EMA parameters by name."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    params = {f"{n}.{k}": p for n, m in modules.items() for k, p in m.named_parameters()
              if p.requires_grad}
    ema = {k: p.detach().clone() for k, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = stage_dir / "state.safetensors"
    step = _load_state(ckpt, modules, ema, opt, gen) if ckpt.exists() else 0
    info_path = stage_dir / "progress.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"seconds": 0.0, "losses": []}
    info["config"] = _config_record(cfg)
    start, start_seconds = time.time(), info["seconds"]
    bar = tqdm(total=cfg.steps, initial=step, desc=desc)
    running = None
    while step < cfg.steps and (time.time() - start + start_seconds) < cfg.minutes * 60:
        loss = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        for g in opt.param_groups:  # linear warm-up over the first 200 steps
            g["lr"] = cfg.lr * min(1.0, (step + 1) / 200)
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, p in params.items():
                ema[k].lerp_(p.detach(), 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            info["seconds"] = start_seconds + time.time() - start
            info["losses"].append([step, running])
            info["step"] = step
            _save_state(ckpt, modules, ema, opt, step, gen)
            _write_json(info_path, info)
    bar.close()
    info["seconds"] = start_seconds + time.time() - start
    info["step"] = step
    _save_state(ckpt, modules, ema, opt, step, gen)
    _write_json(info_path, info)
    return ema


def _load_ema_into(modules: dict, ema: dict) -> None:
    for n, m in modules.items():
        for k, p in m.named_parameters():
            if f"{n}.{k}" in ema:
                p.data.copy_(ema[f"{n}.{k}"])


# ---------------------------------------------------------------- VAE


def train_vae(cfg: PretrainConfig) -> None:
    images, _ = prepare_data(cfg)
    vae = C.make_vae(cfg.seed)
    stage = cfg.work_dir / "vae"

    def loss_fn(gen):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        x = _to_unit(images[idx])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        return F.l1_loss(recon, x) + 1e-6 * post.kl().mean()

    ema = _loop(cfg, stage, {"vae": vae}, loss_fn, "vae")
    _load_ema_into({"vae": vae}, ema)
    vae.save_pretrained(stage / "model")
    encode_latents(cfg, vae, images)


@torch.no_grad()
def encode_latents(cfg: PretrainConfig, vae, images: torch.Tensor) -> None:
    means, stds = [], []
    for i in tqdm(range(0, len(images), 256), desc="encode"):
        post = vae.encode(_to_unit(images[i:i + 256])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    # Normalise latents to unit variance (Rombach et al. 2022, sec. 4.3.2): SD divides by
    # scaling_factor only, SD3 subtracts shift_factor first.
    stats = {"shift_factor": mean.mean().item(),
             "scaling_factor_sd": 1.0 / mean.std().item(),
             "scaling_factor_flow": 1.0 / (mean - mean.mean()).std().item()}
    _atomic_save({"mean": mean, "std": std}, cfg.work_dir / "latents.safetensors",
                 {k: str(v) for k, v in stats.items()})


def _load_latents(cfg: PretrainConfig):
    from safetensors import safe_open

    path = cfg.work_dir / "latents.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `ddrl pretrain vae --work-dir {cfg.work_dir}` first")
    with safe_open(str(path), "pt") as f:
        stats = {k: float(v) for k, v in f.metadata().items()}
    t = load_file(str(path))
    return t["mean"], t["std"], stats


def _load_vae(cfg: PretrainConfig, scaling_factor: float, shift_factor: float | None):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(cfg.work_dir / "vae" / "model")
    vae.register_to_config(scaling_factor=scaling_factor, shift_factor=shift_factor)
    return vae


# ---------------------------------------------------------------- denoisers


def _drop(prompts: list[str], p: float, gen: torch.Generator) -> list[str]:
    keep = torch.rand(len(prompts), generator=gen) >= p
    return [q if k else "" for q, k in zip(prompts, keep.tolist())]


def _export(pipe, out: Path, card: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        if (tmp / name).is_dir():
            C.write_clip_vocab_files(tmp / name)
    (tmp / "ddrl.json").write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    from .card import evaluate_and_write_card

    results = evaluate_and_write_card(out)
    print(f"exported {out}: held-out accuracy {results['heldout']['accuracy']:.3f}, "
          f"train accuracy {results['train']['accuracy']:.3f}")


def _build_sd(cfg: PretrainConfig):
    """shapes-sd: (pipeline, trainable modules by name, loss function of a generator)."""
    from diffusers import StableDiffusionPipeline

    _, prompts = prepare_data(cfg)
    mean, std, stats = _load_latents(cfg)
    tok = C.make_clip_tokenizer()
    text_encoder = C.make_clip_text_model(tok, hidden=64, seed=cfg.seed)
    unet = C.make_unet(cross_attention_dim=64, seed=cfg.seed)
    sched = C.make_ddim_scheduler()
    pipe = StableDiffusionPipeline(
        vae=_load_vae(cfg, stats["scaling_factor_sd"], None), text_encoder=text_encoder,
        tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    alpha_bar = sched.alphas_cumprod  # (1000,)
    sf = stats["scaling_factor_sd"]

    def loss_fn(gen):
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=gen)
        x_0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
        eps = torch.randn(x_0.shape, generator=gen)
        t = torch.randint(0, len(alpha_bar), (len(idx),), generator=gen)
        x_t = diffusion_noised(x_0, alpha_bar[t], eps)
        cond, _ = pipe.encode_prompt(_drop([prompts[i] for i in idx], cfg.cond_dropout, gen),
                                     "cpu", 1, False)
        return F.mse_loss(unet(x_t, t, cond).sample, eps)

    return pipe, {"unet": unet, "text_encoder": text_encoder}, loss_fn


def _build_flow(cfg: PretrainConfig):
    """shapes-flow: (pipeline, trainable modules by name, loss function of a generator)."""
    from diffusers import StableDiffusion3Pipeline

    _, prompts = prepare_data(cfg)
    mean, std, stats = _load_latents(cfg)
    tok, tok3 = C.make_clip_tokenizer(), C.make_t5_tokenizer()
    te1 = C.make_clip_text_model(tok, hidden=32, projection=32, seed=cfg.seed)
    te2 = C.make_clip_text_model(tok, hidden=32, projection=32, seed=cfg.seed + 1)
    te3 = C.make_t5_text_model(tok3, d_model=64, seed=cfg.seed)
    # joint_attention_dim = T5 width; pooled = concatenated CLIP projections (SD3's layout).
    transformer = C.make_sd3_transformer(joint_attention_dim=64, pooled_projection_dim=64, seed=cfg.seed)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=C.make_flow_scheduler(),
        vae=_load_vae(cfg, stats["scaling_factor_flow"], stats["shift_factor"]),
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok,
        text_encoder_3=te3, tokenizer_3=tok3)
    sf, shift = stats["scaling_factor_flow"], stats["shift_factor"]

    def loss_fn(gen):
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=gen)
        x_0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen) - shift) * sf
        x_1 = torch.randn(x_0.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(len(idx), generator=gen))  # logit-normal(0, 1)
        x_t = flow_noised(x_0, sigma, x_1)
        batch = _drop([prompts[i] for i in idx], cfg.cond_dropout, gen)
        pe, _, pooled, _ = pipe.encode_prompt(batch, batch, batch, do_classifier_free_guidance=False,
                                              max_sequence_length=C.TEXT_MAX_LENGTH)
        v = transformer(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=pe,
                        pooled_projections=pooled).sample
        return F.mse_loss(v, x_1 - x_0)

    modules = {"transformer": transformer, "text_encoder": te1, "text_encoder_2": te2,
               "text_encoder_3": te3}
    return pipe, modules, loss_fn


_DENOISERS = {"shapes-sd": (_build_sd, "epsilon"), "shapes-flow": (_build_flow, "velocity")}


def train_denoiser(cfg: PretrainConfig) -> None:
    build, prediction = _DENOISERS[cfg.model]
    pipe, modules, loss_fn = build(cfg)
    ema = _loop(cfg, cfg.work_dir / cfg.model, modules, loss_fn, cfg.model)
    _load_ema_into(modules, ema)
    if cfg.out:
        _export(pipe, cfg.out, _card(cfg, cfg.model, prediction))


def export_checkpoint(cfg: PretrainConfig) -> None:
    """Export the EMA weights of the latest checkpoint of a denoiser stage (for example of a
    run still in progress), evaluate them and write the model card, without training."""
    build, prediction = _DENOISERS[cfg.model]
    ckpt = cfg.work_dir / cfg.model / "state.safetensors"
    if not ckpt.exists():
        raise FileNotFoundError(f"no checkpoint at {ckpt}; run `ddrl pretrain {cfg.model}` first")
    if cfg.out is None:
        raise ValueError("export needs an output folder")
    pipe, modules, _ = build(cfg)
    state, _ = _read_checkpoint(ckpt)
    _load_ema_into(modules, {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")})
    _export(pipe, cfg.out, _card(cfg, cfg.model, prediction))


def _card(cfg: PretrainConfig, name: str, prediction: str) -> dict:
    progress = json.loads((cfg.work_dir / name / "progress.json").read_text())
    vae_progress = json.loads((cfg.work_dir / "vae" / "progress.json").read_text())
    return {"name": name, "prediction": prediction, "image_size": C.IMAGE_SIZE,
            "latent_size": C.LATENT_SIZE, "max_sequence_length": C.TEXT_MAX_LENGTH,
            "world": "shapes", "steps": progress["step"],
            "train_seconds": round(progress["seconds"]),
            "vae_steps": vae_progress["step"], "vae_train_seconds": round(vae_progress["seconds"]),
            "config": progress.get("config") or _config_record(cfg)}


def _config_record(cfg: PretrainConfig) -> dict:
    return {k: str(v) for k, v in asdict(cfg).items() if k not in ("out", "work_dir")}


def pretrain(cfg: PretrainConfig) -> None:
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; expected one of {MODELS}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.model == "vae":
        train_vae(cfg)
    else:
        train_denoiser(cfg)
