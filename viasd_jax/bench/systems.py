"""The systems a bench compares: our modes and Hugging Face transformers peers.

Each system turns one prompt (token ids) into generated ids and a wall time that
excludes compilation; ours also report the engine's counters. A system name may
carry overrides of the shared engine options after an `@`, separated by `:`,
e.g. `viasd-via@tau_accept=0.95:tau_slim=0.9:gamma=6` (the threshold sweep
builds its grid this way). `layout=...` / `drafter_layout=...` (`output-major`,
`cpu-kernel`, or `input-major` when the bench's `--layout` is another) run that
system on a second copy of the target / drafter in that weight layout, and
`quantize=int8` on int8 copies of both, `quantize=gguf` on a copy of the target that keeps
its GGUF codes (exact; the drafter as it is), `dtype=bfloat16` on bfloat16 copies of both,
`drafter_dtype=bfloat16` on a bfloat16 copy of the drafter alone, `drafter_quantize=int8`
(or `q4`, 4-bit codes made at load) on such a copy of the drafter alone (each copy loaded
once, shared by every system that names it). `products=int8` multiplies a GGUF-codes
target by int8-quantized activations (`load(..., products=)`; lossy), `drafter_products=int8`
a codes drafter (`drafter_quantize=gguf` or `q4`). A drafter only proposes, so its dtype and products
change speed and acceptance, never the lossless modes' output; the target's change the
output (its agreement is measured against the bench's own target).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax.numpy as jnp

import viasd_jax
from viasd_jax import fetch
from viasd_jax.generate import parse_widths
from viasd_jax.layout import layout_of, with_products

OURS = ("viasd-ar", "viasd-sd", "viasd-via", "viasd-via-lossless", "viasd-self", "viasd-lookup")
PEERS = ("hf-ar", "hf-assisted", "hf-lookup")
ALL_SYSTEMS = OURS + PEERS
NEEDS_DRAFTER = ("viasd-sd", "viasd-via", "viasd-via-lossless", "hf-assisted")
ENGINE_OPTIONS = ("drafter", "gamma", "route", "self_route", "tau_accept", "tau_slim", "pending_bound", "lookup_gamma",
                  "ngram", "min_ngram", "mix_lookup", "draft_stop", "draft_vocab", "draft_context",
                  "verify_widths", "prefill_dtype")
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "seed")
MODEL_OPTIONS = ("layout", "drafter_layout", "quantize", "drafter_quantize", "dtype", "drafter_dtype", "products",
                 "drafter_products")


@dataclasses.dataclass
class RunOutput:
    tokens: list[int]
    seconds: float  # generation wall time, compilation excluded
    compile_seconds: float
    stats: dict[str, int]
    prefill_seconds: float  # ours: the prompt but its last token; HF: until the first new token


@dataclasses.dataclass
class ViasdSystem:
    name: str
    target: Any
    options: dict

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> RunOutput:
        r = viasd_jax.generate(self.target, [prompt_ids], max_new_tokens=max_new_tokens, chat_template=False,
                               **self.options)
        return RunOutput(r.tokens[0], r.seconds - r.compile_seconds, r.compile_seconds, r.row_stats[0],
                         r.prefill_seconds)


class _FirstTokenClock:
    """A transformers streamer that notes when the first new token arrives (its
    first `put` is the prompt)."""

    def __init__(self):
        self.puts, self.first = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self):
        pass


@dataclasses.dataclass
class HFSystem:
    name: str
    model: Any
    eos_ids: tuple[int, ...]
    pad_id: int
    assistant: Any = None
    lookup: int = 0  # prompt_lookup_num_tokens for hf-lookup

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> RunOutput:
        import torch

        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                  eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id)
        if self.assistant is not None:
            kw["assistant_model"] = self.assistant
        if self.lookup:
            kw["prompt_lookup_num_tokens"] = self.lookup
        clock = _FirstTokenClock()
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model.generate(torch.tensor([prompt_ids]), streamer=clock, **kw)
            seconds = time.perf_counter() - t0
        first = (clock.first or t0 + seconds) - t0
        return RunOutput(out[0, len(prompt_ids):].tolist(), seconds, 0.0, {}, first)


def hf_dir_for(path: str) -> str:
    """The Hugging Face directory behind a model path (for the transformers peers)."""
    if not os.path.exists(path) and path in fetch.MODELS:
        return fetch.ensure_hf(path)
    from checkpoints_convert import is_checkpoint, read_manifest

    if is_checkpoint(path):
        source = read_manifest(path).get("source")
        if not source or not os.path.isfile(os.path.join(source, "config.json")):
            raise FileNotFoundError(f"{path}: its Hugging Face source {source!r} is gone; pass the HF directory")
        return source
    return path


def load_hf(path: str, dtype: str):
    try:
        import torch
        import transformers
    except ImportError:
        raise ImportError("the hf-* peers need torch: pip install 'viasd-jax[hf]'") from None
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir_for(path), dtype=getattr(torch, dtype))
    return model.eval()


def parse_system(name: str) -> tuple[str, dict]:
    """`base@key=value:key=value` -> (base, overrides); values parsed as numbers when they are."""
    base, _, rest = name.partition("@")
    if base not in ALL_SYSTEMS:
        raise ValueError(f"unknown system {base!r}; choose from {', '.join(ALL_SYSTEMS)}")
    overrides = {}
    for item in filter(None, rest.split(":")):
        key, eq, value = item.partition("=")
        known = ENGINE_OPTIONS + SAMPLING_OPTIONS + MODEL_OPTIONS
        if not eq or key not in known:
            raise ValueError(f"system {name!r}: bad override {item!r} (known: {', '.join(known)})")
        if key == "verify_widths":
            overrides[key] = parse_widths(value)
            continue
        try:
            overrides[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            overrides[key] = value
    return base, overrides


def _our_options(base: str, drafter, o: dict) -> dict:
    if "drafter" in o:  # e.g. viasd-sd@drafter=lookup: the same mode with another drafter kind
        if o["drafter"] not in ("lookup", "self") or base not in ("viasd-sd", "viasd-via", "viasd-via-lossless"):
            raise ValueError(f"{base}: the drafter override takes 'lookup' or 'self' and applies to "
                             f"viasd-sd / viasd-via / viasd-via-lossless, got {o['drafter']!r}")
        drafter = o["drafter"]
    sampling = {k: o[k] for k in SAMPLING_OPTIONS if k in o}
    engine = {k: o[k] for k in ("gamma", "route", "tau_accept", "tau_slim", "pending_bound", "verify_widths") if k in o}
    model_draft = {k: o[k] for k in ("mix_lookup", "draft_stop", "draft_vocab", "draft_context", "ngram", "min_ngram") if k in o}
    per_system = {
        "viasd-ar": dict(mode="ar"),
        "viasd-sd": dict(mode="sd", drafter=drafter, **engine, **model_draft),
        "viasd-via": dict(mode="via", drafter=drafter, **engine, **model_draft),
        "viasd-via-lossless": dict(mode="via", drafter=drafter, lossless=True, **engine, **model_draft),
        "viasd-self": dict(mode="via", drafter="self", self_route=o.get("self_route"), **engine, **model_draft),
        "viasd-lookup": dict(mode="via", drafter="lookup", **{**engine, "gamma": o.get("lookup_gamma", 8)},
                             ngram=o.get("ngram", 3), min_ngram=o.get("min_ngram", 1)),
    }
    opts = {**per_system[base], **sampling, **{k: o[k] for k in ("prefill_dtype",) if k in o}}
    if drafter == "self" and base != "viasd-self":
        opts["self_route"] = o.get("self_route")
    if base == "viasd-sd":
        opts = {k: v for k, v in opts.items() if k not in ("route", "tau_accept", "tau_slim", "pending_bound")}
    return opts


def _multiplied(model, products: str | None):
    """`model` whose kernel multiplies as `products` asks (the same arrays; None: as it is)."""
    if not products or not hasattr(model, "params"):
        return model
    return dataclasses.replace(model, params=with_products(model.params, products))


def make_systems(names, target, target_path: str, dtype: str, drafter=None, drafter_path=None, options=None,
                 quantize=None):
    """Instantiate the named systems; models are loaded once and shared.

    `options` holds the engine settings (gamma, route, self_route, tau_accept,
    tau_slim, pending_bound, lookup_gamma, ngram) and sampling (temperature, top_k,
    top_p, seed); our systems share them, so they differ only in mode and drafter
    (and in a name's own `@` overrides).
    """
    parsed = [(name, *parse_system(name)) for name in names]
    needing = [n for n, base, _ in parsed if base in NEEDS_DRAFTER]
    if drafter_path is None and needing:
        raise ValueError(f"systems {', '.join(needing)} need --drafter")
    systems, hf_target, hf_drafter = [], None, None
    copies = {}  # (path, layout, quantize, dtype) -> a second copy of a model

    def variant(model, path, layout, quant, dt=None):
        if not hasattr(model, "params"):
            return model
        base = (layout_of(model.params), quantize, jnp.dtype(model.dtype).name)
        quant = quant or quantize
        layout = layout or ("auto" if quant != quantize else base[0])  # int8 has no kernel layout
        if dt not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype override {dt!r}: choose float32, bfloat16 or float16")
        dt = jnp.dtype(dt).name if dt else base[2]
        if (layout, quant, dt) == base:
            return model
        if (path, layout, quant, dt) not in copies:
            copies[path, layout, quant, dt] = viasd_jax.load(path, dtype=dt, quantize=quant, layout=layout)
        return copies[path, layout, quant, dt]

    for name, base, overrides in parsed:
        o = {**(options or {}), **overrides}
        if base in OURS:
            t = variant(target, target_path, o.get("layout"), o.get("quantize"), o.get("dtype"))
            inherited = None if o.get("quantize") == "gguf" else o.get("quantize")  # gguf: the target's own file
            d = variant(drafter, drafter_path, o.get("drafter_layout"), o.get("drafter_quantize", inherited),
                        o.get("drafter_dtype", o.get("dtype")))
            t, d = (_multiplied(m, o.get(key)) for m, key in ((t, "products"), (d, "drafter_products")))
            systems.append(ViasdSystem(name, t, _our_options(base, d, o)))
            continue
        hf_target = hf_target or load_hf(target_path, dtype)
        if base == "hf-assisted":
            hf_drafter = hf_drafter or load_hf(drafter_path, dtype)
        systems.append(HFSystem(name, hf_target, target.eos_ids, target.pad_id,
                                assistant=hf_drafter if base == "hf-assisted" else None,
                                lookup=o.get("lookup_gamma", 10) if base == "hf-lookup" else 0))
    return systems
