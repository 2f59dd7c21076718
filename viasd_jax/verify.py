"""Tier decisions and lossless acceptance: pure `jnp` functions on `[B, gamma]` arrays.

Nothing here runs a model. Inputs are log-probabilities already shaped by
`sampling.log_probs`; B batch, G = gamma drafts, V vocab, W chain length.

Tiers (via-sd.md, step 3), per draft token i in order, from the slim
distribution q':  a_i = q'_i(d_i), c_i = max q'_i.
  A (accept)      a_i >= tau_accept
  B (slim decides) not A and c_i >= tau_slim: greedy keeps d_i iff it is argmax q'_i,
                  else emits argmax q'_i; sampling runs the SD test of d_i ~ p_i
                  against q'_i and on rejection samples norm(max(0, q'_i - p_i))
  C (escalate)    otherwise: d_i and every later draft go to the full model.
The round's cheap part ends at the first C or at the first B rejection.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from viasd_jax.sampling import categorical, greedy_or_sample, row_keys, uniform


def leading_true(mask: jax.Array) -> jax.Array:
    """Number of leading True values along the last axis: `[..., N] -> [...]`."""
    return jnp.sum(jnp.cumprod(mask.astype(jnp.int32), axis=-1), axis=-1)


def take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """`x[b, idx[b]]` for `x [B, N, ...]`, `idx [B]`."""
    idx = jnp.clip(idx, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def token_prob(logp: jax.Array, tokens: jax.Array) -> jax.Array:
    """`exp(logp[..., tokens])`: `[..., V]`, `[...]` -> `[...]`."""
    return jnp.exp(jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0])


def residual_sample(keys, target_logp: jax.Array, draft_logp: jax.Array) -> jax.Array:
    """Sample from norm(max(0, target - draft)) `[B, V]`; the target itself if that is empty."""
    diff = jnp.maximum(jnp.exp(target_logp) - jnp.exp(draft_logp), 0.0)
    mass = jnp.sum(diff, axis=-1, keepdims=True)
    logits = jnp.where(mass > 0, jnp.log(diff), target_logp)
    return categorical(keys, logits)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TierResult:
    settled: jax.Array  # [B] leading drafts settled by tiers A/B (committed)
    tier_a: jax.Array  # [B] how many of those were tier A
    tier_b: jax.Array  # [B] how many were tier B
    tier_a_mask: jax.Array  # [B, G] bool: draft i is tier A
    escalate: jax.Array  # [B] bool: draft `settled` is tier C (it and later drafts go to the full pass)
    corrected: jax.Array  # [B] bool: draft `settled` was rejected by the slim verifier (tier B)
    correction: jax.Array  # [B] token replacing the rejected draft
    bonus_ok: jax.Array  # [B] bool: all drafts settled and the slim verifier is confident after them
    bonus: jax.Array  # [B] slim verifier's token after the last draft
    effective: jax.Array | None  # [B, G+1, V] log-dist each committed position was drawn from (lossless)


def tiers(
    keys,  # [B] row keys
    drafts: jax.Array,  # [B, G]
    draft_logp: jax.Array,  # [B, G, V]
    slim_logp: jax.Array,  # [B, G+1, V]; index G is the distribution after the last draft
    n_draft: jax.Array,  # [B] valid drafts (the rest are padding)
    tau_accept: jax.Array,
    tau_slim: jax.Array,
    greedy: jax.Array,  # [] bool
    with_effective: bool = False,
) -> TierResult:
    g = drafts.shape[1]
    k_acc, k_res, k_bonus = row_keys(keys, 3)
    slim = slim_logp[:, :g]
    a = token_prob(slim, drafts)  # [B, G]
    c = jnp.exp(jnp.max(slim, axis=-1))  # [B, G]
    slim_top = jnp.argmax(slim, axis=-1).astype(jnp.int32)
    # Greedy decoding never emits a token the verifier ranks below another: tier A
    # also needs the draft to be the slim argmax (so S = all layers gives `ar`).
    tier_a = (a >= tau_accept) & (~greedy | (drafts == slim_top))
    tier_b = ~tier_a & (c >= tau_slim)
    p_draft = token_prob(draft_logp, drafts)
    u = uniform(k_acc, (g,))
    b_accept = jnp.where(greedy, drafts == slim_top, u * p_draft < a)
    valid = jnp.arange(g)[None, :] < n_draft[:, None]
    ok = (tier_a | (tier_b & b_accept)) & valid
    settled = leading_true(ok)
    prefix = jnp.arange(g)[None, :] < settled[:, None]
    stopped = settled < n_draft
    at_stop_b = take(tier_b, settled)
    last_slim = take(slim_logp, n_draft)  # distribution after the last valid draft
    bonus_conf = jnp.exp(jnp.max(last_slim, axis=-1)) >= tau_slim
    correction, bonus = greedy_or_sample(
        greedy, lambda: (take(slim_top, settled), jnp.argmax(last_slim, -1).astype(jnp.int32)),
        lambda: (residual_sample(k_res, take(slim, settled), take(draft_logp, settled)),
                 categorical(k_bonus, last_slim)))
    effective = None
    if with_effective:
        effective = _effective_logp(draft_logp, slim_logp, tau_accept, c >= tau_slim)
    return TierResult(
        settled=settled,
        tier_a=jnp.sum(prefix & tier_a, axis=1),
        tier_b=jnp.sum(prefix & ~tier_a, axis=1),
        tier_a_mask=tier_a,
        escalate=stopped & ~at_stop_b,
        corrected=stopped & at_stop_b,
        correction=correction,
        bonus_ok=~stopped & bonus_conf,
        bonus=bonus,
        effective=effective,
    )


def _effective_logp(draft_logp, slim_logp, tau_accept, slim_confident):
    """Log of the distribution each position's committed token follows, marginal over
    the tier procedure (what the lossless re-check must divide by).

    With c_i >= tau_slim: r = [A] p + [not A] min(p, q') + R * norm(max(0, q' - p)),
    A = {x: q'(x) >= tau_accept}, R = sum over not-A of max(0, p - q'). Otherwise the
    draft itself stands (tier A or escalated): r = p. After the last draft (the slim
    bonus) r = q'.
    """
    g = draft_logp.shape[1]
    p, q = jnp.exp(draft_logp), jnp.exp(slim_logp[:, :g])
    in_a = q >= tau_accept
    rejected_mass = jnp.sum(jnp.where(in_a, 0.0, jnp.maximum(p - q, 0.0)), axis=-1, keepdims=True)
    diff = jnp.maximum(q - p, 0.0)
    diff_mass = jnp.sum(diff, axis=-1, keepdims=True)
    res = jnp.where(diff_mass > 0, diff / jnp.where(diff_mass > 0, diff_mass, 1.0), q)
    mix = jnp.where(in_a, p, jnp.minimum(p, q)) + rejected_mass * res
    r = jnp.where(slim_confident[..., None], mix, p)
    r = jnp.concatenate([r, jnp.exp(slim_logp[:, g:])], axis=1)
    return jnp.log(r)


def verify_chain(
    keys,  # [B] row keys
    chain: jax.Array,  # [B, W] tokens to check, in order
    chain_len: jax.Array,  # [B] valid chain tokens
    target_logp: jax.Array,  # [B, W+1, V]: full model's distribution for chain[j] at j; index len = bonus
    chain_logp: jax.Array | None,  # [B, W, V] distribution each chain token was drawn from (sampling)
    greedy: jax.Array,
    draw_width: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Lossless verification: (accepted prefix length `[B]`, next token `[B]`).

    `draw_width` (>= W): draw the acceptance uniforms at this width and use the first W,
    so that verifying a chain in a narrower window draws the same numbers.

    Greedy accepts while the token is the target's argmax. Sampling accepts token y
    with probability min(1, q(y)/r(y)) and replaces the first rejected one with a
    sample of norm(max(0, q - r)); if all are accepted, the next token is sampled
    from the target's distribution after the chain.
    """
    w = chain.shape[1]
    k_acc, k_res, k_bonus = row_keys(keys, 3)
    q = target_logp[:, :w]
    q_top = jnp.argmax(q, axis=-1).astype(jnp.int32)
    if chain_logp is None:
        accept = chain == q_top
        chain_logp = q  # unused by greedy; keeps shapes valid
    else:
        u = uniform(k_acc, (draw_width or w,))[:, :w]
        sampled_ok = u * token_prob(chain_logp, chain) < token_prob(q, chain)
        accept = jnp.where(greedy, chain == q_top, sampled_ok)
    accept = accept & (jnp.arange(w)[None, :] < chain_len[:, None])
    accepted = leading_true(accept)
    rejected = accepted < chain_len
    bonus_logp = take(target_logp, chain_len)
    correction, bonus = greedy_or_sample(
        greedy, lambda: (take(q_top, accepted), jnp.argmax(bonus_logp, -1).astype(jnp.int32)),
        lambda: (residual_sample(k_res, take(q, accepted), take(chain_logp, accepted)),
                 categorical(k_bonus, bonus_logp)))
    return accepted, jnp.where(rejected, correction, bonus).astype(jnp.int32)
