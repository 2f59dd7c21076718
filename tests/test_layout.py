"""Output-major weight layout and the compiled CPU kernel: the same model, the same numbers."""

import dataclasses
import subprocess

import numpy as np
import pytest

import checkpoints_convert as cc
import viasd_jax
from viasd_jax import layout as LY
from viasd_jax.quant import Int8Weight, quantize


def test_output_major_dims():
    assert LY.output_major_dims("LDF", "D") == "LFD"
    assert LY.output_major_dims("LNKD", "NK") == "LDNK"
    assert LY.output_major_dims("LDNK", "D") == "LNKD"
    assert LY.output_major_dims("DV", "D") == "VD"


@pytest.mark.parametrize("layout", ["output-major", "cpu-kernel"])
@pytest.mark.parametrize("family", ["qwen2", "gemma2", "llama"])
def test_output_major_scores_equal_input_major(tiny, family, layout):
    m = tiny[family]
    om = dataclasses.replace(m, params=LY.apply(m.params, m.config, layout))
    assert isinstance(om.params.layers.w_down, LY.OutputMajor) and LY.layout_of(om.params) == layout
    assert om.params.layers.w_down.shape == (m.config.num_layers, m.config.hidden_size, m.config.intermediate_size)
    toks = np.random.RandomState(0).randint(3, 96, size=(2, 9))
    np.testing.assert_allclose(viasd_jax.score(om, toks), viasd_jax.score(m, toks), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["output-major", "cpu-kernel"])
def test_output_major_generation_equals_input_major(tiny, layout):
    m = tiny["qwen2"]
    om = dataclasses.replace(m, params=LY.apply(m.params, m.config, layout))
    prompts = [[5, 17, 33, 8, 9], [7, 3, 44]]
    ar = viasd_jax.generate(m, prompts, max_new_tokens=12).tokens
    assert viasd_jax.generate(om, prompts, max_new_tokens=12).tokens == ar
    assert viasd_jax.generate(om, prompts, drafter=om, route=[0, 3], lossless=True, max_new_tokens=12).tokens == ar


@pytest.mark.parametrize("layout", ["output-major", "cpu-kernel"])
def test_output_major_int8_equals_input_major_int8(tiny, layout):
    qm = quantize(tiny["llama"])
    oq = dataclasses.replace(qm, params=LY.apply(qm.params, qm.config, layout))
    assert isinstance(oq.params.layers.wo, LY.OutputMajor) and isinstance(oq.params.layers.wo.w, Int8Weight)
    assert LY.layout_of(oq.params) == layout
    toks = np.random.RandomState(1).randint(3, 96, size=(1, 7))
    np.testing.assert_allclose(viasd_jax.score(oq, toks), viasd_jax.score(qm, toks), rtol=1e-4, atol=1e-4)
    for quantized in (oq, qm):
        with pytest.raises(ValueError, match="already quantized"):
            quantize(quantized)


def test_int8_bfloat16_drafter_keeps_lossless_output_exact(hf_dirs):
    """An int8 drafter computing in bfloat16 (the kernel's int8 dot-product path) under a
    float32 target: it only proposes, so sd and lossless via give plain greedy's tokens."""
    target = viasd_jax.load(hf_dirs["qwen2"])
    drafter = viasd_jax.load(hf_dirs["qwen2"], dtype="bfloat16", quantize="int8")
    assert LY.layout_of(drafter.params) == "cpu-kernel" and isinstance(drafter.params.layers.w_up.w, Int8Weight)
    assert str(drafter.dtype) == "bfloat16"  # activations stay bfloat16 over int8 matrices
    prompts = [[5, 17, 33, 8, 9, 40, 41, 5, 17], [7, 3, 44]]
    ar = viasd_jax.generate(target, prompts, max_new_tokens=12).tokens
    sd = viasd_jax.generate(target, prompts, drafter=drafter, mode="sd", max_new_tokens=12)
    assert sd.tokens == ar and sd.stats["drafted"] > 0
    assert viasd_jax.generate(target, prompts, drafter=drafter, route=[0, 1], lossless=True,
                              max_new_tokens=12).tokens == ar


