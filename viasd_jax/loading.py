"""`Model` (config, params, tokenizer, route, special tokens) and `load(path)`."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp

from viasd_jax.config import ModelConfig
from viasd_jax.params import Params
from viasd_jax.route import Route, as_route


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded model. `route` is the checkpoint's calibrated `Route` (`route.kept_layers`
    lists its layers), or None."""

    config: ModelConfig
    params: Params
    tokenizer: Any = None
    route: Route | None = None
    self_route: Route | None = None
    eos_ids: tuple[int, ...] = ()
    bos_id: int | None = None
    pad_id: int = 0
    path: str | None = None

    @property
    def dtype(self):
        """The dtype activations are computed in (int8 matrices included)."""
        return self.params.final_norm.dtype

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({c.architecture}, layers={c.num_layers}, hidden={c.hidden_size}, vocab={c.vocab_size}, "
                f"dtype={jnp.dtype(self.dtype).name}, path={self.path!r})")


def _tokenizer(directory: str):
    """The directory's tokenizer, or None. A generic fast tokenizer declared in
    tokenizer_config.json is loaded as declared (AutoTokenizer would substitute
    the model family's own class when a config.json sits beside it)."""
    cfg_path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(os.path.join(directory, "tokenizer.json")) and not os.path.isfile(cfg_path):
        return None
    import transformers

    declared = None
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            declared = json.load(f).get("tokenizer_class")
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return transformers.PreTrainedTokenizerFast.from_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory)


def load_tokenizer(path: str):
    """Only the tokenizer of a model path or default model name (no weights are read)."""
    from viasd_jax import fetch

    if not os.path.exists(path) and path in fetch.MODELS:
        path = fetch.ensure_model(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    return _tokenizer(directory)


def _to_device(params: Params, dtype) -> Params:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), params)


