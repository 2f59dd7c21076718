"""The VIA-SD round (`decode_step`), prefill, and the jitted `lax.while_loop` over rounds.

Per row the state keeps committed tokens `tokens[:n]`; the target's KV cache is
exact for positions `< f = cache.lengths` and `f <= n - 1`: the last committed
token is always fed by the next pass. Positions `f+1 .. n-1` are *pending*:
committed by a cheap tier, not yet run through the full model (in lossless mode
they are provisional until the full pass re-checks them).

One round (via-sd.md): draft gamma tokens; in `via` mode run the slim verifier
over `[x_f..x_{n-1}, drafts]` and settle drafts by tiers A/B/C; run the full model
(under `lax.cond`, only when some row needs it) over `[x_f.., committed, escalated]`
and verify losslessly; commit, roll the drafter back by its length pointer, update
done flags and counters. `ar` and `sd` are the same round with no drafts / no
slim pass. Everything is fixed-shape; thresholds and sampling are arrays.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax import drafters as DR
from viasd_jax import model as M
from viasd_jax.cache import KVCache, with_lengths
from viasd_jax.config import ModelConfig
from viasd_jax.layout import layout_of, summed_along_k, with_products
from viasd_jax.params import Params
from viasd_jax.sampling import SamplingParams, is_greedy, log_probs, row_keys
from viasd_jax.stopping import first_stop
from viasd_jax.verify import TierResult, take, tiers, verify_chain
from viasd_jax.windows import gather_window, window_positions, write_tokens

MODES = ("ar", "sd", "via")
PREFILL_DTYPES = ("float32", "bfloat16")
# Who settled each committed token (`DecodeState.origin`): prompt, tier A, tier B (a
# draft the slim verifier kept), slim verifier's own token (correction or bonus), a
# draft the full model verified (tier C), the full model's own token.
ORIGINS = ("prompt", "tier_a", "tier_b", "slim", "tier_c", "full")
PROMPT, TIER_A, TIER_B, SLIM, TIER_C, FULL = range(len(ORIGINS))
COUNTERS = ("drafted", "rejected", "tier_a", "tier_b", "tier_c", "slim_passes", "full_passes", "rounds",
            "new_tokens", "rollbacks")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static (compile-time) shape of the engine. Hashable: a `jax.jit` static argument."""

    target: ModelConfig
    mode: str = "ar"  # ar | sd | via
    drafter: DR.DrafterSpec | None = None
    gamma: int = 0  # drafts per round
    pending_bound: int = 0  # most pending tokens a row may carry without a full pass
    lossless: bool = False  # via only: re-check pending tokens at the next full pass
    mesh: Any = None  # a `jax.sharding.Mesh` (see sharding.py): keep the state laid out on it
    verify_widths: tuple[int, ...] = ()  # narrower full passes a round may take when its window fits
    prefill_dtype: str = "float32"  # "bfloat16": prefill's kernel products round both operands (see prefill)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.mode == "ar":
            if self.gamma or self.drafter is not None:
                raise ValueError("mode 'ar' takes no drafter and gamma=0")
        elif self.gamma < 1 or self.drafter is None:
            raise ValueError(f"mode {self.mode!r} needs a drafter and gamma >= 1 (got gamma={self.gamma})")
        if self.pending_bound < 0:
            raise ValueError(f"pending_bound must be >= 0, got {self.pending_bound}")
        if self.lossless and self.mode != "via":
            raise ValueError("lossless=True applies to mode 'via' only (ar and sd are always lossless)")
        if self.prefill_dtype not in PREFILL_DTYPES:
            raise ValueError(f"prefill_dtype must be one of {', '.join(PREFILL_DTYPES)}, got {self.prefill_dtype!r}")
        if any(int(w) != w or not 1 <= w < self.full_width for w in self.verify_widths):
            raise ValueError(f"verify_widths must be integers in [1, {self.full_width}) (the full window), "
                             f"got {self.verify_widths}")

    @property
    def slim_width(self) -> int:
        """Slim window: pending tokens, the last committed token and the drafts."""
        return self.pending_bound + 1 + self.gamma

    @property
    def full_width(self) -> int:
        """Full window: the slim window plus a cheap-tier correction or slim bonus."""
        return {"ar": 1, "sd": 1 + self.gamma}.get(self.mode, self.pending_bound + self.gamma + 2)

    @property
    def full_widths(self) -> tuple[int, ...]:
        """Widths a full pass is compiled for, narrowest first; a round takes the narrowest
        that holds every row's window (on CPU a forward costs more the wider it is)."""
        return tuple(sorted({*self.verify_widths, self.full_width}))

    @property
    def slim_widths(self) -> tuple[int, ...]:
        """Widths a slim pass is compiled for (one less than each full width)."""
        return tuple(sorted({max(w - 1, 1) for w in self.full_widths}))

    @property
    def ring(self) -> int:
        """Slots of the lossless pending-distribution ring (indexed by position mod ring)."""
        return self.full_width + 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EngineParams:
    """Runtime inputs of a round: weights, routes, thresholds, sampling, stops."""

    target: Params
    drafter: Params | None  # a separate drafter's weights; None for self / lookup / ar
    slim_route: jax.Array  # [L, 2] bool: the slim verifier's (attention, MLP) sublayers
    draft_route: jax.Array  # [L_d, 2] bool: the drafter's sublayers (a route of the target for "self")
    sampling: SamplingParams
    tau_accept: jax.Array  # [] float32
    tau_slim: jax.Array  # [] float32
    draft_stop: jax.Array  # [] float32: a model drafter stops once its top probability is below this
    stops: jax.Array  # [Q, M] int32 stop sequences (see stopping.py)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    tokens: jax.Array  # [B, S] int32: prompt, committed tokens, scratch after n
    origin: jax.Array  # [B, S] int8: who settled each token (an index into ORIGINS)
    n: jax.Array  # [B] int32: committed tokens
    prompt_len: jax.Array  # [B] int32
    max_n: jax.Array  # [B] int32: a row is done once n reaches it
    done: jax.Array  # [B] bool
    cache: KVCache  # target cache; cache.lengths = f (exact frontier)
    draft_cache: KVCache | None  # drafter cache (model / self drafters)
    pending_logp: jax.Array | None  # [B, ring, V]: lossless only, what each pending token was drawn from
    key: jax.Array  # [B, 2] uint32: raw PRNG key data, one stream per row
    counters: dict  # name -> [B] int32, names in COUNTERS


