"""Drafters behind one interface: each proposes gamma tokens and their distributions.

Kinds (static `DrafterSpec.kind`):
  "model"  a separate model with the target's vocabulary, with its own KV cache;
  "self"   the target over a smaller layer set (its own cache, the target's weights);
  "lookup" prompt lookup: copy what followed the latest earlier occurrence of the
           context's last n-gram (no model; one-hot distributions; may propose fewer).
A model drafter's cache is exact for positions < `lengths` <= n - 1; a round first
feeds the committed tokens it has not seen (usually one or two), then drafts one
token per step. Rolling back is moving `lengths`.

With `DrafterSpec.context` a model or self drafter sees only the first `SINK` prompt
tokens and the last `context` of the rest (`view`): its prefill shrinks to at most
`SINK + context` tokens, and its cache and positions count along that shortened
sequence. Drafts stay proposals that the target verifies, so every mode stays exact.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from viasd_jax import model as M
from viasd_jax.cache import KVCache, with_lengths
from viasd_jax.config import ModelConfig
from viasd_jax.params import Params
from viasd_jax.sampling import SamplingParams, log_probs, pick, row_keys
from viasd_jax.windows import gather_window, window_positions

KINDS = ("model", "self", "lookup")
CATCH_UP = 4  # width of one catch-up chunk (committed tokens the drafter has not seen yet)
# Leading prompt tokens a windowed drafter keeps: models park attention on the first
# tokens ("attention sinks", Xiao et al. 2023), and a window without them drafts worse.
SINK = 4


@dataclasses.dataclass(frozen=True)
class DrafterSpec:
    kind: str  # one of KINDS
    cfg: ModelConfig | None = None  # the drafter's architecture (the target's for "self")
    ngram: int = 3  # longest n-gram prompt lookup matches
    mix_lookup: int = 0  # model drafters: use prompt-lookup drafts when they offer >= this many (0: never)
    min_ngram: int = 1  # shortest n-gram prompt lookup matches (longer ones draft fewer junk tokens)
    vocab: int | None = None  # model drafters: propose only ids below this (a cheaper head); None: all
    context: int = 0  # model / self drafters: see the prompt's first SINK and last `context` tokens (0: all)

    @property
    def has_cache(self) -> bool:
        return self.kind in ("model", "self")


def skipped(spec: DrafterSpec, prompt_len) -> jax.Array:
    """`[B]` int32: prompt tokens the drafter never sees, those after its first `SINK`
    (0 without `spec.context`, or when the prompt is short enough)."""
    count = jnp.maximum(prompt_len - 1, 0)  # prompt tokens prefill feeds
    if not spec.context:
        return jnp.zeros_like(count)
    return jnp.maximum(count - SINK - spec.context, 0)


def view(spec: DrafterSpec, tokens, n, skip):
    """(tokens `[B, S]`, n `[B]`) as the drafter sees them: positions `[SINK, SINK + skip)`
    cut out, so that its entry j is `tokens[j]` below `SINK` and `tokens[j + skip]` from
    there (entries past `S - skip` repeat the last one and are never read)."""
    if not spec.context:
        return tokens, n
    s = tokens.shape[1]
    j = jnp.arange(s)[None, :]
    idx = jnp.where(j >= SINK, j + skip[:, None], j)
    return jnp.take_along_axis(tokens, jnp.minimum(idx, s - 1), axis=1), n - skip


def catch_up(params: Params, cfg: ModelConfig, route, tokens, n, live, cache: KVCache):
    """Feed the committed tokens the drafter has not seen (`x[lengths .. n-1]`) in
    chunks of `CATCH_UP`; returns the hidden state at position n - 1 `[B, D]` and the
    cache, now exact for positions < n. Usually one chunk; more after prompt-lookup
    rounds that committed many tokens without the model."""

    def body(carry):
        cache, last = carry
        f = cache.lengths
        count = jnp.where(live, jnp.clip(n - f, 0, CATCH_UP), 0)
        window = gather_window(tokens, f, CATCH_UP)
        hidden, cache = M.forward(params, cfg, window, window_positions(f, count, CATCH_UP), cache, route)
        newest = jnp.take_along_axis(hidden, jnp.clip(count - 1, 0)[:, None, None], axis=1)[:, 0]
        return with_lengths(cache, f + count), jnp.where((count > 0)[:, None], newest, last)

    last = jnp.zeros((n.shape[0], cfg.hidden_size), params.final_norm.dtype)
    return jax.lax.while_loop(lambda c: jnp.any(live & (c[0].lengths < n)), body, (cache, last))


def propose_model(spec: DrafterSpec, gamma: int, params: Params, route, sp: SamplingParams, keys,
                  tokens, n, live, cache: KVCache, stop_below):
    """Model drafter: (drafts `[B, G]`, log-dists `[B, G, V]`, count `[B]`, cache).

    Drafting stops early (adaptive draft length) once the drafter's top probability
    falls below `stop_below` (a runtime scalar; 0 never stops); at least one draft is
    always proposed. The length depends only on the drafter's distributions, never on
    the sampled tokens, so verification stays exact. With `spec.vocab` the drafter's
    distribution is its softmax over ids below it (the rest get probability 0), which
    verification treats like any other drafter distribution.
    """
    cfg = spec.cfg
    cache, last = catch_up(params, cfg, route, tokens, n, live, cache)
    keys = row_keys(keys, gamma)  # [G, B]
    vocab = cfg.vocab_size

    def dist(hidden):  # the drafter's log-dist over the whole vocabulary, [B, V]
        logp = log_probs(M.logits(params, cfg, hidden, spec.vocab), sp)  # normalized over the ids it may propose
        if spec.vocab is None:
            return logp
        return jnp.pad(logp, ((0, 0), (0, vocab - spec.vocab)), constant_values=-jnp.inf)  # the rest: probability 0

    logp = dist(last)
    first = pick(keys[0], logp, sp)
    drafts = jnp.zeros((n.shape[0], gamma), jnp.int32).at[:, 0].set(first)
    draft_logp = jnp.zeros((n.shape[0], gamma, vocab), jnp.float32).at[:, 0].set(logp)
    count = live.astype(jnp.int32)
    active = live & (jnp.exp(jnp.max(logp, -1)) >= stop_below)

    def body(carry):
        i, drafts, draft_logp, count, active, cache = carry
        prev = jax.lax.dynamic_index_in_dim(drafts, i - 1, axis=1, keepdims=False)
        h, cache = M.forward(params, cfg, prev[:, None], jnp.where(active, n + i - 1, -1)[:, None], cache, route)
        lp = dist(h[:, 0])
        tok = pick(jax.lax.dynamic_index_in_dim(keys, i, keepdims=False), lp, sp)
        drafts = jax.lax.dynamic_update_index_in_dim(drafts, tok, i, axis=1)
        draft_logp = jax.lax.dynamic_update_index_in_dim(draft_logp, lp, i, axis=1)
        active = active & (jnp.exp(jnp.max(lp, -1)) >= stop_below)
        return i + 1, drafts, draft_logp, jnp.where(active, i + 1, count), active, cache

    carry = (jnp.int32(1), drafts, draft_logp, count, active, cache)
    _, drafts, draft_logp, count, _, cache = jax.lax.while_loop(
        lambda c: (c[0] < gamma) & jnp.any(c[4]), body, carry)
    cache = with_lengths(cache, jnp.where(live, n + count - 1, cache.lengths))
    return drafts, draft_logp, count, cache


def propose_lookup(tokens, n, gamma: int, ngram: int, vocab: int, min_ngram: int = 1):
    """Prompt lookup: (drafts `[B, G]`, one-hot log-dists `[B, G, V]`, count `[B]`).

    Matches the longest suffix n-gram (ngram..min_ngram) at its latest earlier occurrence and
    proposes the tokens that followed it (at most gamma, never past the context).
    """
    b, s = tokens.shape
    best_start = jnp.zeros((b,), jnp.int32)
    found = jnp.zeros((b,), bool)
    starts = jnp.arange(s)[None, :]
    for size in range(min_ngram, ngram + 1):  # longer n-grams override shorter ones
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


def rollback(cache: KVCache | None, drafts, tokens, n_old, n_new):
    """After a round: keep the drafter's cache only where its inputs were committed
    (the drafts it fed that were committed unchanged), and never past n - 1."""
    if cache is None:
        return None
    g = drafts.shape[1]
    idx = jnp.clip(n_old[:, None] + jnp.arange(g)[None, :], 0, tokens.shape[1] - 1)
    same = (jnp.take_along_axis(tokens, idx, axis=1) == drafts) & (idx < n_new[:, None])
    matched = jnp.sum(jnp.cumprod(same.astype(jnp.int32), axis=1), axis=1)
    valid = jnp.minimum(n_old + matched, n_new - 1)
    return with_lengths(cache, jnp.minimum(cache.lengths, valid))
