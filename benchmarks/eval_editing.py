"""The four editing tasks on held-out ground truth, side by side with free generation and the classical baseline.

Run: `.venv/bin/python benchmarks/eval_editing.py --model artifacts/train/stage3/model --clips 32
[--conditioning replace|clean] [--backend onnxruntime --onnx artifacts/export/onnx]`.
On the first `clips` clips of the `test` split (held-out colour-shape combinations; their layers are known), with
the clip's own captions and one seed:
- free:        plain generation (the unconditional reference for coherence and adherence);
- fg_for_bg:   the true background given, the foregrounds sampled;
- bg_for_fgs:  the true foregrounds given, background and full video sampled;
- regenerate:  every layer but the last foreground given, that one sampled from its caption;
- decompose:   the true full video given (model), and `editing.classical_decompose` on the same video.
Per task: coherence (median dB), colour / shape adherence of the *sampled* foregrounds, colour adherence of a
sampled background (`metrics.background_adherence`), seconds per clip; for decomposition: PSNR of the recovered
background, IoU and the matting errors (MAD, MSE, Grad, Conn, dtSSD; `metrics.matting_errors`) of the union of the
recovered mattes against the truth, for still and moving cameras apart. `--conditioning` picks how given layers
condition the model (default: what its folder says, `clean` for a model trained with `condition_dropout`).
`--sheets DIR` writes a contact sheet per task (and the truth) of the first clip with two or more foregrounds, and
`editing.png`, all of them stacked under their titles (the README's picture).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from layert2v import io
from layert2v.ceiling import alpha_iou, true_clips
from layert2v.compose import LayeredVideo
from layert2v.config import Request
from layert2v.editing import Given, classical_decompose
from layert2v.metrics import adherence, background_adherence, coherence, matting_errors, psnr
from layert2v.pipeline import LayerT2VPipeline


def captions(prepared: Path, count: int) -> list[tuple[list[str], bool, dict]]:
    """Prompts (overall, background, foregrounds), whether the camera is still and the background's attributes,
    in `true_clips` order."""
    manifest = pd.read_parquet(prepared / "manifest.parquet")
    rows = manifest[manifest["split"] == "test"].sort_values("clip_id").head(count)
    out = []
    for row in rows.itertuples():
        fgs = json.loads(row.captions_foreground)[: int(row.num_fg)]
        attributes = json.loads(row.attributes)
        still = attributes.get("camera", {}).get("kind") == "still"
        out.append(([row.caption_full, row.caption_background, *fgs], still, attributes["background"]))
    return out


TITLES = {
    "truth": "the clip (ground truth)",
    "free": "free generation from its captions",
    "fg_for_bg": "foregrounds generated for the true background (given)",
    "bg_for_fgs": "background and full video generated behind the true foregrounds (given)",
    "regenerate": "the last foreground regenerated, the other layers given",
    "decompose": "the full video given, decomposed into layers",
}


def stack_sheets(folder: Path) -> Path:
    """`editing.png`: the contact sheets of `TITLES`, each under its title, one above the other."""
    from PIL import Image, ImageDraw

    sheets = [(TITLES[name], Image.open(folder / f"{name}.png")) for name in TITLES]
    band = 18
    width = max(sheet.width for _, sheet in sheets)
    out = Image.new("RGB", (width, sum(sheet.height + band for _, sheet in sheets)), "white")
    draw, top = ImageDraw.Draw(out), 0
    for title, sheet in sheets:
        draw.text((4, top + 4), title, fill="black")
        out.paste(sheet, (0, top + band))
        top += band + sheet.height
    out.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(folder / "editing.png", optimize=True)  # a third
    return folder / "editing.png"


def union(alphas: list[np.ndarray]) -> np.ndarray:
    return np.max(np.stack(alphas), axis=0)


def run_task(
    pipeline: LayerT2VPipeline,
    task: str,
    truth: LayeredVideo,
    prompts: list[str],
    seed: int,
    conditioning: str | None,
    sampler: dict[str, float],
) -> dict:
    frames, height, width = truth.full.shape[:3]
    options = {"frames": frames, "height": height, "width": width, "seed": seed, "conditioning": conditioning}
    options |= sampler
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
    return {"video": video, "sampled": sampled, "seconds": seconds, "background_sampled": given.background is None}


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
    } | matting_errors(union(video.alphas), union(truth.alphas))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="artifacts/train/stage3/model")
    parser.add_argument("--prepared", default="artifacts/prepared", type=Path)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--onnx", default=None, help="export folder (default: <model>/onnx)")
    parser.add_argument("--conditioning", default=None, choices=["replace", "clean"], help="default: the model's")
    parser.add_argument("--sheets", type=Path, default=None, help="write a contact sheet per task here")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE",
        help="sampler fields of a request (steps=10 guidance_sigma=0 composite_sigma=1); default: generate's",
    )  # fmt: skip
    args = parser.parse_args()
    sampler = {}
    for item in args.set:
        name, value = item.split("=", 1)
        sampler[name] = type(getattr(Request, name))(value)
    pipeline = LayerT2VPipeline.from_folder(args.model, backend=args.backend, onnx=args.onnx)
    clips, texts = true_clips(args.prepared, args.clips, "test"), captions(args.prepared, args.clips)
    rows = []
    print(f"conditioning: {args.conditioning or pipeline.known_segments}")
    sheet_clip = next((i for i, (truth, _) in enumerate(clips) if len(truth.alphas) >= 2), None)
    for index, ((truth, attributes), (prompts, still, background)) in enumerate(zip(clips, texts, strict=True)):
        sheets = args.sheets if index == sheet_clip else None
        if sheets:
            sheets.mkdir(parents=True, exist_ok=True)
            io.contact_sheet(truth.preview_rows(), sheets / "truth.png")
            print(f"contact sheets of {prompts[0]!r} in {sheets}")
        for task in ("free", "fg_for_bg", "bg_for_fgs", "regenerate", "decompose"):
            result = run_task(pipeline, task, truth, prompts, args.seed, args.conditioning, sampler)
            if sheets:
                io.contact_sheet(result["video"].preview_rows(), sheets / f"{task}.png")
            row = {"task": task, "still": still, "k": len(truth.alphas), "seconds": result["seconds"]}
            row |= layer_figures(result["video"], result["sampled"], attributes)
            if result["background_sampled"]:
                row["background_adherence"] = float(background_adherence(result["video"].background, background))
            if task == "decompose":
                row |= decomposition_figures(result["video"], truth)
            rows.append(row)
        classical = classical_decompose(truth.full)
        rows.append({"task": "classical", "still": still, "k": len(truth.alphas), "seconds": 0.0}
                    | decomposition_figures(classical, truth))  # fmt: skip
    if sheet_clip is not None and args.sheets:
        print(f"picture: {stack_sheets(args.sheets)}")
    report(pd.DataFrame(rows))


def report(frame: pd.DataFrame) -> None:
    print(f"{len(frame[frame.task == 'free'])} test clips (K = {sorted(int(k) for k in frame.k.unique())})")
    print(f"{'task':12s} {'coherence dB':>13s} {'colour':>7s} {'shape':>6s} {'bg colour':>10s} {'s/clip':>7s}")
    mean = lambda group, name: group[name].mean() if name in group else float("nan")  # noqa: E731
    for task, group in frame[frame.task != "classical"].groupby("task", sort=False):
        colour, shape, bg = (mean(group, n) for n in ("colour_adherence", "shape_adherence", "background_adherence"))
        seconds = statistics.median(group["seconds"])
        print(f"{task:12s} {group['coherence_db'].median():13.1f} {colour:7.0%} {shape:6.0%} {bg:10.0%} {seconds:7.2f}")
    errors = ("mad", "mse", "grad", "conn", "dtssd")
    print(
        f"\n{'decomposition':14s} {'camera':7s} {'clips':>5s} {'bg dB':>6s} {'IoU':>5s}"
        + "".join(f"{e:>7s}" for e in errors)
    )
    for (task, still), group in frame[frame.task.isin(["decompose", "classical"])].groupby(["task", "still"]):
        camera = "still" if still else "moving"
        print(
            f"{task:14s} {camera:7s} {len(group):5d} {group['background_psnr'].median():6.1f}"
            f" {group['matte_iou'].mean():5.2f}" + "".join(f"{group[e].mean():7.2f}" for e in errors)
        )


if __name__ == "__main__":
    main()
