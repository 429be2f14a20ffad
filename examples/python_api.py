"""ddrl from Python on the built-in shapes world: a custom reward written as a TRL-style function,
a TRL-style prompt function, and a short DDPO run. No downloads; a few minutes on a laptop CPU.

    python examples/python_api.py [--epochs 3]
"""

import argparse
import random

import ddrl


def redness(images, prompts, metadata):
    """TRL's reward signature: (B, 3, H, W) images in [0, 1] -> (rewards, info). Rewards red
    minus the other channels, the more so for prompts that ask for red."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    score = (r - (g + b) / 2).mean(dim=(1, 2))
    wants_red = [m["colour"] == "red" for m in metadata]
    return (score * 2 if any(wants_red) else score).numpy(), {"wants_red": wants_red}


def prompt_fn():
    """TRL's prompt signature: () -> (prompt, metadata)."""
    colour, shape = random.choice(["red", "blue", "green"]), random.choice(["circle", "square", "triangle"])
    return f"a {colour} {shape}", {"colour": colour}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--run-dir", default="runs/python-api-example")
    args = ap.parse_args()
    cfg = ddrl.load_config("shapes-alignment", {"run.epochs": args.epochs, "sample.num_batches_per_epoch": 1,
                                                "eval.max_prompts": 6})
    result = ddrl.train(cfg, run_dir=args.run_dir, reward=redness, prompts=prompt_fn,
                        eval_prompts=["a red circle", "a blue square", "a green triangle"])
    print(f"held-out reward {result['before']['heldout']['reward']:.3f} -> {result['after']['heldout']['reward']:.3f}")


if __name__ == "__main__":
    main()
