"""GGUF file -> Hugging Face safetensors directory, through transformers' GGUF loader.

transformers dequantizes the GGUF tensors into an ordinary torch model (this
needs the optional `torch`, `gguf` and `accelerate` packages: `pip install
viasd-jax[hf]`). We save that model and its tokenizer as a plain Hugging Face
directory, which our safetensors converter then reads like any other.
"""

from __future__ import annotations

import os
import shutil


def _require_hf_extra():
    try:
        import gguf  # noqa: F401  (transformers needs it to parse GGUF)
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"reading GGUF needs torch, gguf and accelerate: pip install 'viasd-jax[hf]' ({e})") from None
    return torch, transformers


def gguf_to_hf(gguf_path: str, out_dir: str, dtype: str = "float32") -> str:
    """Write a Hugging Face checkpoint directory for `gguf_path`; returns `out_dir`."""
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{gguf_path}: not a GGUF file (bad magic bytes)")
    torch, transformers = _require_hf_extra()
    directory, name = os.path.split(os.path.abspath(gguf_path))
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory,
            gguf_file=name,
            quantization_config=transformers.GgufConfig(dequantize=True),
            dtype=getattr(torch, dtype),
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    except ValueError as e:
        raise ValueError(f"{gguf_path}: transformers cannot load this GGUF ({str(e).splitlines()[0]})") from None
    # A dequantized GGUF model refuses save_pretrained until its quantizer is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
