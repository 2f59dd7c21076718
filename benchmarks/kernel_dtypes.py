"""The CPU kernel per dtype: bytes streamed per second, and the cost of drafter passes.

Part 1 times `cpu_matvec.matvec` over every layer of a stacked weight shaped like the
real models' largest matrices (Qwen2.5-Coder-1.5B's MLP, 28 x 8960 x 1536, and the
0.5B's, 24 x 4864 x 896) for a few activation-row counts (best of `--repeats`), in
eleven kernel paths: float32; bfloat16 weights widened against float32 activations;
bfloat16 weights and activations (the dot-product path a bfloat16 model takes); int8
weights (per-row scales) against float32 activations; int8 weights against bfloat16
activations (converted to bfloat16 for the dot product); GGUF k-quant codes against
float32 activations (`matvec_blocks`), two per byte (Q4_K, 0.75 bytes per weight with
their scales and mins) and one per byte (Q6_K, 1.25 bytes per weight with their scales).
Two more multiply the codes by activations quantized to int8 (`products="int8"`), and
the last float32 weights with both operands rounded to bfloat16 (`products="bfloat16"`,
prefill's option: the pair path of `run_pairs` where the CPU has AVX-512 BF16 but no AMX),
and "f32 along k" float32 weights as float32 prefill multiplies them (`products="float32"`:
each output summed along k in one lane, on more than 9 rows).
GB/s counts the bytes each path streams (codes, scales and mins included). `--peers`
times torch's bfloat16 and numpy's float32 products of the same shape for comparison.
Part 2 (with `--gguf`) times the target's cached forwards of `--tokens` new tokens as
float32, as its GGUF codes (`load(..., quantize="gguf")`, the same outputs), both also
summed along k as float32 prefill multiplies them (`layout.summed_along_k`), and as
its codes against int8-quantized activations (`products="int8"`, lossy) and with both
operands rounded to bfloat16 (`products="bfloat16"`, what `prefill_dtype="bfloat16"`
does in prefill; lossy), with the
arithmetic rate of the layers' matrix products (2 flops per weight and token; with
`--prefill`, prompt chunks as prefill runs them).
Part 3 (with `--drafter`) times cached forwards of `--tokens` new tokens (1: a
drafting step, 5: catch-up, 64: a prefill chunk) of the drafter in each dtype (and
int8 over bfloat16, GGUF codes, 4-bit codes made at load) against the target's 1-token
forward (float32 unless `--target-quantize` / `--target-products`): for 1 token, `c` as
the bench header prints it.
Usage:

    python benchmarks/kernel_dtypes.py [--rows 1,2,5,9,64] [--repeats 9] [--peers]
        [--gguf [--prefill]] [--drafter qwen2.5-coder-0.5b --target qwen2.5-coder-1.5b --tokens 1,5,64]
        [--drafter-kinds "int8 over bfloat16,q4 codes x int8" --target-quantize gguf --target-products int8]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

from viasd_jax import cpu_matvec

SHAPES = {"1.5B MLP": (28, 8960, 1536), "0.5B MLP": (24, 4864, 896)}
PATHS = {  # name: (weight dtype, activation dtype)
    "float32": (jnp.float32, jnp.float32),
    "bf16 w": (jnp.bfloat16, jnp.float32),
    "bf16 w+x": (jnp.bfloat16, jnp.bfloat16),
    "int8 w": (jnp.int8, jnp.float32),
    "int8 w bf16 x": (jnp.int8, jnp.bfloat16),
    "gguf nibbles": ("nibbles", jnp.float32),
    "gguf bytes": ("bytes", jnp.float32),
    "gguf nibbles x int8": ("nibbles", "int8"),
    "gguf bytes x int8": ("bytes", "int8"),
    "bf16 products": (jnp.float32, "bf16 products"),  # float32 w as prefill_dtype="bfloat16" multiplies it
    "f32 along k": (jnp.float32, "f32 along k"),  # float32 w as float32 prefill multiplies it (products="float32")
}
DRAFTERS = {"float32": dict(dtype="float32"), "bfloat16": dict(dtype="bfloat16"),
            "int8 over bfloat16": dict(dtype="bfloat16", quantize="int8"), "gguf codes": dict(quantize="gguf"),
            "gguf codes x int8": dict(quantize="gguf", products="int8"), "q4 codes": dict(quantize="q4"),
            "q4 codes x int8": dict(quantize="q4", products="int8")}


def weights_and_product(layers: int, n: int, k: int, w_dtype, x_dtype):
    """(weight operands, `product(x, w, layer)`, bytes streamed per pass over all layers)."""
    if w_dtype in ("nibbles", "bytes"):
        from viasd_jax.gguf_blocks import KINDS, BlockWeight

        q4 = w_dtype == "nibbles"
        sub = 32 if q4 else 16
        w = BlockWeight(jnp.full((layers, n, k // 2 if q4 else k), 7, jnp.uint8), jnp.ones((layers, n, k // sub)),
                        jnp.ones((layers, n, k // sub)) if q4 else jnp.zeros((0,)),
                        jnp.full((layers,), KINDS["Q4_K" if q4 else "Q6_K"], jnp.int32), (layers, n, k), k)
        products = "int8" if x_dtype == "int8" else None
        return (w, lambda x, w, i: cpu_matvec.matvec_blocks(x, w, i, products=products),
                sum(a.nbytes for a in jax.tree.leaves(w)))
    w = jnp.ones((layers, n, k), w_dtype)
    scale = jnp.ones((layers, n), jnp.float32) if w_dtype == jnp.int8 else None
    products = {"bf16 products": "bfloat16", "f32 along k": "float32"}.get(x_dtype)
    return (w, lambda x, w, i: cpu_matvec.matvec(x, w, i, None, scale, products=products),
            w.nbytes + (scale.nbytes if scale is not None else 0))


def best_seconds(run, *args, repeats: int) -> float:
    """Best wall time of `run(*args)` over `repeats` calls, after one call to compile it."""
    run(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(*args).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def stream_rate(layers: int, n: int, k: int, rows: int, dtypes, repeats: int) -> tuple[float, float]:
    """(seconds, GB/s) for one matvec per layer of a `[layers, n, k]` weight, one after
    another as a model's layers run (a loop: independent products in straight-line code
    would run side by side on XLA's threads, each then on one thread)."""
    w_dtype, x_dtype = dtypes
    w, product, nbytes = weights_and_product(layers, n, k, w_dtype, x_dtype)
    x = jnp.ones((rows, k), jnp.float32 if x_dtype in ("int8", "bf16 products", "f32 along k") else x_dtype)
    every_layer = jax.jit(lambda x, w: jax.lax.fori_loop(0, layers, lambda i, s: s + product(x, w, i)[0, 0], 0.0))
    best = best_seconds(every_layer, x, w, repeats=repeats)
    return best, nbytes / best / 1e9


