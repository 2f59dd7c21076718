"""Route calibration on tiny models: better than random, deterministic, budgets, round trips."""

import dataclasses
import json
import os

import numpy as np
import pytest

import viasd_jax
from checkpoints_convert import convert
from hf_models import make_hf_model, make_tokenizer
from viasd_jax import routing
from viasd_jax.route import Route, as_route


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """An 8-layer tiny model: enough layers for routes to differ."""
    d = str(tmp_path_factory.mktemp("deep") / "m")
    make_hf_model("llama", d, num_hidden_layers=8, seed=5)
    make_tokenizer(d)
    return viasd_jax.load(d), d


@pytest.fixture(scope="module")
def data(deep):
    model, _ = deep
    rng = np.random.RandomState(0)
    prompts = [rng.randint(3, 96, size=rng.randint(4, 10)).tolist() for _ in range(8)]
    return routing.generate_calibration(model, prompts, new_tokens=16)


@pytest.mark.parametrize("method", ["greedy", "gates", "random"])
@pytest.mark.parametrize("granularity", ["layer", "sublayer"])
def test_calibration_beats_random_routes(deep, data, method, granularity):
    model, _ = deep
    route = viasd_jax.calibrate_route(model, data, 0.4, method=method, granularity=granularity, progress=False,
                                      **({"steps": 30} if method == "gates" else {}))
    calib, held = data.split(0.25)
    scorer = routing.Scorer(model, calib)
    rng = np.random.default_rng(1)
    random_kls = [scorer(routing.random_route(model.config, 0.4, granularity, True, rng))[0] for _ in range(8)]
    assert scorer(route.mask())[0] <= np.median(random_kls)
    assert route.skip_ratio(model.config) >= 0.4 - 1e-6
    assert {0, 7} <= set(route.attn) & set(route.mlp)  # first and last layers kept
    assert route.info["data_hash"] == data.digest and 0 <= route.info["heldout_top1"] <= 1
    if granularity == "layer":
        assert route.whole_layers


def test_gates_gradients_beat_their_own_noise(deep, data):
    """Straight-through gates with learning find better routes than the same annealed
    noise with a frozen score (lr 0), on average over seeds."""
    model, _ = deep
    scorer = routing.Scorer(model, data.split(0.25)[0])

    def mean_kl(lr):
        return np.mean([scorer(routing.train_gates(scorer, 0.4, "sublayer", steps=20, lr=lr, seed=s,
                                                   progress=False))[0] for s in range(3)])

    assert mean_kl(0.2) < mean_kl(0.0)


def test_greedy_is_deterministic_and_nested(deep, data):
    model, _ = deep
    a = viasd_jax.calibrate_route(model, data, [0.2, 0.5], progress=False)
    b = viasd_jax.calibrate_route(model, data, [0.2, 0.5], progress=False)
    assert a == b
    assert set(a[0.5].mlp) <= set(a[0.2].mlp) and set(a[0.5].attn) <= set(a[0.2].attn)


def test_random_is_deterministic_for_a_seed(deep, data):
    model, _ = deep
    kw = dict(method="random", progress=False, trials=6)
    assert viasd_jax.calibrate_route(model, data, 0.3, seed=4, **kw) == \
        viasd_jax.calibrate_route(model, data, 0.3, seed=4, **kw)


def test_route_json_and_checkpoint_round_trip(deep, data, tmp_path):
    model, hf_dir = deep
    route = viasd_jax.calibrate_route(model, data, 0.3, progress=False)
    path = str(tmp_path / "route.json")
    route.save(path, model.config)
    saved = json.load(open(path))
    assert saved["method"] == "greedy" and saved["skip_ratio"] >= 0.3 and "data_hash" in saved
    assert as_route(path, 8) == route
    out = convert(hf_dir, str(tmp_path / "ckpt"), route=path, self_route=[0, 7])
    loaded = viasd_jax.load(out)
    assert loaded.route == route and loaded.self_route.kept_layers == (0, 7)
    prompts = [[5, 6, 7, 8]]
    kw = dict(drafter="lookup", max_new_tokens=12, tau_accept=0.2, tau_slim=0.2)
    assert viasd_jax.generate(loaded, prompts, **kw).tokens == \
        viasd_jax.generate(model, prompts, route=route, **kw).tokens


