"""Sharded decoding on device meshes with JAX's own SPMD machinery.

A mesh has two axes: `data` (batch rows) and `model` (tensor parallelism over
query and KV heads, the MLP hidden dimension and the vocabulary). Every array's
layout comes from its dimension letters through the one table `LOGICAL_TO_MESH`;
`jit` and `with_sharding_constraint` do the rest (XLA inserts the collectives).

Dimension letters: L layers, V vocab, D hidden, N query heads, G kv heads,
K head dim, F mlp hidden, B batch rows, S cache slots / token positions, R ring,
T window, C route columns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from viasd_jax.config import ModelConfig
from viasd_jax.params import map_leaf_specs

DATA, MODEL = "data", "model"
# The only place logical dimensions meet mesh axes.
LOGICAL_TO_MESH = {"B": DATA, "V": MODEL, "N": MODEL, "G": MODEL, "F": MODEL}


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A `(data, model)` mesh over `data * model` devices (default: the first ones)."""
    if data < 1 or model < 1:
        raise ValueError(f"mesh axes must be >= 1, got data={data}, model={model}")
    devices = list(jax.devices() if devices is None else devices)
    if data * model > len(devices):
        raise ValueError(f"a {data}x{model} mesh needs {data * model} devices, only {len(devices)} are visible "
                         "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax)")
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def spec(dims: str) -> PartitionSpec:
    return PartitionSpec(*(LOGICAL_TO_MESH.get(d) for d in dims))


def named(mesh: Mesh, dims: str) -> NamedSharding:
    return NamedSharding(mesh, spec(dims))


def check_divisible(mesh: Mesh, cfg: ModelConfig, name: str = "model") -> None:
    """ValueError naming the first dimension the model axis does not divide, and the fix."""
    m = mesh.shape[MODEL]
    sizes = {"query heads (num_heads)": cfg.num_heads, "KV heads (num_kv_heads)": cfg.num_kv_heads,
             "MLP hidden (intermediate_size)": cfg.intermediate_size, "vocabulary (vocab_size)": cfg.vocab_size}
    for what, size in sizes.items():
        if size % m:
            fits = [d for d in range(1, m + 1) if cfg.num_heads % d == 0 and cfg.num_kv_heads % d == 0
                    and cfg.intermediate_size % d == 0 and cfg.vocab_size % d == 0]
            raise ValueError(f"the mesh's model axis ({m}) does not divide the {name}'s {what} = {size}; "
                             f"use a model axis of {' or '.join(map(str, fits))} and put the other devices on "
                             "the data axis")


def param_shardings(mesh: Mesh, cfg: ModelConfig, quantized: bool = False):
    """A `Params`-shaped tree of `NamedSharding` (None leaves where the model has none).
    With `quantized`, matrices are `Int8Weight`s whose scales are not split along the
    (size-one) contracted dimensions."""
    from viasd_jax.quant import CONTRACTED, Int8Weight

    def one(name, leaf):
        if quantized and name in CONTRACTED:
            scale_dims = "".join("." if d in CONTRACTED[name] else d for d in leaf.dims)
            return Int8Weight(named(mesh, leaf.dims), named(mesh, scale_dims))
        return named(mesh, leaf.dims)

    return map_leaf_specs(cfg, one)


def shard_params(params, mesh: Mesh, cfg: ModelConfig, name: str = "model"):
    from viasd_jax.quant import Int8Weight

    check_divisible(mesh, cfg, name)
    return put_global(params, param_shardings(mesh, cfg, quantized=isinstance(params.layers.wq, Int8Weight)))


def cache_sharding(mesh: Mesh) -> Any:
    from viasd_jax.cache import KVCache

    return KVCache(k=named(mesh, "LBGSK"), v=named(mesh, "LBGSK"), lengths=named(mesh, "B"))


def state_shardings(mesh: Mesh, state):
    """Shardings of a `DecodeState`: rows over `data`, cache heads and vocab over `model`."""
    from viasd_jax.decode import DecodeState

    rows = named(mesh, "B")
    return DecodeState(
        tokens=named(mesh, "BS"),
        origin=named(mesh, "BS"),
        n=rows,
        prompt_len=rows,
        max_n=rows,
        done=rows,
        cache=cache_sharding(mesh),
        draft_cache=None if state.draft_cache is None else cache_sharding(mesh),
        pending_logp=None if state.pending_logp is None else named(mesh, "BRV"),
        key=rows,
        counters={k: rows for k in state.counters},
    )


def constrain(tree, shardings):
    """`with_sharding_constraint` over matching trees (None shardings skip a leaf)."""
    return jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(x, s), tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_global(tree, shardings):
    """Host values (the same on every process) -> arrays laid out by `shardings` (a
    matching tree; None leaves stay as they are). Works across processes: each one
    fills only the shards its devices hold."""

    def one(x, s):
        if s is None or x is None or (isinstance(x, jax.Array) and x.sharding == s):
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, s)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree.map(one, tree, shardings, is_leaf=lambda x: x is None)


def to_host(tree):
    """Arrays -> numpy, gathering shards from every process when there are several."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def shard_model(model, mesh: Mesh):
    """The `Model` with its params laid out on `mesh` (a no-op for params already there).
    Meshes shard the input-major layout: a CPU-kernel model (`load`'s "auto") is converted."""
    from viasd_jax import layout as LY

    params = model.params
    if LY.layout_of(params) != "input-major":
        params = LY.to_input_major(params, model.config)
    return dataclasses.replace(model, params=shard_params(params, mesh, model.config))
