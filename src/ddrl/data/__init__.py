"""Training data that is not sampled in the loop: preference pairs and their cached VAE latents."""

from .latent_cache import PairLatents, pair_latents
from .pairs import DataError, PairRows, check_captions, read_pair_rows

__all__ = ["DataError", "PairLatents", "PairRows", "check_captions", "pair_latents", "read_pair_rows"]
