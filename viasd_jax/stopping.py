"""Where a row stops: EOS ids and stop sequences among newly committed tokens.

Stops are token sequences in one array `[Q, M]`, right-aligned and left-padded
with -1 (an EOS id is a sequence of length one). A round may commit several
tokens; the row ends right after the first position that completes a stop,
even when the sequence began in an earlier round. Matches never reach into the
prompt.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PAD = -1


def stop_array(sequences: list[list[int]], min_rows: int = 4, min_width: int = 4) -> np.ndarray:
    """Pack stop sequences into `[Q, M]` (sizes rounded up to powers of two, so that
    a different number of stops rarely changes the compiled shape)."""
    sequences = [list(s) for s in sequences if len(s)]
    rows = max(min_rows, 1 << max(0, (len(sequences) - 1).bit_length()))
    width = max([min_width] + [1 << (len(s) - 1).bit_length() for s in sequences])
    out = np.full((rows, width), PAD, np.int32)
    for i, seq in enumerate(sequences):
        out[i, width - len(seq):] = seq
    return out


def first_stop(
    tokens: jax.Array,  # [B, S] committed tokens
    start: jax.Array,  # [B] first newly committed position
    end: jax.Array,  # [B] one past the last newly committed position
    prompt_len: jax.Array,  # [B]
    stops: jax.Array,  # [Q, M]
    width: int,  # static bound on end - start
) -> tuple[jax.Array, jax.Array]:
    """Return (new end `[B]`, stopped `[B]`): `end` cut right after the first stop."""
    q, m = stops.shape
    pos = start[:, None] + jnp.arange(width)[None, :]  # [B, W] candidate last tokens
    offsets = jnp.arange(m) - (m - 1)  # [M] relative positions of a stop's tokens
    idx = pos[:, :, None] + offsets[None, None, :]  # [B, W, M]
    window = jnp.take_along_axis(tokens[:, None, :], jnp.clip(idx, 0, tokens.shape[1] - 1), axis=2)
    used = stops != PAD  # [Q, M]
    in_gen = idx >= prompt_len[:, None, None]  # [B, W, M]
    match = (window[:, :, None, :] == stops[None, None]) & in_gen[:, :, None, :]
    hit = jnp.any(jnp.all(match | ~used, axis=-1) & jnp.any(used, axis=-1), axis=-1)  # [B, W]
    hit = hit & (pos < end[:, None])
    first = jnp.argmax(hit, axis=-1)
    stopped = jnp.any(hit, axis=-1)
    return jnp.where(stopped, start + first + 1, end), stopped
