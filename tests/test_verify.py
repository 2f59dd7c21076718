"""Tier decisions and rejection sampling against hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np

from viasd_jax.verify import residual_sample, tiers, verify_chain

N = 20000


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _log(p):
    return jnp.log(jnp.asarray(p, jnp.float32))


def test_greedy_chain_accepts_prefix_then_corrects():
    q = np.full((1, 4, 5), 0.1, np.float32)
    for j, top in enumerate([2, 4, 1, 3]):
        q[0, j, top] = 0.6
    chain = jnp.asarray([[2, 4, 0]])
    acc, nxt = verify_chain(_keys(1), chain, jnp.asarray([3]), _log(q), None, jnp.asarray(True))
    assert int(acc[0]) == 2 and int(nxt[0]) == 1  # third token rejected: argmax of q[2]
    acc, nxt = verify_chain(_keys(1), chain, jnp.asarray([2]), _log(q), None, jnp.asarray(True))
    assert int(acc[0]) == 2 and int(nxt[0]) == 1  # both accepted: bonus from q[2]
    acc, nxt = verify_chain(_keys(1), chain, jnp.asarray([0]), _log(q), None, jnp.asarray(True))
    assert int(acc[0]) == 0 and int(nxt[0]) == 2  # empty chain: plain decoding step


def test_sampling_acceptance_and_residual_hand_case():
    # q = (.5, .3, .2), r = (.2, .6, .2): token 1 is accepted with prob .3/.6 = .5;
    # on rejection the residual norm(max(0, q - r)) = (1, 0, 0) gives token 0.
    q = jnp.broadcast_to(_log([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]), (N, 2, 3))
    r = jnp.broadcast_to(_log([[0.2, 0.6, 0.2]]), (N, 1, 3))
    acc, nxt = verify_chain(_keys(N), jnp.ones((N, 1), jnp.int32), jnp.ones(N, jnp.int32), q, r, jnp.asarray(False))
    acc, nxt = np.asarray(acc), np.asarray(nxt)
    assert abs(acc.mean() - 0.5) < 0.015
    assert (nxt[acc == 0] == 0).all()
    assert abs((nxt[acc == 1] == 2).mean() - 0.8) < 0.02  # bonus from q[1]


def test_one_step_sd_output_follows_target():
    q, r = np.array([0.1, 0.4, 0.2, 0.3]), np.array([0.4, 0.1, 0.4, 0.1])
    keys = _keys(N, 1)
    y = jax.vmap(lambda k: jax.random.categorical(k, _log(r)))(keys).astype(jnp.int32)
    qs = jnp.broadcast_to(_log([q, q]), (N, 2, 4))
    rs = jnp.broadcast_to(_log([r]), (N, 1, 4))
    acc, nxt = verify_chain(_keys(N, 2), y[:, None], jnp.ones(N, jnp.int32), qs, rs, jnp.asarray(False))
    out = np.where(np.asarray(acc) == 1, np.asarray(y), np.asarray(nxt))
    np.testing.assert_allclose(np.bincount(out, minlength=4) / N, q, atol=0.015)


def test_residual_sample_distribution():
    got = residual_sample(_keys(N), jnp.broadcast_to(_log([0.5, 0.3, 0.2]), (N, 3)),
                          jnp.broadcast_to(_log([0.1, 0.6, 0.3]), (N, 3)))
    np.testing.assert_allclose(np.bincount(np.asarray(got), minlength=3) / N, [1, 0, 0])
    same = residual_sample(_keys(8), _log([[0.5, 0.5]] * 8), _log([[0.5, 0.5]] * 8))
    assert set(np.asarray(same).tolist()) <= {0, 1}  # empty residual: falls back to the target


def _slim(rows):
    """Slim log-dists from {token: prob} dicts over a 6-token vocab (rest spread evenly)."""
    out = np.zeros((len(rows), 6), np.float32)
    for i, row in enumerate(rows):
        rest = (1 - sum(row.values())) / (6 - len(row))
        out[i] = rest
        for t, p in row.items():
            out[i, t] = p
    return jnp.log(jnp.asarray(out))[None]


def test_greedy_tiers_hand_case():
    drafts = jnp.asarray([[1, 2, 3]])
    draft_logp = jnp.log(jnp.full((1, 3, 6), 1 / 6))
    slim = _slim([{1: 0.95}, {2: 0.7}, {4: 0.7, 3: 0.2}, {5: 0.9}])
    tr = tiers(_keys(1), drafts, draft_logp, slim, jnp.asarray([3]), 0.9, 0.6, jnp.asarray(True))
    # draft 1: A (0.95 >= 0.9, argmax); draft 2: B keeps it (argmax, c=.7 >= .6);
    # draft 3: B rejects it (argmax is 4): the correction is 4 and the round ends.
    assert (int(tr.settled[0]), int(tr.tier_a[0]), int(tr.tier_b[0])) == (2, 1, 1)
    assert bool(tr.corrected[0]) and not bool(tr.escalate[0]) and int(tr.correction[0]) == 4
    slim = _slim([{1: 0.95}, {2: 0.5}, {3: 0.9}, {5: 0.9}])
    tr = tiers(_keys(1), drafts, draft_logp, slim, jnp.asarray([3]), 0.9, 0.6, jnp.asarray(True))
    assert int(tr.settled[0]) == 1 and bool(tr.escalate[0])  # draft 2: c = .5 < .6 -> tier C
    slim = _slim([{1: 0.95}, {2: 0.95}, {3: 0.95}, {5: 0.9}])
    tr = tiers(_keys(1), drafts, draft_logp, slim, jnp.asarray([3]), 0.9, 0.6, jnp.asarray(True))
    assert int(tr.settled[0]) == 3 and bool(tr.bonus_ok[0]) and int(tr.bonus[0]) == 5
    tr = tiers(_keys(1), drafts, draft_logp, slim, jnp.asarray([2]), 0.9, 0.6, jnp.asarray(True))
    assert int(tr.settled[0]) == 2 and int(tr.bonus[0]) == 3  # only 2 valid drafts: bonus after the second


def test_effective_distribution_matches_simulation():
    """The lossless re-check divides by r; r must be what tier A/B really emit."""
    p = np.array([0.3, 0.3, 0.2, 0.1, 0.05, 0.05])
    q = np.array([0.45, 0.1, 0.3, 0.05, 0.05, 0.05])
    keys = _keys(N, 3)
    d = jax.vmap(lambda k: jax.random.categorical(k, _log(p)))(keys).astype(jnp.int32)[:, None]
    slim = jnp.broadcast_to(_log([q, q]), (N, 2, 6))
    tr = tiers(_keys(N, 4), d, jnp.broadcast_to(_log([p]), (N, 1, 6)), slim, jnp.ones(N, jnp.int32),
               jnp.asarray(0.4), jnp.asarray(0.3), jnp.asarray(False), with_effective=True)
    out = np.where(np.asarray(tr.settled) == 1, np.asarray(d[:, 0]), np.asarray(tr.correction))
    assert not np.asarray(tr.escalate).any()  # c = .45 >= tau_slim: every token settles in A/B
    r = np.exp(np.asarray(tr.effective[0, 0]))
    np.testing.assert_allclose(r.sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.bincount(out, minlength=6) / N, r, atol=0.015)
