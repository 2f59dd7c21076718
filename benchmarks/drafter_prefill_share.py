"""Two checks behind the drafter-prefill decisions in docs/performance.md (2026-12-07).

1. How many prompt tokens a drafter with `draft_context=N` still prefills on the dev
   prompts (the chat template applied), per task and for each N.
2. A replay of a bench JSON: a drafter prefilled only once a request has run K tokens
   would leave requests of at most K tokens at plain decoding's time and cost the others
   K tokens at plain decoding's slower rate; prints that against sd's total time.

    python benchmarks/drafter_prefill_share.py --prompts ../shared/data/prompts-dev.jsonl \
        [--bench runs/epyc-48.json --ar viasd-ar@quantize=gguf --sd SD_SYSTEM_NAME]
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np


def prompt_lengths(path: str):
    import viasd_jax
    from viasd_jax import fetch
    from viasd_jax import prompts as P

    rows = [json.loads(line) for line in open(path)]
    model = viasd_jax.load(str(fetch.ensure_model("qwen2.5-coder-0.5b", progress=False)))
    ids = P.encode(model, P.normalize([r["prompt"] for r in rows]), True)
    count = np.array([len(i) - 1 for i in ids])  # tokens prefill feeds
    print(f"prompt tokens prefilled: mean {count.mean():.0f}, min {count.min()}, max {count.max()}")
    by_task = collections.defaultdict(list)
    for c, r in zip(count, rows):
        by_task[r["task"]].append(c)
    for task, cs in sorted(by_task.items()):
        print(f"  {task}: mean {np.mean(cs):.0f}")
    for n in (32, 64, 128, 256):
        print(f"draft_context={n}: keeps {np.minimum(count, n + 4).sum() / count.sum():.0%} of the drafter's prefill tokens")


def replay(path: str, ar_name: str, sd_name: str):
    runs = json.load(open(path))["runs"]
    ar = {r["prompt_id"]: r for r in runs if r["system"] == ar_name}
    sd = {r["prompt_id"]: r for r in runs if r["system"] == sd_name}
    keys = sorted(ar)
    tokens = sum(ar[k]["new_tokens"] for k in keys)
    ar_s, sd_s = sum(ar[k]["seconds"] for k in keys), sum(sd[k]["seconds"] for k in keys)
    decoding = lambda runs: sum(runs[k]["seconds"] - runs[k]["prefill_seconds"] for k in keys)  # noqa: E731
    per_token_loss = (decoding(ar) - decoding(sd)) / tokens  # plain decoding's extra seconds per token
    print(f"{len(keys)} requests; ar {tokens / ar_s:.2f} tok/s, sd {tokens / sd_s:.2f} tok/s; "
          f"plain decoding {per_token_loss * 1e3:.1f} ms slower per token")
    for k_tokens in (8, 16, 24, 32, 48, 64):
        total = sum(ar[k]["seconds"] if ar[k]["new_tokens"] <= k_tokens else sd[k]["seconds"] + per_token_loss * k_tokens
                    for k in keys)
        print(f"drafter after {k_tokens} tokens: {sd_s / total:.3f}x sd")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="../shared/data/prompts-dev.jsonl")
    ap.add_argument("--bench", help="a bench JSON to replay")
    ap.add_argument("--ar", default="viasd-ar@quantize=gguf")
    ap.add_argument("--sd", default="viasd-sd@quantize=gguf:draft_stop=0.5:drafter_dtype=bfloat16:drafter_quantize=int8")
    args = ap.parse_args()
    prompt_lengths(args.prompts)
    if args.bench:
        replay(args.bench, args.ar, args.sd)


if __name__ == "__main__":
    main()
