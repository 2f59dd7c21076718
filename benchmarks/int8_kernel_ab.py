"""The int8-products kernel (`csrc/int8_products.cc`) alone, outside XLA: two builds
timed in one process on the same data, taking turns, and their outputs compared bit
for bit.

A build is a source (a path, or `REV:` for the file at git revision REV) and a
`-march`. The kernel is compiled with a stand-in for XLA's FFI header (one thread, no
pool), so the timings are one core's. This machine is shared: a build against itself
reads 0.85-1.15, so only larger ratios mean anything. Usage:

    python benchmarks/int8_kernel_ab.py [--a HEAD~1:] [--b viasd_jax/csrc/int8_products.cc]
        [--march-a native] [--march-b native] [--rows 1,5,64]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "viasd_jax", "csrc")
KERNEL = os.path.join(CSRC, "int8_products.cc")

FFI_STUB = """#pragma once
#include <cstdint>
namespace xla { namespace ffi {
struct ThreadPool {  // no helpers: parallel_chunks runs every chunk on the caller
  int64_t num_threads() const { return 1; }
  template <typename F> void Schedule(F&&) {}
};
}}
"""

HARNESS = """#include <algorithm>
#include <chrono>
#include "common.h"
extern "C" double best_seconds(int nibbles, const uint8_t* codes, const float* scales, const float* mins, int64_t K,
                               const float* x, float* y, int64_t M, int64_t N, int repeats) {
  viasd::Blocks b{codes, scales, mins, K};
  xla::ffi::ThreadPool pool;
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    auto t = std::chrono::steady_clock::now();
    viasd::blocks_times_int8(pool, b, nibbles, x, y, M, N);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }
  return best;
}
"""


def source_text(source: str) -> str:
    """The kernel source at a path, or at git revision REV for `REV:`."""
    if source.endswith(":"):
        rel = os.path.relpath(KERNEL, ROOT)
        return subprocess.run(["git", "-C", ROOT, "show", f"{source}{rel}"], check=True, capture_output=True,
                              text=True).stdout
    with open(source) as f:
        return f.read()


def build(source: str, march: str, workdir: str) -> ctypes.CDLL:
    """The kernel from `source`, compiled for `-march=march` with the harness."""
    os.makedirs(os.path.join(workdir, "xla", "ffi", "api"), exist_ok=True)
    with open(os.path.join(workdir, "xla", "ffi", "api", "ffi.h"), "w") as f:
        f.write(FFI_STUB)
    name = f"{abs(hash((source, march)))}"
    src, harness, lib = (os.path.join(workdir, f"{name}{ext}") for ext in (".cc", "_harness.cc", ".so"))
    with open(src, "w") as f:
        f.write(source_text(source))
    with open(harness, "w") as f:
        f.write(HARNESS)
    cmd = ["g++", "-O3", f"-march={march}", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{workdir}", f"-I{CSRC}",
           src, harness, "-o", lib]
    subprocess.run(cmd, check=True)
    out = ctypes.CDLL(lib)
    p = ctypes.c_void_p
    out.best_seconds.restype = ctypes.c_double
    out.best_seconds.argtypes = [ctypes.c_int, p, p, p, ctypes.c_int64, p, p, ctypes.c_int64, ctypes.c_int64,
                                 ctypes.c_int]
    return out


def random_codes(rng, nibbles: bool, n: int, k: int):
    """Codes, scales and mins as the kernel reads them (Q4_K: two codes a byte)."""
    codes = rng.integers(0, 256 if nibbles else 64, n * k // (2 if nibbles else 1), dtype=np.uint8)
    scales = (rng.standard_normal(n * k // (32 if nibbles else 16)) * 1e-3).astype(np.float32)
    mins = (rng.standard_normal(scales.size) * 1e-3).astype(np.float32) if nibbles else np.zeros(1, np.float32)
    return codes, scales, mins


def run(lib, nibbles: bool, arrays, x: np.ndarray, n: int, repeats: int) -> tuple[float, np.ndarray]:
    """(best seconds of `repeats` calls, y [M, N])."""
    codes, scales, mins = arrays
    y = np.zeros((x.shape[0], n), np.float32)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    t = lib.best_seconds(int(nibbles), ptr(codes), ptr(scales), ptr(mins), x.shape[1], ptr(x), ptr(y), x.shape[0],
                         n, repeats)
    return t, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", default="HEAD:", help="kernel source: a path, or REV: for git revision REV")
    ap.add_argument("--b", default=KERNEL)
    ap.add_argument("--march-a", default="native")
    ap.add_argument("--march-b", default="native")
    ap.add_argument("--rows", default="1,5,64", help="rows of x (new tokens)")
    ap.add_argument("--turns", type=int, default=6)
    args = ap.parse_args()
    shapes = [(True, 8960, 1536), (True, 1536, 8960), (False, 1536, 8960)]  # gate/up, down (Q4_K / Q6_K)
    with tempfile.TemporaryDirectory() as tmp:
        libs = [build(args.a, args.march_a, tmp), build(args.b, args.march_b, tmp)]
        rng = np.random.default_rng(0)
        print("| codes | N x K | rows | A ms | B ms | B / A | B GMAC/s | bitwise equal |")
        print("|---|---|---:|---:|---:|---:|---:|---|")
        for nibbles, n, k in shapes:
            arrays = random_codes(rng, nibbles, n, k)
            for m in (int(r) for r in args.rows.split(",")):
                x = rng.standard_normal((m, k)).astype(np.float32)
                best, ys = [np.inf, np.inf], [None, None]
                for turn in range(args.turns):
                    for i in (0, 1) if turn % 2 == 0 else (1, 0):
                        t, ys[i] = run(libs[i], nibbles, arrays, x, n, 3 if m > 9 else 10)
                        best[i] = min(best[i], t)
                print(f"| {'Q4_K' if nibbles else 'Q6_K'} | {n} x {k} | {m} | {best[0] * 1e3:.2f} | {best[1] * 1e3:.2f} "
                      f"| {best[1] / best[0]:.2f} | {n * k * m / best[1] / 1e9:.0f} | {np.array_equal(ys[0], ys[1])} |",
                      flush=True)


if __name__ == "__main__":
    main()
