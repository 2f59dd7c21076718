"""Frozen model configuration shared by every family we run.

One small dataclass describes Llama, Qwen2, Mistral, Gemma and Gemma 2: the
families differ only in a handful of switches (attention bias, norm offset,
activation, soft-capping, sliding windows). It is hashable so that it can be a
static argument of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "gemma2")
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding: `default` or Llama 3's frequency scaling (`llama3`)."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer.

    `layer_windows[i]` is the sliding-window length of layer i, 0 for full
    attention. `norm_offset` is 1.0 for Gemma's `x * (1 + w)` RMSNorm.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    activation: str = "silu"
    qkv_bias: bool = False
    out_bias: bool = False
    tie_embeddings: bool = False
    norm_offset: float = 0.0
    embed_scale: float = 1.0
    post_norms: bool = False
    query_scale: float = 0.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    layer_windows: tuple[int, ...] = ()
    max_position_embeddings: int = 32768

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model config: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"model config: unsupported activation {self.activation!r}")
        if not self.layer_windows:
            object.__setattr__(self, "layer_windows", (0,) * self.num_layers)
        if len(self.layer_windows) != self.num_layers:
            raise ValueError("model config: layer_windows must have one entry per layer")
        if not self.query_scale:
            object.__setattr__(self, "query_scale", self.head_dim**-0.5)

    @property
    def heads_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["rope"] = RopeConfig(**d.get("rope", {}))
        d["layer_windows"] = tuple(d.get("layer_windows", ()))
        return cls(**d)


def _get(hf: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = hf.get(key, default)
    return default if value is None else value


def _rope_from_hf(hf: Mapping[str, Any]) -> RopeConfig:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if isinstance(params, Mapping) and "rope_theta" not in params and "full_attention" in params:
        params = params["full_attention"]
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "llama3":
        return RopeConfig(
            theta=theta,
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position=int(params["original_max_position_embeddings"]),
        )
    raise ValueError(f"unsupported rope type {kind!r}; supported: default, llama3")


def _layer_windows(hf: Mapping[str, Any], arch: str, num_layers: int) -> tuple[int, ...]:
    window = hf.get("sliding_window")
    if arch == "qwen2" and not hf.get("use_sliding_window", False):
        window = None
    layer_types = hf.get("layer_types")
    if not window:
        return (0,) * num_layers
    if layer_types:
        return tuple(int(window) if t == "sliding_attention" else 0 for t in layer_types)
    if arch == "gemma2":
        return tuple(int(window) if i % 2 == 0 else 0 for i in range(num_layers))
    if arch == "qwen2":
        first = int(hf.get("max_window_layers", 0))
        return tuple(int(window) if i >= first else 0 for i in range(num_layers))
    return (int(window),) * num_layers


def from_hf_config(hf: Mapping[str, Any]) -> ModelConfig:
    """Build a `ModelConfig` from a Hugging Face `config.json` dict."""
    arch = hf.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {arch!r} (config model_type); supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if hf.get("mlp_bias"):
        raise ValueError(f"unsupported {arch} option mlp_bias=True")
    num_heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    num_layers = int(hf["num_hidden_layers"])
    head_dim = int(_get(hf, "head_dim", hidden // num_heads))
    act_name = _get(hf, "hidden_activation", None) or _get(hf, "hidden_act", "silu")
    if act_name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {act_name!r} in {arch} config")
    gemma = arch in ("gemma", "gemma2")
    qps = _get(hf, "query_pre_attn_scalar", 0) if arch == "gemma2" else 0
    return ModelConfig(
        architecture=arch,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(_get(hf, "num_key_value_heads", num_heads)),
        head_dim=head_dim,
        intermediate_size=int(hf["intermediate_size"]),
        rms_norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        rope=_rope_from_hf(hf),
        activation=_ACTIVATIONS[act_name],
        qkv_bias=arch == "qwen2" or bool(hf.get("attention_bias", False)),
        out_bias=arch != "qwen2" and bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", gemma)),
        norm_offset=1.0 if gemma else 0.0,
        embed_scale=math.sqrt(hidden) if gemma else 1.0,
        post_norms=arch == "gemma2",
        query_scale=float(qps) ** -0.5 if qps else head_dim**-0.5,
        attn_softcap=float(_get(hf, "attn_logit_softcapping", 0.0)) if arch == "gemma2" else 0.0,
        final_softcap=float(_get(hf, "final_logit_softcapping", 0.0)) if arch == "gemma2" else 0.0,
        layer_windows=_layer_windows(hf, arch, num_layers),
        max_position_embeddings=int(_get(hf, "max_position_embeddings", 32768)),
    )
