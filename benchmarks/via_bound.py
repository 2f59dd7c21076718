"""How fast could `viasd-via` be against `viasd-sd` if its slim pass cost nothing?

Reads a `viasd bench --json` file and pairs every via system with the sd system of the
same options (`viasd-via@X` with `viasd-sd@X`). Per committed token, sd spends drafting
(`d_sd` drafted tokens, each one drafter step) and `f_sd` full passes; via spends
`d_via` drafter steps, `f_via` full passes and the slim passes. With the slim pass free,

    time_sd / time_via  <=  (d_sd * c + f_sd * v) / (d_via * c + f_via * v')
                        <=  max(d_sd / d_via, f_sd / f_via)

where c is a drafter step's cost (the same drafter in both), v sd's mean full pass and
v' >= v via's (its full passes carry the pending tokens besides the round's, so they are
no narrower). The second line is the mediant inequality: no cost model is needed, only
the counters. If that bound is below the issue's 1.2x, no cheaper slim pass can reach
1.2x at these thresholds and this route; only settling more whole rounds in the cheap
tiers (fewer full passes per token) could, and that is what the thresholds trade
against agreement (printed next to it).

    python benchmarks/via_bound.py runs/epyc-48.json [more.json ...] [--plot bound.png]
"""

from __future__ import annotations

import argparse
import json


def per_token(summary: dict) -> dict:
    counters, tokens = summary["counters"], summary["new_tokens"]
    return {k: v / tokens for k, v in counters.items()}


VIA_ONLY = ("tau_accept", "tau_slim", "pending_bound", "route")  # options sd has no use for


def sd_twin(via_name: str) -> str:
    """`viasd-via@A:tau_slim=0.5:B` -> `viasd-sd@A:B`: the same options but via's own."""
    options = [o for o in via_name.partition("@")[2].split(":") if o and o.split("=")[0] not in VIA_ONLY]
    return "viasd-sd" + ("@" + ":".join(options) if options else "")


def bound_rows(summary: dict, sd_name: str | None = None) -> list[dict]:
    """One row per via system that has an sd twin (or `sd_name`) in `summary`."""
    rows = []
    for name, s in summary.items():
        if not name.startswith("viasd-via@") and name != "viasd-via":
            continue
        twin = sd_name or sd_twin(name)
        if twin not in summary:
            continue
        via, sd = per_token(s), per_token(summary[twin])
        settled = 1 - via["full_passes"] / via["rounds"]  # rounds that ran no full pass
        bound = max(sd["drafted"] / via["drafted"], sd["full_passes"] / via["full_passes"])
        rows.append({"via": name, "sd": twin, "d_sd": sd["drafted"], "d_via": via["drafted"],
                     "f_sd": sd["full_passes"], "f_via": via["full_passes"], "slim": via["slim_passes"],
                     "settled": settled, "bound": bound,
                     "measured": s["decode_tok_s"] / summary[twin]["decode_tok_s"],
                     "agreement": s["agreement"], "rejection": s["rejection_rate"],
                     "rejection_sd": summary[twin]["rejection_rate"]})
    return rows


def plot(rows: list[dict], path: str, goal: float = 1.2) -> None:
    """Via against sd over agreement: the free-slim bound and the measured ratio per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    agreement = [r["agreement"] for r in rows]
    ax.scatter(agreement, [r["bound"] for r in rows], marker="^", label="bound with a free slim pass")
    ax.scatter(agreement, [r["measured"] for r in rows], marker="o", label="measured (decoding)")
    ax.axhline(goal, color="grey", linestyle="--", linewidth=1, label=f"goal: {goal}x viasd-sd")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("agreement with the target's greedy output")
    ax.set_ylabel("viasd-via / viasd-sd tokens per second")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="viasd bench --json files (their via systems pooled)")
    ap.add_argument("--sd", default=None, help="pair every via system with this sd system instead of its twin")
    ap.add_argument("--plot", default=None, help="also draw bound and measured ratio over agreement to this PNG")
    args = ap.parse_args()
    rows = []
    for path in args.json:
        with open(path) as f:
            summary = json.load(f)["summary"]
        found = bound_rows(summary, args.sd)
        if not found:
            raise SystemExit(f"{path}: no viasd-via system with a matching viasd-sd system "
                             f"(systems: {', '.join(summary)})")
        rows += found
    if args.plot:
        plot(rows, args.plot)
    print("| via system | drafted/token sd, via | full passes/token sd, via | slim passes/token "
          "| rounds without a full pass | bound with a free slim pass | measured via/sd (decoding) "
          "| rejection sd, via | agreement |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['via']} | {r['d_sd']:.3f}, {r['d_via']:.3f} | {r['f_sd']:.3f}, {r['f_via']:.3f} | {r['slim']:.3f} "
              f"| {r['settled']:.2f} | {r['bound']:.2f}x | {r['measured']:.2f}x "
              f"| {r['rejection_sd']:.2f}, {r['rejection']:.2f} | {r['agreement']:.3f} |")


if __name__ == "__main__":
    main()
