"""The compiled CPU matrix-vector kernel (`csrc/matvec.cc`) behind `layout="cpu-kernel"`,
and a row lookup for 16-bit embedding tables that goes with it.

XLA's CPU backend streams a decoding step's weights at about a quarter of this
machine's memory bandwidth (docs/performance.md); the kernel multiplies the few
activation rows of a decoding step by output-major weights at close to it. It is
compiled on first use with the system's C++ compiler (`$CXX`, else `c++` / `g++`)
for one named instruction-set level (`levels()`: the highest this CPU runs, or
`$VIASD_KERNEL_ISA`), never `-march=native`, so the build that runs is one the test suite
proves on any machine that can run it (tests/test_kernel_levels.py), and cached under
`~/.cache/viasd-jax/kernels`, keyed by the source, the jaxlib headers, the compiler and
the level; then registered with
XLA as the FFI targets `viasd_matvec`, `viasd_matvec_int8`, `viasd_matvec_blocks` and
`viasd_take_rows`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "viasd_matvec"
TARGET_INT8 = "viasd_matvec_int8"
TARGET_BLOCKS = "viasd_matvec_blocks"
TAKE_ROWS = "viasd_take_rows"
SOURCES = tuple(os.path.join(os.path.dirname(__file__), "csrc", name)
                for name in ("matvec.cc", "int8_products.cc", "amx_bf16.cc", "common.h"))
# -mtune=native schedules for this CPU (generic tuning ran prefill's products about 1.2x
# slower on a Sapphire Rapids Xeon) without choosing instructions; -ffp-contract=off fuses
# no multiply-add the code does not ask for, so tuning cannot change a result's bits.
COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w", "-mtune=native", "-ffp-contract=off")
ISA_ENV = "VIASD_KERNEL_ISA"


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or used here (no compiler, not a CPU backend, a level
    this CPU cannot run)."""


@dataclasses.dataclass(frozen=True)
class Level:
    """An instruction-set level the kernel is built for: the compiler's flags, the CPU
    flags (as /proc/cpuinfo spells them) that a machine needs to run the build, and the
    kernel's features (`features()`) the build must report."""

    name: str
    flags: tuple[str, ...]
    cpu_flags: tuple[str, ...]
    features: frozenset[str]


