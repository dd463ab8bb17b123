"""What the DiT stages' optimisers cost per training step on this host, side by side in one run.

Run: `.venv/bin/python benchmarks/bench_optimizer.py [--repeats 7] [--passes 3]`.
The `small` DiT's training step (forward, MSE, backward, optimiser step) on a stage-2-shaped batch (K = 1, batch 8,
64 x 64, 9 frames) in the precision the stages would pick here (bf16 autocast where the CPU has bf16 kernels, else
fp32), with: the stages' fused AdamW (`train.stageN.optimizer: adamw`); `schedule.MuonAdamW` (`optimizer: muon`:
Newton-Schulz batched by shape, in bf16 only where it is native); and the same split with `torch.optim.Muon`
(each matrix alone, always bf16). The three are timed in turn, `passes` times, and the medians of each are printed
with their ratio to AdamW: the price per step a stage pays for Muon's steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from bench_dit import batch, step_fn
from timing import median_seconds

from layert2v.config import DiTStageConfig, model_preset
from layert2v.hostcache import cpu_model, native_bf16
from layert2v.models.dit import LayerDiT
from layert2v.training.schedule import MuonAdamW, dit_optimizer, split_matrices

STAGE = DiTStageConfig(max_steps=1000, batch_size=8, lr=3e-3, warmup_steps=10, weight_decay=0.01)


def optimizers(model: LayerDiT) -> dict[str, torch.optim.Optimizer]:
    matrices, others = split_matrices(model)
    reference = torch.optim.Muon(matrices, lr=STAGE.lr, weight_decay=STAGE.weight_decay, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(others, lr=STAGE.lr, weight_decay=STAGE.weight_decay, fused=True)
    return {
        "AdamW": dit_optimizer(model, STAGE)["optimizer"],
        "Muon (batched)": dit_optimizer(model, dataclasses.replace(STAGE, optimizer="muon"))["optimizer"],
        "Muon (torch)": MuonAdamW(reference, adamw),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    bf16 = native_bf16()
    torch.manual_seed(0)
    cfg = model_preset("small")
    model = LayerDiT(cfg)
    inputs = batch(cfg, 1, STAGE.batch_size)
    steps = {name: step_fn(model, inputs, bf16, opt) for name, opt in optimizers(model).items()}
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, {'bf16 autocast' if bf16 else 'fp32'}; small DiT, K = 1")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.passes):
        for name, step in steps.items():
            times[name].append(median_seconds(step, args.repeats, warmup=2))
    adamw = statistics.median(times["AdamW"])
    print("| optimiser | s/step (median of passes) | passes | against AdamW |\n|---|---|---|---|")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median:.3f} | {' / '.join(f'{s:.3f}' for s in seconds)} | {median / adamw:.2f}x |")


if __name__ == "__main__":
    main()
