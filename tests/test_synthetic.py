"""The procedural generator: determinism, exact layers, held-out test combinations, recorded attributes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from layert2v.compose import over
from layert2v.config import SynthConfig
from layert2v.data.synthetic import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    WORDS,
    generate_dataset,
    held_out_combos,
    make_clip,
    reworded,
)
from layert2v.data.vidlayer import layer_name
from layert2v.io import read_mask, read_video

from .conftest import tree_md5


def test_same_arguments_give_byte_identical_files(tmp_path: Path, smoke) -> None:
    cfg = SynthConfig(clips=6, max_fg=3, size=32, frames=5, seed=3)
    generate_dataset(cfg, tmp_path / "a", workers=2)
    generate_dataset(cfg, tmp_path / "b", workers=1)
    first, second = tree_md5(tmp_path / "a"), tree_md5(tmp_path / "b")
    assert first == second and len(first) > 6 * 5
    generate_dataset(SynthConfig(clips=6, max_fg=3, size=32, frames=5, seed=4), tmp_path / "c", workers=2)
    assert tree_md5(tmp_path / "c") != first


RENDER_DIGEST = """
import hashlib
from layert2v.config import SynthConfig
from layert2v.data.synthetic import make_clip
from layert2v.io import to_uint8
digest = hashlib.sha256()
for index in range(12):
    clip = make_clip(SynthConfig(clips=12, max_fg=3, size=64, frames=9), index)  # the default size: 3 of 12 moved
    for frames in (clip["full"], clip["background"], *clip["foregrounds"], *clip["alphas"]):
        digest.update(to_uint8(frames).tobytes())
