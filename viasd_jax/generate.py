"""`generate`: prompts in, tokens, texts and counters out, one compiled loop per shape.

Compiled programs are cached by everything that shapes them (config, mode,
batch, prompt bucket, cache length); per-call values (temperature, top-k/p,
seed, max_new_tokens, thresholds, prompt lengths within a bucket) enter as
arrays and never recompile. `compile_count()` exposes the number of compiles.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax import decode as D
from viasd_jax import drafters as DR
from viasd_jax import prompts as P
from viasd_jax.cache import init_cache, kv_dtype
from viasd_jax.layout import layout_of
from viasd_jax.loading import Model
from viasd_jax.route import default_route, route_mask
from viasd_jax.sampling import SamplingParams
from viasd_jax.stopping import stop_array

LENGTH_MULTIPLE = 128  # cache lengths are rounded up to this, so max_new_tokens rarely recompiles
# Prompt tokens per prefill forward (shorter prompts use their bucket). The CPU kernel
# computes only a chunk's live rows, so a chunk's padding costs only attention and
# elementwise work, while every chunk re-reads (and, for bfloat16 products, re-rounds)
# all weights: 256 beat 64 on the dev prompts (docs/performance.md, benchmarks/prefill_chunk.py).
PREFILL_CHUNK = 256

_COMPILED: dict[Any, Any] = {}
_COMPILE_SECONDS: list[float] = []


def compile_count() -> int:
    """How many programs `generate` has compiled in this process."""
    return len(_COMPILE_SECONDS)


def clear_compiled() -> None:
    """Free every program `generate` (and jax) has compiled in this process.

    Each XLA CPU executable holds hundreds of memory mappings; a long-lived process
    that compiles many shapes can reach the kernel's limit (vm.max_map_count, 65530
    by default) and crash inside the compiler. Call this between unrelated jobs."""
    import gc

    _COMPILED.clear()
    jax.clear_caches()
    gc.collect()


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
    origins: list[list[str]]  # per generated token, who settled it (see decode.ORIGINS)
    prefill_seconds: float = 0.0  # the prompts (all but their last token), compilation excluded

    @property
    def tokens_per_second(self) -> float:
        """New tokens over the whole wall time, prefill included, compilation not."""
        run = self.seconds - self.compile_seconds
        return self.stats["new_tokens"] / run if run > 0 else float("nan")

    @property
    def decode_tokens_per_second(self) -> float:
        """New tokens over the rounds' time alone (prefill and compilation excluded)."""
        run = self.seconds - self.compile_seconds - self.prefill_seconds
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


