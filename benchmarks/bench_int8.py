"""The export's int8 graphs against its fp32 graphs and eager torch, side by side in one run: speed, error and what
the samples keep.

Run: `.venv/bin/python benchmarks/bench_int8.py --model <model folder> --onnx <its export, with int8 graphs>
[--prepared <prepared folder> --clips 32] [--passes 5]`.

On a CPU without bf16 kernels a denoising step is bound by its fp32 GEMMs (docs/results.md, "A real AVX2-only
host"); the int8 graphs (`export.onnx.quantize_step`) run those GEMMs on int8 weights and per-call quantized
activations. Three tables, every figure the median over `--passes` alternating passes of the median of `--repeats`
calls:
- the guided denoising step of the backend probe (`probe.guided_step`: batch 2, prompts of a user's length) per K
  on torch, onnxruntime fp32 and onnxruntime int8, with each graph's velocity error against torch's (the norm of
  the difference over the norm of torch's velocity, and the max abs difference);
- `generate` (the export's clip shape, `--steps` steps, `generate`'s other defaults) per K on the three, and how far
  the int8 pipeline's full video lands from torch's on the same seed (PSNR);
- with `--prepared`: `evaluate`'s figures on the first `--clips` validation prompts (the evaluate sampler) on torch
  and on the int8 graphs: what a user of the faster path gives up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import summary_table
import torch
from timing import median_seconds

from layert2v.config import load_params
from layert2v.evaluate import evaluate_pipeline, validation_prompts
from layert2v.export.folder import ClipShape, read_manifest
from layert2v.export.probe import PROMPTS, foreground_prompts, graph_ks, guided_step
from layert2v.hostcache import cpu_model
from layert2v.metrics import psnr
from layert2v.pipeline import LayerT2VPipeline

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("torch", "onnxruntime fp32", "onnxruntime int8")


def pipelines(model: Path, onnx: Path) -> dict[str, LayerT2VPipeline]:
    graphs = {"backend": "onnxruntime", "onnx": onnx}
    return {
        "torch": LayerT2VPipeline.from_folder(model),
        "onnxruntime fp32": LayerT2VPipeline.from_folder(model, **graphs),
        "onnxruntime int8": LayerT2VPipeline.from_folder(model, **graphs, precision="int8"),
    }


def alternating(calls: dict[tuple, callable], args: argparse.Namespace) -> dict[tuple, list[float]]:
    """Median seconds of each call per pass, the calls in turn within a pass."""
    times: dict[tuple, list[float]] = {key: [] for key in calls}
    with torch.no_grad():
        for _ in range(args.passes):
            for key, call in calls.items():
                times[key].append(median_seconds(call, args.repeats, warmup=1))
    return times


def step_table(pipes: dict[str, LayerT2VPipeline], ks: list[int], shape: ClipShape, args) -> None:
    calls, errors = {}, {}
    for k in ks:
        inputs = guided_step(pipes["torch"], k, shape)
        with torch.no_grad():
            reference = pipes["torch"].dit(*inputs.values())
        calls["torch", k] = lambda inputs=inputs: pipes["torch"].dit(*inputs.values())
        for name in PATHS[1:]:
            calls[name, k] = lambda k=k, inputs=inputs, name=name: pipes[name].denoiser.run(k, inputs)
            diff = calls[name, k]() - reference
            errors[name, k] = (float(diff.norm() / reference.norm()), float(diff.abs().max()))
    times = alternating(calls, args)
    print("\nguided denoising step (batch 2): median s; velocity error against torch: relative norm / max abs")
    print("| K | torch | onnxruntime fp32 | onnxruntime int8 | int8 / torch | int8 / fp32 | error fp32 | error int8 |")
    print("|---|---|---|---|---|---|---|---|")
    for k in ks:
        median = {name: statistics.median(times[name, k]) for name in PATHS}
        error = {name: f"{errors[name, k][0]:.2%} / {errors[name, k][1]:.3g}" for name in PATHS[1:]}
        print(
            f"| {k} | " + " | ".join(f"{median[n]:.4f}" for n in PATHS)
            + f" | {median['torch'] / median['onnxruntime int8']:.2f}x"
            + f" | {median['onnxruntime fp32'] / median['onnxruntime int8']:.2f}x"
            + f" | {error['onnxruntime fp32']} | {error['onnxruntime int8']} |"
        )  # fmt: skip


def generate_table(pipes: dict[str, LayerT2VPipeline], ks: list[int], shape: ClipShape, args) -> None:
    request = {"frames": shape.frames, "height": shape.height, "width": shape.width, "steps": args.steps}
    calls = {
        (name, k): lambda pipe=pipe, k=k: pipe.generate(*PROMPTS, foreground_prompts(k), **request)
        for k in ks
        for name, pipe in pipes.items()
    }
    times = alternating(calls, args)
    print(f"\ngenerate, {args.steps} steps, {shape.frames}x{shape.height}x{shape.width}: median s (passes)")
    print("| K | torch | onnxruntime fp32 | onnxruntime int8 | int8 / torch | int8's full video vs torch's |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        median = {name: statistics.median(times[name, k]) for name in PATHS}
        cells = [f"{median[n]:.2f} ({' / '.join(f'{s:.2f}' for s in times[n, k])})" for n in PATHS]
        videos = [calls[name, k]().full for name in ("torch", "onnxruntime int8")]
        gap = psnr(np.asarray(videos[0]), np.asarray(videos[1]))
        print(f"| {k} | " + " | ".join(cells) + f" | {median['torch'] / median[PATHS[2]]:.2f}x | {gap:.1f} dB |")


def quality_table(pipes: dict[str, LayerT2VPipeline], args) -> None:
    params = load_params(args.params)
    prompts = validation_prompts(args.prepared, args.clips, pipes["torch"].cfg.max_fg)
    size = (params.prepare.height, params.prepare.width)
    print(f"\nevaluate's figures, first {len(prompts)} validation prompts, K = 1..{pipes['torch'].cfg.max_fg}")
    print(summary_table.header(["path"], tail=("empty layers", "seconds")))
    for name in ("torch", "onnxruntime int8"):
        start = time.perf_counter()
        summary, _ = evaluate_pipeline(pipes[name], prompts, params.evaluate, params.prepare.frames, size)
        tail = (f"{summary['empty_layers']:.0%}", f"{time.perf_counter() - start:.0f}")
        print(summary_table.row([name], summary, tail=tail), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True, help="the model's export folder, with int8 graphs")
    parser.add_argument("--prepared", type=Path, default=None, help="prepared data: evaluate's figures on its prompts")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    print(f"{cpu_model()}, {torch.get_num_threads()} threads")
    manifest = read_manifest(args.onnx)
    shape, ks = ClipShape(**manifest["shape"]), graph_ks(manifest)
    pipes = pipelines(args.model, args.onnx)
    step_table(pipes, ks, shape, args)
    generate_table(pipes, ks, shape, args)
    if args.prepared is not None:
        quality_table(pipes, args)


if __name__ == "__main__":
    main()