def init_state(config: EngineConfig, tokens, prompt_len, max_new_tokens, cache: KVCache,
               draft_cache: KVCache | None, seeds) -> DecodeState:
    """State before prefill. `tokens [B, S]` holds the padded prompts; `max_new_tokens`
    is an int or one per row; `seeds` is one seed per row (a row's draws depend only on
    its seed). Every leaf is a distinct buffer, so the whole state can be donated."""
    b, s = tokens.shape
    prompt_len = np.asarray(prompt_len, np.int32)
    max_n = np.minimum(prompt_len + max_new_tokens, s).astype(np.int32)
    pending = None
    if config.lossless:
        pending = jnp.zeros((b, config.ring, config.target.vocab_size), jnp.float32)
    return DecodeState(
        tokens=jnp.asarray(tokens, jnp.int32),
        origin=jnp.zeros((b, s), jnp.int8),
        n=jnp.asarray(prompt_len),
        prompt_len=jnp.asarray(prompt_len.copy()),
        max_n=jnp.asarray(max_n),
        done=jnp.asarray(prompt_len >= max_n),
        cache=cache,
        draft_cache=draft_cache,
        pending_logp=pending,
        key=jnp.asarray(np.asarray(jax.random.key_data(jax.vmap(jax.random.key)(
            jnp.asarray(np.broadcast_to(seeds, (b,)), jnp.uint32))))),
        counters={name: jnp.asarray(np.zeros(b, np.int32)) for name in COUNTERS},
    )


def _drafter_model(params: EngineParams, config: EngineConfig):
    spec = config.drafter
    return (params.drafter, spec.cfg) if spec.kind == "model" else (params.target, config.target)


