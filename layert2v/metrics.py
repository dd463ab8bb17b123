"""Quality metrics of layered video: pure functions on arrays in [0, 1] (RGB `[T, H, W, 3]`, alpha `[T, H, W]`).

- cross-layer coherence: PSNR of the full video against the re-composited layers (do the layers add up?);
- alpha quality: binarity (share of clearly transparent or opaque pixels), edge width (soft pixels per
  boundary pixel), temporal IoU stability of the binarised matte;
- background stability: mean absolute frame-to-frame change of the background;
- blockiness: how much more the image steps across the autoencoder's cell boundaries than inside them;
- prompt adherence on the synthetic vocabulary: the dominant colour inside a foreground's alpha and the
  best-matching template shape, compared with the attributes its caption names.
"""

from __future__ import annotations

import itertools

import numpy as np

from layert2v.compose import LayeredVideo, over
from layert2v.data.synthetic import COLOURS, SHAPES, shape_sdf


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def coherence(video: LayeredVideo) -> float:
    """PSNR (dB) of the full video against `over(foregrounds, alphas, background)`."""
    return psnr(video.full, over(video.foregrounds, video.alphas, video.background))


def binarity(alpha: np.ndarray, soft: float = 0.05) -> float:
    """Share of pixels with alpha within `soft` of 0 or 1."""
    return float(np.mean((alpha < soft) | (alpha > 1 - soft)))


def edge_width(alpha: np.ndarray, soft: float = 0.05) -> float:
    """Soft pixels per boundary pixel of the binarised matte: ~1 for a crisp anti-aliased edge."""
    inside = alpha > 0.5
    boundary = (inside != np.roll(inside, 1, axis=-1)) | (inside != np.roll(inside, 1, axis=-2))
    soft_pixels = (alpha > soft) & (alpha < 1 - soft)
    return float(soft_pixels.sum() / max(int(boundary.sum()), 1))


def temporal_iou(alpha: np.ndarray) -> float:
    """Mean IoU of the binarised matte between consecutive frames (1 = perfectly stable)."""
    masks = alpha > 0.5
    ious = []
    for a, b in itertools.pairwise(masks):
        union = (a | b).sum()
        ious.append(1.0 if union == 0 else (a & b).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def background_change(background: np.ndarray) -> float:
    """Mean absolute frame-to-frame change; near 0 where the camera is still."""
    return float(np.abs(np.diff(background, axis=0)).mean()) if len(background) > 1 else 0.0


def blockiness(rgb: np.ndarray, block: int) -> float:
    """Mean absolute step between neighbouring pixels across `block`-pixel boundaries, over the mean step
    inside blocks (both directions, all frames): about 1 for natural images, well above where a decoder draws
    its cell grid. `rgb` is `[T, H, W, 3]` in [0, 1]."""
    across, inside = [], []
    for axis in (1, 2):
        steps = np.abs(np.diff(np.asarray(rgb, np.float64), axis=axis))
        boundary = (np.arange(steps.shape[axis]) + 1) % block == 0
        across.append(np.compress(boundary, steps, axis=axis).mean())
        inside.append(np.compress(~boundary, steps, axis=axis).mean())
    return float(np.mean(across) / max(np.mean(inside), 1e-8))


def dominant_colour(rgb: np.ndarray, alpha: np.ndarray) -> str | None:
    """The palette colour nearest to the mean straight colour of opaque pixels (None when empty)."""
    solid = alpha > 0.5
    if not solid.any():
        return None
    mean = rgb[solid].mean(axis=0)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names])
    scaled = palette * (mean.max() / palette.max(axis=1, keepdims=True).clip(1e-3))  # shading darkens uniformly
    return names[int(np.argmin(((scaled - mean) ** 2).sum(axis=1)))]


def shape_of(alpha: np.ndarray, rotations: int = 12) -> str | None:
    """The template shape whose area-matched, best-rotated mask has the highest IoU with `alpha > 0.5`."""
    mask = alpha > 0.5
    if mask.sum() < 4:
        return None
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.mean() + 0.5) / size, (xs.mean() + 0.5) / size
    coords = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(coords, coords, indexing="xy")
    best, best_iou = None, -1.0
    for shape in SHAPES:
        unit = (shape_sdf(shape, (x - 0.5) / 0.25, (y - 0.5) / 0.25, 1.0, 0.0) < 0).mean() * 16  # area at radius 1
        radius = np.sqrt(mask.mean() / max(unit, 1e-6))
        for angle in np.linspace(0, 2 * np.pi / 3, rotations, endpoint=False):
            template = shape_sdf(shape, x - cx, y - cy, radius, angle) < 0
            iou = (template & mask).sum() / max((template | mask).sum(), 1)
            if iou > best_iou:
                best, best_iou = shape, iou
    return best


def adherence(video: LayeredVideo, attributes: list[dict]) -> dict[str, float]:
    """Share of foregrounds whose dominant colour / shape (middle frame) matches the recorded attributes."""
    middle = len(video.full) // 2
    colours, shapes = [], []
    for rgb, alpha, attr in zip(video.straight, video.alphas, attributes, strict=False):
        colours.append(dominant_colour(rgb[middle], alpha[middle]) == attr["colour"])
        shapes.append(shape_of(alpha[middle]) == attr["shape"])
    return {"colour_adherence": float(np.mean(colours)), "shape_adherence": float(np.mean(shapes))}


def layered_metrics(video: LayeredVideo, cell: int) -> dict[str, float]:
    """Coherence, alpha quality (averaged over foregrounds), background stability and blockiness (at the
    autoencoder's `cell`) of one clip."""
    return {
        "coherence_db": coherence(video),
        "alpha_binarity": float(np.mean([binarity(a) for a in video.alphas])),
        "alpha_edge_width": float(np.mean([edge_width(a) for a in video.alphas])),
        "alpha_temporal_iou": float(np.mean([temporal_iou(a) for a in video.alphas])),
        "background_change": background_change(video.background),
        "blockiness": blockiness(video.full, cell),
    }
