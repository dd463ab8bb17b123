"""LayeredVideo: re-compositing, every writer keeps its alpha on read-back, metrics on ground truth."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from layert2v.compose import LayeredVideo, over
from layert2v.config import SynthConfig
from layert2v.data.synthetic import make_clip
from layert2v.io import read_png_sequence, read_rgba, read_video
from layert2v.metrics import adherence, background_adherence, coherence, layered_metrics, matting_errors

CFG = SynthConfig(clips=50, max_fg=3, size=32, frames=5)


def clip_video(index: int) -> tuple[LayeredVideo, list[dict]]:
    clip = make_clip(CFG, index)
    video = LayeredVideo(
        full=clip["full"], background=clip["background"], foregrounds=clip["foregrounds"], alphas=clip["alphas"]
    )
    return video, clip["metadata"]["attributes"]["foregrounds"]


def multi_fg_clip() -> LayeredVideo:
    return next(v for v, _ in map(clip_video, range(CFG.clips)) if len(v.foregrounds) >= 2)


def test_recomposite_new_background_removed_and_reordered_layers() -> None:
    video = multi_fg_clip()
    assert np.allclose(video.recomposite(), video.full, atol=1e-6)
    white = np.ones_like(video.background)
    assert np.allclose(video.recomposite(background=white), over(video.foregrounds, video.alphas, white))
    fg, a = video.foregrounds, video.alphas
    assert np.allclose(video.recomposite(order=[1]), fg[1] + (1 - a[1][..., None]) * video.background)
    swapped = video.recomposite(order=[1, 0, *range(2, len(fg))])
    overlap = (a[0] > 0.5) & (a[1] > 0.5)
    if overlap.any():  # where the two overlap, the new front layer's colour wins
        assert not np.allclose(swapped[overlap], video.full[overlap])


def test_writers_keep_alpha(tmp_path: Path) -> None:
    video = multi_fg_clip()
    files = video.write(tmp_path / "out")
    alpha8 = np.rint(video.alphas[0] * 255)
    for key in ("fg_1_mov", "fg_1_webm"):
        rgba = read_rgba(files[key]).astype(np.float64)
        assert rgba.shape == (*alpha8.shape, 4)
        assert np.abs(rgba[..., 3] - alpha8).mean() < 3, key  # alpha survived the encoder, not dropped to 255
        assert rgba[..., 3].min() < 10 and abs(rgba[..., 3].max() - alpha8.max()) < 12
    png = read_png_sequence(files["fg_1_png"])
    assert np.array_equal(png[..., 3], alpha8.astype(np.uint8))  # lossless
    assert read_video(files["full"]).shape == (*alpha8.shape, 3)
    assert files["contact_sheet"].stat().st_size > 0 and files["gif"].stat().st_size > 0


def test_metrics_on_ground_truth_and_on_shuffled_layers() -> None:
    videos = [clip_video(i) for i in range(20)]
    for video, attrs in videos:
        assert coherence(video) > 100  # exact layers: the composite is the full video
        scores = adherence(video, attrs)
        assert scores["colour_adherence"] == 1.0 and scores["empty_layers"] == 0.0
        faded = replace(video, alphas=[a * 0.4 for a in video.alphas[:1]] + video.alphas[1:])
        assert adherence(faded, attrs)["empty_layers"] == 1 / len(attrs)  # a matte under 0.5 is a layer not drawn
        metrics = layered_metrics(video, 8)
        assert metrics["alpha_binarity"] > 0.9 and 0 < metrics["alpha_edge_width"] < 3
    shapes = np.mean([adherence(v, a)["shape_adherence"] for v, a in videos])
    assert shapes > 0.8
    (first, _), (second, _) = videos[0], videos[1]
    shuffled = LayeredVideo(
        full=first.full, background=second.background, foregrounds=second.foregrounds, alphas=second.alphas
    )
    assert coherence(shuffled) < 20


@pytest.mark.parametrize("camera", ["still", "pan"])
def test_background_stability_follows_the_camera(camera: str) -> None:
    for index in range(CFG.clips):
        clip = make_clip(CFG, index)
        if clip["metadata"]["attributes"]["camera"]["kind"] == camera:
            change = layered_metrics(clip_video(index)[0], 8)["background_change"]
            assert (change < 1e-6) if camera == "still" else (change > 1e-3)
            return
    pytest.fail(f"no {camera} clip among {CFG.clips}")


def test_background_colour_adherence_reads_the_named_colours_and_refuses_others() -> None:
    clips = [make_clip(CFG, i) for i in range(CFG.clips)]
    truth = [(c["background"], c["metadata"]["attributes"]["background"]) for c in clips]
    assert all(background_adherence(bg, attrs) for bg, attrs in truth)
    swapped = [
        background_adherence(bg, other) for (bg, _), (_, other) in zip(truth, truth[1:] + truth[:1], strict=True)
    ]
    assert np.mean(swapped) < 0.2
    grey = np.full((5, 32, 32, 3), 0.45, np.float32)
    assert not background_adherence(grey, {"kind": "stripes", "colours": ["navy", "cream"]})


def test_matting_errors_are_zero_on_the_truth_and_follow_their_definitions() -> None:
    true = np.zeros((4, 16, 16))
    true[:, 4:10, 4:10] = 1.0
    assert all(v == 0 for v in matting_errors(true, true).values())
    half = matting_errors(np.full_like(true, 0.5), true)
    assert half["mad"] == pytest.approx(500) and half["mse"] == pytest.approx(250)
    assert half["dtssd"] == 0  # an error constant in time has no temporal error
    assert half["grad"] > 0 and half["conn"] > 0
    flicker = true.copy()
    flicker[1::2] = 0.0  # the matte blinks: MAD of every other frame, and a temporal error every step
    errors = matting_errors(flicker, true)
    assert errors["mad"] == pytest.approx(0.5 * 36 / 256 * 1e3)
    assert errors["dtssd"] == pytest.approx(np.sqrt(36 / 256) * 1e2)
    shifted = np.roll(true, 1, axis=2)
    assert 0 < matting_errors(shifted, true)["grad"] < matting_errors(np.roll(true, 4, axis=2), true)["grad"]
    with pytest.raises(ValueError, match="mattes differ in shape"):
        matting_errors(true[:2], true)