def prefill(state: DecodeState, params: EngineParams, config: EngineConfig, width: int) -> DecodeState:
    """Feed every prompt token but the last to the target (and a model drafter), `width`
    tokens per forward, as many forwards as the longest prompt needs (a `lax.while_loop`).

    Chunks keep prefill compute near the prompt's real length: one forward over a
    power-of-two bucket wastes up to half of it on padding, and prefill is compute-bound.
    With `config.prefill_dtype` "bfloat16" the CPU kernel's products round both operands
    to bfloat16 (twice float32's multiply-adds per second): the prompt's K/V then differ
    from float32's by that rounding, for every mode alike, so sd still equals ar token for
    token under the same setting; the rounds run as configured. A model drafter takes
    bfloat16 products either way where the CPU has them (`_prefill_products`)."""
    count = jnp.maximum(state.prompt_len - 1, 0)
    d_params, d_cfg = _drafter_model(params, config) if state.draft_cache is not None else (None, None)
    params, d_params = _prefill_products(params, d_params, config.prefill_dtype)
    cache = _prefill_model(params.target, config.target, None, state.tokens, count, state.cache, width)
    draft_cache = state.draft_cache
    if draft_cache is not None:  # a windowed drafter sees fewer prompt tokens (drafters.view)
        d_tokens, d_count = DR.view(config.drafter, state.tokens, count, DR.skipped(config.drafter, state.prompt_len))
        draft_cache = _prefill_model(d_params, d_cfg, params.draft_route, d_tokens, d_count, draft_cache, width)
    return dataclasses.replace(state, cache=cache, draft_cache=draft_cache)


def _prefill_model(params: Params, cfg: ModelConfig, route, tokens, count, cache: KVCache, width: int) -> KVCache:
    """Feed `tokens[:, :count]` to one model in chunks of `width`; the cache, exact below `count`."""

    def chunk(i, cache):
        start = jnp.full_like(count, i * width)
        window = gather_window(tokens, start, width)
        pos = window_positions(start, jnp.clip(count - start, 0, width), width)
        return M.forward(params, cfg, window, pos, cache, route, rows_alone=False)[1]

    chunks = (jnp.max(count) + width - 1) // width
    return with_lengths(jax.lax.fori_loop(0, chunks, chunk, cache), count)


def _prefill_products(params: EngineParams, d_params, prefill_dtype: str):
    """The target's params multiplying as `prefill_dtype` asks, and a drafter's: a self
    drafter's are the target's; a model drafter on the CPU kernel takes bfloat16 products
    whatever `prefill_dtype`, where the CPU multiplies bfloat16 in hardware, since its
    prompt only shapes proposals that the target verifies (about twice float32's rate, and
    for an int8 drafter over bfloat16 activations the same roundings as its own path).
    float32 prefill on the CPU kernel sums each output along k (`layout.summed_along_k`):
    every exact mode prefills so, so they stay token for token plain decoding's."""
    float32 = prefill_dtype == "float32"
    target = summed_along_k(params.target) if float32 else with_products(params.target, prefill_dtype)
    if d_params is params.target:  # a self drafter
        d_params = target
    elif d_params is not None and layout_of(d_params) == "cpu-kernel":
        d_params = with_products(d_params, "bfloat16") if not float32 or _bf16_dot_products() else summed_along_k(d_params)
    return dataclasses.replace(params, target=target), d_params


def _bf16_dot_products() -> bool:
    from viasd_jax.cpu_matvec import bf16_dot_products

    return bf16_dot_products()


def _draft(state: DecodeState, params: EngineParams, config: EngineConfig, key, live):
    """(drafts [B, G], draft log-dists [B, G, V], valid count [B], drafter cache).

    With `mix_lookup`, rows whose prompt lookup offers enough tokens take those (free)
    drafts, and the drafter model runs (under `lax.cond`) only for the others."""
    spec, g = config.drafter, config.gamma
    vocab = config.target.vocab_size
    if spec.kind == "lookup" or spec.mix_lookup:
        l_drafts, l_logp, l_count = DR.propose_lookup(state.tokens, state.n, g, spec.ngram, vocab, spec.min_ngram)
        if spec.kind == "lookup":
            return l_drafts, l_logp, jnp.where(live, l_count, 0), None
    d_params, _ = _drafter_model(params, config)

    def model(rows):
        d_tokens, d_n = DR.view(spec, state.tokens, state.n, DR.skipped(spec, state.prompt_len))
        return DR.propose_model(spec, g, d_params, params.draft_route, params.sampling, key, d_tokens, d_n,
                                rows, state.draft_cache, params.draft_stop)

    if not spec.mix_lookup:
        return model(live)
    use_lookup = l_count >= spec.mix_lookup
    rows = live & ~use_lookup
    b = live.shape[0]

    def skip(rows):
        return (jnp.zeros((b, g), jnp.int32), jnp.zeros((b, g, vocab), jnp.float32), jnp.zeros((b,), jnp.int32),
                state.draft_cache)

    m_drafts, m_logp, m_count, cache = jax.lax.cond(jnp.any(rows), model, skip, rows)
    pick_l = use_lookup[:, None]
    return (jnp.where(pick_l, l_drafts, m_drafts), jnp.where(pick_l[..., None], l_logp, m_logp),
            jnp.where(live, jnp.where(use_lookup, l_count, m_count), 0), cache)


