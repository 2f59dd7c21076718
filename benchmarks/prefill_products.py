"""Prefill-sized forwards with `products="bfloat16"`, AMX tiles against the dot-product path.

Times one cached forward of `--tokens` new tokens with prefill's batched attention
(`costs.forward_seconds`, median of `--repeats`) of a real model whose matrices
multiply in bfloat16, once per process with
`VIASD_AMX=0` (the dot-product path) and once without (AMX tiles where the CPU has
them), the two alternating for `--rounds` rounds. Usage:

    python benchmarks/prefill_products.py [--model qwen2.5-coder-1.5b --quantize gguf]
        [--model qwen2.5-coder-0.5b --dtype bfloat16 --quantize int8] [--tokens 64,256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys


def measure(args) -> None:
    import viasd_jax
    from viasd_jax import cpu_matvec
    from viasd_jax import layout as LY
    from viasd_jax.bench import costs

    m = viasd_jax.load(args.model, dtype=args.dtype, quantize=args.quantize)
    m = dataclasses.replace(m, params=LY.with_products(m.params, "bfloat16"))
    times = [f"{t}:{costs.forward_seconds(m, t, repeats=args.repeats, cache_len=512, rows_alone=False) * 1e3:.0f}"
             for t in map(int, args.tokens.split(","))]
    print(f"amx={cpu_matvec.amx_bf16()} " + " ".join(times), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quantize", default="gguf")
    ap.add_argument("--tokens", default="64,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return measure(args)
    print(f"{args.model} dtype={args.dtype} quantize={args.quantize}, products=bfloat16: forward ms by new tokens")
    for _ in range(args.rounds):
        for amx in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child"], capture_output=True, text=True,
                                 env={**os.environ, "VIASD_AMX": amx}, check=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
