"""quantize="gguf": a GGUF's Q4_K / Q6_K codes multiply exactly as their float32 weights."""


import numpy as np
import pytest

import viasd_jax
from viasd_jax import gguf_blocks as G
from viasd_jax.layout import OutputMajor

gguf = pytest.importorskip("gguf")


def random_blocks(rng, kind: str, n: int, k: int) -> np.ndarray:
    """Random raw `kind` rows `[n, k / 256 * bytes]` with small, finite float16 scales."""
    nb = k // G.QK
    if kind == "Q4_K":
        b = rng.integers(0, 256, (n, nb, 144), dtype=np.uint8)
        b[..., 0:2] = rng.uniform(1e-4, 3e-4, (n, nb, 1)).astype(np.float16).view(np.uint8)
        b[..., 2:4] = rng.uniform(1e-4, 3e-4, (n, nb, 1)).astype(np.float16).view(np.uint8)
    else:
        b = rng.integers(0, 256, (n, nb, 210), dtype=np.uint8)
        b[..., 208:210] = rng.uniform(-6e-5, 6e-5, (n, nb, 1)).astype(np.float16).view(np.uint8)
    return b.reshape(n, -1)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_codes_give_gguf_dequantization(kind):
    """Our unpacking, expanded with one rounding, is gguf's own float32 dequantization
    (values equal; zeros may differ in sign, which no kernel sum sees)."""
    rng = np.random.default_rng(0)
    raw = random_blocks(rng, kind, 7, 512)
    unpack, sub = G.UNPACKERS[kind]
    codes, scales, mins = unpack(raw, 512)
    assert codes.shape == (7, 512) and scales.shape == mins.shape == (7, 512 // sub)
    assert codes.max() < (16 if kind == "Q4_K" else 64)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind])
    np.testing.assert_array_equal(G.float32_weights(codes, scales, mins), want)


def _block_weight(rng, kinds, n, k):
    """A stacked `BlockWeight` over len(kinds) layers and its float32 weights `[L, n, k]`."""
    per_layer, dense = [], []
    for kind in kinds:
        c, s, m = G.UNPACKERS[kind][0](random_blocks(rng, kind, n, k), k)
        per_layer.append((kind, c, s, m))
        dense.append(G.float32_weights(c, s, m))
    return G._stack(per_layer, (len(kinds), n, k), stacked=True), np.stack(dense)


@pytest.mark.kernel
@pytest.mark.parametrize("kinds", [("Q4_K", "Q4_K"), ("Q4_K", "Q6_K"), ("Q6_K", "Q6_K")],
                         ids=["nibbles", "mixed", "bytes"])
