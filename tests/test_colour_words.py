"""Colour words a model never read, read as the nearest it did: the lexicon, the reader, the model folder's record,
the pipeline reading its prompts through it and `generate` recording what it read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from layert2v.cli import main
from layert2v.config import load_params
from layert2v.models.checkpoint import ModelFolderError
from layert2v.models.colour_words import (
    ColourWords,
    ciede2000,
    cielab,
    folder_colour_words,
    known_colour_words,
    lexicon,
)
from layert2v.pipeline import LayerT2VPipeline

from .conftest import ROOT

RED, ORANGE, BLUE = [0.86, 0.12, 0.12], [0.98, 0.55, 0.08], [0.12, 0.25, 0.90]
REQUEST = {"frames": 5, "height": 32, "width": 32, "steps": 2, "guidance": 3.0}


def test_the_lexicon_holds_survey_and_css_names_in_one_spelling() -> None:
    names = lexicon()
    assert len(names) > 900 and names["crimson"] == pytest.approx((0x8C / 255, 0, 0x0F / 255))  # the xkcd survey's
    assert "slate grey" in names and "slate gray" not in names and "cornflowerblue" in names  # CSS fills gaps
    assert not any(name.startswith("medium ") for name in names)  # a size word in a prompt, not a colour


def test_cielab_orders_colours_as_they_look() -> None:
    lab = cielab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert lab[0] == pytest.approx([100, 0, 0], abs=0.05) and lab[1] == pytest.approx([0, 0, 0], abs=1e-6)
    assert lab[2, 0] == pytest.approx(53.2, abs=0.1) and lab[2, 1] > 70  # red: mid lightness, strongly +a


def test_ciede2000_gives_the_published_differences() -> None:
    pairs = np.array([  # Sharma, Wu and Dalal (2005), pairs 1, 2, 7 and 17: L*a*b* of each, and their difference
        [[50.0, 2.6772, -79.7751], [50.0, 0.0, -82.7485]],
        [[50.0, 3.1571, -77.2803], [50.0, 0.0, -82.7485]],
        [[50.0, 0.0, 0.0], [50.0, -1.0, 2.0]],
        [[50.0, 2.5, 0.0], [73.0, 25.0, -18.0]],
    ])  # fmt: skip
    assert ciede2000(pairs[:, 0], pairs[:, 1]) == pytest.approx([2.0425, 2.8615, 2.3669, 27.1492], abs=1e-4)


def test_unknown_colour_words_become_the_nearest_known_and_nothing_else_changes() -> None:
    reader = ColourWords({"red": RED, "orange": ORANGE, "blue": BLUE, "slate grey": [0.4, 0.45, 0.5]})
    assert reader.read("A crimson star") == "A red star"
    assert reader.read("a pumpkin disc over sapphire stripes") == "an orange disc over blue stripes"
    assert (
        reader.read("Two red and orange squares, steel gray backdrop")
        == "Two red and orange squares, slate grey backdrop"
    )
    assert reader.read("a medium red star, huge, bouncing") == "a medium red star, huge, bouncing"  # all known
    assert reader.read("Crimson-red orbs") == "Red-red orbs"  # names are matched whole, case-blind
    assert reader.read("starlight, redness") == "starlight, redness"  # no colour name: untouched


def test_known_words_are_those_the_captions_use() -> None:
    known = known_colour_words(["a crimson star over slate grey stripes", "a medium purple dot", "a box"])
    assert set(known) == {"crimson", "slate grey", "purple"} and known["crimson"] == list(lexicon()["crimson"])
    with pytest.raises(ValueError, match="empty"):
        ColourWords({})


def test_a_model_folder_records_its_colour_words(tiny_model: Path, tmp_path: Path, capsys) -> None:
    assert folder_colour_words(tiny_model) is None  # folders from before read prompts as written
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    plain = LayerT2VPipeline.from_folder(folder)
    plain.colour_words = ColourWords({"red": RED, "blue": BLUE})
    plain.save(folder)
    assert folder_colour_words(folder).known == {"red": RED, "blue": BLUE}
    out = tmp_path / "clip"
    code = main(["generate", "a crimson circle", "--background", "cobalt stripes", "--foreground", "a crimson circle",
                 "--model", str(folder), "--out", str(out), "--frames", "5", "--height", "32", "--width", "32",
                 "--steps", "2"])  # fmt: skip
    manifest = json.loads((out / "layers.json").read_text())
    assert code == 0 and manifest["prompt"] == "a crimson circle"  # as the user wrote it, and as the model read it:
    assert manifest["read_as"] == ["a red circle", "blue stripes", "a red circle"]
    assert "read 'a crimson circle' as 'a red circle'" in capsys.readouterr().out
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"colour_words": {"red": "#ff0000"}}))
    with pytest.raises(ModelFolderError, match=r"config.json: colour_words must map each colour word to its sRGB"):
        folder_colour_words(folder)


def test_the_pipeline_samples_the_prompts_as_read(tiny_model: Path) -> None:
    pipeline = LayerT2VPipeline.from_folder(tiny_model)
    written = ("a crimson circle over stripes", "cobalt stripes", ["a crimson circle"])
    as_read = ("a red circle over stripes", "blue stripes", ["a red circle"])
    literal = pipeline.generate(*written, seed=3, **REQUEST)
    plain = pipeline.generate(*as_read, seed=3, **REQUEST)
    assert pipeline.read_as([written[0], written[1], *written[2]]) == {}
    pipeline.colour_words = ColourWords({"red": RED, "blue": BLUE})
    read = pipeline.generate(*written, seed=3, **REQUEST)
    assert np.array_equal(read.full, plain.full) and np.array_equal(read.alphas[0], plain.alphas[0])
    assert not np.array_equal(read.full, literal.full)
    assert pipeline.read_as([written[0], written[1], *written[2]]) == {"read_as": [as_read[0], as_read[1], *as_read[2]]}


def test_the_knob_is_a_boolean(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_params(ROOT / "params.yaml").train.colour_words is True
    raw["train"]["colour_words"] = "yes"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"train\.colour_words must be true or false, got 'yes'"):
        load_params(tmp_path / "params.yaml")
