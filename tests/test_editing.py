"""Editing with the same model: known segments held on their noise path, given layers returned as given, the four
user tasks on the tiny preset, the classical baseline, and every bad input named before anything is written."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from layert2v.cli import main
from layert2v.compose import LayeredVideo
from layert2v.config import model_preset
from layert2v.editing import Given, classical_decompose, read_layered
from layert2v.metrics import psnr
from layert2v.models.layout import Layout
from layert2v.pipeline import LayerT2VPipeline
from layert2v.sampling import replace_known, sample, with_clean_known, with_known

from .layered_fixtures import scene

CFG = model_preset("tiny")
SIZE = {"frames": 5, "height": 32, "width": 32, "steps": 2}
SMALL = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def pipeline(model: Path) -> LayerT2VPipeline:
    return LayerT2VPipeline.from_folder(model)


def recording_model(seen: list) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A velocity field that records every (x_t, t) it is called with; any velocity: known segments must not
    follow it."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x.clone(), t.clone()))
        return torch.sin(x) - 0.3

    return model


def two_known_segments() -> tuple[Layout, torch.Tensor, dict[int, torch.Tensor]]:
    """K = 2 latents of two frames: the sampler's noise and the background and alpha_2 segments given."""
    layout = Layout(2)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 2 * layout.num_segments, 4, 4, generator=g)
    known = {1: torch.randn(1, 4, 2, 4, 4, generator=g), 4: torch.randn(1, 4, 2, 4, 4, generator=g)}
    return layout, noise, known


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_known_segments_stay_on_their_noise_path_at_every_step(sampler: str) -> None:
    layout, noise, known = two_known_segments()
    seen = []
    model = recording_model(seen)
    out = replace_known(sample(with_known(model, layout, known, noise), noise, 6, 3.0, sampler), layout, known)
    eps = layout.split(noise)
    for x, t in seen:
        for index, z in known.items():
            expected = (1 - t.reshape(-1, 1, 1, 1, 1)) * z + t.reshape(-1, 1, 1, 1, 1) * eps[index]
            assert torch.allclose(layout.split(x)[index], expected, atol=1e-5)
    assert all(torch.equal(layout.split(out)[i], z) for i, z in known.items())
    assert not torch.allclose(layout.split(out)[0], eps[0])  # the others were sampled


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_trained_conditioning_shows_known_segments_clean_at_t_zero_at_every_step(sampler: str) -> None:
    layout, noise, known = two_known_segments()
    seen = []
    model = recording_model(seen)
    out = replace_known(sample(with_clean_known(model, layout, known), noise, 6, 3.0, sampler), layout, known)
    assert len(seen) == 6
    for x, t in seen:
        assert t.shape == (1, layout.num_segments)
        assert all(t[0, i] == 0 for i in known) and (t[0, [0, 2, 3, 5]] > 0).all()
        assert all(torch.equal(layout.split(x)[i], z) for i, z in known.items())
    assert all(torch.equal(layout.split(out)[i], z) for i, z in known.items())
    assert not torch.allclose(layout.split(out)[0], layout.split(noise)[0])


def test_a_model_folder_trained_on_clean_segments_conditions_that_way(model: Path, tmp_path: Path) -> None:
    replace = LayerT2VPipeline.from_folder(model)
    assert replace.known_segments == "replace"
    replace.known_segments = "clean"
    clean = LayerT2VPipeline.from_folder(replace.save(tmp_path / "clean"))
    assert clean.known_segments == "clean"
    fg = _layers(3)
    given = Given(foregrounds={0: (fg["rgb"], fg["alpha"])})
    args = ("one object", "a gradient", ["a red circle"])
    by_folder = clean.generate(*args, given=given, **SIZE)
    assert np.array_equal(by_folder.foregrounds[0], fg["rgb"])
    assert np.array_equal(
        by_folder.background, clean.generate(*args, given=given, conditioning="clean", **SIZE).background
    )
    assert not np.array_equal(
        by_folder.background, clean.generate(*args, given=given, conditioning="replace", **SIZE).background
    )
    with pytest.raises(ValueError, match="conditioning must be one of"):
        clean.generate(*args, given=given, conditioning="noise", **SIZE)


