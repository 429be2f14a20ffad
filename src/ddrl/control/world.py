"""The built-in 2-D control world, `ddrl/Routes-v0`: a point must reach a goal past a wall
with two gaps, a wide one above and a narrow one below, so a policy has two routes.

    y
    1 |        |#|
      |        | |  <- wide gap, y in [0.25, 0.55]
      |  start |#|          goal
    0 |   o    |#|           *
      |        |#|
      |        | |  <- narrow gap, y in [-0.48, -0.40]
   -1 |        |#|
      -1       0 (the wall, x in [-0.05, 0.05])        1   x

Observation: the position (x, y). Action: a velocity in [-1, 1]^2, moved by `SPEED` per step.
Entering the solid wall ends the episode (terminated, a crash); reaching the goal's disc ends it
with a success bonus; after `MAX_STEPS` steps it is truncated. The dense reward is the progress
along the shortest route: the decrease of the geodesic distance to the goal through the nearer
gap (a potential, so it does not change which policies are optimal). Pure numpy.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "ddrl/Routes-v0"
SPEED = 0.04  # distance moved per step at |action| = 1, per axis
WALL = 0.05  # the wall's half-thickness; larger than one step's reach along x, so it cannot be jumped
GAPS = {"wide": (0.25, 0.55), "narrow": (-0.48, -0.40)}  # y intervals of the gaps
ROUTES = ("wide", "narrow")
START_X, START_Y = -0.7, 0.1  # start at (START_X, U[-START_Y, START_Y])
GOAL, GOAL_RADIUS = np.array([0.7, 0.0]), 0.1
MAX_STEPS = 80
SUCCESS_BONUS = 2.0


def gap_centre(route: str) -> np.ndarray:
    lo, hi = GAPS[route]
    return np.array([0.0, (lo + hi) / 2])


def geodesic(pos: np.ndarray) -> float:
    """Distance to the goal: straight past the wall, else through the nearer gap's centre."""
    if pos[0] > WALL:
        return float(np.linalg.norm(pos - GOAL))
    return min(float(np.linalg.norm(pos - gap_centre(r)) + np.linalg.norm(gap_centre(r) - GOAL)) for r in ROUTES)


def in_wall(pos: np.ndarray) -> bool:
    return abs(pos[0]) <= WALL and not any(lo <= pos[1] <= hi for lo, hi in GAPS.values())


def route_of(y: float) -> str:
    return next((r for r, (lo, hi) in GAPS.items() if lo <= y <= hi), "crash")


class RoutesEnv(gym.Env):
    """See the module docstring. `info` carries `route` ("wide", "narrow", "crash" or "" before
    the wall) and `success` (the goal reached)."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.pos = np.zeros(2)
        self.route = ""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.array([START_X, self.np_random.uniform(-START_Y, START_Y)])
        self.route = ""
        return self.pos.astype(np.float32), {"route": "", "success": False}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        before = geodesic(self.pos)
        new = np.clip(self.pos + SPEED * a, -1.0, 1.0)
        if not self.route and new[0] >= -WALL:  # the route is the gap the point enters the wall band at
            self.route = route_of(new[1])
        crashed = in_wall(new)
        if crashed:
            self.route = "crash"
        self.pos = new
        success = bool(not crashed and np.linalg.norm(new - GOAL) <= GOAL_RADIUS)
        reward = (before - geodesic(new)) if not crashed else 0.0
        reward += SUCCESS_BONUS if success else 0.0
        info = {"route": self.route, "success": success}
        return self.pos.astype(np.float32), float(reward), crashed or success, False, info


def register() -> None:
    """Register `ddrl/Routes-v0` with gymnasium (idempotent), with its time limit."""
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=RoutesEnv, max_episode_steps=MAX_STEPS)


def draw_map(ax) -> None:
    """The wall, its gaps, the start segment and the goal on a matplotlib axis."""
    import matplotlib.patches as patches

    edges = sorted([-1.0, 1.0, *[v for gap in GAPS.values() for v in gap]])
    for lo, hi in zip(edges[::2], edges[1::2]):
        ax.add_patch(patches.Rectangle((-WALL, lo), 2 * WALL, hi - lo, color="0.25"))
    ax.add_patch(patches.Circle(GOAL, GOAL_RADIUS, color="gold", alpha=0.8))
    ax.plot([START_X, START_X], [-START_Y, START_Y], color="k", lw=3)
    for r in ROUTES:
        ax.annotate(r, gap_centre(r) + np.array([0.08, 0]), fontsize=8, va="center")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


ROUTE_COLOURS = {"wide": "tab:blue", "narrow": "tab:orange", "crash": "tab:red", "": "0.6"}
