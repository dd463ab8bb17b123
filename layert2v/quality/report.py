"""Gate results: one `RuleResult` per rule, a `GateReport` written as JSON (machines) and Markdown (people)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True, kw_only=True)
class RuleResult:
    rule: str
    passed: bool
    failing: int  # rows (or units) that break the rule
    examples: list[str]  # clip ids, or a short description


@dataclass(frozen=True, kw_only=True)
class GateReport:
    name: str
    passed: bool
    rules: list[RuleResult]
    counts: dict[str, int]

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "gate": self.name,
                    "passed": self.passed,
                    "counts": self.counts,
                    "rules": [r.__dict__ for r in self.rules],
                },
                indent=2,
            )
            + "\n"
        )

    def to_markdown(self) -> str:
        lines = [f"# {self.name}: {'PASSED' if self.passed else 'FAILED'}", ""]
        lines += [f"- {key}: {value}" for key, value in self.counts.items()]
        lines += ["", "| rule | result | failing | examples |", "|---|---|---|---|"]
        for r in self.rules:
            lines.append(f"| {r.rule} | {'pass' if r.passed else 'FAIL'} | {r.failing} | {', '.join(r.examples[:5])} |")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """`path` (JSON) and the same name with `.md`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        path.with_suffix(".md").write_text(self.to_markdown())


def gx_batch(df: pd.DataFrame, name: str):
    """A great_expectations batch over `df` in an ephemeral context, progress bars off (GX imported here)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return (
        context.data_sources.add_pandas(name=name)
        .add_dataframe_asset(name=name)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df})
    )


class GateFailed(RuntimeError):
    """A gate that stops a pipeline; the message names each failing metric, its value and the threshold."""

    def __init__(self, report: GateReport, path: Path) -> None:
        failing = [f"{r.rule} ({'; '.join(r.examples)})" for r in report.rules if not r.passed]
        super().__init__(f"{report.name} failed: " + ", ".join(failing) + f"; report: {path}")
        self.report = report


def run_metric_gate(
    name: str,
    metrics: dict[str, float],
    minimums: dict[str, float],
    path: Path,
    maximums: dict[str, float] | None = None,
) -> GateReport:
    """Check `metrics[key] >= minimums[key]` and `metrics[key] <= maximums[key]` (and finite) with
    great_expectations; write the report to `path`. A metric that was not measured fails its rule."""
    import great_expectations.expectations as gxe

    bounds = [(key, low, None) for key, low in minimums.items()]
    bounds += [(key, None, high) for key, high in (maximums or {}).items()]
    df = pd.DataFrame([{key: float(metrics.get(key, float("nan"))) for key, _, _ in bounds}])
    batch = gx_batch(df, name.replace(" ", "_"))
    rules = []
    for key, low, high in bounds:
        value = df[key].iloc[0]
        finite = batch.validate(gxe.ExpectColumnValuesToNotBeNull(column=key)).success and abs(value) != float("inf")
        within = batch.validate(gxe.ExpectColumnValuesToBeBetween(column=key, min_value=low, max_value=high)).success
        threshold = low if high is None else high
        passed = bool(finite and within)
        rules.append(
            RuleResult(
                rule=f"{key} {'>=' if high is None else '<='} {threshold}",
                passed=passed,
                failing=int(not passed),
                examples=[f"{key} = {value:.4g}, threshold {threshold}"],
            )
        )
    report = GateReport(name=name, passed=all(r.passed for r in rules), rules=rules, counts={"metrics": len(bounds)})
    report.write(path)
    return report


def mark_passed(marker: Path, data: Path, passed: bool) -> None:
    """Write the sha256 of `data` (the manifest or the weights that passed) to `marker`, or remove it on a fail.

    The next stage depends on this marker, not on the report: it changes only when other data passes, so a
    changed threshold or sampler re-runs the gate without re-running what comes after on the same data."""
    marker.unlink(missing_ok=True)
    if passed:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(hashlib.sha256(data.read_bytes()).hexdigest() + "\n")
