"""Hugging Face checkpoint directory (config.json + *.safetensors) -> our params."""

from __future__ import annotations

import itertools
import json
import os

import ml_dtypes
import numpy as np

from checkpoints_convert.name_map import assemble
from checkpoints_convert.safetensors_io import checkpoint_files, iter_tensors
from viasd_jax.config import ModelConfig, from_hf_config
from viasd_jax.params import Params, params_from_leaves

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no config.json (expected a Hugging Face checkpoint directory)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def resolve_dtype(dtype) -> np.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        return np.dtype(DTYPES[dtype])
    return np.dtype(dtype)


def load_hf_checkpoint(directory: str, dtype=None) -> tuple[ModelConfig, Params, dict]:
    """Read a Hugging Face directory into (config, numpy `Params`, raw HF config).

    `dtype=None` keeps the checkpoint's floating dtype.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")
    hf_config = read_hf_config(directory)
    cfg = from_hf_config(hf_config)
    files = checkpoint_files(directory)
    tensors = itertools.chain.from_iterable(iter_tensors(f) for f in files)
    if dtype is None:
        first_name, first = next(iter_tensors(files[0]))
        dtype = first.dtype if first.dtype != np.float64 else np.float32
    leaves = assemble(cfg, tensors, resolve_dtype(dtype))
    return cfg, params_from_leaves(cfg, leaves), hf_config
