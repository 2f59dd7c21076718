"""`generate`: prompts in, tokens, texts and counters out, one compiled loop per shape.

Compiled programs are cached by everything that shapes them (config, mode,
batch, prompt bucket, cache length); per-call values (temperature, top-k/p,
seed, max_new_tokens, thresholds, prompt lengths within a bucket) enter as
arrays and never recompile. `compile_count()` exposes the number of compiles.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax import decode as D
from viasd_jax import prompts as P
from viasd_jax.cache import init_cache
from viasd_jax.loading import Model
from viasd_jax.sampling import SamplingParams
from viasd_jax.stopping import stop_array

LENGTH_MULTIPLE = 128  # cache lengths are rounded up to this, so max_new_tokens rarely recompiles

_COMPILED: dict[Any, Any] = {}
_COMPILE_SECONDS: list[float] = []


def compile_count() -> int:
    """How many programs `generate` has compiled in this process."""
    return len(_COMPILE_SECONDS)


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves)


def run_compiled(fn, static: dict, *args):
    """Call jitted `fn`, compiling ahead of time once per signature; returns
    (output, compile seconds of this call)."""
    key = (fn, tuple(sorted(static.items())), _signature(args))
    compile_s = 0.0
    if key not in _COMPILED:
        t0 = time.perf_counter()
        _COMPILED[key] = fn.lower(*args, **static).compile()
        compile_s = time.perf_counter() - t0
        _COMPILE_SECONDS.append(compile_s)
    return _COMPILED[key](*args), compile_s


@dataclasses.dataclass
class GenerateResult:
    """Generated ids per prompt (prompt excluded, EOS included), texts, counters."""

    tokens: list[list[int]]
    texts: list[str] | None
    stats: dict[str, float]
    row_stats: list[dict[str, int]]
    seconds: float
    compile_seconds: float
    prompt_tokens: list[list[int]]

    @property
    def tokens_per_second(self) -> float:
        run = self.seconds - self.compile_seconds
        return self.stats["new_tokens"] / run if run > 0 else float("nan")


def summarize(counters: dict[str, np.ndarray]) -> tuple[dict[str, float], list[dict[str, int]]]:
    """Totals (plus derived ratios) and per-row values of the loop's counters."""
    totals = {k: int(np.sum(v)) for k, v in counters.items()}
    derived = {
        "rejection_rate": totals["rejected"] / totals["drafted"] if totals["drafted"] else 0.0,
        "tokens_per_round": totals["new_tokens"] / totals["rounds"] if totals["rounds"] else 0.0,
        "tokens_per_full_pass": totals["new_tokens"] / totals["full_passes"] if totals["full_passes"] else 0.0,
    }
    rows = [{k: int(v[i]) for k, v in counters.items()} for i in range(len(next(iter(counters.values()))))]
    return {**totals, **derived}, rows


def _stop_sequences(model: Model, stop) -> list[list[int]]:
    seqs = [[int(e)] for e in model.eos_ids]
    for s in stop or ():
        if isinstance(s, str):
            if model.tokenizer is None:
                raise ValueError("string stop sequences need a tokenizer; pass token ids instead")
            seqs.append(model.tokenizer(s, add_special_tokens=False).input_ids)
        elif isinstance(s, (int, np.integer)):
            seqs.append([int(s)])
        else:
            seqs.append([int(t) for t in s])
    return seqs


def plan_lengths(prompt_lens: Sequence[int], max_new_tokens: int, max_len: int | None, slack: int) -> tuple[int, int]:
    """(prompt bucket width, cache length) with clear errors when they cannot fit."""
    longest = max(prompt_lens)
    width = P.bucket(longest)
    if max_len is None:
        max_len = P.round_up(width + max_new_tokens + slack, LENGTH_MULTIPLE)
    if longest > max_len:
        raise ValueError(f"prompt of {longest} tokens is longer than the cache (max_len={max_len})")
    if longest + max_new_tokens + slack > max_len:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) overflows the cache (max_len={max_len}); "
            "lower max_new_tokens or raise max_len"
        )
    return min(width, max_len), max_len


def generate(
    model: Model,
    prompts,
    *,
    mode: str = "ar",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop: Sequence | None = None,
    chat_template: bool = True,
    max_len: int | None = None,
) -> GenerateResult:
    """Generate continuations of `prompts` (a string, a list of ids, or a list of either).

    mode "ar" is plain decoding; `temperature=0` is greedy. `stop` adds stop
    sequences (strings or token ids) to the model's EOS ids. `max_len` fixes the
    cache length (default: prompt bucket + max_new_tokens, rounded up).
    """
    if mode != "ar":
        raise ValueError(f"unknown mode {mode!r}; choose 'ar'")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens}")
    sp = SamplingParams.make(temperature, top_k, top_p)
    ids = P.encode(model, P.normalize(prompts), chat_template)
    width, cache_len = plan_lengths([len(r) for r in ids], max_new_tokens, max_len, slack=1)
    tokens, lengths = P.pad(ids, cache_len, model.pad_id)
    cache = init_cache(model.config, len(ids), cache_len, model.dtype)
    state = D.init_state(tokens, lengths, max_new_tokens, cache, seed)
    stops = jnp.asarray(stop_array(_stop_sequences(model, stop)))
    t0 = time.perf_counter()
    out, compile_s = run_compiled(
        D.generate_ar, {"cfg": model.config, "prefill_width": width}, model.params, state, sp, stops
    )
    out = jax.block_until_ready(out)
    seconds = time.perf_counter() - t0
    n = np.asarray(out.n)
    toks = np.asarray(out.tokens)
    gen = [toks[i, lengths[i] : n[i]].tolist() for i in range(len(ids))]
    texts = None
    if model.tokenizer is not None:
        texts = [model.tokenizer.decode(g, skip_special_tokens=True) for g in gen]
    stats, rows = summarize({k: np.asarray(v) for k, v in out.counters.items()})
    return GenerateResult(gen, texts, stats, rows, seconds, compile_s, ids)
