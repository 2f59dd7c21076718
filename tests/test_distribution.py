"""Sampling: the lossless modes reproduce the target's distribution (chi-square tests).

A tiny model with a 6-token vocabulary generates 3 tokens for one prompt, 8192
times (one row per seed, in one batch). The exact target distribution over all
6^3 continuations comes from `score`. Each test has a false-alarm rate of 1e-3;
seeds are fixed, so the outcome is deterministic.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

import viasd_jax
from hf_models import make_hf_model
from viasd_jax.sampling import SamplingParams, log_probs

ALPHA = 1e-3
VOCAB, STEPS, SAMPLES = 6, 3, 8192
PROMPT = [1, 3, 4]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("v6") / "m")
    make_hf_model("qwen2", d, vocab_size=VOCAB, seed=3)
    return dataclasses.replace(viasd_jax.load(d), eos_ids=())  # no EOS: every row makes 3 tokens


@pytest.fixture(scope="module")
def small_drafter(small):
    leaves, tree = jax.tree.flatten(small.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return dataclasses.replace(small, params=jax.tree.unflatten(
        tree, [x * (1 + 0.3 * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]))


def exact(model, sp_kwargs, prompt=PROMPT):
    """Probability of every continuation (row-major over VOCAB**STEPS)."""
    seqs = np.array(list(itertools.product(range(VOCAB), repeat=STEPS)))
    full = np.concatenate([np.tile(prompt, (len(seqs), 1)), seqs], axis=1)
    logits = viasd_jax.score(model, full)[:, len(prompt) - 1:-1]
    logp = np.asarray(log_probs(logits, SamplingParams.make(**sp_kwargs)))
    return np.exp(np.take_along_axis(logp, seqs[:, :, None], axis=2)[..., 0].sum(axis=1))


def counts(model, sp_kwargs, prompt=PROMPT, **kw):
    res = viasd_jax.generate(model, [prompt] * SAMPLES, seed=list(range(SAMPLES)), max_new_tokens=STEPS,
                             **sp_kwargs, **kw)
    idx = [np.ravel_multi_index(t, (VOCAB,) * STEPS) for t in res.tokens]
    return np.bincount(idx, minlength=VOCAB ** STEPS), res.stats


def p_value(observed, probs):
    """Chi-square goodness of fit, cells with expected count < 5 pooled."""
    expected = probs * observed.sum()
    small_cells = expected < 5
    obs = np.append(observed[~small_cells], observed[small_cells].sum())
    exp = np.append(expected[~small_cells], expected[small_cells].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


SAMPLING = [dict(temperature=1.0), dict(temperature=0.7, top_k=4, top_p=0.9)]


@pytest.mark.parametrize("sp", SAMPLING, ids=["t1", "t0.7-k4-p0.9"])
@pytest.mark.parametrize("setup", ["ar", "sd-model", "sd-lookup", "sd-self", "sd-adaptive-mixed", "sd-narrow-head",
                                   "via-lossless", "via-lossless-lookup"])
def test_matches_target_distribution(small, small_drafter, sp, setup):
    kw = {
        "ar": dict(mode="ar"),
        "sd-model": dict(mode="sd", drafter=small_drafter, gamma=2),
        "sd-lookup": dict(mode="sd", drafter="lookup", gamma=2, ngram=1),
        "sd-self": dict(mode="sd", drafter="self", self_route=[0], gamma=2),
        "sd-adaptive-mixed": dict(mode="sd", drafter=small_drafter, gamma=3, draft_stop=0.5, mix_lookup=2, ngram=1),
        "sd-narrow-head": dict(mode="sd", drafter=small_drafter, gamma=2, draft_vocab=4),
        "via-lossless": dict(drafter=small_drafter, route=[0, 3], lossless=True, gamma=2, tau_accept=0.5,
                             tau_slim=0.2, pending_bound=2),
        "via-lossless-lookup": dict(drafter="lookup", ngram=1, route=[0, 3], lossless=True, gamma=2,
                                    tau_accept=0.4, tau_slim=0.1, pending_bound=3),
    }[setup]
    observed, stats = counts(small, sp, **kw)
    assert p_value(observed, exact(small, sp)) > ALPHA
    if setup != "ar":
        assert stats["drafted"] > 0 and stats["tier_c"] + stats["tier_a"] + stats["tier_b"] > 0


def test_a_windowed_drafter_matches_target_distribution(small, small_drafter):
    """draft_context: a drafter that sees only part of a longer prompt still yields the
    target's distribution (its drafts are proposals like any other)."""
    sp, prompt = dict(temperature=1.0), [1, 3, 4, 2, 5, 0, 1, 3, 2]  # 8 prefilled: 4 sinks, 1 of the tail
    observed, stats = counts(small, sp, prompt, drafter=small_drafter, mode="sd", gamma=2, draft_context=1)
    assert p_value(observed, exact(small, sp, prompt)) > ALPHA
    assert stats["tier_c"] > 0


def test_the_test_has_power(small, small_drafter):
    """The drafter alone, or lossy tiers, are detectably different from the target."""
    sp = dict(temperature=1.0)
    observed, _ = counts(small_drafter, sp, mode="ar")
    assert p_value(observed, exact(small, sp)) < ALPHA
    lossy, stats = counts(small, sp, drafter=small_drafter, route=[0], gamma=2, tau_accept=0.0, tau_slim=0.0)
    assert stats["tier_c"] == 0
    assert p_value(lossy, exact(small, sp)) < ALPHA
