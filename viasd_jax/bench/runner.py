"""Run systems over prompts, interleaved prompt by prompt, and summarize as JSON.

Every system runs on the same prompt before the next prompt starts, in an order
rotated per prompt, so drift on a shared machine hits all systems alike. Each
system is warmed up (compiled) first; compile time is reported separately and
never counted in tokens/s.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Sequence

from tqdm.auto import tqdm

import viasd_jax
from viasd_jax import prompts as P
from viasd_jax.bench import costs, quality
from viasd_jax.route import route_mask
from viasd_jax.bench.systems import make_systems
from viasd_jax.layout import resolve as resolve_layout

SPEC_COUNTERS = ("drafted", "rejected", "tier_a", "tier_b", "tier_c", "slim_passes", "full_passes", "rounds",
                 "rollbacks")
REFERENCE_SYSTEM = "viasd-ar"


def bounds_line(b: dict) -> str:
    parts = [f"target forward {b['target_forward_s'] * 1e3:.0f} ms", f"v(gamma={b['gamma']}) {b['v']:.2f}"]
    if "c" in b:
        parts.append(f"c {b['c']:.2f}")
    if "slim_cost" in b:
        parts.append(f"slim pass {b['slim_cost']:.2f}")
    parts.append(f"bandwidth {b['bandwidth_gbs']:.1f} GB/s, weights {b['weight_gb']:.2f} GB/token, "
                 f"floor {b['floor_tok_s']:.2f} tok/s")
    if b.get("kernel_level"):
        parts.append(f"CPU kernel built for {b['kernel_level']}")
    if b.get("amx_bf16"):
        parts.append("bfloat16 prefill products on AMX tiles")
    return "costs (in target forwards): " + "; ".join(parts)


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
                row.setdefault("reference", None)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
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


def matches(tokens: list[int], reference: list[int]) -> int:
    """Generated tokens equal, position by position, to the reference."""
    return sum(a == b for a, b in zip(tokens, reference))


def run_bench(target_path: str, prompts_path: str, systems: Sequence[str], drafter_path: str | None = None,
              max_new_tokens: int = 128, dtype: str = "float32", limit: int | None = None,
              options: dict | None = None, with_quality: bool = True, progress: bool = True,
              quantize: str | None = None, layout: str = "auto", checkpoint: str | None = None,
              drafter_dtype: str | None = None) -> dict:
    """Run every system on every prompt (order rotated per prompt) and return the report.

    `drafter_dtype`: the drafter's dtype when not `dtype` (e.g. a bfloat16 drafter for a
    float32 target: lossless modes stay exact). `checkpoint`: a file rewritten after
    every prompt with the runs so far; when it exists (from an interrupted run with the
    same settings) its prompts are skipped.
    A prompt's systems always run together, in one process, so ratios stay fair.
    """
    rows = read_prompts(prompts_path, limit)
    layout = resolve_layout(layout, quantize=quantize)  # the report names the layout that ran
    systems = list(dict.fromkeys([REFERENCE_SYSTEM, *systems]))  # the target's greedy text is the reference
    settings = {"target": target_path, "drafter": drafter_path, "prompts": prompts_path, "systems": systems,
                "max_new_tokens": max_new_tokens, "dtype": dtype, "quantize": quantize, "layout": layout,
                "num_prompts": len(rows), **(options or {}),
                **({"drafter_dtype": drafter_dtype} if drafter_dtype not in (None, dtype) else {})}
    runs = read_checkpoint(checkpoint, settings) if checkpoint else []
    done = {(r["system"], r["prompt_id"]) for r in runs}
    target = viasd_jax.load(target_path, dtype=dtype, quantize=quantize, layout=layout)
    drafter_quantize = None if quantize == "gguf" else quantize  # gguf keeps the target's own file's codes
    drafter = (viasd_jax.load(drafter_path, dtype=drafter_dtype or dtype, quantize=drafter_quantize, layout=layout)
               if drafter_path else None)
    runners = make_systems(systems, target, target_path, dtype, drafter=drafter, drafter_path=drafter_path,
                           options=options, quantize=quantize)
    ids = P.encode(target, [r["prompt"] for r in rows], chat_template=True)
    compile_s = {s.name: 0.0 for s in runners}
    for s in tqdm(runners, desc="warm-up", disable=not progress):
        compile_s[s.name] += s.run(ids[0], 4).compile_seconds
    o = options or {}
    slim = route_mask(o["route"], target.config.num_layers) if o.get("route") else (
        target.route.mask() if target.route else None)
    bounds = costs.measure(target, drafter, o.get("gamma", 4), slim)
    if progress:
        print(bounds_line(bounds), flush=True)
    bar = tqdm(total=len(rows) * len(runners), desc="bench", disable=not progress)
    for i, (row, prompt_ids) in enumerate(zip(rows, ids)):
        if all((s.name, row["id"]) in done for s in runners):
            bar.update(len(runners))
            continue
        runs = [r for r in runs if r["prompt_id"] != row["id"]]  # a half-done prompt runs again, whole
        order = runners[i % len(runners):] + runners[: i % len(runners)]
        for s in order:
            bar.set_postfix_str(f"{row['task']}/{s.name}")
            out = s.run(prompt_ids, max_new_tokens)
            compile_s[s.name] += out.compile_seconds
            runs.append({"system": s.name, "task": row["task"], "prompt_id": row["id"],
                         "new_tokens": len(out.tokens), "seconds": out.seconds,
                         "prefill_seconds": out.prefill_seconds, "tokens": out.tokens,
                         **{k: out.stats[k] for k in SPEC_COUNTERS if k in out.stats}})
            bar.update()
        if checkpoint:
            write_checkpoint(checkpoint, settings, runs)
    bar.close()
    add_agreement(runs)
    if with_quality:
        add_quality(runs, rows, target.tokenizer, progress)
    return {
        "config": {**settings, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                   "resumed_runs": len(done)},
        "machine": machine_info(),
        "compile_seconds": compile_s,
        "costs": bounds,
        "runs": runs,
        "summary": summarize(runs, systems),
    }


def read_checkpoint(path: str, settings: dict) -> list[dict]:
    """Runs saved by an interrupted bench with the same settings ([] when there is no file)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = json.load(f)
    old = json.loads(json.dumps(saved.get("settings", {})))
    new = json.loads(json.dumps(settings))  # tuples -> lists, as the file has them
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        raise ValueError(f"{path}: saved by a bench with other settings ({', '.join(differ)}); "
                         "use another --checkpoint file or delete it")
    return saved["runs"]


