"""Training algorithms as components (base.py has the contract with the loop). Adding one means
a module here, a line in ALGORITHMS, and its config fields."""

from __future__ import annotations

from .base import Algorithm, Context, EpochRewards, Rollouts
from .ddpo import DDPO, DDPOSF
from .dpo import DPO, SFT, OnlineDPO
from .flow_grpo import FlowGRPO
from .nft import NFT
from .pref_grpo import PrefGRPO
from .reward_backprop import AlignProp, DRaFT, ReFL
from .rwr import RWR

ALGORITHMS: dict[str, type[Algorithm]] = {
    "ddpo-is": DDPO,
    "ddpo-sf": DDPOSF,
    "rwr": RWR,
    "flow-grpo": FlowGRPO,
    "pref-grpo": PrefGRPO,
    "nft": NFT,
    "dpo": DPO,
    "online-dpo": OnlineDPO,
    "sft": SFT,
    "refl": ReFL,
    "draft": DRaFT,
    "alignprop": AlignProp,
}

__all__ = ["ALGORITHMS", "Algorithm", "Context", "EpochRewards", "Rollouts"]
