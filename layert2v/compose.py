"""Compositing of layered video: back-to-front "over" with premultiplied foregrounds.

`full = fg_1 + (1 - a_1) (fg_2 + (1 - a_2) (... + (1 - a_K) bg))`, foreground 1 nearest (Porter & Duff, 1984).
Works on numpy arrays and torch tensors alike; channel-last: RGB `[..., 3]`, alpha `[...]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

Array = TypeVar("Array")


def over(foregrounds: Sequence[Array], alphas: Sequence[Array], background: Array) -> Array:
    """Composite premultiplied `foregrounds` (nearest first) with their `alphas` over `background`."""
    if len(foregrounds) != len(alphas):
        raise ValueError(f"{len(foregrounds)} foregrounds but {len(alphas)} alphas")
    result = background
    for fg, alpha in zip(reversed(foregrounds), reversed(alphas), strict=True):
        result = fg + (1 - alpha[..., None]) * result
    return result