_V2 = ("cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3")
_V3 = (*_V2, "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
_V4 = (*_V3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_BF16 = ("-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16")
# x86-64, lowest first: each adds the instructions one of the kernel's paths takes. Every
# build of the kernel is one of these (no -march=native), so what runs is what was tested.
X86_LEVELS = (
    Level("x86-64-v2", ("-march=x86-64-v2",), _V2, frozenset()),  # no AVX: generic 8-lane vectors
    Level("avx2", ("-march=x86-64-v3",), _V3, frozenset({"avx2"})),
    Level("avx512", ("-march=x86-64-v4",), _V4, frozenset({"avx2", "avx512"})),
    Level("avx512-vnni", ("-march=x86-64-v4", "-mavx512vnni"), (*_V4, "avx512_vnni"),
          frozenset({"avx2", "avx512", "vnni"})),
    Level("avx512-bf16", _BF16, (*_V4, "avx512_vnni", "avx512_bf16"), frozenset({"avx2", "avx512", "vnni", "bf16"})),
    Level("amx", (*_BF16, "-mamx-tile", "-mamx-bf16"), (*_V4, "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"),
          frozenset({"avx2", "avx512", "vnni", "bf16", "amx"})),
)
NATIVE = Level("native", ("-march=native",), (), frozenset())  # other architectures: the compiler's choice
_FEATURE_BITS = ("avx2", "avx512", "vnni", "bf16", "amx")  # ViasdKernelFeatures' bits, lowest first


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def levels() -> tuple[Level, ...]:
    """The levels the kernel can be built for on this architecture, lowest first."""
    return X86_LEVELS if _x86() else (NATIVE,)


def missing_cpu_flags(level: Level) -> list[str]:
    """The CPU flags `level` needs that this machine lacks (empty: it can run the build)."""
    have = set(_cpu_flags().split())
    return [f for f in level.cpu_flags if f not in have]


def host_level() -> Level:
    """The highest level this machine runs."""
    runnable = [lv for lv in levels() if not missing_cpu_flags(lv)]
    if not runnable:
        raise KernelUnavailable(f"the CPU kernel needs at least {levels()[0].name}; this CPU lacks "
                                f"{' '.join(missing_cpu_flags(levels()[0]))}")
    return runnable[-1]


def level() -> Level:
    """The level this process builds the kernel for: `$VIASD_KERNEL_ISA` if set (a level
    at or below the host's, e.g. to compare paths or sidestep one), else `host_level()`."""
    asked = os.environ.get(ISA_ENV)
    if not asked:
        return host_level()
    by_name = {lv.name: lv for lv in levels()}
    if asked not in by_name:
        raise KernelUnavailable(f"{ISA_ENV}={asked!r} is not a kernel level here; choose one of {', '.join(by_name)}")
    missing = missing_cpu_flags(by_name[asked])
    if missing:
        raise KernelUnavailable(f"{ISA_ENV}={asked!r} needs CPU flags this machine lacks: {' '.join(missing)}")
    return by_name[asked]


def _compiler() -> str:
    if os.environ.get("CXX"):
        if not shutil.which(os.environ["CXX"]):
            raise KernelUnavailable(f"CXX={os.environ['CXX']!r} is not an executable compiler")
        return shutil.which(os.environ["CXX"])
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)
    raise KernelUnavailable("layout 'cpu-kernel' needs a C++ compiler: install g++ or set CXX")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> str:
    return os.path.join(os.environ.get("VIASD_CACHE", os.path.expanduser("~/.cache/viasd-jax")), "kernels")


def compiled() -> list[str]:
    """The kernel's source files (SOURCES less the headers they include)."""
    return [path for path in SOURCES if path.endswith(".cc")]


def build(lv: Level | None = None) -> str:
    """Path of the compiled library for this source, jaxlib, compiler and `lv` (default
    `level()`), compiled if missing."""
    import jaxlib

    lv = lv or level()
    cxx = _compiler()
    flags = (*COMMON_FLAGS, *lv.flags)
    source = b"\0".join(open(path, "rb").read() for path in SOURCES)
    key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), cxx.encode(), " ".join(flags).encode(),
                                     _cpu_flags().encode(), platform.processor().encode()])).hexdigest()[:16]
    path = os.path.join(_cache_dir(), f"matvec-{lv.name}-{key}.so")
    if os.path.exists(path):
        return path
    os.makedirs(_cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as tmp:
        objects = [os.path.join(tmp, os.path.basename(src) + ".o") for src in compiled()]
        jobs = [subprocess.Popen([cxx, *flags, f"-I{jax.ffi.include_dir()}", "-c", src, "-o", obj],  # side by side
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for src, obj in zip(compiled(), objects)]
        errors = [job.communicate()[1] for job in jobs]
        failed = [(src, err) for src, err, job in zip(compiled(), errors, jobs) if job.returncode]
        out = os.path.join(tmp, "matvec.so")
        if not failed:
            link = subprocess.run([cxx, *flags, *objects, "-o", out], capture_output=True, text=True)
            failed = [] if link.returncode == 0 else [("linking", link.stderr)]
        if failed:
            src, err = failed[0]
            last = (err.strip().splitlines() or ["(no output)"])[-1]
            raise KernelUnavailable(f"compiling the CPU kernel for {lv.name} failed ({os.path.basename(src)}): {last}")
        os.replace(out, path)  # atomic: concurrent builders agree on the result
    return path


@functools.cache
def _library() -> ctypes.CDLL:
    return ctypes.cdll.LoadLibrary(build())


def amx_bf16() -> bool:
    """Whether `products="bfloat16"` runs on AMX tiles here (Intel CPUs with AMX-BF16 on
    Linux 5.16+; `VIASD_AMX=0` turns it off): about 3x the dot-product path's rate on
    prefill, with sums in a different order (last bits differ from other machines)."""
    ensure()
    return bool(_library().ViasdAmxBf16())


def features() -> frozenset[str]:
    """The instruction sets the loaded build may use: "avx2" (with FMA), "avx512" (F and
    BW), "vnni", "bf16" (AVX-512 BF16) and "amx" (tiles compiled in; `amx_bf16` says
    whether this process may use them)."""
    bits = _library().ViasdKernelFeatures()
    return frozenset(name for i, name in enumerate(_FEATURE_BITS) if bits >> i & 1)


def bf16_dot_products() -> bool:
    """Whether the kernel multiplies bfloat16 operands in hardware here (a build with
    AVX-512 BF16): then `products="bfloat16"` runs at about twice float32's rate;
    elsewhere it computes the same products from widened operands, no faster."""
    return "bf16" in features()


@functools.cache
def ensure() -> None:
    """Build (if needed) and register the kernel once per process; raises `KernelUnavailable`."""
    if jax.default_backend() != "cpu":
        raise KernelUnavailable(f"layout 'cpu-kernel' runs on the CPU backend, not {jax.default_backend()!r}")
    lib = _library()
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.ViasdMatvec), platform="cpu")
    jax.ffi.register_ffi_target(TARGET_INT8, jax.ffi.pycapsule(lib.ViasdMatvecInt8), platform="cpu")
    jax.ffi.register_ffi_target(TARGET_BLOCKS, jax.ffi.pycapsule(lib.ViasdMatvecBlocks), platform="cpu")
    jax.ffi.register_ffi_target(TAKE_ROWS, jax.ffi.pycapsule(lib.ViasdTakeRows), platform="cpu")


