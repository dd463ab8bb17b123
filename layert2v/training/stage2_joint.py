"""Stage 2: joint multi-layer learning with one foreground (K = 1); stage 3 reuses it for K = 1..K_max.

LayerDiT (with LayerAdaLN) learns the rectified-flow velocity of the packed latents `[full | bg | fg | alpha]`,
the latent cells a foreground touches weighing `1 + foreground_weight` (uniform, the foreground layers came out
empty), plus `consistency_weight` (0.1 in the paper) x latent compositing consistency (docs/design.md).
Prompts are dropped (states zeroed, only the first token visible) with probability `prompt_dropout` so
classifier-free guidance has an unconditional branch to contrast with. An exponential moving average of the
weights (with a warm-up, `ema_decay_at`) is kept and is what gets saved. With a frozen VAE and
`alpha_decode_samples > 0`, the predicted alpha latents of that many samples per batch also go through the VAE's
alpha decoder and are compared with the true matte (`alpha_weight` x smooth-L1): decoding is the costly part on a CPU, so a
few samples per batch carry the term.

With `condition_dropout > 0` a share of samples gets the segments of one editing task clean (`t = 0`, no loss on
them; `draw_known`): the model learns to generate the other layers around given ones, and the saved folder says
so (`known_segments: clean`), so the pipeline conditions that way instead of by replacement.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch

from layert2v.config import DiTStageConfig, ModelConfig
from layert2v.data.datamodule import training_captions
from layert2v.models.checkpoint import load_vae, save_pipeline
from layert2v.models.colour_words import known_colour_words
from layert2v.models.dit import LayerDiT
from layert2v.models.text import default_text_encoder_path
from layert2v.models.vae import LayerVAE
from layert2v.training.objective import ema_decay_at, flow_losses
from layert2v.training.precision import compile_pays
from layert2v.training.schedule import dit_optimizer
from layert2v.training.spec import StageContext, StageSpec, latent_clips


class JointLayerTraining(L.LightningModule):
    def __init__(
        self,
        model_cfg: ModelConfig,
        stage: DiTStageConfig,
        vae: LayerVAE | None = None,
    ) -> None:
        super().__init__()
        self.dit = LayerDiT(model_cfg)
        self.ema = copy.deepcopy(self.dit).requires_grad_(False)
        self.vae = vae.requires_grad_(False).eval() if vae is not None else None
        self.stage = stage

    def _decoded_alpha(self, batch: dict[str, torch.Tensor]) -> dict:
        """`decode_alpha` and `alpha_pixels` for `layered_loss` on the first samples of the batch, or nothing."""
        n = self.stage.alpha_decode_samples
        if self.vae is None or n == 0 or "alpha_pixels" not in batch:
            return {}
        return {
            "decode_alpha": lambda z: self.vae.decode_alpha(z[:n], clamp=False),
            "alpha_pixels": [a[:n] for a in batch["alpha_pixels"].unbind(1)],
        }

    def _losses(self, batch: dict[str, torch.Tensor], model: LayerDiT, dropout: float) -> dict[str, torch.Tensor]:
        return flow_losses(batch, model, self.stage, dropout, self._decoded_alpha(batch))

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        losses = self._losses(batch, self.dit, self.stage.prompt_dropout)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"})
        self.log("train/loss", losses["loss"], prog_bar=True)
        return losses["loss"]

    def on_train_start(self) -> None:
        if self.vae is not None:
            self.vae.eval()  # frozen: Lightning's train() must not switch it
        configured = self.stage.compile
        compiled = configured is True or (
            configured == "auto" and compile_pays(str(self.trainer.precision), self.device)
        )
        if compiled:
            self.dit.compile_blocks()  # after the precision probe, which times the eager step; same state dict
        print(f"training the DiT {'compiled' if compiled else 'eager'} (compile: {configured})")
        if self.logger is not None:  # what `auto` chose, beside `precision_used`
            self.logger.log_hyperparams({"compile_used": compiled})

    def on_train_batch_end(self, *_: object) -> None:
        decay = ema_decay_at(self.global_step, self.stage.ema_decay)
        with torch.no_grad():
            for ema, live in zip(self.ema.parameters(), self.dit.parameters(), strict=True):
                ema.lerp_(live, 1 - decay)

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        losses = self._losses(batch, self.ema, 0.0)
        self.log_dict({f"val/{k}": v for k, v in losses.items() if k != "loss"})
        self.log("val/loss", losses["loss"], prog_bar=True)

    def configure_optimizers(self) -> dict:
        return dit_optimizer(self.dit, self.stage)


def save_model(module: JointLayerTraining, data: L.LightningDataModule, folder: Path, ctx: StageContext) -> list[Path]:
    """A complete pipeline model folder `model/`: the EMA DiT, the stage-1 VAE, the text encoder's path and the
    colour words of the training captions."""
    known = "clean" if module.stage.condition_dropout else "replace"
    model = save_pipeline(
        folder / "model",
        module.ema,
        load_vae(ctx.folder("stage1")),
        default_text_encoder_path(),
        known_segments=known,
        colour_words=known_colour_words(training_captions(ctx.prepared)) if ctx.params.train.colour_words else None,
    )
    return [model / "config.json", model / "dit.safetensors", model / "vae.safetensors"]


STAGE = StageSpec(
    name="stage2",
    description="joint multi-layer learning, K = 1",
    module=lambda ctx: JointLayerTraining(ctx.model, ctx.params.train.stage2, load_vae(ctx.folder("stage1"))),
    data=lambda ctx, cfg: latent_clips(ctx, cfg, max_fg=1),
    upstream=lambda ctx: [ctx.folder("stage1") / "vae.safetensors", ctx.latents / "encode.json"],
    save=save_model,
)