def parse_widths(text: str) -> tuple[int, ...]:
    """`verify_widths` from the command line: "1,6", "1+6" (inside a bench override,
    where ',' separates systems) or "none"."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(w) for w in text.replace("+", ",").split(","))
    except ValueError:
        raise ValueError(f"verify_widths must be a list of integers such as '1,6' or 'none', got {text!r}") from None


def _verify_widths(widths, config: D.EngineConfig) -> tuple[int, ...]:
    """Narrower full-pass widths: as given, or by default 1 for prompt lookup (rounds
    where nothing matched) and, in via mode, gamma + 2 (rounds with nothing pending)."""
    if widths is not None:
        try:
            if isinstance(widths, str):
                raise TypeError  # text goes through parse_widths
            return tuple(sorted({int(w) for w in ([widths] if isinstance(widths, int) else widths)}))
        except (TypeError, ValueError):
            raise ValueError(f"verify_widths must be a list of integers, got {widths!r}") from None
    auto = set()
    if config.drafter is not None and config.drafter.kind == "lookup":
        auto.add(1)
    if config.mode == "via":
        auto.add(config.gamma + 2)
    return tuple(sorted(w for w in auto if w < config.full_width))


def _drafter_spec(target: Model, drafter, ngram: int, mix_lookup: int = 0, min_ngram: int = 1,
                  draft_vocab: int | None = None, draft_context: int = 0):
    """(DrafterSpec, drafter Model or None) for `drafter`: a Model, "self" or "lookup"."""
    if int(draft_context) != draft_context or draft_context < 0:
        raise ValueError(f"draft_context must be a non-negative integer (0 = the whole prompt), got {draft_context}")
    if draft_context and drafter == "lookup":
        raise ValueError("draft_context shortens a model drafter's prompt; prompt lookup has no model, leave it 0")
    v = target.config.vocab_size
    if draft_vocab is not None and (int(draft_vocab) != draft_vocab or not 1 <= draft_vocab <= v):
        raise ValueError(f"draft_vocab must be an integer in [1, {v}] (the vocabulary size), got {draft_vocab}")
    if draft_vocab is not None and drafter == "lookup":
        raise ValueError("draft_vocab narrows a model drafter's head; prompt lookup has none, leave it None")
    vocab = None if draft_vocab is None or draft_vocab == v else int(draft_vocab)
    if int(mix_lookup) != mix_lookup or mix_lookup < 0:
        raise ValueError(f"mix_lookup must be a non-negative integer (0 = off), got {mix_lookup}")
    if mix_lookup and drafter == "lookup":
        raise ValueError("mix_lookup mixes prompt lookup into a model drafter; with drafter='lookup' leave it 0")
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    if not 1 <= min_ngram <= ngram:
        raise ValueError(f"min_ngram must be in [1, ngram={ngram}], got {min_ngram}")
    if isinstance(drafter, Model):
        t, d = target.config.vocab_size, drafter.config.vocab_size
        if t != d:
            raise ValueError(f"drafter vocab size {d} differs from the target's {t}: they must share a tokenizer")
        if target.eos_ids and drafter.eos_ids and set(target.eos_ids) != set(drafter.eos_ids):
            raise ValueError(f"drafter EOS ids {list(drafter.eos_ids)} differ from the target's {list(target.eos_ids)}")
    if isinstance(drafter, Model) or drafter == "self":
        model = drafter if isinstance(drafter, Model) else None
        kind, cfg = ("self", target.config) if model is None else ("model", model.config)
        return DR.DrafterSpec(kind, cfg, ngram, int(mix_lookup), int(min_ngram), vocab, int(draft_context)), model
    if drafter == "lookup":
        return DR.DrafterSpec("lookup", None, ngram=ngram, min_ngram=int(min_ngram)), None
    raise ValueError(f"drafter must be a loaded Model, 'self' or 'lookup', got {drafter!r} "
                     "(load a path with viasd_jax.load first)")


def _threshold(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _seeds(seed, num_prompts: int, batch: int) -> np.ndarray:
    """One seed per row: an int applies to every row (so a row's output does not depend on
    its batch-mates), or a list gives each prompt its own. Padding rows get seed 0."""
    seeds = np.asarray(seed)
    if seeds.ndim == 0:
        seeds = np.full(num_prompts, seeds)
    if seeds.shape != (num_prompts,) or not np.issubdtype(seeds.dtype, np.integer) or (seeds < 0).any():
        raise ValueError(f"seed must be a non-negative int or a list of {num_prompts} of them, got {seed!r}")
    return np.concatenate([seeds, np.zeros(batch - num_prompts, seeds.dtype)]).astype(np.uint32)


def _mask(route, num_layers: int, default_skip: float) -> np.ndarray:
    return route_mask(default_route(num_layers, default_skip) if route is None else route, num_layers)


@dataclasses.dataclass
class Prepared:
    """Everything one generation needs: the static config, runtime params and the
    initial state (before prefill). `generate` runs it; users may drive
    `decode.prefill` and `decode.decode_step` on it themselves."""

    config: D.EngineConfig
    params: D.EngineParams
    state: D.DecodeState
    prefill_width: int  # prompt tokens per prefill forward (see decode.prefill)
    prompt_tokens: list[list[int]]  # the real prompts (padding rows for a mesh excluded)
    tokenizer: Any = None


def _prefill_dtype(prefill_dtype: str, target: Model) -> str:
    """`prefill_dtype` if the target's layout can take it (`EngineConfig` checks the value)."""
    if prefill_dtype == "bfloat16" and layout_of(target.params) != "cpu-kernel":
        raise ValueError(f"prefill_dtype={prefill_dtype!r} needs the target in layout 'cpu-kernel' (the CPU kernel "
                         f"rounds the products), not {layout_of(target.params)!r}")
    return prefill_dtype


