"""Keyed random generators: every draw of a run comes from its own generator, seeded by
(run seed, purpose, key...), so results do not depend on batch sizes, the number of processes or
where a run was resumed, and library code never touches the global RNG."""

from __future__ import annotations

import numpy as np
import torch


def keyed_generator(seed: int, purpose: int, *key: int) -> torch.Generator:
    """A CPU generator for (seed, purpose, *key); keys are shifted by one so that key 0 and
    "no key" differ."""
    ss = np.random.SeedSequence([seed, purpose, *[k + 1 for k in key]])
    return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))
