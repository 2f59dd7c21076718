"""Routes: which layers a pass keeps, as validated index tuples and `[L]` masks."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def validate_route(route: Iterable[int], num_layers: int) -> tuple[int, ...]:
    """Kept-layer indices, sorted; ValueError on empty, out-of-range or duplicate layers."""
    try:
        kept = [int(i) for i in route]
    except (TypeError, ValueError):
        raise ValueError(f"route must be a list of layer indices, got {route!r}") from None
    if not kept:
        raise ValueError("route is empty: keep at least one layer")
    bad = [i for i in kept if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"route has layer {bad[0]} out of range [0, {num_layers})")
    if len(set(kept)) != len(kept):
        dup = next(i for i in kept if kept.count(i) > 1)
        raise ValueError(f"route lists layer {dup} more than once")
    return tuple(sorted(kept))


def route_mask(route: Iterable[int] | None, num_layers: int) -> np.ndarray:
    """`[L]` bool mask of kept layers (all layers for None)."""
    mask = np.zeros(num_layers, bool)
    mask[list(validate_route(range(num_layers) if route is None else route, num_layers))] = True
    return mask


def default_route(num_layers: int, skip_ratio: float) -> tuple[int, ...]:
    """A hand-picked route for models without a calibrated one: skip one contiguous
    block of `skip_ratio` of the layers, starting a seventh of the way in (early-middle
    blocks hurt least on Qwen2.5-1.5B; see docs/design.md). First and last layers stay."""
    skip = min(int(round(skip_ratio * num_layers)), max(num_layers - 2, 0))
    start = max(1, int(round(num_layers / 7)))
    start = min(start, num_layers - 1 - skip)
    return tuple(i for i in range(num_layers) if not start <= i < start + skip)
