"""Logits -> token distributions: temperature, top-k, top-p, applied identically everywhere.

Every distribution the engine compares (drafter, slim verifier, full model) goes
through `log_probs`, so the lossless tests hold with any filtering. Settings are
runtime arrays (`SamplingParams`), never compile-time constants: changing the
temperature or top-p does not recompile.

Greedy decoding is `temperature == 0`: tokens are the argmax, and the
distributions used for tier confidences are taken at temperature 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: jax.Array  # [] float32; 0 = greedy
    top_k: jax.Array  # [] int32; 0 = no top-k
    top_p: jax.Array  # [] float32; 1 = no top-p

    @staticmethod
    def make(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> "SamplingParams":
        validate(temperature, top_k, top_p)
        return SamplingParams(
            jnp.asarray(temperature, jnp.float32), jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32)
        )


def validate(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _filter(x: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask (to -inf) what top-k then top-p remove from scaled logits `x [..., V]`."""
    vocab = x.shape[-1]
    desc = -jnp.sort(-x, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(desc, jnp.broadcast_to(k - 1, desc.shape[:-1] + (1,)), axis=-1)
    desc = jnp.where(desc < kth, -jnp.inf, desc)
    p_desc = jax.nn.softmax(desc, axis=-1)
    # keep a token while the mass of the tokens before it is below top_p (always keeps one)
    kept = (jnp.cumsum(p_desc, axis=-1) - p_desc) < top_p
    last = jnp.sum(kept, axis=-1, keepdims=True) - 1
    threshold = jnp.maximum(jnp.take_along_axis(desc, last, axis=-1), kth)
    return jnp.where(x < threshold, -jnp.inf, x)


def log_probs(logits: jax.Array, sp: SamplingParams) -> jax.Array:
    """Normalized log-probabilities `[..., V]` after temperature, top-k and top-p."""
    logits = logits.astype(jnp.float32)
    t = jnp.where(sp.temperature > 0, sp.temperature, 1.0)
    x = logits / t
    needs_filter = (sp.top_k > 0) | (sp.top_p < 1.0)
    x = jax.lax.cond(needs_filter, lambda y: _filter(y, sp.top_k, sp.top_p), lambda y: y, x)
    return jax.nn.log_softmax(x, axis=-1)


def is_greedy(sp: SamplingParams) -> jax.Array:
    return sp.temperature <= 0


def row_keys(keys: jax.Array, num: int) -> jax.Array:
    """Split each row's key: `[B]` keys -> `[num, B]` keys (one stream per row, so a row's
    draws never depend on which other rows share its batch)."""
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num))(keys), 0, 1)


def categorical(keys: jax.Array, logp: jax.Array) -> jax.Array:
    """One sample per row from `logp [B, ..., V]` with that row's key `keys [B]`."""
    return jax.vmap(lambda k, lp: jax.random.categorical(k, lp, axis=-1))(keys, logp).astype(jnp.int32)


def uniform(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`[B, *shape]` uniforms, row b drawn with `keys[b]`."""
    return jax.vmap(lambda k: jax.random.uniform(k, shape))(keys)


def greedy_or_sample(greedy: jax.Array, greedy_fn, sample_fn):
    """`greedy_fn()` if `greedy` (a runtime scalar), else `sample_fn()`. Only the taken
    branch runs: with `jnp.where` every greedy round would also draw full-vocabulary
    samples it then discards."""
    return jax.lax.cond(greedy, greedy_fn, sample_fn)


def pick(keys: jax.Array, logp: jax.Array, sp: SamplingParams) -> jax.Array:
    """A token per row of `logp [B, V]`: argmax when greedy, else a sample (row keys `[B]`)."""
    return greedy_or_sample(is_greedy(sp), lambda: jnp.argmax(logp, axis=-1).astype(jnp.int32),
                            lambda: categorical(keys, logp))
