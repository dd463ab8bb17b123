"""Run one training stage: Lightning Trainer, MLflow tracking, checkpoints, resume, final weights.

Each stage writes under `<out>/stage<N>/`: `checkpoints/last.ckpt` every `checkpoint_every` steps (a
killed run started again continues from it, in the same MLflow run, whose id is kept in `mlflow_run_id`),
then `vae.safetensors` + `config.json` (stages 0-1) or a pipeline model folder `model/` (stages 2-3) when it
finishes. `fingerprint` records the params and upstream weights a stage's checkpoints were made with: when
they change, the old checkpoints are set aside instead of resumed (DVC keeps these folders with
`persist: true`). Stage 0 opens a parent `pipeline` MLflow run; every stage run is its child. MLflow
tracking defaults to an absolute `sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts`;
`MLFLOW_TRACKING_URI` overrides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from layert2v import tracking
from layert2v.config import ModelConfig, Params, StageConfig, model_preset
from layert2v.data.datamodule import LatentDataModule, VidLayerDataModule
from layert2v.evaluate import evaluate_pipeline, validation_prompts
from layert2v.models.checkpoint import load_vae, save_vae
from layert2v.models.vae import LayerVAE
from layert2v.quality.report import GateFailed, run_metric_gate
from layert2v.training.previews import SamplePreviews
from layert2v.training.stage0_vae import VAEPretraining, rgb_streams
from layert2v.training.stage1_alpha import AlphaAdaptation
from layert2v.training.stage2_joint import JointLayerTraining
from layert2v.training.stage3_multifg import MultiForegroundTraining
from layert2v.training.throughput import Throughput


def dit_config(params: Params) -> ModelConfig:
    """The DiT preset with the text length the cached embeddings were written with."""
    return model_preset(params.train.preset, text_len=params.prepare.max_tokens)


def _module(stage: int, params: Params, out: Path) -> L.LightningModule:
    train = params.train
    if stage == 0:
        return VAEPretraining(model_preset(train.preset), train.stage0)
    if stage == 1:
        return AlphaAdaptation(load_vae(out / "stage0"), train.stage1)
    if stage == 2:
        return JointLayerTraining(dit_config(params), train.stage2, load_vae(out / "stage1"))
    return MultiForegroundTraining(dit_config(params), train.stage3, out / "stage2" / "model", load_vae(out / "stage1"))


def _max_fg(stage: int, params: Params) -> int:
    """Foregrounds per clip a DiT stage trains and samples on: one in stage 2, up to the preset's in stage 3."""
    return 1 if stage == 2 else dit_config(params).max_fg


def _data(stage: int, params: Params, prepared: Path, latents: Path, cfg: StageConfig) -> L.LightningDataModule:
    if stage in (2, 3):
        if not (latents / "encode.json").is_file():
            raise FileNotFoundError(f"latent cache {latents} is missing: run `layert2v encode` first")
        max_fg, seed = _max_fg(stage, params), params.train.seed
        return LatentDataModule(prepared, latents, cfg.batch_size, max_fg, seed=seed, k_weights=cfg.k_weights)
    return VidLayerDataModule(prepared, cfg.batch_size, max_fg=1, seed=params.train.seed)  # the VAE stages use fg 1


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


def _upstream(stage: int, out: Path, latents: Path) -> list[Path]:
    """The files a stage's weights derive from besides params: earlier weights and the latent cache."""
    return {
        0: [],
        1: [out / "stage0" / "vae.safetensors"],
        2: [out / "stage1" / "vae.safetensors", latents / "encode.json"],
        3: [out / "stage1" / "vae.safetensors", out / "stage2" / "model" / "dit.safetensors"],
    }[stage]


def fingerprint(stage: int, params: Params, out: Path, latents: Path) -> str:
    """sha256 of everything that makes a stage's checkpoints resumable: its params and upstream files."""
    stage_cfg = getattr(params.train, f"stage{stage}")
    shared = {k: v for k, v in dataclasses.asdict(params.train).items() if not k.startswith("stage")}
    digest = hashlib.sha256(json.dumps([stage, dataclasses.asdict(stage_cfg), shared], sort_keys=True).encode())
    digest.update(json.dumps(dataclasses.asdict(params.prepare), sort_keys=True).encode())
    for path in _upstream(stage, out, latents):
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()


def _guard_resume(folder: Path, current: str) -> None:
    """Set aside checkpoints (and their MLflow run) made under other params; never resume across a change."""
    recorded = folder / "fingerprint"
    if recorded.is_file() and recorded.read_text().strip() != current:
        stale = folder / "checkpoints"
        if stale.is_dir():
            shutil.rmtree(folder / "stale-checkpoints", ignore_errors=True)
            stale.rename(folder / "stale-checkpoints")
        (folder / "mlflow_run_id").unlink(missing_ok=True)
        (folder / "pipeline_run_id").unlink(missing_ok=True)
        print(f"{folder}: params or upstream weights changed since the last run; starting the stage afresh")
    folder.mkdir(parents=True, exist_ok=True)
    recorded.write_text(current + "\n")


def _parent_run(stage: int, out: Path, root: Path, experiment: str) -> str | None:
    """The pipeline run every stage run hangs under: opened by stage 0, its id kept in `stage0/`."""
    run_file = out / "stage0" / "pipeline_run_id"
    if run_file.is_file():
        return run_file.read_text().strip()
    if stage != 0:
        return None
    run = tracking.client(root).create_run(tracking.experiment_id(root, experiment), run_name="pipeline")
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(run.info.run_id + "\n")
    return run.info.run_id


