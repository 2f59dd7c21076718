"""int8 weight-only quantization: close to float, and every mode works on it."""

import jax
import numpy as np
import pytest

import viasd_jax
from viasd_jax import layout as LY
from viasd_jax.quant import Int8Weight, quantize, quantize_leaf


def test_quantize_leaf_round_trip():
    w = jax.random.normal(jax.random.key(0), (3, 16, 4, 8))
    qw = quantize_leaf(w, "LDNK", "D")
    assert qw.q.dtype == np.int8 and qw.scale.shape == (3, 1, 4, 8)
    back = np.asarray(qw.q, np.float32) * np.asarray(qw.scale)
    assert np.abs(back - np.asarray(w)).max() <= np.asarray(qw.scale).max() / 2 + 1e-6


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "llama"])
def test_quantized_logits_close_to_float(tiny, family):
    m = tiny[family]
    qm = quantize(m)
    assert isinstance(qm.params.layers.w_up, Int8Weight) and isinstance(qm.params.embed, Int8Weight)
    toks = np.random.RandomState(0).randint(3, 96, size=(2, 16))
    ref, got = np.asarray(viasd_jax.score(m, toks)), np.asarray(viasd_jax.score(qm, toks))
    # the tiny random models amplify perturbations (large weights); the real model's figures
    # are in docs/performance.md
    assert np.abs(ref - got).mean() < 0.1 * np.abs(ref).mean()
    assert (ref.argmax(-1) == got.argmax(-1)).mean() > 0.85


def test_every_mode_runs_on_int8_and_lossless_stays_exact(tiny):
    qm = quantize(tiny["qwen2"])
    prompts = [[5, 17, 33, 8, 9], [7, 3, 44]]
    ar = viasd_jax.generate(qm, prompts, max_new_tokens=16).tokens
    assert viasd_jax.generate(qm, prompts, drafter="lookup", mode="sd", max_new_tokens=16).tokens == ar
    assert viasd_jax.generate(qm, prompts, drafter=qm, route=[0, 3], lossless=True, max_new_tokens=16).tokens == ar


def test_load_with_quantize_and_mesh(hf_dirs):
    m = viasd_jax.load(hf_dirs["llama"], quantize="int8")  # one CPU: the kernel's int8 path
    assert LY.layout_of(m.params) == "cpu-kernel" and isinstance(m.params.layers.wq.w, Int8Weight)
    with pytest.raises(ValueError, match="unknown quantization"):
        viasd_jax.load(hf_dirs["llama"], quantize="int4")
    mesh = viasd_jax.make_mesh(1, 2)
    sharded = viasd_jax.load(hf_dirs["llama"], quantize="int8", mesh=mesh)
    assert tuple(sharded.params.layers.wo.scale.sharding.spec)[1:3] in ((), (None,), (None, None))
    assert viasd_jax.generate(sharded, [[5, 6, 7]], max_new_tokens=8, mesh=mesh).tokens == \
        viasd_jax.generate(m, [[5, 6, 7]], max_new_tokens=8).tokens
