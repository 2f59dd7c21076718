"""viasd-jax: multi-tier speculative decoding (VIA-SD) in JAX.

Public surface: `load`, `score`, `generate`, `calibrate_route`, `make_mesh`, and for
users' own loops `prepare`, `prefill`, `decode_step` (see decode.py).
"""

from viasd_jax.config import ModelConfig
from viasd_jax.decode import decode_step, prefill
from viasd_jax.generate import GenerateResult, clear_compiled, compile_count, generate, prepare
from viasd_jax.loading import Model, load
from viasd_jax.route import Route
from viasd_jax.routing import calibrate_route
from viasd_jax.scoring import score
from viasd_jax.sharding import make_mesh

__all__ = ["Model", "ModelConfig", "GenerateResult", "Route", "load", "score", "generate", "calibrate_route",
           "compile_count", "clear_compiled", "make_mesh", "prepare", "prefill", "decode_step"]
__version__ = "0.1.0"
