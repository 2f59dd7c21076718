"""The CPU kernel's contract on every instruction-set level this machine can run.

The kernel is built for one named level (`cpu_matvec.levels()`): the highest this CPU
runs, or a lower one that `VIASD_KERNEL_ISA` names. The rest of the suite tests the level
this process runs; here the tests marked `kernel` (the kernel's exactness and contract
tests) run again in a fresh interpreter for every other level, so a machine with AVX-512
also proves the AVX2 and generic paths. A level this CPU cannot run is skipped with the
flags it lacks; none passes without running.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from viasd_jax import cpu_matvec

# the modules holding tests marked `kernel`: a level run collects only these
KERNEL_MODULES = ("test_layout.py", "test_gguf_blocks.py", "test_kernel_levels.py")
BITS_ENV = "VIASD_TEST_KERNEL_BITS"  # where `test_int8_products_bits` saves its outputs (set by the level runs)


@pytest.mark.kernel
def test_the_build_is_the_level_it_was_asked_for():
    """The loaded library reports exactly its level's instruction sets: a level's tests
    prove that level's paths, not whatever the compiler chose for this CPU."""
    lv = cpu_matvec.level()
    if lv is cpu_matvec.NATIVE:
        pytest.skip("no named levels on this architecture: the build is the compiler's native one")
    assert cpu_matvec.features() == lv.features
    assert cpu_matvec.bf16_dot_products() == ("bf16" in lv.features)
    if "amx" not in lv.features:
        assert not cpu_matvec.amx_bf16()


def _int8_outputs() -> dict[str, np.ndarray]:
    """products="int8" on random Q4_K and Q6_K codes for decoding's, verification's and
    prefill's row counts, and a bfloat16 row lookup: integer sums and fixed float steps,
    so every level must give the same bits."""
    import jax.numpy as jnp
    from test_gguf_blocks import _block_weight

    rng = np.random.default_rng(3)
    out = {}
    for kinds in (("Q4_K", "Q6_K"), ("Q6_K", "Q4_K")):
        b, _ = _block_weight(rng, kinds, 53, 2304)  # Q4_K: 4.5 tiles of 512
        for m in (1, 5, 12, 20):
            x = jnp.asarray(rng.standard_normal((m, 2304)).astype(np.float32))
            out[f"{kinds[0]}-{m}"] = np.asarray(cpu_matvec.matvec_blocks(x, b, 0, products="int8"))
    table = jnp.asarray(rng.standard_normal((300, 40)).astype(np.float32)).astype(jnp.bfloat16)
    out["rows"] = np.asarray(cpu_matvec.take_rows(table, jnp.asarray([[3, 299], [0, 7]])).astype(jnp.float32))
    return out


@pytest.mark.kernel
def test_int8_products_bits():
    """Saves `_int8_outputs` where a level run asks (compared in the parent run)."""
    outputs = _int8_outputs()
    assert all(np.isfinite(v).all() and np.abs(v).max() > 0 for v in outputs.values())
    if os.environ.get(BITS_ENV):
        np.savez(os.environ[BITS_ENV], **outputs)


@pytest.mark.parametrize("name", [lv.name for lv in cpu_matvec.levels()])
def test_kernel_contract_on_each_level(name, tmp_path):
    """`pytest -m kernel` under `VIASD_KERNEL_ISA=name` passes, and its int8 products are
    this process's to the bit."""
    lv = next(lv for lv in cpu_matvec.levels() if lv.name == name)
    if lv == cpu_matvec.level():
        pytest.skip(f"{name} is this process's own level: the rest of the suite tests it")
    missing = cpu_matvec.missing_cpu_flags(lv)
    if missing:
        pytest.skip(f"this CPU cannot run the {name} build: it lacks {' '.join(missing)}")
    bits = tmp_path / "bits.npz"
    env = {**os.environ, cpu_matvec.ISA_ENV: name, BITS_ENV: str(bits)}
    modules = [os.path.join(os.path.dirname(__file__), m) for m in KERNEL_MODULES]
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "kernel", "-p", "no:cacheprovider", "-x", *modules],
                          env=env, capture_output=True, text=True, timeout=1500)
    tail = "\n".join(done.stdout.splitlines()[-30:])
    assert done.returncode == 0, f"kernel tests failed at level {name}:\n{tail}\n{done.stderr[-2000:]}"
    assert re.search(r"\b\d+ passed", done.stdout) and " failed" not in done.stdout, tail
    theirs, ours = np.load(bits), _int8_outputs()
    for key, value in ours.items():
        np.testing.assert_array_equal(theirs[key].view(np.uint32), value.view(np.uint32), err_msg=key)


def test_an_unknown_or_unrunnable_level_is_refused(monkeypatch):
    monkeypatch.setenv(cpu_matvec.ISA_ENV, "avx9000")
    with pytest.raises(cpu_matvec.KernelUnavailable, match="is not a kernel level here; choose one of"):
        cpu_matvec.level()
    if cpu_matvec.levels() == (cpu_matvec.NATIVE,):
        return
    monkeypatch.setattr(cpu_matvec, "_cpu_flags", lambda: "flags : fpu sse2")
    monkeypatch.setenv(cpu_matvec.ISA_ENV, "avx2")
    with pytest.raises(cpu_matvec.KernelUnavailable, match="needs CPU flags this machine lacks: .*avx2"):
        cpu_matvec.level()
