"""A GGUF model's k-quant matrices kept as their codes: exact, and 4-5x fewer bytes.

The real models here are Q4_K_M GGUF files; `load` dequantizes them to float32, which
then streams 4 bytes per weight through every decoding step. `load(name, quantize="gguf")`
keeps each Q4_K or Q6_K matrix as its integer codes plus one float32 scale and min per
sub-block, `w = scale * code - min`, and the CPU kernel (`cpu_matvec.matvec_blocks`)
makes the float32 weights in registers. The output is bit for bit the float32 model's:

- gguf's dequantization computes, in float32, Q4_K's `(d * sc) * q - dmin * m` and
  Q6_K's `(d * sc) * (q - 32)`. `d`, `dmin` are float16 (11 significant bits), `sc`, `m`
  6- or 8-bit integers, `q` 4 or 6 bits, so `d * sc`, `dmin * m` and Q4_K's `(d * sc) * q`
  are exact in float32, leaving one rounding: the last subtraction (Q4_K) or product (Q6_K).
- The kernel computes `fma(scale, code, -min)`, one rounding of the exact value: with
  `scale = d * sc`, `min = dmin * m` (Q4_K), and `code = q`, `min = 32 * scale` (Q6_K,
  `code = q + 32`, so that every code is unsigned) that is the same float32 number.
- The kernel then adds the products in the float32 path's order (`csrc/matvec.cc`).

Loading checks the first claim on every matrix: the codes, expanded here in float64 and
rounded once, must equal the float32 checkpoint's weights (bit for bit but the sign of
zeros, which changes no sum), else it refuses.

Kernel packings (`BlockWeight`), per layer, as Q4_K_M mixes the two kinds in `ffn_down`,
`attn_v` and the head: Q4_K two codes per byte with a scale and a min per 32 weights
(0.75 bytes per weight streamed), Q6_K one code per byte with a scale per 16 weights and
the min derived from it (1.25 bytes per weight). A stack holding any Q6_K layer gives
every layer a Q6_K-sized slab, of which a Q4_K layer uses (and streams) the first part.
The embedding table stays float32 (decoding reads one row of it). CPU only, float32
activations; the drafter may be quantized as usual.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

QK = 256  # weights per k-quant super-block
# our leaf -> GGUF tensor name ("{i}": the layer)
GGUF_NAMES = {"wq": "blk.{i}.attn_q.weight", "wk": "blk.{i}.attn_k.weight", "wv": "blk.{i}.attn_v.weight",
              "wo": "blk.{i}.attn_output.weight", "w_gate": "blk.{i}.ffn_gate.weight",
              "w_up": "blk.{i}.ffn_up.weight", "w_down": "blk.{i}.ffn_down.weight", "lm_head": "output.weight"}


KINDS = {"Q4_K": 0, "Q6_K": 1}  # the kernel's BlockKind, per layer


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockWeight:
    """A matrix as k-quant codes, `w[.., n, k] = scale[.., n, k // S] * code - min[.., n, k // S]`,
    layer by layer in the packing of its kind (`KINDS`).

    kinds: int32 `[L]` (`[1]` for one matrix); codes: uint8 `[(L,) N, K]`, or `[(L,) N, K // 2]`
    if every layer is Q4_K; scales: float32 `[(L,) N, K // 16]`, or `[(L,) N, K // 32]` if every
    layer is Q4_K; mins: as scales, or `[0]` if no layer is Q4_K. A Q4_K layer's codes
    `[N, K // 2]` (two per byte, S = 32) and scales and mins `[N, K // 32]` fill the first part of
    its slab; a Q6_K layer's codes are `q + 32` (0-63, S = 16) and its min is `32 * scale`.
    `shape`: the output-major shape it stands for (`[(L,) *outputs, *contracted]`); `k`: K,
    the contracted size (the arrays' shapes alone cannot tell K / 2 of all-Q4_K from K).
    """

    codes: jax.Array
    scales: jax.Array
    mins: jax.Array
    kinds: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    k: int = dataclasses.field(metadata=dict(static=True))

    @property
    def dtype(self):
        return jnp.dtype(jnp.float32)

    def streamed_bytes(self) -> int:
        """Bytes one product over every layer reads: per Q4_K layer codes `N * K / 2` and
        a scale and a min per 32 weights, per Q6_K layer codes `N * K` and a scale per 16
        (not the slabs' sizes: a mixed stack's Q4_K layers use the first part of theirs)."""
        nk = self.codes.shape[-2] * self.k
        per_kind = {KINDS["Q4_K"]: nk // 2 + nk // 32 * 8, KINDS["Q6_K"]: nk + nk // 16 * 4}
        return int(sum(per_kind[int(kind)] for kind in np.asarray(self.kinds)))


# ---- GGUF block formats (numpy; the layouts of ggml's k-quants) ----

def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def q4_k_codes(raw: np.ndarray, k: int):
    """Q4_K rows `raw [N, K / 256 * 144]` -> codes uint8 `[N, K]` (0-15), scales and mins
    float32 `[N, K / 32]`."""
    n = raw.shape[0]
    b = raw.reshape(n, k // QK, 144)
    d, dmin, sm, qs = _f16(b[..., 0:2]), _f16(b[..., 2:4]), b[..., 4:16], b[..., 16:]
    lo, hi, mix = sm[..., 0:4], sm[..., 4:8], sm[..., 8:12]  # 6-bit scales and mins, packed
    sc = np.concatenate([lo & 0x3F, (mix & 0x0F) | ((lo >> 2) & 0x30)], axis=-1).astype(np.float32)
    mn = np.concatenate([hi & 0x3F, (mix >> 4) | ((hi >> 2) & 0x30)], axis=-1).astype(np.float32)
    # 4 chunks of 32 bytes: low nibbles are sub-block 2c, high nibbles 2c + 1
    q = qs.reshape(n, k // QK, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
    codes = (q & 0x0F).reshape(n, k)
    return codes, (d * sc).reshape(n, -1), (dmin * mn).reshape(n, -1)


def q6_k_codes(raw: np.ndarray, k: int):
    """Q6_K rows `raw [N, K / 256 * 210]` -> codes uint8 `[N, K]` (q + 32: 0-63), scales
    float32 `[N, K / 16]` and mins (32 * scales)."""
    n = raw.shape[0]
    b = raw.reshape(n, k // QK, 210)
    ql, qh, sc, d = b[..., :128], b[..., 128:192], b[..., 192:208].view(np.int8), _f16(b[..., 208:210])
    low = ql.reshape(n, k // QK, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
    high = qh.reshape(n, k // QK, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)
    codes = ((low & 0x0F).reshape(n, k // QK, 8, 32) | ((high & 0x03).reshape(n, k // QK, 8, 32) << 4)).reshape(n, k)
    scales = (d * sc.astype(np.float32)).reshape(n, -1)
    return codes, scales, scales * np.float32(32)


def float32_weights(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Unpacked codes `[N, K]` with per-sub-block scales, mins `[N, K / S]` -> float32: the
    exact value `scale * code - min` (float64 holds it) rounded once, as the kernel's FMA."""
    s = codes.shape[-1] // scales.shape[-1]
    w = np.repeat(scales.astype(np.float64), s, axis=-1) * codes - np.repeat(mins.astype(np.float64), s, axis=-1)
    return w.astype(np.float32)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """codes `[N, K]` (0-15) -> `[N, K / 2]`: per sub-block of 32, byte i = code i | code 16 + i << 4."""
    c = codes.reshape(*codes.shape[:-1], -1, 2, 16)
    return (c[..., 0, :] | (c[..., 1, :] << 4)).reshape(*codes.shape[:-1], -1)


UNPACKERS = {"Q4_K": (q4_k_codes, 32), "Q6_K": (q6_k_codes, 16)}


# ---- from a GGUF file to params ----

def gguf_matrices(gguf_path: str) -> dict:
    """{tensor name: (type name, raw uint8 rows [N, bytes], K)} of a GGUF file (memory-mapped)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportError("quantize='gguf' reads the GGUF file with the `gguf` package: pip install 'viasd-jax[hf]'") from None
    try:
        reader = GGUFReader(gguf_path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{gguf_path}: not a readable GGUF file ({e})") from None
    return {t.name: (t.tensor_type.name, t.data, int(t.shape[0])) for t in reader.tensors}


def codes_params(params, cfg, unpack, desc: str, progress: bool = True):
    """`params` (float32, layout "cpu-kernel") with every matrix of `GGUF_NAMES` replaced
    by the `BlockWeight` of `unpack(name, i, w)` -> `(kind, codes [N, K], scales, mins)`
    for layer `i` (None for a top-level matrix) of its float32 weights `w [N, K]`."""
    from tqdm.auto import tqdm

    from viasd_jax.layout import OutputMajor, layout_of, matrices
    from viasd_jax.params import leaves_of, params_from_leaves

    if layout_of(params) != "cpu-kernel":
        raise ValueError("codes are multiplied by the CPU kernel: load with layout='auto' or 'cpu-kernel' on a CPU")
    leaves = dict(leaves_of(params))
    todo = [name for name in GGUF_NAMES if isinstance(leaves.get(name), OutputMajor)]
    for name in tqdm(todo, desc=desc, disable=not progress):
        w = leaves[name].w
        if getattr(w, "dtype", None) != jnp.float32:
            raise ValueError(f"codes replace float32 matrices; {name} is {getattr(w, 'dtype', type(w))}")
        stacked = "{i}" in GGUF_NAMES[name]
        k = math.prod(w.shape[-len(matrices()[name][1]):])
        per_layer = [unpack(name, i, np.asarray(w[i] if stacked else w).reshape(-1, k))
                     for i in (range(cfg.num_layers) if stacked else [None])]
        leaves[name] = OutputMajor(_stack(per_layer, w.shape, stacked), kernel=True)
    return params_from_leaves(cfg, leaves)


def block_params(params, cfg, gguf_path: str, verify: bool = True, progress: bool = True):
    """`params` (float32, layout "cpu-kernel") with every matrix that the GGUF file holds
    as Q4_K or Q6_K replaced by its `BlockWeight`; raises if any other matrix type is
    found or, with `verify`, if the codes do not give the params' float32 weights exactly."""
    tensors = gguf_matrices(gguf_path)

    def unpack(name, i, want):
        tname = GGUF_NAMES[name].format(i=i)
        if tname not in tensors:
            raise ValueError(f"{gguf_path}: no tensor {tname} for {name}")
        kind, raw, k = tensors[tname]
        if kind not in UNPACKERS:
            raise ValueError(f"{gguf_path}: {tname} is {kind}; quantize='gguf' keeps Q4_K and Q6_K matrices only")
        codes, scales, mins = UNPACKERS[kind][0](np.asarray(raw), k)
        if verify and (codes.shape != want.shape or not _reproduces(codes, scales, mins, want)):
            raise ValueError(f"{gguf_path}: {tname} does not reproduce the loaded model's {name} exactly "
                             "(is this the GGUF file the checkpoint was converted from?)")
        return kind, codes, scales, mins

    return codes_params(params, cfg, unpack, "gguf blocks", progress)


def _reproduces(codes, scales, mins, want: np.ndarray, rows: int = 4096) -> bool:
    """Whether the codes give `want` (float32 `[N, K]`) exactly (in chunks of rows: the
    float64 expansion of a whole head would take gigabytes). Zeros may differ in sign
    (gguf's `scale * 0` is -0 for a negative scale, the FMA's is +0): the kernel's sums
    start at +0, to which either adds nothing, so the outputs are the same bits."""
    return all(np.array_equal(float32_weights(codes[r:r + rows], scales[r:r + rows], mins[r:r + rows]), want[r:r + rows])
               for r in range(0, codes.shape[0], rows))


def _stack(per_layer, shape, stacked: bool) -> BlockWeight:
    """Unpacked `(kind, codes [N, K], scales, mins)` per layer (one for a top-level matrix)
    -> a `BlockWeight` in the kernel's packing (see there)."""
    n, k = per_layer[0][1].shape
    all_q4 = all(kind == "Q4_K" for kind, *_ in per_layer)
    code_width, scale_width = (k // 2, k // 32) if all_q4 else (k, k // 16)
    codes = np.zeros((len(per_layer), n * code_width), np.uint8)
    scales = np.zeros((len(per_layer), n * scale_width), np.float32)
    mins = np.zeros_like(scales) if any(kind == "Q4_K" for kind, *_ in per_layer) else np.zeros((0,), np.float32)
    for i, (kind, c, sc, mn) in enumerate(per_layer):
        packed = pack_nibbles(c) if kind == "Q4_K" else c
        codes[i, :packed.size] = packed.reshape(-1)
        scales[i, :sc.size] = sc.reshape(-1)
        if kind == "Q4_K":
            mins[i, :mn.size] = mn.reshape(-1)
    codes, scales = codes.reshape(-1, n, code_width), scales.reshape(-1, n, scale_width)
    if mins.size:
        mins = mins.reshape(scales.shape)
    if not stacked:
        codes, scales, mins = codes[0], scales[0], mins[0] if mins.size else mins
    kinds = np.array([KINDS[kind] for kind, *_ in per_layer], np.int32)
    return BlockWeight(jnp.asarray(codes), jnp.asarray(scales), jnp.asarray(mins), jnp.asarray(kinds), tuple(shape), k)


def codes_usable(path: str, dtype=None, layout: str = "auto") -> bool:
    """Whether `load(path, quantize="gguf")` keeps this model's GGUF codes: `path` a
    registered model or a .gguf file, float32, the CPU kernel's layout on one CPU, and
    every matrix of the file Q4_K or Q6_K (the header is read; a registered model's
    file is fetched if missing, as loading it would)."""
    from viasd_jax import fetch
    from viasd_jax import layout as LY

    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
        return False
    if not ((not os.path.exists(path) and path in fetch.MODELS) or (os.path.isfile(path) and path.endswith(".gguf"))):
        return False
    if LY.resolve(layout, dtype=jnp.float32) != "cpu-kernel":
        return False
    ours = set(GGUF_NAMES.values())
    kinds = {kind for name, (kind, _, _) in gguf_matrices(gguf_file_for(path)).items()
             if re.sub(r"^blk\.\d+\.", "blk.{i}.", name) in ours}
    return bool(kinds) and kinds <= set(UNPACKERS)


def gguf_file_for(path: str) -> str:
    """The GGUF file behind `path`: a registered model name (fetched if needed) or a .gguf file."""
    from viasd_jax import fetch

    if not os.path.exists(path) and path in fetch.MODELS:
        return fetch.fetch_gguf(path)
    if os.path.isfile(path) and path.endswith(".gguf"):
        return path
    raise ValueError(f"{path}: quantize='gguf' needs the model's GGUF file: pass a .gguf path or a registered "
                     f"model name ({', '.join(fetch.MODELS)})")
