"""Bad clips are rejected with the clip and the rule named; the rest are prepared; sources stay as they were."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layert2v.data.prepare import NothingPrepared, Streams, conform, frame_indices, run_prepare
from layert2v.data.vidlayer import ClipError, ClipSource
from layert2v.io import write_mask, write_video
from layert2v.outputs import OutputError
from layert2v.quality.data_gate import validate_prepared

from .conftest import ROOT, tree_md5


def break_clips(root: Path) -> dict[str, str]:
    """Break seven clips seven ways; returns clip id -> the words its reject reason must contain."""
    folders = sorted((root / "train").iterdir())
    expected = {}

    full = folders[0] / "full_video.mp4"
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    expected[folders[0].name] = "full_video.mp4"

    (folders[1] / "background.mp4").write_bytes(b"\x00\x01garbage" * 64)
    expected[folders[1].name] = "background.mp4"

    write_mask(folders[2] / "mask.mp4", np.zeros((3, 32, 32), np.uint8), fps=8)
    expected[folders[2].name] = "different frame counts"

    write_video(folders[3] / "foreground.mp4", np.zeros((5, 16, 16, 3), np.uint8), fps=8)
    expected[folders[3].name] = "different frame sizes"

    (folders[4] / "background.mp4").unlink()
    expected[folders[4].name] = "background.mp4: file is missing"

    meta = json.loads((folders[5] / "metadata.json").read_text())
    meta["captions"]["background"] = "  "
    (folders[5] / "metadata.json").write_text(json.dumps(meta))
    expected[folders[5].name] = "caption 'background' is missing or empty"

    for name in ["full_video.mp4", "background.mp4", "foreground.mp4", "mask.mp4", "foreground_2.mp4", "mask_2.mp4"]:
        path = folders[6] / name
        if path.exists():
            short = np.zeros((3, 32, 32) if name.startswith("mask") else (3, 32, 32, 3), np.uint8)
            (write_mask if name.startswith("mask") else write_video)(path, short, fps=8)
    expected[folders[6].name] = "fewer than the 5 required"
    return expected


def test_bad_clips_are_rejected_with_reasons_and_sources_kept(tmp_path: Path, smoke, smoke_data: Path, copy_of) -> None:
    root = copy_of(smoke_data)
    expected = break_clips(root)
    before = tree_md5(root)

    result = run_prepare(root, tmp_path / "prepared", smoke.prepare)

    assert tree_md5(root) == before  # nothing under the source was changed, moved or deleted
    rejects = {r["clip_id"]: r["rule"] for r in json.loads((result.out / "rejects.json").read_text())}
    assert set(rejects) == set(expected)
    for clip_id, words in expected.items():
        assert words in rejects[clip_id], (clip_id, rejects[clip_id])
    assert result.accepted == smoke.synth.clips - len(expected)

    report = validate_prepared(result.out, smoke.gate, smoke.prepare, tmp_path / "gate.json")
    failed = [r.rule for r in report.rules if not r.passed]
    assert failed == [f"rejected fraction <= {smoke.gate.max_reject_fraction}"]
    assert json.loads((tmp_path / "gate.json").read_text())["passed"] is False


def _streams(alpha: np.ndarray) -> Streams:
    rgb = np.full((*alpha.shape, 3), 0.5, np.float32)
    return Streams(full=rgb, background=rgb, alphas=[alpha], foregrounds=[None], fps=8.0)


@pytest.mark.parametrize(
    ("alpha_value", "rule"), [(1.5, "alpha out of range"), (-0.2, "alpha out of range"), (np.nan, "alpha has NaN")]
)
def test_alpha_out_of_range_or_nan_is_rejected(smoke, alpha_value: float, rule: str) -> None:
    alpha = np.full((5, 32, 32), 0.5, np.float32)
    alpha[2, 3, 4] = alpha_value
    clip = ClipSource(
        clip_id="c1", split="train", source="test", origin="here", full=Path("f.mp4"), background=Path("b.mp4"),
        masks=[Path("mask.mp4")], foregrounds=[None], caption_full="x", caption_background="y", captions_foreground=["z"],
    )  # fmt: skip
    with pytest.raises(ClipError, match=rf"clip c1: mask\.mp4: {rule}"):
        conform(clip, _streams(alpha), smoke.prepare)


def test_source_that_does_not_exist_is_a_clear_error(tmp_path: Path, smoke) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_prepare(tmp_path / "nowhere", tmp_path / "out", smoke.prepare)


# ---------------------------------------------------------------- prepare --out never destroys what it holds


def test_prepare_refuses_an_out_that_is_or_contains_the_source(
    tmp_path: Path, smoke, smoke_data: Path, copy_of
) -> None:
    root = copy_of(smoke_data)
    before = tree_md5(root)
    for out in (root, root.parent, root / "train" / "prepared"):
        with pytest.raises(OutputError, match="overlaps the input"):
            run_prepare(root, out, smoke.prepare)
    assert tree_md5(root) == before


def test_prepare_refuses_a_folder_of_other_files_and_replaces_its_own_output(
    tmp_path: Path, smoke, smoke_data: Path
) -> None:
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("not a prepare output")
    with pytest.raises(OutputError, match="holds no earlier prepare output"):
        run_prepare(smoke_data, keep, smoke.prepare)
    assert (keep / "notes.txt").read_text() == "not a prepare output"

    out = tmp_path / "prepared"
    run_prepare(smoke_data, out, smoke.prepare)
    (out / "stale.txt").write_text("from the first run")
    run_prepare(smoke_data, out, smoke.prepare)  # an earlier output of ours: replaced whole
    assert (out / "manifest.parquet").is_file() and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left behind


def test_prepare_refuses_an_out_under_a_file(tmp_path: Path, smoke, smoke_data: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        run_prepare(smoke_data, tmp_path / "file" / "out", smoke.prepare)


def test_prepare_cli_on_its_own_source_is_an_error_and_keeps_the_videos(
    tmp_path: Path, smoke_data: Path, copy_of, capsys
) -> None:
    from layert2v.cli import main

    root = copy_of(smoke_data)
    before = tree_md5(root)
    code = main(["data", "prepare", "--profile", "smoke", "--params", str(ROOT / "params.yaml"),
                 "--source", str(root), "--out", str(root)])  # fmt: skip
    assert code == 2 and "overlaps the input" in capsys.readouterr().err
    assert tree_md5(root) == before


# ---------------------------------------------------------------- every clip rejected: the reasons are kept


def test_when_every_clip_is_rejected_the_reasons_are_written_and_said(
    tmp_path: Path, smoke, smoke_data: Path, copy_of
) -> None:
    root = copy_of(smoke_data)
    for meta in root.rglob("metadata.json"):
        meta.write_text("{not json")
    with pytest.raises(NothingPrepared) as failed:
        run_prepare(root, tmp_path / "out", smoke.prepare)
    message = str(failed.value)
    assert f"{smoke.synth.clips} x metadata.json is unreadable" in message and "rejects.json" in message
    rejects = json.loads((tmp_path / "out" / "rejects.json").read_text())
    assert len(rejects) == smoke.synth.clips and all("metadata.json is unreadable" in r["rule"] for r in rejects)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["accepted"] == 0 and sum(summary["reasons"].values()) == smoke.synth.clips


def test_a_folder_without_any_metadata_json_says_so(tmp_path: Path, smoke) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"no <clip>/metadata\.json and no \*\.jsonl"):
        run_prepare(tmp_path / "videos", tmp_path / "out", smoke.prepare)


# ---------------------------------------------------------------- frame rate conformed and gated


def test_a_25_fps_source_is_resampled_to_the_configured_rate(tmp_path: Path, smoke) -> None:
    from .layered_fixtures import folder_sample

    folder_sample(tmp_path / "data", "c25", 3, frames=30, height=32, width=32, fps=25)
    result = run_prepare(tmp_path / "data", tmp_path / "out", replace(smoke.prepare, fps=8.0, frames=9))
    manifest = pd.read_parquet(result.out / "manifest.parquet")
    row = manifest.iloc[0]
    assert row["src_fps"] == 25 and row["fps"] == 8 and row["timing_error"] <= 0.5
    idx, error = frame_indices("c25", 30, 25.0, replace(smoke.prepare, fps=8.0, frames=9))
    assert idx.tolist() == [0, 3, 6, 9, 12, 16, 19, 22, 25] and error <= 0.5  # frame i at i / 8 s


def test_a_source_too_short_or_too_slow_for_the_rate_is_rejected(smoke) -> None:
    cfg = replace(smoke.prepare, fps=8.0, frames=9)
    with pytest.raises(ClipError, match="fewer than the 26 required"):
        frame_indices("c", 20, 25.0, cfg)  # frame 8 at 1 s is source frame 25
    with pytest.raises(ClipError, match="frame rate 4 fps is below the target 8 fps"):
        frame_indices("c", 100, 4.0, cfg)
    with pytest.raises(ClipError, match="frame rate unknown"):
        frame_indices("c", 100, 0.0, cfg)


def test_the_gate_fails_a_manifest_at_another_frame_rate(tmp_path: Path, smoke, smoke_prepared) -> None:
    from layert2v.quality.data_gate import run_data_gate

    manifest = pd.read_parquet(smoke_prepared.out / "manifest.parquet")
    manifest.loc[0, "fps"] = 25.0
    report = run_data_gate(manifest, 0, smoke.gate, smoke.prepare)
    failed = {r.rule: r.examples for r in report.rules if not r.passed}
    assert failed == {f"frame rate = {smoke.prepare.fps:g} fps": [manifest.clip_id[0]]}