def load(path: str, dtype=None, verify: bool = True, mesh=None, quantize: str | None = None,
         layout: str = "auto", products: str | None = None) -> Model:
    """Load a model from a viasd-jax checkpoint, a Hugging Face directory or a .gguf file.

    `path` may also name a default model (see `viasd_jax.fetch.MODELS`), fetched
    and converted on first use. `dtype` ("float32", "bfloat16") casts the params;
    None keeps the checkpoint's. `verify` checks a viasd checkpoint's content hash.
    `mesh` (from `make_mesh`) lays the params out on it; a viasd checkpoint is
    restored straight into that layout. `quantize="int8"` makes every weight matrix
    int8 with per-output-channel scales (weight-only; activations stay in `dtype`: with
    "bfloat16" the CPU kernel multiplies them by AVX-512 BF16 dot products).
    `quantize="gguf"` (a registered model or a .gguf file, float32, CPU) keeps the GGUF's
    Q4_K / Q6_K matrices as their codes, multiplied exactly as the dequantized float32
    weights (same output bit for bit, 4-5x fewer bytes per step; `viasd_jax.gguf_blocks`).
    `layout="output-major"` stores matrices with their contracted axes last;
    `layout="cpu-kernel"` multiplies those with the compiled CPU kernel (2-4.6x faster
    decoding forwards on CPU, compiled on first use; see `viasd_jax.layout`). The
    default "auto" is "cpu-kernel" on one CPU (float32, bfloat16 or int8 weights, a C++
    compiler present) and "input-major" otherwise (GPU, TPU, a mesh, float16).
    `quantize="q4"` (float32, CPU) makes every matrix 4-bit codes in the same packing
    (a scale and min per 32 weights; lossy: meant for drafters, `viasd_jax.q4_codes`).
    `products="int8"` (with `quantize="gguf"` or "q4") multiplies the codes by activations
    quantized to int8 per 32 values, in integers (llama.cpp's numerics: lossy against
    the float32 model, 1.3-1.8x faster forwards here; `cpu_matvec.matvec_blocks`).
    """
    if products == "float32":
        raise ValueError("products='float32' is how the engine's float32 prefill multiplies (decode.prefill sets "
                         "it); a model takes products None, 'bfloat16' or 'int8'")
    if products is not None:
        from viasd_jax.layout import with_products

        if quantize not in CODES:
            raise ValueError(f"products={products!r} multiplies GGUF codes: it needs quantize='gguf' or 'q4'")
        model = load(path, dtype=dtype, verify=verify, mesh=mesh, quantize=quantize, layout=layout)
        return dataclasses.replace(model, params=with_products(model.params, products))
    import checkpoints_convert as cc
    from checkpoints_convert.hf import resolve_dtype
    from viasd_jax import fetch
    from viasd_jax import layout as LY

    if LY.check(layout) not in ("auto", "input-major") and mesh is not None:
        raise ValueError(f"layout={layout!r} is for one CPU; sharded models use the default layout")
    if quantize in CODES:
        return _load_codes(path, quantize, dtype=dtype, verify=verify, mesh=mesh, layout=layout)

    if not os.path.exists(path) and path in fetch.MODELS:
        model = load(fetch.ensure_model(path), dtype=dtype, verify=verify, mesh=mesh, quantize=quantize,
                     layout=layout)
        shipped = {k: fetch.packaged_route(path, k) for k in ("route", "self_route")}
        return dataclasses.replace(model, **{k: as_route(v, model.config.num_layers)
                                             for k, v in shipped.items() if v and getattr(model, k) is None})
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory (expected a checkpoint directory or .gguf file)")
    target_dtype = None if dtype is None else resolve_dtype(dtype)
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ValueError(f"{path}: a file must be a .gguf; otherwise pass a checkpoint directory")
        from checkpoints_convert.gguf import gguf_to_hf

        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = gguf_to_hf(path, os.path.join(tmp, "hf"))
            return dataclasses.replace(load(hf_dir, dtype=dtype, quantize=quantize, layout=layout), path=path)
    shardings_for = None
    if mesh is not None:
        from viasd_jax import sharding as SH

        def shardings_for(cfg):
            SH.check_divisible(mesh, cfg)
            return SH.param_shardings(mesh, cfg)

    if cc.is_checkpoint(path):
        cfg, params, manifest = cc.restore(path, verify=verify, shardings_for=shardings_for)
        meta = manifest
    elif os.path.isfile(os.path.join(path, "config.json")):
        cfg, params, hf_config = cc.load_hf_checkpoint(path, dtype=target_dtype)
        meta = cc.special_tokens(path, hf_config)
    else:
        raise FileNotFoundError(f"{path}: neither a viasd-jax checkpoint (viasd.json) nor a Hugging Face directory (config.json)")
    params = _to_device(params, target_dtype or params.embed.dtype)
    if quantize is not None:
        from viasd_jax.quant import quantize_params

        params = quantize_params(params, cfg, quantize)
    layout = LY.resolve(layout, quantize=quantize, mesh=mesh, dtype=params.embed.dtype)
    if layout != "input-major":
        params = LY.apply(params, cfg, layout)
    if mesh is not None:
        SH.check_divisible(mesh, cfg)
        params = SH.put_global(params, SH.param_shardings(mesh, cfg, quantized=quantize is not None))
    route, self_route = (as_route(meta[k], cfg.num_layers) if meta.get(k) else None for k in ("route", "self_route"))
    return Model(
        config=cfg,
        params=params,
        tokenizer=_tokenizer(path),
        route=route,
        self_route=self_route,
        eos_ids=tuple(meta.get("eos_ids", ())),
        bos_id=meta.get("bos_id"),
        pad_id=int(meta.get("pad_id", 0)),
        path=os.path.abspath(path),
    )


CODES = ("gguf", "q4")  # quantizations into codes that the CPU kernel multiplies (`gguf_blocks.BlockWeight`)


def _load_codes(path: str, quantize: str, dtype, verify: bool, mesh, layout: str) -> Model:
    from viasd_jax import gguf_blocks
    from viasd_jax.q4_codes import q4_params

    if mesh is not None or layout not in ("auto", "cpu-kernel"):
        raise ValueError(f"quantize={quantize!r} runs on the CPU kernel: no mesh, layout 'auto' or 'cpu-kernel'")
    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
        raise ValueError(f"quantize={quantize!r} codes multiply float32 activations; dtype must be float32, not {dtype}")
    gguf = gguf_blocks.gguf_file_for(path) if quantize == "gguf" else None
    model = load(path, dtype="float32", verify=verify, layout="cpu-kernel")
    params = (gguf_blocks.block_params(model.params, model.config, gguf) if gguf else
              q4_params(model.params, model.config))
    return dataclasses.replace(model, params=params)


def model_from_params(cfg: ModelConfig, params: Params, tokenizer=None, eos_ids=(), **kw) -> Model:
    """Wrap params built in memory (tests, notebooks) as a `Model`."""
    return Model(config=cfg, params=params, tokenizer=tokenizer, eos_ids=tuple(eos_ids), **kw)
