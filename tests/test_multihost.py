"""Multi-host on one machine: two processes, one mesh over both, same tokens as one process."""

import json
import os
import socket
import subprocess
import sys

import pytest

import viasd_jax
from checkpoints_convert import convert
from hf_models import make_hf_model, make_tokenizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_one_mesh(tmp_path):
    hf = str(tmp_path / "hf")
    make_hf_model("qwen2", hf, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128)
    make_tokenizer(hf)
    ckpt = convert(hf, str(tmp_path / "ckpt"))
    prompts = ["w5 w6 w7", "w9 w10", "w11", "w12 w13 w14 w15"]
    expected = viasd_jax.generate(viasd_jax.load(ckpt), prompts, drafter="lookup", lossless=True, max_new_tokens=12)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "viasd_jax.multihost", "--target", ckpt, "--data", "2", "--model", "2",
         "--drafter", "lookup", "--lossless", "--max-new-tokens", "12", "--coordinator", f"localhost:{port}",
         "--num-processes", "2", "--process-id", str(i), "--cpu-devices", "2",
         *[a for p in prompts for a in ("--prompt", p)]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in outs[0][0].splitlines() if line.startswith("{")]
    assert [line["tokens"] for line in lines] == expected.tokens
    assert not [line for line in outs[1][0].splitlines() if line.startswith("{")]  # only process 0 prints
