"""Where MLflow tracking and artifacts live; light on imports so the registry CLI does not load training code.

Tracking defaults to an absolute `sqlite:///<root>/mlflow.db` (a relative URI would follow the CWD) with
artifacts in `<root>/mlartifacts`; `MLFLOW_TRACKING_URI` overrides.
"""

from __future__ import annotations

import os
from pathlib import Path


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else an absolute SQLite file under `root`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def artifact_location(root: Path) -> str:
    return (root / "mlartifacts").resolve().as_uri()


def client(root: Path):
    """An MlflowClient whose tracking and registry both use `tracking_uri(root)`."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri(root), registry_uri=tracking_uri(root))


def experiment_id(root: Path, name: str) -> str:
    """The id of experiment `name`, created with its artifacts under `root` when it does not exist yet."""
    mlflow_client = client(root)
    found = mlflow_client.get_experiment_by_name(name)
    return found.experiment_id if found else mlflow_client.create_experiment(name, artifact_location(root))


PARENT_RUN_FILE = Path("stage0") / "pipeline_run_id"  # under the training folder: the chain's parent run


def parent_run_id(train_dir: Path) -> str | None:
    """The MLflow run the chain's stage runs hang under (opened by stage 0), or None before it exists."""
    path = Path(train_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


def open_parent_run(train_dir: Path, root: Path, experiment: str) -> str:
    """Create the chain's `pipeline` run and record its id under the training folder."""
    run = client(root).create_run(experiment_id(root, experiment), run_name="pipeline")
    path = Path(train_dir) / PARENT_RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run.info.run_id + "\n")
    return run.info.run_id


def stage_run_id(stage_dir: Path) -> str | None:
    """The MLflow run of a training stage (its folder's `mlflow_run_id`), or None when it has not run."""
    path = Path(stage_dir) / "mlflow_run_id"
    return path.read_text().strip() if path.is_file() else None
