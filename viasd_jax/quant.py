"""Weight-only int8 quantization with per-output-channel scales.

A quantized matrix is `Int8Weight(q, scale)`: `q` int8 with the weight's shape,
`scale` float32 with the contracted (input) dimensions reduced to size 1, so that
`w ~= q * scale`. Matmuls dequantize inside the product, so weight traffic is a
quarter of float32's: under the CPU kernel (`layout="cpu-kernel"`, the default on one
CPU) in registers, elsewhere by an int8 -> float conversion fused into XLA's dot.
Activations keep the model's dtype (`load(..., dtype="bfloat16", quantize="int8")`
computes in bfloat16 over int8 matrices).
Norms, biases and the per-layer vectors stay in float.

Quantize at load time: `viasd_jax.load(path, quantize="int8")` or `quantize(model)`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from viasd_jax.layout import OutputMajor, dense_output_major

# Leaves that are matrices, with their contracted (input) dimension letters.
CONTRACTED = {"wq": "D", "wk": "D", "wv": "D", "wo": "NK", "w_gate": "D", "w_up": "D", "w_down": "F",
              "lm_head": "D", "embed": "D"}
MODES = ("int8",)  # and "gguf", which `load` handles itself (viasd_jax.gguf_blocks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Int8Weight:
    q: jax.Array  # int8, the weight's shape
    scale: jax.Array  # float32, the weight's shape with contracted dims of size 1

    @property
    def shape(self):
        return self.q.shape

    @property
    def dtype(self):
        return self.scale.dtype

    @property
    def nbytes(self) -> int:
        return self.q.size + 4 * self.scale.size


def quantize_leaf(w: jax.Array, dims: str, contracted: str) -> Int8Weight:
    axes = tuple(i for i, d in enumerate(dims) if d in contracted)
    w32 = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w32), axis=axes, keepdims=True) / 127.0
    scale = jnp.where(scale > 0, scale, 1.0)
    return Int8Weight(jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8), scale)


def dense(x: jax.Array, w, subscripts: str) -> jax.Array:
    """`einsum(subscripts, x, w)` for a plain, `Int8Weight` or `OutputMajor` matrix; `subscripts`
    name the weight's input-major (checkpoint) axes. The output's trailing axes must be the
    weight's non-contracted axes, in order."""
    if isinstance(w, OutputMajor):
        return dense_output_major(x, w, subscripts)
    if not isinstance(w, Int8Weight):
        return jnp.einsum(subscripts, x, w)
    out = jnp.einsum(subscripts, x, w.q.astype(x.dtype))
    scale = jnp.squeeze(w.scale, axis=tuple(i for i, n in enumerate(w.scale.shape) if n == 1))
    return out * scale.astype(out.dtype)


def quantize_params(params, cfg, mode: str = "int8"):
    """Every matrix leaf of `params` as an `Int8Weight` (vectors stay as they are); params
    in another layout (e.g. `load`'s default cpu-kernel on CPU) are quantized input-major."""
    from viasd_jax.layout import to_input_major
    from viasd_jax.params import LAYER_LEAVES, TOP_LEAVES, leaves_of, params_from_leaves

    if mode == "gguf":
        raise ValueError("quantize='gguf' keeps a GGUF file's own blocks: pass it to load(), not to quantize()")
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    dims = {name: spec.dims for name, spec in {**LAYER_LEAVES, **TOP_LEAVES}.items()}
    leaves = leaves_of(params)
    bare = {name: w.w if isinstance(w, OutputMajor) else w for name, w in leaves.items()}
    if any(isinstance(w, Int8Weight) for w in bare.values()):
        raise ValueError("these params are already quantized")
    if any(w is not leaves[name] for name, w in bare.items()):
        leaves = leaves_of(to_input_major(params, cfg))
    out = {name: _quantize_jit(w, dims[name], CONTRACTED[name]) if name in CONTRACTED else w
           for name, w in leaves.items()}
    return params_from_leaves(cfg, out)


_quantize_jit = jax.jit(quantize_leaf, static_argnums=(1, 2))


def quantize(model, mode: str = "int8"):
    """The `Model` with int8 weight-only matrices (per-output-channel scales)."""
    return dataclasses.replace(model, params=quantize_params(model.params, model.config, mode))
