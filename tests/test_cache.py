"""KV cache: cached decoding equals the uncached forward; rows are independent."""

import jax.numpy as jnp
import numpy as np
import pytest

import viasd_jax
from viasd_jax import model as M
from viasd_jax.cache import init_cache, kv_dtype


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_cached_chunks_equal_uncached_forward(family, tiny):
    """Feeding a sequence in uneven chunks through the cache gives the one-shot logits."""
    m = tiny[family]
    toks = np.random.RandomState(0).randint(3, 96, size=(2, 19))
    full = np.asarray(viasd_jax.score(m, toks))
    cache = init_cache(m.config, 2, 32)
    got, start = [], 0
    for size in (7, 1, 3, 1, 5, 2):
        chunk = jnp.asarray(toks[:, start:start + size])
        pos = jnp.broadcast_to(jnp.arange(start, start + size), (2, size))
        h, cache = M.forward(m.params, m.config, chunk, pos, cache)
        got.append(np.asarray(M.logits(m.params, m.config, h)))
        start += size
    np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=1e-4)


def test_rows_write_at_their_own_offsets(qwen):
    """Two rows at different positions in one call, with padding, match each row alone."""
    m = qwen
    toks = np.random.RandomState(1).randint(3, 96, size=(2, 12))
    ref = [np.asarray(viasd_jax.score(m, toks[i:i + 1]))[0] for i in range(2)]
    cache = init_cache(m.config, 2, 16)
    # prefill row 0 with 5 tokens and row 1 with 8 (row 0 padded with -1 positions)
    pre = jnp.asarray(toks[:, :8])
    pos = jnp.asarray([[0, 1, 2, 3, 4, -1, -1, -1], list(range(8))])
    _, cache = M.forward(m.params, m.config, pre, pos, cache)
    # then 3 more tokens each, from each row's own offset
    nxt = jnp.asarray(np.stack([toks[0, 5:8], toks[1, 8:11]]))
    pos = jnp.asarray([[5, 6, 7], [8, 9, 10]])
    h, cache = M.forward(m.params, m.config, nxt, pos, cache)
    out = np.asarray(M.logits(m.params, m.config, h))
    np.testing.assert_allclose(out[0], ref[0][5:8], atol=1e-4)
    np.testing.assert_allclose(out[1], ref[1][8:11], atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_batch_rows_match_alone(family, tiny):
    m = tiny[family]
    rng = np.random.RandomState(2)
    prompts = [rng.randint(3, 96, size=n).tolist() for n in (3, 11, 6, 1)]
    batch = viasd_jax.generate(m, prompts, max_new_tokens=12)
    for p, got in zip(prompts, batch.tokens):
        assert got == viasd_jax.generate(m, [p], max_new_tokens=12).tokens[0]


def test_bfloat16_model_keeps_a_float32_cache_on_cpu(qwen):
    """On CPU a 16-bit model writes a float32 cache (XLA copies a 16-bit one per write);
    its activations stay 16-bit, also through a skipped-sublayer route's `cond`."""
    assert kv_dtype(jnp.bfloat16) == jnp.float32 and kv_dtype(jnp.float32) == jnp.float32
    m = viasd_jax.load(qwen.path, dtype="bfloat16")
    cfg = m.config
    cache = init_cache(cfg, 1, 16, kv_dtype(m.dtype))
    route = jnp.ones((cfg.num_layers, 2), bool).at[0, 1].set(False)
    toks = jnp.asarray([[5, 6, 7]])
    h, cache = M.forward(m.params, cfg, toks, jnp.arange(3)[None], cache, route)
    assert h.dtype == jnp.bfloat16 and cache.k.dtype == jnp.float32
    assert np.abs(np.asarray(cache.k[0, 0, :, :3], np.float32)).sum() > 0  # written
