"""The systems a bench compares: our modes and Hugging Face transformers peers.

Each system turns one prompt (token ids) into generated ids and a wall time that
excludes compilation; ours also report the engine's counters.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import viasd_jax
from viasd_jax import fetch

OURS = ("viasd-ar",)
PEERS = ("hf-ar",)
ALL_SYSTEMS = OURS + PEERS


@dataclasses.dataclass
class RunOutput:
    tokens: list[int]
    seconds: float  # generation wall time, compilation excluded
    compile_seconds: float
    stats: dict[str, int]


@dataclasses.dataclass
class ViasdSystem:
    name: str
    target: Any
    options: dict

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> RunOutput:
        r = viasd_jax.generate(self.target, [prompt_ids], max_new_tokens=max_new_tokens, **self.options)
        return RunOutput(r.tokens[0], r.seconds - r.compile_seconds, r.compile_seconds, r.row_stats[0])


@dataclasses.dataclass
class HFSystem:
    name: str
    model: Any
    eos_ids: tuple[int, ...]
    pad_id: int
    assistant: Any = None

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> RunOutput:
        import torch

        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                  eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id)
        if self.assistant is not None:
            kw["assistant_model"] = self.assistant
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model.generate(torch.tensor([prompt_ids]), **kw)
            seconds = time.perf_counter() - t0
        return RunOutput(out[0, len(prompt_ids):].tolist(), seconds, 0.0, {})


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


def make_systems(names, target, target_path: str, dtype: str, drafter=None, drafter_path=None, options=None):
    """Instantiate the named systems; models are loaded once and shared."""
    unknown = [n for n in names if n not in ALL_SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(ALL_SYSTEMS)}")
    options = dict(options or {})
    systems, hf_target = [], None
    for name in names:
        if name == "viasd-ar":
            systems.append(ViasdSystem(name, target, {"mode": "ar", **_sampling(options)}))
        elif name.startswith("hf-"):
            hf_target = hf_target or load_hf(target_path, dtype)
            systems.append(HFSystem(name, hf_target, target.eos_ids, target.pad_id))
    return systems


def _sampling(options: dict) -> dict:
    return {k: options[k] for k in ("temperature", "top_k", "top_p", "seed") if k in options}
