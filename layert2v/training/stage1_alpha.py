"""Stage 1: adapt the VAE to alpha mattes. The VAE stays frozen; only the zero-gated alpha adapter and the
decoder LoRA (rank `decoder_lora_rank`, none at 0) train, on smooth-L1 plus an edge-weighted L1 that makes matte
boundaries count. With `model.alpha_codec: linear` the codec's projection is fitted to training mattes first and
its decoding matrix alone trains, on the same losses."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from layert2v.ceiling import vae_ceiling
from layert2v.config import AlphaStageConfig
from layert2v.models.checkpoint import load_vae, save_vae
from layert2v.models.vae import LayerVAE
from layert2v.training.schedule import adamw_warmup_cosine
from layert2v.training.spec import StageContext, StageSpec, pixel_clips


def edge_weights(alpha: torch.Tensor, weight: float) -> torch.Tensor:
    """`1 + weight` on pixels next to an alpha transition, 1 elsewhere; alpha `[B, 1, F, H, W]`."""
    dx = (alpha[..., :, 1:] - alpha[..., :, :-1]).abs()
    dy = (alpha[..., 1:, :] - alpha[..., :-1, :]).abs()
    edge = F.pad(dx, (0, 1)) + F.pad(dx, (1, 0)) + F.pad(dy, (0, 0, 0, 1)) + F.pad(dy, (0, 0, 1, 0))
    return 1 + weight * (edge > 0.05).float()


def first_alphas(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["alphas"][:, 0]


class AlphaAdaptation(L.LightningModule):
    def __init__(self, vae: LayerVAE, stage: AlphaStageConfig) -> None:
        super().__init__()
        vae.requires_grad_(False)
        if vae.alpha_codec is not None:
            vae.alpha_codec.decoder.requires_grad_(True)
        else:
            if not vae.lora_rank and stage.decoder_lora_rank:
                vae.add_decoder_lora(stage.decoder_lora_rank)
            for name, param in vae.named_parameters():
                param.requires_grad = "lora_" in name or name.startswith("alpha_adapter")
        self.vae, self.stage = vae, stage

    def _reconstruct(self, alpha: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        return self.vae.decode_alpha(self.vae.encode_alpha(alpha), clamp=clamp)

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        alpha = first_alphas(batch)
        pred = self._reconstruct(alpha, clamp=False)  # a clamped pixel gets no gradient (decode_unclamped)
        smooth = F.smooth_l1_loss(pred, alpha, beta=0.1)
        edge = (edge_weights(alpha, self.stage.edge_weight) * (pred - alpha).abs()).mean()
        loss = smooth + edge
        self.log_dict({"train/loss": loss, "train/smooth_l1": smooth, "train/edge_l1": edge}, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        """Alpha IoU of the adapted path, and RGB PSNR to show the RGB path (LoRA off) is untouched."""
        alpha = first_alphas(batch)
        pred, truth = self._reconstruct(alpha) > 0.5, alpha > 0.5
        iou = (pred & truth).flatten(1).sum(1) / (pred | truth).flatten(1).sum(1).clamp_min(1)
        rgb = batch["full"]
        mse = (self.vae.decode_rgb(self.vae.encode_rgb(rgb)) - rgb).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        self.log_dict(
            {"val/alpha_iou": iou.median(), "val/psnr_rgb": (10 * torch.log10(1 / mse)).median()}, prog_bar=True
        )

    def configure_optimizers(self) -> dict:
        return adamw_warmup_cosine(self.parameters(), self.stage)


def fitted_vae(ctx: StageContext, layers: int = 1024) -> LayerVAE:
    """The stage-0 VAE, its linear alpha codec (if any) fitted to `layers` training mattes drawn with the run's seed."""
    vae = load_vae(ctx.folder("stage0"))
    if vae.alpha_codec is not None:
        mattes = np.load(Path(ctx.prepared) / "cache" / "train" / "alpha.npy", mmap_mode="r")
        rows = np.random.default_rng(ctx.params.train.seed).permutation(len(mattes))[:layers]
        alpha = torch.from_numpy(np.asarray(mattes[np.sort(rows)], dtype=np.float32) / 255.0)[:, None]
        kept = vae.alpha_codec.fit(alpha)
        print(f"stage1: linear alpha codec fitted to {len(rows)} training mattes ({kept:.1%} of their variance kept)")
    return vae


def _save(module: AlphaAdaptation, data: L.LightningDataModule, folder: Path, ctx: StageContext) -> list[Path]:
    return [save_vae(module.vae, folder), folder / "config.json"]


STAGE = StageSpec(
    name="stage1",
    description="the VAE's alpha path",
    module=lambda ctx: AlphaAdaptation(fitted_vae(ctx), ctx.params.train.stage1),
    data=pixel_clips,
    upstream=lambda ctx: [ctx.folder("stage0") / "vae.safetensors"],
    save=_save,
    final_metrics=lambda module, ctx: vae_ceiling(module.vae, ctx.prepared, ctx.params.train.stage1.ceiling_clips),
)
