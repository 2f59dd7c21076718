"""Does the target score a token with the same bits one token at a time as in a window?

Lossless speculative decoding relies on this: a verification window must give each
token the logits that plain decoding gives it, or greedy sd and ar can part at a
near-tie. The kernel's rows are independent by construction (tests pin it); this
checks the whole forward on a real model and prompt. After a shared prefill of the
prompt, the same `--new` tokens (the model's own greedy continuation) run once one at a
time and once in windows of `--window`. It prints whether the logits and each layer's
cached K and V agree to the bit and, where they do not, the first layer that differs
and the largest difference.

    python benchmarks/window_bits.py [--model qwen2.5-coder-1.5b] [--quantize gguf]
        [--products int8] [--new 12] [--window 6] [--task chat | --id topical_chat/26]
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import viasd_jax
from viasd_jax import model as M
from viasd_jax.cache import init_cache, kv_dtype

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "prompts-dev.jsonl")


@partial(jax.jit, static_argnames=("cfg",))
def _forward(params, tokens, positions, cache, *, cfg):
    route = jnp.ones((cfg.num_layers, 2), bool)
    h, cache = M.forward(params, cfg, tokens, positions, cache, route)
    return M.logits(params, cfg, h), cache


def run(model, cache, tokens: list[int], start: int, sizes: list[int]):
    """Logits [len(tokens), V] for `tokens` at positions from `start`, fed in `sizes` pieces."""
    cfg, out, at = model.config, [], 0
    for n in sizes:
        piece = jnp.asarray([tokens[at:at + n]], jnp.int32)
        pos = jnp.arange(start + at, start + at + n, dtype=jnp.int32)[None]
        logits, cache = _forward(model.params, piece, pos, cache, cfg=cfg)
        out.append(np.asarray(logits[0]))
        at += n
    return np.concatenate(out), cache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--quantize", default="gguf")
    ap.add_argument("--products", default=None)
    ap.add_argument("--new", type=int, default=12)
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--task", default="chat", help="the first dev prompt of this task")
    ap.add_argument("--id", default=None, help="the dev prompt with this id instead (e.g. topical_chat/26)")
    args = ap.parse_args()

    model = viasd_jax.load(args.model, quantize=args.quantize, products=args.products)
    row = next(r for r in map(json.loads, open(DEV)) if (r["id"] == args.id if args.id else r["task"] == args.task))
    prompt = viasd_jax.prompts.encode(model, [row["prompt"]])[0]
    new = viasd_jax.generate(model, [prompt], max_new_tokens=args.new, chat_template=False).tokens[0]
    cfg = model.config
    cache = init_cache(cfg, 1, len(prompt) + len(new) + 8, kv_dtype(model.dtype))
    _, cache = run(model, cache, prompt[:-1], 0, [len(prompt) - 1])
    tokens, start = [prompt[-1]] + new[:-1], len(prompt) - 1
    windows = [args.window] * (len(tokens) // args.window) + ([len(tokens) % args.window] if len(tokens) % args.window else [])
    one, cache_one = run(model, jax.tree.map(jnp.copy, cache), tokens, start, [1] * len(tokens))
    win, cache_win = run(model, jax.tree.map(jnp.copy, cache), tokens, start, windows)
    same = np.array_equal(one.view(np.uint32), win.view(np.uint32))
    print(f"{args.model} quantize={args.quantize} products={args.products}: {len(tokens)} tokens after a "
          f"{len(prompt) - 1}-token prefill, windows {windows}")
    print(f"logits bitwise equal: {same}; max |diff| {np.abs(one - win).max():.3g}; "
          f"argmax equal: {bool((one.argmax(-1) == win.argmax(-1)).all())}")
    for name in ("k", "v"):
        a, b = np.asarray(getattr(cache_one, name)), np.asarray(getattr(cache_win, name))
        differ = [layer for layer in range(a.shape[0]) if not np.array_equal(a[layer].view(np.uint32),
                                                                              b[layer].view(np.uint32))]
        first = f"first layer {differ[0]}, max |diff| {np.abs(a - b).max():.3g}" if differ else "all equal"
        print(f"cache {name}: {len(differ)} of {a.shape[0]} layers differ ({first})")


if __name__ == "__main__":
    main()
