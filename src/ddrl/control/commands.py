"""`ddrl control train`, `ddrl control evaluate` and `ddrl control presets`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..cli_args import positive_int, seed_int


def _overrides(tokens: list[str]) -> dict[str, str]:
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if "=" in tok:
            k, v = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ValueError(f"{tok} needs a value")
            k, v = tok[2:], tokens[i + 1]
            i += 2
        out[k.replace("-", "_")] = v
    return out


def check_control_run(cfg, run_dir: Path, resume: bool, resume_override: bool) -> list[str]:
    """Every check before any work: the environment id, the policy folder and its fit to the
    environment and the chunk length, the run folder, the trackers, and on resume the config."""
    from ..io import check_writable_dir
    from ..run.resume import NAME, check_resume, read_run_config
    from ..run.trackers import preflight
    from .config import build
    from .envs import ControlError, check_env_id
    from .loop import policy_folder
    from .policies import load_policy

    obs_space, act_space = check_env_id(cfg.env.id)
    policy = load_policy(policy_folder(cfg.policy.path))
    if policy.horizon != cfg.env.horizon:
        raise ControlError(f"env.horizon {cfg.env.horizon}: the policy {cfg.policy.path} was trained with chunks of "
                           f"{policy.horizon} actions; set env.horizon {policy.horizon} or pretrain another policy")
    if (policy.obs_dim, policy.action_dim) != (obs_space.shape[0], act_space.shape[0]):
        raise ControlError(f"the policy {cfg.policy.path} maps {policy.obs_dim}-dim observations to {policy.action_dim}-dim "
                           f"actions, but {cfg.env.id} has {obs_space.shape[0]} and {act_space.shape[0]}")
    from .algorithms import REGISTRY

    needs = {"dppo": "ddpm", "reinflow": "flow", "fpo": "flow", "gaussian-ppo": "gaussian"}[cfg.run.algorithm] \
        if cfg.run.algorithm in ("dppo", "reinflow", "fpo", "gaussian-ppo") else None
    if needs and policy.kind != needs:
        raise ControlError(f"{cfg.run.algorithm} fine-tunes a {needs} policy; {cfg.policy.path} is {policy.kind}")
    if cfg.run.algorithm == "dppo" and cfg.options.ft_steps > policy.steps:
        raise ControlError(f"dppo.ft_steps {cfg.options.ft_steps} exceeds the policy's {policy.steps} denoising steps")
    _ = REGISTRY
    check_writable_dir(run_dir, "the run folder")
    preflight(cfg.run.report_to)
    if resume:
        if not (run_dir / NAME).exists():
            raise ValueError(f"{run_dir} holds no run to resume (no {NAME})")
        from .config import flat

        saved = read_run_config(run_dir, lambda v: [k for k in flat(cfg) if k not in v], build, resume_override)
        return check_resume(saved.to_dict(), cfg.to_dict(), resume_override,
                            safe=("run.iterations", "run.save_every", "run.keep_checkpoints", "run.output_dir",
                                  "run.name", "run.report_to"), length="run.iterations")
    if (run_dir / NAME).exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another "
                         "folder (--run.name)")
    return []


def cmd_train(args) -> None:
    from ..run.resume import read_run_config
    from .config import build, dump_yaml, flat, load

    overrides = _overrides(args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
        saved = read_run_config(run_dir, lambda v: [], build, allow_edited=True) if (run_dir / "config.yaml").is_file() else None
        if saved is None:
            raise ValueError(f"{run_dir} holds no control run to resume (no config.yaml)")
        cfg = build(flat(saved) | overrides)
        name = run_dir.name
    else:
        cfg, name = load(args.preset, overrides)
        run_dir = Path(cfg.run.output_dir) / (cfg.run.name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return
    changes = check_control_run(cfg, run_dir, bool(args.resume), args.resume_override)
    for line in changes:
        print(f"resume changes {line}")
    e = cfg.env
    print(f"{name}: {cfg.run.algorithm}, {cfg.run.iterations} iterations x {e.n_envs} envs x {e.n_steps} chunks of "
          f"{e.horizon} actions (up to {e.n_envs * e.n_steps * e.horizon} env steps per iteration); run folder {run_dir}")
    from .loop import ControlRun

    ControlRun(cfg, run_dir, progress=not args.no_progress).run(resume=bool(args.resume))


def cmd_evaluate(args) -> None:
    """Deterministic evaluation of a run's final weights (or a policy folder): success and return
    with standard errors over episodes and seeds, the trajectory picture and the route histogram."""
    import numpy as np

    from ..run.checkpoint import list_checkpoints
    from .episodes import policy_actor, run_episodes
    from .loop import ControlRun, policy_folder
    from .policies import load_policy
    from .report import plot_routes, plot_trajectories, route_frequencies

    target = Path(args.target)
    if (target / "config.yaml").is_file():
        from ..run.resume import read_run_config
        from .config import build

        cfg = read_run_config(target, lambda v: [], build, allow_edited=True)
        ckpts = list_checkpoints(target / "checkpoints")
        if not ckpts:
            raise ValueError(f"{target} has no checkpoint to evaluate")
        run = ControlRun(cfg, target, progress=False)
        run.load(ckpts[-1])
        env_id, horizon, policy = cfg.env.id, cfg.env.horizon, run.policy
        act = run.algo.evaluation_actor()

        def actor(obs, gen):
            return policy.to_env(act(policy.obs_norm(obs.float()), gen))
        base = load_policy(policy_folder(cfg.policy.path))
        out = Path(args.out or target / "evaluation")
        label = f"{target.name} at iteration {run.iteration}"
    else:
        policy = base = load_policy(policy_folder(args.target))
        env_id, horizon, actor = policy.config["env"], policy.horizon, policy_actor(policy)
        out = Path(args.out or "control-evaluation")
        label = args.target
    out.mkdir(parents=True, exist_ok=True)
    per_seed, all_stats, first = [], [], None
    for seed in args.seeds:
        stats = run_episodes(actor, env_id, horizon, args.episodes, seed, keep_paths=first is None)
        first = first or stats
        per_seed.append(float(np.mean(stats.successes)))
        all_stats.append(stats)
    successes = [s for st in all_stats for s in st.successes]
    returns = [x for st in all_stats for x in st.returns]
    routes = [x for st in all_stats for x in st.routes]
    n = len(successes)
    se = float(np.std(successes, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    ret_se = float(np.std(returns, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    result = {"target": label, "episodes": n, "seeds": args.seeds, "success": float(np.mean(successes)), "success_se": se,
              "success_per_seed": per_seed, "return": float(np.mean(returns)), "return_se": ret_se,
              "routes": route_frequencies(routes)}
    ev = {"successes": first.successes, "routes": first.routes, "paths": [p.tolist() for p in first.paths[:100]],
          "returns": first.returns}
    if base is not policy:
        b = run_episodes(policy_actor(base), env_id, horizon, args.episodes, args.seeds[0], keep_paths=True)
        before = {"successes": b.successes, "routes": b.routes, "paths": [p.tolist() for p in b.paths[:100]]}
        plot_trajectories(before, ev, out / "trajectories.png", titles=("base policy", "fine-tuned"))
        plot_routes(before, ev, out / "routes.png")
    else:
        plot_trajectories(ev, ev, out / "trajectories.png", titles=(label, label))
        plot_routes(ev, ev, out / "routes.png")
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    print(f"{label}: success {result['success']:.3f} ± {se:.3f}, return {result['return']:.3f} ± {ret_se:.3f} "
          f"({n} episodes, seeds {', '.join(map(str, args.seeds))}); routes "
          + ", ".join(f"{k} {v:.0%}" for k, v in result["routes"].items()) + f"; pictures in {out}")


def cmd_presets(args) -> None:
    from .config import PRESET_DOCS

    for name, doc in PRESET_DOCS.items():
        print(f"{name:<26} {doc}")


def add_run_commands(csub) -> None:
    t = csub.add_parser("train", help="fine-tune a control policy with DPPO, ReinFlow, FPO or Gaussian PPO",
                        description="Train a control preset or YAML config; override any key with --section.key VALUE "
                                    "(e.g. --ppo.actor-lr 1e-4 --run.iterations 80).")
    t.add_argument("preset", nargs="?", default=None, help="a preset (ddrl control presets) or a YAML file "
                                                           "(default: routes-dppo)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--resume-override", action="store_true", help="resume even with changed settings")
    t.add_argument("--print-config", action="store_true", help="print the full config as YAML and exit")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train, overrides=[])

    e = csub.add_parser("evaluate", help="deterministic evaluation of a control run or policy folder")
    e.add_argument("target", help="a run folder, a policy folder, or a shipped policy (routes-ddpm, ...)")
    e.add_argument("--episodes", type=positive_int, default=200, help="episodes per seed (default: 200)")
    e.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2], help="evaluation seeds (default: 0 1 2)")
    e.add_argument("--out", help="folder for evaluation.json and the pictures")
    e.set_defaults(func=cmd_evaluate)

    p = csub.add_parser("presets", help="list the control presets")
    p.set_defaults(func=cmd_presets)
