"""Does `torch.compile` (inductor) pay for itself on LayerDiT's CPU training step? Eager and compiled side by side.

Run: `.venv/bin/python benchmarks/bench_compile.py [--repeats 5] [--batch 8] [--bf16]`.
For K = 1 and 3 on the small preset: one forward + backward + AdamW step (the shapes of `bench_dit.py`), the time
of the first two steps (compiling happens there) and the median of `repeats` timed steps after them, for a fresh
eager model, one with its blocks compiled (`LayerDiT.compile_blocks`, what `train.stageN.compile` does) and one
compiled whole (`nn.Module.compile`), the speed-ups and after how many steps each repays its compiling; with
`--bf16` all under bf16 autocast (what `train.precision: auto` picks where the CPU has bf16 kernels). Inductor
caches compiled code under /tmp (`TORCHINDUCTOR_CACHE_DIR` moves it), so only a fresh machine's first run shows
the full compile time.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_dit import batch, step_fn
from timing import median_seconds

from layert2v.config import model_preset
from layert2v.models.dit import LayerDiT

MODES = ("eager", "blocks", "whole")


def measure(k: int, size: int, mode: str, repeats: int, bf16: bool) -> tuple[float, float]:
    """(seconds of the first two steps, median seconds of the next `repeats`) for a mode of `MODES`."""
    torch.manual_seed(0)
    cfg = model_preset("small")
    model = LayerDiT(cfg)
    if mode == "blocks":
        model.compile_blocks()
    elif mode == "whole":
        model.compile()
    step = step_fn(model, batch(cfg, k, size), bf16=bf16)
    start = time.perf_counter()
    step()
    step()
    warm = time.perf_counter() - start
    return warm, median_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="both under bf16 autocast")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}; small preset, batch {args.batch}, {'bf16' if args.bf16 else 'fp32'}")
    print(f"{'K':>2} {'mode':8} {'first 2 steps s':>16} {'s/step':>8}")
    for k in (1, 3):
        runs = {mode: measure(k, args.batch, mode, repeats=args.repeats, bf16=args.bf16) for mode in MODES}
        for mode, (warm, seconds) in runs.items():
            print(f"{k:>2} {mode:8} {warm:16.1f} {seconds:8.3f}")
        eager = runs["eager"]
        for mode, compiled in list(runs.items())[1:]:
            saved = eager[1] - compiled[1]
            repay = f"{(compiled[0] - eager[0]) / saved:.0f} steps" if saved > 0 else "never"
            print(f"   K = {k}, {mode}: speed-up {eager[1] / compiled[1]:.2f}x; compile time repaid after {repay}")


if __name__ == "__main__":
    main()
