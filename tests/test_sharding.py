"""Sharded decoding on CPU meshes (8 fake devices): same tokens, declared layouts, memory."""

import jax
import numpy as np
import pytest

import viasd_jax
from checkpoints_convert import convert
from hf_models import make_hf_model, make_tokenizer
from viasd_jax import decode as D
from viasd_jax import sharding as SH
from viasd_jax.generate import prepare

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]


def spec(x):
    """An array's partition spec with trailing replicated axes dropped (jax drops them)."""
    s = list(x.sharding.spec)
    while s and s[-1] is None:
        s.pop()
    return tuple(s)
PROMPTS = [[5, 17, 33, 8, 9], [7, 3, 44, 61, 12, 9, 10, 11, 50], [20, 21, 22, 20, 21, 22, 20], [9]]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny model whose heads, KV heads, MLP and vocab all divide by 8."""
    root = tmp_path_factory.mktemp("wide")
    d = str(root / "hf")
    make_hf_model("qwen2", d, hidden_size=64, num_attention_heads=8, num_key_value_heads=8, intermediate_size=128)
    make_tokenizer(d)
    drafter = str(root / "drafter")
    make_hf_model("qwen2", drafter, seed=2, hidden_size=64, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=128, num_hidden_layers=2)
    return d, convert(d, str(root / "ckpt")), viasd_jax.load(drafter)


def test_needs_eight_devices():
    assert len(jax.devices()) >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (conftest sets it)"


def mode_options(drafter):
    return (dict(mode="ar"), dict(drafter=drafter, route=[0, 3], lossless=True, gamma=3),
            dict(drafter=drafter, route=[0, 3], tau_accept=0.6, tau_slim=0.4, gamma=3),
            dict(drafter="lookup", route=[0, 2, 3], lossless=True))


@pytest.fixture(scope="module")
def one_device(wide):
    """Each mode's output on one device, computed once for all meshes."""
    _, ckpt, drafter = wide
    one = viasd_jax.load(ckpt)
    return [viasd_jax.generate(one, PROMPTS, max_new_tokens=16, **kw) for kw in mode_options(drafter)]


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_same_tokens_as_one_device(wide, one_device, shape):
    _, ckpt, drafter = wide
    mesh = SH.make_mesh(*shape)
    sharded = viasd_jax.load(ckpt, mesh=mesh)
    for kw, ref in zip(mode_options(drafter), one_device):
        got = viasd_jax.generate(sharded, PROMPTS, max_new_tokens=16, mesh=mesh, **kw)
        assert got.tokens == ref.tokens, kw
        assert got.stats["drafted"] == ref.stats["drafted"]


def test_params_restore_straight_into_the_layout(wide):
    _, ckpt, _ = wide
    mesh = SH.make_mesh(2, 4)
    m = viasd_jax.load(ckpt, mesh=mesh)
    assert spec(m.params.layers.wq) == (None, None, "model")
    assert spec(m.params.layers.wk) == (None, None, "model")
    assert spec(m.params.layers.w_down) == (None, "model")
    assert spec(m.params.lm_head) == (None, "model")
    assert spec(m.params.embed) == ("model",)
    shard = m.params.layers.w_up.addressable_shards[0].data
    assert shard.shape == (4, 64, 128 // 4)  # each device holds a quarter of the MLP


def test_loop_state_is_sharded_as_declared(wide):
    _, ckpt, drafter = wide
    mesh = SH.make_mesh(2, 4)
    m = viasd_jax.load(ckpt, mesh=mesh)
    prep = prepare(m, PROMPTS, drafter=drafter, route=[0, 3], lossless=True, gamma=3, max_new_tokens=8, mesh=mesh)
    compiled = D.generate_loop.lower(prep.params, prep.state, config=prep.config,
                                     prefill_width=prep.prefill_width).compile()
    out = compiled(prep.params, prep.state)
    assert spec(out.cache.k) == (None, "data", "model")
    assert spec(out.draft_cache.k) == (None, "data", "model")
    assert spec(out.tokens) == ("data",) and spec(out.origin) == ("data",)
    assert spec(out.pending_logp) == ("data", None, "model")
    assert spec(out.n) == ("data",) and spec(out.key) == ("data",)
    assert all(spec(c) == ("data",) for c in out.counters.values())
    shard = out.cache.k.addressable_shards[0].data
    assert shard.shape[1] == out.cache.k.shape[1] // 2 and shard.shape[2] == out.cache.k.shape[2] // 4


def test_memory_per_device_scales_with_model_axis(wide):
    _, ckpt, _ = wide
    sizes = {}
    for m_axis in (1, 2, 4, 8):
        mesh = SH.make_mesh(1, m_axis)
        model = viasd_jax.load(ckpt, mesh=mesh)
        prep = prepare(model, PROMPTS[:1], max_new_tokens=8, mesh=mesh)
        analysis = D.generate_loop.lower(prep.params, prep.state, config=prep.config,
                                         prefill_width=prep.prefill_width).compile().memory_analysis()
        sizes[m_axis] = analysis.argument_size_in_bytes
    # params and caches dominate the arguments: each doubling of the model axis halves them (roughly)
    for a, b in ((1, 2), (2, 4), (4, 8)):
        assert sizes[b] < 0.65 * sizes[a], sizes


def test_mesh_that_does_not_divide_the_model(tiny, hf_dirs):
    mesh = SH.make_mesh(1, 4)  # the tiny qwen2 has 2 KV heads
    with pytest.raises(ValueError, match=r"does not divide the model's KV heads \(num_kv_heads\) = 2; use a model axis of 1 or 2"):
        viasd_jax.load(hf_dirs["qwen2"], mesh=mesh)
    with pytest.raises(ValueError, match="KV heads"):
        viasd_jax.generate(tiny["qwen2"], [[5, 6]], mesh=mesh)
    with pytest.raises(ValueError, match="needs 16 devices"):
        SH.make_mesh(4, 4)
