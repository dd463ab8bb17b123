"""Stage 3: multi-foreground extension (our design, docs/design.md). Same objective as stage 2 on samples
with K = 1..K_max foregrounds, each batch one K (see `SameKBatches`), initialised from stage 2's EMA weights;
the zero-initialised instance table starts to tell fg_k / alpha_k apart from there."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from layert2v.config import DiTStageConfig, ModelConfig
from layert2v.models.checkpoint import load_vae
from layert2v.models.vae import LayerVAE
from layert2v.training.spec import StageContext, StageSpec, latent_clips
from layert2v.training.stage2_joint import JointLayerTraining, save_model


class MultiForegroundTraining(JointLayerTraining):
    def __init__(
        self, model_cfg: ModelConfig, stage: DiTStageConfig, stage2_model: Path, vae: LayerVAE | None = None
    ) -> None:
        super().__init__(model_cfg, stage, vae)
        weights = stage2_model / "dit.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: run stage 2 first")
        state = load_file(weights)
        self.dit.load_state_dict(state)
        self.ema.load_state_dict(state)


def _module(ctx: StageContext) -> MultiForegroundTraining:
    stage2 = ctx.folder("stage2") / "model"
    return MultiForegroundTraining(ctx.model, ctx.params.train.stage3, stage2, load_vae(ctx.folder("stage1")))


STAGE = StageSpec(
    name="stage3",
    description="multi-foreground extension, K = 1..K_max",
    module=_module,
    data=lambda ctx, cfg: latent_clips(ctx, cfg, max_fg=ctx.model.max_fg),
    upstream=lambda ctx: [ctx.folder("stage1") / "vae.safetensors", ctx.folder("stage2") / "model" / "dit.safetensors"],
    save=save_model,
)
