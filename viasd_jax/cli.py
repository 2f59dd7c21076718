"""The `viasd` command line: convert, generate (calibrate and bench join later).

Every subcommand fails with one line naming the problem and a non-zero exit,
never a traceback, on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from viasd_jax import fetch


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        if not os.path.isfile(args.prompts):
            raise FileNotFoundError(f"{args.prompts}: no such prompts file")
        with open(args.prompts) as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        prompts.append(json.loads(line)["prompt"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{args.prompts}:{i}: expected a JSON object with a 'prompt' field") from None
    if not prompts:
        raise ValueError("no prompt: give --prompt TEXT (repeatable) or --prompts FILE.jsonl")
    return prompts


def cmd_convert(args) -> None:
    from checkpoints_convert import convert

    route = None
    if args.route:
        with open(args.route) as f:
            route = json.load(f)
    out = convert(args.src, args.out, dtype=args.dtype, route=route)
    print(f"wrote {out}")


def parse_route(text: str | None):
    """`--route`: comma-separated layer indices, or a route.json file (see `viasd calibrate`)."""
    if text is None:
        return None
    if os.path.isfile(text):
        with open(text) as f:
            data = json.load(f)
        return data["kept_layers"] if isinstance(data, dict) else data
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--route {text!r}: expected comma-separated layer indices or a route.json file") from None


def load_drafter(spec: str | None, dtype=None):
    import viasd_jax

    if spec in (None, "self", "lookup"):
        return spec
    return viasd_jax.load(spec, dtype=dtype)


def cmd_generate(args) -> None:
    import viasd_jax

    prompts = _read_prompts(args)
    target = viasd_jax.load(args.target, dtype=args.dtype)
    drafter = load_drafter(args.drafter, args.dtype)
    mode = args.mode or ("ar" if drafter is None else "via")
    result = viasd_jax.generate(
        target,
        prompts,
        drafter=drafter,
        mode=mode,
        gamma=args.gamma,
        route=parse_route(args.route),
        self_route=parse_route(args.self_route),
        tau_accept=args.tau_accept,
        tau_slim=args.tau_slim,
        lossless=args.lossless,
        pending_bound=args.pending_bound,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        chat_template=not args.no_chat_template,
    )
    for i, text in enumerate(result.texts or [str(t) for t in result.tokens]):
        if len(prompts) > 1:
            print(f"--- prompt {i} ---")
        print(text)
    s = result.stats
    print(
        f"\n[{mode}] {s['new_tokens']} new tokens in {result.seconds - result.compile_seconds:.2f} s: "
        f"{result.tokens_per_second:.2f} tokens/s (compile {result.compile_seconds:.1f} s, not counted)",
        file=sys.stderr,
    )
    if mode != "ar":
        print(
            f"drafted {s['drafted']}, rejected {s['rejected']} (rate {s['rejection_rate']:.2f}); "
            f"tier A {s['tier_a']}, tier B {s['tier_b']}, tier C {s['tier_c']}; rounds {s['rounds']}, "
            f"slim passes {s['slim_passes']}, full passes {s['full_passes']}, rollbacks {s['rollbacks']}",
            file=sys.stderr,
        )


def cmd_bench(args) -> None:
    from viasd_jax.bench.report import markdown_summary
    from viasd_jax.bench.runner import run_bench

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    options = {"temperature": args.temperature, "seed": args.seed, "gamma": args.gamma,
               "tau_accept": args.tau_accept, "tau_slim": args.tau_slim, "lookup_gamma": args.lookup_gamma}
    for name in ("route", "self_route"):
        if getattr(args, name):
            options[name] = parse_route(getattr(args, name))
    if args.pending_bound is not None:
        options["pending_bound"] = args.pending_bound
    report = run_bench(args.target, args.prompts, systems, drafter_path=args.drafter,
                       max_new_tokens=args.max_new_tokens, dtype=args.dtype, limit=args.limit, options=options)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    table = markdown_summary(report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table)
    print(f"wrote {args.json}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="viasd", description="VIA-SD multi-tier speculative decoding in JAX")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a Hugging Face directory or .gguf file to a viasd-jax checkpoint")
    c.add_argument("src", help="Hugging Face checkpoint directory, or .gguf file")
    c.add_argument("out", help="output directory")
    c.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="cast weights (default: keep)")
    c.add_argument("--route", help="route.json to embed (from `viasd calibrate`)")
    c.set_defaults(func=cmd_convert)

    g = sub.add_parser("generate", help="generate text and print tokens/s")
    g.add_argument("--target", default=fetch.DEFAULT_TARGET,
                   help=f"checkpoint dir, .gguf, or a default model name ({', '.join(fetch.MODELS)})")
    g.add_argument("--mode", choices=["ar", "sd", "via"], help="decoding mode (default: via with a drafter, else ar)")
    g.add_argument("--drafter", help="drafter checkpoint/.gguf/default name, or 'self' or 'lookup'")
    g.add_argument("--gamma", type=int, default=4, help="drafts per round")
    g.add_argument("--route", help="slim verifier's kept layers: '0,1,5,...' or route.json")
    g.add_argument("--self-route", help="the self-drafter's kept layers (with --drafter self)")
    g.add_argument("--tau-accept", type=float, default=0.9, help="tier A threshold on the slim prob of the draft")
    g.add_argument("--tau-slim", type=float, default=0.6, help="tier B threshold on the slim verifier's confidence")
    g.add_argument("--lossless", action="store_true", help="re-check cheap-tier tokens with the full model")
    g.add_argument("--pending-bound", type=int, default=None, help="most unverified tokens per row (default gamma)")
    g.add_argument("--prompt", action="append", help="prompt text (repeatable)")
    g.add_argument("--prompts", help="jsonl file with a 'prompt' field per line")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", help="extra stop string (repeatable)")
    g.add_argument("--no-chat-template", action="store_true", help="feed prompts as raw text")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="compare decoding systems on a prompt set (speed and agreement)")
    b.add_argument("--target", default=fetch.DEFAULT_TARGET)
    b.add_argument("--prompts", required=True, help="jsonl with task, id, prompt, reference")
    b.add_argument("--drafter", default=None, help="drafter model for viasd-sd/via and hf-assisted")
    b.add_argument("--systems", default="viasd-ar,hf-ar", help="comma-separated systems")
    b.add_argument("--gamma", type=int, default=4)
    b.add_argument("--lookup-gamma", type=int, default=8, help="drafts per round for viasd-lookup / hf-lookup")
    b.add_argument("--route", help="slim verifier's kept layers: '0,1,5,...' or route.json")
    b.add_argument("--self-route", help="the self-drafter's kept layers")
    b.add_argument("--tau-accept", type=float, default=0.9)
    b.add_argument("--tau-slim", type=float, default=0.6)
    b.add_argument("--pending-bound", type=int, default=None)
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--limit", type=int, default=None, help="use this many prompts, spread over tasks")
    b.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    b.add_argument("--temperature", type=float, default=0.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", required=True, help="write the full report here")
    b.add_argument("--markdown", help="also write the summary table here")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ImportError, OSError) as e:
        print(f"viasd {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
