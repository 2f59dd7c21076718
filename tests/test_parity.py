"""Our forward against Hugging Face, for every supported family (float32)."""

import numpy as np
import pytest
import torch

import viasd_jax
from hf_models import FAMILIES


def _tokens(seed, shape):
    return np.random.RandomState(seed).randint(3, 96, size=shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hf(family, tiny, hf_models):
    toks = _tokens(0, (2, 24))  # longer than the sliding windows of mistral/gemma2
    ours = np.asarray(viasd_jax.score(tiny[family], toks))
    with torch.no_grad():
        ref = hf_models[family](torch.tensor(toks)).logits.numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_hf_generate(family, tiny, hf_models):
    prompts = [_tokens(1, 5).tolist(), _tokens(2, 9).tolist()]
    result = viasd_jax.generate(tiny[family], prompts, max_new_tokens=20, stop=[])
    for prompt, ours in zip(prompts, result.tokens):
        with torch.no_grad():
            out = hf_models[family].generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                             eos_token_id=2, pad_token_id=0)
        ref = out[0, len(prompt):].tolist()
        assert ours == ref
        assert len(ours) >= 16 or ours[-1] == 2


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_window_is_applied(family, tiny):
    """Without its window the model must give different logits on long inputs."""
    import dataclasses

    m = tiny[family]
    no_window = dataclasses.replace(m, config=dataclasses.replace(m.config, layer_windows=(0,) * m.config.num_layers))
    toks = _tokens(3, (1, 24))
    a, b = np.asarray(viasd_jax.score(m, toks)), np.asarray(viasd_jax.score(no_window, toks))
    window = max(m.config.layer_windows)
    np.testing.assert_allclose(a[:, :window], b[:, :window], atol=1e-5)
    assert np.abs(a[:, window + 1:] - b[:, window + 1:]).max() > 1e-2


def test_route_changes_logits_and_all_layers_is_full(qwen):
    toks = _tokens(4, (1, 10))
    full = np.asarray(viasd_jax.score(qwen, toks))
    np.testing.assert_array_equal(full, np.asarray(viasd_jax.score(qwen, toks, route=[0, 1, 2, 3])))
    slim = np.asarray(viasd_jax.score(qwen, toks, route=[0, 3]))
    assert np.abs(full - slim).max() > 1e-2
