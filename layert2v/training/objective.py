"""The DiT stages' objective without Lightning: prompt dropout, editing tasks drawn clean, the EMA warm-up and
the layered flow-matching losses of one batch.

`stage2_joint.JointLayerTraining` trains with it, and so does a plain loop on a machine that has torch but not the
platform's video and autoencoder packages (`benchmarks/gpu_budget.py` on a GPU): one owner of what a DiT step
minimises, so a probe trains exactly what the stages train.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from layert2v.config import DiTStageConfig
from layert2v.diffusion import LossWeights, layered_loss, logit_normal_t, noisy, segment_timesteps
from layert2v.models.dit import LayerDiT
from layert2v.models.layout import Layout
from layert2v.models.text import null_prompts


def drop_prompts(text: torch.Tensor, mask: torch.Tensor, p: float, generator: torch.Generator | None = None):
    """Replace whole samples' prompts by `null_prompts` with probability p."""
    drop = torch.rand(text.shape[0], generator=generator) < p
    null_text, null_mask = null_prompts(text, mask)
    drop = drop.to(text.device)
    return torch.where(drop[:, None, None, None], null_text, text), torch.where(drop[:, None, None], null_mask, mask)


def draw_known(layout: Layout, batch: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """bool `[B, L]`: with probability `p` a sample gets the segments of one editing task (drawn uniformly from
    `Layout.editing_tasks`) clean and given, the rest of the batch none; what lets the model condition on kept
    layers through per-segment timesteps (`t = 0` on them) instead of sampling-only replacement."""
    tasks = torch.zeros(len(layout.editing_tasks()), layout.num_segments, dtype=torch.bool)
    for row, segments in enumerate(layout.editing_tasks().values()):
        tasks[row, segments] = True
    drawn = tasks[torch.randint(len(tasks), (batch,), generator=generator)]
    given = torch.rand(batch, generator=generator) < p
    return drawn & given[:, None]


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after `step` optimiser steps: `(1 + n) / (10 + n)`, capped at `decay`.

    A fixed 0.999 keeps 0.999^250 = 78% of the random initial weights after a 250-step CPU run, so the saved
    (EMA) model samples noise while the live one has learnt; the warm-up averages over the last ~n / 10 steps.
    """
    return min(decay, (1 + step) / (10 + step))


def loss_weights(stage: DiTStageConfig) -> LossWeights:
    return LossWeights(
        consistency=stage.consistency_weight, alpha=stage.alpha_weight, foreground=stage.foreground_weight
    )


def flow_losses(
    batch: dict[str, torch.Tensor],
    model: LayerDiT,
    stage: DiTStageConfig,
    dropout: float,
    decoded_alpha: dict[str, Callable | list[torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """The layered losses of one batch of `LatentClips` items (one K per batch): noised at a logit-normal t
    (shifted by `stage.timestep_shift`), prompts dropped with probability `dropout`, editing tasks drawn clean with
    `stage.condition_dropout`; `decoded_alpha` carries `layered_loss`'s decoded-alpha inputs when the caller has a
    VAE."""
    layout = Layout.from_segments(batch["segments"].shape[1])
    x0 = layout.pack(list(batch["segments"].unbind(1)))
    noise, t = torch.randn_like(x0), logit_normal_t(x0.shape[0], shift=stage.timestep_shift).to(x0)
    text, mask = drop_prompts(batch["text"], batch["text_mask"], dropout)
    text = text.flatten(1, 2)  # [B, P * M, D]
    known = None
    if stage.condition_dropout:
        known = draw_known(layout, x0.shape[0], stage.condition_dropout).to(x0.device)
        t = segment_timesteps(t, known)
    velocity = model.forward_layout(noisy(x0, noise, t), t * 1000, text, mask, layout)
    consistency = {"alpha_grid": list(batch["alpha_grid"].unbind(1)), "clear_latent": batch["clear"]}
    return layered_loss(
        velocity, x0, noise, t, layout, loss_weights(stage), **consistency, **(decoded_alpha or {}), known=known
    )
