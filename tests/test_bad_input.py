"""Bad clips are rejected with the clip and the rule named; the rest are prepared; sources stay as they were."""

import json
from pathlib import Path

import numpy as np
import pytest

from layert2v.data.prepare import Streams, conform, run_prepare
from layert2v.data.vidlayer import ClipError, ClipSource
from layert2v.io import write_mask, write_video
from layert2v.quality.data_gate import validate_prepared

from .conftest import tree_md5


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
