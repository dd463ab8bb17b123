"""The autoencoder's ceiling: the true layers of validation clips through the VAE and back.

No DiT on these latents can draw better layers than the VAE decodes from the true latents, so the round trip
of ground truth bounds every sample metric. Measured the way samples are (`evaluate.sample_metrics`), on the
first `count` clips of a split by clip id, with the layers decoded as the pipeline decodes them (alpha through
the alpha path, each foreground clipped to its alpha):

- `ceiling_shape_adherence`, `ceiling_colour_adherence`: share of foregrounds whose shape / colour the metric
  still recognises after the round trip;
- `ceiling_alpha_iou`: IoU of the decoded and the true matte (binarised at 0.5), over every frame;
- `ceiling_psnr_rgb`: PSNR of the decoded against the true full video;
- `ceiling_coherence_db`: coherence of the decoded layers (do they still add up to the decoded full video);
- `ceiling_blockiness`: `metrics.blockiness` of the decoded full video (ground truth scores about 1);
- `ceiling_alpha_stutter`: `metrics.stutter` of the decoded mattes (ground truth scores about 0: a matte that
  holds still inside each latent frame and jumps at the next scores up to 1);
- `ceiling_foregrounds`: how many foregrounds the shares were judged on.

Stage 1 gates its VAE on these (`train.stage1.gate`), and the evaluate stage reports them beside the samples'.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from layert2v.compose import LayeredVideo
from layert2v.metrics import adherence, blockiness, coherence, psnr, stutter
from layert2v.models.vae import LayerVAE


def true_clips(prepared: Path, count: int, split: str = "val") -> list[tuple[LayeredVideo, list[dict]]]:
    """The first `count` clips of `split` by clip id as float layered videos, with their foregrounds' attributes."""
    manifest = pd.read_parquet(Path(prepared) / "manifest.parquet")
    rows = manifest[manifest["split"] == split].sort_values("clip_id").head(count)
    if rows.empty:
        raise ValueError(f"{prepared} has no clips in split '{split}' to measure the VAE on")
    folder = Path(prepared) / "cache" / split
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("full", "background", "foreground", "alpha")}
    clips = []
    for row in rows.itertuples():
        layers = range(int(row.layer_start), int(row.layer_start) + int(row.num_fg))
        as_float = lambda a: np.asarray(a, dtype=np.float32) / 255.0  # noqa: E731
        video = LayeredVideo(
            full=as_float(arrays["full"][row.cache_row]),
            background=as_float(arrays["background"][row.cache_row]),
            foregrounds=[as_float(arrays["foreground"][i]) for i in layers],
            alphas=[as_float(arrays["alpha"][i]) for i in layers],
        )
        clips.append((video, json.loads(row.attributes).get("foregrounds", [])))
    return clips


@torch.no_grad()
def round_trip(vae: LayerVAE, video: LayeredVideo) -> LayeredVideo:
    """Every layer of `video` encoded and decoded by `vae` (RGB `[T, H, W, 3]`, alpha `[T, H, W]`)."""
    to_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x)).permute(3, 0, 1, 2)[None]  # noqa: E731
    to_array = lambda x: x[0].permute(1, 2, 3, 0).numpy()  # noqa: E731
    rgb = lambda x: to_array(vae.decode_rgb(vae.encode_rgb(to_tensor(x))))  # noqa: E731
    alphas = [to_array(vae.decode_alpha(vae.encode_alpha(to_tensor(a[..., None]))))[..., 0] for a in video.alphas]
    foregrounds = [np.minimum(rgb(f), a[..., None]) for f, a in zip(video.foregrounds, alphas, strict=True)]
    return LayeredVideo(
        full=rgb(video.full), background=rgb(video.background), foregrounds=foregrounds, alphas=alphas, fps=video.fps
    )


def alpha_iou(decoded: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """IoU of the binarised mattes over every layer and frame (1 when both are empty)."""
    pred, true = np.stack(decoded) > 0.5, np.stack(truth) > 0.5
    union = (pred | true).sum()
    return 1.0 if union == 0 else float((pred & true).sum() / union)


def vae_ceiling(vae: LayerVAE, prepared: Path, count: int, split: str = "val") -> dict[str, float]:
    """The round-trip figures of the module docstring, over the first `count` clips of `split`."""
    vae = vae.eval()
    rows, weights = [], []
    for truth, attributes in true_clips(prepared, count, split):
        decoded = round_trip(vae, truth)
        rows.append(
            adherence(decoded, attributes)
            | {
                "alpha_iou": alpha_iou(decoded.alphas, truth.alphas),
                "psnr_rgb": min(psnr(decoded.full, truth.full), 100.0),
                "coherence_db": min(coherence(decoded), 100.0),
                "blockiness": blockiness(decoded.full, vae.cfg.vae_cell),
                "alpha_stutter": float(np.mean([stutter(a) for a in decoded.alphas])),
            }
        )
        weights.append(len(truth.alphas))
    frame = pd.DataFrame(rows)
    shares = {k: float(np.average(frame[k], weights=weights)) for k in ("shape_adherence", "colour_adherence")}
    medians = {k: float(frame[k].median()) for k in ("psnr_rgb", "coherence_db", "blockiness", "alpha_stutter")}
    figures = shares | {"alpha_iou": float(frame["alpha_iou"].mean())} | medians | {"foregrounds": float(sum(weights))}
    return {f"ceiling_{k}": v for k, v in figures.items()}
