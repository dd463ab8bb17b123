"""What a training stage is, as data: `StageSpec` (module, data, upstream files, saver), one per stage file.

`training/run.py` holds the table of them (`STAGES`) and wires any of them into a Lightning Trainer with MLflow
tracking, checkpoints and resume; it never asks which stage it runs. `StageContext` carries what a stage reads:
the params (with the one `ModelConfig` every stage uses, resolved here), the prepared data, the training folder
and the latent cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import lightning as L

from layert2v.config import DiTStageConfig, ModelConfig, Params, StageConfig
from layert2v.data.datamodule import LatentDataModule, VidLayerDataModule


@dataclass(frozen=True)
class StageContext:
    params: Params
    prepared: Path  # prepare's output
    out: Path  # the training folder: one `stage<N>/` per stage
    latents: Path  # the latent cache (`layert2v encode`)

    @cached_property
    def model(self) -> ModelConfig:
        """The model every stage builds and MLflow records (`TrainConfig.model_config`)."""
        prepare = self.params.prepare
        return self.params.train.model_config(prepare.max_tokens, prepare.text_pooled)

    def folder(self, name: str) -> Path:
        return self.out / name


@dataclass(frozen=True)
class StageSpec:
    """One training stage. `name` is its params key (`train.<name>`) and its folder under the training folder."""

    name: str
    description: str
    module: Callable[[StageContext], L.LightningModule]
    data: Callable[[StageContext, StageConfig], L.LightningDataModule]
    upstream: Callable[[StageContext], list[Path]]  # files its weights derive from (checkpoints are set aside when
    # they change)
    save: Callable[[L.LightningModule, L.LightningDataModule, Path, StageContext], list[Path]]  # final weights
    final_metrics: Callable[[L.LightningModule, StageContext], dict[str, float]] | None = None  # measured once at
    # the end, logged and gated beside the validation metrics


def pixel_clips(ctx: StageContext, cfg: StageConfig) -> VidLayerDataModule:
    """The VAE stages' data: decoded clips of the prepared cache (their first foreground)."""
    return VidLayerDataModule(ctx.prepared, cfg.batch_size, max_fg=1, seed=ctx.params.train.seed)


def latent_clips(ctx: StageContext, cfg: DiTStageConfig, max_fg: int) -> LatentDataModule:
    """The DiT stages' data: the latent cache, batches of one K each (K <= `max_fg`)."""
    if not (ctx.latents / "encode.json").is_file():
        raise FileNotFoundError(f"latent cache {ctx.latents} is missing: run `layert2v encode` first")
    seed = ctx.params.train.seed
    return LatentDataModule(ctx.prepared, ctx.latents, cfg.batch_size, max_fg, seed=seed, k_weights=cfg.k_weights)
