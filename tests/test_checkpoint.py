"""Conversion, orbax round trip and the clear errors for bad checkpoints."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import viasd_jax
from checkpoints_convert import CorruptCheckpointError, convert
from checkpoints_convert.safetensors_io import iter_tensors
from hf_models import make_hf_model


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_orbax_round_trip_is_bit_exact(hf_dirs, tiny, tmp_path):
    out = convert(hf_dirs["gemma2"], str(tmp_path / "ckpt"))
    back = viasd_jax.load(out)
    for a, b in zip(jax.tree.leaves(tiny["gemma2"].params), jax.tree.leaves(back.params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back.config == tiny["gemma2"].config
    assert back.eos_ids == (2,) and back.tokenizer is not None


def test_bf16_checkpoint_loads_as_bf16(tmp_path):
    d = str(tmp_path / "bf16")
    make_hf_model("llama", d, dtype="bfloat16")
    m = viasd_jax.load(d)
    assert m.dtype == "bfloat16"
    assert viasd_jax.score(m, [[3, 4, 5]]).dtype == np.float32
    assert viasd_jax.load(d, dtype="float32").dtype == np.float32


def test_missing_path_and_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        viasd_jax.load(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="neither a viasd-jax checkpoint"):
        viasd_jax.load(str(tmp_path))


def test_unknown_architecture(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"], tmp_path / "x")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "mamba"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="unsupported architecture 'mamba'"):
        viasd_jax.load(d)


def _rewrite_safetensors(d, edit):
    import safetensors.numpy

    path = os.path.join(d, "model.safetensors")
    tensors = {k: np.array(v) for k, v in iter_tensors(path)}
    os.remove(path)
    for name, arrays in edit(tensors).items():
        safetensors.numpy.save_file(arrays, os.path.join(d, name))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: {"model.safetensors": {**t, "model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}},
         "unknown tensor.*model.layers.0.mlp.extra.weight"),
        (lambda t: {"model.safetensors": {k: v for k, v in t.items() if "layers.2.mlp.up" not in k}},
         "missing tensor.*model.layers.2.mlp.up_proj.weight"),
        (lambda t: {"a.safetensors": t, "b.safetensors": {"model.norm.weight": t["model.norm.weight"]}},
         "duplicated tensor 'model.norm.weight'"),
        (lambda t: {"model.safetensors": {**t, "model.norm.weight": np.zeros(7, np.float32)}},
         r"'model.norm.weight' has shape \(7,\), expected \(32,\)"),
    ],
    ids=["unknown", "missing", "duplicated", "shape"],
)
def test_bad_tensors_are_named(hf_dirs, tmp_path, edit, message):
    d = _copy(hf_dirs["llama"], tmp_path / "x")
    _rewrite_safetensors(d, edit)
    with pytest.raises(ValueError, match=message):
        viasd_jax.load(d)


def test_truncated_safetensors(hf_dirs, tmp_path):
    d = _copy(hf_dirs["qwen2"], tmp_path / "x")
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        viasd_jax.load(d)


def test_altered_orbax_checkpoint_is_an_error(hf_dirs, tmp_path):
    out = convert(hf_dirs["qwen2"], str(tmp_path / "ckpt"))
    manifest = json.load(open(os.path.join(out, "viasd.json")))
    manifest["leaves"]["wq"]["sha256"] = "0" * 64  # as if the stored bytes changed
    json.dump(manifest, open(os.path.join(out, "viasd.json"), "w"))
    with pytest.raises(CorruptCheckpointError, match="content hash mismatch for wq"):
        viasd_jax.load(out)


def test_orbax_data_removed_is_an_error(hf_dirs, tmp_path):
    out = convert(hf_dirs["qwen2"], str(tmp_path / "ckpt"))
    shutil.rmtree(os.path.join(out, "params"))
    with pytest.raises(CorruptCheckpointError, match="cannot restore params"):
        viasd_jax.load(out)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_orbax_data_is_an_error(hf_dirs, tmp_path, damage):
    """Truncated or bit-flipped data files: an error, never silently wrong params."""
    out = convert(hf_dirs["qwen2"], str(tmp_path / "ckpt"))
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(out, "params")) for f in fs
             if os.sep + "d" + os.sep in os.path.join(r, f)]
    biggest = max(files, key=os.path.getsize)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptCheckpointError):
        viasd_jax.load(out)
