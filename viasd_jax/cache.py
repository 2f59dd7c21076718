"""KV cache: a fixed-size pytree, one slot per position, lengths kept per row.

Slot `s` of row `b` holds the key/value of the token at position `s`. A forward
writes its T new tokens at the positions it is given (each row at its own
offset) and reads every slot `<=` the query's position. `lengths[b]` is the
number of leading slots that are exact for the full model (the "full
frontier" `f` of via-sd.md); slots past it may hold provisional or stale values
that the next writes overwrite, so rolling back is just moving `lengths`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from viasd_jax.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: jax.Array  # [L, B, G, S, K]
    v: jax.Array  # [L, B, G, S, K]
    lengths: jax.Array  # [B] int32: exact slots per row

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]


def kv_dtype(model_dtype) -> jnp.dtype:
    """The cache dtype for a model computing in `model_dtype`.

    float32 on the CPU backend: there XLA writes a 16-bit cache through a convert
    fusion that copies the whole stacked cache per write (7-10 ms of a 130 ms
    bfloat16 1.5B forward, docs/performance.md), while a float32 cache is written in
    place, at twice the cache bytes (a few MB here, against GBs of weights). Other
    backends keep the model's dtype, which halves the cache memory.
    """
    if jax.default_backend() == "cpu" and jnp.issubdtype(model_dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.dtype(model_dtype)


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        lengths=jnp.zeros((batch_size,), jnp.int32),
    )


def write_layer(
    cache_kv: jax.Array,  # [L, B, G, S, K]
    layer: jax.Array,  # scalar int
    new: jax.Array,  # [B, T, G, K]
    positions: jax.Array,  # [B, T]; negative = padding, not written
) -> jax.Array:
    """Scatter T new entries of one layer into their slots; padding is dropped."""
    max_len = cache_kv.shape[3]
    slots = jnp.where(positions < 0, max_len, positions)  # out of range -> dropped
    batch = jnp.arange(new.shape[0])[:, None]
    return cache_kv.at[layer, batch, :, slots, :].set(new.astype(cache_kv.dtype), mode="drop")


def with_lengths(cache: KVCache, lengths: jax.Array) -> KVCache:
    return dataclasses.replace(cache, lengths=lengths.astype(jnp.int32))
