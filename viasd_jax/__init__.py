"""viasd-jax: multi-tier speculative decoding (VIA-SD) in JAX.

Public surface: `load`, `score`, `generate`, `Model`, `ModelConfig`.
"""

from viasd_jax.config import ModelConfig
from viasd_jax.generate import GenerateResult, compile_count, generate
from viasd_jax.loading import Model, load
from viasd_jax.route import Route
from viasd_jax.routing import calibrate_route
from viasd_jax.scoring import score
from viasd_jax.sharding import make_mesh

__all__ = ["Model", "ModelConfig", "GenerateResult", "Route", "load", "score", "generate", "calibrate_route",
           "compile_count", "make_mesh"]
__version__ = "0.1.0"
