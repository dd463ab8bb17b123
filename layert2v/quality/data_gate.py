"""The data-quality gate: great_expectations 1.x rules over prepare's manifest.

Each rule is one GX expectation on the manifest (plus a few derived columns, e.g. whether a test clip's
caption also occurs in train), run in an ephemeral GX context with `COMPLETE` results so that every
failing rule names the clips that break it. The reject fraction from `rejects.json` is checked beside
them. The report (JSON, and Markdown for people) is always written; `passed` is False when any rule fails.

great_expectations costs seconds to import, so it is imported inside `run_data_gate` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from layert2v.config import DataGateConfig, PrepareConfig
from layert2v.quality.report import GateReport, RuleResult, gx_batch

REQUIRED_COLUMNS = (
    "clip_id",
    "split",
    "num_fg",
    "frames",
    "height",
    "width",
    "fps",
    "timing_error",
    "alpha_min",
    "alpha_max",
    "coverage_min",
    "coverage_max",
    "composite_err",
    "caption_full",
    "caption_background",
    "captions_foreground",
    "tokens_full",
    "tokens_background",
    "tokens_foreground_max",
    "full_md5",
)


def with_derived_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """Columns that turn cross-row rules into per-row ones GX can check (absent inputs: the schema rule fails)."""
    df = manifest.copy()
    has = lambda *cols: all(c in df.columns for c in cols)  # noqa: E731
    if has("frames"):
        df["frames_mod4"] = (df["frames"] - 1) % 4
    if has("split", "caption_full"):
        train_captions = set(df.loc[df["split"] == "train", "caption_full"])
        df["caption_leaks_into_test"] = (df["split"] == "test") & df["caption_full"].isin(train_captions)
    if has("split", "full_md5"):
        train_videos = set(df.loc[df["split"] == "train", "full_md5"])
        df["clip_leaks_into_test"] = (df["split"] == "test") & df["full_md5"].isin(train_videos)
    if has("captions_foreground"):
        lengths = df["captions_foreground"].map(lambda s: min((len(c.strip()) for c in json.loads(s)), default=0))
        df["caption_fg_min_len"] = lengths
    return df


def _expectations(gate: DataGateConfig, prep: PrepareConfig) -> list[tuple[str, object]]:
    import great_expectations.expectations as gxe

    between = gxe.ExpectColumnValuesToBeBetween
    return [
        (
            "schema: required columns present",
            gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False),
        ),
        (f"at least {gate.min_clips} clips", gxe.ExpectTableRowCountToBeBetween(min_value=gate.min_clips)),
        ("clip ids unique", gxe.ExpectColumnValuesToBeUnique(column="clip_id")),
        (
            "split in train/val/test",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        ),
        ("frame count is 4k+1", gxe.ExpectColumnValuesToBeInSet(column="frames_mod4", value_set=[0])),
        (f"frame count = {prep.frames}", between(column="frames", min_value=prep.frames, max_value=prep.frames)),
        (f"height = {prep.height}", between(column="height", min_value=prep.height, max_value=prep.height)),
        (f"width = {prep.width}", between(column="width", min_value=prep.width, max_value=prep.width)),
        (f"frame rate = {prep.fps:g} fps", between(column="fps", min_value=prep.fps, max_value=prep.fps)),
        (
            "frames within half a frame period of their time",
            between(column="timing_error", min_value=0.0, max_value=0.5 + 1e-6),
        ),
        (f"1 <= foreground layers <= {prep.max_fg}", between(column="num_fg", min_value=1, max_value=prep.max_fg)),
        ("alpha >= 0", between(column="alpha_min", min_value=0.0)),
        ("alpha <= 1", between(column="alpha_max", max_value=1.0)),
        (f"every layer covers >= {gate.min_coverage}", between(column="coverage_min", min_value=gate.min_coverage)),
        (f"every layer covers <= {gate.max_coverage}", between(column="coverage_max", max_value=gate.max_coverage)),
        (
            f"composite error <= {gate.composite_tolerance}",
            between(column="composite_err", min_value=0.0, max_value=gate.composite_tolerance),
        ),
        ("full caption non-empty", gxe.ExpectColumnValueLengthsToBeBetween(column="caption_full", min_value=1)),
        (
            "background caption non-empty",
            gxe.ExpectColumnValueLengthsToBeBetween(column="caption_background", min_value=1),
        ),
        ("foreground captions non-empty", between(column="caption_fg_min_len", min_value=1)),
        *[
            (f"{col} <= {prep.max_tokens} tokens", between(column=col, min_value=1, max_value=prep.max_tokens))
            for col in ("tokens_full", "tokens_background", "tokens_foreground_max")
        ],
        (
            "no clip shared by train and test",
            gxe.ExpectColumnValuesToBeInSet(column="clip_leaks_into_test", value_set=[False]),
        ),
        (
            "no full caption shared by train and test",
            gxe.ExpectColumnValuesToBeInSet(column="caption_leaks_into_test", value_set=[False]),
        ),
    ]


def _rule_result(rule: str, result, df: pd.DataFrame) -> RuleResult:
    details = result.result or {}
    indices = details.get("unexpected_index_list") or []
    examples = [str(i["clip_id"]) if isinstance(i, dict) else str(df["clip_id"].iloc[i]) for i in indices[:20]]
    if not examples and not result.success:
        observed = details.get("observed_value")
        examples = [f"observed {observed}"] if observed is not None else []
    failing = int(details.get("unexpected_count") or (0 if result.success else 1))
    return RuleResult(rule=rule, passed=bool(result.success), failing=failing, examples=examples)


def _split_counts(df: pd.DataFrame, gate: DataGateConfig) -> list[RuleResult]:
    counts = df["split"].value_counts() if "split" in df.columns else pd.Series(dtype=int)
    return [
        RuleResult(
            rule=f"split {split} holds >= {gate.min_split_clips} clips",
            passed=int(counts.get(split, 0)) >= gate.min_split_clips,
            failing=0 if int(counts.get(split, 0)) >= gate.min_split_clips else 1,
            examples=[f"{split}: {int(counts.get(split, 0))} clips"],
        )
        for split in ("train", "val", "test")
    ]


def run_data_gate(manifest: pd.DataFrame, rejected: int, gate: DataGateConfig, prep: PrepareConfig) -> GateReport:
    """Validate `manifest` with great_expectations; `rejected` is the number of clips prepare left out."""
    df = with_derived_columns(manifest)
    batch = gx_batch(df, "manifest")
    format_ = {"result_format": "COMPLETE", "unexpected_index_column_names": ["clip_id"]}
    rules = []
    for rule, expectation in _expectations(gate, prep):
        missing = [c for c in (getattr(expectation, "column", None),) if c and c not in df.columns]
        if missing:
            rules.append(
                RuleResult(rule=rule, passed=False, failing=len(df), examples=[f"column {missing[0]} missing"])
            )
            continue
        rules.append(_rule_result(rule, batch.validate(expectation, result_format=format_), df))
    rules += _split_counts(df, gate)
    total = len(df) + rejected
    fraction = rejected / total if total else 1.0
    rules.append(
        RuleResult(
            rule=f"rejected fraction <= {gate.max_reject_fraction}",
            passed=fraction <= gate.max_reject_fraction,
            failing=rejected,
            examples=[f"{rejected} of {total} clips rejected ({fraction:.1%})"],
        )
    )
    counts = {"clips": len(df), "rejected": rejected}
    if "split" in df.columns:
        counts |= {f"split_{k}": int(v) for k, v in sorted(df["split"].value_counts().items())}
    return GateReport(name="data gate", passed=all(r.passed for r in rules), rules=rules, counts=counts)


def validate_prepared(prepared: Path, gate: DataGateConfig, prep: PrepareConfig, report: Path) -> GateReport:
    """Gate prepare's output folder and write the report to `report` (+ `.md`)."""
    manifest_path = prepared / "manifest.parquet"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: run `layert2v data prepare` first")
    manifest = pd.read_parquet(manifest_path)
    rejects_path = prepared / "rejects.json"
    rejected = len(json.loads(rejects_path.read_text())) if rejects_path.is_file() else 0
    result = run_data_gate(manifest, rejected, gate, prep)
    result.write(report)
    return result
