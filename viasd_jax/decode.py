"""Decode state, prefill and the jitted `lax.while_loop` over rounds.

Per row the state keeps committed tokens `tokens[:n]`; the target's KV cache is
exact for positions `< f = cache.lengths`, and `f <= n - 1`: the last committed
token is always fed by the next round. So a round always runs the model over the
window `tokens[f:n]` (plus drafts), and prefill is the same thing for the prompt
minus its last token.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax import model as M
from viasd_jax.cache import KVCache, with_lengths
from viasd_jax.config import ModelConfig
from viasd_jax.params import Params
from viasd_jax.sampling import SamplingParams, log_probs, pick
from viasd_jax.stopping import first_stop

COUNTERS = ("drafted", "rejected", "tier_a", "tier_b", "tier_c", "slim_passes", "full_passes", "rounds", "new_tokens")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    tokens: jax.Array  # [B, S] int32: prompt then generated tokens, pad after n
    n: jax.Array  # [B] int32: committed tokens
    prompt_len: jax.Array  # [B] int32
    max_n: jax.Array  # [B] int32: the row is done when n reaches it
    done: jax.Array  # [B] bool
    cache: KVCache  # target cache; cache.lengths = f (exact frontier)
    key: jax.Array  # PRNG key
    counters: dict  # name -> [B] int32, names in COUNTERS


def init_state(tokens, prompt_len, max_new_tokens: int, cache: KVCache, seed: int) -> DecodeState:
    """State before prefill. `tokens [B, S]` holds the prompts, padded. Every leaf
    is a distinct buffer, so the whole state can be donated."""
    b, s = tokens.shape
    prompt_len = np.asarray(prompt_len, np.int32)
    max_n = np.minimum(prompt_len + max_new_tokens, s).astype(np.int32)
    return DecodeState(
        tokens=jnp.asarray(tokens, jnp.int32),
        n=jnp.asarray(prompt_len),
        prompt_len=jnp.asarray(prompt_len.copy()),
        max_n=jnp.asarray(max_n),
        done=jnp.asarray(prompt_len >= max_n),
        cache=cache,
        key=jax.random.key(seed),
        counters={name: jnp.asarray(np.zeros(b, np.int32)) for name in COUNTERS},
    )


def window_positions(start, count, width: int):
    """Positions `[B, width]`: start + t for t < count, -1 (padding) after."""
    t = jnp.arange(width)[None, :]
    return jnp.where(t < count[:, None], start[:, None] + t, -1)


def gather_window(tokens, start, width: int):
    """`tokens[b, start_b : start_b + width]` as `[B, width]` (clamped at the end)."""
    idx = jnp.clip(start[:, None] + jnp.arange(width)[None, :], 0, tokens.shape[1] - 1)
    return jnp.take_along_axis(tokens, idx, axis=1)


def prefill(params: Params, cfg: ModelConfig, state: DecodeState, width: int) -> DecodeState:
    """Fill the cache with every prompt token but the last: afterwards f = n - 1."""
    count = jnp.maximum(state.prompt_len - 1, 0)
    tokens = state.tokens[:, :width]
    _, cache = M.forward(params, cfg, tokens, window_positions(jnp.zeros_like(count), count, width), state.cache)
    return dataclasses.replace(state, cache=with_lengths(cache, count))


def _bump(counters: dict, **inc) -> dict:
    return {k: v + inc[k].astype(jnp.int32) if k in inc else v for k, v in counters.items()}


def ar_step(state: DecodeState, params: Params, cfg: ModelConfig, sp: SamplingParams, stops) -> DecodeState:
    """One round of plain decoding: feed tokens[n-1], append one token."""
    live = ~state.done
    last = jnp.take_along_axis(state.tokens, (state.n - 1)[:, None], axis=1)
    pos = jnp.where(live, state.n - 1, -1)[:, None]
    hidden, cache = M.forward(params, cfg, last, pos, state.cache)
    key, sub = jax.random.split(state.key)
    nxt = pick(sub, log_probs(M.logits(params, cfg, hidden[:, 0]), sp), sp)
    rows = jnp.arange(state.n.shape[0])
    slot = jnp.where(live, state.n, state.tokens.shape[1])  # out of range: dropped
    tokens = state.tokens.at[rows, slot].set(nxt, mode="drop")
    end = jnp.where(live, state.n + 1, state.n)
    end, stopped = first_stop(tokens, state.n, end, state.prompt_len, stops, width=1)
    done = state.done | stopped | (end >= state.max_n)
    counters = _bump(state.counters, rounds=live, full_passes=live, new_tokens=end - state.n)
    cache = with_lengths(cache, jnp.where(live, state.n, cache.lengths))
    return DecodeState(tokens, end, state.prompt_len, state.max_n, done, cache, key, counters)


@partial(jax.jit, static_argnames=("cfg", "prefill_width"), donate_argnames=("state",))
def generate_ar(params: Params, state: DecodeState, sp: SamplingParams, stops, *, cfg: ModelConfig, prefill_width: int):
    """Prefill, then rounds in one `lax.while_loop` until every row is done."""
    state = prefill(params, cfg, state, prefill_width)
    return jax.lax.while_loop(
        lambda s: ~jnp.all(s.done), lambda s: ar_step(s, params, cfg, sp, stops), state
    )
