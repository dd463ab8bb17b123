"""Quality metrics of layered video: pure functions on arrays in [0, 1] (RGB `[T, H, W, 3]`, alpha `[T, H, W]`).

- cross-layer coherence: PSNR of the full video against the re-composited layers (do the layers add up?);
- alpha quality: binarity (share of clearly transparent or opaque pixels), edge width (soft pixels per
  boundary pixel), temporal IoU stability of the binarised matte, and its stutter (still inside the autoencoders'
  latent frames, jumping across them);
- background stability: mean absolute frame-to-frame change of the background;
- blockiness: how much more the image steps across the autoencoder's cell boundaries than inside them;
- prompt adherence on the synthetic vocabulary: the dominant colour inside a foreground's alpha and the
  best-matching template shape, compared with the attributes its caption names; a background's colour pair;
- matting errors of a matte against the true one (MAD, MSE, Grad, Conn, dtSSD), as RobustVideoMatting's
  evaluation defines them (Lin et al. 2021, `evaluation/evaluate_hr.py`), averaged over frames.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
from scipy import ndimage

from layert2v.compose import LayeredVideo, over
from layert2v.data.synthetic import BG_COLOURS, COLOURS, SHAPES, shape_sdf
from layert2v.models.layout import TEMPORAL_COMPRESSION


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


def step_ious(alpha: np.ndarray) -> list[float]:
    """IoU of the binarised matte between each frame and the next (1 where both are empty)."""
    ious = []
    for a, b in itertools.pairwise(alpha > 0.5):
        union = (a | b).sum()
        ious.append(1.0 if union == 0 else float((a & b).sum() / union))
    return ious


def temporal_iou(alpha: np.ndarray) -> float:
    """Mean IoU of the binarised matte between consecutive frames (1 = perfectly stable)."""
    ious = step_ious(alpha)
    return float(np.mean(ious)) if ious else 1.0


def stutter(alpha: np.ndarray, group: int = TEMPORAL_COMPRESSION) -> float:
    """How much more a matte holds still inside the autoencoders' latent frames than across them: the mean IoU of
    consecutive frames within a latent frame minus that of the steps across a border (frame 0 is a latent frame of
    its own, then `group` frames each, so step i -> i + 1 crosses a border when i % group == 0). The true clips'
    motion scores about 0; a layer that holds still for `group` frames and then jumps scores up to 1."""
    ious = step_ious(alpha)
    across = [iou for i, iou in enumerate(ious) if i % group == 0]
    within = [iou for i, iou in enumerate(ious) if i % group]
    return float(np.mean(within) - np.mean(across)) if within and across else 0.0


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


def background_colours(rgb: np.ndarray) -> set[str]:
    """The two background palette colours whose blend explains a frame `[H, W, 3]` best: every pixel is
    projected onto the segment between the two colours and the pair with the least mean squared residual wins.
    Every synthetic pattern (gradient, stripes, checkers, noise) blends its two colours, and a textured solid lies
    on every segment that ends at its colour; on 200 true validation backgrounds the right pair (or, for a solid,
    a pair holding its colour) wins every time."""
    pixels = np.asarray(rgb, np.float64).reshape(-1, 3)
    names = list(BG_COLOURS)
    palette = np.array([BG_COLOURS[n] for n in names])
    best, best_error = (0, 1), np.inf
    for i, j in itertools.combinations(range(len(names)), 2):
        start, step = palette[i], palette[j] - palette[i]
        weight = np.clip((pixels - start) @ step / (step @ step), 0, 1)
        error = float(np.mean(np.sum((pixels - start - weight[:, None] * step) ** 2, axis=1)))
        if error < best_error:
            best, best_error = (i, j), error
    return {names[i] for i in best}


def background_adherence(background: np.ndarray, attributes: dict) -> bool:
    """Whether the background's middle frame shows the colours its prompt names (`attributes["background"]`'s
    `colours`; a `textured` solid names only its first)."""
    found = background_colours(background[len(background) // 2])
    named = attributes["colours"]
    return named[0] in found if attributes["kind"] == "textured" else found == set(named)


def adherence(video: LayeredVideo, attributes: list[dict]) -> dict[str, float]:
    """Share of foregrounds whose dominant colour / shape (middle frame) matches the recorded attributes, and share
    drawn empty (no alpha above 0.5 in the middle frame): a layer the user asked for and did not get, which
    composites back to the full video for free, so coherence alone rewards it."""
    middle = len(video.full) // 2
    colours, shapes, empty = [], [], []
    for rgb, alpha, attr in zip(video.straight, video.alphas, attributes, strict=False):
        colours.append(dominant_colour(rgb[middle], alpha[middle]) == attr["colour"])
        shapes.append(shape_of(alpha[middle]) == attr["shape"])
        empty.append(not (alpha[middle] > 0.5).any())
    return {
        "colour_adherence": float(np.mean(colours)),
        "shape_adherence": float(np.mean(shapes)),
        "empty_layers": float(np.mean(empty)),
    }


def layered_metrics(video: LayeredVideo, cell: int) -> dict[str, float]:
    """Coherence, alpha quality (averaged over foregrounds), background stability and blockiness (at the
    autoencoder's `cell`) of one clip."""
    return {
        "coherence_db": coherence(video),
        "alpha_binarity": float(np.mean([binarity(a) for a in video.alphas])),
        "alpha_edge_width": float(np.mean([edge_width(a) for a in video.alphas])),
        "alpha_temporal_iou": float(np.mean([temporal_iou(a) for a in video.alphas])),
        "alpha_stutter": float(np.mean([stutter(a) for a in video.alphas])),
        "background_change": background_change(video.background),
        "blockiness": blockiness(video.full, cell),
    }


# ---------------------------------------------------------------- matting errors (RobustVideoMatting's definitions)


@cache
def _gradient_filters(sigma: float = 1.4, epsilon: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """The first-derivative-of-Gaussian filters of the Grad error (x, then y), normalised to unit energy."""
    half = np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * epsilon)))
    offsets = np.arange(-half, half + 1)
    gauss = np.exp(-(offsets**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))
    filter_x = gauss[:, None] * (-offsets * gauss / sigma**2)[None, :]
    filter_x /= np.sqrt((filter_x**2).sum())
    return filter_x, filter_x.T


