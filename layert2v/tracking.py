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
