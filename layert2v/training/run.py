"""Run one training stage: Lightning Trainer, MLflow tracking, checkpoints, resume, final weights.

Each stage writes under `<out>/stage<N>/`: `checkpoints/last.ckpt` every `checkpoint_every` steps (a
killed run started again continues from it, in the same MLflow run, whose id is kept in `mlflow_run_id`),
then `vae.safetensors` + `config.json` (stages 0-1) or a pipeline model folder `model/` (stages 2-3) when it
finishes, and checks the stage's gate on its validation metrics. Which stage does what is `STAGES`, one
`StageSpec` per stage file; this module wires any of them into the Trainer and tracking. The DiT stages' sample
gates are not here: they are DVC stages of their own (`quality/sample_gate.py`). `fingerprint` records the params and upstream weights a stage's checkpoints were made with: when
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
from layert2v.config import Params, StageConfig
from layert2v.quality.report import GateFailed, run_metric_gate
from layert2v.training import stage0_vae, stage1_alpha, stage2_joint, stage3_multifg
from layert2v.training.precision import resolve_precision
from layert2v.training.schedule import GradNormClip
from layert2v.training.spec import StageContext, StageSpec
from layert2v.training.throughput import Throughput

STAGES: dict[str, StageSpec] = {
    spec.name: spec for spec in (stage0_vae.STAGE, stage1_alpha.STAGE, stage2_joint.STAGE, stage3_multifg.STAGE)
}


def fingerprint(spec: StageSpec, ctx: StageContext) -> str:
    """sha256 of everything that makes a stage's checkpoints resumable: its params and upstream files."""
    cfg = getattr(ctx.params.train, spec.name)
    shared = {k: v for k, v in dataclasses.asdict(ctx.params.train).items() if k not in STAGES}
    digest = hashlib.sha256(json.dumps([spec.name, dataclasses.asdict(cfg), shared], sort_keys=True).encode())
    digest.update(json.dumps(dataclasses.asdict(ctx.params.prepare), sort_keys=True).encode())
    for path in spec.upstream(ctx):
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


def _parent_run(spec: StageSpec, out: Path, root: Path, experiment: str) -> str | None:
    """The pipeline run every stage run hangs under: opened by the first stage (see `tracking.parent_run_id`)."""
    parent = tracking.parent_run_id(out)
    if parent is not None or spec.name != next(iter(STAGES)):
        return parent
    return tracking.open_parent_run(out, root, experiment)


def _logger(
    folder: Path, root: Path, experiment: str, name: str, parent: str | None, primary: bool = True
) -> MLFlowLogger:
    """The stage's MLflow run, resumed when `mlflow_run_id` names one; only rank 0 (`primary`) records it
    (other DDP ranks get Lightning's no-op experiment)."""
    run_file = folder / "mlflow_run_id"
    logger = MLFlowLogger(
        experiment_name=experiment,
        run_name=name,
        tracking_uri=tracking.tracking_uri(root),
        tags={"mlflow.parentRunId": parent} if parent else None,
        artifact_location=tracking.artifact_location(root),
        run_id=run_file.read_text().strip() if run_file.is_file() else None,
    )
    if primary:
        folder.mkdir(parents=True, exist_ok=True)
        run_file.write_text(logger.run_id + "\n")
    return logger


def _log_params(logger: MLFlowLogger, ctx: StageContext, stage: StageConfig) -> None:
    """The shared train settings, the stage's own and the model config the stage built (`ctx.model`)."""
    flat = {f"train.{k}": v for k, v in dataclasses.asdict(ctx.params.train).items() if not isinstance(v, dict)}
    flat |= {f"stage.{k}": v for k, v in dataclasses.asdict(stage).items()}
    flat |= {f"model.{k}": v for k, v in dataclasses.asdict(ctx.model).items()}
    existing = logger.experiment.get_run(logger.run_id).data.params
    logger.log_hyperparams({k: v for k, v in flat.items() if k not in existing})  # a resumed run keeps its params


