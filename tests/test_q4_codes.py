"""quantize="q4": float weights as 4-bit codes that the codes kernel multiplies."""

import dataclasses

import numpy as np
import pytest

import viasd_jax
from viasd_jax import gguf_blocks as G
from viasd_jax.layout import OutputMajor, matrices
from viasd_jax.params import leaves_of, params_from_leaves
from viasd_jax.q4_codes import q4_codes


def test_q4_codes_round_each_weight_to_its_nearest_level():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 96)).astype(np.float32) * np.float32(0.03)
    w[1, 32:64] = 0.25  # a constant run
    codes, scales, mins = q4_codes(w, rows=2)  # row chunks smaller than N
    assert codes.dtype == np.uint8 and codes.max() <= 15 and scales.shape == mins.shape == (5, 3)
    back = G.float32_weights(codes, scales, mins)
    step = np.repeat(scales, 32, axis=1)
    assert np.all(np.abs(back - w) <= step / 2 * (1 + 1e-5) + 1e-7)
    assert back[1, 32:64].tolist() == [0.25] * 32 and scales[1, 1] == 0
    runs = w.reshape(5, 3, 32)  # each run's extremes are levels: its least value exactly
    np.testing.assert_array_equal(back.reshape(5, 3, 32).min(-1), runs.min(-1))
    np.testing.assert_allclose(back.reshape(5, 3, 32).max(-1), runs.max(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of 32, got 40"):
        q4_codes(np.zeros((2, 40), np.float32))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny qwen2 model whose contracted sizes (128, 256) suit int8 products: float32 and q4."""
    from hf_models import make_hf_model, make_tokenizer

    d = str(tmp_path_factory.mktemp("q4") / "hf")
    make_hf_model("qwen2", d, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    make_tokenizer(d)
    return d, viasd_jax.load(d, layout="cpu-kernel"), viasd_jax.load(d, quantize="q4")


def _dequantized(model):
    """`model` with each q4 matrix replaced by its float32 weights, as the kernel forms them."""
    cfg, leaves = model.config, dict(leaves_of(model.params))
    for name, (_, contracted) in matrices().items():
        w = leaves.get(name)
        if w is None:
            continue
        k = w.w.k
        layers = []
        for codes, scales, mins in zip(*(np.asarray(a).reshape(-1, *a.shape[-2:]) for a in (w.w.codes, w.w.scales,
                                                                                           w.w.mins))):
            runs = codes.reshape(codes.shape[0], -1, 16)  # per 32 weights: codes 0-15 low nibbles, 16-31 high
            unpacked = np.stack([runs & 15, runs >> 4], axis=-2).reshape(codes.shape[0], k)
            layers.append(G.float32_weights(unpacked, scales, mins))
        dense = np.stack(layers).reshape(w.w.shape)
        leaves[name] = OutputMajor(dense, kernel=True)
    return dataclasses.replace(model, params=params_from_leaves(cfg, leaves))


def test_q4_model_multiplies_exactly_its_dequantized_weights(wide):
    _, _, q4 = wide
    layers = q4.params.layers
    assert isinstance(layers.w_down.w, G.BlockWeight) and not layers.w_down.w.kinds.any()  # all Q4_K
    assert isinstance(q4.params.lm_head.w, G.BlockWeight) and q4.params.embed.dtype == np.float32
    dense = _dequantized(q4)
    prompt = [[5, 9, 11, 3, 7, 21, 8]]
    a = viasd_jax.generate(dense, prompt, max_new_tokens=10, chat_template=False)
    b = viasd_jax.generate(q4, prompt, max_new_tokens=10, chat_template=False)
    assert a.tokens == b.tokens
    seq = [prompt[0] + a.tokens[0]]
    np.testing.assert_array_equal(np.asarray(viasd_jax.score(dense, seq)).view(np.uint32),
                                  np.asarray(viasd_jax.score(q4, seq)).view(np.uint32))


def test_q4_drafter_with_int8_products_leaves_sd_exact(wide):
    """A drafter only proposes: sd with a q4, int8-products drafter equals plain decoding."""
    d, target, _ = wide
    drafter = viasd_jax.load(d, quantize="q4", products="int8")
    assert drafter.params.layers.wq.products == "int8"
    prompt = [[5, 9, 11, 3, 7, 21, 8], [4, 4, 12, 30]]
    ar = viasd_jax.generate(target, prompt, max_new_tokens=12, chat_template=False)
    sd = viasd_jax.generate(target, prompt, max_new_tokens=12, chat_template=False, drafter=drafter, mode="sd",
                            gamma=3)
    assert sd.tokens == ar.tokens and sd.stats["drafted"] > 0


def test_q4_refuses_what_it_cannot_do(wide):
    d, target, _ = wide
    with pytest.raises(ValueError, match="dtype must be float32"):
        viasd_jax.load(d, quantize="q4", dtype="bfloat16")
    with pytest.raises(ValueError, match="runs on the CPU kernel"):
        viasd_jax.load(d, quantize="q4", layout="input-major")
    with pytest.raises(ValueError, match="needs quantize='gguf' or 'q4'"):
        viasd_jax.load(d, products="int8")
