"""Freed memory kept in the process (`layert2v.allocator`) against glibc's defaults, side by side in one run.

Run: `.venv/bin/python benchmarks/bench_allocator.py [--model <model folder> [--onnx <its export>]] [--passes 3]`.

glibc unmaps or trims large freed blocks, so each large tensor allocated after them page-faults its memory back in;
importing `layert2v` raises glibc's thresholds so the memory stays (`LAYERT2V_MALLOC=system` keeps the defaults).
Each workload runs in a fresh interpreter per setting (the setting is process-wide), the two settings in turn for
`--passes` passes; a figure is the median over passes of the median of `--repeats` calls, with the minor page
faults per call. Workloads: stage 0's training step and decoding a K = 3 sample's eight layer streams (the default
autoencoder, `bench_vae.py`'s), the `small` DiT's training step at K = 1 and 3 (batch 8, `bench_dit.py`'s) and,
with `--model`, `generate` at K = 3 (20 steps) on torch and, with `--onnx`, on the int8 graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SETTINGS = {"kept": {}, "glibc defaults": {"LAYERT2V_MALLOC": "system"}}
VAE_CASES = {"stage-0 step": "stage-0 step", "decode K = 3": "decode K = 3 (8 streams)"}  # `bench_vae.cases` names


def workload(name: str, args: argparse.Namespace):
    """The call a worker times (imported here, after the worker's environment is set)."""
    if name in VAE_CASES:
        import bench_vae

        return bench_vae.cases(bench_vae.stage0_module())[VAE_CASES[name]]
    if name.startswith("DiT step"):
        import bench_dit

        from layert2v.config import model_preset
        from layert2v.models.dit import LayerDiT

        torch.manual_seed(0)
        cfg = model_preset("small")
        return bench_dit.step_fn(LayerDiT(cfg), bench_dit.batch(cfg, int(name[-1]), 8), bf16=False)
    from layert2v.export.probe import PROMPTS, foreground_prompts
    from layert2v.pipeline import LayerT2VPipeline

    graphs = {"backend": "onnxruntime", "onnx": args.onnx, "precision": "int8"} if "int8" in name else {}
    pipe = LayerT2VPipeline.from_folder(args.model, **graphs)
    return lambda: pipe.generate(*PROMPTS, foreground_prompts(3), frames=9, height=64, width=64, steps=20)


def worker(args: argparse.Namespace) -> None:
    """Time one workload in this process; print seconds and page faults per call as JSON."""
    from timing import median_seconds

    call = workload(args.worker, args)
    call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = median_seconds(call, args.repeats)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (args.repeats + 1)
    print(json.dumps({"seconds": seconds, "faults": faults}))


def run_worker(name: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", name, "--repeats", str(args.repeats)]
    command += [
        *(["--model", str(args.model)] if args.model else []),
        *(["--onnx", str(args.onnx)] if args.onnx else []),
    ]
    done = subprocess.run(command, env=os.environ | env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a model folder: time generate on it too")
    parser.add_argument("--onnx", type=Path, default=None, help="its export folder: generate on the int8 graphs too")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from layert2v.hostcache import cpu_model

    names = [*VAE_CASES, "DiT step K=1", "DiT step K=3"]
    names += ["generate K = 3, torch"] * bool(args.model) + ["generate K = 3, int8"] * bool(args.model and args.onnx)
    runs = {(name, setting): [] for name in names for setting in SETTINGS}
    for _ in range(args.passes):
        for name in names:
            for setting, env in SETTINGS.items():
                runs[name, setting].append(run_worker(name, env, args))
    print(f"{cpu_model()}, {torch.get_num_threads()} threads; median s (passes), page faults per call")
    print("| workload | kept | glibc defaults | speed-up | faults: kept / glibc defaults |\n|---|---|---|---|---|")
    for name in names:
        median = {s: statistics.median(r["seconds"] for r in runs[name, s]) for s in SETTINGS}
        faults = {s: statistics.median(r["faults"] for r in runs[name, s]) for s in SETTINGS}
        seconds = {s: [f"{r['seconds']:.3f}" for r in runs[name, s]] for s in SETTINGS}
        cells = [f"{median[s]:.3f} ({' / '.join(seconds[s])})" for s in SETTINGS]
        ratio = median["glibc defaults"] / median["kept"]
        print(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {ratio:.2f}x | {faults['kept']:.0f} / {faults['glibc defaults']:.0f} |"
        )


if __name__ == "__main__":
    main()
