"""The VIA-SD engine on tiny models: lossless modes are exact, tiers behave, counters add up."""

import dataclasses
import sys

import jax
import numpy as np
import pytest

import viasd_jax
from viasd_jax.generate import compile_count

PROMPTS = [[5, 17, 33, 8, 9], [7, 3, 44, 61, 12, 9, 10, 11, 50], [20, 21, 22, 20, 21, 22, 20]]


@pytest.fixture(scope="module")
def target(tiny):
    return tiny["qwen2"]


@pytest.fixture(scope="module")
def near_drafter(target):
    """A perturbed copy of the target: agrees often, not always."""
    leaves, tree = jax.tree.flatten(target.params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [x * (1 + 0.15 * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]
    return dataclasses.replace(target, params=jax.tree.unflatten(tree, noisy))


@pytest.fixture(scope="module")
def far_drafter(tiny):
    """Another architecture with the same vocabulary (llama, 4 layers, tied head)."""
    return tiny["llama"]


def _ar(target, prompts=PROMPTS, n=24, **kw):
    return viasd_jax.generate(target, prompts, mode="ar", max_new_tokens=n, **kw).tokens


@pytest.mark.parametrize("which", ["near", "far", "self", "lookup"])
@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_sd_greedy_equals_ar(target, near_drafter, far_drafter, which, gamma):
    drafter = {"near": near_drafter, "far": far_drafter}.get(which, which)
    res = viasd_jax.generate(target, PROMPTS, drafter=drafter, mode="sd", gamma=gamma, max_new_tokens=24)
    assert res.tokens == _ar(target)
    s = res.stats
    assert s["drafted"] == s["tier_c"] + s["rejected"] and s["tier_a"] == s["tier_b"] == 0
    assert s["full_passes"] == s["rounds"] and s["slim_passes"] == 0


@pytest.mark.parametrize("kw", [dict(draft_stop=0.6), dict(mix_lookup=1), dict(mix_lookup=2, draft_stop=0.3)],
                         ids=["adaptive", "mixed", "both"])
def test_adaptive_and_mixed_drafting_are_lossless(target, near_drafter, kw):
    ar = _ar(target)
    sd = viasd_jax.generate(target, PROMPTS, drafter=near_drafter, mode="sd", gamma=4, max_new_tokens=24, **kw)
    assert sd.tokens == ar
    via = viasd_jax.generate(target, PROMPTS, drafter=near_drafter, route=[0, 3], lossless=True, gamma=4,
                             max_new_tokens=24, **kw)
    assert via.tokens == ar
    plain = viasd_jax.generate(target, PROMPTS, drafter=near_drafter, mode="sd", gamma=4, max_new_tokens=24)
    if "draft_stop" in kw:  # stopping early drafts fewer tokens
        assert sd.stats["drafted"] < plain.stats["drafted"]


@pytest.mark.parametrize("which", ["near", "far", "self"])
def test_a_narrow_drafter_head_is_lossless(target, near_drafter, far_drafter, which):
    """draft_vocab: drafts only from the first ids (the kernel reads only those rows of an
    untied head, a tied one, the target's own); the output is plain greedy's, and the
    drafter never proposes an id at or above the limit."""
    drafter = {"near": near_drafter, "far": far_drafter}.get(which, which)
    res = viasd_jax.generate(target, PROMPTS, drafter=drafter, mode="sd", gamma=4, max_new_tokens=24, draft_vocab=48)
    assert res.tokens == _ar(target)
    assert any(t >= 48 for toks in res.tokens for t in toks)  # the target does pick ids the drafter cannot
    for toks, origins in zip(res.tokens, res.origins):
        assert all(t < 48 for t, o in zip(toks, origins) if o == "tier_c"), (toks, origins)
    if which == "near":  # it agrees often enough that some drafts are accepted
        assert res.stats["tier_c"] > 0


LONG_PROMPTS = PROMPTS + [[30 + i % 17 for i in range(23)]]  # the last one is cut by a short drafter window


def _drafter_view_caches(target, drafter, prompts, max_new_tokens, **kw):
    """Run a whole generation; per row, the drafter's final cache (exact slots) and the
    token sequence it saw there (drafters.view of the final tokens)."""
    from viasd_jax import decode as D
    from viasd_jax import drafters as DR
    from viasd_jax.generate import prepare

    p = prepare(target, prompts, drafter=drafter, max_new_tokens=max_new_tokens, **kw)
    if max_new_tokens:
        out = D.generate_loop(p.params, p.state, config=p.config, prefill_width=p.prefill_width)
    else:
        out = D.prefill_program(p.params, p.state, config=D.prefill_config(p.config), width=p.prefill_width)
    skip = DR.skipped(p.config.drafter, out.prompt_len)
    seen, _ = DR.view(p.config.drafter, out.tokens, out.n, skip)
    lengths = np.asarray(out.draft_cache.lengths)
    return [(np.asarray(out.draft_cache.k[:, b, :, :lengths[b]]), np.asarray(seen[b, :lengths[b]]).tolist())
            for b in range(len(prompts))]


@pytest.mark.parametrize("which", ["near", "self"])
def test_a_windowed_drafter_is_lossless(target, near_drafter, which):
    """draft_context: the drafter sees the prompt's first SINK and last few tokens; the
    output is plain greedy's in sd and lossless via alike."""
    drafter = {"near": near_drafter}.get(which, which)
    ar = _ar(target, LONG_PROMPTS)
    sd = viasd_jax.generate(target, LONG_PROMPTS, drafter=drafter, mode="sd", gamma=4, max_new_tokens=24,
                            draft_context=2)
    assert sd.tokens == ar
    via = viasd_jax.generate(target, LONG_PROMPTS, drafter=drafter, route=[0, 3], lossless=True, gamma=3,
                             max_new_tokens=24, draft_context=2, mix_lookup=2)
    assert via.tokens == ar


@pytest.fixture
def float32_drafter_prefill(monkeypatch):
    """A model drafter prefilling on float32 products, its rounds' precision (programs
    traced before or under the patch are dropped)."""
    from viasd_jax import decode as D

    jax.clear_caches()
    monkeypatch.setattr(D, "_bf16_dot_products", lambda: False)
    yield
    monkeypatch.undo()
    jax.clear_caches()


@pytest.mark.parametrize("new_tokens", [0, 20], ids=["after-prefill", "after-rounds"])
def test_a_windowed_drafters_cache_is_its_view_of_the_sequence(target, near_drafter, new_tokens,
                                                               float32_drafter_prefill):
    """The drafter's cache holds exactly what a fresh drafter computes over the cut
    sequence (the first SINK tokens, then the tail), after prefill and after rounds of
    drafting, rollback and catch-up: positions count along the cut sequence."""
    from viasd_jax.drafters import SINK

    runs = _drafter_view_caches(target, near_drafter, LONG_PROMPTS, new_tokens, mode="sd", gamma=4,
                                draft_context=3)
    long_k, long_seen = runs[-1]
    prompt = LONG_PROMPTS[-1]
    assert long_seen[:SINK + 3] == prompt[:SINK] + prompt[-4:-1]  # prefill: the sinks, then the tail
    if new_tokens:
        assert len(long_seen) > SINK + 3  # the rounds fed it generated tokens too
    for k, seen in runs:
        fresh_k, fresh_seen = _drafter_view_caches(target, near_drafter, [seen + [0]], 0, mode="sd", gamma=4)[0]
        assert fresh_seen == seen
        np.testing.assert_allclose(k, fresh_k, rtol=1e-4, atol=1e-5)


def test_draft_context_is_checked(target, near_drafter):
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="draft_context must be a non-negative integer"):
            viasd_jax.generate(target, PROMPTS, drafter=near_drafter, mode="sd", draft_context=bad, max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt lookup has no model"):
        viasd_jax.generate(target, PROMPTS, drafter="lookup", mode="sd", draft_context=8, max_new_tokens=2)


def test_draft_vocab_is_checked(target, near_drafter):
    for bad in (0, 97, 2.5):
        with pytest.raises(ValueError, match="draft_vocab must be an integer in \\[1, 96\\]"):
            viasd_jax.generate(target, PROMPTS, drafter=near_drafter, mode="sd", draft_vocab=bad, max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt lookup has none"):
        viasd_jax.generate(target, PROMPTS, drafter="lookup", mode="sd", draft_vocab=10, max_new_tokens=2)


@pytest.mark.parametrize("which", ["near", "self"])
def test_bfloat16_prefill_keeps_sd_equal_to_ar(target, near_drafter, which):
    """prefill_dtype="bfloat16" rounds the prompt's products in every mode alike, so sd
    equals plain greedy under the same setting; the prompt's K/V are float32's up to
    bfloat16 rounding, and not the same bits (the option does something)."""
    from viasd_jax import decode as D
    from viasd_jax.generate import prepare

    drafter = {"near": near_drafter}.get(which, which)
    ar = _ar(target, prefill_dtype="bfloat16")
    res = viasd_jax.generate(target, PROMPTS, drafter=drafter, mode="sd", gamma=4, max_new_tokens=24,
                             prefill_dtype="bfloat16")
    assert res.tokens == ar
    caches = {}
    for dtype in D.PREFILL_DTYPES:
        p = prepare(target, PROMPTS, drafter=drafter, mode="sd", max_new_tokens=4, prefill_dtype=dtype)
        out = D.prefill_program(p.params, p.state, config=D.prefill_config(p.config), width=p.prefill_width)
        caches[dtype] = np.asarray(out.cache.k)
    f32, bf16 = caches["float32"], caches["bfloat16"]
    assert not np.array_equal(f32, bf16)
    np.testing.assert_allclose(bf16, f32, atol=0.05 * np.abs(f32).max())


def test_a_model_drafters_prefill_takes_bfloat16_products_where_the_cpu_has_them(target, near_drafter):
    """A model drafter's prompt only shapes proposals, so under the default float32
    prefill it still multiplies in bfloat16 where the CPU does that in hardware (its
    cache then differs from float32's by bfloat16 rounding), while the target's prefill
    stays float32 bit for bit."""
    from viasd_jax import decode as D
    from viasd_jax.cpu_matvec import bf16_dot_products
    from viasd_jax.generate import prepare

    def prefilled(model, **kw):
        p = prepare(model, PROMPTS, max_new_tokens=4, **kw)
        return D.prefill_program(p.params, p.state, config=D.prefill_config(p.config), width=p.prefill_width)

    sd = prefilled(target, drafter=near_drafter, mode="sd")
    np.testing.assert_array_equal(np.asarray(sd.cache.k), np.asarray(prefilled(target, mode="ar").cache.k))
    drafter_alone = np.asarray(prefilled(near_drafter, mode="ar").cache.k)  # float32 products
    drafter_k = np.asarray(sd.draft_cache.k)
    if bf16_dot_products():
        assert not np.array_equal(drafter_k, drafter_alone)
        np.testing.assert_allclose(drafter_k, drafter_alone, atol=0.05 * np.abs(drafter_alone).max())
    else:
        np.testing.assert_array_equal(drafter_k, drafter_alone)


def test_prefill_dtype_is_checked(target, hf_dirs):
    with pytest.raises(ValueError, match="prefill_dtype must be one of float32, bfloat16"):
        viasd_jax.generate(target, PROMPTS, prefill_dtype="float16", max_new_tokens=2)
    xla = viasd_jax.load(hf_dirs["qwen2"], layout="input-major")
    with pytest.raises(ValueError, match="needs the target in layout 'cpu-kernel'"):
        viasd_jax.generate(xla, PROMPTS, prefill_dtype="bfloat16", max_new_tokens=2)


@pytest.mark.parametrize("which", ["near", "self", "lookup"])
def test_via_with_all_layers_equals_ar(target, near_drafter, which):
    drafter = {"near": near_drafter}.get(which, which)
    for tau_a, tau_s in [(0.9, 0.6), (0.0, 0.0), (0.3, 0.9)]:
        res = viasd_jax.generate(target, PROMPTS, drafter=drafter, route=range(4), tau_accept=tau_a, tau_slim=tau_s,
                                 max_new_tokens=24)
        assert res.tokens == _ar(target), (tau_a, tau_s)


@pytest.mark.parametrize("route", [[0, 3], [0, 1, 3], [3]])
@pytest.mark.parametrize("which", ["near", "lookup"])
def test_via_lossless_equals_ar_for_any_route(target, near_drafter, route, which):
    drafter = {"near": near_drafter}.get(which, which)
    for tau_a, tau_s, bound in [(0.0, 0.0, 4), (0.5, 0.2, 1), (0.9, 0.6, 8)]:
        res = viasd_jax.generate(target, PROMPTS, drafter=drafter, route=route, lossless=True, tau_accept=tau_a,
                                 tau_slim=tau_s, pending_bound=bound, gamma=3, max_new_tokens=24)
        assert res.tokens == _ar(target), (tau_a, tau_s, bound)


def test_lossy_via_differs_and_tiers_settle_tokens(target, near_drafter):
    """With a poor route and permissive thresholds, cheap tiers settle everything."""
    res = viasd_jax.generate(target, PROMPTS, drafter=near_drafter, route=[0, 3], tau_accept=0.0, tau_slim=0.0,
                             gamma=3, max_new_tokens=24)
    s = res.stats
    assert s["tier_c"] == 0 and s["tier_a"] + s["tier_b"] > 0
    assert s["full_passes"] < s["rounds"]
    assert s["drafted"] == s["tier_a"] + s["tier_b"] + s["tier_c"] + s["rejected"]


def test_thresholds_of_one_give_sd(target, near_drafter):
    via = viasd_jax.generate(target, PROMPTS, drafter=near_drafter, route=[0, 3], tau_accept=1.0, tau_slim=1.0,
                             gamma=3, max_new_tokens=24)
    sd = viasd_jax.generate(target, PROMPTS, drafter=near_drafter, mode="sd", gamma=3, max_new_tokens=24)
    assert via.tokens == sd.tokens
    for key in ("drafted", "rejected", "tier_c", "rounds", "full_passes"):
        assert via.stats[key] == sd.stats[key], key
    assert via.stats["tier_a"] == via.stats["tier_b"] == 0 and via.stats["slim_passes"] == via.stats["rounds"]


def test_counters_add_up(target, near_drafter):
    for kw in (dict(mode="sd"), dict(route=[0, 3]), dict(route=[0, 3], lossless=True), dict(route=[0, 2, 3],
                                                                                               tau_slim=0.3)):
        res = viasd_jax.generate(target, PROMPTS, drafter=near_drafter, gamma=4, max_new_tokens=24, **kw)
        for row, toks in zip(res.row_stats, res.tokens):
            assert row["drafted"] == row["tier_a"] + row["tier_b"] + row["tier_c"] + row["rejected"]
            assert row["new_tokens"] == len(toks)
            assert row["full_passes"] <= row["rounds"] and row["drafted"] <= 4 * row["rounds"]


def test_batch_row_equals_alone(target, near_drafter):
    kw = dict(drafter=near_drafter, route=[0, 3], tau_accept=0.5, tau_slim=0.4, gamma=3, max_new_tokens=20)
    batch = viasd_jax.generate(target, PROMPTS, **kw)
    for p, got in zip(PROMPTS, batch.tokens):
        assert got == viasd_jax.generate(target, [p], **kw).tokens[0]
    sampled = viasd_jax.generate(target, PROMPTS, temperature=1.0, seed=5, **kw)
    assert sampled.tokens[1] == viasd_jax.generate(target, [PROMPTS[1]], temperature=1.0, seed=5, **kw).tokens[0]


def test_no_recompile_for_runtime_values(target, near_drafter):
    kw = dict(drafter=near_drafter, route=[0, 3], gamma=3)
    viasd_jax.generate(target, [[5, 6, 7]], max_new_tokens=8, **kw)
    before = compile_count()
    viasd_jax.generate(target, [[5, 6, 7, 8, 9, 10]], max_new_tokens=12, tau_accept=0.2, tau_slim=0.1, **kw)
    viasd_jax.generate(target, [[5, 6, 7]], max_new_tokens=8, temperature=0.8, top_p=0.9, seed=11, **kw)
    viasd_jax.generate(target, [[9, 6, 7, 1]], max_new_tokens=8, route=[0, 1, 3], drafter=near_drafter, gamma=3)
    assert compile_count() == before


def test_rows_finish_independently(tiny):
    m = tiny["mistral"]  # emits EOS (2) early on some prompts
    prompts = [[11, 15, 44, 61], [5, 17, 33, 8, 9], [3, 3, 3]]
    ar = viasd_jax.generate(m, prompts, max_new_tokens=30).tokens
    for kw in (dict(mode="sd"), dict(lossless=True, route=[0, 2, 3])):
        assert viasd_jax.generate(m, prompts, drafter="lookup", max_new_tokens=30, **kw).tokens == ar


def test_drafter_errors(target, tiny):
    small_vocab = dataclasses.replace(tiny["llama"], config=dataclasses.replace(tiny["llama"].config, vocab_size=50))
    with pytest.raises(ValueError, match="drafter vocab size 50 differs from the target's 96"):
        viasd_jax.generate(target, [[5, 6]], drafter=small_vocab)
    with pytest.raises(ValueError, match="drafter must be"):
        viasd_jax.generate(target, [[5, 6]], drafter="nonsense")
    with pytest.raises(ValueError, match="needs a drafter"):
        viasd_jax.generate(target, [[5, 6]], mode="via")
    with pytest.raises(ValueError, match="gamma must be"):
        viasd_jax.generate(target, [[5, 6]], drafter="lookup", gamma=0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="tau_slim must be in"):
            viasd_jax.generate(target, [[5, 6]], drafter="lookup", tau_slim=bad)
    with pytest.raises(ValueError, match="lossless=True applies to mode 'via' only"):
        viasd_jax.generate(target, [[5, 6]], drafter="lookup", mode="sd", lossless=True)


WIDTH_CASES = [
    dict(mode="sd", drafter="lookup", gamma=5),
    dict(mode="sd", drafter="near", gamma=4, draft_stop=0.6),
    dict(mode="via", drafter="near", gamma=3, route=[0, 3], tau_accept=0.5, tau_slim=0.4),
    dict(mode="via", drafter="lookup", gamma=4, route=[0, 3], lossless=True),
]


@pytest.mark.parametrize("case,temperature", [(WIDTH_CASES[0], 1.0), (WIDTH_CASES[1], 0.0), (WIDTH_CASES[2], 0.0),
                                              (WIDTH_CASES[3], 1.0)],
                         ids=["sd-lookup-sampled", "sd-adaptive", "via", "via-lossless-lookup-sampled"])
def test_verify_widths_change_no_tokens(target, near_drafter, case, temperature):
    """Running a round's passes in a narrower window is a pure speed choice: the same
    tokens, greedy or sampled, with every ladder (none, the default, every width)."""
    kw = {**case, "drafter": near_drafter if case["drafter"] == "near" else case["drafter"]}
    full_width = 1 + kw["gamma"] if kw["mode"] == "sd" else 3 * kw["gamma"] + 2
    runs = [viasd_jax.generate(target, PROMPTS, max_new_tokens=16, temperature=temperature, seed=3,
                               verify_widths=widths, **kw).tokens
            for widths in ((), None, list(range(1, full_width)))]
    assert runs[0] == runs[1] == runs[2]


def test_default_verify_widths_are_compiled(target, monkeypatch):
    """The default ladder really traces the narrow passes: width 1 for lookup, gamma + 2 in via."""
    from viasd_jax import decode as D

    monkeypatch.setattr(sys.modules["viasd_jax.generate"], "_COMPILED", {})  # trace afresh
    jax.clear_caches()
    seen, forward = set(), D.M.forward
    monkeypatch.setattr(D.M, "forward", lambda params, cfg, tokens, *a, **k: (seen.add(tokens.shape[1]),
                                                                              forward(params, cfg, tokens, *a, **k))[1])
    viasd_jax.generate(target, [[5, 6, 7, 8]], drafter="lookup", gamma=3, max_new_tokens=4)
    assert {1, 5, 10, 11} <= seen  # slim and full: 1 and gamma+2 (and one less), the full windows 3*3+2 and 10


def test_narrowest_width_is_chosen():
    import jax.numpy as jnp

    from viasd_jax.decode import _narrowest

    for window, want in [(0, 1), (1, 1), (2, 5), (5, 5), (6, 9), (9, 9)]:
        assert int(_narrowest((1, 5, 9), jnp.int32(window), lambda w: lambda x: x + w, jnp.int32(0))) == want


def test_verify_widths_errors(target):
    from viasd_jax.generate import parse_widths

    for bad in ([0], [6], "1,6", ["a"]):  # out of range, text (ambiguous: "16"?), not integers
        with pytest.raises(ValueError, match="verify_widths must be"):
            viasd_jax.generate(target, [[5, 6]], drafter="lookup", mode="sd", gamma=5, verify_widths=bad)
    assert parse_widths("1,6") == parse_widths("1+6") == (1, 6) and parse_widths("none") == ()
    with pytest.raises(ValueError, match="verify_widths must be"):
        parse_widths("1;6")


def test_prompt_lookup_matches_and_min_ngram():
    import jax.numpy as jnp

    from viasd_jax.drafters import propose_lookup

    #          0  1  2  3  4  5  6  7  8  9
    tokens = [[4, 5, 6, 7, 9, 5, 8, 1, 2, 5],   # "5" recurs alone: only a 1-gram match
              [4, 5, 6, 7, 9, 4, 5, 1, 4, 5]]   # "4 5" recurs: a 2-gram match (latest at 5)
    tokens = jnp.asarray(tokens, jnp.int32)
    n = jnp.asarray([10, 10])
    drafts, _, count = propose_lookup(tokens, n, 3, 3, 16)
    assert count.tolist() == [3, 3]
    assert drafts[0].tolist() == [8, 1, 2] and drafts[1].tolist() == [1, 4, 5]
    drafts, _, count = propose_lookup(tokens, n, 3, 3, 16, min_ngram=2)
    assert count.tolist() == [0, 3] and drafts[1].tolist() == [1, 4, 5]


def test_min_ngram_lookup_is_lossless_and_checked(target):
    kw = dict(mode="sd", drafter="lookup", gamma=4, max_new_tokens=20)
    assert viasd_jax.generate(target, PROMPTS, min_ngram=2, **kw).tokens == _ar(target, n=20)
    with pytest.raises(ValueError, match="min_ngram must be in"):
        viasd_jax.generate(target, PROMPTS, min_ngram=4, **kw)
