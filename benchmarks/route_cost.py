"""Time one decode-step forward (T tokens against the cache) for routes of different sizes.

Shows that a skipped layer costs (nearly) nothing: the time should scale with the
number of kept layers, from one compiled function. Usage:

    python benchmarks/route_cost.py [--target qwen2.5-coder-1.5b] [--tokens 1] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import viasd_jax
from viasd_jax import model as M
from viasd_jax.cache import init_cache, kv_dtype


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    m = viasd_jax.load(args.target)
    cfg, n_layers = m.config, m.config.num_layers

    @partial(jax.jit, donate_argnums=(2,))
    def step(params, tokens, cache, keep):
        pos = jnp.broadcast_to(jnp.arange(100, 100 + tokens.shape[1]), tokens.shape)
        h, cache = M.forward(params, cfg, tokens, pos, cache, keep)
        return M.logits(params, cfg, h[:, -1]), cache

    tokens = jnp.ones((1, args.tokens), jnp.int32)
    cache = init_cache(cfg, 1, args.cache_len, kv_dtype(m.dtype))
    print(f"{'kept layers':>12} {'ms/forward':>11} {'ms/kept layer':>14}")
    for kept in (n_layers, 3 * n_layers // 4, n_layers // 2, n_layers // 4, 1):
        keep = jnp.asarray(np.arange(n_layers) < kept)
        out, cache = step(m.params, tokens, cache, keep)  # compiled once, reused for every route
        jax.block_until_ready(out)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out, cache = step(m.params, tokens, cache, keep)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
        ms = 1000 * float(np.median(times))
        print(f"{kept:>12} {ms:>11.1f} {ms / kept:>14.2f}")
    print(f"compiled programs: {step._cache_size()}")


if __name__ == "__main__":
    main()
