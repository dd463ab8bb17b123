"""The autoencoder's ceiling: ground truth through the VAE, measured as samples are; blockiness of a cell grid;
stutter of a matte held still inside latent frames."""

from pathlib import Path

import numpy as np
import pytest
import torch

from layert2v.ceiling import alpha_iou, round_trip, true_clips, vae_ceiling
from layert2v.config import CEILING_METRICS, model_preset
from layert2v.metrics import adherence, blockiness, stutter
from layert2v.models.vae import LayerVAE


def test_blockiness_is_about_one_on_ground_truth_and_high_on_a_cell_grid(smoke_prepared) -> None:
    truth, _ = true_clips(smoke_prepared.out, 1)[0]
    assert 0.5 < blockiness(truth.full, 8) < 1.5
    frames, height, width, _ = truth.full.shape
    cells = truth.full.reshape(frames, height // 8, 8, width // 8, 8, 3).mean(axis=(2, 4), keepdims=True)
    grid = np.broadcast_to(cells, (frames, height // 8, 8, width // 8, 8, 3)).reshape(truth.full.shape)
    noisy_grid = grid + np.random.default_rng(0).normal(0, 0.005, grid.shape)  # flat cells, steps at their edges
    assert blockiness(noisy_grid, 8) > 3 * blockiness(truth.full, 8)


def test_stutter_is_about_zero_on_ground_truth_and_high_on_a_matte_held_per_latent_frame(smoke_prepared) -> None:
    truth, _ = true_clips(smoke_prepared.out, 1)[0]
    moving = max(truth.alphas, key=lambda a: np.abs(np.diff(a, axis=0)).sum())
    assert abs(stutter(moving)) < 0.2
    last = [0 if i == 0 else ((i - 1) // 4 + 1) * 4 for i in range(len(moving))]  # each latent frame's last frame
    held = moving[last]  # what a decoder that codes each latent frame as one picture draws
    assert stutter(held) > 0.3 + stutter(moving)
    assert stutter(np.zeros_like(moving)) == 0.0  # an empty layer neither moves nor jumps


def test_true_clips_are_the_cached_layers_with_their_attributes(smoke_prepared) -> None:
    clips = true_clips(smoke_prepared.out, 3)
    assert len(clips) == 3
    for video, attributes in clips:
        assert len(attributes) == len(video.alphas) == len(video.foregrounds) >= 1
        assert adherence(video, attributes)["colour_adherence"] == 1.0  # the metric reads ground truth right
        assert alpha_iou(video.alphas, video.alphas) == 1.0


def test_round_trip_keeps_shapes_and_the_ceiling_reports_every_figure(smoke_prepared) -> None:
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny"))
    truth, _ = true_clips(smoke_prepared.out, 1)[0]
    decoded = round_trip(vae, truth)
    assert decoded.full.shape == truth.full.shape and decoded.alphas[0].shape == truth.alphas[0].shape
    assert all((f <= a[..., None] + 1e-6).all() for f, a in zip(decoded.foregrounds, decoded.alphas, strict=True))
    figures = vae_ceiling(vae, smoke_prepared.out, 2)
    assert tuple(figures) == CEILING_METRICS
    assert 0 <= figures["ceiling_alpha_iou"] <= 1 and 0 <= figures["ceiling_shape_adherence"] <= 1
    assert figures["ceiling_psnr_rgb"] < 30  # an untrained VAE is far from the data
    assert figures["ceiling_foregrounds"] == sum(len(t.alphas) for t, _ in true_clips(smoke_prepared.out, 2))


def test_no_clips_in_the_split_is_a_clear_error(smoke_prepared) -> None:
    with pytest.raises(ValueError, match="no clips in split 'nope'"):
        true_clips(Path(smoke_prepared.out), 2, split="nope")
