"""Fused projections on the CPU kernel: one product over [q; k; v] (and [gate; up])
against three (two) products over the separate matrices, as a model's layers run them.

The issue's lever list names fused QKV and gate/up projections. On XLA's dots (GPU, TPU)
fusing saves launches and lets one larger product fill the machine; on this project's CPU
kernel every product already streams its weights on all threads, so the question is only
what a call and its thread fan-out cost against the bytes. This times, for the real
models' shapes, each group of products separately and as one concatenated matrix, in a
loop over the layers (as `model.forward`'s scan runs them), best of `--repeats`.

    python benchmarks/fused_projections.py --rows 1,5 --dtypes float32,int8 --repeats 15
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from kernel_dtypes import best_seconds  # this directory (the script's own) is on sys.path

from viasd_jax import cpu_matvec

# model: (layers, hidden, q rows, k and v rows each, mlp hidden)
MODELS = {"1.5B": (28, 1536, 1536, 256, 8960), "0.5B": (24, 896, 896, 128, 4864)}


def stack(layers: int, n: int, k: int, dtype, seed: int):
    w = jax.random.normal(jax.random.PRNGKey(seed), (layers, n, k), jnp.float32)
    if dtype == "int8":
        return (jnp.clip(jnp.round(w * 40), -127, 127).astype(jnp.int8), jnp.full((layers, n), 0.01, jnp.float32))
    return w.astype(dtype), None


def layer_seconds(products, x, operands, layers: int, repeats: int) -> float:
    """Best time of running every product of `products` once per layer, layer after layer."""
    def every_layer(x, operands):
        def body(i, s):
            return s + sum(cpu_matvec.matvec(x, w, i, None, scale)[0, 0] for w, scale in products(operands))
        return jax.lax.fori_loop(0, layers, body, 0.0)

    return best_seconds(jax.jit(every_layer), x, operands, repeats=repeats)


def compare(layers: int, k: int, sizes: list[int], dtype, rows: int, repeats: int) -> tuple[float, float]:
    """(separate seconds, fused seconds) for matrices of `sizes` output rows over `k`."""
    parts = [stack(layers, n, k, dtype, seed) for seed, n in enumerate(sizes)]
    fused = (jnp.concatenate([w for w, _ in parts], axis=1),
             None if parts[0][1] is None else jnp.concatenate([s for _, s in parts], axis=1))
    x = jnp.ones((rows, k), jnp.float32)
    separate = layer_seconds(lambda ops: ops, x, parts, layers, repeats)
    together = layer_seconds(lambda ops: [ops], x, fused, layers, repeats)
    return separate, together


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,5", help="activation rows (1: a decoding step; 5: a window of gamma 4)")
    ap.add_argument("--dtypes", default="float32,int8", help="weight dtypes: float32, bfloat16, int8")
    ap.add_argument("--models", default="1.5B,0.5B")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "int8": "int8"}
    print("| model | projections | weights | rows | separate ms | fused ms | fused speedup "
          "| share of a layer's bytes |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        layers, d, q, kv, f = MODELS[model]
        layer_weights = d * (q + 2 * kv) + q * d + 3 * d * f
        for label, sizes in (("q, k, v", [q, kv, kv]), ("gate, up", [f, f])):
            for dtype in args.dtypes.split(","):
                for rows in map(int, args.rows.split(",")):
                    a, b = compare(layers, d, sizes, dtypes[dtype], rows, args.repeats)
                    share = d * sum(sizes) / layer_weights
                    print(f"| {model} | {label} | {dtype} | {rows} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f}x "
                          f"| {share:.2f} |", flush=True)


if __name__ == "__main__":
    main()
