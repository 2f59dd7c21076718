import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hf_models import FAMILIES, make_hf_model, make_tokenizer  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--real", action="store_true", help="run tests on the real Qwen2.5-Coder pair (downloads it)")


def pytest_configure(config):
    """XLA flags, set before the first backend use: eight CPU devices for the mesh tests.

    The tiny-model suite is bound by compilation, and LLVM at -O0 cuts its time by a
    third (docs/testing.md); programs compiled so are the same HLO, only their machine
    code less optimized. Real-model runs (`--real`) keep full optimization. A caller's
    own XLA_FLAGS win over both.
    """
    flags = ["--xla_force_host_platform_device_count=8"]
    if not config.getoption("--real"):
        flags.append("--xla_backend_optimization_level=0")
    os.environ.setdefault("XLA_FLAGS", " ".join(flags))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--real"):
        return
    skip = pytest.mark.skip(reason="real-model test: run with --real")
    for item in items:
        if "real" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def free_compiled_programs():
    """Each test module compiles dozens of programs; without freeing them the suite's
    process passes the kernel's memory-map limit and XLA crashes while compiling."""
    yield
    from viasd_jax.generate import clear_compiled

    clear_compiled()


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """{family: directory} of tiny random HF models (with a tokenizer), built once."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for fam in FAMILIES:
        d = str(root / fam)
        make_hf_model(fam, d)
        make_tokenizer(d)
        out[fam] = d
    return out


@pytest.fixture(scope="session")
def hf_models(hf_dirs):
    import transformers

    return {f: transformers.AutoModelForCausalLM.from_pretrained(d).eval() for f, d in hf_dirs.items()}


@pytest.fixture(scope="session")
def tiny(hf_dirs):
    """{family: viasd Model} loaded through our converter."""
    import viasd_jax

    return {f: viasd_jax.load(d) for f, d in hf_dirs.items()}


@pytest.fixture(scope="session")
def qwen(tiny):
    return tiny["qwen2"]
