"""Human-readable views of a bench report: markdown tables and plots."""

from __future__ import annotations

import os


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def markdown_summary(report: dict) -> str:
    cfg, summary = report["config"], report["summary"]
    lines = [
        f"{cfg['num_prompts']} prompts, {cfg['max_new_tokens']} new tokens, {cfg['dtype']}, "
        f"{report['machine']['cpu']} ({report['machine']['cores']} cores), {cfg['date']}",
        "",
        *([_bounds(report["costs"]), ""] if report.get("costs") else []),
        "| system | tok/s | speedup vs viasd-ar | decode tok/s | decode speedup | prefill s | rejection rate "
        "| agreement | tier A / B / C / rejected | tokens per round | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, s in summary.items():
        tiers = s.get("tiers")
        mix = " / ".join(f"{tiers[k]:.2f}" for k in ("tier_a", "tier_b", "tier_c", "rejected")) if tiers else "-"
        lines.append(f"| {name} | {s['tok_s']:.2f} | {_fmt(s.get('speedup_vs_ar'))} | {_fmt(s.get('decode_tok_s'))} "
                     f"| {_fmt(s.get('decode_speedup_vs_ar'))} | {_fmt(s.get('prefill_s'))} | {_fmt(s['rejection_rate'])} "
                     f"| {_fmt(s['agreement'], '.3f')} | {mix} | {_fmt(s.get('tokens_per_round'))} "
                     f"| {report['compile_seconds'].get(name, 0):.1f} |")
    quality_rows = quality_table(summary)
    if quality_rows:
        lines += ["", *quality_rows]
    lines += ["", *per_task_table(summary)]
    return "\n".join(lines) + "\n"


def _bounds(b: dict) -> str:
    from viasd_jax.bench.runner import bounds_line

    return bounds_line(b)


def quality_table(summary: dict) -> list[str]:
    columns = sorted({(t, m) for s in summary.values() for t, ms in s.get("quality", {}).items() for m in ms})
    if not columns:
        return []
    head = "| system | " + " | ".join(f"{t} {m}" for t, m in columns) + " |"
    rows = [head, "|---|" + "---:|" * len(columns)]
    for name, s in summary.items():
        q = s.get("quality", {})
        rows.append(f"| {name} | " + " | ".join(_fmt(q.get(t, {}).get(m), ".1f") for t, m in columns) + " |")
    return rows


def per_task_table(summary: dict) -> list[str]:
    tasks = sorted({t for s in summary.values() for t in s.get("per_task", {})})
    rows = ["| system (speedup vs viasd-ar per task) | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for name, s in summary.items():
        pt = s.get("per_task", {})
        rows.append(f"| {name} | " + " | ".join(_fmt(pt.get(t, {}).get("speedup_vs_ar")) for t in tasks) + " |")
    return rows


def plot_report(report: dict, out_dir: str) -> list[str]:
    """Speedup per task, tier mix and rejection rate per system, as PNGs in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(out_dir, exist_ok=True)
    summary = report["summary"]
    names = list(summary)
    tasks = sorted({t for s in summary.values() for t in s.get("per_task", {})})
    paths = []

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * len(names) / 3), 4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [summary[name]["per_task"].get(t, {}).get("speedup_vs_ar") or 0 for t in tasks]
        ax.bar(np.arange(len(tasks)) + j * width, vals, width, label=name)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
    ax.set_ylabel("speedup vs viasd-ar")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir, "speedup_per_task.png"))

    spec = [n for n in names if summary[n].get("tiers")]
    if spec:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        bottom = np.zeros(len(spec))
        for key, color in (("tier_a", "tab:green"), ("tier_b", "tab:olive"), ("tier_c", "tab:blue"),
                           ("rejected", "tab:red")):
            vals = np.array([summary[n]["tiers"][key] for n in spec])
            ax1.bar(spec, vals, bottom=bottom, label=key, color=color)
            bottom += vals
        ax1.set_ylabel("share of drafted tokens")
        ax1.legend(fontsize=7)
        ax1.tick_params(axis="x", rotation=30, labelsize=7)
        ax2.bar(spec, [summary[n]["rejection_rate"] for n in spec], color="tab:red")
        ax2.set_ylabel("rejection rate")
        ax2.tick_params(axis="x", rotation=30, labelsize=7)
        paths.append(_save(fig, out_dir, "tiers_and_rejection.png"))
    return paths


def plot_pareto(report: dict, path: str) -> str:
    """Speedup against agreement (and against mean task quality) for every system of a
    sweep, with the Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    pts = [(n, s["speedup_vs_ar"] or 0, s["agreement"] or 0, _mean_quality(s)) for n, s in summary.items()]
    front = [p for p in pts if not any(q[1] >= p[1] and q[2] >= p[2] and q != p and (q[1] > p[1] or q[2] > p[2])
                                       for q in pts)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, idx, label in ((axes[0], 2, "agreement with target greedy"), (axes[1], 3, "mean task quality")):
        ax.scatter([p[1] for p in pts], [p[idx] for p in pts], c="tab:blue", s=18)
        for p in pts:
            ax.annotate(p[0].replace("viasd-", ""), (p[1], p[idx]), fontsize=6)
        if idx == 2:
            f = sorted(front, key=lambda p: p[1])
            ax.plot([p[1] for p in f], [p[2] for p in f], "r-o", lw=1, ms=7, mfc="none", label="Pareto front")
            ax.legend(fontsize=7)
        ax.set_xlabel("speedup vs viasd-ar")
        ax.set_ylabel(label)
    return _save(fig, os.path.dirname(path) or ".", os.path.basename(path))


def _mean_quality(s: dict) -> float:
    vals = [v for ms in s.get("quality", {}).values() for v in ms.values()]
    return sum(vals) / len(vals) if vals else 0.0


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
