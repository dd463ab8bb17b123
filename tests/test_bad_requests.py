"""Bad requests, model folders and params: one clear line naming the file or field, before any costly work;
nothing a user keeps is overwritten; a typo never promotes a model."""

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import pytest
import yaml

from layert2v.cli import main
from layert2v.config import CEILING_METRICS, EVALUATION_METRICS, REWORDED_METRICS, load_params, model_preset
from layert2v.evaluate import summarise
from layert2v.models.checkpoint import ModelFolderError, load_dit
from layert2v.pipeline import LayerT2VPipeline, PromptTruncated
from layert2v.registry import decide

from .conftest import ROOT

CFG = model_preset("tiny")
SMALL = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Path:
    return tiny_model


def _generate(model: Path, out: Path, *extra: str) -> int:
    return main(["generate", "a red circle", "--background", "stripes", "--foreground", "a red circle",
                 "--model", str(model), "--out", str(out), *SMALL, *extra])  # fmt: skip


def _config_only(model: Path, tmp_path: Path) -> Path:
    """A folder with the model's config.json and no weights: a request checked first never needs them."""
    folder = tmp_path / "config_only"
    folder.mkdir()
    (folder / "config.json").write_text((model / "config.json").read_text())
    return folder


# ---------------------------------------------------------------- generate: bounds checked before the model loads


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--height", "100000"], "height must be <= 256, got 100000"),
        (["--frames", "10001"], "frames must be <= 33, got 10001"),
        (["--foreground", "b", "--foreground", "c", "--foreground", "d"], "1..3 foreground prompts allowed"),
        (["--steps", "100000"], "steps must be in 1..200"),
    ],
)
def test_generate_refuses_oversized_requests_before_loading(
    model: Path, tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    start = time.perf_counter()
    assert _generate(_config_only(model, tmp_path), tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err and time.perf_counter() - start < 5
    assert not (tmp_path / "out").exists()


def test_generate_limits_are_configurable(model: Path, tmp_path: Path, capsys) -> None:
    assert _generate(_config_only(model, tmp_path), tmp_path / "out", "--frames", "9", "--max-frames", "5") == 2
    assert "frames must be <= 5, got 9" in capsys.readouterr().err


# ---------------------------------------------------------------- generate --out: runs never mix


def test_generate_into_a_used_folder_refuses_or_replaces_whole(model: Path, tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.mp4").write_bytes(b"a user's video")
    assert _generate(model, mine, "--overwrite") == 2  # not an earlier generate output: never replaced
    assert "holds no earlier generation output" in capsys.readouterr().err
    assert (mine / "holiday.mp4").read_bytes() == b"a user's video"

    out = tmp_path / "out"
    assert _generate(model, out, "--foreground", "a blue star") == 0  # K = 2
    assert (out / "foreground_2.mov").is_file()
    assert _generate(model, out) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert _generate(model, out, "--overwrite") == 0  # K = 1 now: nothing of the K = 2 run is left
    assert (out / "foreground_1.mov").is_file() and not (out / "foreground_2.mov").exists()
    assert not (out / "foreground_2_png").exists()


# ---------------------------------------------------------------- broken model folders: one line each


def _broken_copy(model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("config.json", "dit.safetensors", "vae.safetensors"):
        (folder / name).write_bytes((model / name).read_bytes())
    return folder


def _break_truncated(folder: Path) -> str:
    weights = folder / "dit.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "dit.safetensors is not a readable safetensors file"


def _break_not_json(folder: Path) -> str:
    (folder / "config.json").write_text("{'model': oops")
    return "config.json is not valid JSON"


def _break_missing_key(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    del config["model"]
    (folder / "config.json").write_text(json.dumps(config))
    return "config.json has no 'model' object"


def _break_sizes(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["model"]["dim"], config["model"]["ffn_dim"] = 64, 128
    (folder / "config.json").write_text(json.dumps(config))
    return "dit.safetensors does not match the sizes in config.json"


@pytest.mark.parametrize("breaker", [_break_truncated, _break_not_json, _break_missing_key, _break_sizes])
def test_a_broken_model_folder_is_one_line_naming_the_file(model: Path, tmp_path: Path, capsys, breaker) -> None:
    folder = _broken_copy(model, tmp_path)
    words = breaker(folder)
    with pytest.raises(ModelFolderError, match=words):
        load_dit(folder)
    assert _generate(folder, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_out_under_a_regular_file_is_one_line(model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert _generate(model, tmp_path / "file" / "out") == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_long_prompt_warns_with_its_token_count(model: Path) -> None:
    pipeline = LayerT2VPipeline.from_folder(model)
    long = " ".join(["a very red circle"] * 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.generate(long, "stripes", ["a red circle"], frames=5, height=32, width=32, steps=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, PromptTruncated)]
    assert len(messages) == 1 and f"reads the first {CFG.text_len}" in messages[0] and "prompt has 4" in messages[0]


# ---------------------------------------------------------------- params.yaml: typos are errors at load time


def _params_with(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["registry"].update(primary="coherance_db"), r"registry.primary names unknown metrics \['coherance_db'\]"),
        (lambda r: r["registry"]["tolerance"].update(colour_adherance=0.1), "registry.tolerance names unknown metrics"),
        (lambda r: r["evaluate"]["gate"].update(coherence=1.0), "evaluate.gate names unknown metrics"),
        (lambda r: r["train"]["stage3"]["gate"].update({"sample/coherence": 1.0}), "train.stage3.gate names unknown"),
        (lambda r: r["train"]["stage1"]["gate"].update({"val/alpha_io": 0.5}), "train.stage1.gate names unknown"),
        (lambda r: r.update(evalute={"prompts": 4}), r"params has unknown sections \['evalute'\]"),
        (lambda r: r["profiles"]["smoke"].update(trian={}), r"profiles.smoke has unknown sections \['trian'\]"),
        (lambda r: r["train"].update(model={"vae_cel": 4}), r"train.model has unknown keys \['vae_cel'\]"),
        (lambda r: r["train"].update(model={"vae_cell": 2}), "model.vae_cell of the patch VAE must be 4 or 8, got 2"),
    ],
)  # fmt: skip
def test_misspelt_params_are_errors_at_load(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_params(_params_with(tmp_path, edit), "smoke")


def test_params_that_are_not_yaml_are_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n  preset: tiny\n")
    assert main(["params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"params file {path} is not valid YAML at line" in err and len(err.strip().splitlines()) == 1


def test_evaluation_metric_names_are_what_evaluate_writes() -> None:
    figures = ("coherence_db", "colour_adherence", "shape_adherence", "empty_layers", "alpha_binarity", "blockiness")
    row = dict.fromkeys(figures, 1.0) | {"alpha_temporal_iou": 1.0, "alpha_stutter": 0.0}
    row |= {"background_change": 0.0, "still_camera": 1.0}
    written = tuple(summarise([row], [1])) + REWORDED_METRICS + CEILING_METRICS  # test_ceiling.py: the ceiling's
    assert written == EVALUATION_METRICS


def test_a_nan_metric_never_passes_the_promotion_rule() -> None:
    rule = load_params(ROOT / "params.yaml").registry
    champion = {"coherence_db": 20.0, "colour_adherence": 0.9, "shape_adherence": 0.2}
    assert decide(champion | {"coherence_db": 21.0}, champion, rule)[0]
    for metric in champion:
        assert not decide(champion | {"coherence_db": 21.0, metric: math.nan}, champion, rule)[0], metric
    lacking = {k: v for k, v in champion.items() if k != "coherence_db"}
    assert not decide(lacking, champion, rule)[0]
    assert not decide(champion | {"coherence_db": 21.0}, champion, dataclasses.replace(rule, min_improvement=math.nan))[
        0
    ]
