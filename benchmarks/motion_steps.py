"""Do the layers move as the true ones do, or hold still inside each latent frame and jump at the next?

Run: `.venv/bin/python benchmarks/motion_steps.py --prepared DIR [--vae DIR] [--model DIR] [--clips 32]`.

For each step between consecutive frames, the IoU of the binarised mattes (`metrics.step_ious`) averaged over
every foreground layer, and the share of layers whose matte jumps (IoU below 0.3), for: the true layers of the first
`--clips` validation clips; their round trip through `--vae` (a stage-1 folder: what the autoencoder can carry);
and `--model`'s samples of the same clips' captions (evaluate's sampler and seed). The autoencoders code frame 0
alone and then four frames per latent frame, so the steps 0 -> 1 and 4 -> 5 cross a latent frame's border; a layer
that holds still inside latent frames shows IoU near 1 inside them and low IoU across (`metrics.stutter`). A second
table gives the full video's mean absolute change per step (pixels in [0, 1]), truth against the round trip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from layert2v.ceiling import round_trip, true_clips
from layert2v.config import EvaluateConfig
from layert2v.evaluate import generate, validation_prompts
from layert2v.metrics import step_ious, stutter
from layert2v.models.checkpoint import load_vae
from layert2v.pipeline import LayerT2VPipeline

JUMP = 0.3  # a step whose matte IoU falls below this moved the layer by about its own size in one frame


def row(name: str, alphas: list[np.ndarray]) -> str:
    ious = np.array([step_ious(a) for a in alphas])
    cells = [f"{m:.2f} ({j:.0%})" for m, j in zip(ious.mean(0), (ious < JUMP).mean(0), strict=True)]
    return (
        f"| {name} ({len(alphas)} layers) | " + " | ".join(cells) + f" | {np.mean([stutter(a) for a in alphas]):.2f} |"
    )


def change_row(name: str, videos: list[np.ndarray]) -> str:
    steps = np.mean([np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3)) for v in videos], axis=0)
    return f"| {name} | " + " | ".join(f"{x:.3f}" for x in steps) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--vae", type=Path, default=None, help="a stage-1 folder: the true layers' round trip")
    parser.add_argument("--model", type=Path, default=None, help="a pipeline folder: its samples of the captions")
    parser.add_argument("--clips", type=int, default=32)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    clips = true_clips(args.prepared, args.clips)
    frames = len(clips[0][0].full)
    header = " | ".join(f"{i} -> {i + 1}" for i in range(frames - 1))
    print(f"matte IoU per step between frames (share of layers that jump, IoU < {JUMP}); stutter\n")
    print(f"| layers | {header} | stutter |\n|---|" + "---|" * frames)
    print(row("true", [a for video, _ in clips for a in video.alphas]))
    trips = []
    if args.vae:
        vae = load_vae(args.vae).eval()
        trips = [round_trip(vae, video) for video, _ in clips]
        print(row("through the VAE", [a for video in trips for a in video.alphas]))
    if args.model:
        pipe = LayerT2VPipeline.from_folder(args.model, backend="torch")
        size = clips[0][0].full.shape[1:3]
        samples = [
            generate(pipe, p, EvaluateConfig(), frames, size) for p in validation_prompts(args.prepared, args.clips, 3)
        ]
        print(row("samples", [a for video in samples for a in video.alphas]))
    print(f"\nfull video, mean absolute change per step\n\n| video | {header} |\n|---|" + "---|" * (frames - 1))
    print(change_row("true", [video.full for video, _ in clips]))
    if trips:
        print(change_row("through the VAE", [video.full for video in trips]))


if __name__ == "__main__":
    main()
