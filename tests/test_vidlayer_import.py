"""Real VidLayer data in both released layouts is discovered, conformed and cached."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layert2v.data.ingest import import_dataset
from layert2v.data.prepare import run_prepare
from layert2v.data.vidlayer import discover
from layert2v.outputs import OutputError

from .conftest import tree_md5
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
    assert (manifest["src_fps"] == 24).all() and (manifest["fps"] == 8).all()  # resampled: frame i at i / 8 s
    assert (manifest["timing_error"] <= 0.5).all()
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


# ---------------------------------------------------------------- `data import`: the source is never lost


def test_jsonl_import_copies_every_referenced_file_and_keeps_clip_ids(tmp_path: Path, smoke) -> None:
    manifest_path = jsonl_dataset(tmp_path / "released", 3)
    # one clip's files live elsewhere and are named by absolute paths, as a downloaded manifest may hold them
    elsewhere = tmp_path / "elsewhere" / "videos"
    elsewhere.mkdir(parents=True)
    lines = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    for key, sub in (("vid", "videos"), ("pha_video_path", "masks"), ("bg_path", "bgs")):
        src = tmp_path / "released" / sub / "clip2.mp4"
        moved = tmp_path / "elsewhere" / sub / "clip2.mp4"
        moved.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, moved)
        (lines[2] if key == "vid" else lines[2]["entry"])[key] = str(moved)
    manifest_path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    before = tree_md5(tmp_path / "released")
    expected_ids = [c.clip_id for c in discover(manifest_path)[0]]

    target = tmp_path / "repo" / "data" / "vidlayer"
    result = import_dataset(manifest_path, target)

    assert result.kind == "jsonl" and result.files == 10  # 9 videos + the manifest
    copied = target / "train.jsonl"
    for line in copied.read_text().splitlines():  # every path now relative, inside the copy
        row = json.loads(line)
        for path in (row["vid"], row["entry"]["pha_video_path"], row["entry"]["bg_path"]):
            assert not Path(path).is_absolute() and (target / path).is_file()
    assert [c.clip_id for c in discover(copied)[0]] == expected_ids  # same ids, so the same splits
    shutil.rmtree(tmp_path / "elsewhere")  # the copy needs nothing outside it
    assert run_prepare(copied, tmp_path / "prepared", smoke.prepare).accepted == 3
    assert tree_md5(tmp_path / "released") == before  # the source was only read


def test_import_refuses_a_source_inside_the_target_and_keeps_it(tmp_path: Path, smoke_data: Path) -> None:
    target = tmp_path / "data" / "vidlayer"
    shutil.copytree(smoke_data, target)
    before = tree_md5(target)
    for source in (target / "train", target, tmp_path / "data"):
        with pytest.raises(OutputError, match="overlaps the input"):
            import_dataset(source, target, "folder")
    assert tree_md5(target) == before


def test_import_refuses_a_file_given_as_a_folder_before_touching_the_target(tmp_path: Path, smoke_data: Path) -> None:
    target = tmp_path / "data" / "vidlayer"
    shutil.copytree(smoke_data, target)
    before = tree_md5(target)
    manifest = jsonl_dataset(tmp_path / "released", 1)
    with pytest.raises(ValueError, match="is a jsonl, not a folder"):
        import_dataset(manifest, target, "folder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_dataset(tmp_path / "nowhere", target, "folder")
    assert tree_md5(target) == before


def test_import_replaces_an_earlier_dataset_but_not_foreign_files(tmp_path: Path) -> None:
    source = tmp_path / "vidlayer_src"
    folder_sample(source, "sample_a", 1)
    target = tmp_path / "data" / "vidlayer"
    target.mkdir(parents=True)
    (target / "my_clip.mp4").write_bytes(b"someone's video")
    with pytest.raises(OutputError, match="holds no earlier dataset output"):
        import_dataset(source, target)
    assert (target / "my_clip.mp4").read_bytes() == b"someone's video"

    (target / "my_clip.mp4").unlink()
    import_dataset(source, target)
    folder_sample(source, "sample_b", 2)
    import_dataset(source, target)  # an earlier import: replaced by the new copy
    assert sorted(p.name for p in target.iterdir() if p.is_dir()) == ["sample_a", "sample_b"]
