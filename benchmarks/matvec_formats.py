"""Weight formats on XLA's CPU backend: how fast does a layer stack stream its weights?

Multiplies T activation rows through a stack of L matrices [D, F] inside `lax.scan`
(as the model does) for several weight formats and matmul formulations, and prints
the effective weight bandwidth (weight bytes / second). Usage:

    python benchmarks/matvec_formats.py [--layers 28 --d 1536 --f 8960 --tokens 1]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def bench(fn, *args, repeats=5):
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--f", type=int, default=8960)
    ap.add_argument("--tokens", type=int, default=1)
    args = ap.parse_args()
    L, D, F, T = args.layers, args.d, args.f, args.tokens
    rng = np.random.default_rng(0)
    w32 = jnp.asarray(rng.standard_normal((L, D, F), np.float32) * 0.02)
    x = jnp.asarray(rng.standard_normal((T, D), np.float32))
    scale = jnp.max(jnp.abs(w32), axis=1, keepdims=True) / 127.0  # per output channel
    w8 = jnp.round(w32 / scale).astype(jnp.int8)
    wbf = w32.astype(jnp.bfloat16)
    wbits = jax.lax.bitcast_convert_type(wbf, jnp.uint16)

    def bf16_bits_to_f32(bits):  # bf16 is the top half of an f32: widen as an integer, shift
        return jax.lax.bitcast_convert_type(bits.astype(jnp.uint32) << 16, jnp.float32)

    # Output-major copies ([L, F, D]): a matrix-vector product becomes a reduction over
    # the contiguous minor axis, which XLA emits as a vectorized, multi-threaded loop.
    w32_t = jnp.swapaxes(w32, 1, 2)
    w8_t = jnp.swapaxes(w8, 1, 2)
    wbits_t = jnp.swapaxes(wbits, 1, 2)
    scale_t = jnp.swapaxes(scale, 1, 2)

    def rowdot(x, w):  # x [T, D], w [F, D] -> [T, F]
        return jnp.sum(x[:, None, :] * w[None], axis=-1)

    def stack(step):
        @jax.jit
        def run(w, s):
            def body(acc, i):
                y = step(x, w[i], s[i])  # [T, F]
                # every output feeds the carry through a nonlinearity, so XLA cannot
                # slice the product down to the columns a cheaper consumer would read
                return acc + jnp.sum(jnp.tanh(y), axis=-1, keepdims=True), None
            out, _ = jax.lax.scan(body, jnp.zeros((T, D), jnp.float32), jnp.arange(L))
            return out
        return run

    variants = {
        "f32 dot": (stack(lambda x, w, s: x @ w), w32),
        "bf16 dot (f32 acc)": (stack(lambda x, w, s: jnp.dot(x.astype(jnp.bfloat16), w,
                                                              preferred_element_type=jnp.float32)), wbf),
        "bf16 upcast then dot": (stack(lambda x, w, s: x @ w.astype(jnp.float32)), wbf),
        "bf16 mul+reduce": (stack(lambda x, w, s: jnp.sum(x[:, :, None] * w.astype(jnp.float32)[None], 1)), wbf),
        "bf16 bits widened, dot": (stack(lambda x, w, s: x @ bf16_bits_to_f32(w)), wbits),
        "int8 upcast then dot": (stack(lambda x, w, s: (x @ w.astype(jnp.float32)) * s), w8),
        "int8 mul+reduce": (stack(lambda x, w, s: jnp.sum(x[:, :, None] * w.astype(jnp.float32)[None], 1) * s), w8),
        "f32 x @ W^T (W^T stored)": (stack(lambda x, w, s: x @ w.T), w32_t),
        "f32 dot_general(W^T, x)": (stack(lambda x, w, s: jax.lax.dot_general(w, x, (((1,), (1,)), ((), ()))).T),
                                    w32_t),
        "f32 row-reduce (W^T)": (stack(lambda x, w, s: rowdot(x, w)), w32_t),
        "bf16 bits row-reduce (W^T)": (stack(lambda x, w, s: rowdot(x, bf16_bits_to_f32(w))), wbits_t),
        "int8 row-reduce (W^T)": (stack(lambda x, w, s: rowdot(x, w.astype(jnp.float32)) * s[:, 0][None]), w8_t),
    }
    ref = None
    print(f"L={L} D={D} F={F} T={T}")
    print(f"{'format':<24} {'ms':>8} {'GB/s of weights':>16} {'max rel err':>12}")
    for name, (fn, w) in variants.items():
        s = scale if w.dtype == jnp.int8 else jnp.ones_like(scale)
        if "W^T" in name:
            s = scale_t if w.dtype == jnp.int8 else jnp.ones_like(scale_t)
        if "mul+reduce" in name and args.tokens == 1:
            continue  # pathologically slow at T=1 (seconds); see docs/performance.md
        sec, out = bench(fn, w, s)
        ref = out if ref is None else ref
        err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
        gbs = w.size * w.dtype.itemsize / sec / 1e9
        print(f"{name:<24} {sec * 1e3:>8.1f} {gbs:>16.1f} {err:>12.2e}")


if __name__ == "__main__":
    main()
