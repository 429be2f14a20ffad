"""Minibatches of an epoch's samples for the updates that re-noise final samples (RWR,
DiffusionNFT): `num_inner_epochs` passes, the first in sampling order and later ones shuffled,
with one generator per sample keyed by (epoch, pass, global index), so a run's draws do not
depend on batch sizes or the number of processes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def minibatches(tr, ro, epoch: int) -> Iterator[tuple[int, Tensor, list[torch.Generator]]]:
    """(minibatch index within the pass, rows of `ro`, a generator per row)."""
    n, bs = len(ro.latents), tr.cfg.train.batch_size
    for inner in range(tr.cfg.train.num_inner_epochs):
        order = torch.arange(n) if inner == 0 else torch.randperm(n, generator=tr.generator(epoch, inner, -1))
        for mb, start in enumerate(range(0, n, bs)):
            rows = order[start:start + bs]
            yield mb, rows, [tr.generator(epoch, inner, int(ro.global_idx[i])) for i in rows]
