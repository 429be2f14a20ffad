"""Model adapters: every model ddrl trains is seen through the `Policy` protocol."""

from .loading import BUILTIN, builtin_path, load_policy
from .policy import Cond, ModelError, Policy, adapters_disabled, guided_prediction

__all__ = ["BUILTIN", "Cond", "ModelError", "Policy", "adapters_disabled", "builtin_path",
           "guided_prediction", "load_policy"]