def _slim_pass(tokens, f, n, n_draft, live, cache, params: EngineParams, config: EngineConfig):
    """Slim verifier over `[x_f..x_{n-1}, drafts]`: log-dists `[B, G+1, V]` for each draft
    and the position after them; writes provisional K/V of its kept layers. Runs at the
    narrowest of `config.slim_widths` that holds every live row's window."""
    cfg = config.target
    count = jnp.where(live, n - f + n_draft, 0)

    def at(width):
        def run(cache):
            window = gather_window(tokens, f, width)
            hidden, cache = M.forward(params.target, cfg, window, window_positions(f, count, width), cache,
                                      params.slim_route)
            idx = jnp.clip((n - 1 - f)[:, None] + jnp.arange(config.gamma + 1)[None, :], 0, width - 1)
            hidden = jnp.take_along_axis(hidden, idx[:, :, None], axis=1)
            return log_probs(M.logits(params.target, cfg, hidden), params.sampling), cache
        return run

    return _narrowest(config.slim_widths, jnp.max(count), at, cache)


def _narrowest(widths, window, at, operand):
    """`at(w)(operand)` for the narrowest `w` of `widths` (ascending) that is >= `window`."""
    if len(widths) == 1:
        return at(widths[0])(operand)
    return jax.lax.switch(jnp.sum(jnp.asarray(widths[:-1]) < window), [at(w) for w in widths], operand)


def _effective(tr: TierResult, draft_logp, slim_logp, n_draft):
    """Lossless: what each position n+i (i <= G) committed this round was drawn from."""
    g = draft_logp.shape[1]
    i = jnp.arange(g + 1)[None, :]
    as_drafted = tr.escalate[:, None] & (i >= tr.settled[:, None])
    p_ext = jnp.concatenate([draft_logp, slim_logp[:, g:]], axis=1)
    eff = jnp.where(as_drafted[..., None], p_ext, tr.effective)
    return jnp.where((i == n_draft[:, None])[..., None], slim_logp, eff)


def _full_pass(key, buffers, f, n_cheap, escalated, count, rows, draft_logp, settled, state, params, config, width):
    """Full model over `[x_f .. x_{n'-1}, escalated drafts]` (`count` tokens, at most
    `width`) for the rows that need it, lossless verification of the chain (escalated
    drafts; in lossless mode every pending token too), commit. Other rows are untouched, so a row's
    output never depends on its batch-mates (nor on the width their windows chose).

    Returns ((tokens, origin), cache, new n, accepted chain tokens, pending tokens in the chain).
    """
    tokens, origin = buffers
    cfg = config.target
    window = gather_window(tokens, f, width)
    hidden, cache = M.forward(params.target, cfg, window, window_positions(f, count, width), state.cache)
    start = jnp.ones_like(f) if config.lossless else n_cheap - f  # window index of the chain's first token
    chain_len = jnp.maximum(count - start, 0)
    idx = jnp.clip(start[:, None] - 1 + jnp.arange(width + 1)[None, :], 0, width - 1)
    q = log_probs(M.logits(params.target, cfg, jnp.take_along_axis(hidden, idx[:, :, None], axis=1)),
                  params.sampling)
    chain = gather_window(window, start, width)
    if config.lossless:
        slots = (f + start)[:, None] + jnp.arange(width)[None, :]
        chain_logp = jnp.take_along_axis(state.pending_logp, (slots % config.ring)[:, :, None], axis=1)
        pending_in_chain = chain_len - escalated
    elif config.gamma:
        didx = jnp.clip(settled[:, None] + jnp.arange(width)[None, :], 0, config.gamma - 1)
        chain_logp = jnp.take_along_axis(draft_logp, didx[:, :, None], axis=1)
        pending_in_chain = jnp.zeros_like(f)
    else:
        chain_logp, pending_in_chain = None, jnp.zeros_like(f)
    accepted, nxt = verify_chain(key, chain, chain_len, q, chain_logp, is_greedy(params.sampling),
                                 draw_width=config.full_width)
    n_full = jnp.where(rows, f + start + accepted + 1, n_cheap)
    tokens = write_tokens(tokens, n_full - 1, nxt[:, None], rows.astype(jnp.int32))
    origin = write_tokens(origin, n_full - 1, jnp.full_like(nxt, FULL)[:, None], rows.astype(jnp.int32))
    cache = with_lengths(cache, jnp.where(rows, n_full - 1, f))
    return (tokens, origin), cache, n_full, jnp.where(rows, accepted, 0), jnp.where(rows, pending_in_chain, 0)


