"""Property tests (hypothesis) of the verification step on random distributions."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from viasd_jax.verify import tiers, verify_chain

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def cases(draw):
    b = draw(st.integers(1, 3))
    g = draw(st.integers(1, 4))
    v = draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    sharp = draw(st.sampled_from([0.3, 1.0, 4.0]))

    def dist(*shape):
        x = rng.standard_normal(shape + (v,)) * sharp
        x[rng.random(shape + (v,)) < 0.15] = -np.inf  # some impossible tokens
        x[..., 0] = np.where(np.isinf(x).all(-1), 0.0, x[..., 0])
        return np.asarray(jax.nn.log_softmax(jnp.asarray(x), -1))

    draft_logp = dist(b, g)
    drafts = np.stack([[rng.choice(v, p=np.exp(draft_logp[i, j])) for j in range(g)] for i in range(b)])
    return dict(
        b=b, g=g, v=v, seed=seed, drafts=drafts.astype(np.int32), draft_logp=draft_logp, slim_logp=dist(b, g + 1),
        target_logp=dist(b, g + 1), n_draft=rng.integers(0, g + 1, b).astype(np.int32),
        tau_a=draw(st.floats(0, 1)), tau_s=draw(st.floats(0, 1)), greedy=draw(st.booleans()))


@SETTINGS
@given(cases())
def test_tier_invariants(c):
    tr = tiers(jax.random.split(jax.random.key(c["seed"]), c["b"]), jnp.asarray(c["drafts"]),
               jnp.asarray(c["draft_logp"]), jnp.asarray(c["slim_logp"]), jnp.asarray(c["n_draft"]), c["tau_a"],
               c["tau_s"], jnp.asarray(c["greedy"]), with_effective=True)
    settled, n_draft = np.asarray(tr.settled), c["n_draft"]
    assert (settled <= n_draft).all() and (settled >= 0).all()
    np.testing.assert_array_equal(np.asarray(tr.tier_a) + np.asarray(tr.tier_b), settled)
    stopped = settled < n_draft
    np.testing.assert_array_equal(np.asarray(tr.escalate) | np.asarray(tr.corrected), stopped)
    assert not (np.asarray(tr.escalate) & np.asarray(tr.corrected)).any()
    assert not (np.asarray(tr.bonus_ok) & stopped).any()
    for tok in (tr.correction, tr.bonus):
        assert ((np.asarray(tok) >= 0) & (np.asarray(tok) < c["v"])).all()
    slim = np.exp(c["slim_logp"])
    for i in range(c["b"]):
        if np.asarray(tr.corrected)[i]:
            assert slim[i, settled[i]].max() >= c["tau_s"]  # only a confident slim verifier corrects
            assert slim[i, settled[i], np.asarray(tr.correction)[i]] > 0
        if np.asarray(tr.escalate)[i]:
            assert slim[i, settled[i]].max() < c["tau_s"]
        if c["greedy"]:  # greedy settles only slim-argmax drafts and corrects to the argmax
            for j in range(settled[i]):
                assert slim[i, j, c["drafts"][i, j]] == slim[i, j].max()
            if np.asarray(tr.corrected)[i]:
                assert np.asarray(tr.correction)[i] == slim[i, settled[i]].argmax()
    eff = np.exp(np.asarray(tr.effective))
    np.testing.assert_allclose(eff.sum(-1), 1.0, atol=1e-5)


@SETTINGS
@given(cases())
def test_chain_invariants(c):
    b, g = c["b"], c["g"]
    chain, chain_len = jnp.asarray(c["drafts"]), jnp.asarray(c["n_draft"])
    acc, nxt = verify_chain(jax.random.split(jax.random.key(c["seed"]), b), chain, chain_len,
                            jnp.asarray(c["target_logp"]), jnp.asarray(c["draft_logp"]), jnp.asarray(c["greedy"]))
    acc, nxt = np.asarray(acc), np.asarray(nxt)
    q = np.exp(c["target_logp"])
    assert ((acc >= 0) & (acc <= c["n_draft"])).all()
    assert ((nxt >= 0) & (nxt < c["v"])).all()
    for i in range(b):
        assert q[i, acc[i], nxt[i]] > 0  # the next token is possible under the target
        if c["greedy"]:
            for j in range(acc[i]):  # the accepted prefix is the target's argmax chain
                assert c["drafts"][i, j] == q[i, j].argmax()
            assert nxt[i] == q[i, acc[i]].argmax()
        else:
            for j in range(acc[i]):
                assert q[i, j, c["drafts"][i, j]] > 0
            if acc[i] < c["n_draft"][i]:  # a rejected position never repeats a token q/r forbids
                r = np.exp(c["draft_logp"][i, acc[i]])
                assert q[i, acc[i], nxt[i]] > r[nxt[i]] or np.isclose(np.maximum(q[i, acc[i]] - r, 0).sum(), 0)


@settings(max_examples=12, deadline=None)
@given(st.integers(2, 6), st.integers(0, 10_000))
def test_sampled_acceptance_and_residual_follow_the_formulas(v, seed):
    """P(accept y) = min(1, q(y)/r(y)); on rejection the token follows norm(max(0, q - r))."""
    rng = np.random.default_rng(seed)
    q, r = rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(v))
    y = int(rng.choice(v, p=r))
    n = 6000
    qs = jnp.broadcast_to(jnp.log(jnp.asarray([q, q], jnp.float32)), (n, 2, v))
    rs = jnp.broadcast_to(jnp.log(jnp.asarray([r], jnp.float32)), (n, 1, v))
    acc, nxt = verify_chain(jax.random.split(jax.random.key(seed), n), jnp.full((n, 1), y, jnp.int32),
                            jnp.ones(n, jnp.int32), qs, rs, jnp.asarray(False))
    acc, nxt = np.asarray(acc), np.asarray(nxt)
    p_acc = min(1.0, q[y] / r[y])
    assert abs(acc.mean() - p_acc) < 4 * np.sqrt(p_acc * (1 - p_acc) / n) + 1e-3
    if (acc == 0).sum() > 500:
        res = np.maximum(q - r, 0)
        res /= res.sum()
        freq = np.bincount(nxt[acc == 0], minlength=v) / (acc == 0).sum()
        assert np.abs(freq - res).max() < 0.05


def test_attention_gives_a_query_row_the_same_bits_in_any_window():
    """A query's attention output is the same alone as in a window of T rows, jitted, at
    the 1.5B's sizes (2 KV heads of 6 queries, head 128, 512 cache slots): XLA's CPU dot
    sums in an order that depends on the row count (on an Intel Xeon T = 5 and 9 gave
    other last bits than T = 1), which let a verification window part from plain decoding.
    Prefill's batched attention (`rows_alone=False`) stays close to it."""
    import types

    import jax.numpy as jnp

    from viasd_jax import model as M

    cfg = types.SimpleNamespace(num_kv_heads=2, heads_per_kv=6, num_heads=12, query_scale=128 ** -0.5,
                                attn_softcap=0.0)
    rng = np.random.default_rng(0)
    slots = 512
    k, v = (rng.standard_normal((1, 2, slots, 128)).astype(np.float32) for _ in range(2))
    for rows_alone in (True, False):
        attend = jax.jit(lambda q, pos: M._attention(cfg, q, k, v, M.attention_mask(pos, slots, jnp.int32(0)),
                                                     rows_alone))
        for t in (2, 5, 9, 14):
            q = rng.standard_normal((1, t, 12, 128)).astype(np.float32)
            pos = np.arange(300, 300 + t)[None]
            window = np.asarray(attend(q, pos))
            alone = np.concatenate([np.asarray(attend(q[:, i:i + 1], pos[:, i:i + 1])) for i in range(t)], axis=1)
            if rows_alone:
                np.testing.assert_array_equal(window.view(np.uint32), alone.view(np.uint32))
            else:
                np.testing.assert_allclose(window, alone, rtol=1e-5, atol=1e-6)


def test_rms_norm_gives_a_row_the_same_bits_in_any_batch():
    """A row's norm is the same alone as among 6 rows, jitted, at the real models' hidden
    sizes: XLA's own reduce vectorizes by the row count and did not (896, 1536), which let
    a verification window score a token a last bit apart from plain decoding."""
    import types

    from viasd_jax import model as M

    cfg = types.SimpleNamespace(rms_norm_eps=1e-6, norm_offset=0.0)
    norm = jax.jit(lambda x, w: M.rms_norm(x, w, cfg))
    rng = np.random.default_rng(0)
    for d in (256, 896, 1536, 1000):
        x = (rng.standard_normal((1, 6, d)) * 3).astype(np.float32)
        w = rng.standard_normal(d).astype(np.float32)
        together = np.asarray(norm(x, w))
        alone = np.concatenate([np.asarray(norm(x[:, i:i + 1], w)) for i in range(6)], axis=1)
        np.testing.assert_array_equal(together.view(np.uint32), alone.view(np.uint32))
        want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * w
        np.testing.assert_allclose(together, want, rtol=1e-5, atol=1e-5)