def train_stage(
    stage: int, params: Params, prepared: Path, out: Path, root: Path = Path("."), latents: Path | None = None
) -> Path:
    """Train stage `stage` (0-3) and return the first saved file; resumes from `last.ckpt` when present."""
    spec = STAGES.get(f"stage{stage}")
    if spec is None:
        raise ValueError(f"unknown stage {stage}; stages are 0-{len(STAGES) - 1}")
    L.seed_everything(params.train.seed, workers=True)
    ctx = StageContext(params, prepared, out, latents or Path("artifacts/latents"))
    folder, cfg = ctx.folder(spec.name), getattr(params.train, spec.name)
    primary = rank_zero_only.rank == 0  # DDP workers re-run this command after rank 0 has set everything up
    if primary:
        _guard_resume(folder, fingerprint(spec, ctx))
    data, module = spec.data(ctx, cfg), spec.module(ctx)
    parent = _parent_run(spec, out, root, params.train.experiment) if primary else None
    logger = _logger(folder, root, params.train.experiment, spec.name, parent, primary)
    processes = params.train.devices * params.train.num_nodes
    precision, probed = resolve_precision(params.train.precision, module, data, processes)
    if primary:
        _log_params(logger, ctx, cfg)
        _log_precision(logger, precision, probed)
        tracking.log_lineage(root, logger.run_id)
    trainer = _trainer(params, cfg, folder, logger, precision)
    last = folder / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    if not trainer.is_global_zero:
        return folder  # DDP: rank 0 saves, gates and logs
    saved = spec.save(module, data, folder, ctx)
    for path in saved:
        logger.experiment.log_artifact(logger.run_id, str(path), "weights")
    final = spec.final_metrics(module, ctx) if spec.final_metrics else {}
    for key, value in final.items():
        logger.experiment.log_metric(logger.run_id, key, value)
    if cfg.gate:
        metrics = trainer.validate(module, datamodule=data, verbose=False)[0] | _finite_loss(logger) | final
        _gate(spec.name, metrics, cfg, folder, logger)
    return saved[0]


def _log_precision(logger: MLFlowLogger, precision: str, probed: dict[str, float]) -> None:
    """The precision this run trains in (`train.precision: auto` resolves per host) and the probe's step times."""
    print(f"training precision: {precision}" + (f" (probe: {probed} s a step)" if probed else ""))
    if "precision_used" not in logger.experiment.get_run(logger.run_id).data.params:
        logger.log_hyperparams({"precision_used": precision})
    for name, seconds in probed.items():
        logger.experiment.log_metric(logger.run_id, f"precision_probe/{name}_s", seconds)


def _trainer(params: Params, cfg: StageConfig, folder: Path, logger: MLFlowLogger, precision: str) -> L.Trainer:
    checkpoints = ModelCheckpoint(
        dirpath=folder / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every
    )
    return L.Trainer(
        max_steps=cfg.max_steps,
        accelerator="cpu" if params.train.strategy == "ddp" and not torch.cuda.is_available() else "auto",
        devices=params.train.devices,
        num_nodes=params.train.num_nodes,
        strategy=params.train.strategy,
        precision=precision,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=log_interval(cfg.max_steps),
        callbacks=[checkpoints, Throughput(folder), GradNormClip(cfg.grad_clip)],
        logger=[logger, CSVLogger(folder, name="", version="csv")],  # csv/metrics.csv: the DVC loss plots
        default_root_dir=folder,
    )


def _finite_loss(logger: MLFlowLogger) -> dict[str, float]:
    """1.0 when every last logged training loss is finite (a resumed run's too), else 0.0."""
    logged = logger.experiment.get_run(logger.run_id).data.metrics
    losses = [float(v) for k, v in logged.items() if k.startswith("train/")]
    return {"finite_loss": float(bool(losses) and all(math.isfinite(v) for v in losses))}


def log_interval(max_steps: int) -> int:
    """Steps between logged training metrics: every step for short runs, every 10th from 1000 steps.

    Each logged step is a synchronous MLflow SQLite write; at every step it cost the VAE stages ~10 ms of a
    40-85 ms step. One in ten still leaves 100+ points per loss curve.
    """
    return min(10, max(1, max_steps // 100))


def _gate(name: str, metrics: dict[str, float], cfg: StageConfig, folder: Path, logger: MLFlowLogger) -> None:
    """Check the finished stage's thresholds; a miss raises `GateFailed` (the report is kept and logged)."""
    report_path = folder / "gate.json"
    report = run_metric_gate(f"{name} gate", metrics, cfg.gate, report_path)
    for path in (report_path, report_path.with_suffix(".md")):
        logger.experiment.log_artifact(logger.run_id, str(path), "gate")
    logger.experiment.set_tag(logger.run_id, "gate", "passed" if report.passed else "failed")
    if not report.passed:
        raise GateFailed(report, report_path)