def write_checkpoint(path: str, settings: dict, runs: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings, "runs": runs}, f)
    os.replace(tmp, path)  # never a half-written checkpoint


def add_agreement(runs: list[dict]) -> None:
    """Per run: tokens equal, position by position, to the target's own greedy output."""
    reference = {r["prompt_id"]: r["tokens"] for r in runs if r["system"] == REFERENCE_SYSTEM}
    for r in runs:
        r["matches"] = matches(r["tokens"], reference[r["prompt_id"]])
        r["agreement"] = r["matches"] / r["new_tokens"] if r["new_tokens"] else 1.0


def add_quality(runs: list[dict], rows: list[dict], tokenizer, progress: bool = True) -> None:
    by_id = {r["id"]: r for r in rows}
    for r in tqdm(runs, desc="quality", disable=not progress):
        row = by_id[r["prompt_id"]]
        r["text"] = tokenizer.decode(r["tokens"], skip_special_tokens=True) if tokenizer else ""
        r["quality"] = quality.task_scores(row["task"], row["id"], row["reference"], r["text"])


def summarize(runs: list[dict], systems: list[str]) -> dict:
    out = {}
    for name in systems:
        mine = [r for r in runs if r["system"] == name]
        tokens, seconds = sum(r["new_tokens"] for r in mine), sum(r["seconds"] for r in mine)
        total = {k: sum(r.get(k, 0) for r in mine) for k in SPEC_COUNTERS}
        timed = mine and all("prefill_seconds" in r for r in mine)  # reports before 2026-11-24 lack it
        prefill = sum(r["prefill_seconds"] for r in mine) if timed else None
        s = {"tok_s": tokens / seconds if seconds else 0.0, "new_tokens": tokens, "seconds": seconds,
             "decode_tok_s": tokens / (seconds - prefill) if timed and seconds > prefill else None,
             "prefill_s": prefill / len(mine) if timed else None,
             "rejection_rate": total["rejected"] / total["drafted"] if total["drafted"] else None,
             "agreement": sum(r["matches"] for r in mine) / tokens if tokens else None,
             "quality": _quality_means(mine)}
        if total["drafted"]:
            s["tiers"] = {t: total[t] / total["drafted"] for t in ("tier_a", "tier_b", "tier_c", "rejected")}
            s["tokens_per_round"] = tokens / total["rounds"] if total["rounds"] else None
            s["full_passes_per_token"] = total["full_passes"] / tokens if tokens else None
            s["counters"] = total
        s["per_task"] = {t: _speed(r for r in mine if r["task"] == t) for t in sorted({r["task"] for r in mine})}
        out[name] = s
    ref = out.get(REFERENCE_SYSTEM)
    for s in out.values():
        s["speedup_vs_ar"] = s["tok_s"] / ref["tok_s"] if ref and ref["tok_s"] else None
        s["decode_speedup_vs_ar"] = (s["decode_tok_s"] / ref["decode_tok_s"]
                                     if ref and ref["decode_tok_s"] and s["decode_tok_s"] else None)
        for task, t in s["per_task"].items():
            base = ref["per_task"].get(task, {}).get("tok_s") if ref else None
            t["speedup_vs_ar"] = t["tok_s"] / base if base else None
    return out


def _speed(runs) -> dict:
    runs = list(runs)
    tokens, seconds = sum(r["new_tokens"] for r in runs), sum(r["seconds"] for r in runs)
    return {"tok_s": tokens / seconds if seconds else 0.0,
            "agreement": sum(r["matches"] for r in runs) / tokens if tokens else None}


def rescore(report: dict, prompts_path: str, tokenizer=None, with_quality: bool = True) -> dict:
    """Recompute agreement, task quality and the summary of a saved report (no generation)."""
    rows = read_prompts(prompts_path)
    add_agreement(report["runs"])
    if with_quality:
        add_quality(report["runs"], rows, tokenizer)
    report["summary"] = summarize(report["runs"], report["config"]["systems"])
    return report


def _quality_means(runs: list[dict]) -> dict:
    """{task: {metric: mean over prompts}}."""
    acc: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for metric, value in (r.get("quality") or {}).items():
            acc.setdefault(r["task"], {}).setdefault(metric, []).append(value)
    return {t: {m: sum(v) / len(v) for m, v in ms.items()} for t, ms in sorted(acc.items())}
