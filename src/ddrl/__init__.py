"""ddrl: reinforcement learning for diffusion and flow-matching models.

The Python API (ddrl.api): `ddrl.load_config`, `ddrl.train`, `ddrl.register_reward`,
`ddrl.register_prompts`, `ddrl.register_algorithm`; `ddrl.compat.from_trl_ddpo_config` converts a
TRL DDPOConfig."""

__version__ = "0.1.0"

import logging as _logging

# peft imports bitsandbytes when it is installed; on CPUs with AVX512-BF16 bitsandbytes warns at
# import that an optional 4-bit kernel package is missing, which ddrl never uses, and that line
# would come before a run's own messages. Left alone if the application set its level.
if _logging.getLogger("bitsandbytes").level == _logging.NOTSET:
    _logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)

from .api import load_config, register_algorithm, register_prompts, register_reward, train

__all__ = ["load_config", "register_algorithm", "register_prompts", "register_reward", "train", "__version__"]
