"""Human-readable views of a bench report."""

from __future__ import annotations


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def markdown_summary(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"{cfg['num_prompts']} prompts, {cfg['max_new_tokens']} new tokens, {cfg['dtype']}, "
        f"{report['machine']['cpu']} ({report['machine']['cores']} cores), {cfg['date']}",
        "",
        "| system | tok/s | speedup vs viasd-ar | rejection rate | agreement | compile s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["summary"].items():
        lines.append(f"| {name} | {s['tok_s']:.2f} | {_fmt(s.get('speedup_vs_ar'))} | {_fmt(s['rejection_rate'])} "
                     f"| {_fmt(s['agreement'], '.3f')} | {report['compile_seconds'].get(name, 0):.1f} |")
    return "\n".join(lines) + "\n"
