"""ddrl: reinforcement learning for diffusion and flow-matching models.

The Python API (ddrl.api): `ddrl.load_config`, `ddrl.train`, `ddrl.register_reward`,
`ddrl.register_prompts`, `ddrl.register_algorithm`; `ddrl.compat.from_trl_ddpo_config` converts a
TRL DDPOConfig."""

__version__ = "0.1.0"

from .api import load_config, register_algorithm, register_prompts, register_reward, train

__all__ = ["load_config", "register_algorithm", "register_prompts", "register_reward", "train", "__version__"]
