from pathlib import Path

import pytest
import yaml

from layert2v.config import DiTStageConfig, EvaluateConfig, PrepareConfig, SynthConfig, load_params

from .conftest import ROOT


def test_default_and_smoke_profiles_load() -> None:
    default, smoke = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.yaml", "smoke")
    assert (default.prepare.height, default.prepare.frames, default.synth.clips) == (64, 9, 2000)
    assert smoke.synth.clips < default.synth.clips
    assert smoke.gate.composite_tolerance == default.gate.composite_tolerance  # untouched keys inherited


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (SynthConfig, {"clips": 4, "max_fg": 1, "size": 32, "frames": 8}, "4k\\+1"),
        (SynthConfig, {"clips": 4, "max_fg": 1, "size": 33, "frames": 9}, "synth.size"),
        (SynthConfig, {"clips": 0, "max_fg": 1, "size": 32, "frames": 9}, "synth.clips"),
        (PrepareConfig, {"height": 30, "width": 32, "frames": 9, "max_fg": 1}, "prepare.height"),
        (PrepareConfig, {"height": 32, "width": 32, "frames": 9, "max_fg": 1, "max_tokens": 1}, "max_tokens"),
        (DiTStageConfig, {"max_steps": 40, "batch_size": 2, "lr": 1e-3, "k_weights": [1.0, -1.0]}, "k_weights"),
        (DiTStageConfig, {"max_steps": 40, "batch_size": 2, "lr": 1e-3, "k_weights": [0.0, 0.0]}, "k_weights"),
        (DiTStageConfig, {"max_steps": 40, "batch_size": 2, "lr": 1e-3, "ema_decay": 1.0}, "ema_decay"),
        (DiTStageConfig, {"max_steps": 40, "batch_size": 2, "lr": 1e-3, "timestep_shift": 0.0}, "timestep_shift"),
        (DiTStageConfig, {"max_steps": 40, "batch_size": 2, "lr": 1e-3, "condition_dropout": 1.0}, "condition_dropout"),
        (EvaluateConfig, {"composite_guidance": 2.0}, "evaluate.composite_guidance must be in \\[0, 1\\]"),
        (EvaluateConfig, {"composite_sigma": 1.5}, "evaluate.composite_sigma must be in \\(0, 1\\]"),
        (EvaluateConfig, {"guidance_sigma": -0.1}, "evaluate.guidance_sigma must be in \\[0, 1\\)"),
        (EvaluateConfig, {"guidance_every": 0}, "evaluate.guidance_every must be >= 1, got 0"),
        (EvaluateConfig, {"shape_guidance": -1.0}, "evaluate.shape_guidance must be >= 0, got -1.0"),
    ],
)
def test_bad_values_are_named(cls, values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**values)


def test_unknown_key_and_profile_are_errors(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["prepare"]["hieght"] = 64
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="unknown keys \\['hieght'\\]"):
        load_params(path)
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_params(ROOT / "params.yaml", "nope")
