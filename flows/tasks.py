"""Prefect tasks that run DVC stages and publish what they produced.

DVC keeps the lineage: every step is `dvc repro --single-item <stage>` in the repository, one at a time
(DVC holds a repository lock), so `dvc.lock` records exactly what ran. Tasks pass paths and MLflow URIs,
never tensors. A stage that exits non-zero (a gate) fails its task; its report is published first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

BIN = Path(sys.executable).parent
MLFLOW_UI = os.environ.get("LAYERT2V_MLFLOW_UI", "http://127.0.0.1:5000")


class StageFailed(RuntimeError):
    """A DVC stage (often its gate) failed; the message carries the command's last output."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def _env() -> dict[str, str]:
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def run_command(cmd: list[str], repo: Path, log: Callable[[str], None] | None = None) -> str:
    """Run `cmd` in `repo` with this environment's tools first on PATH, passing each output line to `log` as it
    comes (the task log, so a 5-minute stage shows its progress); a non-zero exit raises StageFailed."""
    process = subprocess.Popen(
        cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if log is not None and line.strip():
            log(line.rstrip())
    output = "".join(lines)
    if process.wait() != 0:
        raise StageFailed(f"`{' '.join(cmd)}` exited {process.returncode}:\n{output[-4000:]}", process.returncode)
    return output


def _artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _paths(entries: list) -> list[str]:
    """Paths of a dvc.yaml `outs:` / `metrics:` list (plain strings or `{path: options}`)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def gate_reports(stage: str, repo: Path) -> list[Path]:
    """The gate reports (`*gate.json`) a stage writes, as dvc.yaml declares them: the stage's own `metrics:`, and
    the top-level `metrics:` that lie in one of its outputs (the training stages' reports)."""
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    spec = dvc["stages"].get(stage, {})
    outs = _paths(spec.get("outs"))
    inside = [m for m in _paths(dvc.get("metrics")) if any(m.startswith(out.rstrip("/") + "/") for out in outs)]
    return [repo / m for m in _paths(spec.get("metrics")) + inside if m.endswith("gate.json")]


def publish_gate(stage: str, repo: Path) -> bool | None:
    """The stage's gate report as a table artifact; returns whether it passed (None when it has no gate)."""
    path = next((p for p in gate_reports(stage, repo) if p.is_file()), None)
    if path is None:
        return None
    report = json.loads(path.read_text())
    rows = [
        {"rule": r["rule"], "passed": r["passed"], "failing": r["failing"], "examples": "; ".join(r["examples"])}
        for r in report["rules"]
    ]
    create_table_artifact(rows, key=_artifact_key(f"gate-{stage}"), description=f"{report['gate']}: {path}")
    return bool(report["passed"])


@task(
    task_run_name="{stage}",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=lambda task, run, state: _is_lock_error(state),
)
def dvc_stage(stage: str, repo: str) -> bool:
    """`dvc repro --single-item <stage>`, its output streamed to the task log; publishes the stage's gate report;
    retried only on DVC lock errors. Returns whether the stage ran (False: up to date)."""
    logger = get_run_logger()
    root = Path(repo)
    try:
        output = run_command(["dvc", "repro", "--single-item", stage], root, logger.info)
    except StageFailed:
        publish_gate(stage, root)
        raise
    publish_gate(stage, root)
    ran = f"Running stage '{stage}'" in output
    logger.info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


def _stage_failure(state) -> StageFailed | None:
    """The `StageFailed` a failed task state holds (None for any other outcome): what the retry rules look at."""
    try:
        state.result()
    except StageFailed as failed:
        return failed
    except Exception:
        return None
    return None


def _is_lock_error(state) -> bool:
    failure = _stage_failure(state)
    return failure is not None and "Unable to acquire lock" in str(failure)


def _command_name() -> str:
    """A shell task's run name: its command's first words (`layert2v data import`, `dvc add`)."""
    from prefect.runtime import task_run

    words = [w for w in task_run.parameters.get("cmd", []) if not w.startswith(("-", "/"))]
    return " ".join(words[:3]) or "shell"


@task(
    task_run_name=_command_name,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=lambda task, run, state: not _is_bad_input(state),
)
def shell(cmd: list[str], repo: str) -> str:
    """Any other command of the platform (synthesis, import, `dvc add`), its output streamed to the task log,
    retried on transient errors; bad input (a `layert2v` command's exit status 2) is not retried, since it fails
    the same way again."""
    return run_command(cmd, Path(repo), get_run_logger().info)


def _is_bad_input(state) -> bool:
    failure = _stage_failure(state)
    return failure is not None and failure.returncode == 2


def mlflow_run_link(root: Path, run_file: str) -> str | None:
    """The MLflow UI page of the run whose id `run_file` holds (None when it has none)."""
    path = root / run_file
    if not path.is_file():
        return None
    from layert2v import tracking

    run = tracking.client(root).get_run(path.read_text().strip())
    return f"{MLFLOW_UI}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


@task
def publish_evaluation(repo: str, promoted_now: bool) -> dict:
    """Markdown report of the evaluation and of this run's promotion decision (or that none was taken), with links
    to the evaluation's MLflow run (its previews and report) and to the model version."""
    root = Path(repo)
    metrics = json.loads((root / "artifacts/eval/metrics.json").read_text())
    registered = json.loads((root / "artifacts/registry/registered.json").read_text())
    decision = json.loads((root / "artifacts/registry/promotion.json").read_text())
    lines = ["# LayerT2V evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    if promoted_now:
        verdict = "promoted to **champion**" if decision["promote"] else "**not promoted**"
        lines += ["", f"Version {registered['version']} of `{registered['name']}`: {verdict} ({decision['reason']})."]
    else:
        lines += ["", f"No promotion decision in this run: nothing changed since version {registered['version']}."]
    evaluation = mlflow_run_link(root, "artifacts/eval/mlflow_run_id")
    if evaluation:
        lines += [
            "",
            f"Previews, samples and the gate report: [the evaluation's MLflow run]({evaluation}) (Artifacts).",
        ]
        create_link_artifact(evaluation, link_text="MLflow: evaluation run (previews)", key="mlflow-evaluation-run")
    model = f"{MLFLOW_UI}/#/models/{registered['name']}/versions/{registered['version']}"
    create_markdown_artifact("\n".join(lines), key="evaluation-report", description="validation-sample metrics")
    create_link_artifact(
        model, link_text=f"MLflow: {registered['name']} v{registered['version']}", key="mlflow-model-version"
    )
    return {"metrics": metrics, "version": registered["version"], "promoted": promoted_now and decision["promote"],
            "evaluation_run": evaluation, "model_version": model}  # fmt: skip


@task
def publish_summary(repo: str, result: dict) -> None:
    """The pipeline run's own artifact: every gate and whether it passed, the evaluation's figures, the model
    version and the links (the subflows hold the details)."""
    root = Path(repo)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    lines = ["# LayerT2V pipeline", "", "| gate | passed |", "|---|---|"]
    for stage in stages:
        for path in gate_reports(stage, root):
            if path.is_file():
                report = json.loads(path.read_text())
                lines.append(f"| {stage}: {report['gate']} | {'yes' if report['passed'] else '**no**'} |")
    metrics = result["metrics"]
    lines += [
        "",
        " | ".join(
            f"{k} {metrics[k]:.3g}" for k in ("coherence_db", "colour_adherence", "shape_adherence", "empty_layers")
        ),
    ]
    verdict = "promoted to champion" if result["promoted"] else "not promoted in this run"
    lines += ["", f"Model version {result['version']}: {verdict}. [MLflow model version]({result['model_version']})"]
    if result.get("evaluation_run"):
        lines.append(f"[Evaluation run with previews]({result['evaluation_run']})")
    create_markdown_artifact("\n".join(lines), key="pipeline-summary", description="what this pipeline run did")
