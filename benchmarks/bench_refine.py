"""The patch VAE's refine head at each width, side by side: stage 0's training step and a K = 3 sample's decode.

Run: `.venv/bin/python benchmarks/bench_refine.py [--widths 32,16 --repeats 5 --passes 6]`.
The default model's autoencoder (`params.yaml`) with its head's width (`train.model.vae_refine`) replaced by each
width, random weights (the head's output convolution filled, as after training: zero at init would hide it); the
step with the latent convolutions' weights contiguous (as training runs), the decode channels-last (as
`LayerVAE.for_inference` lays them out). Widths alternate pass by pass; a figure is the median over passes of the
median of `repeats` calls. What each width costs the autoencoder's ceiling takes stages 0-1 to measure
(docs/results.md, "A refine head half as wide").
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from bench_vae import cases, set_latent_layout, stage0_module
from timing import median_seconds

from layert2v.hostcache import cpu_model

LAYOUT = {"stage-0 step": "latent contiguous", "decode K = 3 (8 streams)": "channels-last"}


def main() -> None:
    warnings.filterwarnings("ignore", message=".*self.log.*")  # the training step outside a Trainer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="32,16", help="comma-separated head widths; the first is the reference")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", type=int, default=6)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    modules = {width: stage0_module(width) for width in widths}
    calls = {width: cases(module) for width, module in modules.items()}
    seconds = {(case, width): [] for case in LAYOUT for width in widths}
    for _ in range(args.passes):
        for case, layout in LAYOUT.items():
            for width in widths:
                set_latent_layout(modules[width], layout)
                seconds[case, width].append(median_seconds(calls[width][case], args.repeats))
    print(f"CPU: {cpu_model()}; threads {torch.get_num_threads()}; fp32; medians of {args.passes} alternating passes")
    print(
        "| case | "
        + " | ".join(f"width {w}" for w in widths)
        + " | "
        + " | ".join(f"{widths[0]} / {w}" for w in widths[1:])
        + " |"
    )
    print("|---" * (2 * len(widths)) + "|")
    for case in LAYOUT:
        median = {w: statistics.median(seconds[case, w]) for w in widths}
        times = " | ".join(f"{median[w] * 1e3:.1f} ms" for w in widths)
        ratios = " | ".join(f"{median[widths[0]] / median[w]:.2f}x" for w in widths[1:])
        print(f"| {case} | {times} | {ratios} |")


if __name__ == "__main__":
    main()
