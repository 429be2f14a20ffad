"""Demonstrations for the 2-D world from a scripted, noisy controller that uses both routes, and
the demo file format (safetensors: flat arrays plus episode boundaries, checked on load).

The controller picks a route per episode (wide or narrow, `narrow_fraction` of the time), steers
at full speed towards waypoints before and after its gap and then to the goal, and adds Gaussian
action noise. Failed episodes are kept, as D4RL keeps them: the demo success rate is part of the
data's description.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .world import GOAL, ROUTES, RoutesEnv, gap_centre

KEYS = ("obs", "actions", "episode_ends")


class DemoError(ValueError):
    """A demonstration file that cannot be used, with what is wrong in one line."""


@dataclass(frozen=True)
class Demos:
    obs: np.ndarray  # (N, Do) float32
    actions: np.ndarray  # (N, Da) float32, in [-1, 1]
    episode_ends: np.ndarray  # (E,) int64, exclusive end index of each episode
    meta: dict  # routes, successes, how they were made

    def episodes(self):
        start = 0
        for end in self.episode_ends:
            yield slice(start, int(end))
            start = int(end)

    def windows(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """(obs (M, Do), action chunks (M, horizon, Da)): every step whose next `horizon` actions
        lie inside its episode (DPPO's sequence dataset does the same)."""
        o, a = [], []
        for ep in self.episodes():
            n = ep.stop - ep.start
            for i in range(n - horizon + 1):
                o.append(self.obs[ep.start + i])
                a.append(self.actions[ep.start + i:ep.start + i + horizon])
        if not o:
            raise DemoError(f"no episode of the demonstrations is at least {horizon} steps long")
        return np.stack(o), np.stack(a)


def scripted_action(pos: np.ndarray, route: str) -> np.ndarray:
    """Full speed towards the next waypoint: before the gap, after it, then the goal."""
    gy = gap_centre(route)[1]
    if pos[0] < -0.12:
        target = np.array([-0.12, gy]) if abs(pos[1] - gy) > 0.02 or pos[0] < -0.2 else np.array([0.15, gy])
    elif pos[0] < 0.12:
        target = np.array([0.15, gy])
    else:
        target = GOAL
    d = target - pos
    return d / max(np.abs(d).max(), 1e-6)


def make_demos(episodes: int, seed: int, noise: float = 0.3, narrow_fraction: float = 0.5) -> Demos:
    rng = np.random.default_rng(seed)
    env = RoutesEnv()
    obs, actions, ends, routes, successes = [], [], [], [], []
    for e in range(episodes):
        route = ROUTES[int(rng.random() < narrow_fraction)]
        o, _ = env.reset(seed=int(rng.integers(2**31)))
        for _ in range(200):
            a = np.clip(scripted_action(o.astype(np.float64), route) + noise * rng.standard_normal(2), -1, 1)
            obs.append(o)
            actions.append(a.astype(np.float32))
            o, _, terminated, _, info = env.step(a)
            if terminated:
                break
        ends.append(len(obs))
        routes.append(info["route"])
        successes.append(bool(info["success"]))
    meta = {"env": "ddrl/Routes-v0", "episodes": episodes, "seed": seed, "noise": noise,
            "narrow_fraction": narrow_fraction, "routes": routes, "successes": successes}
    return Demos(np.asarray(obs, np.float32), np.asarray(actions, np.float32), np.asarray(ends, np.int64), meta)


def save_demos(demos: Demos, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"obs": torch.from_numpy(demos.obs), "actions": torch.from_numpy(demos.actions),
               "episode_ends": torch.from_numpy(demos.episode_ends)}, str(path), metadata={"meta": json.dumps(demos.meta)})


def load_demos(path: str | Path, obs_dim: int | None = None, action_dim: int | None = None) -> Demos:
    """Read and check a demo file: the three arrays, their shapes against each other and against
    the environment's (`obs_dim`, `action_dim`), finite values, actions in [-1, 1]."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DemoError(f"demonstration file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            names, meta = set(f.keys()), json.loads((f.metadata() or {}).get("meta", "{}"))
            arrays = {k: f.get_tensor(k).numpy() for k in KEYS if k in names}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise DemoError(f"{path} is not a ddrl demonstration file (safetensors with {', '.join(KEYS)}): "
                        f"{type(e).__name__}") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DemoError(f"{path} lacks {', '.join(missing)}; a demo file holds {', '.join(KEYS)}")
    o, a, ends = arrays["obs"], arrays["actions"], arrays["episode_ends"]
    if o.ndim != 2 or a.ndim != 2 or ends.ndim != 1 or len(o) != len(a):
        raise DemoError(f"{path}: expected obs (N, Do), actions (N, Da) and episode_ends (E,), got "
                        f"{tuple(o.shape)}, {tuple(a.shape)} and {tuple(ends.shape)}")
    if obs_dim is not None and o.shape[1] != obs_dim or action_dim is not None and a.shape[1] != action_dim:
        raise DemoError(f"{path}: observations of {o.shape[1]} and actions of {a.shape[1]} dims, but the environment "
                        f"has {obs_dim} and {action_dim}")
    if len(ends) == 0 or ends[-1] != len(o) or np.any(np.diff(ends) <= 0) or ends[0] <= 0:
        raise DemoError(f"{path}: episode_ends must rise strictly and end at {len(o)}, the number of steps")
    if not (np.isfinite(o).all() and np.isfinite(a).all()):
        raise DemoError(f"{path}: non-finite observations or actions")
    if np.abs(a).max() > 1:
        raise DemoError(f"{path}: actions must lie in [-1, 1] (found {np.abs(a).max():.3g})")
    return Demos(o.astype(np.float32), a.astype(np.float32), ends.astype(np.int64), meta)
