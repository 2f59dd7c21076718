"""Prefill cost: one forward over the prompt's power-of-two bucket vs chunks of 64.

Times `generate(..., max_new_tokens=1)` (prefill plus one decode forward) on the real
target for the first `--limit` dev prompts, once with `PREFILL_CHUNK` set past any
bucket (the old single forward) and once with the default chunk; prints both and
their ratio. Usage:

    python benchmarks/prefill_cost.py [--target qwen2.5-coder-1.5b] [--layout cpu-kernel] [--limit 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import viasd_jax
from viasd_jax import prompts as P


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--layout", default="cpu-kernel")
    ap.add_argument("--prompts", default="../shared/data/prompts-dev.jsonl")
    ap.add_argument("--limit", type=int, default=4)
    args = ap.parse_args()
    gen = sys.modules["viasd_jax.generate"]
    m = viasd_jax.load(args.target, layout=args.layout)
    rows = [json.loads(line) for line in open(args.prompts)][: args.limit]
    default = gen.PREFILL_CHUNK
    print(f"{'task':>14} {'tokens':>6} {'bucket s':>9} {'chunked s':>9} {'ratio':>6}")
    for r in rows:
        n = len(P.encode(m, [r["prompt"]])[0])
        secs = {}
        for chunk in (1 << 20, default):
            gen.PREFILL_CHUNK = chunk
            viasd_jax.generate(m, r["prompt"], max_new_tokens=1, max_len=1024)  # compile
            t0 = time.perf_counter()
            viasd_jax.generate(m, r["prompt"], max_new_tokens=1, max_len=1024)
            secs[chunk] = time.perf_counter() - t0
        old, new = secs[1 << 20], secs[default]
        print(f"{r['task']:>14} {n:>6} {old:>9.2f} {new:>9.2f} {old / new:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