PRODUCTS = (None, "float32", "bfloat16", "int8")


def _check_products(products) -> None:
    if products not in PRODUCTS:
        raise ValueError(f"products must be None (as the operands are), 'float32', 'bfloat16' or 'int8', "
                         f"got {products!r}")


def matvec(x: jax.Array, w: jax.Array, layer: jax.Array | int = 0, live: jax.Array | int | None = None,
           scale: jax.Array | None = None, rows: int | None = None, products: str | None = None) -> jax.Array:
    """`x [M, K] @ w[layer].T` for output-major `w [L, N, K]` (or `[N, K]`, layer 0) -> `[M, N]` float32.

    `w` is float32, bfloat16 or int8; int8 needs `scale`, one float32 per output row
    (`[L, N]` or `[N]`), and computes `(x @ w[layer].T) * scale[layer]`. `layer` may be
    traced (the kernel reads the stacked weights in place, so a scan over layers copies
    nothing). bfloat16 `x` against bfloat16 or int8 `w` stays bfloat16 (the kernel's
    dot-product path); any other `x` is read as float32. `live` (may be traced;
    default M): only the first `live` rows are computed, the rest come out zero; each
    row's result is the same whatever the number of rows. `rows` (static; default N):
    only w's first `rows` rows are read, giving `[M, rows]`, each output bitwise as in
    the full product. `products="bfloat16"`: x is rounded to bfloat16 and so are float32
    weights (per chunk of rows, in the kernel), and the dot-product path multiplies them
    (accumulating in float32): about twice float32's multiply-adds per second on many
    rows, for compute-bound prefill, and on AMX tiles where the CPU has them (`amx_bf16`)
    more; without AVX-512 BF16 the weights stay float32. `products="float32"` (prefill):
    float32 weights and x, each output summed along k in one lane when more than 9 rows
    are live (AVX-512), at the cores' FMA rate: float32 products as exact as the default
    path's, in another order, so a row's bits differ from a decoding step's (each row still
    independent of the others); other weights multiply as their operands are.
    Not differentiable.
    """
    ensure()
    _check_products(products)
    if products == "int8":
        raise ValueError("products='int8' multiplies GGUF codes (matvec_blocks, quantize='gguf'), "
                         f"not {w.dtype} weights")
    if products == "bfloat16":
        x = x.astype(jnp.bfloat16)
    out = jax.ShapeDtypeStruct((x.shape[0], _rows(w.shape[-2], rows)), jnp.float32)
    layer = jnp.asarray(layer, jnp.int32)
    live = jnp.asarray(x.shape[0] if live is None else live, jnp.int32)
    if w.dtype == jnp.int8:
        if scale is None or scale.shape != w.shape[:-1]:
            raise ValueError(f"int8 weights {w.shape} need one scale per output row, shaped {w.shape[:-1]}")
        call = jax.ffi.ffi_call(TARGET_INT8, out, vmap_method="sequential")
        x = x if x.dtype == jnp.bfloat16 else x.astype(jnp.float32)
        return call(x, w, scale.astype(jnp.float32), layer, live, bf16_products=np.int32(products == "bfloat16"))
    bf16_x = x.dtype == jnp.bfloat16 and (w.dtype == jnp.bfloat16 or products == "bfloat16")
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    return call(x if bf16_x else x.astype(jnp.float32), w, layer, live, along_k=np.int32(products == "float32"))


