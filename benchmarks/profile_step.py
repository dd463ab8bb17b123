"""Where a LayerDiT step's time goes: torch.profiler over a training step and a denoising step, K = 1 and 3.

Run: `.venv/bin/python benchmarks/profile_step.py [--preset small] [--steps 5] [--bf16]`.
Every CPU op the profiler records at the top level of the step (no double counting of ops called by other ops) is put
in one class by its name:
- GEMM: `aten::mm`, `addmm`, `bmm`, `linear`, `matmul` and their backward (the projections, FFN, patch embedding);
- attention: `scaled_dot_product_attention` and the flash / math kernels under it, forward and backward (self
  attention and the masked cross attention);
- norms / RoPE / elementwise: layer and RMS norms, `mul`, `add`, `cat`, `silu`, `gelu`, copies and views;
- optimizer: the stages' AdamW (its fused kernel; training only);
- framework overhead: the step's wall time that no op accounts for (Python, dispatch, autograd bookkeeping).
Prints a table of shares per (mode, K) with the step time, and the CPU model: run it on each host kind.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from bench_dit import batch, step_fn
from torch.profiler import ProfilerActivity, profile

from layert2v.config import model_preset
from layert2v.hostcache import cpu_model
from layert2v.models.dit import LayerDiT

CLASSES = {
    "GEMM": ("mm", "addmm", "bmm", "linear", "matmul", "baddbmm"),
    "attention": ("attention", "sdpa", "flash", "softmax"),
    "optimizer": ("adam", "_foreach", "zero_"),
    "norms/RoPE/elementwise": ("norm", "mul", "add", "sub", "div", "cat", "silu", "gelu", "copy", "clone", "pow",
                               "mean", "rsqrt", "neg", "sigmoid", "where", "masked", "cos", "sin", "stack",
                               "contiguous", "to", "expand", "view", "reshape", "permute", "transpose", "unbind",
                               "chunk", "split", "slice", "select", "index", "fill", "empty", "zeros", "ones", "sum"),
}  # fmt: skip


def classify(name: str) -> str:
    """The class of an op by its (lower-cased, namespace-stripped) name; the first class whose keyword it holds."""
    bare = name.lower().split("::")[-1]
    for label, words in CLASSES.items():
        if any(word in bare for word in words):
            return label
    return "other ops"


def top_level_events(prof) -> list:
    """Events with no recorded parent: their self and child time together is the step's op time, counted once."""
    return [e for e in prof.events() if e.cpu_parent is None and not e.name.startswith("ProfilerStep")]


def profile_mode(
    cfg, k: int, size: int, training: bool, steps: int, bf16: bool
) -> tuple[dict[str, float], float, dict]:
    torch.manual_seed(0)
    model = LayerDiT(cfg)
    inputs = batch(cfg, k, size)
    if training:
        fn = step_fn(model, inputs, bf16)
    else:
        model.eval()

        def fn() -> None:
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                model.forward_layout(**inputs)

    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        wall = (time.perf_counter() - start) / steps
    totals: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for event in top_level_events(prof):
        totals[classify(event.name)] += event.cpu_time_total / 1e6 / steps
        ops[event.name] += event.cpu_time_total / 1e6 / steps
    totals["framework overhead"] = max(wall - sum(totals.values()), 0.0)
    return totals, wall, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="also list the N costliest top-level ops of each mode")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast (what `auto` trains in on bf16 hosts)")
    args = parser.parse_args()
    cfg = model_preset(args.preset)
    labels = [*CLASSES, "other ops", "framework overhead"]
    print(f"CPU: {cpu_model()}; threads {torch.get_num_threads()}; preset {args.preset}; {'bf16 autocast' if args.bf16 else 'fp32'}; 64 x 64, 9 frames; "
          f"mean of {args.steps} profiled steps (profiling adds overhead: compare shares, not times)")  # fmt: skip
    print("| mode | K | batch | s/step | " + " | ".join(labels) + " |")
    print("|---|---|---|---|" + "---|" * len(labels))
    costliest = {}
    for training, size in ((True, 8), (False, 2)):
        for k in (1, 3):
            totals, wall, ops = profile_mode(cfg, k, size, training, args.steps, args.bf16)
            mode = "training" if training else "denoising"
            shares = " | ".join(f"{totals.get(label, 0.0) / wall:.0%}" for label in labels)
            print(f"| {mode} | {k} | {size} | {wall:.3f} | {shares} |")
            costliest[f"{mode}, K = {k}"] = sorted(ops.items(), key=lambda item: -item[1])[: args.top]
    for mode, ops in costliest.items():
        print(f"\n{mode}: " + "; ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in ops))


if __name__ == "__main__":
    main()
