"""Per system of a `viasd bench --json` file: prompts, mean new tokens, and on how many
prompts its tokens equal a reference system's (default: the first system). Usage:

    python benchmarks/same_tokens.py runs/s2-48.json [--reference viasd-ar@...]
"""

from __future__ import annotations

import argparse
import collections
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--reference", default=None, help="a system name as the bench wrote it (default: the first)")
    args = ap.parse_args()
    with open(args.json) as f:
        runs = json.load(f)["runs"]
    tokens = collections.defaultdict(dict)  # system -> prompt id -> tokens
    for r in runs:
        tokens[r["system"]][r["prompt_id"]] = r["tokens"]
    ref = args.reference or next(iter(tokens))
    if ref not in tokens:
        raise SystemExit(f"no system {ref!r} in {args.json}; it has {sorted(tokens)}")
    for system, rows in tokens.items():
        same = sum(rows[p] == tokens[ref].get(p) for p in rows)
        mean = sum(map(len, rows.values())) / len(rows)
        print(f"{system}: {len(rows)} prompts, {mean:.1f} new tokens on average, tokens equal {ref}'s on {same}")


if __name__ == "__main__":
    main()
