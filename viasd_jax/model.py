"""The decoder forward: tokens at given positions through a routed layer stack.

`forward` runs any subset of the layers (a boolean `keep` mask, a runtime array),
so the full model, the slim verifier and a self-drafter all share one compiled
function per window width. A skipped layer is the identity on the residual
stream and its branch of `lax.cond` touches neither its weights nor its cache.

Dimension letters: B batch, T new tokens, S cache slots, D hidden, N query heads,
G kv heads, R query heads per kv head, K head dim, F mlp hidden, V vocab.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax.cache import KVCache, write_layer
from viasd_jax.config import ModelConfig
from viasd_jax.layout import OutputMajor, layout_of, select_layer
from viasd_jax.params import Params
from viasd_jax.quant import Int8Weight, dense

_MASKED = -1e30


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies `[K/2]` (float32), with Llama 3 scaling when configured."""
    k = cfg.head_dim
    inv = 1.0 / (cfg.rope.theta ** (np.arange(0, k, 2, dtype=np.float64) / k))
    if cfg.rope.kind == "llama3":
        r = cfg.rope
        low_wavelen = r.original_max_position / r.low_freq_factor
        high_wavelen = r.original_max_position / r.high_freq_factor
        wavelen = 2 * np.pi / inv
        smooth = (r.original_max_position / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
        scaled = np.where(wavelen > low_wavelen, inv / r.factor, inv)
        mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(mid, (1 - smooth) * scaled / r.factor + smooth * scaled, scaled)
    return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate `x [B, T, H, K]` by `positions [B, T]` (half-split convention of HF)."""
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [B, T, K/2]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def row_sum(v: jax.Array) -> jax.Array:
    """Sum over the last axis (kept, size 1) in one fixed pairwise order, zero-padded to a
    power of two, so a row's sum has the same bits however many rows the call holds.
    XLA's reduce vectorizes by the row count: at hidden 896 or 1536 a decoding step and a
    verification window got sums a last bit apart, and greedy sd must score a token
    exactly as plain decoding does (`benchmarks/window_bits.py`)."""
    n = v.shape[-1]
    v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, (1 << (n - 1).bit_length()) - n)])
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return v


def rms_norm(x: jax.Array, weight: jax.Array, cfg: ModelConfig) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(row_sum(x32 * x32) / x.shape[-1] + cfg.rms_norm_eps)
    if cfg.norm_offset:
        return (y * (cfg.norm_offset + weight.astype(jnp.float32))).astype(x.dtype)
    return y.astype(x.dtype) * weight


def _softcap(x: jax.Array, cap: float) -> jax.Array:
    return jnp.tanh(x / cap) * cap if cap else x


def attention_mask(positions: jax.Array, max_len: int, window: jax.Array) -> jax.Array:
    """`[B, T, S]`: slot s is visible to a query at position p iff p-window < s <= p.

    `window` is a scalar, 0 for full attention. Padding queries (p < 0) see nothing.
    """
    slots = jnp.arange(max_len)[None, None, :]
    pos = positions[:, :, None]
    visible = slots <= pos
    return visible & ((window <= 0) | (slots > pos - window))


def _attention(cfg: ModelConfig, q, k_all, v_all, mask, rows_alone: bool = True):
    """q `[B, T, N, K]`, k/v `[B, G, S, K]`, mask `[B, T, S]` -> `[B, T, N, K]`.

    `rows_alone` (static): each query row is attended on its own, so its result has the
    same bits whatever T is. XLA's CPU dot sums in an order that depends on the number of
    rows (on an Intel Xeon, T = 5 and 9 gave other last bits than T = 1 at the real
    sizes), so a verification window scored a token a last bit apart from plain decoding
    and greedy sd could part from ar at a near-tie (`benchmarks/window_bits.py`). Prefill
    need not match decoding and keeps the batched dots (faster over many rows)."""
    b, t, _, kd = q.shape
    q = q.reshape(b, t, cfg.num_kv_heads, cfg.heads_per_kv, kd)

    def attend(q, mask):  # q [B, T', G, R, K], mask [B, T', S] -> [B, T', G, R, K]
        # scores [B, G, T', R, S]: with T' outside R, XLA's CPU dots take probs as they lie
        # (in [B, G, R, T', S] it transposed them, and V, for the second product; see
        # docs/performance.md, "Attention scores laid out for XLA's CPU dots")
        scores = jnp.einsum("btgrk,bgsk->bgtrs", q, k_all, preferred_element_type=jnp.float32)
        scores = _softcap(scores * cfg.query_scale, cfg.attn_softcap)
        scores = jnp.where(mask[:, None, :, None, :], scores, _MASKED)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_all.dtype)
        return jnp.moveaxis(jnp.einsum("bgtrs,bgsk->bgtrk", probs, v_all), 1, 2)

    if rows_alone and t > 1:
        per_row = jax.lax.map(lambda qm: attend(qm[0][:, None], qm[1][:, None])[:, 0],
                              (jnp.moveaxis(q, 1, 0), jnp.moveaxis(mask, 1, 0)))  # [T, B, G, R, K]
        out = jnp.moveaxis(per_row, 0, 1)
    else:
        out = attend(q, mask)
    return out.reshape(b, t, cfg.num_heads, kd).astype(q.dtype)


def _mlp(cfg: ModelConfig, h, w_gate, w_up, w_down):
    gate = dense(h, w_gate, "btd,df->btf")
    up = dense(h, w_up, "btd,df->btf")
    act = jax.nn.silu(gate) if cfg.activation == "silu" else jax.nn.gelu(gate, approximate=True)
    return dense(act * up, w_down, "btf,fd->btd")


def _attn_block(cfg, lp, idx, window, x, cache_k, cache_v, positions, inv_freq, rows_alone=True):
    """Attention sublayer of layer `idx`: (residual delta, caches with its K/V written)."""
    h = rms_norm(x, lp.attn_norm, cfg)
    q = dense(h, lp.wq, "btd,dnk->btnk")
    k = dense(h, lp.wk, "btd,dgk->btgk")
    v = dense(h, lp.wv, "btd,dgk->btgk")
    if cfg.qkv_bias:
        q, k, v = q + lp.bq, k + lp.bk, v + lp.bv
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    cache_k = write_layer(cache_k, idx, k, positions)
    cache_v = write_layer(cache_v, idx, v, positions)
    mask = attention_mask(positions, cache_k.shape[3], window)
    attn = _attention(cfg, q, cache_k[idx], cache_v[idx], mask, rows_alone)
    o = dense(attn, lp.wo, "btnk,nkd->btd")
    if cfg.out_bias:
        o = o + lp.bo
    if cfg.post_norms:
        o = rms_norm(o, lp.post_attn_norm, cfg)
    return o, cache_k, cache_v


def _mlp_block(cfg, lp, x):
    """MLP sublayer: the residual delta."""
    m = _mlp(cfg, rms_norm(x, lp.mlp_norm, cfg), lp.w_gate, lp.w_up, lp.w_down)
    return rms_norm(m, lp.post_mlp_norm, cfg) if cfg.post_norms else m


def live_rows(positions: jax.Array) -> jax.Array:
    """Rows of the flattened window `[B * T]` up to its last real token (position >= 0).

    The kernel computes only these; the trailing padding after them (a prefill chunk's
    tail at batch 1) is neither written to the cache nor attended, so no row reads it."""
    real = positions.reshape(-1) >= 0
    return jnp.max(jnp.where(real, jnp.arange(1, real.shape[0] + 1), 0))


def _layer(cfg, layers, idx, window, route_row, x, cache_k, cache_v, positions, inv_freq, live, rows_alone=True):
    """Layer `idx` under its route row `[2]` (attention, MLP); `live` as `live_rows` gives it.

    A bool row skips sublayers under `lax.cond`: weights are sliced inside the taken
    branch, so a skipped sublayer reads neither weights nor cache. A float row scales
    each sublayer's residual delta (the relaxed gates that route calibration trains).
    """

    def layer_params():
        return jax.tree.map(lambda w: select_layer(w, idx, live), layers, is_leaf=lambda w: isinstance(w, OutputMajor))

    def attn(c):
        o, ck, cv = _attn_block(cfg, layer_params(), idx, window, *c, positions, inv_freq, rows_alone)
        return c[0] + o, ck, cv

    def mlp(h):
        return h + _mlp_block(cfg, layer_params(), h)

    if route_row.dtype == jnp.bool_:
        x, cache_k, cache_v = jax.lax.cond(route_row[0], attn, lambda c: c, (x, cache_k, cache_v))
        return jax.lax.cond(route_row[1], mlp, lambda h: h, x), cache_k, cache_v
    lp = layer_params()
    o, cache_k, cache_v = _attn_block(cfg, lp, idx, window, x, cache_k, cache_v, positions, inv_freq, rows_alone)
    x = x + route_row[0].astype(x.dtype) * o
    return x + route_row[1].astype(x.dtype) * _mlp_block(cfg, lp, x), cache_k, cache_v


def take_rows(params: Params, table: jax.Array, tokens: jax.Array) -> jax.Array:
    """`table[tokens]`; a 16-bit table under the CPU kernel is read by the kernel's row
    lookup: XLA's CPU backend gathers 16-bit floats in float32, converting the whole
    table on every program call."""
    if table.dtype.itemsize == 2 and layout_of(params) == "cpu-kernel":
        from viasd_jax import cpu_matvec

        return cpu_matvec.take_rows(table, tokens)
    return jnp.take(table, tokens, axis=0)


def embed(params: Params, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    table = params.embed
    if isinstance(table, Int8Weight):
        q = jnp.take(table.q, tokens, axis=0).astype(jnp.float32)  # XLA gathers int8 rows without a table copy
        x = (q * jnp.take(table.scale, tokens, axis=0)).astype(params.final_norm.dtype)
    else:
        x = take_rows(params, table, tokens)
    if cfg.embed_scale != 1.0:
        x = x * jnp.asarray(cfg.embed_scale, x.dtype)
    return x


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,  # [B, T] int32
    positions: jax.Array,  # [B, T] int32; negative marks padding
    cache: KVCache,
    route: jax.Array | None = None,  # [L] or [L, 2] (attention, MLP): bool mask or float gates
    rows_alone: bool = True,
) -> tuple[jax.Array, KVCache]:
    """Run the (routed) layer stack; returns final-normed hidden states `[B, T, D]`.

    `route` None runs every layer; `[L]` keeps or skips whole layers; `[L, 2]` each
    layer's attention and MLP separately. K/V of the new tokens are written into
    `cache` at `positions` for every kept attention sublayer; `cache.lengths` is
    left to the caller. Call `logits` on the result. `rows_alone` (static): each token's
    result has the same bits whatever T is (decoding and verification need it; prefill
    and whole-sequence scoring may pass False for faster attention over many rows).
    """
    x, cache, _ = run_layers(params, cfg, embed(params, cfg, tokens), positions, cache, route, rows_alone=rows_alone)
    return rms_norm(x, params.final_norm, cfg), cache


def run_layers(params: Params, cfg: ModelConfig, x: jax.Array, positions: jax.Array, cache: KVCache,
               route: jax.Array | None = None, collect: bool = False, rows_alone: bool = True):
    """The layer stack from residual `x` `[B, T, D]` under `route` (as in `forward`).

    Returns (residual after the last layer, `cache` with the new K/V, and with `collect`
    the residual entering every layer `[L, B, T, D]`, else None).
    """
    if route is None:
        route = jnp.ones((cfg.num_layers, 2), bool)
    if route.ndim == 1:
        route = jnp.stack([route, route], axis=-1)
    inv_freq = rope_inv_freq(cfg)
    windows = jnp.asarray(cfg.layer_windows, jnp.int32)
    live = live_rows(positions)  # once per forward, not per layer inside the scan

    def body(carry, xs):
        idx, route_row, window = xs
        out = _layer(cfg, params.layers, idx, window, route_row, *carry, positions, inv_freq, live, rows_alone)
        return out, carry[0] if collect else None

    xs = (jnp.arange(cfg.num_layers), route, windows)
    (x, k, v), streams = jax.lax.scan(body, (x, cache.k, cache.v), xs)
    return x, KVCache(k=k, v=v, lengths=cache.lengths), streams


def logits(params: Params, cfg: ModelConfig, hidden: jax.Array, vocab: int | None = None) -> jax.Array:
    """LM head: hidden `[..., D]` -> float32 logits `[..., V]` (soft-capped if configured).

    `vocab` (static): only the first `vocab` logits, `[..., vocab]`. The CPU kernel then
    reads only those rows of the head (a cheaper drafting step); other layouts compute
    them all and slice."""
    if params.lm_head is None and layout_of(params) == "cpu-kernel":
        out = dense(hidden, OutputMajor(params.embed, kernel=True, rows=vocab), "...d,dv->...v")  # table [V, D]
    elif isinstance(params.lm_head, OutputMajor) and params.lm_head.kernel:
        out = dense(hidden, dataclasses.replace(params.lm_head, rows=vocab), "...d,dv->...v")
    elif params.lm_head is None:
        out = dense(hidden, params.embed, "...d,vd->...v")
    else:
        out = dense(hidden, params.lm_head, "...d,dv->...v")
    out = out[..., :vocab] if vocab is not None and out.shape[-1] != vocab else out
    return _softcap(out.astype(jnp.float32), cfg.final_softcap)
