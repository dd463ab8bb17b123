"""Inference: one denoising step in PyTorch eager, `torch.compile` (plain, frozen weights, max-autotune), bf16 autocast
(eager and compiled) and onnxruntime CPU, and end-to-end `generate` per backend.

Run: `.venv/bin/python benchmarks/bench_infer.py [--preset small] [--repeats 7] [--model DIR]`.
Without `--model`, a randomly initialised `preset` pipeline is used (latency does not depend on the weights).
The ONNX graphs (fp32, every K, with their parity figures) are exported into a temp folder first. Every measurement runs in its own
subprocess, so each backend's peak RSS is its own; both get the same thread count.

- step: median seconds of `repeats` calls after two warm-ups (a compile happens in the first), batch 2 (both
  guidance branches), per K, with each path's max abs difference to fp32 eager on the same inputs;
- generate: median of 3 runs of 64x64, 9 frames, `--steps` sampler steps (after a warm-up run, which is where
  the `compile` backend compiles), with the share of the time spent in text encoding, the denoiser, compositing
  guidance (every step decodes the layers, composites them in pixels and encodes the result: `LayerVAE.composite`)
  and the final decode, and the worker's peak RSS; torch also without compositing guidance, for its cost, and with
  both guidances on every step (`guidance_sigma` 0, `composite_sigma` 1: the sampler before their intervals), and
  compile also in bf16 autocast. Other rows run `generate`'s defaults (`Request`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._inductor.config
from timing import median_seconds

from layert2v.config import ExportConfig, Request, model_preset
from layert2v.export.folder import ClipShape
from layert2v.export.onnx import export_model, step_inputs
from layert2v.models.dit import LayerDiT
from layert2v.models.layout import Layout
from layert2v.models.text import load_text_encoder
from layert2v.models.vae import LayerVAE
from layert2v.pipeline import LayerT2VPipeline

SHAPE = ClipShape(frames=9, height=64, width=64)
FG_PROMPTS = ["a red circle", "a blue star", "a green square"]
# exact (fp32) inductor variants of the step: plain; weights frozen as constants (oneDNN prepacks the linears);
# max-autotune (inductor times its C++ GEMM templates against the library's, per shape, while compiling)
COMPILE_PATHS = {"compile": None, "compile-freeze": None, "compile-autotune": "max-autotune-no-cudagraphs"}


class Timed:
    """A callable that adds its wall time to `total`: wraps pipeline parts to split `generate`."""

    def __init__(self, fn) -> None:
        self.fn, self.total = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total += time.perf_counter() - start


def prepare(preset: str, model: Path | None, folder: Path) -> Path:
    """A pipeline folder (given or random) with its fp32 graphs and parity figures in `<folder>/onnx`."""
    if model is None:
        torch.manual_seed(0)
        cfg = model_preset(preset)
        dit = LayerDiT(cfg)
        for table in (dit.head.head.weight, dit.layer_adaln, dit.instance_adaln):
            torch.nn.init.normal_(table, std=0.02)  # zero-initialised for training; parity needs a real output
        model = LayerT2VPipeline(dit, LayerVAE(cfg), load_text_encoder(None, cfg.text_len)).save(folder / "model")
    export_model(Path(model), folder / "onnx", SHAPE, ExportConfig(fp16=False, parity_samples=1))
    return Path(model)


def peak_rss_mib() -> float:
    """This worker's peak resident memory. Linux's `VmHWM` starts afresh at exec; `ru_maxrss` would carry over the
    forking benchmark's own peak (its exported graphs), which hid every backend's figure behind one number."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(row for row in status.read_text().splitlines() if row.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    graphs = ("onnxruntime", "tensorrt")  # a step path other than these is built on eager torch (its reference)
    backend, precision = args.backend.removesuffix("-bf16"), "bf16" if args.backend.endswith("-bf16") else None
    if not (backend in graphs or args.what == "generate"):
        backend, precision = "torch", None  # the step paths build their own variant on eager torch
    pipe = LayerT2VPipeline.from_folder(args.model, backend=backend, onnx=args.onnx, precision=precision)
    denoiser = pipe.denoiser or pipe.dit
    if args.what == "step":
        return step_worker(args, pipe)
    parts = {"text": Timed(pipe.encode_prompts), "denoiser": Timed(denoiser.forward_layout)}
    parts |= {"composite": Timed(pipe.vae.composite), "decode": Timed(pipe._decode)}
    pipe.encode_prompts, denoiser.forward_layout, pipe.vae.composite, pipe._decode = parts.values()
    request = {"frames": SHAPE.frames, "height": SHAPE.height, "width": SHAPE.width, "steps": args.steps}
    request |= {
        "composite_guidance": args.composite,
        "composite_sigma": args.composite_sigma,
        "guidance_sigma": args.guidance_sigma,
    }
    prompts = ("a scene", "a still grey wall", FG_PROMPTS[: args.k])
    pipe.generate(*prompts, **request | {"steps": 2})  # warm-up (session creation, first-call allocations)
    totals = []
    for part in parts.values():
        part.total = 0.0
    for seed in range(3):
        start = time.perf_counter()
        pipe.generate(*prompts, **request, seed=seed)
        totals.append(time.perf_counter() - start)
    whole = sum(totals)
    return {
        "seconds": statistics.median(totals),
        "share": {name: part.total / whole for name, part in parts.items()},
        "peak_rss_mib": peak_rss_mib(),
    }


