"""Plain decoding: compile once per bucket, sampling options, stops, prompts."""

import numpy as np
import pytest

import viasd_jax
from viasd_jax.generate import compile_count


def test_no_recompile_within_bucket(qwen):
    viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=8)
    before = compile_count()
    viasd_jax.generate(qwen, [[5, 6, 7, 8, 9, 10, 11]], max_new_tokens=8)  # other length, same bucket
    viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=20)  # other budget, same cache length
    viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=5, seed=3)
    viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=8, temperature=1.3, seed=4, stop=[[9, 9]])
    assert compile_count() == before
    r = viasd_jax.generate(qwen, [list(range(3, 40))], max_new_tokens=8)  # a longer bucket compiles once more:
    assert compile_count() == before + 1  # a wider prefill chunk; the same cache, so the same rounds program
    assert 0 < r.prefill_seconds < r.seconds - r.compile_seconds
    assert r.decode_tokens_per_second > r.tokens_per_second > 0


def test_prefill_program_is_shared_across_round_settings(qwen):
    from viasd_jax import decode as D
    from viasd_jax.drafters import DrafterSpec

    spec = DrafterSpec(kind="lookup")
    sd = D.EngineConfig(qwen.config, mode="sd", drafter=spec, gamma=4)
    via = D.EngineConfig(qwen.config, mode="via", drafter=spec, gamma=6, pending_bound=3, lossless=True,
                         verify_widths=(1,))
    assert D.prefill_config(sd) == D.prefill_config(via) != D.prefill_config(D.EngineConfig(qwen.config))


def test_sampling_is_seeded(qwen):
    kw = dict(max_new_tokens=24, temperature=1.0)
    a = viasd_jax.generate(qwen, [[5, 6, 7]], seed=1, **kw).tokens
    assert a == viasd_jax.generate(qwen, [[5, 6, 7]], seed=1, **kw).tokens
    assert a != viasd_jax.generate(qwen, [[5, 6, 7]], seed=2, **kw).tokens


def test_top_k_one_is_greedy(qwen):
    greedy = viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=16).tokens
    assert viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=16, temperature=1.5, top_k=1, seed=9).tokens == greedy


def test_max_new_tokens_and_stops(qwen):
    full = viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=16, stop=[]).tokens[0]
    assert viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=0).tokens == [[]]
    assert viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=1).tokens == [full[:1]]
    # a stop token ends the row right after it; a stop sequence after its last token
    j = 5
    assert viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=16, stop=[full[j]]).tokens[0] == \
        full[: full.index(full[j]) + 1]
    seq = full[3:6]
    got = viasd_jax.generate(qwen, [[5, 6, 7]], max_new_tokens=16, stop=[seq]).tokens[0]
    assert got == full[:6] or got[-3:] == seq


def test_eos_stops_each_row_independently(tiny):
    m = tiny["mistral"]  # this tiny model emits EOS (id 2) early for some prompts
    prompts = [[11, 15, 44, 61], [5, 17, 33, 8, 9], [3, 3, 3]]
    res = viasd_jax.generate(m, prompts, max_new_tokens=30)
    for p, toks in zip(prompts, res.tokens):
        assert 2 not in toks[:-1]
        assert toks[-1] == 2 or len(toks) == 30
        assert toks == viasd_jax.generate(m, [p], max_new_tokens=30).tokens[0]


def test_string_prompts_use_chat_template(qwen):
    with_chat = viasd_jax.generate(qwen, "w7 w8 w9", max_new_tokens=4)
    assert with_chat.prompt_tokens[0] == [3, 7, 8, 9, 4]  # <|user|> w7 w8 w9 <|assistant|>
    raw = viasd_jax.generate(qwen, "w7 w8 w9", max_new_tokens=4, chat_template=False)
    assert raw.prompt_tokens[0] == [7, 8, 9]
    assert isinstance(raw.texts[0], str)


def test_empty_prompt_starts_from_bos(qwen):
    res = viasd_jax.generate(qwen, [[]], max_new_tokens=5)
    assert res.prompt_tokens == [[1]] and len(res.tokens[0]) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(top_p=0.0), "top_p must be in"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(top_k=-2), "top_k must be"),
        (dict(max_new_tokens=-1), "max_new_tokens must be"),
        (dict(max_new_tokens=100, max_len=64), "overflows the cache"),
        (dict(mode="beam"), "unknown mode"),
    ],
)
def test_bad_arguments(qwen, kwargs, message):
    with pytest.raises(ValueError, match=message):
        viasd_jax.generate(qwen, [[5, 6]], **kwargs)


def test_bad_prompts(qwen):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        viasd_jax.generate(qwen, [[5, 1000]])
    with pytest.raises(ValueError, match="longer than the cache"):
        viasd_jax.generate(qwen, [list(range(3, 90))], max_new_tokens=1, max_len=64)
    with pytest.raises(ValueError, match="prompts is empty"):
        viasd_jax.generate(qwen, [])


def test_score_validates_input(qwen):
    with pytest.raises(ValueError, match="route has layer 9 out of range"):
        viasd_jax.score(qwen, [[3, 4]], route=[0, 9])
    with pytest.raises(ValueError, match="more than once"):
        viasd_jax.score(qwen, [[3, 4]], route=[0, 1, 1])
    with pytest.raises(ValueError, match="route is empty"):
        viasd_jax.score(qwen, [[3, 4]], route=[])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        viasd_jax.score(qwen, np.array([[3, 400]]))
