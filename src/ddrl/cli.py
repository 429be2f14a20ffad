"""The `ddrl` command line."""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

from .bounds import GUIDANCE_RULE
from .cli_args import guidance_float, non_negative_float, positive_int, seed_int, unit_float
from .io import atomic_write, check_writable_dir, check_writable_file, read_text
from .models.loading import BUILTIN

SPLITS = ("train", "heldout", "all")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes-sd",
                   help=f"built-in model {sorted(BUILTIN)}, a diffusers folder or a hub id (default: shapes-sd)")
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--guidance", type=guidance_float, default=5.0,
                   help=f"classifier-free guidance scale: {GUIDANCE_RULE} (default: 5.0)")
    p.add_argument("--eta", type=unit_float, default=0.0,
                   help="DDIM stochasticity for epsilon models, in [0, 1] (default: 0, deterministic)")
    p.add_argument("--seed", type=seed_int, default=0, help="base seed; image i uses seed + i (default: 0)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default: 64)")


def _read_prompts(args) -> list[str]:
    """Prompts from --prompt, --prompt-file, or the world's split (validated before any model load)."""
    if args.prompt and args.prompt_file:
        raise ValueError("give --prompt or --prompt-file, not both")
    if args.prompt:
        prompts = [p.strip() for p in args.prompt]
    elif args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise ValueError(f"prompt file {path} does not exist")
        prompts = [line.strip() for line in read_text(path, "prompt file").splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompt file {path} is empty; expected one prompt per line")
    else:
        from .worlds.shapes import CATEGORIES, category_of, split

        # Round-robin over the categories, so that a small grid shows all six.
        rng = random.Random(args.seed)
        pools = [rng.sample(q, len(q)) for c in CATEGORIES
                 if (q := [p for p in split(args.split) if category_of(p) == c])]
        order = [p for group in itertools.zip_longest(*pools) for p in group if p is not None]
        prompts = order[:args.num_prompts]
    if any(not p for p in prompts):
        raise ValueError("empty prompt given; every prompt needs at least one word")
    return prompts


def _print_summary(summary: dict) -> None:
    for k, v in summary.items():
        if k.startswith("accuracy/"):
            print(f"  {k[9:]:<14} {v:.3f}")
    if "accuracy" in summary:
        print(f"  {'overall':<14} {summary['accuracy']:.3f}   partial-credit score {summary['score']:.3f}"
              f"   ({summary['n']} images)")


def cmd_sample(args) -> None:
    from .evaluate import score_images
    from .generate import generate
    from .grid import image_grid
    from .models import load_policy
    from .models.prompt_length import check_prompts

    prompts = _read_prompts(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png path, got {out}")
    check_writable_file(out, "--out")
    check_writable_file(out.with_suffix(".json"), "the scores file of --out")
    all_prompts = [p for p in prompts for _ in range(args.per_prompt)]
    seeds = [args.seed + i for i in range(len(all_prompts))]
    policy = load_policy(args.model)
    check_prompts(policy, prompts, "--prompt-file" if args.prompt_file else "--prompt")
    t0 = time.time()
    images = generate(policy, all_prompts, seeds, num_steps=args.steps, guidance_scale=args.guidance,
                      eta=args.eta, batch_size=args.batch_size)
    seconds = time.time() - t0
    ev = score_images(images, all_prompts)
    captions = [p if s is None else f"{p} [{s:.2f}]" for p, s in zip(all_prompts, ev.scores)]
    grid = image_grid(images, captions, correct=ev.correct, columns=args.columns)
    summary = ev.summary()
    record = {"model": args.model, "steps": args.steps, "guidance": args.guidance, "eta": args.eta,
              "seconds": round(seconds, 2), "summary": summary,
              "samples": [{"prompt": p, "seed": s, "correct": c, "score": sc}
                          for p, s, c, sc in zip(all_prompts, seeds, ev.correct, ev.scores)]}
    atomic_write(out, lambda t: grid.save(t, format="PNG"))
    atomic_write(out.with_suffix(".json"), lambda t: t.write_text(json.dumps(record, indent=2)))
    print(f"{len(images)} images in {seconds:.1f} s -> {out} (scores in {out.with_suffix('.json')})")
    _print_summary(summary)


def cmd_evaluate(args) -> None:
    from .evaluate import score_images
    from .generate import generate
    from .models import load_policy
    from .worlds.shapes import split

    if args.json:
        check_writable_file(args.json, "--json")
    prompts = [p for p in split(args.split) for _ in range(args.per_prompt)]
    seeds = [args.seed + i for i in range(len(prompts))]
    policy = load_policy(args.model)
    images = generate(policy, prompts, seeds, num_steps=args.steps, guidance_scale=args.guidance,
                      eta=args.eta, batch_size=args.batch_size)
    summary = score_images(images, prompts).summary()
    print(f"{args.model} on the {args.split} split ({len(prompts)} images, {args.steps} steps, "
          f"guidance {args.guidance}):")
    _print_summary(summary)
    if args.json:
        atomic_write(Path(args.json), lambda t: t.write_text(json.dumps(summary, indent=2)))


# Each stage as the shipped models were trained (see their model cards): learning rate, batch,
# and the number of steps the time budget allowed on a 2-core CPU.
PRETRAIN_DEFAULTS = {
    "vae": {"steps": 2035, "lr": 1e-3, "batch_size": 32},
    "shapes-sd": {"steps": 5000, "lr": 1e-3, "batch_size": 64},
    "shapes-flow": {"steps": 8000, "lr": 1e-3, "batch_size": 64},
}


def cmd_pretrain(args) -> None:
    from .pretrain.train import PretrainConfig, export_checkpoint, pretrain

    work = check_writable_dir(args.work_dir, "--work-dir")
    if args.out:
        check_writable_dir(args.out, "--out")
    models = ("vae", "shapes-sd", "shapes-flow") if args.model == "all" else (args.model,)
    if args.export_only:
        if args.model == "vae":
            raise ValueError("--export-only applies to shapes-sd and shapes-flow, not the VAE stage")
        models = tuple(m for m in models if m != "vae")
    for m in models:
        out = None if m == "vae" else Path(args.out or work / "export") / m
        d = PRETRAIN_DEFAULTS[m]
        cfg = PretrainConfig(model=m, work_dir=work, out=out, steps=args.steps or d["steps"],
                             minutes=args.minutes if args.minutes is not None else float("inf"),
                             lr=d["lr"], batch_size=d["batch_size"], seed=args.seed,
                             threads=args.threads)
        if args.export_only:
            export_checkpoint(cfg)
        else:
            pretrain(cfg)
        if out:
            print(f"{m} exported to {out}")


def _parse_overrides(tokens: list[str]) -> dict[str, str]:
    """`--train.clip-range 1e-4` or `--train.clip-range=1e-4` pairs."""
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok:
            raise ValueError(f"unexpected argument {tok!r}; config overrides look like --train.learning-rate 1e-4")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise ValueError(f"{tok} needs a value")
            value = tokens[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def _config_from_args(args, overrides: dict[str, str]):
    from .config import apply_overrides, load_yaml
    from .presets import DEFAULT_PRESET, preset_config

    source = args.preset or DEFAULT_PRESET
    if source.endswith((".yaml", ".yml")):
        if not Path(source).is_file():
            raise ValueError(f"config file {source} does not exist")
        from .config import Config

        cfg, name = apply_overrides(Config(), load_yaml(source)), Path(source).stem
    else:
        cfg, name = preset_config(source), source
    return apply_overrides(cfg, overrides), name


def _resume_config(args, overrides: dict[str, str]):
    """The run folder's verified config with the overrides applied (or the preset/config given
    again); `check_run` then refuses changes a resumed run cannot take (ddrl.run.resume)."""
    import dataclasses

    from .config import apply_overrides
    from .config_run import read_run_config

    run_dir = Path(args.resume)
    saved = read_run_config(run_dir, allow_edited=args.resume_override)
    given = _config_from_args(args, overrides)[0] if args.preset else apply_overrides(saved, overrides)
    given = dataclasses.replace(given, run=dataclasses.replace(given.run, output_dir=str(run_dir)))
    return given, run_dir


def _print_sizes(cfg, name: str, run_dir: Path) -> None:
    import os as _os

    from .algorithms import algorithm_class

    procs = int(_os.environ.get("WORLD_SIZE", "1"))
    t = cfg.train
    m = cfg.model
    size = f"{m.resolution} px" if m.resolution else "the model's default size"
    tokens = f", {m.max_sequence_length} T5 tokens" if m.max_sequence_length else ""
    print(f"ddrl train {name}: {t.algorithm} on {m.name} ({'LoRA r=' + str(m.lora_rank) if m.lora else 'full fine-tuning'}, "
          f"lr {cfg.learning_rate:g}), reward {cfg.reward.name}")
    print(f"  images: {size}{tokens}")
    print(f"  per epoch: {algorithm_class(t.algorithm).describe(cfg, procs)}; {cfg.run.epochs} epochs")
    print(f"  run folder: {run_dir}")


def cmd_train(args) -> int:
    from .images import check_run, run_images

    overrides = _parse_overrides(args.overrides)
    if args.resume_override and not args.resume:
        raise ValueError("--resume-override goes with --resume RUN_DIR")
    if args.print_config:
        cfg, _ = _resume_config(args, overrides) if args.resume else _config_from_args(args, overrides)
        from .config_checks import validate

        from .config_print import commented_yaml

        validate(cfg)
        print(commented_yaml(cfg))
        return 0
    if args.resume:
        cfg, run_dir = _resume_config(args, overrides)
        name = run_dir.name
    else:
        cfg, name = _config_from_args(args, overrides)
        run_dir = Path(cfg.run.output_dir or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        from .config import apply_overrides

        cfg = apply_overrides(cfg, {"run.output_dir": str(run_dir)})
    changes = check_run(cfg, run_dir, resume=bool(args.resume), resume_override=args.resume_override)
    _print_sizes(cfg, name, run_dir)
    for change in changes:
        print(f"resume {run_dir}: {change}")
    if not run_images(cfg, run_dir, resume=bool(args.resume)):
        return 130  # stopped by Ctrl-C after saving: scripts can tell the run did not finish
    return 0


def cmd_presets(args) -> None:
    from .presets import DEFAULT_PRESET, PRESETS

    for name, p in PRESETS.items():
        print(f"{name}{' (default)' if name == DEFAULT_PRESET else ''}\n    {p.description}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddrl", description="ddrl: reinforcement learning for "
                                     "diffusion and flow-matching models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate an image grid with verifier scores",
                       description="Generate images and save a captioned grid PNG (green caption: "
                       "the shapes verifier says correct) plus a JSON of scores.")
    _add_generation_args(p)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line")
    p.add_argument("--split", choices=SPLITS, default="heldout",
                   help="shapes-world prompt split to draw from when no prompt is given (default: heldout)")
    p.add_argument("--num-prompts", type=positive_int, default=16, help="prompts drawn from the split (default: 16)")
    p.add_argument("--per-prompt", type=positive_int, default=1, help="images per prompt (default: 1)")
    p.add_argument("--columns", type=positive_int, default=8, help="grid columns (default: 8)")
    p.add_argument("--out", default="outputs/sample.png", help="grid PNG path (default: outputs/sample.png)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="verifier accuracy per GenEval category on a prompt split",
                       description="Sample every prompt of a split and report the verifier's accuracy "
                       "per category.")
    _add_generation_args(p)
    p.add_argument("--split", choices=SPLITS, default="heldout", help="prompt split (default: heldout)")
    p.add_argument("--per-prompt", type=positive_int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--json", help="also write the summary to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pretrain", help="train a built-in base model from scratch",
                       description="Render the shapes-world data, train the VAE, then the denoiser; "
                       "each stage is checkpointed and resumes when run again.")
    p.add_argument("model", choices=("vae", "shapes-sd", "shapes-flow", "all"))
    p.add_argument("--work-dir", default="runs/pretrain", help="data and checkpoints (default: runs/pretrain)")
    p.add_argument("--out", help="folder to export diffusers models into (default: WORK_DIR/export)")
    p.add_argument("--steps", type=positive_int,
                   help="optimizer steps (default: as the shipped models; see their model cards)")
    p.add_argument("--minutes", type=non_negative_float,
                   help="stop the stage after this much training time in all (default: no limit)")
    p.add_argument("--export-only", action="store_true",
                   help="export, evaluate and card the latest checkpoint without training")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_pretrain)

    from .algorithms import ALGORITHMS

    kinds = {"epsilon": "diffusion models", "velocity": "flow-matching models", None: "either kind"}
    listed = "; ".join(f"for {kinds[k]}: {', '.join(n for n, a in ALGORITHMS.items() if a.prediction == k)}"
                       for k in ("epsilon", "velocity", None) if any(a.prediction == k for a in ALGORITHMS.values()))
    p = sub.add_parser("train", help="fine-tune a model with RL against a reward",
                       description=f"Fine-tune a model against a reward with train.algorithm {listed}. With no "
                       "arguments: Pref-GRPO fine-tuning the built-in shapes-flow model with the shapes verifier "
                       "reward (2 to 4 minutes on a 2-core CPU). Any config key can be overridden: "
                       "--train.learning-rate 3e-4, --nft.beta 2; --print-config shows them all. "
                       "`ddrl presets` lists the presets.")
    p.add_argument("preset", nargs="?", help="a preset name or a config.yaml (default: shapes-quick)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder from its last checkpoint "
                   "(with more --run.epochs, or another checkpoint or grid cadence)")
    p.add_argument("--resume-override", action="store_true",
                   help="let --resume change any setting, or take a config.yaml edited by hand")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (preset, file or run folder, with the overrides) as YAML, each "
                   "key with its doc and range, and exit; save it, edit it and pass it back as the preset")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the training presets")
    p.set_defaults(func=cmd_presets)

    from .cli_rewards import add_reward_commands

    add_reward_commands(sub)
    from .control.cli import add_control_commands

    add_control_commands(sub)
    return parser


def quiet_libraries() -> None:
    """Keep the terminal for ddrl's own progress: no per-component loading bars or notices."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # see ddrl/__init__.py
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    head = 2 if argv[:2] == ["control", "train"] else 1
    if argv[:1] == ["train"] or head == 2:
        # Overrides (--section.key value) are free-form, so they are split off before argparse
        # sees the rest; otherwise a value could be taken for the positional preset.
        known, overrides, i = [], [], head
        while i < len(argv):
            tok = argv[i]
            if tok.startswith("--") and "." in tok.split("=")[0]:
                take = 1 if "=" in tok else 2
                overrides += argv[i:i + take]
                i += take
            else:
                known.append(tok)
                i += 1
        args = parser.parse_args([*argv[:head], *known])
        args.overrides = overrides
    else:
        args = parser.parse_args(argv)
    quiet_libraries()
    from safetensors import SafetensorError

    try:
        return args.func(args) or 0
    except ValueError as e:  # ConfigError, ModelError, RewardError, NonFiniteError are ValueErrors
        print(f"ddrl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ddrl {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except SafetensorError as e:  # safetensors reports I/O failures (a full disk) as its own error type
        action = "write" if "serializ" in str(e) else "read"
        print(f"ddrl {args.command}: error: safetensors could not {action} a weights file ({e})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C; the last checkpoint of a training run is intact
        print(f"ddrl {args.command}: interrupted", file=sys.stderr)
        return 130


def os_error_message(e: OSError) -> str:
    """One line for a file-system error: what failed, on which path, and what to do."""
    import errno

    fixes = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space (quota exceeded)",
             errno.EACCES: "check the permissions of the path or choose another",
             errno.EPERM: "check the permissions of the path or choose another",
             errno.EROFS: "the file system is read-only: choose a writable path",
             errno.ENOENT: "check that the path exists", errno.EISDIR: "give a file path, not a folder",
             errno.ENOTDIR: "a parent of the path is a file, not a folder", errno.EFBIG: "the file is too large"}
    if e.strerror is None:  # raised with a message of its own (e.g. CheckpointWriteError)
        return str(e)
    where = f" ({e.filename})" if e.filename else ""
    fix = fixes.get(e.errno)
    return f"{e.strerror}{where}" + (f": {fix}" if fix else "")


if __name__ == "__main__":
    sys.exit(main())
