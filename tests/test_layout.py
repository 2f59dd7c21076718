"""Output-major weight layout: the same model, the same numbers, another memory order."""

import dataclasses

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


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "llama"])
def test_output_major_scores_equal_input_major(tiny, family):
    m = tiny[family]
    om = dataclasses.replace(m, params=LY.to_output_major(m.params, m.config))
    assert isinstance(om.params.layers.w_down, LY.OutputMajor)
    assert om.params.layers.w_down.shape == (m.config.num_layers, m.config.hidden_size, m.config.intermediate_size)
    toks = np.random.RandomState(0).randint(3, 96, size=(2, 9))
    np.testing.assert_allclose(viasd_jax.score(om, toks), viasd_jax.score(m, toks), rtol=1e-4, atol=1e-4)


def test_output_major_generation_equals_input_major(tiny):
    m = tiny["qwen2"]
    om = dataclasses.replace(m, params=LY.to_output_major(m.params, m.config))
    prompts = [[5, 17, 33, 8, 9], [7, 3, 44]]
    ar = viasd_jax.generate(m, prompts, max_new_tokens=12).tokens
    assert viasd_jax.generate(om, prompts, max_new_tokens=12).tokens == ar
    assert viasd_jax.generate(om, prompts, drafter=om, route=[0, 3], lossless=True, max_new_tokens=12).tokens == ar


def test_output_major_int8_equals_input_major_int8(tiny):
    qm = quantize(tiny["llama"])
    oq = dataclasses.replace(qm, params=LY.to_output_major(qm.params, qm.config))
    assert isinstance(oq.params.layers.wo, LY.OutputMajor) and isinstance(oq.params.layers.wo.w, Int8Weight)
    toks = np.random.RandomState(1).randint(3, 96, size=(1, 7))
    np.testing.assert_allclose(viasd_jax.score(oq, toks), viasd_jax.score(qm, toks), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="quantize before"):
        quantize(oq)


def test_load_layout_option_and_checkpoint_round_trip(hf_dirs, tmp_path):
    m = viasd_jax.load(hf_dirs["qwen2"], layout="output-major")
    assert LY.is_output_major(m.params)
    back = LY.to_input_major(m.params, m.config)
    ref = viasd_jax.load(hf_dirs["qwen2"])
    np.testing.assert_array_equal(np.asarray(back.layers.wq), np.asarray(ref.params.layers.wq))
    out = cc.save(str(tmp_path / "ckpt"), m.config, m.params, {})  # saved input-major
    restored = viasd_jax.load(out, layout="output-major")
    np.testing.assert_array_equal(np.asarray(restored.params.layers.w_up.w), np.asarray(m.params.layers.w_up.w))
    with pytest.raises(ValueError, match="unknown layout"):
        viasd_jax.load(hf_dirs["qwen2"], layout="column")
    with pytest.raises(ValueError, match="sharded models"):
        viasd_jax.load(hf_dirs["qwen2"], layout="output-major", mesh=viasd_jax.make_mesh(1, 2))