def test_load_layout_option_and_checkpoint_round_trip(hf_dirs, tmp_path):
    m = viasd_jax.load(hf_dirs["qwen2"], layout="output-major")
    assert LY.is_output_major(m.params)
    back = LY.to_input_major(m.params, m.config)
    ref = viasd_jax.load(hf_dirs["qwen2"], layout="input-major")
    np.testing.assert_array_equal(np.asarray(back.layers.wq), np.asarray(ref.params.layers.wq))
    out = cc.save(str(tmp_path / "ckpt"), m.config, m.params, {})  # saved input-major
    restored = viasd_jax.load(out, layout="output-major")
    np.testing.assert_array_equal(np.asarray(restored.params.layers.w_up.w), np.asarray(m.params.layers.w_up.w))
    with pytest.raises(ValueError, match="unknown layout"):
        viasd_jax.load(hf_dirs["qwen2"], layout="column")
    with pytest.raises(ValueError, match="sharded models"):
        viasd_jax.load(hf_dirs["qwen2"], layout="output-major", mesh=viasd_jax.make_mesh(1, 2))


def _kernel_operands(rng, dtype: str, w: np.ndarray, x: np.ndarray):
    """(x, w, scale or None) for a kernel path: "float32", "bfloat16" (weights), "bfloat16
    activations" (both), "int8" (weights, one scale per row), "int8, bfloat16 activations"."""
    import ml_dtypes

    scale = None
    if dtype.startswith("int8"):
        scale = rng.uniform(0.5, 2.0, w.shape[:-1]).astype(np.float32)
        w = np.clip(np.round(w * 40), -127, 127).astype(np.int8)
    elif dtype != "float32":
        w = w.astype(ml_dtypes.bfloat16)
    if dtype.endswith("bfloat16 activations"):
        x = x.astype(ml_dtypes.bfloat16)
    return x, w, scale


def _reference(x, w, scale):
    y = x.astype(np.float32) @ w.astype(np.float32).T
    return y if scale is None else y * scale


KERNEL_PATHS = ["float32", "bfloat16", "bfloat16 activations", "int8", "int8, bfloat16 activations"]


@pytest.mark.kernel
@pytest.mark.parametrize("dtype", KERNEL_PATHS)
def test_kernel_matches_numpy_on_ragged_shapes(dtype):
    """Tails in every dimension: K not a multiple of the 16 vector lanes, N not of the
    3- or 4-row blocks nor of the 48-row chunk, every token-group size 1-9 and M above
    one group; a stacked weight read at a traced layer."""
    import jax
    import jax.numpy as jnp

    from viasd_jax import cpu_matvec

    rng = np.random.default_rng(0)
    call = jax.jit(cpu_matvec.matvec)
    # bfloat16 steps 32 columns at a time: two steps and a tail, one step and a tail; 1100
    # spans several of the K blocks that more than 9 rows are summed in, and a tail
    for k in (77, 45, 1100):
        for m in (*range(1, 10), 11, 19):
            x, w, scale = _kernel_operands(rng, dtype, rng.standard_normal((3, 101, k)).astype(np.float32),
                                           rng.standard_normal((m, k)).astype(np.float32))
            got = call(jnp.asarray(x), jnp.asarray(w), jnp.int32(2), None, None if scale is None else scale)
            want = _reference(x, w[2], None if scale is None else scale[2])
            tol = 1e-6 * k * (1 if scale is None else 40)  # float32 sums over k (int8: of integers up to 127)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=tol)
    unstacked = cpu_matvec.matvec(jnp.asarray(x), jnp.asarray(w[1]), 0, None, None if scale is None else scale[1])
    np.testing.assert_allclose(np.asarray(unstacked), _reference(x, w[1], None if scale is None else scale[1]),
                               rtol=1e-5, atol=tol)


@pytest.mark.kernel
@pytest.mark.parametrize("dtype", KERNEL_PATHS)
def test_kernel_reads_the_first_rows_asked_for(dtype):
    """`rows` (a drafter's narrow head): the leading outputs, bitwise the full product's,
    at every layer of a stack (the layer's offset counts all its rows)."""
    import jax
    import jax.numpy as jnp

    from viasd_jax import cpu_matvec

    rng = np.random.default_rng(2)
    x, w, scale = _kernel_operands(rng, dtype, rng.standard_normal((3, 101, 77)).astype(np.float32),
                                   rng.standard_normal((5, 77)).astype(np.float32))
    x, w = jnp.asarray(x), jnp.asarray(w)
    for layer in (0, 2):
        full = np.asarray(cpu_matvec.matvec(x, w, layer, None, scale))
        for rows in (1, 37, 101):
            got = np.asarray(jax.jit(cpu_matvec.matvec, static_argnames="rows")(x, w, layer, None, scale, rows=rows))
            assert got.shape == (5, rows)
            np.testing.assert_array_equal(got, full[:, :rows])
    for bad in (0, 102):
        with pytest.raises(ValueError, match="rows must be in"):
            cpu_matvec.matvec(x, w, 0, None, scale, rows=bad)


