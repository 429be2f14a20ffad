"""The reward subcommands of `ddrl`: rewards list, reward-server, convert-open-clip,
reward-pairs and reward-train."""

from __future__ import annotations

import sys

from .cli_args import non_negative_float, optional_pair_count, pair_count, port_int, positive_float, positive_int, seed_int


def cmd_rewards(args) -> None:
    from .rewards import REWARDS, options_help

    for name, spec in REWARDS.items():
        extras = f"  [pip install ddrl[{spec.extras}]]" if spec.extras else ""
        print(f"{name}\n    {spec.description}\n    inputs: {spec.inputs}; options: {options_help(name)}{extras}")
    print("remote:URL\n    a `ddrl reward-server` at URL; options: timeout, retries, batch_size, format, token_env\n"
          "\nCombine: 'pickscore + 0.5*aesthetic', or route by prompt metadata: "
          "'route[task](geneval=shapes-verifier, *=pickscore)'.")


def cmd_reward_server(args) -> None:
    import os

    from .rewards import get_reward
    from .rewards.serve import RewardServer
    from .rewards.server import bind_problem, is_loopback

    token = os.environ.get(args.token_env) or None
    try:  # bind before loading the reward (which can take minutes), so a bad host or port fails at once
        server = RewardServer(None, args.host, args.port, token, max_bytes=args.max_mb << 20,
                              max_batch=args.max_batch, max_pixels=args.max_megapixels * 1_000_000,
                              batch_size=args.batch_size, max_wait_ms=args.max_wait_ms)
    except OSError as e:  # checked when the socket is bound, before any request
        raise ValueError(f"cannot serve at {args.host}:{args.port}: {bind_problem(e, args.host, args.port)}") from None
    if not is_loopback(args.host) and token is None:
        print(f"warning: serving on {args.host} without a token; anyone who can reach this port can use the "
              f"reward. Set {args.token_env} to require one.", file=sys.stderr)
    try:
        server.reward = reward = get_reward(args.reward)
    except BaseException:
        server.server_close()
        raise
    print(f"serving reward {reward.name!r} at {server.url} (POST /score, GET /health"
          f"{', bearer token required' if token else ''}; batches of up to {server.batch_size} images within "
          f"{args.max_wait_ms:g} ms); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def cmd_reward_pairs(args) -> None:
    from .rewards.shapes_pairs import make_shapes_pairs

    counts = make_shapes_pairs(args.out, images_per_prompt=args.images_per_prompt,
                               heldout_images_per_prompt=args.heldout_images_per_prompt, num_steps=args.steps,
                               saturation_weight=args.saturation_weight, max_prompts=args.max_prompts, seed=args.seed)
    print(f"wrote {', '.join(f'{n} {k} pairs' for k, n in counts.items())} to {args.out}")


def cmd_reward_train(args) -> None:
    from .rewards.learned import train_reward_model

    m = train_reward_model(args.pairs, args.out, heldout=args.heldout or (), text_encoder=args.text_encoder,
                           epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    accs = "  ".join(f"{k.removesuffix('_accuracy')} {v:.3f}" for k, v in m.items() if k.endswith("_accuracy"))
    print(f"pairwise accuracy: {accs}\nsaved to {args.out}; use it as the reward 'learned(path={args.out})'")


def cmd_convert_open_clip(args) -> None:
    from .rewards.convert import convert_open_clip

    convert_open_clip(args.checkpoint, args.out, args.arch, processor=args.processor or None)
    print(f"wrote a transformers CLIPModel to {args.out}; score with 'hpsv2(model={args.out})'")


def add_reward_commands(sub) -> None:
    p = sub.add_parser("rewards", help="list the registered rewards")
    p.add_argument("action", choices=("list",))
    p.set_defaults(func=cmd_rewards)

    p = sub.add_parser("reward-server", help="serve a reward over HTTP",
                       description="Serve any reward over HTTP (POST /score with npz or PNG images, JSON out; "
                       "GET /health) on uvicorn, batching concurrent requests. Binds to loopback unless --host says "
                       "otherwise. Clients use the reward 'remote:http://HOST:PORT'.")
    p.add_argument("--reward", required=True, help="a reward spec, e.g. aesthetic or 'pickscore(batch_size=16)'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port_int, default=8100, help="port (default: 8100; 0 picks a free one)")
    p.add_argument("--token-env", default="DDRL_REWARD_TOKEN",
                   help="environment variable holding a bearer token to require (default: DDRL_REWARD_TOKEN)")
    p.add_argument("--max-mb", type=positive_int, default=64, help="largest request body in MiB (default: 64)")
    p.add_argument("--max-batch", type=positive_int, default=256, help="most images per request (default: 256)")
    p.add_argument("--max-megapixels", type=positive_int, default=32,
                   help="most pixels per request in all, in millions, checked before decoding (default: 32)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="most images scored in one call, gathered from concurrent requests (default: the "
                   "reward's batch_size, else 32)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                   help="how long a request waits for others to join its batch (default: 5)")
    p.set_defaults(func=cmd_reward_server)

    p = sub.add_parser("convert-open-clip", help="convert an open_clip checkpoint (e.g. HPS v2.1) for transformers",
                       description="Write a transformers CLIPModel folder from an open_clip checkpoint such as "
                       "HPS_v2.1_compressed.pt (read tensors-only), with the base model's tokenizer and image "
                       "processor copied in, for the hpsv2 / clipscore rewards.")
    p.add_argument("checkpoint", help="the open_clip checkpoint (.pt, .bin or .safetensors)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--arch", default="ViT-H-14", help="open_clip architecture name (default: ViT-H-14, as HPS v2)")
    p.add_argument("--processor", default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                   help="folder or hub id to copy the tokenizer and image processor from ('' to skip)")
    p.set_defaults(func=cmd_convert_open_clip)

    p = sub.add_parser("reward-pairs", help="make shapes-world preference pairs from a hidden preference",
                       description="Sample images with the built-in shapes-sd model and pair them by a hidden "
                       "preference (verifier correctness + a taste for saturated colour): train.jsonl, "
                       "heldout.jsonl (new images of the training prompts) and heldout_prompts.jsonl.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--images-per-prompt", type=pair_count, default=16, help="training images per prompt, >= 2 (default: 16)")
    p.add_argument("--heldout-images-per-prompt", type=optional_pair_count, default=4,
                   help="held-out images per prompt: 0 writes no held-out sets, else >= 2 (default: 4)")
    p.add_argument("--steps", type=positive_int, default=10, help="sampling steps (default: 10)")
    p.add_argument("--saturation-weight", type=non_negative_float, default=0.5,
                   help="weight of mean saturation in the hidden preference (default: 0.5)")
    p.add_argument("--max-prompts", type=positive_int, help="use only the first N prompts of each split")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=cmd_reward_pairs)

    p = sub.add_parser("reward-train", help="train a Bradley-Terry reward model on preference pairs",
                       description="Fit a small CNN reward model, conditioned on frozen CLIP text features, "
                       "to preference pairs (JSONL lines with prompt, chosen, rejected image paths) and "
                       "report held-out pairwise accuracy. The output folder is the reward 'learned(path=DIR)'.")
    p.add_argument("pairs", help="a pairs JSONL file, or a folder with pairs.jsonl")
    p.add_argument("--out", required=True, help="folder to save the reward model in")
    p.add_argument("--heldout", action="append", help="a held-out pairs file (repeatable; default: 20%% of the prompts)")
    p.add_argument("--text-encoder", default="shapes-sd",
                   help="where the frozen CLIP text encoder comes from: a built-in model, a diffusers folder "
                   "or a CLIP folder (default: shapes-sd)")
    p.add_argument("--epochs", type=positive_int, default=4, help="passes over the pairs (default: 4)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="pairs per step (default: 64)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=cmd_reward_train)
