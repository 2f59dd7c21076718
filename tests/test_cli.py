"""The `viasd` command line: it works, and bad input is one line and a non-zero exit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from viasd_jax import defaults
from viasd_jax.cli import default_draft_stop, default_drafter_dtype, default_drafter_quantize, main


def test_convert_then_generate(hf_dirs, tmp_path, capsys):
    out = str(tmp_path / "ckpt")
    assert main(["convert", hf_dirs["llama"], out]) == 0
    assert os.path.isfile(os.path.join(out, "viasd.json"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "w5 w6"}) + "\n" + json.dumps({"prompt": "w9"}) + "\n")
    assert main(["generate", "--target", out, "--prompts", str(prompts), "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert "--- prompt 1 ---" in captured.out
    assert "tokens/s" in captured.err
    # sd drafts with an int8-over-bfloat16 copy by default (float32 target): the text stays plain greedy's
    assert main(["generate", "--target", out, "--drafter", out, "--mode", "sd", "--prompts", str(prompts),
                 "--max-new-tokens", "6"]) == 0
    plain = captured.out[captured.out.index("--- prompt 0"):]  # after convert's "wrote ..." line
    assert capsys.readouterr().out == plain


@pytest.mark.parametrize("argv, message", [
    (["generate", "--target", "/no/such/dir", "--prompt", "x"], "no such file or directory"),
    (["convert", "/no/such/dir", "/tmp/out"], "no such file or directory"),
    (["generate", "--target", "HF", "--prompt", "x", "--top-p", "2"], "top_p must be in"),
    (["generate", "--target", "HF", "--prompt", "x", "--temperature", "-1"], "temperature must be >= 0"),
    (["generate", "--target", "HF"], "no prompt"),
    (["generate", "--target", "HF", "--prompt", "x", "--drafter", "lookup", "--gamma", "0"], "gamma must be"),
    (["generate", "--target", "HF", "--prompt", "x", "--drafter", "lookup", "--tau-accept", "1.5"],
     "tau_accept must be in [0, 1]"),
    (["generate", "--target", "HF", "--prompt", "x", "--drafter", "lookup", "--tau-slim", "nan"],
     "tau_slim must be in [0, 1]"),
    (["generate", "--target", "HF", "--prompt", "x", "--drafter", "lookup", "--route", "0,99"], "out of range"),
    (["generate", "--target", "HF", "--prompt", "x", "--drafter", "lookup", "--route", "0,1,1"], "more than once"),
    (["generate", "--target", "HF", "--prompt", "x", "--route", "0,a"], "expected comma-separated layer indices"),
    (["generate", "--target", "/no/such/dir", "--prompt", "x", "--verify-widths", "1;6"], "verify_widths must be"),
    (["generate", "--target", "HF", "--prompt", "x", "--drafter", "lookup", "--route", "/no/route.json"],
     "no such route file"),
    (["generate", "--target", "HF", "--prompt", "x", "--max-new-tokens", "-3"], "max_new_tokens must be"),
    (["generate", "--target", "HF", "--prompt", "x", "--drafter", "/no/drafter"], "no such file or directory"),
    (["calibrate", "--target", "HF", "--skip-ratio", "1.5", "--out", "/tmp/r.json"], "skip_ratio must be in (0, 1)"),
    (["bench", "--target", "HF", "--prompts", "/no/p.jsonl", "--json", "/tmp/b.json"], "no such"),
    (["generate", "--target", "HF", "--prompts", "/no/file.jsonl"], "no such prompts file"),
    (["generate", "--target", "HF", "--prompt", "x", "--layout", "input-major", "--prefill-dtype", "bfloat16"],
     "needs the target in layout 'cpu-kernel'"),
    (["generate", "--target", "HF", "--prompt", "x", "--products", "int8"], "it needs --quantize gguf"),
    (["generate", "--target", "HF", "--drafter", "HF", "--prompt", "x", "--drafter-products", "int8"],
     "it needs --drafter-quantize gguf"),
])
def test_bad_input_is_one_line(hf_dirs, capsys, argv, message):
    argv = [hf_dirs["llama"] if a == "HF" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("viasd ")


def test_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "viasd_jax.cli", "generate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--max-new-tokens" in out.stdout


def test_generate_drafts_in_bfloat16_under_a_float32_target():
    assert default_drafter_dtype(None, np.dtype("float32"), None, None) == "bfloat16"
    assert default_drafter_dtype("float32", np.dtype("float32"), None, None) == "float32"  # asked for
    assert default_drafter_dtype(None, np.dtype("float32"), None, "int8") is None  # int8 keeps the checkpoint's
    assert default_drafter_dtype(None, np.dtype("bfloat16"), "bfloat16", None) == "bfloat16"
    assert default_drafter_dtype(None, np.dtype("float32"), None, "gguf", "gguf") is None  # codes: float32


def test_generate_stops_drafting_early_in_sd_with_a_model_drafter():
    drafter = object()  # a loaded Model
    cpu = defaults.CPU["amx"]
    assert default_draft_stop(None, "sd", drafter, cpu) == cpu.draft_stop == 0.5
    assert default_draft_stop(0.0, "sd", drafter, cpu) == 0.0  # asked for always-gamma drafting
    assert default_draft_stop(None, "via", drafter, cpu) == 0.0  # not measured there
    assert default_draft_stop(None, "sd", "lookup", cpu) == default_draft_stop(None, "sd", "self", cpu) == 0.0


def test_generate_drafts_with_int8_matrices_under_a_float32_target_where_the_cpu_makes_it_pay():
    fast, avx2 = defaults.CPU["avx512-bf16"], defaults.CPU["avx2"]
    assert default_drafter_quantize(None, np.dtype("float32"), None, fast) == "int8"
    assert default_drafter_quantize(None, np.dtype("float32"), None, avx2) is None  # widening int8 costs there
    assert default_drafter_quantize("none", np.dtype("float32"), None, fast) is None  # asked for float matrices
    assert default_drafter_quantize(None, np.dtype("bfloat16"), None, fast) is None
    assert default_drafter_quantize(None, np.dtype("float32"), "int8", avx2) == "int8"  # as the target


def test_cpu_defaults_cover_every_kernel_level_and_name_their_runs():
    from viasd_jax import cpu_matvec

    assert {lv.name for lv in (*cpu_matvec.X86_LEVELS, cpu_matvec.NATIVE)} == set(defaults.CPU)
    root = os.path.dirname(os.path.dirname(__file__))
    for choice in {*defaults.CPU.values(), defaults.NO_KERNEL}:
        assert choice.quantize in (None, "gguf") and choice.drafter_quantize in (None, "int8")
        for run in choice.measured.split(", "):
            assert run.startswith("docs/") == os.path.isfile(os.path.join(root, run)), run
    assert defaults.CPU["avx2"].quantize is None  # the codes were no faster than float32 there
    with pytest.raises(ValueError, match="no CPU defaults for kernel level 'sse9'"):
        defaults.cpu("sse9")
