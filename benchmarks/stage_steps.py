"""The DiT stages' own training steps on a finished chain's data, per K and precision: what `chain_time.py` reads
from a run, measured without running the chain, so a precision the host would not pick can be priced too.

Run: `.venv/bin/python benchmarks/stage_steps.py --root <folder where make run finished> [--precision fp32]`.
For stage 2 (K = 1) and stage 3 (each K up to the model's), the stage's Lightning module as the chain builds it
(its VAE, its stage-2 weights), its optimiser, and the first training batch of that K from the chain's latent
cache: the median seconds of `repeats` steps of `training_step`, backward and optimiser step. With
`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` in the environment and `--precision fp32` it prices the chain of
an fp32-only (AVX2) host on this one (docs/results.md).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import lightning as L
import torch
from timing import median_seconds

from layert2v.config import load_params
from layert2v.hostcache import cpu_model
from layert2v.models.layout import Layout
from layert2v.training import stage2_joint, stage3_multifg
from layert2v.training.spec import StageContext, StageSpec, latent_clips


def first_batches(ctx: StageContext, spec: StageSpec, max_fg: int) -> dict[int, dict]:
    """K -> the first training batch of that K (stage 3 draws one K per batch)."""
    data = latent_clips(ctx, getattr(ctx.params.train, spec.name), max_fg=max_fg)
    data.setup("fit")
    batches: dict[int, dict] = {}
    for batch in data.train_dataloader():
        batches.setdefault(Layout.from_segments(batch["segments"].shape[1]).num_fg, batch)
        if len(batches) == max_fg:
            break
    return dict(sorted(batches.items()))


def step_seconds(
    module: L.LightningModule, optimizer: torch.optim.Optimizer, batch: dict, bf16: bool, repeats: int
) -> float:
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, repeats)


def main() -> None:
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training steps outside a Trainer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a folder where `make run` finished")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    artifacts = args.root / "artifacts"
    params = load_params(args.root / "params.yaml")
    ctx = StageContext(params, artifacts / "prepared", artifacts / "train", artifacts / "latents")
    print(f"CPU: {cpu_model()}; threads {torch.get_num_threads()}; {args.precision}")
    print("| stage | K | s/step |")
    print("|---|---|---|")
    for spec, max_fg in ((stage2_joint.STAGE, 1), (stage3_multifg.STAGE, ctx.model.max_fg)):
        module = spec.module(ctx)
        optimizer = module.configure_optimizers()["optimizer"]
        for k, batch in first_batches(ctx, spec, max_fg).items():
            seconds = step_seconds(module, optimizer, batch, args.precision == "bf16", args.repeats)
            print(f"| {spec.name} | {k} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
