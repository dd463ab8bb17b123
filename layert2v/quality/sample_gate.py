"""Sample gates of the DiT stages: validation samples of a stage's model against the stage's minimums.

A DVC stage of their own (`stage2_gate`, `stage3_gate`), apart from training, so that a change to the sampler
(`sampling.py`, `pipeline.py`, `evaluate.py`) or to `evaluate` params re-runs the gates and never the training.
Each writes under `<out>/<stage>/`: `metrics.json`, `gate.json` (+ `.md`), `samples.json`, `previews/`, and
`passed`, the hash of the weights that passed (`report.mark_passed`), which the next stage depends on. The
figures, previews and report are also logged into the stage's own MLflow run, beside its losses.
"""

from __future__ import annotations

from pathlib import Path

from layert2v import tracking
from layert2v.config import Params
from layert2v.evaluate import evaluate_and_gate
from layert2v.quality.report import GateFailed, GateReport, mark_passed

SAMPLED_K = {"stage2": 1, "stage3": None}  # stage 2 trains K = 1 only; stage 3 up to the model's K_max


def sample_gate(stage: str, params: Params, prepared: Path, train_dir: Path, out: Path, root: Path) -> GateReport:
    """Gate `train_dir/<stage>/model` on `params.evaluate.stage_gates[stage]`; `GateFailed` on a miss."""
    if stage not in SAMPLED_K:
        raise ValueError(f"stage {stage!r} has no sample gate; gated stages: {sorted(SAMPLED_K)}")
    model, folder = train_dir / stage / "model", out / stage
    minimums = params.evaluate.stage_gates.get(stage, {})
    summary, report = evaluate_and_gate(
        model, prepared, params, minimums, folder, f"{stage} sample gate", SAMPLED_K[stage]
    )
    mark_passed(folder / "passed", model / "dit.safetensors", report.passed)
    _log_to_stage_run(train_dir / stage, root, summary, folder, report.passed)
    if not report.passed:
        raise GateFailed(report, folder / "gate.json")
    return report


def _log_to_stage_run(stage_dir: Path, root: Path, summary: dict[str, float], folder: Path, passed: bool) -> None:
    """Metrics as `sample/<name>`, previews and the gate report into the stage's MLflow run (when it has one)."""
    run_id = tracking.stage_run_id(stage_dir)
    if run_id is None:
        print(f"{stage_dir} has no MLflow run; the sample gate's figures stay in {folder}")
        return
    client = tracking.client(root)
    for key, value in summary.items():
        client.log_metric(run_id, f"sample/{key}", value)
    for path in sorted((folder / "previews").glob("*")):
        client.log_artifact(run_id, str(path), "previews")
    for name in ("gate.json", "gate.md"):
        client.log_artifact(run_id, str(folder / name), "sample_gate")
    client.set_tag(run_id, "sample_gate", "passed" if passed else "failed")