def peer_rates(rows: int, n: int, k: int, repeats: int) -> None:
    """GFLOP/s of one `[rows, k] x [k, n]` product in torch (bfloat16; oneDNN on CPU) and
    numpy (float32; its BLAS) on this process's threads: what the CPU gives libraries."""
    import numpy as np
    import torch

    def best(f):
        f()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return 2 * rows * n * k / min(times) / 1e9

    a, b = torch.rand(rows, k, dtype=torch.bfloat16), torch.rand(k, n, dtype=torch.bfloat16)
    x, w = np.random.rand(rows, k).astype(np.float32), np.random.rand(k, n).astype(np.float32)
    print(f"\npeers, [{rows}, {k}] x [{k}, {n}] on {torch.get_num_threads()} torch threads: torch bfloat16 "
          f"{best(lambda: a @ b):.0f} GFLOP/s, numpy float32 {best(lambda: x @ w):.0f} GFLOP/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,2,5,9,64")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--paths", default=",".join(PATHS), help="kernel paths to time (comma-separated)")
    ap.add_argument("--gguf", action="store_true", help="also time the target's forwards as float32 and GGUF codes")
    ap.add_argument("--prefill", action="store_true", help="with --gguf: prefill's batched attention (else rows alone)")
    ap.add_argument("--drafter", help="also time this drafter's forwards in each dtype")
    ap.add_argument("--drafter-kinds", default=",".join(DRAFTERS), help="drafter dtypes to time (comma-separated)")
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--target-quantize", default=None, help="the target that drafter costs divide by (e.g. gguf)")
    ap.add_argument("--target-products", default=None, help="its products (e.g. int8, with --target-quantize gguf)")
    ap.add_argument("--tokens", default="1,5,64", help="new tokens per timed drafter forward")
    ap.add_argument("--peers", action="store_true",
                    help="also time torch's bfloat16 and numpy's float32 product of the 1.5B MLP's shape at each --rows")
    args = ap.parse_args()

    names = args.paths.split(",")
    print("| matrix | rows | " + " | ".join(f"{p} ms | {p} GB/s" for p in names)
          + " | " + " | ".join(f"{p} speedup" for p in names[1:]) + " |")
    print("|---|---:|" + "---:|" * (3 * len(names) - 1))
    for name, (layers, n, k) in SHAPES.items():
        for rows in (int(r) for r in args.rows.split(",")):
            got = [stream_rate(layers, n, k, rows, PATHS[p], args.repeats) for p in names]
            cells = " | ".join(f"{t * 1e3:.1f} | {g:.1f}" for t, g in got)
            ratios = " | ".join(f"{got[0][0] / t:.2f}" for t, _ in got[1:])
            print(f"| {name} | {rows} | {cells} | {ratios} |")

    if args.peers:
        for rows in (int(r) for r in args.rows.split(",")):
            _, n, k = SHAPES["1.5B MLP"]
            peer_rates(rows, n, k, args.repeats)

    import viasd_jax
    from viasd_jax.bench import costs
    from viasd_jax.layout import summed_along_k

    if args.gguf:
        print("\n| target | new tokens | ms | vs float32 | layer GFLOP/s |")
        print("|---|---:|---:|---:|---:|")
        times = {}
        for label, quantize, products in (("float32", None, None), ("float32, summed along k", None, "float32"),
                                          ("gguf codes", "gguf", None),
                                          ("gguf codes, summed along k", "gguf", "float32"),
                                          ("gguf codes, int8 products", "gguf", "int8"),
                                          ("gguf codes, bfloat16 products", "gguf", "bfloat16")):
            if products == "float32":  # what float32 prefill multiplies with (decode._prefill_products)
                target = viasd_jax.load(args.target, quantize=quantize)
                target = dataclasses.replace(target, params=summed_along_k(target.params))
            else:
                target = viasd_jax.load(args.target, quantize=quantize, products=products)
            if label == "float32":  # weights the layers multiply per token (the head only for the last)
                layer_weights = sum(x.size for x in jax.tree.leaves(target.params.layers))
            for tokens in (int(t) for t in args.tokens.split(",")):
                times[label, tokens] = t = costs.forward_seconds(target, tokens, repeats=args.repeats,
                                                                 cache_len=max(256, 2 * tokens),
                                                                 rows_alone=not args.prefill)
                print(f"| {label} | {tokens} | {t * 1e3:.1f} | {times['float32', tokens] / t:.2f} | "
                      f"{2 * layer_weights * tokens / t / 1e9:.0f} |", flush=True)
            del target

    if args.drafter:
        target = viasd_jax.load(args.target, quantize=args.target_quantize, products=args.target_products)
        t1 = costs.forward_seconds(target, 1, repeats=args.repeats)
        del target
        print(f"\ntarget (quantize {args.target_quantize}, products {args.target_products}) 1-token forward "
              f"{t1 * 1e3:.1f} ms")
        print("| drafter dtype | new tokens | ms | in target 1-token forwards |")
        print("|---|---:|---:|---:|")
        for dtype in args.drafter_kinds.split(","):
            drafter = viasd_jax.load(args.drafter, **DRAFTERS[dtype])
            for tokens in (int(t) for t in args.tokens.split(",")):
                d = costs.forward_seconds(drafter, tokens, repeats=args.repeats)
                print(f"| {dtype} | {tokens} | {d * 1e3:.1f} | {d / t1:.3f} |")
            del drafter


if __name__ == "__main__":
    main()
