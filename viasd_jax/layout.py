"""Weight layout in memory: which axes of a matrix are contiguous.

Checkpoints store every matrix input-major (`[D, F]`: contracted axes first, as
`x @ W` reads it). `to_output_major(params)` wraps each matrix as `OutputMajor(w)`
with the layer axis first, the output axes next and the contracted axes last (as
PyTorch stores `nn.Linear`); `quant.dense` computes either form as a 2-D
`dot_general(W, x)` with the weight as the left operand, the shape XLA's CPU
matrix-vector code reads row by row.

Measured on the development CPU (docs/performance.md): a one-token forward of the
1.5B target is 1.38x faster output-major, windows of 5-9 tokens (verification) 0.84x
(`python benchmarks/layout_cost.py`), and generation is not faster end to end. It is
therefore an option (`load(..., layout=)`, `--layout`), not the default.

`layout="cpu-kernel"` keeps the output-major weights but multiplies them with the
compiled kernel of `viasd_jax.cpu_matvec` instead of XLA's dot: inside the layer scan
a weight stays the stacked array plus the layer index (`select_layer`), so the kernel
streams it in place.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp

LAYOUTS = ("auto", "input-major", "output-major", "cpu-kernel")


def matrices() -> dict[str, tuple[str, str]]:
    """{leaf: (checkpoint dimension letters, contracted letters)} for every matrix but the
    embedding table (already output-major for the tied LM head)."""
    from viasd_jax.params import LAYER_LEAVES, TOP_LEAVES
    from viasd_jax.quant import CONTRACTED

    specs = {**LAYER_LEAVES, **TOP_LEAVES}
    return {name: (specs[name].dims, contracted) for name, contracted in CONTRACTED.items() if name != "embed"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OutputMajor:
    """A matrix stored with its contracted axes last (`w` may be an `Int8Weight`).

    `kernel` computes it with the compiled CPU kernel; `layer` is set (a traced index)
    while one layer of a stacked kernel weight is selected, `w` staying the whole stack,
    and `live` (traced, optional) tells the kernel how many leading activation rows
    are real tokens (`cpu_matvec.matvec`). `rows` (static, kernel only, one output
    axis): the kernel reads only the first `rows` output rows (a drafter's head over
    part of the vocabulary). `products` (static, kernel only): "bfloat16" multiplies
    with both operands rounded to bfloat16, "float32" sums prefill's rows along k
    (`cpu_matvec.matvec`; `with_products`, `summed_along_k`).
    """

    w: object
    layer: jax.Array | None = None
    live: jax.Array | None = None
    kernel: bool = dataclasses.field(default=False, metadata=dict(static=True))
    rows: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    products: str | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def shape(self):
        return self.w.shape


def output_major_dims(dims: str, contracted: str) -> str:
    """`"LDF", "D"` -> `"LFD"`: the layer axis, then output axes, then contracted axes."""
    lead = "L" if dims.startswith("L") else ""
    rest = dims[len(lead):]
    return lead + "".join(d for d in rest if d not in contracted) + "".join(d for d in rest if d in contracted)


def permute(w, dims: str, new_dims: str):
    """Transpose an array (or each array of an `Int8Weight`) from `dims` to `new_dims` order."""
    perm = tuple(dims.index(d) for d in new_dims)
    return jax.tree.map(lambda a: jnp.transpose(a, perm), w)


def check(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return layout


KERNEL_DTYPES = ("float32", "bfloat16")


def resolve(layout: str, *, quantize: str | None = None, mesh=None, dtype=None) -> str:
    """The concrete layout for `layout`; "auto" is "cpu-kernel" for float32, bfloat16 or
    int8 weights (`dtype` of an unquantized model; None: either float) on one CPU when the
    kernel builds here, else "input-major" (XLA's own dot: GPU, TPU, meshes, float16, or
    no C++ compiler, which is warned about once)."""
    if check(layout) != "auto":
        return layout
    if jax.default_backend() != "cpu" or mesh is not None:
        return "input-major"
    if quantize is None and dtype is not None and jnp.dtype(dtype).name not in KERNEL_DTYPES:
        return "input-major"
    from viasd_jax import cpu_matvec

    try:
        cpu_matvec.ensure()
    except cpu_matvec.KernelUnavailable as e:
        _warn_once(f"viasd-jax: the CPU kernel is unavailable ({e}); using XLA's dot, about 2x slower decoding")
        return "input-major"
    return "cpu-kernel"


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def to_output_major(params, cfg, kernel: bool = False):
    """`params` with every matrix leaf wrapped as `OutputMajor` (idempotent), computed by
    the compiled CPU kernel if `kernel`."""
    from viasd_jax.params import leaves_of, params_from_leaves

    out = dict(leaves_of(params))
    for name, (dims, contracted) in matrices().items():
        w = out.get(name)
        if isinstance(w, OutputMajor):
            out[name] = OutputMajor(w.w, kernel=kernel)
        elif w is not None:
            out[name] = OutputMajor(_permute_jit(w, dims, output_major_dims(dims, contracted)), kernel=kernel)
    return params_from_leaves(cfg, out)


def to_input_major(params, cfg):
    """The inverse of `to_output_major` (checkpoints are saved input-major)."""
    from viasd_jax.params import leaves_of, params_from_leaves

    out = dict(leaves_of(params))
    for name, (dims, contracted) in matrices().items():
        w = out.get(name)
        if isinstance(w, OutputMajor):
            out[name] = _permute_jit(w.w, output_major_dims(dims, contracted), dims)
    return params_from_leaves(cfg, out)


def apply(params, cfg, layout: str):
    """`params` in `layout` (one of `LAYOUTS`; "auto" as `resolve` picks it)."""
    w = params.layers.wq
    w = w.w if isinstance(w, OutputMajor) else w
    layout = resolve(layout, dtype=getattr(w, "dtype", None))
    if layout == "input-major":
        return to_input_major(params, cfg)
    if layout == "cpu-kernel":
        from viasd_jax import cpu_matvec
        from viasd_jax.quant import Int8Weight

        if not isinstance(w, Int8Weight) and w.dtype.name not in KERNEL_DTYPES:
            raise ValueError(f"layout 'cpu-kernel' multiplies float32, bfloat16 or int8 weights, not {w.dtype.name}; "
                             "load with dtype='float32' or 'bfloat16', or layout='input-major'")
        cpu_matvec.ensure()
    return to_output_major(params, cfg, kernel=layout == "cpu-kernel")


def layout_of(params) -> str:
    w = params.layers.wq
    return "input-major" if not isinstance(w, OutputMajor) else "cpu-kernel" if w.kernel else "output-major"


def is_output_major(params) -> bool:
    return layout_of(params) != "input-major"


def select_layer(w, idx, live=None):
    """Layer `idx` of a stacked matrix leaf: a slice, or for a kernel weight the stack
    tagged with `idx` (the kernel reads the layer in place; a slice would be a copy)
    and with `live`, the number of leading activation rows the kernel computes."""
    if isinstance(w, OutputMajor) and w.kernel:
        return OutputMajor(w.w, layer=idx, live=live, kernel=True, products=w.products)
    return jax.tree.map(lambda a: a[idx], w)


def with_products(params, products: str | None):
    """`params` whose kernel matrices multiply with `products` (None: as their operands
    are; "bfloat16": see `cpu_matvec.matvec`; "int8": see `cpu_matvec.matvec_blocks`,
    GGUF codes only, other matrices keep their products). The weights are the same
    arrays; only how the kernel multiplies them changes."""
    from viasd_jax.cpu_matvec import _check_products
    from viasd_jax.gguf_blocks import BlockWeight

    _check_products(products)
    if products is not None and layout_of(params) != "cpu-kernel":
        raise ValueError(f"products={products!r} needs layout 'cpu-kernel' (the CPU kernel rounds the operands), "
                         f"not {layout_of(params)!r}")
    is_matrix = lambda w: isinstance(w, OutputMajor)  # noqa: E731
    takes = (lambda w: isinstance(w.w, BlockWeight)) if products == "int8" else (lambda w: True)  # noqa: E731
    if products == "int8" and not any(takes(w) for w in jax.tree.leaves(params, is_leaf=is_matrix) if is_matrix(w)):
        raise ValueError("products='int8' multiplies GGUF codes or q4 codes: load the model with quantize='gguf' or 'q4'")
    return jax.tree.map(lambda w: dataclasses.replace(w, products=products) if is_matrix(w) and takes(w) else w,
                        params, is_leaf=is_matrix)


def summed_along_k(params):
    """`params` whose kernel matrices that multiply as their operands take
    `products="float32"` (prefill's rows: each output summed along k, `cpu_matvec.matvec`);
    matrices with other products keep theirs. Other layouts are returned as they are."""
    if layout_of(params) != "cpu-kernel":
        return params
    along_k = lambda w: isinstance(w, OutputMajor) and w.kernel and w.products is None  # noqa: E731
    return jax.tree.map(lambda w: dataclasses.replace(w, products="float32") if along_k(w) else w, params,
                        is_leaf=lambda w: isinstance(w, OutputMajor))


def dense_output_major(x: jax.Array, w: OutputMajor, subscripts: str) -> jax.Array:
    """`einsum(subscripts, x, w)` for an `OutputMajor` matrix (plain or `Int8Weight` inside).

    `subscripts` name the input-major axes (`"btd,df->btf"`); the contracted axes must
    trail `x`. Leading axes of `x` are flattened: XLA's CPU backend turns a batched
    einsum (or `x @ w.T`) over this layout into a transposed copy of the weight per call.
    """
    inputs, _ = subscripts.split("->")
    x_axes, w_axes = inputs.split(",")
    contracted = "".join(d for d in w_axes if d in x_axes)
    if not x_axes.endswith(contracted):
        raise ValueError(f"dense {subscripts!r}: contracted axes must trail the activations")
    if w.kernel:
        return _dense_kernel(x, w, len(contracted))
    w = w.w
    quantized = hasattr(w, "q")
    data = w.q if quantized else w
    out_shape = data.shape[: data.ndim - len(contracted)]
    batch_shape = x.shape[: x.ndim - len(contracted)]
    x2 = x.reshape(math.prod(batch_shape), -1)
    w2 = data.reshape(math.prod(out_shape), -1).astype(x.dtype)
    y = jax.lax.dot_general(w2, x2, (((1,), (1,)), ((), ())))  # [out, tokens]: weight as the lhs
    y = y.T.reshape(*batch_shape, *out_shape)
    if quantized:
        y = y * w.scale.reshape(out_shape).astype(y.dtype)
    return y


def _dense_kernel(x: jax.Array, w: OutputMajor, n_contracted: int) -> jax.Array:
    from viasd_jax import cpu_matvec
    from viasd_jax.gguf_blocks import BlockWeight

    stacked = w.layer is not None
    if isinstance(w.w, BlockWeight):  # GGUF codes: the kernel makes the float32 weights
        b = w.w
        out_shape = _first_rows(b.shape[int(stacked): len(b.shape) - n_contracted], w.rows)
        batch_shape = x.shape[: x.ndim - n_contracted]
        y = cpu_matvec.matvec_blocks(x.reshape(math.prod(batch_shape), -1), b, w.layer if stacked else 0, w.live,
                                     w.rows, w.products)
        return y.astype(x.dtype).reshape(*batch_shape, *out_shape)
    quantized = hasattr(w.w, "q")  # an Int8Weight: int8 rows, one scale per output row
    data = w.w.q if quantized else w.w
    lead = data.shape[:1] if stacked else ()
    body = data.shape[len(lead):]
    out_shape, k_shape = body[: len(body) - n_contracted], body[len(body) - n_contracted:]
    n = math.prod(out_shape)
    w3 = data.reshape(*lead, n, math.prod(k_shape))  # a bitcast: no copy
    scale = w.w.scale.reshape(*lead, n) if quantized else None
    batch_shape = x.shape[: x.ndim - n_contracted]
    y = cpu_matvec.matvec(x.reshape(math.prod(batch_shape), -1), w3, w.layer if stacked else 0, w.live, scale, w.rows,
                          w.products)
    return y.astype(x.dtype).reshape(*batch_shape, *_first_rows(out_shape, w.rows))


def _first_rows(out_shape: tuple, rows: int | None) -> tuple:
    if rows is None:
        return tuple(out_shape)
    if len(out_shape) != 1:
        raise ValueError(f"OutputMajor.rows needs one output axis, got output shape {tuple(out_shape)}")
    return (rows,)


_permute_jit = jax.jit(permute, static_argnums=(1, 2))
