"""Stage 0: pretrain the VAE on RGB streams (full, background, premultiplied foreground) when no pretrained VAE
is given: L1 reconstruction plus a small KL term on the posterior. With `alpha_weight > 0` the first foreground's
matte is reconstructed too, fed as the alpha path feeds it (`2a - 1` on three channels): an autoencoder trained on
colour alone represents the hard, thin edges of a matte poorly, and stage 1's small adapter cannot add them. With
`seam_weight > 0` the decoded steps across the cell borders are held to the true ones (`seam_l1`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from layert2v.config import ModelConfig, VAEStageConfig
from layert2v.data.datamodule import VidLayerDataModule
from layert2v.models.checkpoint import save_vae
from layert2v.models.vae import LayerVAE
from layert2v.training.schedule import adamw_warmup_cosine
from layert2v.training.spec import StageContext, StageSpec, pixel_clips


def seam_l1(recon: torch.Tensor, x: torch.Tensor, cell: int) -> torch.Tensor:
    """Mean L1 between the steps of `recon` and `x` (`[N, C, F, H, W]`) across the `cell`-pixel cell borders.

    The per-pixel L1 leaves each cell's error free, so neighbouring cells decoded apart step at their shared
    border (the block grid `metrics.blockiness` measures); this term asks each border step to be the true one.
    Borders only: on every step, an edge the decoder cannot place exactly is cheaper drawn faint, and the layers
    dimmed (measured in docs/results.md)."""
    seams = []
    for dim in (-1, -2):
        border = torch.arange(cell - 1, x.shape[dim] - 1, cell, device=x.device)
        seams.append((recon.diff(dim=dim) - x.diff(dim=dim)).index_select(dim, border).abs().mean())
    return sum(seams) / 2


def random_crops(x: torch.Tensor, crop: float, cell: int) -> torch.Tensor:
    """A window of `crop` times each side of the frame (rounded down to whole `cell`s, at least one) at a random
    place in each of the N videos of `x` (`[N, C, F, H, W]`).

    Stage 0 on windows three quarters of the side, of twice the clips, costs 1.1-1.2x the step of whole frames and
    trains a better autoencoder faster: more clips a step lower the gradient's noise, which is what holds stage 0
    back (docs/results.md). Windows half the side do not: the autoencoder fits a 4 x 4 cell grid (its group norms'
    statistics and borders, most likely) and decodes whole frames worse."""
    height, width = x.shape[-2:]
    rows, cols = (max(cell, int(crop * side) // cell * cell) for side in (height, width))
    tops = torch.randint(0, height - rows + 1, (len(x),)).tolist()
    lefts = torch.randint(0, width - cols + 1, (len(x),)).tolist()
    return torch.stack([v[..., t : t + rows, s : s + cols] for v, t, s in zip(x, tops, lefts, strict=True)])


def rgb_streams(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[3B, 3, F, H, W]`: the full, background and first-foreground videos of a batch."""
    return torch.cat([batch["full"], batch["background"], batch["foregrounds"][:, 0]])


class VAEPretraining(L.LightningModule):
    def __init__(self, model_cfg: ModelConfig, stage: VAEStageConfig) -> None:
        super().__init__()
        self.vae = LayerVAE(model_cfg)
        self.vae.alpha_adapter.requires_grad_(False)  # stage 1 trains it; unused parameters would stall DDP
        self.stage = stage

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        rgb = rgb_streams(batch) * 2 - 1
        alpha = (batch["alphas"][:, 0] * 2 - 1).expand(-1, 3, -1, -1, -1)
        x = torch.cat([rgb, alpha]) if self.stage.alpha_weight else rgb
        if self.stage.crop < 1:
            x = random_crops(x, self.stage.crop, self.vae.cfg.vae_cell)
            rgb = x[: len(rgb)]
        posterior = self.vae.posterior(x)
        recon = self.vae.decode_unclamped(posterior.sample())  # clamped pixels would get no gradient
        errors = (recon - x).abs().flatten(1).mean(1)
        l1, kl = errors[: len(rgb)].mean(), posterior.kl().mean()
        alpha_l1 = errors[len(rgb) :].mean() if self.stage.alpha_weight else torch.zeros(())
        seams = seam_l1(recon[: len(rgb)], rgb, self.vae.cfg.vae_cell) if self.stage.seam_weight else torch.zeros(())
        loss = l1 + self.stage.kl_weight * kl + self.stage.alpha_weight * alpha_l1 + self.stage.seam_weight * seams
        metrics = {"train/loss": loss, "train/l1": l1, "train/kl": kl}
        if self.stage.alpha_weight:
            metrics["train/alpha_l1"] = alpha_l1
        if self.stage.seam_weight:
            metrics["train/seam_l1"] = seams
        self.log_dict(metrics, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        x = rgb_streams(batch)
        recon = self.vae.decode_rgb(self.vae.encode_rgb(x))
        mse = (recon - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        self.log("val/psnr_rgb", (10 * torch.log10(1 / mse)).median(), prog_bar=True)

    def configure_optimizers(self) -> dict:
        return adamw_warmup_cosine(self.parameters(), self.stage)


@torch.no_grad()
def fit_latent_stats(vae: LayerVAE, data: VidLayerDataModule, batches: int = 8) -> None:
    """Per-channel latent mean/std from a few training batches, stored with the weights (see `vae.py`)."""
    loader = iter(data.train_dataloader())
    vae.fit_latent_stats([rgb_streams(next(loader)) for _ in range(min(batches, len(data.train_dataloader())))])


def _save(module: VAEPretraining, data: VidLayerDataModule, folder: Path, ctx: StageContext) -> list[Path]:
    fit_latent_stats(module.vae, data)
    return [save_vae(module.vae, folder), folder / "config.json"]


STAGE = StageSpec(
    name="stage0",
    description="VAE on RGB clips",
    module=lambda ctx: VAEPretraining(ctx.model, ctx.params.train.stage0),
    data=pixel_clips,
    upstream=lambda ctx: [],
    save=_save,
)
