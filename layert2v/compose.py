"""Compositing of layered video: back-to-front "over" with premultiplied foregrounds, and `LayeredVideo`.

`full = fg_1 + (1 - a_1) (fg_2 + (1 - a_2) (... + (1 - a_K) bg))`, foreground 1 nearest (Porter & Duff, 1984).
`over` works on numpy arrays and torch tensors alike, channel-last: RGB `[..., 3]`, alpha `[...]`.
`LayeredVideo` is what the pipeline returns: float arrays in [0, 1], RGB `[T, H, W, 3]`, alpha `[T, H, W]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")
OUTPUT_KIND = "generation"  # the marker of a folder `LayeredVideo.write` filled (see `layert2v.outputs`)


FORMATS = ("mp4", "mov", "webm", "png")  # full/background MP4; foregrounds as ProRes 4444, VP9 alpha, PNG RGBA


def over(foregrounds: Sequence[Array], alphas: Sequence[Array], background: Array) -> Array:
    """Composite premultiplied `foregrounds` (nearest first) with their `alphas` over `background`."""
    if len(foregrounds) != len(alphas):
        raise ValueError(f"{len(foregrounds)} foregrounds but {len(alphas)} alphas")
    result = background
    for fg, alpha in zip(reversed(foregrounds), reversed(alphas), strict=True):
        result = fg + (1 - alpha[..., None]) * result
    return result


def straighten(premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight RGB from premultiplied RGB: `rgb / a` where a > 0 (black where fully transparent)."""
    safe = np.where(alpha > 1e-3, alpha, 1.0)[..., None]
    return np.clip(np.where(alpha[..., None] > 1e-3, premultiplied / safe, 0.0), 0, 1)


@dataclass(frozen=True, kw_only=True)
class LayeredVideo:
    """One generated (or ground-truth) layered clip; foregrounds are premultiplied, nearest first."""

    full: np.ndarray
    background: np.ndarray
    foregrounds: list[np.ndarray]
    alphas: list[np.ndarray]
    fps: int = 8

    @property
    def straight(self) -> list[np.ndarray]:
        """Straight (unpremultiplied) RGB of each foreground, what editors expect beside an alpha."""
        return [straighten(f, a) for f, a in zip(self.foregrounds, self.alphas, strict=True)]

    def recomposite(self, background: np.ndarray | None = None, order: Sequence[int] | None = None) -> np.ndarray:
        """Re-composite with another background and/or a subset or new depth order of the foregrounds.

        `order` lists foreground indices nearest first: `[1, 0]` swaps two layers, `[0]` removes the second.
        """
        order = range(len(self.foregrounds)) if order is None else order
        bg = self.background if background is None else background
        return over([self.foregrounds[i] for i in order], [self.alphas[i] for i in order], bg)

    def write(self, folder: Path | str, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
        """Write every layer: full/background MP4; per foreground ProRes 4444 .mov, VP9 alpha .webm and an
        RGBA PNG sequence; plus a contact sheet and a GIF preview. Returns name -> path."""
        from layert2v import io  # here, not at the top: the compositing maths (and the training objective
        # through `diffusion`) must import where PyAV is not installed, as on a GPU image

        folder = Path(folder)
        written: dict[str, Path] = {}
        if "mp4" in formats:
            for name, video in (("full", self.full), ("background", self.background)):
                written[name] = folder / f"{name}.mp4"
                io.write_video(written[name], io.to_uint8(video), self.fps)
        for k, (rgb, alpha) in enumerate(zip(self.straight, self.alphas, strict=True), start=1):
            rgb8, alpha8 = io.to_uint8(rgb), io.to_uint8(alpha)
            if "mov" in formats:
                written[f"fg_{k}_mov"] = folder / f"foreground_{k}.mov"
                io.write_prores_alpha(written[f"fg_{k}_mov"], rgb8, alpha8, self.fps)
            if "webm" in formats:
                written[f"fg_{k}_webm"] = folder / f"foreground_{k}.webm"
                io.write_webm_alpha(written[f"fg_{k}_webm"], rgb8, alpha8, self.fps)
            if "png" in formats:
                io.write_png_sequence(folder / f"foreground_{k}_png", rgb8, alpha8)
                written[f"fg_{k}_png"] = folder / f"foreground_{k}_png"
        written["contact_sheet"] = io.contact_sheet(self.preview_rows(), folder / "contact_sheet.png")
        written["gif"] = io.write_gif(folder / "preview.gif", self.preview_strip(), self.fps)
        return written

    def preview_rows(self) -> dict[str, np.ndarray]:
        """uint8 RGB rows for a contact sheet: full, background, then each foreground and its alpha."""
        from layert2v.io import to_uint8

        rows = {"full": to_uint8(self.full), "background": to_uint8(self.background)}
        for k, (fg, alpha) in enumerate(zip(self.foregrounds, self.alphas, strict=True), start=1):
            rows[f"fg {k}"] = to_uint8(fg)
            rows[f"alpha {k}"] = to_uint8(np.repeat(alpha[..., None], 3, axis=-1))
        return rows

    def preview_strip(self) -> np.ndarray:
        """Frames `[T, H, W * n, 3]` with every preview row side by side, for the GIF."""
        return np.concatenate(list(self.preview_rows().values()), axis=2)
