"""How much of a bench run's output lies at or above given token ids: what a drafter
limited to the first K ids (`draft_vocab=K`) could never propose. Special tokens (ids
from `--special-from`, Qwen's end-of-turn among them) are counted apart. Usage:

    python benchmarks/token_ids.py runs/gguf-48.json --system viasd-ar@quantize=gguf \
        [--limits 32768,65536,100000] [--special-from 151643]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="a bench --json report")
    p.add_argument("--system", default="viasd-ar", help="whose generated tokens to count")
    p.add_argument("--limits", default="16384,32768,49152,65536,81920,100000")
    p.add_argument("--special-from", type=int, default=151643, help="ids from here on are special tokens")
    args = p.parse_args()
    with open(args.report) as f:
        runs = [r for r in json.load(f)["runs"] if r["system"] == args.system]
    if not runs:
        raise SystemExit(f"{args.report}: no runs of system {args.system!r}")
    tokens = np.array([t for r in runs for t in r["tokens"]])
    plain = tokens[tokens < args.special_from]
    print(f"{args.system}: {len(runs)} runs, {len(tokens)} tokens, {len(tokens) - len(plain)} special")
    for k in (int(x) for x in args.limits.split(",")):
        print(f"ids >= {k:6d}: {(plain >= k).mean():.2%} of the other tokens")


if __name__ == "__main__":
    main()
