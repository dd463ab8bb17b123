"""Does `torch.compile` (inductor) pay for itself on LayerDiT's CPU training step? Eager and compiled side by side.

Run: `.venv/bin/python benchmarks/bench_compile.py [--repeats 5] [--batch 8] [--bf16]`.
For K = 1 and 3 on the small preset: one forward + backward + AdamW step (the shapes of `bench_dit.py`), the time
of the first two steps (compiling happens there) and the median of `repeats` timed steps after them, for a fresh
eager model and a fresh compiled one, the speed-up and after how many steps it repays the compiling; with `--bf16`
both under bf16 autocast (what `train.precision: auto` picks where the CPU has bf16 kernels). Inductor
caches compiled code under /tmp, so only a fresh machine's first run shows the full compile time.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_dit import batch, step_fn
from timing import median_seconds

from layert2v.config import model_preset
from layert2v.models.dit import LayerDiT


def measure(k: int, size: int, compiled: bool, repeats: int, bf16: bool) -> tuple[float, float]:
    """(seconds of the first two steps, median seconds of the next `repeats`)."""
    torch.manual_seed(0)
    cfg = model_preset("small")
    model = LayerDiT(cfg)
    if compiled:
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
        eager = measure(k, args.batch, compiled=False, repeats=args.repeats, bf16=args.bf16)
        compiled = measure(k, args.batch, compiled=True, repeats=args.repeats, bf16=args.bf16)
        for mode, (warm, seconds) in (("eager", eager), ("compiled", compiled)):
            print(f"{k:>2} {mode:8} {warm:16.1f} {seconds:8.3f}")
        saved = eager[1] - compiled[1]
        repay = f"{(compiled[0] - eager[0]) / saved:.0f} steps" if saved > 0 else "never"
        print(f"   K = {k}: compiled speed-up {eager[1] / compiled[1]:.2f}x; compile time repaid after {repay}")


if __name__ == "__main__":
    main()
