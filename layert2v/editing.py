"""Editing with the same model: layers a user keeps, held fixed while the others are sampled.

Every layer is a segment of one sequence (`models/layout.py`), so a kept layer is a *known segment*: VAE-encoded
once and held on its noise path while the rest is sampled (`sampling.with_known`, no retraining). The four user
tasks are that one mechanism:

- foreground(s) for a given background:       `Given(background=...)`
- a new background behind kept foregrounds:   `Given(foregrounds={k: (rgb, alpha)})`
- one layer regenerated, the others kept:     `Given` of every other layer (`LayerT2VPipeline.regenerate`)
- decomposition of a plain video:             `Given(full=...)` (`LayerT2VPipeline.decompose`)

The output's given layers are the user's own pixels, not a VAE round trip of them. This module holds `Given`,
the readers of layer files, and a classical decomposition to compare with (`classical_decompose`).

Shapes: T frames, H x W pixels; RGB float `[T, H, W, 3]` and alpha float `[T, H, W]`, in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from layert2v import io
from layert2v.compose import LayeredVideo
from layert2v.models.layout import Layout
from layert2v.models.vae import LayerVAE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PREMULTIPLIED_SLACK = 0.1  # a foreground whose RGB exceeds its alpha by more than this on over 1% of its values is
# straight, not premultiplied (codec noise in real files stays under it)


@dataclass(frozen=True)
class Given:
    """Layers the user keeps. `background` may be one still `[H, W, 3]` (held for every frame); foregrounds are
    premultiplied RGB with their alpha, keyed by index (0 = nearest)."""

    background: np.ndarray | None = None
    foregrounds: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    full: np.ndarray | None = None

    def resolved(self, frames: int, height: int, width: int, num_fg: int) -> Given:
        """This `Given` checked against the request (a still background held for every frame); `ValueError`
        naming the layer and the rule."""
        background = self.background
        if background is not None and background.ndim == 3:
            background = np.broadcast_to(background, (frames, *background.shape))
        for name, rgb in (("background", background), ("full video", self.full)):
            if rgb is not None:
                _check_rgb(name, rgb, frames, height, width)
        for k, (rgb, alpha) in self.foregrounds.items():
            if not 0 <= k < num_fg:
                raise ValueError(f"foreground {k + 1} is given, but the request has {num_fg} foreground layer(s)")
            _check_rgb(f"foreground {k + 1}", rgb, frames, height, width)
            _check_alpha(f"foreground {k + 1}", alpha, frames, height, width)
            if (rgb > alpha[..., None] + PREMULTIPLIED_SLACK).mean() > 0.01:
                raise ValueError(f"foreground {k + 1} is not premultiplied: its RGB exceeds its alpha")
        return replace(self, background=background)

    def known_latents(self, vae: LayerVAE, layout: Layout) -> dict[int, torch.Tensor]:
        """Segment index -> latent of every given layer (encoded once)."""
        rgb = lambda x: vae.encode_rgb(_tensor(x))  # noqa: E731
        alpha = lambda a: vae.encode_alpha(_tensor(a[..., None]))  # noqa: E731
        fgs = [rgb(self.foregrounds[k][0]) if k in self.foregrounds else None for k in range(layout.num_fg)]
        alphas = [alpha(self.foregrounds[k][1]) if k in self.foregrounds else None for k in range(layout.num_fg)]
        full = rgb(self.full) if self.full is not None else None
        background = rgb(self.background) if self.background is not None else None
        segments = layout.order(full, background, fgs, alphas)
        return {i: z for i, z in enumerate(segments) if z is not None}

    def apply(self, video: LayeredVideo) -> LayeredVideo:
        """`video` with the given layers put back as given (the user's pixels, not their VAE round trip)."""
        foregrounds, alphas = list(video.foregrounds), list(video.alphas)
        for k, (rgb, alpha) in self.foregrounds.items():
            foregrounds[k], alphas[k] = rgb.astype(np.float32), alpha.astype(np.float32)
        return replace(
            video,
            full=video.full if self.full is None else self.full.astype(np.float32),
            background=video.background if self.background is None else np.array(self.background, np.float32),
            foregrounds=foregrounds,
            alphas=alphas,
        )


def _tensor(x: np.ndarray) -> torch.Tensor:
    """`[T, H, W, C]` -> `[1, C, T, H, W]` float."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(3, 0, 1, 2)[None]


def _check_rgb(name: str, rgb: np.ndarray, frames: int, height: int, width: int) -> None:
    if rgb.shape != (frames, height, width, 3):
        raise ValueError(f"{name} is {_describe(rgb.shape)}; the request is {frames} frames of {height}x{width} RGB")
    if not np.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 1:
        raise ValueError(f"{name}: RGB values must be finite and in [0, 1]")


def _check_alpha(name: str, alpha: np.ndarray, frames: int, height: int, width: int) -> None:
    if alpha.shape != (frames, height, width):
        raise ValueError(
            f"{name}: alpha is {_describe(alpha.shape)}; the request is {frames} frames of {height}x{width}"
        )
    if not np.isfinite(alpha).all() or alpha.min() < 0 or alpha.max() > 1:
        raise ValueError(f"{name}: alpha must be finite and in [0, 1]")


def _describe(shape: tuple[int, ...]) -> str:
    if len(shape) == 4:
        return f"{shape[0]} frames of {shape[1]}x{shape[2]} with {shape[3]} channels"
    return f"shaped {list(shape)}"


# ---------------------------------------------------------------- layer files in


def read_rgb(path: Path) -> np.ndarray:
    """A video (`[T, H, W, 3]`) or a still image (`[H, W, 3]`) as float RGB; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        except OSError as err:
            raise ValueError(f"{path}: not a readable image ({err})") from err
    return io.read_video(path).astype(np.float32) / 255.0


def read_foreground(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A foreground layer file as `generate` writes it (ProRes 4444 `.mov`, VP9 alpha `.webm`, or an RGBA PNG
    sequence folder): straight RGBA in, premultiplied RGB and alpha out."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    rgba = io.read_png_sequence(path) if path.is_dir() else io.read_rgba(path)
    if rgba.ndim != 4 or len(rgba) == 0:
        raise ValueError(f"{path}: no RGBA frames (a foreground is a .mov, .webm or PNG-sequence folder with alpha)")
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    return rgba[..., :3].astype(np.float32) / 255.0 * alpha[..., None], alpha


# ---------------------------------------------------------------- layered output folders

MANIFEST = "layers.json"  # what a layered output folder holds: prompts, sizes, layer files, depth order


def layer_files(num_fg: int) -> dict[str, list[str]]:
    """Layer name -> the files `LayeredVideo.write` makes for it (names relative to the folder)."""
    files = {"full": ["full.mp4"], "background": ["background.mp4"]}
    for k in range(1, num_fg + 1):
        files[f"foreground_{k}"] = [f"foreground_{k}.mov", f"foreground_{k}.webm", f"foreground_{k}_png"]
    return files


def write_manifest(folder: Path, video: LayeredVideo, prompts: list[str], **extra: object) -> Path:
    """`layers.json`: the prompts (overall, background, foregrounds), sizes, fps, the files of each layer
    (nearest foreground first) and that foregrounds are written straight (unpremultiplied) beside their alpha."""
    frames, height, width = video.full.shape[:3]
    manifest = {
        "prompt": prompts[0],
        "background_prompt": prompts[1],
        "foreground_prompts": prompts[2:],
        "frames": frames,
        "height": height,
        "width": width,
        "fps": video.fps,
        "layers": layer_files(len(video.foregrounds)),
        "depth_order": "nearest first",
        "foreground_alpha": "straight",
    } | extra
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_layered(folder: Path) -> tuple[LayeredVideo, dict]:
    """A folder `generate` wrote: its layers (premultiplied foregrounds) and its manifest."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: not a layered output folder of `layert2v generate`")
    try:
        manifest = json.loads(path.read_text())
        count = len(manifest["foreground_prompts"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid layer manifest ({err})") from err
    layers = [read_foreground(folder / f"foreground_{k}.mov") for k in range(1, count + 1)]
    video = LayeredVideo(
        full=read_rgb(folder / "full.mp4"),
        background=read_rgb(folder / "background.mp4"),
        foregrounds=[f for f, _ in layers],
        alphas=[a for _, a in layers],
        fps=int(manifest.get("fps", 8)),
    )
    return video, manifest


# ---------------------------------------------------------------- the classical baseline


def classical_decompose(full: np.ndarray, threshold: float = 0.08, iterations: int = 1) -> LayeredVideo:
    """One foreground and a background from a plain video, without a model: the temporal median is the
    background, the matte is where a frame differs from it by more than `threshold` (mean over RGB), cleaned by
    a morphological opening and closing, and the foreground is the frame times the matte.

    Right only for a still camera with an object that moves enough to uncover what it hides: the point of
    comparing with the model."""
    background = np.median(full, axis=0, keepdims=True).repeat(len(full), axis=0)
    difference = np.abs(full - background).mean(axis=-1)
    raw = difference > threshold
    structure = np.ones((1, 3, 3), bool)
    cleaned = ndimage.binary_closing(ndimage.binary_opening(raw, structure, iterations), structure, iterations)
    alpha = cleaned.astype(np.float32)
    return LayeredVideo(full=full, background=background, foregrounds=[full * alpha[..., None]], alphas=[alpha])
