"""Drafters behind one interface: each proposes gamma tokens and their distributions.

Kinds (static `DrafterSpec.kind`):
  "model"  a separate model with the target's vocabulary, with its own KV cache;
  "self"   the target over a smaller layer set (its own cache, the target's weights);
  "lookup" prompt lookup: copy what followed the latest earlier occurrence of the
           context's last n-gram (no model; one-hot distributions; may propose fewer).
A model drafter's cache is exact for positions < `lengths` <= n - 1; a round first
feeds the (at most two) committed tokens it has not seen, then drafts one token
per step. Rolling back is moving `lengths`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from viasd_jax import model as M
from viasd_jax.cache import KVCache, init_cache, with_lengths
from viasd_jax.config import ModelConfig
from viasd_jax.params import Params
from viasd_jax.sampling import SamplingParams, log_probs, pick, row_keys
from viasd_jax.windows import gather_window, window_positions

KINDS = ("model", "self", "lookup")
CATCH_UP = 2  # committed tokens a model drafter may not have seen at a round's start


@dataclasses.dataclass(frozen=True)
class DrafterSpec:
    kind: str  # one of KINDS
    cfg: ModelConfig | None = None  # the drafter's architecture (the target's for "self")
    ngram: int = 3  # longest n-gram prompt lookup matches

    @property
    def has_cache(self) -> bool:
        return self.kind in ("model", "self")


def init_drafter_cache(spec: DrafterSpec, batch: int, max_len: int, dtype) -> KVCache | None:
    return init_cache(spec.cfg, batch, max_len, dtype) if spec.has_cache else None


def propose_model(spec: DrafterSpec, gamma: int, params: Params, keep, sp: SamplingParams, keys,
                  tokens, n, live, cache: KVCache):
    """Model drafter: (drafts `[B, G]`, log-dists `[B, G, V]`, cache)."""
    cfg = spec.cfg
    f = cache.lengths
    count = jnp.where(live, n - f, 0)
    window = gather_window(tokens, f, CATCH_UP)
    hidden, cache = M.forward(params, cfg, window, window_positions(f, count, CATCH_UP), cache, keep)
    last = jnp.take_along_axis(hidden, jnp.clip(count - 1, 0)[:, None, None], axis=1)[:, 0]
    keys = row_keys(keys, gamma)  # [G, B]
    logp = log_probs(M.logits(params, cfg, last), sp)
    first = pick(keys[0], logp, sp)

    def step(carry, k):
        tok, cache, pos = carry
        h, cache = M.forward(params, cfg, tok[:, None], jnp.where(live, pos, -1)[:, None], cache, keep)
        lp = log_probs(M.logits(params, cfg, h[:, 0]), sp)
        nxt = pick(k, lp, sp)
        return (nxt, cache, pos + 1), (nxt, lp)

    (_, cache, _), (rest, rest_lp) = jax.lax.scan(step, (first, cache, n), keys[1:])
    drafts = jnp.concatenate([first[:, None], rest.T], axis=1)
    draft_logp = jnp.concatenate([logp[:, None], jnp.swapaxes(rest_lp, 0, 1)], axis=1)
    cache = with_lengths(cache, jnp.where(live, n + gamma - 1, f))
    return drafts, draft_logp, cache


def propose_lookup(tokens, n, gamma: int, ngram: int, vocab: int):
    """Prompt lookup: (drafts `[B, G]`, one-hot log-dists `[B, G, V]`, count `[B]`).

    Matches the longest suffix n-gram (ngram..1) at its latest earlier occurrence and
    proposes the tokens that followed it (at most gamma, never past the context).
    """
    b, s = tokens.shape
    best_start = jnp.zeros((b,), jnp.int32)
    found = jnp.zeros((b,), bool)
    starts = jnp.arange(s)[None, :]
    for size in range(1, ngram + 1):  # longer n-grams override shorter ones
        pattern = gather_window(tokens, n - size, size)  # [B, size]
        match = jnp.ones((b, s), bool)
        for t in range(size):
            shifted = jnp.roll(tokens, -t, axis=1)  # shifted[:, j] = tokens[:, j + t]
            match &= shifted == pattern[:, t:t + 1]
        # an earlier occurrence, followed by at least one token before the pattern itself
        match &= (starts + size < n[:, None]) & (n[:, None] - size >= 0)
        latest = jnp.max(jnp.where(match, starts, -1), axis=1)
        hit = latest >= 0
        best_start = jnp.where(hit, latest + size, best_start)
        found |= hit
    count = jnp.where(found, jnp.minimum(gamma, n - best_start), 0)
    drafts = gather_window(tokens, best_start, gamma)
    one_hot = jnp.where(jnp.arange(vocab)[None, None, :] == drafts[:, :, None], 0.0, -jnp.inf)
    return drafts, one_hot, count


def rollback(cache: KVCache | None, drafts, tokens, n_old, n_new, gamma: int):
    """After a round: keep the drafter's cache only where its inputs were committed."""
    if cache is None:
        return None
    idx = jnp.clip(n_old[:, None] + jnp.arange(gamma)[None, :], 0, tokens.shape[1] - 1)
    same = (jnp.take_along_axis(tokens, idx, axis=1) == drafts) & (idx < n_new[:, None])
    matched = jnp.sum(jnp.cumprod(same.astype(jnp.int32), axis=1), axis=1)
    valid = jnp.minimum(n_old + jnp.minimum(matched, gamma - 1), n_new - 1)
    return with_lengths(cache, jnp.minimum(cache.lengths, valid))
