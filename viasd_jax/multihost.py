"""Multi-host launch: one process per host, one mesh over every host's devices.

    python -m viasd_jax.multihost --target CKPT --data 4 --model 4 --prompts p.jsonl

On Cloud TPU VMs run it on every worker at once (`--worker=all`);
`jax.distributed.initialize()` finds the coordinator itself. Elsewhere pass
`--coordinator HOST:PORT --num-processes N --process-id I` (and, on CPU,
`--cpu-devices K` to give each process K devices). Process 0 prints one JSON line
per prompt. See docs/sharding.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               cpu_devices: int | None = None) -> None:
    """`jax.distributed.initialize`, before anything else touches jax's backends."""
    if cpu_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={cpu_devices}").strip()
    import jax

    if cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m viasd_jax.multihost", description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="checkpoint visible to every host")
    ap.add_argument("--drafter", help="drafter checkpoint, 'self' or 'lookup' (default: plain decoding)")
    ap.add_argument("--data", type=int, required=True)
    ap.add_argument("--model", type=int, required=True)
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--prompts", help="jsonl with a 'prompt' field per line")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--lossless", action="store_true")
    ap.add_argument("--coordinator", help="HOST:PORT of process 0 (not needed on TPU VMs)")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    ap.add_argument("--cpu-devices", type=int, help="CPU devices per process (testing without accelerators)")
    args = ap.parse_args(argv)
    initialize(args.coordinator, args.num_processes, args.process_id, args.cpu_devices)

    import jax

    import viasd_jax
    from viasd_jax.cli import _read_prompts, load_drafter

    prompts = _read_prompts(args)
    mesh = viasd_jax.make_mesh(args.data, args.model)
    target = viasd_jax.load(args.target, mesh=mesh)
    drafter = load_drafter(args.drafter)
    if isinstance(drafter, viasd_jax.Model):
        drafter = viasd_jax.load(args.drafter, mesh=mesh)
    res = viasd_jax.generate(target, prompts, drafter=drafter, lossless=args.lossless,
                             max_new_tokens=args.max_new_tokens, mesh=mesh)
    if jax.process_index() == 0:
        for toks, text in zip(res.tokens, res.texts or [None] * len(res.tokens)):
            print(json.dumps({"tokens": toks, "text": text}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
