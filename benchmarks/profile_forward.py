"""Where a cached forward's time goes, per XLA op, from a `jax.profiler` trace.

Times one cached forward of `--tokens` new tokens (batch 1, plus the LM head, as the
bench's cost header does) of `--model` in `--dtype`, traces `--repeats` more, and
prints the ops with the most total time on the host threads (XLA's CPU ops and the
kernel's FFI calls). Usage:

    python benchmarks/profile_forward.py --model qwen2.5-coder-1.5b --dtype bfloat16 [--quantize gguf] [--tokens 1] [--products bfloat16] [--prefill] \
        [--cache-len 256]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import re
import tempfile

import jax
import jax.numpy as jnp

import viasd_jax
from viasd_jax import layout as LY
from viasd_jax.bench.costs import _step
from viasd_jax.cache import init_cache, kv_dtype


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cache-dtype", default=None, help="the KV cache's dtype (default: cache.kv_dtype's choice)")
    ap.add_argument("--quantize", default=None, help="int8, or gguf (the target's own GGUF codes)")
    ap.add_argument("--products", default=None, help="bfloat16: the kernel's products as prefill multiplies them")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--prefill", action="store_true", help="prefill's batched attention (else each row alone)")
    ap.add_argument("--cache-len", type=int, default=256, help="cache slots (attention reads them all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()

    model = viasd_jax.load(args.model, dtype=args.dtype, quantize=args.quantize)
    if args.products:
        model = dataclasses.replace(model, params=LY.with_products(model.params, args.products))
    cfg = model.config
    route = jnp.ones((cfg.num_layers, 2), bool)
    toks = jnp.ones((1, args.tokens), jnp.int32)
    cache = init_cache(cfg, 1, args.cache_len, args.cache_dtype or kv_dtype(model.dtype))
    out, cache = _step(model.params, toks, cache, route, cfg=cfg, rows_alone=not args.prefill)
    jax.block_until_ready(out)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(args.repeats):
                out, cache = _step(model.params, toks, cache, route, cfg=cfg, rows_alone=not args.prefill)
                jax.block_until_ready(out)
        trace = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(trace)
    per_kind = collections.defaultdict(float)  # self time (children on the same line subtracted)
    for plane in data.planes:
        for line in plane.lines:
            stack = []  # (end_ns, kind) of the enclosing events
            for ev in sorted(line.events, key=lambda e: (e.start_ns, -e.duration_ns)):
                while stack and stack[-1][0] <= ev.start_ns:
                    stack.pop()
                kind = _kind(ev.name)
                if stack:
                    per_kind[stack[-1][1]] -= ev.duration_ns
                per_kind[kind] += ev.duration_ns
                stack.append((ev.start_ns + ev.duration_ns, kind))
    ops = {k: v for k, v in per_kind.items() if not k.startswith(("$", "ThunkExecutor"))}
    total = sum(ops.values())
    print(f"{args.model} {args.dtype} (cache {cache.k.dtype}), {args.tokens} token(s), {args.repeats} forwards; "
          f"XLA op self time summed over threads {total / 1e6 / args.repeats:.1f} ms per forward")
    print("| op kind | ms per forward | share |")
    print("|---|---:|---:|")
    for name, ns in sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {name} | {ns / 1e6 / args.repeats:.2f} | {ns / total:.1%} |")


def _kind(name: str) -> str:
    """`ffi_call.12` -> `ffi_call` (the kernel), `fusion.3.clone` -> `fusion`."""
    return re.sub(r"(\.\d+|\.clone)+$", "", name)


if __name__ == "__main__":
    main()
