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


def cmd_generate(args) -> None:
    import viasd_jax

    prompts = _read_prompts(args)
    target = viasd_jax.load(args.target, dtype=args.dtype)
    result = viasd_jax.generate(
        target,
        prompts,
        mode=args.mode,
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
        f"\n[{args.mode}] {s['new_tokens']} new tokens in {result.seconds - result.compile_seconds:.2f} s: "
        f"{result.tokens_per_second:.2f} tokens/s (compile {result.compile_seconds:.1f} s, not counted)",
        file=sys.stderr,
    )


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
    g.add_argument("--mode", default="ar", choices=["ar"], help="decoding mode")
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