def _rows(n: int, rows: int | None) -> int:
    if rows is not None and not 0 < rows <= n:
        raise ValueError(f"matvec: rows must be in [1, {n}], got {rows}")
    return n if rows is None else rows


def matvec_blocks(x: jax.Array, w, layer: jax.Array | int = 0, live: jax.Array | int | None = None,
                  rows: int | None = None, products: str | None = None) -> jax.Array:
    """`x [M, K] @ w[layer].T` -> `[M, N]` float32, for `w` a `gguf_blocks.BlockWeight`
    (GGUF k-quant codes, packed per layer as its docstring says): `w[n, k] = scale *
    code[n, k] - min` with one rounding. `x` is read as float32. `layer`, `live` as in
    `matvec`; each output is bitwise what `matvec` gives for the float32 weights. `rows`
    and `products` as in `matvec` (with "bfloat16", bitwise what `matvec` gives for the
    float32 weights with that option). `products="int8"`: each row of x is quantized to
    int8 per 32 values (`dx = max|x| / 127`, `xq = round(x / dx)`) and multiplied with
    the codes in integers, the scales applied per sub-block (llama.cpp's numerics,
    `csrc/int8_products.cc`): lossy against float32 products, each row's result still
    independent of the other rows. `products="float32"`: as `matvec`'s (the codes' float32
    weights, each output summed along k, on more than 9 live rows). Not differentiable.
    """
    ensure()
    _check_products(products)
    if x.shape[-1] != w.k:
        raise ValueError(f"matvec_blocks: x {x.shape} does not match codes {w.codes.shape} of K = {w.k}")
    if products == "int8" and w.k % 128:
        raise ValueError(f"matvec_blocks: products='int8' needs K a multiple of 128, got {w.k}")
    out = jax.ShapeDtypeStruct((x.shape[0], _rows(w.codes.shape[-2], rows)), jnp.float32)
    call = jax.ffi.ffi_call(TARGET_BLOCKS, out, vmap_method="sequential")
    live = jnp.asarray(x.shape[0] if live is None else live, jnp.int32)
    x = x.astype(jnp.bfloat16 if products == "bfloat16" else jnp.float32)
    return call(x, w.codes, w.scales, w.mins, w.kinds, jnp.asarray(layer, jnp.int32), live,
                int8_products=np.int32(products == "int8"), along_k=np.int32(products == "float32"))


def take_rows(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """`table [V, D]` rows at `tokens` (any shape, clipped to the table) -> `[*tokens.shape, D]`.

    For 16-bit tables on the CPU backend: there XLA gathers them in float32 and converts
    the whole table to do so on every program call (`csrc/matvec.cc`)."""
    ensure()
    out = jax.ShapeDtypeStruct((math.prod(tokens.shape), table.shape[1]), table.dtype)
    rows = jax.ffi.ffi_call(TAKE_ROWS, out, vmap_method="sequential")(table, tokens.reshape(-1).astype(jnp.int32))
    return rows.reshape(*tokens.shape, table.shape[1])
