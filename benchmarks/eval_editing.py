"""The four editing tasks on held-out ground truth, side by side with free generation and the classical baseline.

Run: `.venv/bin/python benchmarks/eval_editing.py --model artifacts/train/stage3/model --clips 32
[--backend onnxruntime --onnx artifacts/export/onnx]`.
On the first `clips` clips of the `test` split (held-out colour-shape combinations; their layers are known), with
the clip's own captions and one seed:
- free:        plain generation (the unconditional reference for coherence and adherence);
- fg_for_bg:   the true background given, the foregrounds sampled;
- bg_for_fgs:  the true foregrounds given, background and full video sampled;
- regenerate:  every layer but the last foreground given, that one sampled from its caption;
- decompose:   the true full video given (model), and `editing.classical_decompose` on the same video.
Per task: coherence (median dB), colour / shape adherence of the *sampled* foregrounds, whether the given layers
came back exactly, seconds per clip; for decomposition: PSNR of the recovered background and IoU of the union of
the recovered mattes against the truth, for still and moving cameras apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from layert2v.ceiling import alpha_iou, true_clips
from layert2v.compose import LayeredVideo
from layert2v.editing import Given, classical_decompose
from layert2v.metrics import adherence, coherence, psnr
from layert2v.pipeline import LayerT2VPipeline


def captions(prepared: Path, count: int) -> list[tuple[list[str], bool]]:
    """Prompts (overall, background, foregrounds) and whether the camera is still, in `true_clips` order."""
    manifest = pd.read_parquet(prepared / "manifest.parquet")
    rows = manifest[manifest["split"] == "test"].sort_values("clip_id").head(count)
    out = []
    for row in rows.itertuples():
        fgs = json.loads(row.captions_foreground)[: int(row.num_fg)]
        still = json.loads(row.attributes).get("camera", {}).get("kind") == "still"
        out.append(([row.caption_full, row.caption_background, *fgs], still))
    return out


def union(alphas: list[np.ndarray]) -> np.ndarray:
    return np.max(np.stack(alphas), axis=0)


def run_task(pipeline: LayerT2VPipeline, task: str, truth: LayeredVideo, prompts: list[str], seed: int) -> dict:
    frames, height, width = truth.full.shape[:3]
    options = {"frames": frames, "height": height, "width": width, "seed": seed}
    k = len(truth.alphas)
    given = {
        "free": Given(),
        "fg_for_bg": Given(background=truth.background),
        "bg_for_fgs": Given(foregrounds=dict(enumerate(zip(truth.foregrounds, truth.alphas, strict=True)))),
        "regenerate": Given(
            background=truth.background,
            foregrounds={i: (truth.foregrounds[i], truth.alphas[i]) for i in range(k - 1)},
        ),
        "decompose": Given(full=truth.full),
    }[task]
    start = time.perf_counter()
    video = pipeline.generate(prompts[0], prompts[1], prompts[2:], given=given, **options)
    seconds = time.perf_counter() - start
    sampled = [i for i in range(k) if i not in given.foregrounds]
    return {"video": video, "sampled": sampled, "seconds": seconds}


def layer_figures(video: LayeredVideo, sampled: list[int], attributes: list[dict]) -> dict[str, float]:
    picked = LayeredVideo(
        full=video.full,
        background=video.background,
        foregrounds=[video.foregrounds[i] for i in sampled],
        alphas=[video.alphas[i] for i in sampled],
    )
    figures = {"coherence_db": min(coherence(video), 100.0)}
    if sampled:
        figures |= adherence(picked, [attributes[i] for i in sampled])
    return figures


def decomposition_figures(video: LayeredVideo, truth: LayeredVideo) -> dict[str, float]:
    return {
        "background_psnr": psnr(video.background, truth.background),
        "matte_iou": alpha_iou([union(video.alphas)], [union(truth.alphas)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="artifacts/train/stage3/model")
    parser.add_argument("--prepared", default="artifacts/prepared", type=Path)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--onnx", default=None, help="export folder (default: <model>/onnx)")
    args = parser.parse_args()
    pipeline = LayerT2VPipeline.from_folder(args.model, backend=args.backend, onnx=args.onnx)
    clips, texts = true_clips(args.prepared, args.clips, "test"), captions(args.prepared, args.clips)
    rows = []
    for (truth, attributes), (prompts, still) in zip(clips, texts, strict=True):
        for task in ("free", "fg_for_bg", "bg_for_fgs", "regenerate", "decompose"):
            result = run_task(pipeline, task, truth, prompts, args.seed)
            row = {"task": task, "still": still, "k": len(truth.alphas), "seconds": result["seconds"]}
            row |= layer_figures(result["video"], result["sampled"], attributes)
            if task == "decompose":
                row |= decomposition_figures(result["video"], truth)
            rows.append(row)
        classical = classical_decompose(truth.full)
        rows.append({"task": "classical", "still": still, "k": len(truth.alphas), "seconds": 0.0}
                    | decomposition_figures(classical, truth))  # fmt: skip
    report(pd.DataFrame(rows))


def report(frame: pd.DataFrame) -> None:
    print(f"{len(frame[frame.task == 'free'])} test clips (K = {sorted(int(k) for k in frame.k.unique())})")
    print(f"{'task':12s} {'coherence dB':>13s} {'colour':>7s} {'shape':>6s} {'s/clip':>7s}")
    for task, group in frame[frame.task != "classical"].groupby("task", sort=False):
        colour = group["colour_adherence"].mean() if "colour_adherence" in group else float("nan")
        shape = group["shape_adherence"].mean() if "shape_adherence" in group else float("nan")
        seconds = statistics.median(group["seconds"])
        print(f"{task:12s} {group['coherence_db'].median():13.1f} {colour:7.0%} {shape:6.0%} {seconds:7.2f}")
    print(f"\n{'decomposition':16s} {'camera':8s} {'clips':>5s} {'bg PSNR dB':>11s} {'matte IoU':>10s}")
    for (task, still), group in frame[frame.task.isin(["decompose", "classical"])].groupby(["task", "still"]):
        camera = "still" if still else "moving"
        print(
            f"{task:16s} {camera:8s} {len(group):5d} {group['background_psnr'].median():11.1f}"
            f" {group['matte_iou'].mean():10.2f}"
        )


if __name__ == "__main__":
    main()
