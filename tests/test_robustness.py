"""Edge cases across the speculative modes, long runs near the cache limit, determinism.

Reference for greedy: plain decoding (itself checked against Hugging Face and against
the uncached forward elsewhere). Every lossless mode must reproduce it exactly.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import viasd_jax
from viasd_jax import decode as D
from viasd_jax.generate import prepare
from viasd_jax.prompts import bucket

PROMPT = [5, 17, 33, 8, 9]


@pytest.fixture(scope="module")
def target(tiny):
    return tiny["qwen2"]


@pytest.fixture(scope="module")
def lossless_modes(tiny):
    """(name, generate options) for every mode that must equal plain greedy decoding."""
    return [
        ("sd-model", dict(mode="sd", drafter=tiny["llama"], gamma=4)),
        ("sd-lookup", dict(mode="sd", drafter="lookup", gamma=3)),
        ("sd-self", dict(mode="sd", drafter="self", gamma=2)),
        ("via-lossless", dict(mode="via", drafter=tiny["llama"], route=[0, 2], lossless=True, gamma=4)),
        ("via-lossless-self", dict(mode="via", drafter="self", route=[0, 1, 3], lossless=True, gamma=3)),
    ]


def _ar(target, prompt=PROMPT, n=20, **kw):
    return viasd_jax.generate(target, [prompt], max_new_tokens=n, **kw).tokens[0]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_budgets_in_every_mode(target, lossless_modes, n):
    want = _ar(target, n=n)
    assert len(want) == n
    for name, kw in lossless_modes:
        assert _ar(target, n=n, **kw) == want, name


def test_stop_sequence_straddling_rounds(target, lossless_modes):
    """Two-token stop sequences ending at every position 1..12: each ends where plain
    decoding ends, whatever the round boundaries of the speculative mode."""
    full = _ar(target, n=16, stop=[])
    for end in range(1, 13):
        seq = full[end - 1 : end + 1]
        want = _ar(target, n=16, stop=[seq])
        assert want[-2:] == seq or len(want) == 16
        for name, kw in lossless_modes:
            assert _ar(target, n=16, stop=[seq], **kw) == want, (name, end)


def test_first_token_is_a_stop(target, lossless_modes):
    first = _ar(target, n=1)[0]
    for name, kw in [("ar", {})] + lossless_modes:
        assert _ar(target, n=10, stop=[first], **kw) == [first], name


@pytest.mark.parametrize("length", [bucket(1), bucket(1) + 1, bucket(33) - 1, bucket(33)])
def test_prompts_at_bucket_edges(target, lossless_modes, length):
    prompt = [int(x) for x in np.random.default_rng(length).integers(5, 90, length)]
    want = _ar(target, prompt, n=8)
    alone_logits = viasd_jax.score(target, [prompt + want[:-1]])  # uncached forward as the oracle
    assert np.argmax(alone_logits[0, length - 1 :], -1).tolist() == want
    for name, kw in lossless_modes:
        assert _ar(target, prompt, n=8, **kw) == want, name


def test_generation_up_to_the_last_usable_slot(target, lossless_modes):
    """A cache sized exactly to prompt + max_new_tokens + the engine's slack works; one
    token more is a clear error, not an overflow."""
    want = _ar(target, n=40)
    for name, kw in [("ar", {})] + lossless_modes:
        cfg = prepare(target, [PROMPT], max_new_tokens=40, **kw).config
        slack = cfg.full_width + cfg.gamma + 2
        exact = len(PROMPT) + 40 + slack
        assert _ar(target, n=40, max_len=exact, **kw) == want, name
        with pytest.raises(ValueError, match="overflows the cache"):
            _ar(target, n=41, max_len=exact, **kw)


def _finite(state, upto: int) -> bool:
    """No NaN/inf in any float leaf of the loop state (cache entries up to `upto`)."""
    ok = True
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            ok &= bool(jnp.all(jnp.isfinite(leaf[..., :upto, :] if leaf.ndim == 5 else leaf)))
    return ok


@pytest.mark.parametrize("kw", [dict(), dict(mode="via", drafter="self", route=[0, 3], lossless=True, gamma=1)],
                         ids=["ar", "via-lossless-self"])
def test_long_run_near_the_cache_limit(target, kw):
    """Two thousand tokens, one or two per round, into a cache sized exactly for them:
    equals plain decoding, and no NaN anywhere in the final state."""
    n = 2000
    target = dataclasses.replace(target, eos_ids=())  # nothing may end the run early
    want = _ar(target, n=n) if kw else None
    prep = prepare(target, [PROMPT], max_new_tokens=n, **kw)
    out = D.generate_loop(prep.params, prep.state, config=prep.config, prefill_width=prep.prefill_width)
    end = int(out.n[0])
    assert end == len(PROMPT) + n and end <= out.cache.k.shape[3]
    rounds = int(out.counters["rounds"][0])
    assert rounds >= (n if not kw else n // 3), rounds
    if want is not None:
        assert np.asarray(out.tokens[0, len(PROMPT) : end]).tolist() == want
    assert _finite(out, end)


def test_tiny_temperature_is_greedy(target, tiny):
    want = _ar(target)
    for kw in ({}, dict(mode="sd", drafter=tiny["llama"]), dict(mode="via", drafter="self", lossless=True)):
        assert _ar(target, temperature=1e-6, seed=3, **kw) == want, kw


@pytest.mark.parametrize("kw", [dict(), dict(mode="sd", drafter="lookup"),
                                dict(mode="via", drafter="self", tau_accept=0.5, tau_slim=0.4)],
                         ids=["ar", "sd-lookup", "via-lossy"])
def test_same_seed_same_tokens_across_runs_and_batches(target, kw):
    opts = dict(temperature=1.0, top_p=0.9, seed=11, max_new_tokens=16, **kw)
    alone = viasd_jax.generate(target, [PROMPT], **opts).tokens[0]
    assert viasd_jax.generate(target, [PROMPT], **opts).tokens[0] == alone
    others = [[7, 3, 44, 61, 12, 9, 10, 11, 50] * 4, [9], PROMPT]
    batch = viasd_jax.generate(target, others[:1] + [PROMPT] + others[1:], **opts).tokens
    assert batch[1] == alone and batch[3] == alone
    assert viasd_jax.generate(target, [PROMPT], **{**opts, "seed": 12}).tokens[0] != alone


def test_drafter_with_other_special_tokens_is_refused(target, tiny):
    other = dataclasses.replace(tiny["llama"], eos_ids=(7,))
    with pytest.raises(ValueError, match="drafter EOS ids"):
        viasd_jax.generate(target, [PROMPT], drafter=other)


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_prefill_equals_one_forward(target, tiny, chunk):
    """Prefill in chunks of `chunk` tokens writes the same target and drafter caches as
    one forward over the whole bucket, for ragged prompts (one shorter than a chunk), up
    to float32 rounding: the kernel sums a chunk of more than 9 rows along k and fewer as
    decoding does (another order; every mode prefills the same chunks, so exactness
    between modes does not rest on this)."""
    prompts = [list(range(3, 3 + 23)), [9, 4], list(range(40, 40 + 13))]
    prep = prepare(target, prompts, mode="sd", drafter=tiny["llama"], gamma=2, max_new_tokens=4)
    whole = D.prefill(prep.state, prep.params, prep.config, bucket(23))
    parts = D.prefill(prep.state, prep.params, prep.config, chunk)
    for got, want in ((parts.cache, whole.cache), (parts.draft_cache, whole.draft_cache)):
        np.testing.assert_array_equal(got.lengths, [22, 1, 12])
        np.testing.assert_allclose(got.k, want.k, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.v, want.v, rtol=1e-4, atol=1e-5)


def test_prompt_longer_than_the_prefill_chunk(target, lossless_modes, monkeypatch):
    """A prompt of several prefill chunks decodes as with a single chunk, in every lossless mode."""
    import sys

    prompt = [int(t) for t in np.random.default_rng(0).integers(3, target.config.vocab_size, 45)]
    want = _ar(target, prompt)
    monkeypatch.setattr(sys.modules["viasd_jax.generate"], "PREFILL_CHUNK", 8)
    assert _ar(target, prompt) == want
    for name, kw in lossless_modes:
        assert _ar(target, prompt, **kw) == want, name
