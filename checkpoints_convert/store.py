"""Our checkpoint format: an orbax checkpoint of the params plus a manifest.

```
OUT/
  viasd.json   format, ModelConfig, special tokens, route, and per leaf: shape,
               dtype, sha256 of its bytes (the content hash checked on load)
  params/      orbax-checkpoint (StandardCheckpointer) of {leaf name: array}
  tokenizer files copied from the source, when it has them
```
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from checkpoints_convert.safetensors_io import CorruptCheckpointError
from viasd_jax.config import ModelConfig
from viasd_jax.layout import to_input_major
from viasd_jax.params import Params, abstract_params, leaves_of, params_from_leaves

FORMAT = "viasd-jax/1"
MANIFEST = "viasd.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def _orbax():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import

    return ocp


def leaf_sha256(x) -> str | None:
    """sha256 of a leaf's bytes (C order). Sharded arrays are read one leading-axis slice
    at a time, so no host ever holds a whole sharded leaf; None if some shards live on
    another host (multi-host: nothing to compare here)."""
    digest = hashlib.sha256()
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
        if not x.is_fully_addressable:
            return None
        for i in range(x.shape[0] if x.ndim else 1):
            digest.update(np.ascontiguousarray(np.asarray(x[i] if x.ndim else x)).tobytes())
        return digest.hexdigest()
    data = np.ascontiguousarray(np.asarray(x))
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def _hashes(leaves: dict) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # hashlib releases the GIL
        return dict(zip(leaves, pool.map(leaf_sha256, leaves.values())))


def save(out_dir: str, cfg: ModelConfig, params: Params, meta: dict[str, Any], source_dir: str | None = None) -> str:
    """Write params + manifest to `out_dir` (replacing it); returns `out_dir`."""
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    leaves = leaves_of(to_input_major(params, cfg))  # checkpoints are always input-major
    ckptr = _orbax().StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "params"), {k: np.asarray(v) for k, v in leaves.items()})
    ckptr.wait_until_finished()
    hashes = _hashes(leaves)
    manifest = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        **meta,
        "leaves": {
            k: {"shape": list(v.shape), "dtype": str(np.asarray(v).dtype), "sha256": hashes[k]}
            for k, v in leaves.items()
        },
    }
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    if source_dir:
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(source_dir, name)):
                shutil.copy(os.path.join(source_dir, name), tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(path: str) -> dict:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"{path}: corrupt {MANIFEST} ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path}: unknown checkpoint format {manifest.get('format')!r}, want {FORMAT}")
    return manifest


def restore(path: str, verify: bool = True, shardings_for=None) -> tuple[ModelConfig, Params, dict]:
    """Read a checkpoint written by `save`: (config, params, manifest).

    `verify` re-hashes every leaf against the manifest, so a truncated or altered
    checkpoint is an error rather than wrong output. `shardings_for(config)` (a
    `Params` of `jax.sharding.Sharding`) restores each leaf straight into its
    sharded layout: orbax reads only each device's shard.
    """
    path = os.path.abspath(path)
    manifest = read_manifest(path)
    cfg = ModelConfig.from_dict(manifest["config"])
    shardings = None if shardings_for is None else shardings_for(cfg)
    recorded = manifest["leaves"]
    dtype = np.dtype(next(iter(recorded.values()))["dtype"])
    target = leaves_of(abstract_params(cfg, dtype))
    if set(target) != set(recorded):
        raise CorruptCheckpointError(f"{path}: manifest leaves do not match the config's parameters")
    for name, spec in target.items():
        if list(spec.shape) != recorded[name]["shape"]:
            raise CorruptCheckpointError(f"{path}: leaf {name} has shape {recorded[name]['shape']}, config says {spec.shape}")
    if shardings is not None:
        named = leaves_of(shardings)
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=named[k]) for k, v in target.items()}
    try:
        leaves = _orbax().StandardCheckpointer().restore(os.path.join(path, "params"), target)
    except Exception as e:  # orbax/tensorstore raise many types; all mean "unreadable"
        raise CorruptCheckpointError(f"{path}: cannot restore params ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if verify:
        bad = [k for k, h in _hashes(leaves).items() if h is not None and h != recorded[k]["sha256"]]
        if bad:
            raise CorruptCheckpointError(f"{path}: content hash mismatch for {', '.join(bad)}: the checkpoint is altered or truncated")
    return cfg, params_from_leaves(cfg, leaves), manifest
