"""AdamW with linear warm-up then cosine decay to 10% of the peak rate, as every stage uses."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from layert2v.config import StageConfig


def adamw_warmup_cosine(params: Iterable[torch.nn.Parameter], stage: StageConfig) -> dict:
    """A Lightning `configure_optimizers` answer, stepped every optimiser step."""
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=stage.lr, weight_decay=stage.weight_decay)

    def factor(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        progress = (step - stage.warmup_steps) / max(1, stage.max_steps - stage.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