def prepare(
    target: Model,
    prompts,
    *,
    drafter=None,
    mode: str | None = None,
    gamma: int = 4,
    route=None,
    self_route=None,
    tau_accept: float = 0.9,
    tau_slim: float = 0.8,
    lossless: bool = False,
    pending_bound: int | None = None,
    ngram: int = 3,
    min_ngram: int = 1,
    mix_lookup: int = 0,
    draft_stop: float = 0.0,
    draft_vocab: int | None = None,
    draft_context: int = 0,
    verify_widths: Sequence[int] | None = None,
    prefill_dtype: str = "float32",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop: Sequence | None = None,
    chat_template: bool = True,
    max_len: int | None = None,
    mesh=None,
) -> Prepared:
    """Validate the options of `generate` and build its config, params and state."""
    mode = mode or ("ar" if drafter is None else "via")
    if mode not in D.MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(D.MODES)}")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens}")
    if mode == "ar":
        spec, drafter_model, gamma = None, None, 0
    else:
        if drafter is None:
            raise ValueError(f"mode {mode!r} needs a drafter: a Model, 'self' or 'lookup'")
        if int(gamma) != gamma or gamma < 1:
            raise ValueError(f"gamma must be an integer >= 1, got {gamma}")
        spec, drafter_model = _drafter_spec(target, drafter, ngram, mix_lookup, min_ngram, draft_vocab, draft_context)
    config = D.EngineConfig(target.config, mode, spec, int(gamma),
                            int(2 * gamma if pending_bound is None else pending_bound) if mode == "via" else 0,
                            bool(lossless), mesh)
    config = dataclasses.replace(config, verify_widths=_verify_widths(verify_widths, config),
                                 prefill_dtype=_prefill_dtype(prefill_dtype, target))
    sp = SamplingParams.make(temperature, top_k, top_p)
    tau_a, tau_s = _threshold("tau_accept", tau_accept), _threshold("tau_slim", tau_slim)
    stop_below = _threshold("draft_stop", draft_stop)
    num_layers = target.config.num_layers
    slim_route = _mask(target.route if route is None else route, num_layers, 0.4)
    if spec is not None and spec.kind == "self":
        draft_route = _mask(target.self_route if self_route is None else self_route, num_layers, 0.6)
    else:
        draft_route = np.ones((drafter_model.config.num_layers if drafter_model else 1, 2), bool)
    ids = P.encode(target, P.normalize(prompts), chat_template)
    num_prompts = len(ids)
    if mesh is not None:
        from viasd_jax import sharding as SH

        target = SH.shard_model(target, mesh)
        drafter_model = drafter_model and SH.shard_model(drafter_model, mesh)
        ids = ids + [ids[0]] * (-len(ids) % mesh.shape[SH.DATA])  # whole rows per data shard
    slack = config.full_width + config.gamma + 2
    width, cache_len = plan_lengths([len(r) for r in ids], max_new_tokens, max_len, slack=slack)
    tokens, lengths = P.pad(ids, cache_len, target.pad_id)
    b = len(ids)
    draft_cache = None
    if spec is not None and spec.has_cache:
        draft_cache = init_cache(spec.cfg, b, cache_len, kv_dtype((drafter_model or target).dtype))
    budget = np.where(np.arange(b) < num_prompts, max_new_tokens, 0)  # padding rows are done at once
    state = D.init_state(config, tokens, lengths, budget, init_cache(target.config, b, cache_len, kv_dtype(target.dtype)),
                         draft_cache, _seeds(seed, num_prompts, b))
    if mesh is not None:
        state = SH.put_global(state, SH.state_shardings(mesh, state))
    params = D.EngineParams(
        target=target.params,
        drafter=drafter_model.params if drafter_model is not None else None,
        slim_route=jnp.asarray(slim_route),
        draft_route=jnp.asarray(draft_route),
        sampling=sp,
        tau_accept=jnp.asarray(tau_a, jnp.float32),
        tau_slim=jnp.asarray(tau_s, jnp.float32),
        draft_stop=jnp.asarray(stop_below, jnp.float32),
        stops=jnp.asarray(stop_array(_stop_sequences(target, stop))),
    )
    return Prepared(config, params, state, min(width, PREFILL_CHUNK), ids[:num_prompts], target.tokenizer)