def _layers(seed: int, frames: int = 5) -> dict[str, np.ndarray]:
    s = scene(frames, 32, 32, seed)
    alpha = s["alpha"].astype(np.float32) / 255.0
    return {
        "rgb": s["full"].astype(np.float32) / 255.0 * alpha[..., None],
        "alpha": alpha,
        "bg": s["background"] / 255.0,
    }


def test_given_layers_come_back_as_given(pipeline: LayerT2VPipeline) -> None:
    fg = _layers(1)
    given = Given(background=fg["bg"][0].astype(np.float32), foregrounds={1: (fg["rgb"], fg["alpha"])})
    video = pipeline.generate("two objects", "a gradient", ["a red circle", "a square"], given=given, **SIZE)
    assert np.array_equal(video.background, np.broadcast_to(fg["bg"][0], video.background.shape).astype(np.float32))
    assert np.array_equal(video.foregrounds[1], fg["rgb"]) and np.array_equal(video.alphas[1], fg["alpha"])
    free = pipeline.generate("two objects", "a gradient", ["a red circle", "a square"], **SIZE)
    assert not np.array_equal(free.background, video.background)


def test_decompose_keeps_the_video_and_regenerate_keeps_the_other_layers(
    pipeline: LayerT2VPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _layers(2)["bg"].astype(np.float32)
    composites = []
    composite = pipeline.vae.composite
    monkeypatch.setattr(pipeline.vae, "composite", lambda *a: composites.append(1) or composite(*a))
    layers = pipeline.decompose(full, "a square over a gradient", "a gradient", ["a square"], steps=2)
    assert np.array_equal(layers.full, full) and len(layers.alphas) == 1
    assert not composites  # compositing guidance would only pull the given video, whose velocity is its own
    unguided = pipeline.decompose(
        full, "a square over a gradient", "a gradient", ["a square"], steps=2, composite_guidance=0.0
    )
    assert np.array_equal(unguided.alphas[0], layers.alphas[0])
    original = pipeline.generate("two", "stripes", ["a red circle", "a blue star"], **SIZE)
    new = pipeline.regenerate(original, "foreground_2", ["two", "stripes", "a red circle", "a green square"], steps=2)
    assert np.array_equal(new.background, original.background)
    assert np.array_equal(new.foregrounds[0], original.foregrounds[0]) and np.array_equal(
        new.alphas[0], original.alphas[0]
    )
    assert not np.array_equal(new.alphas[1], original.alphas[1])
    with pytest.raises(ValueError, match="layer 'foreground_3' does not exist"):
        pipeline.regenerate(original, "foreground_3", ["two", "stripes", "a", "b"], steps=2)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (Given(background=np.zeros((5, 16, 16, 3), np.float32)), "background is 5 frames of 16x16"),
        (Given(full=np.zeros((4, 32, 32, 3), np.float32)), "full video is 4 frames of 32x32"),
        (Given(foregrounds={3: (np.zeros((5, 32, 32, 3)), np.zeros((5, 32, 32)))}), "foreground 4 is given, but"),
        (Given(foregrounds={0: (np.zeros((5, 32, 32, 3)), np.full((5, 32, 32), 1.5))}), r"alpha must be finite and in \[0, 1\]"),
        (Given(foregrounds={0: (np.ones((5, 32, 32, 3)), np.full((5, 32, 32), 0.5))}), "not premultiplied"),
    ],
)  # fmt: skip
def test_bad_given_layers_are_named(given: Given, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        given.resolved(5, 32, 32, 2)


def _generate(model: Path, out: Path, *extra: str) -> int:
    return main(["generate", "a red circle over stripes", "--background", "navy stripes", "--foreground", "a red circle",
                 "--model", str(model), "--out", str(out), *SMALL, *extra])  # fmt: skip


def test_a_kept_foreground_file_comes_back_byte_identical_under_other_backgrounds(model: Path, tmp_path: Path) -> None:
    assert _generate(model, tmp_path / "first") == 0
    kept = tmp_path / "first" / "foreground_1.mov"
    for n, caption in enumerate(["green checks", "a grey wall"]):
        out = tmp_path / f"bg{n}"
        code = main(["generate", "a red circle", "--background", caption, "--foreground", "a red circle",
                     "--foreground-file", str(kept), "--model", str(model), "--out", str(out), *SMALL])  # fmt: skip
        assert code == 0 and (out / "foreground_1.mov").read_bytes() == kept.read_bytes()
        video, manifest = read_layered(out)
        assert manifest["background_prompt"] == caption and len(video.alphas) == 1


def test_regenerate_and_recompose_commands(model: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "source"
    assert _generate(model, source, "--foreground", "a blue star") == 0
    before = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    out = tmp_path / "regen"
    code = main(["regenerate", str(source), "--layer", "foreground_2", "--prompt", "a green square", "--model",
                 str(model), "--out", str(out), "--steps", "2"])  # fmt: skip
    assert code == 0
    for name in ("background.mp4", "foreground_1.mov", "foreground_1.webm"):  # the kept layers' files, unchanged
        assert (out / name).read_bytes() == before[name]
    assert json.loads((out / "layers.json").read_text())["foreground_prompts"] == ["a red circle", "a green square"]
    assert {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()} == before  # the source untouched

    recomposed = tmp_path / "recomposed"
    assert main(["recompose", str(source), "--order", "2,1", "--hide", "1", "--out", str(recomposed)]) == 0
    video, manifest = read_layered(recomposed)
    assert len(video.alphas) == 1 and manifest["foreground_prompts"] == ["a blue star"]
    assert (
        main(
            ["regenerate", str(source), "--layer", "foreground_5", "--model", str(model), "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "--layer 'foreground_5' does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_bad_layer_files_are_named_before_the_model_loads(model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("not a video")
    assert _generate(model, tmp_path / "out", "--background-file", str(tmp_path / "notes.txt")) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert _generate(model, tmp_path / "out", "--background-file", str(tmp_path / "missing.png")) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_classical_baseline_recovers_a_still_background() -> None:
    """A 6-pixel red square crossing a still gradient, uncovering every pixel it passes over in most frames."""
    frames, size = 13, 32
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    background = np.stack([x / size, y / size, np.full_like(x, 0.4)], -1)
    alpha = np.stack([((np.abs(x - 3 - 2 * t) < 3) & (np.abs(y - 16) < 3)).astype(np.float32) for t in range(frames)])
    full = np.array([1.0, 0.1, 0.1]) * alpha[..., None] + (1 - alpha[..., None]) * background
    layers = classical_decompose(full.astype(np.float32))
    assert isinstance(layers, LayeredVideo)
    assert psnr(layers.background, np.broadcast_to(background, full.shape)) > 35
    found = layers.alphas[0] > 0.5
    assert (found & (alpha > 0.5)).sum() / (found | (alpha > 0.5)).sum() > 0.8


def test_decompose_command_with_both_methods(model: Path, tmp_path: Path, capsys) -> None:
    from layert2v.io import write_video

    s = scene(5, 32, 32, 4)
    write_video(tmp_path / "plain.mp4", s["full"], fps=8)
    for method in ("classical", "model"):
        out = tmp_path / method
        code = main(["decompose", str(tmp_path / "plain.mp4"), "--prompt", "a square over a gradient", "--background",
                     "a gradient", "--foreground", "a square", "--method", method, "--model", str(model),
                     "--steps", "2", "--out", str(out)])  # fmt: skip
        assert code == 0 and (out / "foreground_1.mov").is_file() and (out / "layers.json").is_file()
    write_video(tmp_path / "six.mp4", np.concatenate([s["full"], s["full"][:1]]), fps=8)
    code = main(["decompose", str(tmp_path / "six.mp4"), "--prompt", "p", "--background", "b", "--foreground", "f",
                 "--model", str(model), "--out", str(tmp_path / "bad")])  # fmt: skip
    assert code == 2 and "frames must be 4k+1, got 6" in capsys.readouterr().err and not (tmp_path / "bad").exists()
