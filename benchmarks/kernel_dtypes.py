"""The CPU kernel in float32 and bfloat16: bytes streamed per second, and the cost of
a drafter step in each dtype.

Part 1 times `cpu_matvec.matvec` over every layer of a stacked weight shaped like the
real models' largest matrices (Qwen2.5-Coder-1.5B's MLP, 28 x 8960 x 1536, and the
0.5B's, 24 x 4864 x 896) for 1-9 activation rows (best of `--repeats`). Part 2 (with
`--drafter`) times one cached 1-token forward of the drafter in each dtype against the
target's float32 forward: `c`, as the bench header prints it. Usage:

    python benchmarks/kernel_dtypes.py [--rows 1,2,5,9] [--repeats 9]
        [--drafter qwen2.5-coder-0.5b --target qwen2.5-coder-1.5b]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from viasd_jax import cpu_matvec

SHAPES = {"1.5B MLP": (28, 8960, 1536), "0.5B MLP": (24, 4864, 896)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def stream_rate(layers: int, n: int, k: int, rows: int, dtype, repeats: int) -> tuple[float, float]:
    """(seconds, GB/s) for one matvec per layer of a `[layers, n, k]` weight."""
    w = jnp.ones((layers, n, k), dtype)
    x = jnp.ones((rows, k), jnp.float32)
    every_layer = jax.jit(lambda x, w: sum(cpu_matvec.matvec(x, w, i)[0, 0] for i in range(layers)))
    every_layer(x, w).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        every_layer(x, w).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best, w.size * w.dtype.itemsize / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,2,5,9")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--drafter", help="also time this drafter's 1-token forward in each dtype")
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    args = ap.parse_args()

    print("| matrix | rows | float32 ms | float32 GB/s | bfloat16 ms | bfloat16 GB/s | bf16 speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (layers, n, k) in SHAPES.items():
        for rows in (int(r) for r in args.rows.split(",")):
            (t32, g32), (t16, g16) = (stream_rate(layers, n, k, rows, d, args.repeats) for d in DTYPES.values())
            print(f"| {name} | {rows} | {t32 * 1e3:.1f} | {g32:.1f} | {t16 * 1e3:.1f} | {g16:.1f} | {t32 / t16:.2f} |")

    if args.drafter:
        import viasd_jax
        from viasd_jax.bench import costs

        target = viasd_jax.load(args.target)
        t1 = costs.forward_seconds(target, 1, repeats=args.repeats)
        del target
        print(f"\ntarget 1-token forward {t1 * 1e3:.1f} ms")
        for dtype in DTYPES:
            drafter = viasd_jax.load(args.drafter, dtype=dtype)
            d1 = costs.forward_seconds(drafter, 1, repeats=args.repeats)
            print(f"drafter {dtype}: {d1 * 1e3:.1f} ms, c = {d1 / t1:.3f}")
            del drafter


if __name__ == "__main__":
    main()
