"""Generation of a few dev prompts under two or more git revisions, interleaved.

Each revision is exported (`git archive`) to a temporary directory and timed in a
process of its own (its own kernel build), the revisions taking turns for `--rounds`
rounds, so that the machine's drift hits all of them alike. Per process: load the
model (and `--drafter`, in `--drafter-dtype`, int8 with `--drafter-quantize`), then for
each of the first `--limit` prompts `generate(max_new_tokens=--new-tokens)` (plain
decoding, or sd with the drafter) once to compile and twice timed (the faster counts).
Prints each round's total and decoding seconds and the mean ratios to the first
revision. The default, one new token, times prefill. Usage:

    python benchmarks/revision_ab.py --revisions HEAD~1,HEAD [--model qwen2.5-coder-1.5b]
        [--dtype float32] [--quantize gguf] [--limit 4] [--rounds 2] [--new-tokens 1]
        [--drafter qwen2.5-coder-0.5b --drafter-dtype bfloat16 --drafter-quantize int8]
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
a = json.loads(sys.argv[1])
assert viasd_jax.__file__.startswith(a["tree"]), viasd_jax.__file__
m = viasd_jax.load(a["model"], dtype=a["dtype"], **({"quantize": a["quantize"]} if a["quantize"] else {}))
kw = dict(max_new_tokens=a["new_tokens"], max_len=1024)
if a["drafter"]:
    load = dict(dtype=a["drafter_dtype"], **({"quantize": a["drafter_quantize"]} if a["drafter_quantize"] else {}))
    kw.update(drafter=viasd_jax.load(a["drafter"], **load), mode="sd")
rows = [json.loads(line) for line in open(a["prompts"])][: a["limit"]]
total = decode = 0.0
for r in rows:
    viasd_jax.generate(m, r["prompt"], **kw)
    best = None
    for _ in range(2):
        t0 = time.perf_counter()
        out = viasd_jax.generate(m, r["prompt"], **kw)
        t = time.perf_counter() - t0
        if best is None or t < best[0]:
            best = (t, out.seconds - out.compile_seconds - out.prefill_seconds)
    total += best[0]
    decode += best[1]
print(json.dumps({"seconds": total, "decode": decode}))
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
    ap.add_argument("--quantize", choices=["int8", "gguf"], default=None, help="the target's quantize (gguf: its codes)")
    ap.add_argument("--prompts", default=os.path.abspath("../shared/data/prompts-dev.jsonl"))
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=1)
    ap.add_argument("--drafter", help="time sd with this drafter instead of plain decoding")
    ap.add_argument("--drafter-dtype", default="bfloat16")
    ap.add_argument("--drafter-quantize", choices=["int8"], default=None)
    args = ap.parse_args()
    if not os.path.exists(args.prompts):
        raise SystemExit(f"revision_ab: no prompt file at {args.prompts}")
    revisions = args.revisions.split(",")
    times = {r: [] for r in revisions}
    decode = {r: [] for r in revisions}
    with tempfile.TemporaryDirectory() as root:
        trees = {r: export(r, root) for r in revisions}
        for i in range(args.rounds):
            for r in revisions:
                child = dict(tree=trees[r], model=args.model, dtype=args.dtype, quantize=args.quantize,
                             prompts=args.prompts,
                             limit=args.limit, new_tokens=args.new_tokens, drafter=args.drafter,
                             drafter_dtype=args.drafter_dtype, drafter_quantize=args.drafter_quantize)
                done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child)], cwd=trees[r],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"revision_ab: {r} failed: {done.stderr.strip().splitlines()[-1]}")
                got = json.loads(done.stdout.strip().splitlines()[-1])
                times[r].append(got["seconds"])
                decode[r].append(got["decode"])
                print(f"round {i + 1} {r:>12}: {times[r][-1]:.2f} s, decoding {decode[r][-1]:.2f} s", flush=True)
    mean = {r: sum(times[r]) / args.rounds for r in revisions}
    mean_decode = {r: sum(decode[r]) / args.rounds for r in revisions}
    what = f"sd with {args.drafter}" if args.drafter else "plain decoding"
    print(f"\n{args.model} {args.dtype}{' as ' + args.quantize if args.quantize else ''}, {what}, {args.new_tokens} new token(s) of {args.limit} prompts, "
          f"mean of {args.rounds} rounds")
    print("| revision | seconds | speedup over the first | decoding seconds | decoding speedup |")
    print("|---|---:|---:|---:|---:|")
    first = revisions[0]
    for r in revisions:
        print(f"| {r} | {mean[r]:.2f} | {mean[first] / mean[r]:.2f} | {mean_decode[r]:.2f} | "
              f"{mean_decode[first] / max(mean_decode[r], 1e-9):.2f} |")


if __name__ == "__main__":
    main()
