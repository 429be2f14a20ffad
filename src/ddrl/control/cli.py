"""`ddrl control ...`: make demonstrations, pretrain policies, train, evaluate."""

from __future__ import annotations

from pathlib import Path

from ..cli_args import non_negative_float, positive_int, seed_int

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "control"
DEMOS = ASSETS / "routes-demos.safetensors"
DEMO_DEFAULTS = dict(episodes=300, seed=0, noise=0.6)
PRETRAIN_DEFAULTS = dict(epochs=15, seed=0)
STEPS = {"ddpm": 20, "flow": 4, "gaussian": 1}  # DPPO's 20 DDPM steps; ReinFlow's 4 Euler steps


def cmd_demos(args) -> None:
    from ..io import check_writable_file
    from .demos import make_demos, save_demos

    out = Path(args.out)
    check_writable_file(out, "--out")
    demos = make_demos(args.episodes, args.seed, noise=args.noise)
    save_demos(demos, out)
    s = demos.meta["successes"]
    routes = demos.meta["routes"]
    print(f"wrote {out}: {len(s)} episodes, {len(demos.obs)} steps, success {sum(s) / len(s):.1%}, routes "
          + ", ".join(f"{r} {routes.count(r)}" for r in ("wide", "narrow", "crash")))


def cmd_pretrain(args) -> None:
    from .demos import load_demos
    from .envs import check_env_id
    from .pretrain import behaviour_clone, model_card, success_rate, write_policy

    obs_space, act_space = check_env_id("ddrl/Routes-v0")
    demos = load_demos(args.demos, obs_space.shape[0], act_space.shape[0])
    kinds = ("ddpm", "flow", "gaussian") if args.kind == "all" else (args.kind,)
    for kind in kinds:
        policy = behaviour_clone(demos, kind, horizon=args.horizon, epochs=args.epochs, seed=args.seed,
                                 steps=STEPS[kind])
        success, se, summary = success_rate(policy, args.eval_episodes, seed=10_000)
        command = (f"ddrl control pretrain {kind} --demos {args.demos} --epochs {args.epochs} --seed {args.seed} "
                   f"--horizon {args.horizon}")
        out = Path(args.out) / f"routes-{kind}"
        write_policy(policy, out, model_card(policy, demos, summary, args.epochs, args.seed, command))
        print(f"wrote {out}: BC success {success:.1%} ± {se:.1%} over {args.eval_episodes} episodes")


def add_control_commands(sub) -> None:
    p = sub.add_parser("control", help="diffusion and flow policies for control: demos, pretrain, train, evaluate")
    csub = p.add_subparsers(dest="control_command", required=True)

    d = csub.add_parser("demos", help="scripted noisy demonstrations of the built-in 2-D world, ddrl/Routes-v0")
    d.add_argument("--out", default=str(DEMOS), help=f"demo file to write (default: the shipped {DEMOS.name})")
    d.add_argument("--episodes", type=positive_int, default=DEMO_DEFAULTS["episodes"], help="episodes (default: 300)")
    d.add_argument("--seed", type=seed_int, default=DEMO_DEFAULTS["seed"], help="seed (default: 0)")
    d.add_argument("--noise", type=non_negative_float, default=DEMO_DEFAULTS["noise"],
                   help="std of the controller's action noise (default: 0.6)")
    d.set_defaults(func=cmd_demos)

    q = csub.add_parser("pretrain", help="behaviour-clone the DDPM, flow and Gaussian policies of the 2-D world")
    q.add_argument("kind", choices=("ddpm", "flow", "gaussian", "all"), help="which policy")
    q.add_argument("--demos", default=str(DEMOS), help="demonstration file (default: the shipped one)")
    q.add_argument("--out", default=str(ASSETS), help="folder for routes-<kind>/ (default: the shipped assets)")
    q.add_argument("--epochs", type=positive_int, default=PRETRAIN_DEFAULTS["epochs"], help="BC epochs (default: 15)")
    q.add_argument("--horizon", type=positive_int, default=4, help="action chunk length Ta (default: 4)")
    q.add_argument("--seed", type=seed_int, default=PRETRAIN_DEFAULTS["seed"], help="seed (default: 0)")
    q.add_argument("--eval-episodes", type=positive_int, default=1000,
                   help="deterministic-evaluation episodes for the model card (default: 1000)")
    q.set_defaults(func=cmd_pretrain)

    from .commands import add_run_commands

    add_run_commands(csub)
