"""The DiT's elementwise work in fused forms against plain products and sums, side by side on the step.

Run: `.venv/bin/python benchmarks/bench_elementwise.py [--repeats 5 --passes 3 --bf16]`.
Between its GEMMs a DiT block modulates (`x * (1 + scale) + shift`, twice), gates its residuals (`x + y * gate`,
twice) and rotates q and k (RoPE). The DiT does the first two as one fused multiply-add each (`torch.addcmul`) and,
in eager fp32, the rotation as one complex multiplication; before, each was plain products and sums. This times the
`small` training step (forward, MSE, backward, AdamW; batch 8, K = 1 and 3, captions as `bench_attention.py`) and a
denoising step (batch 2, no gradients) with each form patched in, alternating passes, and prints each form's largest
output difference to the plain one. fp32 by default: what `train.precision: auto` trains in where the CPU has no
native bf16 (AVX2 hosts); `--bf16` under bf16 autocast, where RoPE keeps its real form.
Each figure is the median of `repeats` calls; a step figure the median of its passes.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack
from unittest import mock

import torch
from bench_attention import captioned
from bench_dit import batch, step_fn
from timing import median_seconds

from layert2v.config import model_preset
from layert2v.hostcache import cpu_model
from layert2v.models import dit
from layert2v.models.layout import Layout


def plain_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`dit.modulate` as a product and a sum (the DiT before)."""
    return (x.unflatten(1, (shift.shape[1], -1)) * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def plain_gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`dit.gated_residual` as a product and a sum (the DiT before)."""
    return x + (y.unflatten(1, (gate.shape[1], -1)) * gate[:, :, None]).flatten(1, 2)


APPLY_ROPE = dit.apply_rope


def real_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`dit.apply_rope` in its real form, the one graphs and bf16 take."""
    with mock.patch.object(dit, "traced", lambda: True):
        return APPLY_ROPE(x, cos, sin)


FORMS = {  # name -> (fused multiply-adds, complex RoPE)
    "plain (before)": (False, False),
    "addcmul": (True, False),
    "complex RoPE": (False, True),
    "both (the DiT)": (True, True),
}


def patched(name: str) -> ExitStack:
    fused, complex_form = FORMS[name]
    stack = ExitStack()
    if not fused:
        stack.enter_context(mock.patch.object(dit, "modulate", plain_modulate))
        stack.enter_context(mock.patch.object(dit, "gated_residual", plain_gated_residual))
    if not complex_form:
        stack.enter_context(mock.patch.object(dit, "apply_rope", real_rope))
    return stack


def denoise_fn(model: dit.LayerDiT, inputs: dict, bf16: bool):
    def step() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.forward_layout(**inputs)

    return step


def row(label: str, step, repeats: int, passes: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in FORMS}
    for _ in range(passes):
        for name in FORMS:
            with patched(name):
                step()
                times[name].append(median_seconds(step, repeats))
    medians = [statistics.median(times[name]) for name in FORMS]
    cells = " | ".join(f"{m:.3f} s" for m in medians)
    print(f"| {label} | {cells} | {medians[0] / medians[-1]:.2f}x |", flush=True)


def differences(model: dit.LayerDiT, inputs: dict, bf16: bool) -> str:
    outputs = {}
    for name in FORMS:
        with patched(name), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs[name] = model.forward_layout(**inputs).float()
    plain = outputs["plain (before)"]
    return ", ".join(f"{name} {(output - plain).abs().max().item():.1e}" for name, output in outputs.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast (native bf16 hosts)")
    args = parser.parse_args()
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, {'bf16 autocast' if args.bf16 else 'fp32'}\n")
    print(f"| step | {' | '.join(FORMS)} | before / the DiT |")
    print("|---|" + "---|" * (len(FORMS) + 1))
    cfg = model_preset("small")
    notes = []
    for k in (1, 3):
        torch.manual_seed(0)
        model = dit.LayerDiT(cfg)
        torch.nn.init.normal_(model.head.head.weight, std=0.02)  # a trained head's scale, not the zero init
        train, infer = (captioned(batch(cfg, k, size), Layout(k)) for size in (8, 2))
        row(f"training, K = {k}, batch 8", step_fn(model, train, args.bf16), args.repeats, args.passes)
        row(f"denoising, K = {k}, batch 2", denoise_fn(model, infer, args.bf16), args.repeats, args.passes)
        notes.append(f"K = {k}, largest |output - plain|: {differences(model, infer, args.bf16)}")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
