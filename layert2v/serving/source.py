"""Where the service's model comes from: a model folder, or a registry alias it follows.

`FolderSource` serves one folder for the service's life. `RegistrySource` resolves `models:/<name>@<alias>` to a
version, downloads that version's artifacts (the model folder, and its ONNX export when it was registered with
one) under the service's folder, and is asked again every `serve.poll_seconds`: a promotion or rollback moves
the alias, the service loads the new version beside the old one and switches between jobs (`service.py`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from layert2v.config import ServeConfig
from layert2v.export.probe import pick_backend, runs_in
from layert2v.pipeline import LayerT2VPipeline


@dataclass(frozen=True)
class Loaded:
    """A pipeline ready to serve and what it is."""

    pipeline: LayerT2VPipeline
    version: str  # registry version, or `folder` for a model folder
    uri: str
    backend: str


def load(folder: Path, onnx: Path | None, cfg: ServeConfig, version: str, uri: str) -> Loaded:
    """The pipeline on `cfg.backend` (`auto` resolved here, per K), bf16 autocast on the torch backends with
    `cfg.bf16`, onnxruntime's int8 graphs with `cfg.int8`."""
    asked = pick_backend(cfg.backend, folder, onnx, precision="int8" if cfg.int8 else None)
    chosen = replace(asked, precision=runs_in(asked.backend, asked.precision))  # int8 only where graphs run
    bf16 = cfg.bf16 and chosen.backend in ("torch", "compile")
    pipeline = LayerT2VPipeline.from_folder(
        folder,
        backend=chosen.backend,
        onnx=onnx if chosen.backend != "torch" else None,
        precision="bf16" if bf16 else chosen.precision,
        eager_ks=chosen.eager_ks,
    )
    pipeline.limits = cfg.limits()
    return Loaded(pipeline, version, uri, f"{chosen} (bf16)" if bf16 else str(chosen))


class FolderSource:
    """One model folder (with its `onnx/` export when there is one), never reloaded."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def current(self) -> str:
        return "folder"

    def load(self, version: str, cfg: ServeConfig) -> Loaded:
        onnx = self.folder / "onnx"
        return load(self.folder, onnx if onnx.is_dir() else None, cfg, version, str(self.folder))


class RegistrySource:
    """`models:/<name>@<alias>` of an MLflow tracking server (or store URI); versions are downloaded to `cache`."""

    def __init__(self, tracking_uri: str, name: str, alias: str, cache: Path) -> None:
        self.tracking_uri, self.name, self.alias, self.cache = tracking_uri, name, alias, Path(cache)

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def current(self) -> str:
        """The version the alias names now (an error when the alias is not set)."""
        return str(self._client().get_model_version_by_alias(self.name, self.alias).version)

    def load(self, version: str, cfg: ServeConfig) -> Loaded:
        import mlflow

        target = self.cache / f"{self.name}-v{version}"
        if not (target / "MLmodel").is_file():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            mlflow.set_registry_uri(self.tracking_uri)
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{version}", dst_path=str(partial), tracking_uri=self.tracking_uri
            )
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        artifacts = pyfunc_artifacts(target)
        if "model" not in artifacts:
            raise FileNotFoundError(f"version {version} of {self.name} was logged without a `model` artifact")
        uri = f"models:/{self.name}/{version}"
        return load(artifacts["model"], artifacts.get("onnx"), cfg, version, uri)


def pyfunc_artifacts(folder: Path) -> dict[str, Path]:
    """Artifact name -> local path, from a downloaded pyfunc model's MLmodel file (MLflow keeps each artifact
    under its source folder's name, so `model` may sit in `artifacts/m`)."""
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    return {name: folder / entry["path"] for name, entry in artifacts.items()}
