"""viasd-jax: multi-tier speculative decoding (VIA-SD) in JAX.

Public surface: `load`, `score`, `generate`, `Model`, `ModelConfig`.
"""

from viasd_jax.config import ModelConfig
from viasd_jax.generate import GenerateResult, compile_count, generate
from viasd_jax.loading import Model, load
from viasd_jax.scoring import score

__all__ = ["Model", "ModelConfig", "GenerateResult", "load", "score", "generate", "compile_count"]
__version__ = "0.1.0"
