"""Run one training stage: Lightning Trainer, MLflow tracking, checkpoints, resume, final weights.

Each stage writes under `<out>/stage<N>/`: `checkpoints/last.ckpt` every `checkpoint_every` steps (a
killed run started again continues from it, in the same MLflow run, whose id is kept in `mlflow_run_id`),
then `vae.safetensors` + `config.json` when it finishes. MLflow tracking defaults to an absolute
`sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts`; `MLFLOW_TRACKING_URI` overrides.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from layert2v.config import ModelConfig, Params, StageConfig, model_preset
from layert2v.data.datamodule import LatentDataModule, VidLayerDataModule
from layert2v.models.vae import LayerVAE, load_vae, save_vae
from layert2v.quality.report import GateFailed, run_metric_gate
from layert2v.training.stage0_vae import VAEPretraining, rgb_streams
from layert2v.training.stage1_alpha import AlphaAdaptation
from layert2v.training.stage2_joint import JointLayerTraining
from layert2v.training.stage3_multifg import MultiForegroundTraining


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else an absolute SQLite file under `root` (relative URIs follow the CWD)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def dit_config(params: Params) -> ModelConfig:
    """The DiT preset with the text length the cached embeddings were written with."""
    return model_preset(params.train.preset, text_len=params.prepare.max_tokens)


def _module(stage: int, params: Params, out: Path) -> tuple[L.LightningModule, StageConfig]:
    train = params.train
    if stage == 0:
        return VAEPretraining(model_preset(train.preset), train.stage0), train.stage0
    if stage == 1:
        return AlphaAdaptation(load_vae(out / "stage0"), train.stage1), train.stage1
    if stage == 2:
        return JointLayerTraining(dit_config(params), train.stage2), train.stage2
    if stage == 3:
        return MultiForegroundTraining(dit_config(params), train.stage3, out / "stage2" / "model"), train.stage3
    raise ValueError(f"unknown stage {stage}; stages are 0-3")


def _data(stage: int, params: Params, prepared: Path, latents: Path, cfg: StageConfig) -> L.LightningDataModule:
    if stage in (2, 3):
        if not (latents / "encode.json").is_file():
            raise FileNotFoundError(f"latent cache {latents} is missing: run `layert2v encode` first")
        max_fg = 1 if stage == 2 else dit_config(params).max_fg
        return LatentDataModule(prepared, latents, cfg.batch_size, max_fg, seed=params.train.seed)
    return VidLayerDataModule(
        prepared, cfg.batch_size, model_preset(params.train.preset).max_fg, seed=params.train.seed
    )


def _save(stage: int, module: L.LightningModule, data: L.LightningDataModule, folder: Path, out: Path) -> list[Path]:
    """Stage 0-1: the VAE; stage 2: a complete pipeline model folder (EMA DiT + stage-1 VAE + text encoder)."""
    if stage in (2, 3):
        from layert2v.models.text import load_text_encoder
        from layert2v.pipeline import LayerT2VPipeline

        dit = module.ema
        pipeline = LayerT2VPipeline(dit, load_vae(out / "stage1"), load_text_encoder(None, dit.cfg.text_len))
        model = pipeline.save(folder / "model")
        return [model / "config.json", model / "dit.safetensors", model / "vae.safetensors"]
    if stage == 0:
        _fit_latent_stats(module.vae, data)
    return [save_vae(module.vae, folder), folder / "config.json"]


def _logger(folder: Path, root: Path, experiment: str, stage: int) -> MLFlowLogger:
    run_file = folder / "mlflow_run_id"
    logger = MLFlowLogger(
        experiment_name=experiment,
        run_name=f"stage{stage}",
        tracking_uri=tracking_uri(root),
        artifact_location=(root / "mlartifacts").resolve().as_uri(),
        run_id=run_file.read_text().strip() if run_file.is_file() else None,
    )
    folder.mkdir(parents=True, exist_ok=True)
    run_file.write_text(logger.run_id + "\n")
    return logger


def _log_params(logger: MLFlowLogger, params: Params, stage: StageConfig) -> None:
    flat = {f"train.{k}": v for k, v in dataclasses.asdict(params.train).items() if not isinstance(v, dict)}
    flat |= {f"stage.{k}": v for k, v in dataclasses.asdict(stage).items()}
    flat |= {f"model.{k}": v for k, v in dataclasses.asdict(model_preset(params.train.preset)).items()}
    existing = logger.experiment.get_run(logger.run_id).data.params
    logger.log_hyperparams({k: v for k, v in flat.items() if k not in existing})  # a resumed run keeps its params


def train_stage(
    stage: int, params: Params, prepared: Path, out: Path, root: Path = Path("."), latents: Path | None = None
) -> Path:
    """Train `stage` and return the first saved file; resumes from `last.ckpt` when present."""
    L.seed_everything(params.train.seed, workers=True)
    folder = out / f"stage{stage}"
    module, cfg = _module(stage, params, out)
    data = _data(stage, params, prepared, latents or Path("artifacts/latents"), cfg)
    logger = _logger(folder, root, params.train.experiment, stage)
    _log_params(logger, params, cfg)
    checkpoints = ModelCheckpoint(
        dirpath=folder / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every
    )
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accelerator="auto",
        devices=params.train.devices,
        num_nodes=params.train.num_nodes,
        strategy=params.train.strategy,
        precision=params.train.precision,
        gradient_clip_val=cfg.grad_clip,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=[checkpoints],
        logger=logger,
        default_root_dir=folder,
    )
    last = folder / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    saved = _save(stage, module, data, folder, out)
    for path in saved:
        logger.experiment.log_artifact(logger.run_id, str(path), "weights")
    if cfg.gate:
        _gate(stage, trainer, module, data, cfg, folder, logger)
    return saved[0]


def _gate(
    stage: int,
    trainer: L.Trainer,
    module: L.LightningModule,
    data: L.LightningDataModule,
    cfg: StageConfig,
    folder: Path,
    logger: MLFlowLogger,
) -> None:
    """Validate the finished stage and check its thresholds; a miss raises `GateFailed` (the report is kept)."""
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    report_path = folder / "gate.json"
    report = run_metric_gate(f"stage {stage} gate", metrics, cfg.gate, report_path)
    for path in (report_path, report_path.with_suffix(".md")):
        logger.experiment.log_artifact(logger.run_id, str(path), "gate")
    logger.experiment.set_tag(logger.run_id, "gate", "passed" if report.passed else "failed")
    if not report.passed:
        raise GateFailed(report, report_path)


@torch.no_grad()
def _fit_latent_stats(vae: LayerVAE, data: VidLayerDataModule, batches: int = 8) -> None:
    loader = iter(data.train_dataloader())
    vae.fit_latent_stats([rgb_streams(next(loader)) for _ in range(min(batches, len(data.train_dataloader())))])
