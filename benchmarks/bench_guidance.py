"""Guidance's unconditional branch on every n-th guided step (`generate --guidance-every n`): what `generate` gains and
what the samples keep, side by side in one run.

Run: `.venv/bin/python benchmarks/bench_guidance.py --model <model folder> [--onnx <its export> --precision int8]
[--prepared <prepared folder> --clips 32] [--every 1 2 3] [--passes 5]`.

Below `guidance_sigma` a step runs the conditional branch alone already; above it both branches run, a batch of 2.
With n > 1 the guided steps between every n-th run the conditional branch alone and reuse the last difference
(`sampling.guided`). Two tables:
- `generate` (9 x 64 x 64, `generate`'s defaults, the backend probe's prompts) per K and n, the median over
  `--passes` alternating passes of the median of `--repeats` calls, and each n's full video against n = 1's (PSNR);
- with `--prepared`: `evaluate`'s figures on the first `--clips` validation prompts (the evaluate sampler) per n.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import summary_table
import torch
from bench_int8 import alternating

from layert2v.config import load_params
from layert2v.evaluate import evaluate_pipeline, validation_prompts
from layert2v.export.probe import PROMPTS, foreground_prompts
from layert2v.hostcache import cpu_model
from layert2v.metrics import psnr
from layert2v.pipeline import LayerT2VPipeline

ROOT = Path(__file__).resolve().parents[1]


def generate_table(pipe: LayerT2VPipeline, args) -> None:
    calls = {
        (n, k): lambda n=n, k=k: pipe.generate(*PROMPTS, foreground_prompts(k), guidance_every=n)
        for k in range(1, pipe.cfg.max_fg + 1)
        for n in args.every
    }
    times = alternating(calls, args)
    print("\n`generate`, 20 steps, 9 x 64 x 64: median s (the passes); speed-up over n = 1; full video vs n = 1's")
    print("| K | " + " | ".join(f"n = {n}" for n in args.every) + " | speed-up | PSNR vs n = 1 |")
    print("|---|" + "---|" * (len(args.every) + 2))
    for k in range(1, pipe.cfg.max_fg + 1):
        median = {n: statistics.median(times[n, k]) for n in args.every}
        cells = [f"{median[n]:.2f} ({' / '.join(f'{s:.2f}' for s in times[n, k])})" for n in args.every]
        first = np.asarray(calls[args.every[0], k]().full)
        gain = ", ".join(f"{median[args.every[0]] / median[n]:.2f}x" for n in args.every[1:])
        gaps = ", ".join(f"{psnr(first, np.asarray(calls[n, k]().full)):.1f} dB" for n in args.every[1:])
        print(f"| {k} | " + " | ".join(cells) + f" | {gain} | {gaps} |")


def quality_table(pipe: LayerT2VPipeline, args) -> None:
    params = load_params(args.params)
    prompts = validation_prompts(args.prepared, args.clips, pipe.cfg.max_fg)
    size = (params.prepare.height, params.prepare.width)
    print(f"\nevaluate's figures, first {len(prompts)} validation prompts, K = 1..{pipe.cfg.max_fg}")
    print(summary_table.header(["n"], tail=("empty layers", "seconds")))
    for n in args.every:
        cfg = dataclasses.replace(params.evaluate, guidance_every=n)
        start = time.perf_counter()
        summary, _ = evaluate_pipeline(pipe, prompts, cfg, params.prepare.frames, size)
        tail = (f"{summary['empty_layers']:.0%}", f"{time.perf_counter() - start:.0f}")
        print(summary_table.row([str(n)], summary, tail=tail), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, default=None, help="an export folder: time its graphs, not torch")
    parser.add_argument("--precision", default=None, help="the graphs' precision (fp32, int8)")
    parser.add_argument("--prepared", type=Path, default=None, help="prepared data: evaluate's figures on its prompts")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    graphs = {} if args.onnx is None else {"backend": "onnxruntime", "onnx": args.onnx, "precision": args.precision}
    pipe = LayerT2VPipeline.from_folder(args.model, **graphs)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, {pipe.backend} {args.precision or ''}")
    generate_table(pipe, args)
    if args.prepared is not None:
        quality_table(pipe, args)


if __name__ == "__main__":
    main()
