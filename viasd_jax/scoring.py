"""`score`: full (or slim) model logits for whole sequences, no cache kept."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax import model as M
from viasd_jax.cache import init_cache, kv_dtype
from viasd_jax.config import ModelConfig
from viasd_jax.loading import Model
from viasd_jax.prompts import bucket
from viasd_jax.params import Params
from viasd_jax.route import route_mask


@partial(jax.jit, static_argnames=("cfg",))
def _score(params: Params, tokens: jax.Array, route: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    hidden, _ = M.forward(params, cfg, tokens, positions, init_cache(cfg, b, t, kv_dtype(params.embed.dtype)), route, rows_alone=False)
    return M.logits(params, cfg, hidden)


def score(model: Model, token_ids, route=None) -> jax.Array:
    """Float32 logits `[B, T, V]` of the full model, or of the slim verifier that
    keeps `route` (layer indices, a `Route`, a route dict or a route.json path)."""
    tokens = np.asarray(token_ids)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[1] == 0 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"token_ids must be a non-empty int array [B, T], got shape {tokens.shape}, {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= model.config.vocab_size:
        raise ValueError(f"token_ids outside the vocabulary [0, {model.config.vocab_size})")
    mask = route_mask(route, model.config.num_layers)
    t = tokens.shape[1]
    # Pad to a length bucket so that sequences of similar length share one compile;
    # causal attention makes the trailing padding invisible to the real tokens.
    padded = np.zeros((tokens.shape[0], bucket(t)), np.int32)
    padded[:, :t] = tokens
    return _score(model.params, jnp.asarray(padded), jnp.asarray(mask), cfg=model.config)[:, :t]