def step_worker(args: argparse.Namespace, pipe: LayerT2VPipeline) -> dict:
    """One denoising step on the path `args.backend` (torch, a `COMPILE_PATHS` variant, bf16, compile-bf16, onnxruntime):
    median seconds and the max abs difference of its output to fp32 eager."""
    inputs = step_inputs(pipe.cfg, Layout(args.k), SHAPE, batch=2, seed=0)
    with torch.no_grad():
        reference = pipe.dit(*inputs.values())
        if pipe.denoiser is not None:
            call = lambda: torch.as_tensor(pipe.denoiser.run(args.k, inputs))  # noqa: E731
        elif args.backend in COMPILE_PATHS:
            torch._inductor.config.freezing = args.backend == "compile-freeze"
            compiled = torch.compile(pipe.dit, mode=COMPILE_PATHS[args.backend])
            call = lambda: compiled(*inputs.values())  # noqa: E731
        elif args.backend in ("bf16", "compile-bf16"):
            dit = torch.compile(pipe.dit) if args.backend == "compile-bf16" else pipe.dit

            def call() -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return dit(*inputs.values()).float()

        else:
            call = lambda: pipe.dit(*inputs.values())  # noqa: E731
        out = call()
        call()
        seconds = median_seconds(call, args.repeats)
    return {"seconds": seconds, "max_abs": float((torch.as_tensor(out) - reference).abs().max())}


def run_worker(what: str, backend: str, k: int, base: list[str], *sampler: float) -> dict:
    """`sampler`: compositing guidance's weight and noise level, and classifier-free guidance's lowest noise level
    (`generate` workers)."""
    cmd = [sys.executable, __file__, "--worker", what, "--backend", backend, "--k", str(k), *base]
    for flag, value in zip(("--composite", "--composite-sigma", "--guidance-sigma"), sampler, strict=False):
        cmd += [flag, str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", type=Path, default=None, help="a trained pipeline folder (default: random)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--worker", choices=["step", "generate"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--composite", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--composite-sigma", type=float, default=Request.composite_sigma, help=argparse.SUPPRESS)
    parser.add_argument("--guidance-sigma", type=float, default=Request.guidance_sigma, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.what = args.worker
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = prepare(args.preset, args.model, Path(tmp))
        base = ["--model", str(model), "--onnx", str(Path(tmp) / "onnx"), "--threads", str(args.threads)]
        base += ["--repeats", str(args.repeats), "--steps", str(args.steps)]
        parity = json.loads((Path(tmp) / "onnx" / "parity.json").read_text())
        print(f"preset {args.preset}, {args.threads} threads, clips {SHAPE.frames}x{SHAPE.height}x{SHAPE.width}")
        worst = {k: v for k, v in parity.items() if k.endswith("fp32_max_abs")}
        print("fp32 parity, max abs: " + ", ".join(f"{k}: {v:.2e}" for k, v in worst.items()))
        print("\ndenoising step, batch 2: median s (speed-up over eager; max abs difference to fp32 eager)")
        paths = ("torch", *COMPILE_PATHS, "bf16", "compile-bf16", "onnxruntime")
        print("| K | " + " | ".join(paths) + " |\n|---|" + "---|" * len(paths))
        for k in (1, 3):
            runs = {path: run_worker("step", path, k, base) for path in paths}
            eager = runs["torch"]["seconds"]
            cells = [f"{r['seconds']:.4f} ({eager / r['seconds']:.2f}x; {r['max_abs']:.1e})" for r in runs.values()]
            print(f"| {k} | " + " | ".join(cells) + " |")
        print(
            f"\ngenerate, {args.steps} steps (median of 3){'':9s}seconds   text  denoiser  composite  decode  peak RSS MiB"
        )
        default = (Request.composite_guidance, Request.composite_sigma, Request.guidance_sigma)
        for k in (1, 3):
            for name, backend, sampler in (
                ("torch, no compositing guidance", "torch", (0.0, *default[1:])),
                ("torch, both guidances every step", "torch", (default[0], 1.0, 0.0)),
                *((b, b, default) for b in ("torch", "compile", "compile-bf16", "onnxruntime")),
            ):
                r = run_worker("generate", backend, k, base, *sampler)
                share = r["share"]
                print(
                    f"  K = {k} {name:34s}{r['seconds']:6.2f}  {share['text']:5.1%}  {share['denoiser']:7.1%}"
                    f"  {share['composite']:8.1%}  {share['decode']:6.1%}   {r['peak_rss_mib']:8.0f}"
                )


if __name__ == "__main__":
    main()
