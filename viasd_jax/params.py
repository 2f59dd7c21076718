"""The parameter pytree: one description of every leaf, everything else derived.

Per-layer weights are stacked on a leading layer axis `L` so that `lax.scan` runs
the layers and one compiled forward serves every route. Dimension letters:
L layers, V vocab, D hidden, N query heads, G kv heads, K head dim, F mlp hidden.
Optional leaves (biases, Gemma 2's post-norms, an untied LM head) are None when
the architecture has none.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from viasd_jax.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerParams:
    attn_norm: jax.Array  # [L, D]
    wq: jax.Array  # [L, D, N, K]
    wk: jax.Array  # [L, D, G, K]
    wv: jax.Array  # [L, D, G, K]
    wo: jax.Array  # [L, N, K, D]
    mlp_norm: jax.Array  # [L, D]
    w_gate: jax.Array  # [L, D, F]
    w_up: jax.Array  # [L, D, F]
    w_down: jax.Array  # [L, F, D]
    bq: jax.Array | None = None  # [L, N, K]
    bk: jax.Array | None = None  # [L, G, K]
    bv: jax.Array | None = None  # [L, G, K]
    bo: jax.Array | None = None  # [L, D]
    post_attn_norm: jax.Array | None = None  # [L, D]
    post_mlp_norm: jax.Array | None = None  # [L, D]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Params:
    embed: jax.Array  # [V, D]
    layers: LayerParams
    final_norm: jax.Array  # [D]
    lm_head: jax.Array | None = None  # [D, V]; None when tied to `embed`


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """Shape (dimension letters) and presence rule of one parameter leaf."""

    dims: str
    present: Callable[[ModelConfig], bool] = lambda cfg: True


LAYER_LEAVES: dict[str, LeafSpec] = {
    "attn_norm": LeafSpec("LD"),
    "wq": LeafSpec("LDNK"),
    "wk": LeafSpec("LDGK"),
    "wv": LeafSpec("LDGK"),
    "wo": LeafSpec("LNKD"),
    "mlp_norm": LeafSpec("LD"),
    "w_gate": LeafSpec("LDF"),
    "w_up": LeafSpec("LDF"),
    "w_down": LeafSpec("LFD"),
    "bq": LeafSpec("LNK", lambda c: c.qkv_bias),
    "bk": LeafSpec("LGK", lambda c: c.qkv_bias),
    "bv": LeafSpec("LGK", lambda c: c.qkv_bias),
    "bo": LeafSpec("LD", lambda c: c.out_bias),
    "post_attn_norm": LeafSpec("LD", lambda c: c.post_norms),
    "post_mlp_norm": LeafSpec("LD", lambda c: c.post_norms),
}
TOP_LEAVES: dict[str, LeafSpec] = {
    "embed": LeafSpec("VD"),
    "final_norm": LeafSpec("D"),
    "lm_head": LeafSpec("DV", lambda c: not c.tie_embeddings),
}


def dim_sizes(cfg: ModelConfig) -> dict[str, int]:
    return {
        "L": cfg.num_layers,
        "V": cfg.vocab_size,
        "D": cfg.hidden_size,
        "N": cfg.num_heads,
        "G": cfg.num_kv_heads,
        "K": cfg.head_dim,
        "F": cfg.intermediate_size,
    }


def map_leaf_specs(cfg: ModelConfig, fn: Callable[[str, LeafSpec], object]) -> Params:
    """Build a `Params`-shaped tree with `fn(name, spec)` at each present leaf."""

    def build(table):
        return {name: (fn(name, spec) if spec.present(cfg) else None) for name, spec in table.items()}

    top = build(TOP_LEAVES)
    return Params(layers=LayerParams(**build(LAYER_LEAVES)), **top)


def leaf_shape(cfg: ModelConfig, spec: LeafSpec) -> tuple[int, ...]:
    sizes = dim_sizes(cfg)
    return tuple(sizes[d] for d in spec.dims)


def abstract_params(cfg: ModelConfig, dtype=jnp.float32) -> Params:
    """`Params` of `jax.ShapeDtypeStruct`: the restore target and the shape check."""
    return map_leaf_specs(cfg, lambda _, spec: jax.ShapeDtypeStruct(leaf_shape(cfg, spec), dtype))


def cast_params(params: Params, dtype) -> Params:
    return jax.tree.map(lambda x: x.astype(dtype), params)


def params_from_leaves(cfg: ModelConfig, leaves: dict) -> Params:
    """Assemble `Params` from {leaf name: array}; absent optional leaves stay None."""
    return map_leaf_specs(cfg, lambda name, _: leaves[name])


def leaves_of(params: Params) -> dict:
    """The inverse of `params_from_leaves`: {leaf name: array} of present leaves."""
    out = {k: v for k, v in vars(params.layers).items() if v is not None}
    out.update({k: v for k, v in vars(params).items() if k != "layers" and v is not None})
    return out