print(digest.hexdigest())
"""


def test_clips_are_the_same_bytes_whatever_vector_units_numpy_uses() -> None:
    """`data.dvc` is reproduced on AVX2 and AVX-512 hosts alike: numpy's transcendental functions differed in their
    last bits between its SIMD paths and moved pixels; with its dispatch switched off the render must not change."""

    def digest(**env: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", RENDER_DIGEST], env=os.environ | env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert digest() == digest(NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR")


def test_layers_composite_to_the_full_video_exactly_in_memory() -> None:
    cfg = SynthConfig(clips=20, max_fg=3, size=32, frames=5)
    for index in range(20):
        clip = make_clip(cfg, index)
        assert np.abs(over(clip["foregrounds"], clip["alphas"], clip["background"]) - clip["full"]).max() < 1e-6
        for alpha in clip["alphas"]:
            assert alpha.min() >= 0 and alpha.max() <= 1


def test_composite_identity_survives_encoding(smoke_data: Path) -> None:
    """Re-composite the written layers (H.264) and compare with the written full video; measured ~38-40 dB."""
    errors, psnrs = [], []
    for meta_path in sorted(smoke_data.rglob("metadata.json")):
        folder, meta = meta_path.parent, json.loads(meta_path.read_text())
        k = len(meta["captions"]["foregrounds"])
        full = read_video(folder / "full_video.mp4") / 255.0
        background = read_video(folder / "background.mp4") / 255.0
        fgs = [read_video(folder / layer_name("foreground", i)) / 255.0 for i in range(1, k + 1)]
        alphas = [read_mask(folder / layer_name("mask", i)) for i in range(1, k + 1)]
        diff = over(fgs, alphas, background) - full
        errors.append(np.abs(diff).mean())
        psnrs.append(10 * np.log10(1 / np.mean(diff**2)))
    assert np.median(errors) < 0.02 and max(errors) < 0.04
    assert np.median(psnrs) > 30


def test_test_split_holds_only_unseen_combinations() -> None:
    cfg = SynthConfig(clips=300, max_fg=3, size=16, frames=1, seed=0)
    held = {tuple(c) for c in held_out_combos(cfg.seed, cfg.held_out_combos)}
    seen_in, splits = {"train": set(), "val": set(), "test": set()}, []
    for index in range(cfg.clips):
        meta = make_clip(cfg, index)["metadata"]
        splits.append(meta["split"])
        combos = [(f["colour"], f["shape"]) for f in meta["attributes"]["foregrounds"]]
        seen_in[meta["split"]].update(combos)
        if meta["split"] == "test":
            assert combos[0] in held
    assert not (seen_in["train"] | seen_in["val"]) & held
    assert {"train", "val", "test"} == set(splits)


def says(text: str, word: str) -> bool:
    """Whether `text` uses `word` as a word ("tan" is not in "tangerine")."""
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def test_variety_and_recorded_attributes() -> None:
    cfg = SynthConfig(clips=150, max_fg=3, size=16, frames=5, seed=1)
    metas = [make_clip(cfg, i)["metadata"] for i in range(cfg.clips)]
    fgs = [f for m in metas for f in m["attributes"]["foregrounds"]]
    assert {m["attributes"]["background"]["kind"] for m in metas} == set(BACKGROUNDS)
    assert {f["shape"] for f in fgs} == set(SHAPES) and {f["colour"] for f in fgs} == set(COLOURS)
    assert {f["motion"] for f in fgs} == {"linear", "curved", "bouncing"}
    assert {m["attributes"]["camera"]["kind"] for m in metas} == {"still", "pan", "zoom"}
    assert any(f["opacity"] < 1 for f in fgs) and any(f["scale_rate"] != 0 for f in fgs)
    assert len({m["captions"]["full"] for m in metas}) == len(metas)  # captions are not one template
    for m in metas:
        caps = m["captions"]
        assert (
            len(caps["foregrounds"]) == len(m["attributes"]["foregrounds"])
            and caps["foreground"] == caps["foregrounds"][0]
        )
        for f, text in zip(m["attributes"]["foregrounds"], caps["foregrounds"], strict=True):
            for name in (f["colour"], f["shape"], f["size"]):  # one of its words, never the held-out one
                assert any(says(text, word) for word in WORDS[name][:-1]) and not says(text, WORDS[name][-1])
        if m["attributes"]["camera"]["kind"] == "still":
            assert "still" in caps["background"] or "static" in caps["background"]


def test_foregrounds_occlude_each_other_somewhere() -> None:
    cfg = SynthConfig(clips=60, max_fg=3, size=32, frames=5, seed=0)
    overlaps = 0
    for index in range(cfg.clips):
        alphas = make_clip(cfg, index)["alphas"]
        if len(alphas) > 1:
            overlaps += int(((alphas[0] > 0.5) & (alphas[1] > 0.5)).any())
    assert overlaps >= 3


def test_captions_vary_their_words_and_reworded_prompts_use_only_held_out_ones() -> None:
    cfg = SynthConfig(clips=120, max_fg=3, size=16, frames=5, seed=2)
    metas = [make_clip(cfg, i)["metadata"] for i in range(cfg.clips)]
    data_text = " ".join(t for m in metas for c in m["captions"].values() for t in ([c] if isinstance(c, str) else c))
    assert all(says(data_text, name) for name in COLOURS)  # the names stay in use beside the synonyms
    assert sum(says(data_text, word) for words in WORDS.values() for word in words[1:-1]) >= 30
    held = [w[-1] for w in WORDS.values() if len(w) > 1]
    assert not [word for word in held if says(data_text, word)]
    for m in metas[:20]:
        full, background, foregrounds = reworded(m["attributes"])
        assert full != m["captions"]["full"] and len(foregrounds) == len(m["attributes"]["foregrounds"])
        for f, text in zip(m["attributes"]["foregrounds"], foregrounds, strict=True):
            assert says(text, WORDS[f["colour"]][-1]) and says(text, WORDS[f["shape"]][-1])
        assert says(background, WORDS[m["attributes"]["background"]["colours"][0]][-1])
    fixed = make_clip(SynthConfig(clips=10, max_fg=3, size=16, frames=5, wording="fixed"), 3)["metadata"]
    assert all(
        f["colour"] in t
        for f, t in zip(fixed["attributes"]["foregrounds"], fixed["captions"]["foregrounds"], strict=True)
    )
