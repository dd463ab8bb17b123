"""Where MLflow tracking and artifacts live, the chain's parent run, and the lineage every run carries; light on
imports so the registry CLI does not load training code.

Tracking defaults to an absolute `sqlite:///<root>/mlflow.db` (a relative URI would follow the CWD) with
artifacts in `<root>/mlartifacts`; `MLFLOW_TRACKING_URI` overrides. Every run of the chain is tagged with
`git_commit`, `git_dirty` (uncommitted changes, e.g. a `dvc.lock` not yet committed) and `data_version` (the md5
`data.dvc` records), and has the dataset as an MLflow input, so the runs table's Dataset column names it.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import yaml


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
    log_lineage(root, run.info.run_id)
    path = Path(train_dir) / PARENT_RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run.info.run_id + "\n")
    return run.info.run_id


def stage_run_id(stage_dir: Path) -> str | None:
    """The MLflow run of a training stage (its folder's `mlflow_run_id`), or None when it has not run."""
    path = Path(stage_dir) / "mlflow_run_id"
    return path.read_text().strip() if path.is_file() else None


def git_commit(repo: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def git_dirty(repo: Path) -> str:
    """ "true" when the working tree has uncommitted changes to tracked files, "unknown" outside git."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=False
    )
    return "unknown" if done.returncode != 0 else str(bool(done.stdout.strip())).lower()


def data_version(repo: Path) -> str:
    """The md5 of the dataset as `data.dvc` records it ("untracked" without one)."""
    path = repo / "data.dvc"
    if not path.is_file():
        return "untracked"
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs", [{}])
    return str(outs[0].get("md5", "unknown"))


def lineage_tags(repo: Path) -> dict[str, str]:
    return {"git_commit": git_commit(repo), "git_dirty": git_dirty(repo), "data_version": data_version(repo)}


def log_lineage(root: Path, run_id: str, repo: Path = Path(".")) -> None:
    """Lineage tags on `run_id`, and the DVC-versioned dataset as its input (name `vidlayer`, digest its md5)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    mlflow_client = client(root)
    for key, value in lineage_tags(repo).items():
        mlflow_client.set_tag(run_id, key, value)
    with warnings.catch_warnings():  # MLflow registers its local source class twice and says so on every call
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str((repo / "data" / "vidlayer").resolve()))
    dataset = MetaDataset(source=source, name="vidlayer", digest=data_version(repo)[:36])
    training = InputTag(key="mlflow.data.context", value="training")
    mlflow_client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[training])])


def end_parent_run(train_dir: Path, root: Path, status: str) -> None:
    """Mark the chain's `pipeline` run ended: `FINISHED` when promotion ran, `FAILED` when a gate stopped the chain."""
    run_id = parent_run_id(train_dir)
    if run_id is not None:
        client(root).set_terminated(run_id, status)
