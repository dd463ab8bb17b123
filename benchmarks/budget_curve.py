"""What more stage-2 steps buy: the samples of the EMA weights at several steps of one longer stage-2 run.

Run (in a folder where `make run` has made `artifacts/prepared`, `artifacts/latents` and `artifacts/train/stage1`):
`../.venv/bin/python benchmarks/budget_curve.py --steps 3000 --snapshots 1000,2000,3000 [--profile finevae]
[--precision 32-true] [--guidance 2,4]`.

Stage 2 trains as `layert2v train --stage 2` would (same module, data, precision rule) but for `--steps`, without
tracking or checkpoints; at each snapshot the EMA DiT is saved as a pipeline folder under `--out`, and afterwards
each folder samples the first `--clips` one-foreground validation clips (`evaluate_pipeline`): coherence, colour,
shape, blockiness per snapshot and guidance, side by side, with the mean training loss since the last snapshot.
The snapshots share one cosine schedule, so an early snapshot is not what a shorter run would end at.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import lightning as L
import summary_table

from layert2v.config import Params, load_params
from layert2v.evaluate import evaluate_pipeline, validation_prompts
from layert2v.models.checkpoint import load_vae, save_pipeline
from layert2v.models.text import default_text_encoder_path
from layert2v.pipeline import LayerT2VPipeline
from layert2v.training.precision import resolve_precision
from layert2v.training.run import STAGES
from layert2v.training.schedule import GradNormClip
from layert2v.training.spec import StageContext

ROOT = Path(__file__).resolve().parents[1]


class Snapshots(L.Callback):
    """Saves the EMA DiT (with the stage-1 VAE) at the given steps and keeps the mean loss between them."""

    def __init__(self, steps: set[int], out: Path, ctx: StageContext) -> None:
        self.steps, self.out, self.vae = steps, out, load_vae(ctx.folder("stage1"))
        self.losses: list[float] = []
        self.saved: dict[int, tuple[Path, float, float]] = {}
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: dict, *_: object) -> None:
        self.losses.append(float(outputs["loss"]))
        step = trainer.global_step
        if step in self.steps:
            folder = save_pipeline(self.out / f"step{step}", module.ema, self.vae, default_text_encoder_path())
            loss = sum(self.losses) / len(self.losses)
            self.saved[step], self.losses = (folder, loss, time.perf_counter() - self.start), []
            print(f"step {step}: mean training loss {loss:.3f}, {self.saved[step][2]:.0f} s", flush=True)


def train(args: argparse.Namespace, params: Params) -> dict[int, tuple[Path, float, float]]:
    stage2 = dataclasses.replace(params.train.stage2, max_steps=args.steps)
    train_cfg = dataclasses.replace(params.train, stage2=stage2, precision=args.precision or params.train.precision)
    params = dataclasses.replace(params, train=train_cfg)
    L.seed_everything(params.train.seed, workers=True)
    artifacts = args.root / "artifacts"
    ctx = StageContext(params, artifacts / "prepared", artifacts / "train", artifacts / "latents")
    spec = STAGES["stage2"]
    data, module = spec.data(ctx, stage2), spec.module(ctx)
    precision, probed = resolve_precision(params.train.precision, module, data, 1)
    print(f"stage 2 for {args.steps} steps in {precision} {probed or ''}", flush=True)
    snapshots = Snapshots({int(s) for s in args.snapshots.split(",")}, args.out, ctx)
    L.Trainer(
        max_steps=args.steps,
        precision=precision,
        callbacks=[snapshots, GradNormClip(stage2.grad_clip)],
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        default_root_dir=args.out,
    ).fit(module, datamodule=data)
    return snapshots.saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="where artifacts/ of a `make run` lies")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--precision", default=None, help="override train.precision (32-true, bf16-mixed, auto)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--snapshots", default="1000,2000,3000")
    parser.add_argument("--out", type=Path, default=Path("budget_curve"))
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--guidance", default="4", help="comma-separated guidance scales to sample each snapshot at")
    args = parser.parse_args()
    params = load_params(args.params, args.profile)
    saved = train(args, params)
    base = params.evaluate
    prompts = validation_prompts(args.root / "artifacts" / "prepared", args.clips, 1)
    print(summary_table.header(["step", "training loss", "seconds", "guidance"]))
    for step, (folder, loss, seconds) in sorted(saved.items()):
        pipe = LayerT2VPipeline.from_folder(folder)
        for guidance in args.guidance.split(","):
            summary, _ = evaluate_pipeline(
                pipe, prompts, dataclasses.replace(base, guidance=float(guidance)), 9, (64, 64)
            )
            print(summary_table.row([step, f"{loss:.3f}", f"{seconds:.0f}", guidance], summary), flush=True)


if __name__ == "__main__":
    main()