@pytest.mark.kernel
@pytest.mark.parametrize("dtype", KERNEL_PATHS)
def test_kernel_row_does_not_depend_on_its_neighbours(dtype):
    """A row's result is bitwise the same alone or among 20 rows (prefill's K-blocked path):
    lossless decoding relies on the target scoring a token identically in a 1-token
    step, a verification window and a prefill chunk."""
    import jax
    import jax.numpy as jnp

    from viasd_jax import cpu_matvec

    rng = np.random.default_rng(1)
    x, w, scale = _kernel_operands(rng, dtype, rng.standard_normal((2, 50, 1100)).astype(np.float32),
                                   rng.standard_normal((20, 1100)).astype(np.float32))
    x, w = jnp.asarray(x), jnp.asarray(w)
    call = jax.jit(lambda x, live=None: cpu_matvec.matvec(x, w, jnp.int32(1), live, scale))
    together = np.asarray(call(x))
    for i in (0, 9, 19):
        np.testing.assert_array_equal(together[i:i + 1], np.asarray(call(x[i:i + 1])))
    for live in (0, 7, 12):  # only the leading `live` rows are computed, the rest are zero
        part = np.asarray(call(x, jnp.int32(live)))
        np.testing.assert_array_equal(part[:live], together[:live])
        assert not part[live:].any()


@pytest.mark.kernel
@pytest.mark.parametrize("k", [1100, 77], ids=["even-k", "odd-k"])
@pytest.mark.parametrize("dtype", KERNEL_PATHS)
def test_bfloat16_products_round_both_operands(dtype, k):
    """products="bfloat16" (prefill_dtype): x and float32 weights are rounded to bfloat16
    on every build (AVX-512 BF16 multiplies them, others widen them) and the products
    summed in float32: the numpy product of the rounded operands, not the float32 one,
    and a row's result does not depend on how many rows share the call. An odd K leaves
    a last k without its pair (the pair path multiplies k two at a time)."""
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    from viasd_jax import cpu_matvec

    rng = np.random.default_rng(3)
    # 101 rows of x: tiles of 16 in pairs and one alone; 150 of W: chunks of 64 and a part
    x, w, scale = _kernel_operands(rng, dtype, rng.standard_normal((2, 150, k)).astype(np.float32),
                                   rng.standard_normal((101, k)).astype(np.float32))
    call = jax.jit(lambda x, w: cpu_matvec.matvec(x, w, jnp.int32(1), None, scale, products="bfloat16"))
    got = np.asarray(call(jnp.asarray(x), jnp.asarray(w)))
    x_bf = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    w_used = w[1].astype(ml_dtypes.bfloat16) if w.dtype == np.float32 else w[1]
    want = _reference(x_bf, w_used.astype(np.float64), None if scale is None else scale[1])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())  # float32 sums of 1100
    if x.dtype == np.float32:  # the option changed the operands: not the float32 product
        assert np.abs(got - _reference(x, w[1], None if scale is None else scale[1])).max() > 1e-3
    for i in (0, 9, 19):
        np.testing.assert_array_equal(got[i:i + 1], np.asarray(call(jnp.asarray(x[i:i + 1]), jnp.asarray(w))))
    with pytest.raises(ValueError, match="products must be None"):
        cpu_matvec.matvec(jnp.asarray(x), jnp.asarray(w), 0, None, scale, products="float16")


@pytest.mark.kernel
@pytest.mark.parametrize("k", [1100, 77], ids=["even-k", "odd-k"])
def test_float32_products_sum_prefill_rows_along_k(k):
    """products="float32" (float32 prefill on the kernel): more than 9 rows sum each
    output along k in blocks (another order than decoding's, as accurate), each row
    bitwise the same among 12 or 101 rows; 9 rows or fewer, and other weights, multiply
    as without the option."""
    import jax
    import jax.numpy as jnp

    from viasd_jax import cpu_matvec

    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.standard_normal((2, 150, k)).astype(np.float32))
    x = rng.standard_normal((101, k)).astype(np.float32)
    call = jax.jit(lambda x, products: cpu_matvec.matvec(x, w, jnp.int32(1), products=products),
                   static_argnames="products")
    got = np.asarray(call(jnp.asarray(x), "float32"))
    want = x.astype(np.float64) @ np.asarray(w[1], np.float64).T
    dot_error = np.abs(np.asarray(call(jnp.asarray(x), None)) - want).max()
    assert np.abs(got - want).max() <= 2 * dot_error + 1e-6
    np.testing.assert_array_equal(got[40:52], np.asarray(call(jnp.asarray(x[40:52]), "float32")))
    for m in (1, 5, 9):
        np.testing.assert_array_equal(np.asarray(call(jnp.asarray(x[:m]), "float32")),
                                      np.asarray(call(jnp.asarray(x[:m]), None)))
    q = jnp.asarray(rng.integers(-127, 128, (2, 150, k)).astype(np.int8))
    scale = jnp.asarray(rng.random((2, 150)).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(cpu_matvec.matvec(jnp.asarray(x), q, 1, None, scale, products="float32")),
                                  np.asarray(cpu_matvec.matvec(jnp.asarray(x), q, 1, None, scale)))


