"""Prefill (plus one token) of a few dev prompts under two or more git revisions, interleaved.

Each revision is exported (`git archive`) to a temporary directory and timed in a
process of its own (its own kernel build), the revisions taking turns for `--rounds`
rounds, so that the machine's drift hits all of them alike. Per process: load the
model, then for each of the first `--limit` prompts `generate(max_new_tokens=1)`
once to compile and twice timed (the faster counts). Prints each round's total and
the mean ratio to the first revision. Usage:

    python benchmarks/revision_ab.py --revisions HEAD~1,HEAD [--model qwen2.5-coder-1.5b]
        [--dtype float32] [--limit 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, sys, time
import viasd_jax
assert viasd_jax.__file__.startswith(sys.argv[1]), viasd_jax.__file__
m = viasd_jax.load(sys.argv[2], dtype=sys.argv[3])
rows = [json.loads(line) for line in open(sys.argv[4])][: int(sys.argv[5])]
total = 0.0
for r in rows:
    viasd_jax.generate(m, r["prompt"], max_new_tokens=1, max_len=1024)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        viasd_jax.generate(m, r["prompt"], max_new_tokens=1, max_len=1024)
        best = min(best, time.perf_counter() - t0)
    total += best
print(json.dumps({"seconds": total}))
"""


def export(revision: str, root: str) -> str:
    """The tree of `revision` under `root`/<revision>; raises on an unknown revision."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], capture_output=True,
                         text=True)
    if sha.returncode != 0:
        raise SystemExit(f"revision_ab: unknown git revision {revision!r}")
    out = os.path.join(root, sha.stdout.strip()[:12])
    os.makedirs(out, exist_ok=True)
    archive = subprocess.run(["git", "archive", sha.stdout.strip()], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--revisions", required=True, help="comma-separated git revisions; the first is the baseline")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", default=os.path.abspath("../shared/data/prompts-dev.jsonl"))
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not os.path.exists(args.prompts):
        raise SystemExit(f"revision_ab: no prompt file at {args.prompts}")
    revisions = args.revisions.split(",")
    times = {r: [] for r in revisions}
    with tempfile.TemporaryDirectory() as root:
        trees = {r: export(r, root) for r in revisions}
        for i in range(args.rounds):
            for r in revisions:
                done = subprocess.run([sys.executable, "-c", CHILD, trees[r], args.model, args.dtype, args.prompts,
                                       str(args.limit)], cwd=trees[r], capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"revision_ab: {r} failed: {done.stderr.strip().splitlines()[-1]}")
                times[r].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
                print(f"round {i + 1} {r:>12}: {times[r][-1]:.2f} s", flush=True)
    base = sum(times[revisions[0]]) / args.rounds
    print(f"\n{args.model} {args.dtype}, prefill + 1 token of {args.limit} prompts, mean of {args.rounds} rounds")
    print("| revision | seconds | speedup over the first |")
    print("|---|---:|---:|")
    for r in revisions:
        mean = sum(times[r]) / args.rounds
        print(f"| {r} | {mean:.2f} | {base / mean:.2f} |")


if __name__ == "__main__":
    main()
