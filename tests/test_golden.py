"""Seeded golden losses: three AdamW steps of the stage-2 objective on the tiny preset from fixed seeds give
the recorded losses. A change to the model, the objective, the noise/timestep sampling or initialisation
shows up here as a changed number (torch is pinned, so the figures are stable on the CPU wheel)."""

import pytest
import torch

from layert2v.config import DiTStageConfig, model_preset
from layert2v.training.stage2_joint import JointLayerTraining

GOLDEN = [2.1399028302, 2.2115826607, 2.2373502255]  # recorded with torch 2.13.0 CPU


def seeded_losses(steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    cfg = model_preset("tiny")
    module = JointLayerTraining(cfg, DiTStageConfig(max_steps=steps, batch_size=2, lr=1e-3, warmup_steps=0))
    data = torch.Generator().manual_seed(1)
    c, t, h, w = cfg.latent_channels, 2, 4, 4
    batch = {
        "segments": torch.randn(2, 4, c, t, h, w, generator=data),
        "alpha_grid": torch.rand(2, 1, 1, t, h, w, generator=data),
        "text": torch.randn(2, 3, cfg.text_len, cfg.text_dim, generator=data),
        "text_mask": torch.ones(2, 3, cfg.text_len, dtype=torch.bool),
        "clear": torch.randn(2, c, t, h, w, generator=data),
    }
    optimiser = torch.optim.AdamW(module.dit.parameters(), lr=1e-3)
    torch.manual_seed(2)
    losses = []
    for _ in range(steps):
        loss = module._losses(batch, module.dit, 0.0)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def test_seeded_training_reproduces_the_golden_losses() -> None:
    assert seeded_losses() == pytest.approx(GOLDEN, rel=1e-5)
