"""Weight layouts compared: one forward of T tokens on the real target.

Loads the target once (input-major), times a full forward (T tokens against a
512-slot cache, median of `--repeats`) for each T, then converts the same params to
each other layout of `--layouts` (`viasd_jax.layout`) and times them again; prints
each layout's time, its speedup over input-major and the largest logit difference.
Usage:

    python benchmarks/layout_cost.py [--target qwen2.5-coder-1.5b] [--tokens 1,5,9,64]
        [--layouts output-major,cpu-kernel]
"""

from __future__ import annotations

import argparse
import gc
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import viasd_jax
from viasd_jax import layout as LY
from viasd_jax import model as M
from viasd_jax.cache import init_cache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tokens", default="1,5,9,64")
    ap.add_argument("--layouts", default="output-major,cpu-kernel")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    m = viasd_jax.load(args.target)
    cfg, widths = m.config, [int(t) for t in args.tokens.split(",")]

    @partial(jax.jit, donate_argnums=(2,))
    def step(params, tokens, cache):
        pos = jnp.broadcast_to(jnp.arange(100, 100 + tokens.shape[1]), tokens.shape)
        h, cache = M.forward(params, cfg, tokens, pos, cache)
        return M.logits(params, cfg, h[:, -1]), cache

    def time_forward(params, width):
        tokens, cache = jnp.ones((1, width), jnp.int32), init_cache(cfg, 1, 512, jnp.float32)
        out, cache = step(params, tokens, cache)
        jax.block_until_ready(out)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out, cache = step(params, tokens, cache)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times)), np.asarray(out)

    base = {t: time_forward(m.params, t) for t in widths}
    print(f"{'layout':>13} {'tokens':>6} {'ms':>8} {'vs input-major':>15} {'max |dlogit|':>13}")
    for t in widths:
        print(f"{'input-major':>13} {t:>6} {base[t][0]:>8.0f} {1.0:>15.2f} {0.0:>13.1e}")
    for layout in args.layouts.split(","):
        params = LY.apply(m.params, cfg, layout)
        for t in widths:
            ms, out = time_forward(params, t)
            print(f"{layout:>13} {t:>6} {ms:>8.0f} {base[t][0] / ms:>15.2f} {np.abs(out - base[t][1]).max():>13.1e}",
                  flush=True)
        del params
        gc.collect()


if __name__ == "__main__":
    main()
