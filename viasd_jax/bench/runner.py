"""Run systems over prompts, interleaved prompt by prompt, and summarize as JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Sequence

from tqdm.auto import tqdm

import viasd_jax
from viasd_jax import prompts as P
from viasd_jax.bench.systems import make_systems

SPEC_COUNTERS = ("drafted", "rejected", "tier_a", "tier_b", "tier_c", "slim_passes", "full_passes")


def read_prompts(path: str, limit: int | None = None, tasks: Sequence[str] | None = None) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such prompts file")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["prompt"], row.setdefault("task", "unknown"), row.setdefault("id", str(i))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{i}: expected a JSON object with task, id, prompt, reference") from None
            if tasks is None or row["task"] in tasks:
                rows.append(row)
    if limit:
        rows = _spread(rows, limit)
    if not rows:
        raise ValueError(f"{path}: no prompts selected")
    return rows


def _spread(rows: list[dict], limit: int) -> list[dict]:
    """The first `limit` prompts taken round-robin over tasks, so every task is represented."""
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    out = []
    while len(out) < min(limit, len(rows)):
        for task_rows in by_task.values():
            if task_rows and len(out) < limit:
                out.append(task_rows.pop(0))
    return out


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import jax

    info = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def agreement(tokens: list[int], reference: list[int]) -> float:
    """Share of generated tokens equal, position by position, to the reference."""
    if not tokens:
        return 1.0 if not reference else 0.0
    return sum(a == b for a, b in zip(tokens, reference)) / len(tokens)


def run_bench(target_path: str, prompts_path: str, systems: Sequence[str], drafter_path: str | None = None,
              max_new_tokens: int = 128, dtype: str = "float32", limit: int | None = None,
              options: dict | None = None, progress: bool = True) -> dict:
    """Run every system on every prompt (order rotated per prompt) and return the report."""
    rows = read_prompts(prompts_path, limit)
    target = viasd_jax.load(target_path, dtype=dtype)
    drafter = viasd_jax.load(drafter_path, dtype=dtype) if drafter_path else None
    runners = make_systems(systems, target, target_path, dtype, drafter=drafter, drafter_path=drafter_path,
                           options=options)
    ids = P.encode(target, [r["prompt"] for r in rows], chat_template=True)
    compile_s = {s.name: 0.0 for s in runners}
    for s in tqdm(runners, desc="warm-up", disable=not progress):
        compile_s[s.name] += s.run(ids[0], 4).compile_seconds
    runs = []
    bar = tqdm(total=len(rows) * len(runners), desc="bench", disable=not progress)
    for i, (row, prompt_ids) in enumerate(zip(rows, ids)):
        order = runners[i % len(runners):] + runners[: i % len(runners)]
        for s in order:
            bar.set_postfix_str(f"{row['task']}/{s.name}")
            out = s.run(prompt_ids, max_new_tokens)
            compile_s[s.name] += out.compile_seconds
            runs.append({"system": s.name, "task": row["task"], "prompt_id": row["id"],
                         "new_tokens": len(out.tokens), "seconds": out.seconds, "tokens": out.tokens,
                         **{k: out.stats[k] for k in SPEC_COUNTERS if k in out.stats}})
            bar.update()
    bar.close()
    _add_agreement(runs)
    return {
        "config": {"target": target_path, "drafter": drafter_path, "prompts": prompts_path, "systems": list(systems),
                   "max_new_tokens": max_new_tokens, "dtype": dtype, "num_prompts": len(rows), **(options or {}),
                   "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "machine": machine_info(),
        "compile_seconds": compile_s,
        "runs": runs,
        "summary": summarize(runs, list(systems)),
    }


def _add_agreement(runs: list[dict]) -> None:
    """Agreement with the target's own greedy output (viasd-ar's run on the prompt)."""
    reference = {r["prompt_id"]: r["tokens"] for r in runs if r["system"] == "viasd-ar"}
    for r in runs:
        if r["prompt_id"] in reference:
            r["agreement"] = agreement(r["tokens"], reference[r["prompt_id"]])


def summarize(runs: list[dict], systems: list[str]) -> dict:
    out = {}
    for name in systems:
        mine = [r for r in runs if r["system"] == name]
        tokens, seconds = sum(r["new_tokens"] for r in mine), sum(r["seconds"] for r in mine)
        drafted, rejected = sum(r.get("drafted", 0) for r in mine), sum(r.get("rejected", 0) for r in mine)
        agree = [r["agreement"] for r in mine if "agreement" in r]
        out[name] = {"tok_s": tokens / seconds if seconds else 0.0, "new_tokens": tokens, "seconds": seconds,
                     "rejection_rate": rejected / drafted if drafted else None,
                     "agreement": sum(agree) / len(agree) if agree else None}
    if "viasd-ar" in out and out["viasd-ar"]["tok_s"]:
        for s in out.values():
            s["speedup_vs_ar"] = s["tok_s"] / out["viasd-ar"]["tok_s"]
    return out
