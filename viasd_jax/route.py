"""Routes: which layers (or which attention / MLP sublayers) a slim pass keeps.

A `Route` lists the layers whose attention runs and the layers whose MLP runs; a
whole-layer route has the same list twice. It becomes a `[L, 2]` bool mask for
`model.forward`. Its *skip ratio* is the share of the layer stack's weight bytes it
skips, which for whole layers is the share of layers (and on a memory-bound
machine, the share of the stack's time). `route.json` (written by `viasd
calibrate`) stores a route with how it was found and how well it does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable

import numpy as np

from viasd_jax.config import ModelConfig

FORMAT = "viasd-route/1"


def validate_layers(route: Iterable[int], num_layers: int, what: str = "route") -> tuple[int, ...]:
    """Kept indices, sorted; ValueError on empty, out-of-range or duplicate layers."""
    try:
        kept = [int(i) for i in route]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of layer indices, got {route!r}") from None
    bad = [i for i in kept if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{what} has layer {bad[0]} out of range [0, {num_layers})")
    if len(set(kept)) != len(kept):
        dup = next(i for i in kept if kept.count(i) > 1)
        raise ValueError(f"{what} lists layer {dup} more than once")
    return tuple(sorted(kept))


@dataclasses.dataclass(frozen=True)
class Route:
    num_layers: int
    attn: tuple[int, ...]  # layers whose attention sublayer runs
    mlp: tuple[int, ...]  # layers whose MLP sublayer runs
    method: str = "manual"
    info: dict = dataclasses.field(default_factory=dict, compare=False)  # calibration record

    def __post_init__(self):
        object.__setattr__(self, "attn", validate_layers(self.attn, self.num_layers, "route (attention)"))
        object.__setattr__(self, "mlp", validate_layers(self.mlp, self.num_layers, "route (mlp)"))
        if not self.attn and not self.mlp:
            raise ValueError("route is empty: keep at least one layer")

    @classmethod
    def layers(cls, kept: Iterable[int], num_layers: int, **kw) -> "Route":
        kept = validate_layers(kept, num_layers)
        if not kept:
            raise ValueError("route is empty: keep at least one layer")
        return cls(num_layers, kept, kept, **kw)

    @property
    def whole_layers(self) -> bool:
        return self.attn == self.mlp

    @property
    def kept_layers(self) -> tuple[int, ...]:
        """Layers kept whole (for a whole-layer route: the route itself)."""
        return tuple(sorted(set(self.attn) & set(self.mlp)))

    def mask(self) -> np.ndarray:
        m = np.zeros((self.num_layers, 2), bool)
        m[list(self.attn), 0] = True
        m[list(self.mlp), 1] = True
        return m

    def skip_ratio(self, cfg: ModelConfig) -> float:
        a, f = sublayer_bytes(cfg)
        kept = a * len(self.attn) + f * len(self.mlp)
        return 1.0 - kept / ((a + f) * self.num_layers)

    def to_dict(self, cfg: ModelConfig | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "num_layers": self.num_layers, "method": self.method}
        if self.whole_layers:
            out["kept_layers"] = list(self.attn)
        else:
            out["kept_attn"], out["kept_mlp"] = list(self.attn), list(self.mlp)
        if cfg is not None:
            out["skip_ratio"] = round(self.skip_ratio(cfg), 4)
        return {**out, **self.info}

    @classmethod
    def from_dict(cls, d: dict, num_layers: int | None = None) -> "Route":
        n = int(d.get("num_layers", num_layers or 0))
        if num_layers is not None and n != num_layers:
            raise ValueError(f"route is for a {n}-layer model, this model has {num_layers} layers")
        info = {k: v for k, v in d.items() if k not in ("format", "num_layers", "method", "kept_layers",
                                                         "kept_attn", "kept_mlp")}
        method = d.get("method", "manual")
        if "kept_layers" in d:
            return cls.layers(d["kept_layers"], n, method=method, info=info)
        if "kept_attn" in d and "kept_mlp" in d:
            return cls(n, tuple(d["kept_attn"]), tuple(d["kept_mlp"]), method=method, info=info)
        raise ValueError("route must have 'kept_layers', or 'kept_attn' and 'kept_mlp'")

    def save(self, path: str, cfg: ModelConfig | None = None) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(cfg), f, indent=1)


def sublayer_bytes(cfg: ModelConfig) -> tuple[int, int]:
    """Weights (in parameters) of one attention and one MLP sublayer."""
    d, k = cfg.hidden_size, cfg.head_dim
    attn = d * k * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    return attn, 3 * d * cfg.intermediate_size


def as_route(route, num_layers: int) -> Route:
    """A `Route` from a Route, a list of layer indices, a route dict, or a route.json path."""
    if isinstance(route, Route):
        if route.num_layers != num_layers:
            raise ValueError(f"route is for a {route.num_layers}-layer model, this model has {num_layers} layers")
        return route
    if isinstance(route, str):
        if not os.path.isfile(route):
            raise FileNotFoundError(f"{route}: no such route file")
        try:
            with open(route) as f:
                route = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{route}: not a valid route.json ({e})") from None
    if isinstance(route, dict):
        return Route.from_dict(route, num_layers)
    return Route.layers(route, num_layers)


def route_mask(route, num_layers: int) -> np.ndarray:
    """`[L, 2]` bool mask (attention, MLP) of a route; all layers for None."""
    return np.ones((num_layers, 2), bool) if route is None else as_route(route, num_layers).mask()


def default_route(num_layers: int, skip_ratio: float) -> Route:
    """A hand-picked route for models without a calibrated one: skip one contiguous
    block of `skip_ratio` of the layers, starting a seventh of the way in (early-middle
    blocks hurt least on Qwen2.5-1.5B; see docs/design.md). First and last layers stay."""
    skip = min(int(round(skip_ratio * num_layers)), max(num_layers - 2, 0))
    start = max(1, int(round(num_layers / 7)))
    start = min(start, num_layers - 1 - skip)
    return Route.layers([i for i in range(num_layers) if not start <= i < start + skip], num_layers,
                        method=f"default-block-{skip_ratio}")
