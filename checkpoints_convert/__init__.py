"""Convert Hugging Face checkpoints (safetensors directories, GGUF files) to viasd-jax.

`convert(src, out)` is what `viasd convert SRC OUT` runs.
"""

from __future__ import annotations

import json
import os
import tempfile

from checkpoints_convert.hf import load_hf_checkpoint, read_hf_config
from checkpoints_convert.safetensors_io import CorruptCheckpointError
from checkpoints_convert.store import is_checkpoint, read_manifest, restore, save
from viasd_jax.route import as_route

__all__ = ["convert", "special_tokens", "CorruptCheckpointError", "restore", "save", "is_checkpoint",
           "read_manifest", "load_hf_checkpoint"]


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def special_tokens(hf_dir: str, hf_config: dict) -> dict:
    """EOS ids (config, generation config and tokenizer together), BOS and PAD ids."""
    eos = _ids(hf_config.get("eos_token_id"))
    gen_path = os.path.join(hf_dir, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path) as f:
            eos += _ids(json.load(f).get("eos_token_id"))
    bos = hf_config.get("bos_token_id")
    pad = hf_config.get("pad_token_id")
    return {
        "eos_ids": sorted(set(eos)),
        "bos_id": None if bos is None else int(bos),
        "pad_id": int(pad if pad is not None else (eos[0] if eos else 0)),
    }


def convert(src: str, out: str, dtype=None, route=None, self_route=None, progress: bool = True) -> str:
    """Convert `src` (HF directory or .gguf file) into a viasd-jax checkpoint at `out`.

    `route` / `self_route` (a route.json path, a route dict, a `Route` or layer
    indices) are embedded: `load` attaches them as `model.route` / `model.self_route`.
    """
    if not os.path.exists(src):
        raise FileNotFoundError(f"{src}: no such file or directory")
    if os.path.isfile(src):
        from checkpoints_convert.gguf import gguf_to_hf

        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out)) or None) as tmp:
            hf_dir = gguf_to_hf(src, os.path.join(tmp, "hf"))
            return convert(hf_dir, out, dtype=dtype, route=route, self_route=self_route, progress=progress)
    hf_config = read_hf_config(src)
    cfg, params, _ = load_hf_checkpoint(src, dtype=dtype)
    routes = {name: None if r is None else as_route(r, cfg.num_layers).to_dict(cfg)
              for name, r in (("route", route), ("self_route", self_route))}
    meta = {**special_tokens(src, hf_config), **routes, "source": os.path.abspath(src)}
    return save(out, cfg, params, meta, source_dir=src)