def collect(prepared: Prepared, out: D.DecodeState, seconds: float = 0.0, compile_s: float = 0.0,
            prefill_s: float = 0.0) -> GenerateResult:
    """Read a final state into a `GenerateResult`."""
    from viasd_jax.sharding import to_host

    k = len(prepared.prompt_tokens)
    host = to_host({"n": out.n, "tokens": out.tokens, "origin": out.origin, "counters": out.counters})
    n, toks, origin = host["n"], host["tokens"], host["origin"]
    starts = [len(p) for p in prepared.prompt_tokens]
    gen = [toks[i, starts[i] : n[i]].tolist() for i in range(k)]
    origins = [[D.ORIGINS[o] for o in origin[i, starts[i] : n[i]]] for i in range(k)]
    tok = prepared.tokenizer
    texts = None if tok is None else [tok.decode(g, skip_special_tokens=True) for g in gen]
    stats, rows = summarize({name: v[:k] for name, v in host["counters"].items()})
    return GenerateResult(gen, texts, stats, rows, seconds, compile_s, prepared.prompt_tokens, origins, prefill_s)


def generate(target: Model, prompts, **options) -> GenerateResult:
    """Generate continuations of `prompts` (a string, a list of ids, or a list of either).

    mode: "ar" plain decoding; "sd" speculative decoding (every draft verified by the
    full model); "via" the three tiers. Default: "via" with a drafter, "ar" without.
    drafter: a `Model` with the target's vocabulary, "self" (the target over
    `self_route`) or "lookup" (prompt lookup of `min_ngram`- to `ngram`-grams). mix_lookup:
    with a model drafter, take prompt-lookup drafts whenever they offer at least this
    many tokens (0 = off). draft_stop: a model drafter stops drafting once its top
    probability falls below this (adaptive draft length; 0 = always gamma). draft_vocab:
    a model (or self) drafter proposes only token ids below this, and on the CPU kernel
    reads only those rows of its LM head (Qwen's 151936-row head is over a quarter of
    the 0.5B's bytes); output is unchanged, acceptance drops where the target picks a
    higher id (default None: the whole vocabulary). draft_context: a model (or self)
    drafter sees only the prompt's first 4 and last `draft_context` tokens, so its
    prefill costs at most that many tokens; output is unchanged, acceptance drops where
    drafting needs the cut middle (default 0: the whole prompt).
    verify_widths: narrower windows the full (and slim) passes are also compiled
    for; each round runs the narrowest that holds its tokens (default: 1 for
    prompt lookup, gamma + 2 in via mode; () = always the full window).
    prefill_dtype: "bfloat16" runs the prompt's matrix products with both operands
    rounded to bfloat16 on the CPU kernel (float32 accumulation; about twice as fast on
    CPUs with AVX-512 BF16, prefill being compute-bound). Lossy against the float32
    prefill (the prompt's K/V carry the rounding); the rounds are unchanged, so sd
    still equals ar under the same setting. Default "float32". (A model drafter on the
    CPU kernel prefills with bfloat16 products either way where the CPU has AVX-512 BF16:
    its prompt only shapes proposals.)
    route: the slim verifier's route (layer indices, a `Route` or a route.json path;
    default: the checkpoint's calibrated route, else a hand-picked 40% block skip).
    tau_accept / tau_slim: tier thresholds in [0, 1]. lossless: re-check pending
    tokens with the full model. pending_bound: most tokens a row may carry
    unverified (default: 2 * gamma). temperature=0 is greedy; top_k, top_p; seed (an
    int, or one per prompt). `stop` adds stop sequences (strings or token ids) to the
    target's EOS ids. chat_template: string prompts go through the tokenizer's chat
    template. `max_len` fixes the cache length (default: prompt bucket +
    max_new_tokens + draft slack, rounded up to 128). `mesh` (from `make_mesh`)
    shards rows over its data axis and heads, MLP and vocab over its model axis.
    """
    prepared = prepare(target, prompts, **options)
    t0 = time.perf_counter()
    state, prefill_compile_s = run_compiled(
        D.prefill_program, {"config": D.prefill_config(prepared.config), "width": prepared.prefill_width},
        prepared.params, prepared.state)
    state = jax.block_until_ready(state)
    prefill_s = time.perf_counter() - t0 - prefill_compile_s
    out, compile_s = run_compiled(D.rounds_loop, {"config": D.rounds_config(prepared.config)}, prepared.params, state)
    out = jax.block_until_ready(out)
    return collect(prepared, out, time.perf_counter() - t0, prefill_compile_s + compile_s, prefill_s)


generate.__signature__ = inspect.signature(prepare).replace(return_annotation=GenerateResult)
