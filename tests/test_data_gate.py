"""Every rule of the data gate passes on good data and fails, naming the clips, on a manifest that breaks it."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from layert2v.quality.data_gate import run_data_gate

from .conftest import ROOT


@pytest.fixture(scope="module")
def good(smoke_prepared) -> pd.DataFrame:
    return pd.read_parquet(smoke_prepared.out / "manifest.parquet")


def first_of(df: pd.DataFrame, split: str = "train") -> int:
    return int(df.index[df["split"] == split][0])


def set_value(column: str, value, split: str = "train"):
    def mutate(df: pd.DataFrame) -> str:
        row = first_of(df, split)
        df.loc[row, column] = value
        return df.loc[row, "clip_id"]

    return mutate


def leak(column: str):
    def mutate(df: pd.DataFrame) -> str:
        test_row = first_of(df, "test")
        df.loc[test_row, column] = df.loc[first_of(df, "train"), column]
        return df.loc[test_row, "clip_id"]

    return mutate


def duplicate_id(df: pd.DataFrame) -> str:
    df.loc[first_of(df, "val"), "clip_id"] = df.loc[first_of(df), "clip_id"]
    return df.loc[first_of(df), "clip_id"]


CASES = {
    "frame count is 4k+1": set_value("frames", 8),
    "frame count = 5": set_value("frames", 9),
    "height = 32": set_value("height", 48),
    "width = 32": set_value("width", 16),
    "1 <= foreground layers <= 2": set_value("num_fg", 3),
    "alpha >= 0": set_value("alpha_min", -0.1),
    "alpha <= 1": set_value("alpha_max", 1.2),
    "every layer covers >= 0.002": set_value("coverage_min", 0.0),
    "every layer covers <= 0.8": set_value("coverage_max", 0.97),
    "composite error <= 0.04": set_value("composite_err", 0.3),
    "full caption non-empty": set_value("caption_full", ""),
    "background caption non-empty": set_value("caption_background", ""),
    "foreground captions non-empty": set_value("captions_foreground", json.dumps(["a cat", ""])),
    "tokens_full <= 64 tokens": set_value("tokens_full", 80),
    "tokens_foreground_max <= 64 tokens": set_value("tokens_foreground_max", 65),
    "split in train/val/test": set_value("split", "holdout"),
    "clip ids unique": duplicate_id,
    "no clip shared by train and test": leak("full_md5"),
    "no full caption shared by train and test": leak("caption_full"),
}


def test_good_manifest_passes(good: pd.DataFrame, smoke) -> None:
    report = run_data_gate(good, 0, smoke.gate, smoke.prepare)
    assert report.passed, report.to_markdown()


@pytest.mark.parametrize("rule", list(CASES))
def test_rule_fails_and_names_the_clip(good: pd.DataFrame, smoke, rule: str) -> None:
    df = good.copy()
    culprit = CASES[rule](df)
    report = run_data_gate(df, 0, smoke.gate, smoke.prepare)
    failed = {r.rule: r for r in report.rules if not r.passed}
    assert not report.passed and rule in failed, report.to_markdown()
    assert culprit in failed[rule].examples


def test_table_level_rules(good: pd.DataFrame, smoke) -> None:
    cases = {
        "at least 16 clips": good.head(10),
        "schema: required columns present": good.drop(columns=["composite_err"]),
        "split test holds >= 1 clips": good[good["split"] != "test"],
    }
    for rule, df in cases.items():
        report = run_data_gate(df, 0, smoke.gate, smoke.prepare)
        assert rule in [r.rule for r in report.rules if not r.passed], report.to_markdown()
    report = run_data_gate(good, 5, smoke.gate, smoke.prepare)
    assert [r.rule for r in report.rules if not r.passed] == ["rejected fraction <= 0.05"]


def test_cli_validate_exits_non_zero_with_report(tmp_path: Path, good: pd.DataFrame, smoke_prepared) -> None:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    bad = good.copy()
    bad.loc[first_of(bad), "alpha_max"] = 1.5
    bad.to_parquet(prepared / "manifest.parquet")
    (prepared / "rejects.json").write_text("[]")
    report = tmp_path / "reports" / "gate.json"
    cmd = [sys.executable, "-m", "layert2v.cli", "data", "validate", "--profile", "smoke"]
    cmd += ["--params", str(ROOT / "params.yaml"), "--prepared", str(prepared), "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    assert "FAIL" in done.stdout and "alpha <= 1" in done.stdout
    saved = json.loads(report.read_text())
    assert saved["passed"] is False and report.with_suffix(".md").is_file()


def test_cli_help_does_not_import_heavy_libraries() -> None:
    code = "import sys, layert2v.cli as c; c.build_parser(); print(sorted({'torch', 'great_expectations', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
