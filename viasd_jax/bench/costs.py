"""The bounds every speedup is read against: pass costs, bandwidth, the decoding floor.

With a drafter costing `c` target forwards per drafted token, a verification pass of
gamma + 1 tokens costing `v` forwards and `tau` tokens committed per round,
speculative decoding gains at most `tau / (gamma * c + v)`. Plain decoding streams
every weight once per token, so `floor = bandwidth / weight bytes per token` is the
fastest it can go on a memory-bound machine.
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax import model as M
from viasd_jax.cache import init_cache, kv_dtype
from viasd_jax.params import leaves_of


@partial(jax.jit, static_argnames=("cfg", "rows_alone"), donate_argnums=(2,))
def _step(params, tokens, cache, route, *, cfg, rows_alone=True):
    pos = jnp.broadcast_to(jnp.arange(64, 64 + tokens.shape[1], dtype=jnp.int32), tokens.shape)
    h, cache = M.forward(params, cfg, tokens, pos, cache, route, rows_alone=rows_alone)
    return M.logits(params, cfg, h[:, -1]), cache


def forward_seconds(model, tokens: int, route=None, repeats: int = 5, cache_len: int = 256,
                    rows_alone: bool = True) -> float:
    """Median wall time of one cached forward of `tokens` new tokens (batch 1) plus the head
    of the last; `rows_alone` as in `model.forward` (False: prefill's batched attention)."""
    cfg = model.config
    route = jnp.ones((cfg.num_layers, 2), bool) if route is None else jnp.asarray(route)
    toks = jnp.ones((1, tokens), jnp.int32)
    cache = init_cache(cfg, 1, cache_len, kv_dtype(model.dtype))
    out, cache = _step(model.params, toks, cache, route, cfg=cfg, rows_alone=rows_alone)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out, cache = _step(model.params, toks, cache, route, cfg=cfg, rows_alone=rows_alone)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def streamed_bytes(model) -> int:
    """Weight bytes one decoding step reads: every layer, the final norm and the head
    (the embedding table only when it is the head)."""
    leaves = leaves_of(model.params)
    skip = {"embed"} if model.params.lm_head is not None else set()
    return int(sum(_nbytes(w) for name, w in leaves.items() if name not in skip))


def _nbytes(w) -> int:
    from viasd_jax.gguf_blocks import BlockWeight

    blocks = getattr(w, "w", None)
    if isinstance(blocks, BlockWeight):  # a mixed stack's slabs are larger than what its layers read
        return blocks.streamed_bytes()
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(w))


@jax.jit
def _read_all(x):
    return jnp.sum(x, dtype=jnp.float32)


def read_bandwidth(gigabytes: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second XLA reads when summing a large float32 buffer (all threads)."""
    x = jnp.ones((int(gigabytes * 2**30) // 4,), jnp.float32)
    jax.block_until_ready(_read_all(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(_read_all(x))
        times.append(time.perf_counter() - t0)
    return x.nbytes / float(np.min(times))


def measure(target, drafter=None, gamma: int = 4, slim_route=None, repeats: int = 5) -> dict:
    """c, v, slim cost, bandwidth and floor for the bench header."""
    t1 = forward_seconds(target, 1, repeats=repeats)
    out = {"target_forward_s": t1, "v": forward_seconds(target, gamma + 1, repeats=repeats) / t1, "gamma": gamma}
    if slim_route is not None:
        out["slim_cost"] = forward_seconds(target, gamma + 1, slim_route, repeats=repeats) / t1
    if drafter is not None:
        out["c"] = forward_seconds(drafter, 1, repeats=repeats) / t1
    bandwidth = read_bandwidth()
    weights = streamed_bytes(target)
    out.update(bandwidth_gbs=bandwidth / 1e9, weight_gb=weights / 1e9, floor_tok_s=bandwidth / weights)
    out.update(_kernel())
    return out


def _kernel() -> dict:
    """The CPU kernel's instruction-set level and whether bfloat16 prefill products run on
    AMX tiles here (both change its speed); nothing where the kernel is unavailable."""
    from viasd_jax import cpu_matvec

    try:
        return {"kernel_level": cpu_matvec.level().name, "amx_bf16": cpu_matvec.amx_bf16()}
    except cpu_matvec.KernelUnavailable:
        return {"amx_bf16": False}
