"""The LayerT2V flows. Parameters are typed, so the Prefect UI shows a form for each.

- `ingest`: synthesise a VidLayer dataset or import one (folder layout or jsonl), `dvc add data`, then the
  `prepare` and `validate` (data gate) stages;
- `train`: the training stages in order (each with its gate), with a progress artifact;
- `export`: ONNX graphs of the trained DiT and their parity gate (the graphs are registered with the model);
- `evaluate_and_promote`: validation samples + gate, registration as `challenger`, promotion by the rule;
- `pipeline`: all four.

Every flow works on a repository folder (`repo`, default: the current directory) whose `params.yaml` the
DVC stages read; `profile` rewrites that file from a profile of the same file first (`git diff` shows it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.tasks import dvc_stage, publish_evaluation, publish_summary, shell

TrainStage = Literal[
    "stage0_vae", "stage1_alpha", "encode", "stage2_joint", "stage2_gate", "stage3_multifg", "stage3_gate"
]
TRAIN_STAGES: list[TrainStage] = [
    "stage0_vae",
    "stage1_alpha",
    "encode",
    "stage2_joint",
    "stage2_gate",
    "stage3_multifg",
    "stage3_gate",
]
Profile = Literal["default", "smoke", "keep"]
Source = Literal["existing", "synthetic", "folder", "jsonl"]


def apply_profile(repo: Path, profile: Profile) -> None:
    """`keep` leaves params.yaml alone; a profile name writes that profile's plain params into it."""
    if profile == "keep":
        return
    from layert2v.config import resolve_profile

    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    if "profiles" not in raw:
        raise ValueError(f"{path} holds plain params (no profiles); use profile='keep'")
    path.write_text(yaml.safe_dump(resolve_profile(raw, profile), sort_keys=False))


@flow(name="ingest", log_prints=True)
def ingest(
    repo: str = ".",
    source: Source = "existing",
    source_path: str | None = None,
    profile: Profile = "keep",
) -> str:
    """Make or import the dataset under `data/vidlayer`, version it with DVC, prepare it and gate it.

    Args:
        repo: the repository the DVC stages run in (default: where the flows are served from).
        source: `existing` uses `data/vidlayer` as it is (DVC decides what reruns); `synthetic` regenerates the
            default dataset; `folder` / `jsonl` import a VidLayer folder or a jsonl manifest from `source_path`.
        source_path: the folder or jsonl manifest to import (sources `folder` and `jsonl`).
        profile: `keep` leaves params.yaml alone; a profile name (`smoke`, `default`) writes its params first.
    """
    root = Path(repo).resolve()
    apply_profile(root, profile)
    if source == "existing":
        if not (root / "data" / "vidlayer").is_dir():
            raise FileNotFoundError(
                f"{root / 'data/vidlayer'} does not exist: run `make data`, or choose source synthetic"
            )
    elif source == "synthetic":
        shell(["layert2v", "data", "synth", "--out", "data/vidlayer"], str(root))
    else:
        if not source_path:
            raise ValueError(f"source={source!r} needs source_path (a VidLayer folder or a jsonl manifest)")
        src = str(Path(source_path).resolve())
        shell(["layert2v", "data", "import", src, "--out", "data/vidlayer", "--kind", source], str(root))
    shell(["dvc", "add", "-q", "data"], str(root))
    for stage in ("prepare", "validate"):
        dvc_stage(stage, str(root))
    return str(root / "artifacts" / "prepared")


@flow(name="train", log_prints=True)
def train(repo: str = ".", stages: list[TrainStage] | None = None) -> str:
    """Run the training stages in order (all by default); a failing gate fails the flow with its report.

    Args:
        repo: the repository the DVC stages run in.
        stages: the training and sample-gate stages to run (default: all, in order).
    """
    root = Path(repo).resolve()
    chosen = [s for s in TRAIN_STAGES if s in (stages or TRAIN_STAGES)]
    progress = create_progress_artifact(0.0, key="training-progress", description="training stages done")
    for done, stage in enumerate(chosen, start=1):
        get_run_logger().info("training stage %s (%d/%d)", stage, done, len(chosen))
        dvc_stage(stage, str(root))
        update_progress_artifact(progress, 100.0 * done / len(chosen))
    return str(root / "artifacts" / "train")


@flow(name="export", log_prints=True)
def export(repo: str = ".") -> str:
    """ONNX export of the stage-3 model; a parity failure fails the flow with the gate report as an artifact.

    Args:
        repo: the repository the DVC stages run in.
    """
    root = Path(repo).resolve()
    dvc_stage("export", str(root))
    return str(root / "artifacts" / "export" / "onnx")


@flow(name="evaluate_and_promote", log_prints=True)
def evaluate_and_promote(repo: str = ".") -> dict:
    """Validation samples and their gate, registration as challenger, promotion by the params.yaml rule.

    Args:
        repo: the repository the DVC stages run in.
    """
    root = Path(repo).resolve()
    ran = {stage: dvc_stage(stage, str(root)) for stage in ("evaluate", "register", "promote")}
    return publish_evaluation(str(root), ran["promote"])


@flow(name="pipeline", log_prints=True)
def pipeline(
    repo: str = ".",
    source: Source = "existing",
    source_path: str | None = None,
    profile: Profile = "keep",
    stages: list[TrainStage] | None = None,
) -> dict:
    """Everything: ingest -> train -> export -> evaluate_and_promote, each a subflow run of its own; a summary
    artifact on this run says what passed, what it scored and which model version came of it.

    Args:
        repo: the repository the DVC stages run in (default: where the flows are served from).
        source: `existing` uses `data/vidlayer` as it is; `synthetic` regenerates it; `folder` / `jsonl` import one.
        source_path: the folder or jsonl manifest to import (sources `folder` and `jsonl`).
        profile: `keep` leaves params.yaml alone; a profile name writes its params first.
        stages: the training stages to run (default: all).
    """
    ingest(repo, source, source_path, profile)
    train(repo, stages)
    export(repo)
    result = evaluate_and_promote(repo)
    publish_summary(repo, result)
    return result
