"""Real VidLayer data in both released layouts is discovered, conformed and cached."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from layert2v.data.prepare import run_prepare
from layert2v.data.vidlayer import discover

from .layered_fixtures import folder_sample, jsonl_dataset, scene


def _write_rgba_mask(path: Path, alpha: np.ndarray) -> None:
    from .test_io import _write_rgba_mov

    _write_rgba_mov(path, alpha)


def test_folder_layout_with_rgb_rgba_masks_and_remote_paths(tmp_path: Path, smoke) -> None:
    root = tmp_path / "vidlayer"
    folder_sample(root, "sample_a", 1)
    b = folder_sample(root, "sample_b", 2)
    # sample_b: the mask lives elsewhere as RGBA and metadata.paths names it, as in the released data
    alpha = scene(17, 48, 80, 2)["alpha"]
    (b / "mask.mp4").unlink()
    _write_rgba_mask(tmp_path / "elsewhere.mov", alpha)
    meta = json.loads((b / "metadata.json").read_text())
    meta["paths"] = {"mask_video": str(tmp_path / "elsewhere.mov")}
    (b / "metadata.json").write_text(json.dumps(meta))

    clips, rejects = discover(root)
    assert [c.clip_id for c in clips] == ["sample_a", "sample_b"] and not rejects
    assert clips[1].masks[0] == tmp_path / "elsewhere.mov" and clips[0].foregrounds == [None]

    result = run_prepare(root, tmp_path / "prepared", smoke.prepare)
    manifest = pd.read_parquet(result.out / "manifest.parquet")
    assert result.accepted == 2 and result.rejected == 0
    assert set(manifest["source"]) == {"vidlayer-folder"} and manifest["fg_derived"].all()
    assert (manifest["src_width"] == 80).all() and (manifest["src_frames"] == 17).all()
    assert (manifest["frame_stride"] == 3).all()  # 24 fps source, 8 fps target
    assert (manifest["frames"] == smoke.prepare.frames).all() and (manifest["height"] == smoke.prepare.height).all()
    # derived fg = full * mask, so compositing over the clean background reproduces the full video closely
    assert (manifest["composite_err"] < 0.02).all()
    # both mask forms give the same matte: coverage agrees between the RGB and the RGBA sample
    assert abs(manifest["coverage_mean"].iloc[0] - manifest["coverage_mean"].iloc[1]) < 0.01


def test_jsonl_layout(tmp_path: Path, smoke) -> None:
    manifest_path = jsonl_dataset(tmp_path / "released", 3)
    with manifest_path.open("a") as f:
        f.write(json.dumps({"vid": "videos/x.mp4", "overall_description": "no entry"}) + "\n")
    clips, rejects = discover(manifest_path)
    assert len(clips) == 3 and len(rejects) == 1 and "entry.pha_video_path" in rejects[0].rule

    result = run_prepare(manifest_path, tmp_path / "prepared", smoke.prepare)
    manifest = pd.read_parquet(result.out / "manifest.parquet")
    assert result.accepted == 3 and set(manifest["source"]) == {"vidlayer-jsonl"}
    assert sorted(json.loads(c)[0] for c in manifest["captions_foreground"]) == [f"square number {i}" for i in range(3)]
    split = manifest["split"].iloc[0]
    cache = np.load(result.out / "cache" / split / "full.npy", allow_pickle=False)
    assert cache.shape[1:] == (smoke.prepare.frames, smoke.prepare.height, smoke.prepare.width, 3)
    assert cache.dtype == np.uint8


def test_prepared_cache_and_text_embeddings(smoke_prepared, smoke) -> None:
    out = smoke_prepared.out
    manifest = pd.read_parquet(out / "manifest.parquet")
    captions = json.loads((out / "text" / "captions.json").read_text())
    states = np.load(out / "text" / "states.npy", allow_pickle=False)
    mask = np.load(out / "text" / "mask.npy", allow_pickle=False)
    assert states.shape == (len(captions), smoke.prepare.max_tokens, 384) and mask.shape == states.shape[:2]
    for _, row in manifest.iterrows():
        assert captions[row["text_full"]] == row["caption_full"]
        assert mask[row["text_full"]].sum() == min(row["tokens_full"], smoke.prepare.max_tokens)
        # token states past a caption's end are zero, so padding carries no signal
        assert not states[row["text_full"], mask[row["text_full"]].sum() :].any()
    for split, rows in manifest.groupby("split"):
        fg = np.load(out / "cache" / split / "foreground.npy", mmap_mode="r")
        alpha = np.load(out / "cache" / split / "alpha.npy", mmap_mode="r")
        full = np.load(out / "cache" / split / "full.npy", mmap_mode="r")
        assert len(fg) == len(alpha) == rows["num_fg"].sum() and len(full) == len(rows)
        last = rows.iloc[-1]
        assert last["layer_start"] + last["num_fg"] == len(fg)


def test_prepare_replaces_its_output_and_keeps_sources(tmp_path: Path, smoke, smoke_data: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(smoke_data, src)
    before = sorted((p.name, p.stat().st_size) for p in src.rglob("*"))
    out = tmp_path / "prepared"
    run_prepare(src, out, smoke.prepare)
    (out / "stale.txt").write_text("from an older run")
    run_prepare(src, out, smoke.prepare)
    assert not (out / "stale.txt").exists() and not out.with_name("prepared.tmp").exists()
    assert sorted((p.name, p.stat().st_size) for p in src.rglob("*")) == before
