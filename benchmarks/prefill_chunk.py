"""Prefill seconds of the sd setting over dev prompts, for several prefill chunk sizes.

Sets `generate.PREFILL_CHUNK` to each of `--chunks` in turn and prefills every
`--every`-th dev prompt (target on its GGUF codes with int8 products, int8 bfloat16
drafter, `prefill_dtype="bfloat16"`; one new token each), after a warm-up pass that
compiles each bucket; `--rounds` rounds, the chunk sizes alternating within each. Sums
`GenerateResult.prefill_seconds` (compilation excluded). Usage:

    python benchmarks/prefill_chunk.py [--chunks 64,128,256] [--every 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import importlib
import json

import viasd_jax
from viasd_jax import prompts as P

G = importlib.import_module("viasd_jax.generate")  # the module (the package exports the function)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", default="64,128,256")
    ap.add_argument("--prompts", default="../shared/data/prompts-dev.jsonl")
    ap.add_argument("--every", type=int, default=4, help="every n-th prompt (4: 12 of the 48, all tasks)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    target = viasd_jax.load("qwen2.5-coder-1.5b", quantize="gguf", products="int8")
    drafter = viasd_jax.load("qwen2.5-coder-0.5b", dtype="bfloat16", quantize="int8")
    with open(args.prompts) as f:
        rows = [json.loads(line) for line in f][:: args.every]
    ids = P.encode(target, [r["prompt"] for r in rows], chat_template=True)
    opts = dict(drafter=drafter, mode="sd", prefill_dtype="bfloat16", max_new_tokens=1, chat_template=False)
    for chunk in chunks:  # compile every bucket once per chunk size
        G.PREFILL_CHUNK = chunk
        for p in ids:
            G.generate(target, [p], **opts)
    print(f"{len(ids)} prompts ({sum(map(len, ids))} tokens): prefill seconds by chunk size")
    for r in range(args.rounds):
        for chunk in chunks:
            G.PREFILL_CHUNK = chunk
            total = sum(G.generate(target, [p], **opts).prefill_seconds for p in ids)
            print(f"round {r} chunk {chunk}: {total:.1f} s", flush=True)


if __name__ == "__main__":
    main()
