"""Per-device memory of the compiled decode loop on CPU meshes (issue 6's report).

Builds a random Qwen2-shaped model (every sharded dimension divisible by 8), compiles
`generate_loop` for `via` (lossless, a 2-layer drafter) on meshes data x model, and
prints XLA's memory analysis per device: arguments (params + caches + state),
temporaries, outputs. Compile only; nothing runs. Usage:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/sharded_memory.py
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import viasd_jax  # noqa: E402
from viasd_jax import decode as D  # noqa: E402
from viasd_jax import sharding as SH  # noqa: E402
from viasd_jax.generate import prepare  # noqa: E402


def random_hf(path: str, layers: int) -> str:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=8192, hidden_size=512, intermediate_size=2048, num_hidden_layers=layers,
                                   num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def main():
    with tempfile.TemporaryDirectory() as tmp:
        target_dir = random_hf(os.path.join(tmp, "target"), 8)
        drafter_dir = random_hf(os.path.join(tmp, "drafter"), 2)
        print("| mesh (data x model) | arguments MB/device | temporaries MB/device | outputs MB/device |")
        print("|---|---:|---:|---:|")
        for shape in ((1, 1), (1, 2), (1, 4), (1, 8), (8, 1), (4, 2), (2, 4)):
            mesh = SH.make_mesh(*shape)
            target, drafter = viasd_jax.load(target_dir, mesh=mesh), viasd_jax.load(drafter_dir, mesh=mesh)
            prompts = [[5 + i, 17, 33, 8, 9] for i in range(8)]
            prep = prepare(target, prompts, drafter=drafter, route=[0, 3, 7], lossless=True, max_new_tokens=256,
                           mesh=mesh)
            mem = D.generate_loop.lower(prep.params, prep.state, config=prep.config,
                                        prefill_width=prep.prefill_width).compile().memory_analysis()
            mb = lambda x: x / 2**20  # noqa: E731
            print(f"| {shape[0]} x {shape[1]} | {mb(mem.argument_size_in_bytes):.1f} | "
                  f"{mb(mem.temp_size_in_bytes):.1f} | {mb(mem.output_size_in_bytes):.1f} |", flush=True)


if __name__ == "__main__":
    main()
