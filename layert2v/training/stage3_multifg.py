"""Stage 3: multi-foreground extension (our design, DESIGN section 2). Same objective as stage 2 on samples
with K = 1..K_max foregrounds, each batch one K (see `SameKBatches`), initialised from stage 2's EMA weights;
the zero-initialised instance table starts to tell fg_k / alpha_k apart from there."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from layert2v.config import ModelConfig, StageConfig
from layert2v.models.vae import LayerVAE
from layert2v.training.stage2_joint import JointLayerTraining


class MultiForegroundTraining(JointLayerTraining):
    def __init__(
        self, model_cfg: ModelConfig, stage: StageConfig, stage2_model: Path, vae: LayerVAE | None = None
    ) -> None:
        super().__init__(model_cfg, stage, vae)
        weights = stage2_model / "dit.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: run stage 2 first")
        state = load_file(weights)
        self.dit.load_state_dict(state)
        self.ema.load_state_dict(state)
