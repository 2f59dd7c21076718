"""Declarative map from Hugging Face tensor names to our parameter leaves.

Each rule names an HF tensor, the leaf it fills and how its layout changes. The
expected HF shape is derived from our leaf's shape and the rule's kind, so every
tensor is shape-checked; unknown, missing and duplicated names are errors.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Iterator

import numpy as np

from viasd_jax.config import ModelConfig
from viasd_jax.params import LAYER_LEAVES, TOP_LEAVES, leaf_shape


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # name after "model.layers.{i}." for layer rules, full name otherwise
    leaf: str
    kind: str  # copy | linear | to_heads | from_heads | bias_heads

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "copy":
            return ours
        if self.kind == "linear":  # HF [out, in] -> ours [in, out]
            return ours[::-1]
        if self.kind == "to_heads":  # HF [H*K, D] -> ours [D, H, K]
            return (ours[1] * ours[2], ours[0])
        if self.kind == "from_heads":  # HF [D, H*K] -> ours [H, K, D]
            return (ours[2], ours[0] * ours[1])
        if self.kind == "bias_heads":  # HF [H*K] -> ours [H, K]
            return (ours[0] * ours[1],)
        raise AssertionError(self.kind)

    def convert(self, w: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
        if self.kind in ("linear", "to_heads", "from_heads"):
            w = w.T
        return w.reshape(ours)


TOP_RULES = (
    Rule("model.embed_tokens.weight", "embed", "copy"),
    Rule("model.norm.weight", "final_norm", "copy"),
    Rule("lm_head.weight", "lm_head", "linear"),
)


def layer_rules(cfg: ModelConfig) -> tuple[Rule, ...]:
    rules = [
        Rule("input_layernorm.weight", "attn_norm", "copy"),
        Rule("self_attn.q_proj.weight", "wq", "to_heads"),
        Rule("self_attn.k_proj.weight", "wk", "to_heads"),
        Rule("self_attn.v_proj.weight", "wv", "to_heads"),
        Rule("self_attn.o_proj.weight", "wo", "from_heads"),
        Rule("mlp.gate_proj.weight", "w_gate", "linear"),
        Rule("mlp.up_proj.weight", "w_up", "linear"),
        Rule("mlp.down_proj.weight", "w_down", "linear"),
    ]
    if cfg.qkv_bias:
        rules += [Rule(f"self_attn.{p}_proj.bias", f"b{p}", "bias_heads") for p in "qkv"]
    if cfg.out_bias:
        rules.append(Rule("self_attn.o_proj.bias", "bo", "copy"))
    if cfg.post_norms:  # Gemma 2: post-attention norm, then a separate pre-MLP norm
        rules += [
            Rule("post_attention_layernorm.weight", "post_attn_norm", "copy"),
            Rule("pre_feedforward_layernorm.weight", "mlp_norm", "copy"),
            Rule("post_feedforward_layernorm.weight", "post_mlp_norm", "copy"),
        ]
    else:
        rules.append(Rule("post_attention_layernorm.weight", "mlp_norm", "copy"))
    return tuple(rules)


_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _ignorable(name: str, cfg: ModelConfig) -> bool:
    # A tied model's checkpoint may still carry a copy of the head; HF ignores it too.
    return (cfg.tie_embeddings and name == "lm_head.weight") or name.endswith("rotary_emb.inv_freq")


def assemble(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], dtype) -> dict[str, np.ndarray]:
    """Fill numpy arrays for every leaf from `(hf_name, array)` pairs.

    Returns {leaf name: array}; layer leaves are stacked `[L, ...]`. Raises
    ValueError naming the offending tensor(s) for unknown, duplicated, missing
    or mis-shaped tensors.
    """
    top = {r.hf: r for r in TOP_RULES if TOP_LEAVES[r.leaf].present(cfg)}
    per_layer = {r.hf: r for r in layer_rules(cfg)}
    out: dict[str, np.ndarray] = {}
    for rule in top.values():
        out[rule.leaf] = np.empty(leaf_shape(cfg, TOP_LEAVES[rule.leaf]), dtype)
    for rule in per_layer.values():
        out[rule.leaf] = np.empty(leaf_shape(cfg, LAYER_LEAVES[rule.leaf]), dtype)
    seen: set[str] = set()
    unknown: list[str] = []
    for name, w in tensors:
        if name in seen:
            raise ValueError(f"duplicated tensor {name!r} in checkpoint")
        match = _LAYER_KEY.match(name)
        if name in top:
            rule, target = top[name], out[top[name].leaf]
        elif match and match.group(2) in per_layer and int(match.group(1)) < cfg.num_layers:
            rule = per_layer[match.group(2)]
            target = out[rule.leaf][int(match.group(1))]
        elif _ignorable(name, cfg):
            continue
        else:
            unknown.append(name)
            continue
        expected = rule.hf_shape(target.shape)
        if tuple(w.shape) != expected:
            raise ValueError(f"tensor {name!r} has shape {tuple(w.shape)}, expected {expected} for this config")
        target[...] = rule.convert(np.asarray(w), target.shape).astype(dtype)
        seen.add(name)
    if unknown:
        raise ValueError(f"unknown tensor(s) in checkpoint for {cfg.architecture}: {_few(unknown)}")
    missing = [n for n in _expected_names(cfg, top, per_layer) if n not in seen]
    if missing:
        raise ValueError(f"missing tensor(s) in checkpoint: {_few(missing)}")
    return out


def _expected_names(cfg, top, per_layer) -> Iterator[str]:
    yield from top
    for i in range(cfg.num_layers):
        for suffix in per_layer:
            yield f"model.layers.{i}.{suffix}"


def _few(names: list[str], n: int = 5) -> str:
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