def decode_step(state: DecodeState, params: EngineParams, config: EngineConfig) -> DecodeState:
    """One VIA-SD round for every live row. Pure and jit-able.

    Driving it yourself (the loop `generate` runs)::

        state = prefill(state, params, config, prefill_width)
        state = jax.lax.while_loop(lambda s: ~jnp.all(s.done),
                                   lambda s: decode_step(s, params, config), state)
    """
    live = ~state.done
    key, k_draft, k_tier, k_verify = row_keys(jax.random.wrap_key_data(state.key), 4)
    n, f, tokens, origin = state.n, state.cache.lengths, state.tokens, state.origin
    zero = jnp.zeros_like(n)
    g, via = config.gamma, config.mode == "via"
    greedy = is_greedy(params.sampling)

    drafts = draft_logp = None
    n_draft, draft_cache = zero, state.draft_cache
    if g:
        drafts, draft_logp, n_draft, draft_cache = _draft(state, params, config, k_draft, live)
        tokens = write_tokens(tokens, n, drafts, n_draft)
        origin = write_tokens(origin, n, jnp.full_like(drafts, TIER_C), n_draft)

    cache, pending = state.cache, state.pending_logp
    settled, escalated, tier_a, tier_b = zero, n_draft, zero, zero
    n_cheap, full_rows = n, live
    if via:
        slim_logp, cache = _slim_pass(tokens, f, n, n_draft, live, cache, params, config)
        tr = tiers(k_tier, drafts, draft_logp, slim_logp, n_draft, params.tau_accept, params.tau_slim, greedy,
                   with_effective=config.lossless)
        settled, tier_a, tier_b = tr.settled, tr.tier_a, tr.tier_b
        corrected = tr.corrected & live
        origin = write_tokens(origin, n, jnp.where(tr.tier_a_mask, TIER_A, TIER_B), settled * live)
        tokens = write_tokens(tokens, n + settled, tr.correction[:, None], corrected.astype(jnp.int32))
        origin = write_tokens(origin, n + settled, jnp.full((n.shape[0], 1), SLIM), corrected.astype(jnp.int32))
        n_cheap = n + settled + corrected
        escalated = jnp.where(tr.escalate & live, n_draft - settled, 0)
        bonus_ok = tr.bonus_ok & live
        needs = (escalated > 0) | ~((n_cheap > n) | bonus_ok) | (n_cheap - f > config.pending_bound)
        if config.lossless:
            needs |= _finishing(tokens, f, n_cheap + bonus_ok, state, params, config)
            slots = (n[:, None] + jnp.arange(g + 1)[None, :]) % config.ring
            eff = _effective(tr, draft_logp, slim_logp, n_draft)
            pending = pending.at[jnp.arange(n.shape[0])[:, None], slots].set(eff)
        full_rows = needs & live
        use_bonus = bonus_ok & ~full_rows
        tokens = write_tokens(tokens, n_cheap, tr.bonus[:, None], use_bonus.astype(jnp.int32))
        origin = write_tokens(origin, n_cheap, jnp.full((n.shape[0], 1), SLIM), use_bonus.astype(jnp.int32))
        n_cheap = n_cheap + use_bonus

    state_for_full = dataclasses.replace(state, cache=cache, pending_logp=pending)

    full_count = jnp.where(full_rows, n_cheap - f + escalated, 0)

    def full_at(width):
        return lambda buffers: _full_pass(k_verify, buffers, f, n_cheap, escalated, full_count, full_rows, draft_logp,
                                          settled, state_for_full, params, config, width)

    def full(buffers):
        return _narrowest(config.full_widths, jnp.max(full_count), full_at, buffers)

    def skip(buffers):
        return buffers, with_lengths(cache, f), n_cheap, zero, zero

    if via:
        (tokens, origin), cache, n_new, accepted, pending_in_chain = jax.lax.cond(
            jnp.any(full_rows), full, skip, (tokens, origin))
    else:
        (tokens, origin), cache, n_new, accepted, pending_in_chain = full((tokens, origin))
    tier_c = jnp.clip(accepted - pending_in_chain, 0, escalated)
    rollbacks = jnp.maximum(pending_in_chain - accepted, 0)

    # Commit: stops are looked for only among final tokens (lossless: re-checked ones).
    f_new = cache.lengths
    final_old, final_new = (f + 1, f_new + 1) if config.lossless else (n, n_new)
    end, stopped = first_stop(tokens, final_old, final_new, state.prompt_len, params.stops,
                              width=config.full_width + 1)
    n_new = jnp.minimum(jnp.where(stopped, end, n_new), state.max_n)
    n_new = jnp.where(live, n_new, n)
    f_new = jnp.minimum(f_new, n_new - 1)
    final = jnp.minimum(f_new + 1, n_new) if config.lossless else n_new
    done = state.done | (live & (stopped | (final >= state.max_n)))
    if draft_cache is not None:
        skip = DR.skipped(config.drafter, state.prompt_len)
        d_tokens, d_n_new = DR.view(config.drafter, tokens, n_new, skip)
        draft_cache = DR.rollback(draft_cache, drafts, d_tokens, n - skip, d_n_new)
    c = state.counters
    counters = {
        **c,
        "drafted": c["drafted"] + n_draft,
        "tier_a": c["tier_a"] + jnp.where(live, tier_a, 0),
        "tier_b": c["tier_b"] + jnp.where(live, tier_b, 0),
        "tier_c": c["tier_c"] + tier_c,
        "rejected": c["rejected"] + jnp.where(live, n_draft - tier_a - tier_b - tier_c, 0),
        "rollbacks": c["rollbacks"] + rollbacks,
        "slim_passes": c["slim_passes"] + (live if via else zero),
        "full_passes": c["full_passes"] + full_rows,
        "rounds": c["rounds"] + live,
        "new_tokens": n_new - state.prompt_len,
    }
    out = DecodeState(tokens, origin, n_new, state.prompt_len, state.max_n, done, with_lengths(cache, f_new),
                      draft_cache, pending, jax.random.key_data(key),
                      {k: v.astype(jnp.int32) for k, v in counters.items()})
    return _laid_out(out, config)