def test_amx_products_can_be_turned_off():
    """VIASD_AMX=0 keeps bfloat16 products on the dot-product path (to compare the two on
    a CPU with AMX tiles); the products agree with the float64 reference either way."""
    import os
    import sys

    code = ("import numpy as np, jax.numpy as jnp; from viasd_jax import cpu_matvec as c; "
            "r = np.random.default_rng(5); x = r.standard_normal((37, 300)).astype(np.float32); "
            "w = r.standard_normal((53, 300)).astype(np.float32); "
            "y = np.asarray(c.matvec(jnp.asarray(x), jnp.asarray(w), products='bfloat16')); "
            "import ml_dtypes; b = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float64); "
            "e = np.abs(y - b(x) @ b(w).T).max(); print(c.amx_bf16(), e < 1e-4)")
    off = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VIASD_AMX": "0"}, capture_output=True,
                         text=True, check=True)
    assert off.stdout.split() == ["False", "True"]
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert on.stdout.split()[1] == "True"


def test_bfloat16_embedding_lookup_reads_rows_without_converting_the_table(hf_dirs):
    """The kernel layout looks up a bfloat16 model's embeddings by row (the same values
    as `jnp.take`), so the compiled program holds no float32 copy of the table: XLA's
    CPU gather converts a whole 16-bit table per call (docs/performance.md)."""
    import jax
    import jax.numpy as jnp

    from viasd_jax import model as MD

    m = viasd_jax.load(hf_dirs["qwen2"], dtype="bfloat16")
    assert LY.layout_of(m.params) == "cpu-kernel"
    tokens = jnp.asarray([[3, 0, 7], [m.config.vocab_size - 1, 5, 5]], jnp.int32)
    got = jax.jit(MD.embed, static_argnums=1)(m.params, m.config, tokens)
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)),
                                  np.asarray(m.params.embed.astype(jnp.float32))[np.asarray(tokens)])
    v, d = m.params.embed.shape
    program = jax.jit(MD.embed, static_argnums=1).lower(m.params, m.config, tokens).compile().as_text()
    assert f"f32[{v},{d}]" not in program


def test_kernel_layout_errors(tiny, monkeypatch, tmp_path):
    from viasd_jax import cpu_matvec

    with pytest.raises(ValueError, match="one scale per output row"):
        cpu_matvec.matvec(np.ones((1, 8), np.float32), np.ones((2, 4, 8), np.int8))
    monkeypatch.setenv("VIASD_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(cpu_matvec.KernelUnavailable, match="no-such-compiler"):
        cpu_matvec.build()


def test_auto_layout_picks_the_kernel_on_cpu_and_falls_back(hf_dirs, monkeypatch):
    from viasd_jax import cpu_matvec

    assert LY.layout_of(viasd_jax.load(hf_dirs["qwen2"]).params) == "cpu-kernel"  # the default is "auto"
    assert LY.resolve("auto", quantize="int8") == "cpu-kernel"
    assert LY.resolve("auto", mesh=object()) == "input-major"

    def unavailable():
        raise cpu_matvec.KernelUnavailable("no compiler in this test")

    monkeypatch.setattr(cpu_matvec, "ensure", unavailable)
    with pytest.warns(UserWarning, match="no compiler in this test"):
        assert LY.resolve("auto") == "input-major"


def test_float16_weights_take_xla_dot_or_a_clear_error(hf_dirs):
    m = viasd_jax.load(hf_dirs["qwen2"], dtype="float16")
    assert LY.layout_of(m.params) == "input-major"  # "auto" never hands float16 to the kernel
    out = viasd_jax.generate(m, [[5, 6, 7]], max_new_tokens=4)
    assert len(out.tokens[0]) == 4
    with pytest.raises(ValueError, match="float32, bfloat16 or int8 weights, not float16"):
        viasd_jax.load(hf_dirs["qwen2"], dtype="float16", layout="cpu-kernel")