def _logger(
    folder: Path, root: Path, experiment: str, stage: int, parent: str | None, primary: bool = True
) -> MLFlowLogger:
    """The stage's MLflow run, resumed when `mlflow_run_id` names one; only rank 0 (`primary`) records it
    (other DDP ranks get Lightning's no-op experiment)."""
    run_file = folder / "mlflow_run_id"
    logger = MLFlowLogger(
        experiment_name=experiment,
        run_name=f"stage{stage}",
        tracking_uri=tracking.tracking_uri(root),
        tags={"mlflow.parentRunId": parent} if parent else None,
        artifact_location=tracking.artifact_location(root),
        run_id=run_file.read_text().strip() if run_file.is_file() else None,
    )
    if primary:
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
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"unknown stage {stage}; stages are 0-3")
    L.seed_everything(params.train.seed, workers=True)
    folder, latents = out / f"stage{stage}", latents or Path("artifacts/latents")
    primary = rank_zero_only.rank == 0  # DDP workers re-run this command after rank 0 has set everything up
    if primary:
        _guard_resume(folder, fingerprint(stage, params, out, latents))
    cfg: StageConfig = getattr(params.train, f"stage{stage}")
    data = _data(stage, params, prepared, latents, cfg)
    module = _module(stage, params, out)
    parent = _parent_run(stage, out, root, params.train.experiment) if primary else None
    logger = _logger(folder, root, params.train.experiment, stage, parent, primary)
    if primary:
        _log_params(logger, params, cfg)
    checkpoints = ModelCheckpoint(
        dirpath=folder / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every
    )
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accelerator="cpu" if params.train.strategy == "ddp" and not torch.cuda.is_available() else "auto",
        devices=params.train.devices,
        num_nodes=params.train.num_nodes,
        strategy=params.train.strategy,
        precision=params.train.precision,
        gradient_clip_val=cfg.grad_clip,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=log_interval(cfg.max_steps),
        callbacks=[checkpoints, Throughput(folder), *_previews(stage, module, params, prepared, folder, cfg)],
        logger=[logger, CSVLogger(folder, name="", version="csv")],  # csv/metrics.csv: the DVC loss plots
        default_root_dir=folder,
    )
    last = folder / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    if not trainer.is_global_zero:
        return folder  # DDP: rank 0 saves, gates and logs
    saved = _save(stage, module, data, folder, out)
    for path in saved:
        logger.experiment.log_artifact(logger.run_id, str(path), "weights")
    if cfg.gate:
        logged = logger.experiment.get_run(logger.run_id).data.metrics  # also holds a resumed run's last losses
        losses = {k: float(v) for k, v in logged.items() if k.startswith("train/")}
        metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
        metrics |= _sample_metrics(stage, params, prepared, folder, losses)
        _gate(stage, metrics, cfg, folder, logger)
    return saved[0]


def _previews(
    stage: int, module: L.LightningModule, params: Params, prepared: Path, folder: Path, cfg: StageConfig
) -> list[L.Callback]:
    """DiT stages log a sample preview of the first validation prompt every `val_every` steps."""
    if stage < 2:
        return []
    prompt = validation_prompts(prepared, 1, _max_fg(stage, params))[0]
    size = (params.prepare.height, params.prepare.width)
    return [
        SamplePreviews(
            module.vae, prompt, params.evaluate, params.prepare.frames, size, folder / "previews", cfg.val_every
        )
    ]


def log_interval(max_steps: int) -> int:
    """Steps between logged training metrics: every step for short runs, every 10th from 1000 steps.

    Each logged step is a synchronous MLflow SQLite write; at every step it cost the VAE stages ~10 ms of a
    40-85 ms step. One in ten still leaves 100+ points per loss curve.
    """
    return min(10, max(1, max_steps // 100))


def _sample_metrics(
    stage: int, params: Params, prepared: Path, folder: Path, losses: dict[str, float]
) -> dict[str, float]:
    """DiT stages: finite last training losses and the metrics of validation samples from the saved model."""
    if stage < 2:
        return {}
    from layert2v.pipeline import LayerT2VPipeline

    pipeline = LayerT2VPipeline.from_folder(folder / "model")
    prompts = validation_prompts(prepared, params.evaluate.prompts, _max_fg(stage, params))
    size = (params.prepare.height, params.prepare.width)
    summary, _ = evaluate_pipeline(pipeline, prompts, params.evaluate, params.prepare.frames, size, folder / "samples")
    finite = float(bool(losses) and all(math.isfinite(v) for v in losses.values()))
    return {"finite_loss": finite} | {f"sample/{k}": v for k, v in summary.items()}


def _gate(stage: int, metrics: dict[str, float], cfg: StageConfig, folder: Path, logger: MLFlowLogger) -> None:
    """Check the finished stage's thresholds; a miss raises `GateFailed` (the report is kept and logged)."""
    report_path = folder / "gate.json"
    report = run_metric_gate(f"stage {stage} gate", metrics, cfg.gate, report_path)
    for path in (report_path, report_path.with_suffix(".md")):
        logger.experiment.log_artifact(logger.run_id, str(path), "gate")
    for key, value in metrics.items():
        if key.startswith("sample/"):
            logger.experiment.log_metric(logger.run_id, key, value)
    logger.experiment.set_tag(logger.run_id, "gate", "passed" if report.passed else "failed")
    if not report.passed:
        raise GateFailed(report, report_path)


@torch.no_grad()
def _fit_latent_stats(vae: LayerVAE, data: VidLayerDataModule, batches: int = 8) -> None:
    loader = iter(data.train_dataloader())
    vae.fit_latent_stats([rgb_streams(next(loader)) for _ in range(min(batches, len(data.train_dataloader())))])