def _laid_out(state: DecodeState, config: EngineConfig) -> DecodeState:
    """Pin the loop state to its declared sharding (no-op without a mesh)."""
    if config.mesh is None:
        return state
    from viasd_jax.sharding import constrain, state_shardings

    return constrain(state, state_shardings(config.mesh, state))


def _finishing(tokens, f, n_after, state: DecodeState, params: EngineParams, config: EngineConfig):
    """Lossless: rows whose pending tokens reach the budget or hold a stop must be
    re-checked now, so that a row never ends on an unverified token."""
    _, hit = first_stop(tokens, f + 1, n_after, state.prompt_len, params.stops, width=config.full_width + 1)
    return (n_after >= state.max_n) | hit


def _rounds(state: DecodeState, params: EngineParams, config: EngineConfig) -> DecodeState:
    return jax.lax.while_loop(lambda s: ~jnp.all(s.done), lambda s: decode_step(s, params, config), state)


@partial(jax.jit, static_argnames=("config", "prefill_width"), donate_argnames=("state",))
def generate_loop(params: EngineParams, state: DecodeState, *, config: EngineConfig, prefill_width: int):
    """Prefill, then rounds in one `lax.while_loop` until every row is done (one program)."""
    return _rounds(_laid_out(prefill(state, params, config, prefill_width), config), params, config)


def rounds_config(config: EngineConfig) -> EngineConfig:
    """`config` less what only prefill reads (`prefill_dtype`), so that configurations
    differing only in their prefill share one rounds program."""
    return dataclasses.replace(config, prefill_dtype="float32")


def prefill_config(config: EngineConfig) -> EngineConfig:
    """The part of `config` that prefill depends on (target, drafter, mesh), so that
    configurations differing only in their rounds share one prefill program."""
    drafted = config.drafter is not None
    return dataclasses.replace(config, mode="sd" if drafted else "ar", gamma=int(drafted), pending_bound=0,
                               lossless=False, verify_widths=())


@partial(jax.jit, static_argnames=("config", "width"), donate_argnames=("state",))
def prefill_program(params: EngineParams, state: DecodeState, *, config: EngineConfig, width: int):
    """`prefill` as a program of its own, so that the prompt's time can be told apart
    from the rounds' (`generate` runs this, then `rounds_loop`)."""
    return _laid_out(prefill(state, params, config, width), config)


@partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def rounds_loop(params: EngineParams, state: DecodeState, *, config: EngineConfig):
    """Rounds in one `lax.while_loop` until every row is done (after `prefill_program`)."""
    return _rounds(state, params, config)
