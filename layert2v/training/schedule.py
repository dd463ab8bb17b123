"""AdamW with linear warm-up then cosine decay to 10% of the peak rate, and gradient-norm clipping, as every stage
uses."""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning as L
import torch

from layert2v.config import StageConfig


def adamw_warmup_cosine(params: Iterable[torch.nn.Parameter], stage: StageConfig) -> dict:
    """A Lightning `configure_optimizers` answer, stepped every optimiser step.

    The fused AdamW kernel updates every parameter in one pass: on 2 CPU cores it took a third of the time of the
    default multi-tensor one for the `small` DiT (docs/results.md, "Where a DiT step's time goes")."""
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=stage.weight_decay, fused=True)

    def factor(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        progress = (step - stage.warmup_steps) / max(1, stage.max_steps - stage.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class GradNormClip(L.Callback):
    """Clips the gradient norm of the optimiser's parameters to `max_norm` (0: off) before each step.

    Lightning's own `gradient_clip_val` refuses the fused AdamW under bf16-mixed (it assumes a GradScaler may have
    scaled the gradients, which bf16 never does), so the stages clip here, as Lightning would without a scaler."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        if self.max_norm > 0:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