def test_kernel_is_bitwise_the_float32_kernel(kinds):
    """Every token-group size 1-9 and prefill's path (12, 20 rows), N not a multiple of the
    row blocks nor of the 48-row chunk, each layer of a stack (of one kind, or of both as
    Q4_K_M mixes them), `live` rows: the outputs are the float32 kernel's to the bit."""
    import jax.numpy as jnp

    from viasd_jax import cpu_matvec

    rng = np.random.default_rng(1)
    b, dense = _block_weight(rng, kinds, 53, 512)
    assert b.codes.shape[-1] == (256 if kinds == ("Q4_K", "Q4_K") else 512)  # all Q4_K: two codes per byte
    assert (b.mins.size == 0) == ("Q4_K" not in kinds)  # Q6_K derives its mins
    w = jnp.asarray(dense)
    for m in (*range(1, 10), 12, 20):
        x = jnp.asarray(rng.standard_normal((m, 512)).astype(np.float32))
        for layer in (0, 1):
            got = np.asarray(cpu_matvec.matvec_blocks(x, b, layer))
            np.testing.assert_array_equal(got.view(np.uint32), np.asarray(cpu_matvec.matvec(x, w, layer)).view(np.uint32))
    part = np.asarray(cpu_matvec.matvec_blocks(x, b, 1, 5))
    np.testing.assert_array_equal(part[:5], got[:5])
    assert not part[5:].any()
    first = np.asarray(cpu_matvec.matvec_blocks(x, b, 1, rows=30))  # a narrow head: the leading rows alone
    np.testing.assert_array_equal(first.view(np.uint32), got[:, :30].view(np.uint32))
    with pytest.raises(ValueError, match="does not match codes"):
        cpu_matvec.matvec_blocks(x[:, :256], b, 0)
    for m in (1, 5, 20, 40):  # prefill_dtype="bfloat16": bitwise the float32 weights' bfloat16 products
        x = jnp.asarray(rng.standard_normal((m, 512)).astype(np.float32))
        got = np.asarray(cpu_matvec.matvec_blocks(x, b, 1, products="bfloat16"))
        want = np.asarray(cpu_matvec.matvec(x, w, 1, products="bfloat16"))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    for m in (5, 20, 40):  # float32 prefill (summed along k): bitwise the float32 weights' product so
        x = jnp.asarray(rng.standard_normal((m, 512)).astype(np.float32))
        got = np.asarray(cpu_matvec.matvec_blocks(x, b, 0, products="float32"))
        want = np.asarray(cpu_matvec.matvec(x, w, 0, products="float32"))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def int8_reference(x: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """`x [M, K]` quantized to int8 per 32 as the kernel's int8 products do it (float32
    `dx = max|x| / 127`, `round(x / dx)`, ties to even), times float32 weights `[N, K]`, in float64."""
    blocks = x.reshape(x.shape[0], -1, 32)
    dx = np.abs(blocks).max(-1, keepdims=True) / np.float32(127)
    q = np.where(dx > 0, np.clip(np.rint(blocks / np.where(dx > 0, dx, 1)), -127, 127), 0)
    return (q * dx.astype(np.float64)).reshape(x.shape) @ dense.astype(np.float64).T


@pytest.mark.kernel
@pytest.mark.parametrize("kinds", [("Q4_K", "Q6_K"), ("Q6_K", "Q4_K")], ids=["nibbles", "bytes"])
def test_int8_products_are_the_quantized_activations_product(kinds):
    """products="int8": each output is the product of the row's int8-quantized activations
    with the weights (to float32 accuracy), close to but not the float32 product; and a
    row's result is the same to the bit alone, among 1-9 rows or prefill's 12 and 20."""
    import jax.numpy as jnp

    from viasd_jax import cpu_matvec

    rng = np.random.default_rng(2)
    b, dense = _block_weight(rng, kinds, 53, 2304)  # prefill's K blocks: 2048 + 256 (Q4_K), 2 x 1024 + 256 (Q6_K)
    x = rng.standard_normal((20, 2304)).astype(np.float32)
    x[3, :32] = 0  # an all-zero block has scale 0
    x[4, 40] = 30.0  # an outlier coarsens its own block only
    alone = np.stack([np.asarray(cpu_matvec.matvec_blocks(jnp.asarray(x[i:i + 1]), b, 0, products="int8"))[0]
                      for i in range(20)])
    want = int8_reference(x, dense[0])
    scale = np.abs(x).astype(np.float64) @ np.abs(dense[0]).astype(np.float64).T
    assert np.abs(alone - want).max() / scale.max() < 1e-6
    exact = x.astype(np.float64) @ dense[0].astype(np.float64).T
    err = np.abs(alone - exact) / np.abs(exact).max()
    assert 1e-5 < err.max() < 0.02
    for m in (*range(2, 10), 12, 20):
        got = np.asarray(cpu_matvec.matvec_blocks(jnp.asarray(x[:m]), b, 0, products="int8"))
        np.testing.assert_array_equal(got.view(np.uint32), alone[:m].view(np.uint32))
    part = np.asarray(cpu_matvec.matvec_blocks(jnp.asarray(x[:7]), b, 0, 3, products="int8"))
    np.testing.assert_array_equal(part[:3].view(np.uint32), alone[:3].view(np.uint32))
    assert not part[3:].any()
    with pytest.raises(ValueError, match="multiplies GGUF codes"):
        cpu_matvec.matvec(jnp.asarray(x), jnp.asarray(dense), 0, products="int8")


def _gguf_twin(hf_dir, path, rng, mixed_layers=(0, 3)):
    """A tiny qwen2 model whose matrices are random k-quant blocks, and the GGUF file of
    those blocks (Q6_K for `attn_v` / `ffn_down` in `mixed_layers` and the head, as
    Q4_K_M mixes them)."""
    import jax.numpy as jnp

    from viasd_jax.layout import matrices
    from viasd_jax.params import leaves_of, params_from_leaves

    model = viasd_jax.load(hf_dir)
    cfg = model.config
    leaves = dict(leaves_of(model.params))
    writer = gguf.GGUFWriter(path, "qwen2")
    for name, tname in G.GGUF_NAMES.items():
        shape = leaves[name].w.shape
        layers = range(cfg.num_layers) if "{i}" in tname else [None]
        n_contracted = len(matrices()[name][1])
        n = int(np.prod(shape[int(layers[0] is not None):-n_contracted]))
        k = int(np.prod(shape[-n_contracted:]))
        dense = []
        for i in layers:
            kind = "Q6_K" if (name in ("wv", "w_down") and i in mixed_layers) or name == "lm_head" else "Q4_K"
            raw = random_blocks(rng, kind, n, k)
            writer.add_tensor(tname.format(i=i), raw, raw_dtype=gguf.GGMLQuantizationType[kind])
            dense.append(G.float32_weights(*G.UNPACKERS[kind][0](raw, k)).reshape(shape[-len(shape) + (i is not None):]))
        leaves[name] = OutputMajor(jnp.asarray(np.stack(dense) if layers[0] is not None else dense[0]), kernel=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model.__class__(**{**vars(model), "params": params_from_leaves(cfg, leaves)})


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    from hf_models import make_hf_model

    root = tmp_path_factory.mktemp("gguf")
    hf_dir = str(root / "hf")
    # every matrix's K (256 or 512) a whole number of 256-weight k-quant blocks
    make_hf_model("qwen2", hf_dir, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                  num_key_value_heads=2)
    from hf_models import make_tokenizer

    make_tokenizer(hf_dir)
    path = str(root / "tiny.gguf")
    dense = _gguf_twin(hf_dir, path, np.random.default_rng(2))
    blocks = dense.__class__(**{**vars(dense), "params": G.block_params(dense.params, dense.config, path,
                                                                        progress=False)})
    return dense, blocks, path


def test_block_model_generates_exactly_the_float32_model(twins):
    """Greedy tokens and every step's logits are the same bits; sd over the block target
    stays exact too. The head and the mixed stacks take the byte packing."""
    dense, blocks, _ = twins
    layers = blocks.params.layers
    assert isinstance(layers.wq.w, G.BlockWeight) and not layers.wq.w.kinds.any()  # all Q4_K: nibbles alone
    assert list(layers.w_down.w.kinds) == [1, 0, 0, 1] and list(blocks.params.lm_head.w.kinds) == [1]
    prompt = [[5, 9, 11, 3, 7, 21, 8]]
    a = viasd_jax.generate(dense, prompt, max_new_tokens=12, chat_template=False)
    b = viasd_jax.generate(blocks, prompt, max_new_tokens=12, chat_template=False)
    assert a.tokens == b.tokens
    seq = [prompt[0] + a.tokens[0]]  # scored in one pass: prefill's many-row path
    np.testing.assert_array_equal(np.asarray(viasd_jax.score(dense, seq)).view(np.uint32),
                                  np.asarray(viasd_jax.score(blocks, seq)).view(np.uint32))
    sd = viasd_jax.generate(blocks, prompt, max_new_tokens=12, chat_template=False, drafter=dense, mode="sd", gamma=3)
    assert sd.tokens == a.tokens


def test_int8_products_keep_sd_equal_to_ar(twins):
    """products="int8" changes the target's numerics (logits close to float32's, not the
    same) but each row's product is its own: sd and via-lossless under it equal plain
    decoding under it, token for token."""
    import dataclasses

    from viasd_jax.layout import with_products

    dense, blocks, path = twins
    q8 = dataclasses.replace(blocks, params=with_products(blocks.params, "int8"))
    assert q8.params.layers.wq.products == "int8" and q8.params.embed is blocks.params.embed
    prompt = [[5, 9, 11, 3, 7, 21, 8]]
    ar = viasd_jax.generate(q8, prompt, max_new_tokens=12, chat_template=False)
    for kw in (dict(mode="sd", gamma=3), dict(mode="via", gamma=3, lossless=True)):
        out = viasd_jax.generate(q8, prompt, max_new_tokens=12, chat_template=False, drafter=dense, **kw)
        assert out.tokens == ar.tokens, kw
    seq = [prompt[0] + ar.tokens[0]]
    want, got = np.asarray(viasd_jax.score(dense, seq)), np.asarray(viasd_jax.score(q8, seq))
    assert not np.array_equal(got, want) and np.abs(got - want).max() < 0.05 * np.abs(want).max()
    with pytest.raises(ValueError, match="load the model with quantize='gguf'"):
        with_products(dense.params, "int8")
    with pytest.raises(ValueError, match="needs quantize='gguf'"):
        viasd_jax.load(path, products="int8")


def test_forward_scores_a_token_alike_one_at_a_time_and_in_windows(twins):
    """The whole forward (not only the kernel) gives a token the same logits and cached
    K/V bits alone as in windows of 3 or 6, for float32 weights, the codes and int8
    products: what lossless sd rests on (`benchmarks/window_bits.py` checks a real model)."""
    import dataclasses
    from functools import partial

    import jax
    import jax.numpy as jnp

    from viasd_jax import model as M
    from viasd_jax.cache import init_cache
    from viasd_jax.layout import with_products

    dense, blocks, _ = twins
    cfg = dense.config
    tokens = np.array([[5, 9, 11, 3, 7, 21, 8, 4, 2, 6, 12, 13]], np.int32)

    @partial(jax.jit, donate_argnums=(3,))
    def step(params, t, pos, cache):
        h, cache = M.forward(params, cfg, t, pos, cache, jnp.ones((cfg.num_layers, 2), bool))
        return M.logits(params, cfg, h), cache

    def run(params, sizes):
        cache, out, at = init_cache(cfg, 1, 32, jnp.float32), [], 0
        for n in sizes:
            logits, cache = step(params, jnp.asarray(tokens[:, at:at + n]), jnp.arange(at, at + n)[None], cache)
            out.append(np.asarray(logits))
            at += n
        return np.concatenate(out, axis=1).view(np.uint32), np.asarray(cache.k).view(np.uint32)

    q8 = dataclasses.replace(blocks, params=with_products(blocks.params, "int8"))
    for model in (dense, blocks, q8):
        one = run(model.params, [6] + [1] * 6)
        for sizes in ([6, 6], [6, 3, 3]):
            for a, b in zip(one, run(model.params, sizes)):
                np.testing.assert_array_equal(a, b)


def test_bench_products_overrides(twins):
    """@products / @drafter_products reach the target / drafter of our systems alone
    (the same arrays); sd still equals ar under them."""
    from viasd_jax.bench.systems import make_systems

    _, blocks, path = twins
    ar, sd = make_systems(["viasd-ar@products=int8", "viasd-sd@products=int8:drafter_products=int8"], blocks, path,
                          "float32", drafter=blocks, drafter_path=path)
    assert ar.target.params.layers.w_up.products == sd.options["drafter"].params.layers.w_up.products == "int8"
    assert ar.target.params.layers.w_up.w is blocks.params.layers.w_up.w and blocks.params.layers.w_up.products is None
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    assert sd.run(prompt, 8).tokens == ar.run(prompt, 8).tokens


def test_block_loading_refuses_what_it_cannot_reproduce(twins, hf_dirs, tmp_path):
    dense, _, path = twins
    other = viasd_jax.load(hf_dirs["qwen2"])  # different weights and shapes
    with pytest.raises(ValueError, match="does not reproduce|no tensor|cannot"):
        G.block_params(other.params, other.config, path, progress=False)
    with pytest.raises(ValueError, match="needs the model's GGUF file"):
        viasd_jax.load(hf_dirs["qwen2"], quantize="gguf")
    with pytest.raises(ValueError, match="dtype must be float32"):
        viasd_jax.load(path, quantize="gguf", dtype="bfloat16")
    with pytest.raises(ValueError, match="float32 prefill multiplies"):  # decoding must keep decoding's sums
        viasd_jax.load(path, quantize="gguf", products="float32")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"GGUF" + b"\0" * 16)
        G.gguf_matrices(str(bad))
    from viasd_jax.quant import quantize

    with pytest.raises(ValueError, match="pass it to load"):
        quantize(dense, "gguf")


def test_generate_keeps_gguf_codes_by_default_where_they_apply(twins, hf_dirs, tmp_path):
    """`viasd generate --quantize auto` (the default) takes the codes for a GGUF of Q4_K /
    Q6_K matrices, and float weights for anything else."""
    from viasd_jax.cli import target_quantize

    from viasd_jax import defaults

    _, _, path = twins
    assert G.codes_usable(path) and target_quantize("auto", path, None, "auto", defaults.CPU["amx"]) == "gguf"
    assert target_quantize("auto", path, None, "auto", defaults.CPU["avx2"]) is None  # the codes do not pay there
    assert not G.codes_usable(path, dtype="bfloat16") and not G.codes_usable(path, layout="input-major")
    assert target_quantize("auto", hf_dirs["qwen2"], None, "auto", defaults.CPU["amx"]) is None  # no GGUF behind it
    assert target_quantize("none", path, None, "auto") is None and target_quantize("int8", path, None, "auto") == "int8"
    other = str(tmp_path / "f32.gguf")  # float matrices: nothing to keep
    writer = gguf.GGUFWriter(other, "qwen2")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((256, 256), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert not G.codes_usable(other)


def test_streamed_bytes_count_what_each_layer_reads():
    """A mixed stack reads 0.75 bytes per Q4_K weight and 1.25 per Q6_K one, less than its slabs."""
    from viasd_jax.bench.costs import _nbytes

    b, _ = _block_weight(np.random.default_rng(3), ("Q4_K", "Q6_K"), 8, 512)
    assert b.streamed_bytes() == 8 * 512 * (0.75 + 1.25)
    assert _nbytes(OutputMajor(b, kernel=True)) == b.streamed_bytes() < sum(x.nbytes for x in (b.codes, b.scales, b.mins))
