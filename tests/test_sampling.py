"""Temperature / top-k / top-p against Hugging Face's logits processors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from viasd_jax.sampling import SamplingParams, log_probs, pick


def _hf_probs(logits, temperature, top_k, top_p):
    x = torch.tensor(logits)
    if temperature > 0:
        x = TemperatureLogitsWarper(temperature)(None, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p < 1:
        x = TopPLogitsWarper(top_p)(None, x)
    return torch.softmax(x, -1).numpy()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (0.5, 10, 0.9), (2.0, 1, 1.0), (1.0, 0, 0.05),
])
def test_matches_hf_processors(temperature, top_k, top_p):
    logits = np.random.RandomState(0).randn(6, 50).astype(np.float32) * 3
    ours = np.exp(np.asarray(log_probs(jnp.asarray(logits), SamplingParams.make(temperature, top_k, top_p))))
    np.testing.assert_allclose(ours, _hf_probs(logits, temperature, top_k, top_p), atol=1e-6)


def test_hand_computed_top_p():
    # probs 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two (0.5 < 0.7 <= 0.8)
    logits = jnp.log(jnp.asarray([[0.15, 0.5, 0.05, 0.3]]))
    p = np.exp(np.asarray(log_probs(logits, SamplingParams.make(1.0, 0, 0.7))))
    np.testing.assert_allclose(p, [[0, 0.5 / 0.8, 0, 0.3 / 0.8]], atol=1e-6)


def test_neg_inf_logits_are_fine():
    logits = jnp.asarray([[-jnp.inf, 1.0, 2.0, -jnp.inf]])
    for sp in (SamplingParams.make(0.0), SamplingParams.make(1.0, 1), SamplingParams.make(0.9, 0, 0.5)):
        lp = log_probs(logits, sp)
        assert not np.isnan(np.asarray(lp)).any()
        assert int(pick(jax.random.split(jax.random.key(0), 1), lp, sp)[0]) in (1, 2)


def test_greedy_pick_is_argmax_and_samples_follow_probs():
    logits = jnp.asarray(np.random.RandomState(1).randn(4, 30), jnp.float32)
    sp = SamplingParams.make(0.0)
    np.testing.assert_array_equal(pick(jax.random.split(jax.random.key(0), 4), log_probs(logits, sp), sp), np.argmax(logits, -1))
    sp = SamplingParams.make(1.0)
    lp = log_probs(jnp.log(jnp.asarray([[0.2, 0.8]])), sp)
    draws = pick(jax.random.split(jax.random.key(0), 4000), jnp.broadcast_to(lp, (4000, 2)), sp)
    assert abs(float(jnp.mean(draws)) - 0.8) < 0.03
