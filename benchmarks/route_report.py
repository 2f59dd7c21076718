"""Compare calibrated routes with naive ones on held-out dev prompts (issue 4's report).

Calibration text: the target's own greedy continuations of the packaged calibration
prompts. Evaluation text: its continuations of dev prompts (never used to calibrate).
For each skip ratio x method (greedy, gates, random) plus the naive routes of the same
size (evenly spread, first-k), prints KL(full || slim) and top-1 agreement on the
evaluation text, and writes the routes and a table. Usage:

    python benchmarks/route_report.py --out runs/routes [--ratios 0.25,0.35,0.45,0.55]
        [--methods greedy,gates,random] [--calib-prompts 8] [--eval-prompts 6] [--new-tokens 24]

Each route lands in OUT/<method>-<ratio>.json, usable as `--route` anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import viasd_jax
from viasd_jax import routing as R
from viasd_jax.bench.runner import read_prompts
from viasd_jax.route import Route, as_route, default_route


def naive_routes(cfg, ratio: float) -> dict[str, Route]:
    """Whole-layer routes skipping round(ratio * L) layers, first and last kept."""
    n = cfg.num_layers
    skip = int(round(ratio * n))
    inner = np.arange(1, n - 1)
    spread = set(inner[np.round(np.linspace(0, len(inner) - 1, skip)).astype(int)].tolist())
    first_k = n - skip  # keep layers 0..first_k-2 and the last one
    return {
        "evenly-spread": Route.layers([i for i in range(n) if i not in spread], n, method="evenly-spread"),
        "first-k": Route.layers(list(range(first_k - 1)) + [n - 1], n, method="first-k"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dev-prompts", default="../shared/data/prompts-dev.jsonl")
    ap.add_argument("--ratios", default="0.25,0.35,0.45,0.55")
    ap.add_argument("--methods", default="greedy,gates,random")
    ap.add_argument("--granularity", default="layer", choices=R.GRANULARITIES)
    ap.add_argument("--calib-prompts", type=int, default=8)
    ap.add_argument("--eval-prompts", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--gate-steps", type=int, default=12)
    ap.add_argument("--gate-lr", type=float, default=0.2)
    ap.add_argument("--random-trials", type=int, default=8)
    ap.add_argument("--recheck", type=int, default=3)
    ap.add_argument("--skip-naive", action="store_true", help="only the calibration methods")
    ap.add_argument("--reuse", action="store_true", help="score routes an earlier run saved in --out")
    ap.add_argument("--out", default="runs/routes")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ratios = [float(r) for r in args.ratios.split(",")]
    model = viasd_jax.load(args.target)
    cfg = model.config

    calib_prompts = R.default_calibration_prompts()
    pick = np.linspace(0, len(calib_prompts) - 1, args.calib_prompts).round().astype(int)
    calib_prompts = [calib_prompts[i] for i in pick]
    # Evaluation: the shortest dev prompts of each task (scoring cost grows with length).
    rows_by_task: dict[str, list[dict]] = {}
    for r in read_prompts(args.dev_prompts):
        rows_by_task.setdefault(r["task"], []).append(r)
    per_task = max(1, args.eval_prompts // len(rows_by_task))
    eval_prompts = [r["prompt"] for rows in rows_by_task.values()
                    for r in sorted(rows, key=lambda r: len(r["prompt"]))[:per_task]]
    t0 = time.perf_counter()
    calib = R.generate_calibration(model, calib_prompts, new_tokens=args.new_tokens)
    evald = R.generate_calibration(model, eval_prompts, new_tokens=args.new_tokens)
    print(f"calibration text {calib.tokens.shape}, evaluation text {evald.tokens.shape} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    judge = R.Scorer(model, evald)

    rows = []

    def record(name, ratio, route, seconds=None):
        kl, top1 = judge(route.mask())
        route = Route(route.num_layers, route.attn, route.mlp, route.method,
                      {**route.info, "dev_kl": round(kl, 5), "dev_top1": round(top1, 5)})
        path = os.path.join(args.out, f"{name}-{ratio}.json")
        route.save(path, cfg)
        rows.append(dict(method=name, target_ratio=ratio, skip_ratio=round(route.skip_ratio(cfg), 3), dev_kl=kl,
                         dev_top1=top1, seconds=seconds, kept_attn=list(route.attn), kept_mlp=list(route.mlp),
                         path=path))
        print(f"{name:14s} ratio {ratio:.2f} (skips {route.skip_ratio(cfg):.3f}): dev KL {kl:.4f} top-1 {top1:.3f}",
              flush=True)

    if not args.skip_naive:
        for ratio in ratios:
            for name, route in naive_routes(cfg, ratio).items():
                record(name, ratio, route)
            record("hand-block", ratio, default_route(cfg.num_layers, ratio))
    for method in args.methods.split(","):
        kw = {"greedy": {"recheck": args.recheck}, "gates": {"steps": args.gate_steps, "lr": args.gate_lr}, "random": {"trials": args.random_trials}}[method]
        saved = [os.path.join(args.out, f"{method}-{r}.json") for r in ratios]
        if args.reuse and all(os.path.isfile(p) for p in saved):  # calibrated by an earlier run
            for ratio, path in zip(ratios, saved):
                route = as_route(path, cfg.num_layers)
                record(method, ratio, route, route.info.get("seconds"))
            continue
        t0 = time.perf_counter()
        routes = R.calibrate_route(model, calib, ratios, method=method, granularity=args.granularity, **kw)
        seconds = time.perf_counter() - t0
        for ratio in ratios:
            record(method, ratio, routes[ratio], seconds / (1 if method == "greedy" else len(ratios)))

    name = "report" if not args.skip_naive and args.methods == "greedy,gates,random" else f"report-{args.methods}"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump({"args": vars(args), "calibration_shape": list(calib.tokens.shape),
                   "evaluation_shape": list(evald.tokens.shape), "rows": rows}, f, indent=1)
    lines = ["| skip ratio | method | skips (bytes) | dev KL | dev top-1 | calibration s |", "|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["target_ratio"], r["method"])):
        secs = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['target_ratio']:.2f} | {r['method']} | {r['skip_ratio']:.3f} | {r['dev_kl']:.4f} | "
                     f"{r['dev_top1']:.3f} | {secs} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
