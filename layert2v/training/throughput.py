"""Trainer throughput of a stage: samples/s and the share of each step spent waiting for data.

Every training step is split into the gap since the previous step ended (fetching the batch, plus logging;
validation and checkpoint steps also land here, hence medians) and the step itself (forward, backward,
optimizer). At the end the medians go to the stage's loggers as `perf/*` and to `perf.json` in its folder.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only


def batch_size(batch: object) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


class Throughput(L.Callback):
    def __init__(self, folder: Path, warmup: int = 2) -> None:
        self.folder, self.warmup = Path(folder), warmup
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.samples: list[int] = []
        self._start = self._end = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: object, _: int) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self.waits.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, _: object, batch: object, __: int):
        self._end = time.perf_counter()
        self.steps.append(self._end - self._start)
        self.samples.append(batch_size(batch))

    def summary(self) -> dict[str, float]:
        """Medians after `warmup` steps (first-call allocations, thread pools)."""
        steps, waits = self.steps[self.warmup :] or self.steps, self.waits[self.warmup :] or self.waits or [0.0]
        step, wait = statistics.median(steps), statistics.median(waits)
        return {
            "perf/step_s": step,
            "perf/data_wait_s": wait,
            "perf/data_wait_fraction": wait / (wait + step),
            "perf/samples_per_s": statistics.median(self.samples) / (wait + step),
        }

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.steps:
            return
        summary = self.summary()
        for logger in trainer.loggers:
            logger.log_metrics(summary, step=trainer.global_step)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "perf.json").write_text(json.dumps(summary, indent=2) + "\n")
