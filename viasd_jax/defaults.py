"""Defaults that depend on the hardware a program runs on, in one place.

On a CPU the fastest exact setup depends on the kernel's instruction-set level
(`cpu_matvec.level()`): GGUF codes and an int8 drafter pay where AVX-512 makes their
arithmetic cheap, and cost speed on AVX2. Each entry names the bench run that chose it
(docs/cpu.md, "Defaults by level", has the tables and commands). A default is never
slower than float32 plain decoding in the run behind it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CpuDefaults:
    """What `viasd generate` loads and runs on a CPU when not told otherwise.

    `quantize`: the target's ("gguf" keeps a GGUF model's own codes where they apply:
    the float32 model's output bit for bit; None float32 weights). `drafter_dtype` and
    `drafter_quantize`: a model drafter's under a float32 target (a drafter only proposes,
    so lossless output is unchanged). `draft_stop`: sd with a model drafter stops drafting
    below this top probability. `measured`: the runs behind the entry."""

    quantize: str | None
    drafter_dtype: str | None
    drafter_quantize: str | None
    draft_stop: float
    measured: str


_CODES = CpuDefaults("gguf", "bfloat16", "int8", 0.5, "docs/log/2026-12-07-levels-12.md, docs/bench-lanes-48.md")
_FLOAT = CpuDefaults(None, "bfloat16", None, 0.5, "docs/log/2026-12-07-levels-12.md")

# kernel level -> defaults; "x86-64-v2" and "native" (other architectures) were not
# measured and take AVX2's, which use nothing but float32 and bfloat16 weights.
CPU = {
    "x86-64-v2": _FLOAT,
    "avx2": _FLOAT,
    "avx512": _CODES,
    "avx512-vnni": _CODES,
    "avx512-bf16": _CODES,
    "amx": _CODES,
    "native": _FLOAT,
}
NO_KERNEL = CpuDefaults(None, "bfloat16", None, 0.5, "no CPU kernel here: XLA's dot, float weights only")


def cpu(level: str | None = None) -> CpuDefaults:
    """The defaults for kernel `level` (default: the level this process builds; without a
    usable kernel, `NO_KERNEL`)."""
    if level is None:
        from viasd_jax import cpu_matvec

        try:
            level = cpu_matvec.level().name
        except cpu_matvec.KernelUnavailable:
            return NO_KERNEL
    if level not in CPU:
        raise ValueError(f"no CPU defaults for kernel level {level!r}; known: {', '.join(CPU)}")
    return CPU[level]