def _gradient_magnitude(alpha: np.ndarray) -> np.ndarray:
    low, high = alpha.min(), alpha.max()
    normed = (alpha - low) / (high - low) if high > low else np.zeros_like(alpha)
    gx, gy = (ndimage.correlate(normed, f, mode="nearest") for f in _gradient_filters())
    return np.sqrt(gx**2 + gy**2)


def _connectivity_error(pred: np.ndarray, true: np.ndarray, step: float = 0.1) -> float:
    """Conn: how far each pixel's alpha lies above the level at which it leaves the largest region both mattes
    share (4-connected), compared between the mattes."""
    levels = np.arange(0, 1 + step, step)
    round_down = -np.ones_like(true)
    for previous, level in itertools.pairwise(levels):
        labels, count = ndimage.label((true >= level) & (pred >= level))
        largest = np.zeros_like(true, dtype=bool)
        if count:
            largest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        round_down[(round_down == -1) & ~largest] = previous
    round_down[round_down == -1] = 1
    phi = lambda a: 1 - (a - round_down) * ((a - round_down) >= 0.15)  # noqa: E731
    return float(np.abs(phi(true) - phi(pred)).sum() / 1000)


def matting_errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAD and MSE (x 1e3), Grad and Conn (/ 1e3, summed over a frame), dtSSD (x 1e2, the temporal gradient's
    error) of a matte `[T, H, W]` in [0, 1] against the true one, each averaged over frames: lower is better."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"mattes differ in shape: {pred.shape} against {true.shape}")
    grad = [
        ((_gradient_magnitude(p) - _gradient_magnitude(t)) ** 2).sum() / 1000 for p, t in zip(pred, true, strict=True)
    ]
    dt = np.diff(pred, axis=0) - np.diff(true, axis=0)
    return {
        "mad": float(np.abs(pred - true).mean() * 1e3),
        "mse": float(((pred - true) ** 2).mean() * 1e3),
        "grad": float(np.mean(grad)),
        "conn": float(np.mean([_connectivity_error(p, t) for p, t in zip(pred, true, strict=True)])),
        "dtssd": float(np.sqrt((dt**2).sum(axis=(1, 2)) / dt[0].size).mean() * 1e2) if len(dt) else 0.0,
    }
