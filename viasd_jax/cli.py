"""The `viasd` command line: convert, generate (calibrate and bench join later).

Every subcommand fails with one line naming the problem and a non-zero exit,
never a traceback, on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from viasd_jax import defaults, fetch
from viasd_jax.defaults import CpuDefaults
from viasd_jax.decode import PREFILL_DTYPES
from viasd_jax.layout import LAYOUTS
from viasd_jax.loading import CODES


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

    out = convert(args.src, args.out, dtype=args.dtype, route=parse_route(args.route),
                  self_route=parse_route(args.self_route))
    print(f"wrote {out}")


def parse_route(text: str | None):
    """`--route`: comma-separated layer indices, or a route.json file (see `viasd calibrate`)."""
    if text is None or text.endswith(".json"):
        return text  # a path: validated where it is used
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--route {text!r}: expected comma-separated layer indices or a route.json file") from None


DRAFTER_DTYPE_HELP = ("the drafter model's dtype (default: bfloat16 under a float32, unquantized target, else "
                      "--dtype); a bfloat16 drafter streams half the bytes and leaves lossless output unchanged")
PREFILL_DTYPE_HELP = ("bfloat16: the prompt's matrix products round both operands to bfloat16 on the CPU kernel "
                      "(about 2x faster prefill with AVX-512 BF16; lossy against float32, sd still equals ar under "
                      "the same setting)")
LAYOUT_HELP = ("weight matrices' memory layout; cpu-kernel: output-major through the compiled CPU "
               "matrix-vector kernel (fastest on CPU); output-major: XLA's dot over that layout; "
               "auto (default): cpu-kernel on one CPU (float32, bfloat16 or int8 weights), else input-major")


def load_drafter(spec: str | None, dtype=None, quantize=None, layout="auto", products=None):
    import viasd_jax

    if spec in (None, "self", "lookup"):
        return spec
    return viasd_jax.load(spec, dtype=dtype, quantize=quantize, layout=layout, products=products)


def default_drafter_dtype(requested: str | None, target_dtype, dtype: str | None, quantize: str | None,
                          drafter_quantize: str | None = None, cpu: CpuDefaults | None = None):
    """The drafter's dtype for `viasd generate`: `requested` if given; else, under a
    float32 target on float weights or its GGUF codes, this CPU's default
    (`defaults.cpu()`: bfloat16, half the bytes; a drafter only proposes, so lossless output
    is unchanged); else `dtype` (None keeps the checkpoint's). A drafter on its GGUF codes
    or our 4-bit codes (`drafter_quantize` "gguf" or "q4") is float32."""
    if requested:
        return requested
    if drafter_quantize in CODES:  # codes multiply float32 activations
        return None
    if quantize in (None, "gguf") and str(target_dtype) == "float32":
        return (cpu or defaults.cpu()).drafter_dtype
    return dtype


def default_drafter_quantize(requested: str | None, target_dtype, quantize: str | None,
                             cpu: CpuDefaults | None = None):
    """The drafter's quantization for `viasd generate`: `requested` if given ("none": float
    matrices); else `quantize` if the target is quantized; else this CPU's default under a
    float32 target (`defaults.cpu()`: int8 where the kernel's instruction set makes it
    pay, docs/cpu.md)."""
    if requested:
        return None if requested == "none" else requested
    if quantize not in (None, "gguf"):  # a gguf target is the exact float32 model: as float32
        return quantize
    return (cpu or defaults.cpu()).drafter_quantize if str(target_dtype) == "float32" else None


def target_quantize(requested: str | None, target: str, dtype: str | None, layout: str,
                    cpu: CpuDefaults | None = None) -> str | None:
    """The target's `quantize` for `viasd generate`: "auto" keeps a GGUF model's own codes
    where this CPU's defaults take them (`defaults.cpu()`) and the kernel can multiply them
    (`gguf_blocks.codes_usable`: the same output bit for bit as float32), else None;
    "none" is None."""
    if requested == "auto":
        from viasd_jax import gguf_blocks

        if (cpu or defaults.cpu()).quantize != "gguf":
            return None
        return "gguf" if gguf_blocks.codes_usable(target, dtype, layout) else None
    return None if requested in (None, "none") else requested


def default_draft_stop(requested: float | None, mode: str, drafter, cpu: CpuDefaults | None = None) -> float:
    """`--draft-stop` as given, else this CPU's default for sd with a model drafter
    (`defaults.cpu()`, docs/cpu.md) and 0 (always gamma) elsewhere, where it was not
    measured."""
    if requested is not None:
        return requested
    model_drafter = drafter is not None and not isinstance(drafter, str)  # not "self" / "lookup"
    return (cpu or defaults.cpu()).draft_stop if mode == "sd" and model_drafter else 0.0


def cmd_generate(args) -> None:
    import viasd_jax
    from viasd_jax.generate import parse_widths

    widths = None if args.verify_widths is None else parse_widths(args.verify_widths)  # bad text fails before loading
    prompts = _read_prompts(args)
    quantize = target_quantize(args.quantize, args.target, args.dtype, args.layout)
    if args.products is not None and quantize not in CODES:
        raise ValueError(f"--products {args.products} multiplies codes: it needs --quantize gguf or q4 (or auto on "
                         "a model whose GGUF codes apply)")
    target = viasd_jax.load(args.target, dtype=args.dtype, quantize=quantize, layout=args.layout,
                            products=args.products)
    drafter_quantize = default_drafter_quantize(args.drafter_quantize, target.dtype, quantize)
    drafter_dtype = default_drafter_dtype(args.drafter_dtype, target.dtype, args.dtype, quantize, drafter_quantize)
    if args.drafter_products is not None and drafter_quantize not in CODES:
        raise ValueError(f"--drafter-products {args.drafter_products} multiplies codes: it needs "
                         "--drafter-quantize gguf or q4")
    drafter = load_drafter(args.drafter, drafter_dtype, drafter_quantize, args.layout, args.drafter_products)
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
        mix_lookup=args.mix_lookup,
        draft_stop=default_draft_stop(args.draft_stop, mode, drafter),
        draft_vocab=args.draft_vocab,
        draft_context=args.draft_context,
        verify_widths=widths,
        prefill_dtype=args.prefill_dtype,
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
        f"{result.tokens_per_second:.2f} tokens/s; prefill {result.prefill_seconds:.2f} s, then "
        f"{result.decode_tokens_per_second:.2f} tokens/s (compile {result.compile_seconds:.1f} s, not counted)",
        file=sys.stderr,
    )
    if mode != "ar":
        print(
            f"drafted {s['drafted']}, rejected {s['rejected']} (rate {s['rejection_rate']:.2f}); "
            f"tier A {s['tier_a']}, tier B {s['tier_b']}, tier C {s['tier_c']}; rounds {s['rounds']}, "
            f"slim passes {s['slim_passes']}, full passes {s['full_passes']}, rollbacks {s['rollbacks']}",
            file=sys.stderr,
        )


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers") from None


def sweep_systems(accepts: list[float], slims: list[float], base: str = "viasd-via") -> list[str]:
    """The threshold grid as system variants (plus viasd-sd, the tiers' upper bound on agreement)."""
    return ["viasd-sd"] + [f"{base}@tau_accept={a}:tau_slim={s}" for a in accepts for s in slims]


def cmd_bench(args) -> None:
    from viasd_jax.bench import report as R
    from viasd_jax.bench.runner import rescore, run_bench

    if args.rescore:
        from viasd_jax.loading import load_tokenizer

        with open(args.rescore) as f:
            report = json.load(f)
        report = rescore(report, args.prompts, load_tokenizer(report["config"]["target"]), not args.no_quality)
    else:
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        if args.sweep:
            systems = sweep_systems(_floats(args.sweep_accept, "--sweep-accept"), _floats(args.sweep_slim,
                                                                                        "--sweep-slim"))
        options = {"temperature": args.temperature, "seed": args.seed, "gamma": args.gamma,
                   "tau_accept": args.tau_accept, "tau_slim": args.tau_slim, "lookup_gamma": args.lookup_gamma,
                   "mix_lookup": args.mix_lookup, "draft_stop": args.draft_stop}
        if args.draft_vocab is not None:
            options["draft_vocab"] = args.draft_vocab
        if args.draft_context:
            options["draft_context"] = args.draft_context
        if args.prefill_dtype is not None:
            options["prefill_dtype"] = args.prefill_dtype
        for name in ("route", "self_route"):
            if getattr(args, name):
                options[name] = parse_route(getattr(args, name))
        if args.pending_bound is not None:
            options["pending_bound"] = args.pending_bound
        report = run_bench(args.target, args.prompts, systems, drafter_path=args.drafter,
                           max_new_tokens=args.max_new_tokens, dtype=args.dtype, limit=args.limit, options=options,
                           with_quality=not args.no_quality, quantize=None if args.quantize == "none" else args.quantize,
                           layout=args.layout, checkpoint=args.checkpoint, drafter_dtype=args.drafter_dtype)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    table = R.markdown_summary(report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table)
    if args.plots:
        for path in R.plot_report(report, args.plots):
            print(f"wrote {path}")
    if args.sweep or args.pareto:
        path = args.pareto or os.path.splitext(args.json)[0] + "-pareto.png"
        print(f"wrote {R.plot_pareto(report, path)}")
    print(f"wrote {args.json}")


def cmd_calibrate(args) -> None:
    import viasd_jax
    from viasd_jax import routing

    routing.check_options(args.skip_ratio, args.method, args.granularity)
    target = viasd_jax.load(args.target, dtype=args.dtype)
    prompts = _read_prompts(args) if (args.prompt or args.prompts) else routing.default_calibration_prompts()
    print(f"generating calibration text: {len(prompts)} prompts x {args.new_tokens} tokens", file=sys.stderr)
    data = routing.generate_calibration(target, prompts, new_tokens=args.new_tokens)
    route = routing.calibrate_route(target, data, args.skip_ratio, method=args.method, granularity=args.granularity,
                                    keep_first_last=not args.allow_first_last, holdout=args.holdout,
                                    seed=args.seed)
    route.save(args.out, target.config)
    info = route.info
    print(f"wrote {args.out}: skip ratio {route.skip_ratio(target.config):.3f}, held-back KL {info['heldout_kl']:.4f}, "
          f"top-1 {info['heldout_top1']:.3f} ({info['evaluations']} evaluations, {info['seconds']:.0f} s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="viasd", description="VIA-SD multi-tier speculative decoding in JAX")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a Hugging Face directory or .gguf file to a viasd-jax checkpoint")
    c.add_argument("src", help="Hugging Face checkpoint directory, or .gguf file")
    c.add_argument("out", help="output directory")
    c.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="cast weights (default: keep)")
    c.add_argument("--route", help="slim verifier route to embed: route.json (from `viasd calibrate`) or '0,1,...'")
    c.add_argument("--self-route", help="self-drafter route to embed (same forms)")
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
    g.add_argument("--tau-slim", type=float, default=0.8, help="tier B threshold on the slim verifier's confidence")
    g.add_argument("--lossless", action="store_true", help="re-check cheap-tier tokens with the full model")
    g.add_argument("--pending-bound", type=int, default=None, help="most unverified tokens per row (default 2*gamma)")
    g.add_argument("--mix-lookup", type=int, default=0,
                   help="with a model drafter: use prompt-lookup drafts when they offer >= this many tokens")
    g.add_argument("--draft-stop", type=float, default=None,
                   help="stop drafting once the drafter's top probability is below this (0: always gamma; "
                        "default: this CPU's (docs/cpu.md) in sd mode with a model drafter, else 0)")
    g.add_argument("--draft-vocab", type=int, default=None,
                   help="the drafter proposes only token ids below this; its LM head reads only those rows "
                        "(exact output; default: the whole vocabulary)")
    g.add_argument("--draft-context", type=int, default=0,
                   help="the drafter sees only the prompt's first 4 and last N tokens, so its prefill is at most "
                        "N + 4 tokens (exact output; default 0: the whole prompt)")
    g.add_argument("--prefill-dtype", choices=PREFILL_DTYPES, default="float32", help=PREFILL_DTYPE_HELP)
    g.add_argument("--verify-widths", default=None,
                   help="narrower verification windows, e.g. '1,6', or 'none' (default: 1 for lookup, gamma+2 for via)")
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
    g.add_argument("--drafter-dtype", choices=["float32", "bfloat16"], default=None, help=DRAFTER_DTYPE_HELP)
    g.add_argument("--quantize", choices=["auto", "none", "int8", "gguf", "q4"], default="auto",
                   help="gguf: the target's own GGUF Q4_K/Q6_K codes, multiplied exactly as its float32 weights "
                        "(a registered model or .gguf; CPU); int8: weight-only matrices (target and drafter; lossy); "
                        "q4: 4-bit codes made here, a scale and min per 32 weights (CPU; lossy); "
                        "none: float weights; auto (default): gguf where it applies and this CPU's instruction set "
                        "makes it pay (docs/cpu.md), else none")
    g.add_argument("--products", choices=["int8"], default=None,
                   help="int8: the target's GGUF codes meet activations quantized to int8 per 32 values, multiplied "
                        "in integers (llama.cpp's numerics; lossy, faster; needs gguf or q4 codes)")
    g.add_argument("--drafter-quantize", choices=["int8", "gguf", "q4", "none"], default=None,
                   help="the drafter's matrices (default: this CPU's under a float32 target, docs/cpu.md, "
                        "else as --quantize; gguf: "
                        "its own GGUF codes; q4: 4-bit codes made here); a drafter only proposes, so lossless "
                        "output is unchanged")
    g.add_argument("--drafter-products", choices=["int8"], default=None,
                   help="as --products, for a drafter on gguf or q4 codes (output unchanged)")
    g.add_argument("--layout", choices=LAYOUTS, default="auto", help=LAYOUT_HELP)
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("calibrate", help="find the slim verifier's route (intra-model routing)")
    r.add_argument("--target", default=fetch.DEFAULT_TARGET)
    r.add_argument("--prompts", help="jsonl of calibration prompts (default: the packaged calibration set)")
    r.add_argument("--prompt", action="append", help="a calibration prompt (repeatable)")
    r.add_argument("--skip-ratio", type=float, required=True, help="share of layer weight bytes to skip, in (0, 1)")
    r.add_argument("--method", choices=["greedy", "gates", "random"], default="greedy")
    r.add_argument("--granularity", choices=["layer", "sublayer"], default="sublayer",
                   help="drop whole layers, or attention and MLP sublayers separately")
    r.add_argument("--new-tokens", type=int, default=64, help="tokens the target generates per calibration prompt")
    r.add_argument("--holdout", type=float, default=0.25, help="share of calibration text held back for the report")
    r.add_argument("--allow-first-last", action="store_true", help="let the first and last layers be dropped")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    r.add_argument("--out", default="route.json")
    r.set_defaults(func=cmd_calibrate)

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
    b.add_argument("--tau-slim", type=float, default=0.8)
    b.add_argument("--pending-bound", type=int, default=None)
    b.add_argument("--mix-lookup", type=int, default=0, help="model drafters: prompt-lookup drafts when >= this many")
    b.add_argument("--draft-stop", type=float, default=0.0, help="adaptive draft length threshold")
    b.add_argument("--draft-vocab", type=int, default=None, help="model drafters propose only ids below this")
    b.add_argument("--draft-context", type=int, default=0,
                   help="model drafters see only the prompt's first 4 and last N tokens (0: all)")
    b.add_argument("--prefill-dtype", choices=PREFILL_DTYPES, default=None,
                   help="our systems' prefill products (default float32; per system: @prefill_dtype=bfloat16)")
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--limit", type=int, default=None, help="use this many prompts, spread over tasks")
    b.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    b.add_argument("--drafter-dtype", choices=["float32", "bfloat16"], default=None, help=DRAFTER_DTYPE_HELP)
    b.add_argument("--quantize", choices=["none", "int8", "gguf"], default=None,
                   help="int8 weight-only matrices for our systems; gguf: the target keeps its GGUF codes (exact) "
                        "(the hf-* peers keep --dtype)")
    b.add_argument("--layout", choices=LAYOUTS, default="auto", help=LAYOUT_HELP)
    b.add_argument("--checkpoint", help="file saved after every prompt; rerun with it to resume an interrupted bench")
    b.add_argument("--temperature", type=float, default=0.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-quality", action="store_true", help="skip task metrics (agreement is always computed)")
    b.add_argument("--sweep", action="store_true", help="grid of viasd-via thresholds instead of --systems")
    b.add_argument("--sweep-accept", default="0.8,0.9,0.95,0.99", help="tau_accept values of the sweep")
    b.add_argument("--sweep-slim", default="0.5,0.7,0.9,0.99", help="tau_slim values of the sweep")
    b.add_argument("--pareto", help="write the speed/agreement/quality Pareto plot here (PNG)")
    b.add_argument("--plots", help="write speedup-per-task and tier-mix plots into this folder")
    b.add_argument("--rescore", help="recompute agreement and quality of a saved report instead of running")
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