def test_sublayer_route_runs_and_differs(deep):
    model, _ = deep
    toks = [[5, 6, 7, 8, 9, 10]]
    full = np.asarray(viasd_jax.score(model, toks))
    no_mlp = Route(8, tuple(range(8)), (0, 7))
    assert np.abs(np.asarray(viasd_jax.score(model, toks, route=no_mlp)) - full).max() > 1e-3
    assert no_mlp.skip_ratio(model.config) == pytest.approx(0.5) and not no_mlp.whole_layers  # MLPs: 2/3 of a layer


@pytest.mark.parametrize("bad, message", [
    ([0, 8], "out of range"), ([], "route is empty"), ([1, 1, 2], "more than once"),
    ({"kept_attn": [0], "kept_mlp": [0, 0]}, "more than once"), ({"layers": [1]}, "must have 'kept_layers'"),
    ({"num_layers": 4, "kept_layers": [0]}, "4-layer model"),
])
def test_bad_routes(bad, message):
    with pytest.raises(ValueError, match=message):
        as_route(bad, 8)


def test_calibration_arguments(deep, data):
    model, _ = deep
    with pytest.raises(ValueError, match="unknown calibration method"):
        viasd_jax.calibrate_route(model, data, 0.3, method="bayes")
    with pytest.raises(ValueError, match="skip_ratio must be in"):
        viasd_jax.calibrate_route(model, data, 1.2)


def test_cli_calibrate(deep, tmp_path, capsys):
    from viasd_jax.cli import main

    _, hf_dir = deep
    out = str(tmp_path / "r.json")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}"}) + "\n" for i in range(5, 13)))
    assert main(["calibrate", "--target", hf_dir, "--prompts", str(prompts), "--skip-ratio", "0.3",
                 "--new-tokens", "8", "--out", out]) == 0
    assert os.path.isfile(out) and "held-back KL" in capsys.readouterr().out
    assert main(["calibrate", "--target", hf_dir, "--skip-ratio", "1.5", "--out", out]) == 2


def test_default_target_ships_a_calibrated_route():
    from viasd_jax import fetch
    from viasd_jax.route import as_route

    for kind, least in (("route", 0.3), ("self_route", 0.5)):
        d = fetch.packaged_route(fetch.DEFAULT_TARGET, kind)
        route = as_route(d, 28)  # validates layers
        assert d["skip_ratio"] >= least and d["method"] == "greedy"
        assert 0 in route.kept_layers and 27 in route.kept_layers
        assert {"data_hash", "heldout_kl", "heldout_top1"} <= set(d)
    assert fetch.packaged_route("smollm2-135m") is None


def test_restart_from_a_cached_stream_is_exact(deep, data):
    """Greedy's shortcut (rerun only from the changed layer) scores a route as a full run does."""
    model, _ = deep
    scorer = routing.Scorer(model, data)
    base = np.ones((model.config.num_layers, 2), bool)
    streams = scorer.streams(base)
    for start in (1, 3):
        mask = base.copy()
        mask[start, :] = False
        np.testing.assert_allclose(scorer.from_layer(mask, start, streams[start]), scorer(mask)[0], rtol=1e-5)


def test_gates_train_on_kernel_weights(deep, data):
    """The compiled CPU kernel has no gradient; gates fall back to XLA's dot on the same
    output-major weights and find the same route."""
    from viasd_jax import layout as LY

    model, _ = deep
    kern = dataclasses.replace(model, params=LY.apply(model.params, model.config, "cpu-kernel"))
    om = dataclasses.replace(model, params=LY.apply(model.params, model.config, "output-major"))
    routes = [routing.train_gates(routing.Scorer(m, data), 0.4, "layer", steps=3, progress=False) for m in (kern, om)]
    np.testing.assert_array_equal(*routes)
