"""Fixed-width windows over per-row positions: read tokens, make positions, write tokens.

Every pass runs over a window of static width starting at a per-row offset;
`count` says how many of its entries are real. Padding positions are -1 (the
model neither writes nor attends them) and out-of-range writes are dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def window_positions(start: jax.Array, count: jax.Array, width: int) -> jax.Array:
    """`[B, width]`: start + t for t < count, -1 (padding) after."""
    t = jnp.arange(width)[None, :]
    return jnp.where(t < count[:, None], start[:, None] + t, -1)


def gather_window(tokens: jax.Array, start: jax.Array, width: int) -> jax.Array:
    """`tokens[b, start_b : start_b + width]` as `[B, width]` (indices clamped to the buffer)."""
    idx = jnp.clip(start[:, None] + jnp.arange(width)[None, :], 0, tokens.shape[1] - 1)
    return jnp.take_along_axis(tokens, idx, axis=1)


def write_tokens(tokens: jax.Array, start: jax.Array, new: jax.Array, count: jax.Array) -> jax.Array:
    """Write `new[b, :count_b]` at `tokens[b, start_b:]`; the rest of `new` is ignored."""
    t = jnp.arange(new.shape[1])[None, :]
    slots = jnp.where(t < count[:, None], start[:, None] + t, tokens.shape[1])
    return tokens.at[jnp.arange(tokens.shape[0])[:, None], slots].set(new.astype(tokens.dtype), mode="drop")
