"""Float weights as 4-bit codes in the kernel's Q4_K packing (`quantize="q4"`), for drafters.

`quantize="gguf"` keeps a GGUF file's own codes, which the codes kernel multiplies
exactly; a model without usable ones (the 0.5B drafter's GGUF is mostly Q5_0) can still
take that kernel with codes made here. Each run of 32 weights along the contracted axis
becomes `w ~= scale * code - min` with `code` in 0-15, `min = -min(w)` and `scale =
(max(w) - min(w)) / 15`, both float32 (Q4_K's form, without its 6-bit scales and
super-blocks): 0.75 bytes per weight streamed against int8's 1, and with `products="int8"`
multiplied in integers, 64 weights an instruction (`csrc/int8_products.cc`).

Lossy: a drafter so quantized proposes other tokens now and then, which verification
rejects, so sd's output is unchanged and only its acceptance can fall; a target so
quantized changes the text. CPU kernel only (float32 activations, one device).
"""

from __future__ import annotations

import numpy as np

SUB = 32  # weights per scale and min


def q4_codes(w: np.ndarray, rows: int = 8192):
    """float `w [N, K]` (K a multiple of 32) -> codes uint8 `[N, K]` (0-15), scales and mins
    float32 `[N, K / 32]`: per 32 weights the nearest of 16 evenly spaced levels from their
    least to their largest value (a constant run: scale 0, every code 0)."""
    n, k = w.shape
    if k % SUB:
        raise ValueError(f"quantize='q4' needs each matrix's contracted size a multiple of {SUB}, got {k}")
    codes = np.empty((n, k), np.uint8)
    scales = np.empty((n, k // SUB), np.float32)
    mins = np.empty_like(scales)
    for r in range(0, n, rows):  # in row chunks: a head's float64 copy would take gigabytes
        b = np.asarray(w[r:r + rows], np.float64).reshape(-1, k // SUB, SUB)
        lo, hi = b.min(-1), b.max(-1)
        scale = ((hi - lo) / 15).astype(np.float32)
        step = np.where(scale > 0, scale, 1).astype(np.float64)[..., None]
        codes[r:r + rows] = np.clip(np.rint((b - lo[..., None]) / step), 0, 15).reshape(-1, k)
        scales[r:r + rows], mins[r:r + rows] = scale, (-lo).astype(np.float32)
    return codes, scales, mins


def q4_params(params, cfg, progress: bool = True):
    """`params` (float32, layout "cpu-kernel") with every weight matrix but the embedding
    table as 4-bit codes (a `gguf_blocks.BlockWeight` of Q4_K kind); a head tied to the
    table stays the float32 table."""
    from viasd_jax.gguf_blocks import codes_params

    return codes_params(params, cfg, lambda name, i, w: ("Q4_K", *q4_codes(w)), "q4 codes", progress)
