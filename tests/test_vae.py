"""The VAE wrapper over both autoencoders (patch, wan): shapes, causality, the alpha path, zero-init adapter
and LoRA, latent statistics."""

import json
from pathlib import Path

import pytest
import torch

from layert2v.config import AlphaStageConfig, VAEStageConfig, model_preset
from layert2v.models.checkpoint import load_vae, save_vae
from layert2v.models.vae import LayerVAE
from layert2v.training.stage0_vae import VAEPretraining, random_crops, seam_l1
from layert2v.training.stage1_alpha import AlphaAdaptation

ARCHS = ("patch", "wan")


@pytest.fixture(scope="module", params=ARCHS)
def vae(request: pytest.FixtureRequest) -> LayerVAE:
    torch.manual_seed(0)
    return LayerVAE(model_preset("tiny", vae_arch=request.param)).eval()


def _output_bias(vae: LayerVAE) -> torch.Tensor:
    """The bias of the decoder's last convolution: shifting it moves every output pixel."""
    decoder = vae.vae.decoder
    return decoder.conv_out.bias if vae.cfg.vae_arch == "wan" else decoder[-1].bias


def test_shapes_and_ranges(vae: LayerVAE) -> None:
    video = torch.rand(1, 3, 5, 32, 32)
    z = vae.encode_rgb(video)
    assert z.shape == (1, 16, 2, 4, 4)
    rgb, alpha = vae.decode_rgb(z), vae.decode_alpha(vae.encode_alpha(torch.rand(1, 1, 5, 32, 32)))
    assert rgb.shape == (1, 3, 5, 32, 32) and alpha.shape == (1, 1, 5, 32, 32)
    assert 0 <= rgb.min() and rgb.max() <= 1 and 0 <= alpha.min() and alpha.max() <= 1


@pytest.mark.parametrize("arch", ARCHS)
def test_unclamped_decode_is_the_decoder_before_its_clamp_and_keeps_gradients(arch: str) -> None:
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny", vae_arch=arch))
    with torch.no_grad():
        _output_bias(vae).fill_(10.0)  # every pixel far beyond the clamp, as a fresh VAE can start
    z = torch.randn(1, 16, 2, 4, 4)
    raw = vae.decode_unclamped(z)
    assert torch.allclose(raw.clamp(-1, 1), vae.vae.decode(z).sample, atol=1e-6) and raw.min() > 1
    target = torch.zeros(1, 3, 5, 32, 32)
    for clamp, moves in ((True, False), (False, True)):
        vae.zero_grad()
        (vae.decode_rgb(z, clamp=clamp) - target).abs().mean().backward()
        assert (_output_bias(vae).grad.abs().sum() > 0) == moves


@torch.no_grad()
def test_encoder_is_causal(vae: LayerVAE) -> None:
    """Latent frame j depends on frames up to 4j only: changing the last frames leaves earlier latents alone."""
    video = torch.rand(1, 3, 9, 32, 32)
    changed = video.clone()
    changed[:, :, 5:] = torch.rand(1, 3, 4, 32, 32)
    a, b = vae.encode_rgb(video), vae.encode_rgb(changed)
    assert torch.allclose(a[:, :, :2], b[:, :, :2], atol=1e-5)  # latent frames 0, 1 cover frames 0..4
    assert not torch.allclose(a[:, :, 2], b[:, :, 2], atol=1e-3)


@torch.no_grad()
def test_context_branch_starts_as_the_plain_decoder_reads_the_previous_latent_frame_and_stays_causal() -> None:
    """`vae_context`: zero at init (the same decoder as without it), then frames of latent frame j depend on
    latent frames j - 1 and j, never on a later one."""
    z = torch.randn(1, 16, 3, 4, 4)
    torch.manual_seed(0)
    plain = LayerVAE(model_preset("tiny")).eval()
    torch.manual_seed(0)
    with_context = LayerVAE(model_preset("tiny", vae_context=16)).eval()
    assert torch.equal(plain.decode_rgb(z), with_context.decode_rgb(z))
    with_context.vae.context[-1].weight.normal_(std=0.5)
    decoded = with_context.decode_rgb(z)
    later, earlier = z.clone(), z.clone()
    later[:, :, 2] = torch.randn(1, 16, 4, 4)
    earlier[:, :, 0] = torch.randn(1, 16, 4, 4)
    assert torch.equal(with_context.decode_rgb(later)[:, :, :5], decoded[:, :, :5])  # frames 0..4: latent 0, 1
    assert not torch.allclose(with_context.decode_rgb(earlier)[:, :, 1:5], decoded[:, :, 1:5], atol=1e-3)
    assert torch.equal(with_context.decode_rgb(earlier)[:, :, 5:], decoded[:, :, 5:])  # latent 2 reads 1, not 0
    for bad in ({"vae_arch": "wan", "vae_context": 16}, {"vae_context": -1}, {"vae_context": 12}):
        with pytest.raises(ValueError, match="vae_context must be >= 0 and is a patch VAE option"):
            model_preset("tiny", **bad)


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHS)
def test_alpha_path_adapter_and_lora_start_as_identity(arch: str) -> None:
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny", vae_arch=arch)).eval()
    alpha = (torch.rand(1, 1, 5, 32, 32) > 0.5).float()
    plain = vae._encode((alpha * 2 - 1).expand(-1, 3, -1, -1, -1))
    assert torch.allclose(vae.encode_alpha(alpha), plain)  # zero gate: adapter is the identity
    z = vae.encode_alpha(alpha)
    before_alpha, before_rgb = vae.decode_alpha(z), vae.decode_rgb(z)
    vae.add_decoder_lora(rank=4)
    assert torch.allclose(vae.decode_alpha(z), before_alpha, atol=1e-6)  # LoRA B starts at zero
    lora = [p for n, p in vae.named_parameters() if "lora_B" in n]
    assert lora
    for p in lora:
        p.normal_(std=0.5)
    assert not torch.allclose(vae.decode_alpha(z), before_alpha, atol=1e-4)  # LoRA acts on alpha decoding
    assert torch.allclose(vae.decode_rgb(z), before_rgb, atol=1e-6)  # and never on RGB decoding


def _stage1_step(arch: str, decoder_lora_rank: int) -> tuple[AlphaAdaptation, torch.Tensor]:
    """One stage-1 training step (loss and backward) on a random matte; returns the module and the matte."""
    torch.manual_seed(0)
    stage = AlphaStageConfig(max_steps=2, batch_size=1, lr=1e-3, warmup_steps=0, decoder_lora_rank=decoder_lora_rank)
    module = AlphaAdaptation(LayerVAE(model_preset("tiny", vae_arch=arch)), stage)
    module.log_dict = lambda *_, **__: None
    alpha = (torch.rand(1, 1, 1, 5, 32, 32) > 0.5).float()
    module.training_step({"alphas": alpha}, 0).backward()
    return module, alpha


@pytest.mark.parametrize("arch", ARCHS)
def test_stage1_step_reaches_the_decoder_lora_and_a_frozen_lora_stays_frozen(arch: str) -> None:
    """`decode_alpha` switches the LoRA off before `backward`; its weights must still get their gradient (stage 1),
    and a VAE frozen for stage 2 must not have its LoRA made trainable by decoding."""
    module, alpha = _stage1_step(arch, decoder_lora_rank=8)
    lora = {name: p for name, p in module.named_parameters() if "lora_" in name}
    assert lora and all(p.grad is not None and p.requires_grad for p in lora.values())
    assert any(p.grad.abs().sum() > 0 for name, p in lora.items() if "lora_B" in name)

    frozen = module.vae.requires_grad_(False)
    frozen.decode_alpha(frozen.encode_alpha(alpha[:, 0]))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_seam_term_weighs_the_steps_across_cell_borders_only() -> None:
    """A cell decoded brighter than its neighbour steps at their border (0.5 on one axis: 0.25); a step inside a
    cell, or a true edge on a border drawn as it is, costs nothing."""
    truth = torch.zeros(1, 3, 5, 16, 16)
    seam = truth.clone()
    seam[..., :8] += 0.5
    inside = truth.clone()
    inside[..., :4] += 0.5
    assert float(seam_l1(seam, truth, 8)) == pytest.approx(0.25)
    assert float(seam_l1(inside, truth, 8)) == 0 and float(seam_l1(seam, seam, 8)) == 0
    assert float(seam_l1(seam, truth, 4)) == pytest.approx(0.5 / 3 / 2)  # borders at 3, 7, 11: one of three steps


def test_stage0_seam_weight_adds_the_seam_term_to_the_loss() -> None:
    """`seam_weight` adds exactly `weight * seam_l1` of the decoded streams (the posterior sample drawn alike)."""
    torch.manual_seed(0)
    batch = {
        "full": torch.rand(1, 3, 5, 32, 32), "background": torch.rand(1, 3, 5, 32, 32),
        "foregrounds": torch.rand(1, 2, 3, 5, 32, 32), "alphas": torch.rand(1, 2, 1, 5, 32, 32),
    }  # fmt: skip
    losses, logged = [], {}
    for weight in (0.0, 2.0):
        stage = VAEStageConfig(max_steps=2, batch_size=1, lr=1e-3, warmup_steps=0, seam_weight=weight)
        torch.manual_seed(0)
        module = VAEPretraining(model_preset("tiny", vae_refine=8), stage)
        module.log_dict = lambda metrics, **_: logged.update(metrics)
        torch.manual_seed(1)
        losses.append(module.training_step(batch, 0))
    assert logged["train/seam_l1"].item() > 0
    assert (losses[1] - losses[0]).item() == pytest.approx(2.0 * logged["train/seam_l1"].item(), rel=1e-4)
    with pytest.raises(ValueError, match="seam_weight must be >= 0"):
        VAEStageConfig(max_steps=2, batch_size=1, lr=1e-3, warmup_steps=0, seam_weight=-1)


def test_random_crops_are_windows_of_each_video_at_their_own_places() -> None:
    """Each video gives one window of itself (all frames and channels) of the asked fraction of each side in whole
    cells, at a place drawn per video."""
    torch.manual_seed(0)
    x = torch.arange(6 * 3 * 5 * 32 * 40, dtype=torch.float32).reshape(6, 3, 5, 32, 40)
    crops = random_crops(x, 0.75, 8)
    assert crops.shape == (6, 3, 5, 24, 24)  # 24 of 32, and 30 of 40 rounded down to 8-pixel cells
    places = []
    for video, window in zip(x, crops, strict=True):
        top, left = divmod(int(window[0, 0, 0, 0] - video[0, 0, 0, 0]), 40)
        assert torch.equal(window, video[..., top : top + 24, left : left + 24])
        places.append((top, left))
    assert len(set(places)) > 1
    assert random_crops(x, 0.1, 8).shape[-2:] == (8, 8) and torch.equal(random_crops(x, 1.0, 8), x)


def test_stage0_with_crop_trains_on_windows_and_validates_on_whole_frames() -> None:
    """`crop` feeds the autoencoder windows of the streams in training (its decode sees only the window's pixels)
    and whole frames in validation."""
    batch = {
        "full": torch.rand(2, 3, 5, 32, 32), "background": torch.rand(2, 3, 5, 32, 32),
        "foregrounds": torch.rand(2, 2, 3, 5, 32, 32), "alphas": torch.rand(2, 2, 1, 5, 32, 32),
    }  # fmt: skip
    stage = VAEStageConfig(max_steps=2, batch_size=2, lr=1e-3, warmup_steps=0, seam_weight=1.0, crop=0.5)
    module = VAEPretraining(model_preset("tiny"), stage)
    cells: list[tuple[int, int]] = []  # the latent grid each decode of the patch autoencoder draws
    module.vae.vae.decoder.register_forward_hook(lambda _m, _i, out: cells.append(tuple(out.shape[-2:])))
    module.log_dict = lambda *_, **__: None
    module.log = lambda *_, **__: None
    module.training_step(batch, 0).backward()
    assert cells == [(2, 2)]  # 16-pixel windows of 8-pixel cells
    assert all(p.grad is not None for p in module.vae.vae.encoder.parameters())
    module.validation_step(batch, 0)
    assert cells[-1] == (4, 4)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="crop must be in"):
            VAEStageConfig(max_steps=2, batch_size=1, lr=1e-3, warmup_steps=0, crop=bad)


def _matte_round_trip_after_stage0(alpha_weight: float, steps: int = 25) -> tuple[float, dict]:
    """Mean L1 of one clip's matte (as grey RGB) through a tiny VAE trained `steps` stage-0 steps on that clip."""
    torch.manual_seed(0)
    alphas = torch.zeros(1, 2, 1, 5, 32, 32)
    alphas[..., 6:22, 9:25] = 1.0  # a sharp square the colour streams do not carry alone
    batch = {
        "full": torch.rand(1, 3, 5, 32, 32), "background": torch.rand(1, 3, 5, 32, 32),
        "foregrounds": torch.rand(1, 2, 3, 5, 32, 32), "alphas": alphas,
    }  # fmt: skip
    stage = VAEStageConfig(max_steps=steps, batch_size=1, lr=3e-3, warmup_steps=0, alpha_weight=alpha_weight)
    module = VAEPretraining(model_preset("tiny"), stage)
    logged: dict = {}
    module.log_dict = lambda metrics, **_: logged.update(metrics)
    optimizer = torch.optim.Adam((p for p in module.parameters() if p.requires_grad), lr=stage.lr)
    for _ in range(steps):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    with torch.no_grad():
        matte = alphas[:, 0].expand(-1, 3, -1, -1, -1)
        return (module.vae.decode_rgb(module.vae.encode_rgb(matte)) - matte).abs().mean().item(), logged


def test_stage0_alpha_weight_teaches_the_autoencoder_mattes() -> None:
    """With `alpha_weight` the first foreground's matte is one more stream of stage 0's reconstruction: the same
    steps leave its round trip closer to the truth than an autoencoder trained on colour alone."""
    colour_only, logged_colour = _matte_round_trip_after_stage0(0.0)
    with_mattes, logged_mattes = _matte_round_trip_after_stage0(1.0)
    assert "train/alpha_l1" not in logged_colour and logged_mattes["train/alpha_l1"].item() > 0
    assert with_mattes < 0.8 * colour_only


def test_stage1_without_decoder_lora_trains_the_alpha_adapter_alone() -> None:
    module, _ = _stage1_step("patch", decoder_lora_rank=0)
    trainable = {name for name, p in module.vae.named_parameters() if p.requires_grad}
    assert module.vae.lora_rank == 0 and trainable and all(n.startswith("alpha_adapter") for n in trainable)
    with pytest.raises(ValueError, match="decoder_lora_rank must be >= 0"):
        AlphaStageConfig(max_steps=2, batch_size=1, lr=1e-3, warmup_steps=0, decoder_lora_rank=-1)


@torch.no_grad()
@pytest.mark.parametrize("rank", [0, 4])
def test_decoder_lora_rank_round_trips_through_save_and_load(tmp_path: Path, rank: int) -> None:
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny")).eval()
    if rank:
        vae.add_decoder_lora(rank)
        for p in (p for n, p in vae.named_parameters() if "lora_B" in n):
            p.normal_(std=0.5)
    save_vae(vae, tmp_path)
    loaded = load_vae(tmp_path).eval()
    z = vae.encode_alpha((torch.rand(1, 1, 5, 32, 32) > 0.5).float())
    assert loaded.lora_rank == rank and torch.equal(loaded.decode_alpha(z), vae.decode_alpha(z))


def test_vae_saved_with_the_lora_flag_loads_its_rank_8_lora(tmp_path: Path) -> None:
    """Folders written before `vae_lora_rank` recorded the LoRA as `vae_lora: true`, always rank 8."""
    vae = LayerVAE(model_preset("tiny"))
    vae.add_decoder_lora(8)
    save_vae(vae, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vae_lora"] = bool(config.pop("vae_lora_rank"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_vae(tmp_path).lora_rank == 8


def test_latent_stats_normalise(vae: LayerVAE) -> None:
    torch.manual_seed(1)
    videos = [torch.rand(2, 3, 5, 32, 32) for _ in range(2)]
    vae.fit_latent_stats(videos)
    z = torch.cat([vae.encode_rgb(v) for v in videos]).transpose(0, 1).flatten(1)
    assert torch.allclose(z.mean(1), torch.zeros(16), atol=1e-4) and torch.allclose(z.std(1), torch.ones(16), atol=1e-3)


def test_missing_pretrained_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no download is attempted"):
        LayerVAE(model_preset("paper"), pretrained=tmp_path / "Wan2.1-T2V-1.3B")


def test_patch_vae_refuses_bad_shapes_and_checkpoints(tmp_path: Path) -> None:
    vae = LayerVAE(model_preset("tiny"))
    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        vae.encode_rgb(torch.rand(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode_rgb(torch.rand(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match="no pretrained checkpoint"):
        LayerVAE(model_preset("tiny"), pretrained=tmp_path)


def test_patch_vae_round_trips_the_frame_blocks() -> None:
    """Folding and unfolding are exact inverses, so a reconstruction error is the network's, not the layout's."""
    vae = LayerVAE(model_preset("tiny")).vae
    video = torch.rand(2, 3, 9, 16, 24)
    folded = vae._fold(video)
    assert folded.shape == (2 * 3, 3 * 4 * 64, 2, 3)
    assert torch.equal(vae._unfold(folded, 2), video)


def test_weights_saved_before_the_patch_vae_load_as_wan(tmp_path: Path) -> None:
    """A VAE folder whose config predates `vae_arch` (registered models, DVC caches) still loads, as Wan."""
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny", vae_arch="wan")).eval()
    save_vae(vae, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["vae"]["vae_arch"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_vae(tmp_path).eval()
    video = torch.rand(1, 3, 5, 32, 32)
    assert loaded.cfg.vae_arch == "wan"
    assert torch.allclose(loaded.encode_rgb(video), vae.encode_rgb(video))


def test_a_4_pixel_cell_vae_with_a_refine_head_keeps_the_contract(tmp_path: Path) -> None:
    """`vae_cell: 4` gives a 2x finer latent grid; the refine head starts as the identity, keeps decoding causal
    (one frame at a time) and round-trips through save/load."""
    torch.manual_seed(0)
    cfg = model_preset("tiny", vae_cell=4, vae_refine=8, patch=(1, 4, 4))
    vae = LayerVAE(cfg).eval()
    video = torch.rand(1, 3, 9, 32, 32)
    folded = vae.vae._fold(video)
    assert folded.shape == (3, 3 * 4 * 16, 8, 8) and torch.equal(vae.vae._unfold(folded, 1), video)
    z = vae.encode_rgb(video)
    assert z.shape == (1, 16, 3, 8, 8)
    with torch.no_grad():
        raw = vae.vae.decode_unclamped(z)
        assert torch.equal(raw, vae.vae._unfold(vae.vae.decoder(z.transpose(1, 2).flatten(0, 1)), 1))
        vae.vae.refine.net[2].weight.normal_()  # a trained head: frames still decode independently
        changed = z.clone()
        changed[:, :, 2] = torch.randn_like(z[:, :, 2])
        a, b = vae.decode_rgb(z), vae.decode_rgb(changed)
    assert torch.equal(a[:, :, :5], b[:, :, :5]) and not torch.equal(a[:, :, 5:], b[:, :, 5:])
    save_vae(vae, tmp_path)
    loaded = load_vae(tmp_path).eval()
    assert loaded.cfg.vae_cell == 4 and torch.equal(loaded.decode_rgb(z), a)
    with pytest.raises(ValueError, match="vae_cell of the wan VAE must be 8"):
        model_preset("tiny", vae_arch="wan", vae_cell=4)
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode_rgb(torch.rand(1, 3, 5, 30, 32))


def _sprites(count: int, seed: int = 0) -> torch.Tensor:
    """Mattes `[N, 1, 5, 32, 32]` of discs and squares of random size moving from random places."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mattes = torch.zeros(count, 1, 5, 32, 32)
    for i in range(count):
        low, span = torch.tensor([6.0, 6, 3, -2, -2]), torch.tensor([20.0, 20, 5, 4, 4])
        cy, cx, r, vy, vx = low + span * torch.rand(5, generator=g)
        for f in range(5):
            dy, dx = ys - cy - vy * f, xs - cx - vx * f
            inside = dy.square() + dx.square() <= r * r if i % 2 else torch.maximum(dy.abs(), dx.abs()) <= r
            mattes[i, 0, f] = inside.float()
    return mattes


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a > 0.5) & (b > 0.5)).sum() / ((a > 0.5) | (b > 0.5)).sum())


@torch.no_grad()
def test_linear_alpha_codec_round_trips_mattes_and_decodes_an_average_to_the_average() -> None:
    """Fitted on sprites, the codec keeps unseen sprites' outlines with unit-variance latents on the VAE's grid, and
    decoding is linear: the mean of two latents decodes to the mean of their mattes (what a DiT's average needs)."""
    vae = LayerVAE(model_preset("tiny", alpha_codec="linear")).eval()
    kept = vae.alpha_codec.fit(_sprites(256))
    unseen = _sprites(32, seed=1)
    z = vae.encode_alpha(unseen)
    assert z.shape == vae.encode_rgb(unseen.expand(-1, 3, -1, -1, -1)).shape == (32, 16, 2, 4, 4)
    assert 0.8 < kept < 1 and 0.7 < float(z.std()) < 1.3
    assert _iou(vae.decode_alpha(z), unseen) > 0.8
    two = vae.decode_alpha(z[:2], clamp=False)
    assert torch.allclose(vae.decode_alpha(z[:2].mean(0, keepdim=True), clamp=False), two.mean(0), atol=1e-5)


def test_stage1_with_the_linear_codec_trains_its_decoding_matrix_alone_and_round_trips_through_a_folder(
    tmp_path: Path,
) -> None:
    """The latents the DiT learns are the fitted projection's: stage 1 must not move it, nor add a decoder LoRA."""
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny", alpha_codec="linear"))
    vae.alpha_codec.fit(_sprites(64))
    encoder = vae.alpha_codec.encoder.clone()
    stage = AlphaStageConfig(max_steps=2, batch_size=1, lr=1e-3, warmup_steps=0, decoder_lora_rank=8)
    module = AlphaAdaptation(vae, stage)
    module.log_dict = lambda *_, **__: None
    module.training_step({"alphas": _sprites(2)[:, None]}, 0).backward()
    trainable = {name for name, p in module.vae.named_parameters() if p.requires_grad}
    assert trainable == {"alpha_codec.decoder"} and vae.alpha_codec.decoder.grad.abs().sum() > 0
    assert vae.lora_rank == 0 and torch.equal(vae.alpha_codec.encoder, encoder)
    save_vae(vae, tmp_path)
    loaded, mattes = load_vae(tmp_path), _sprites(2, seed=2)
    assert loaded.cfg.alpha_codec == "linear"
    assert torch.equal(loaded.decode_alpha(loaded.encode_alpha(mattes)), vae.decode_alpha(vae.encode_alpha(mattes)))
    with pytest.raises(ValueError, match=r"model\.alpha_codec must be 'vae' or 'linear'"):
        model_preset("tiny", alpha_codec="pca")


@torch.no_grad()
def test_composite_is_the_encoded_over_of_the_decoded_layers() -> None:
    """Transparent foregrounds leave the background's own round trip; an opaque nearest foreground hides every
    layer behind it; in between, the latent is the encoding of the decoded layers' `over` (batched decodes)."""
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny", alpha_codec="linear")).eval()
    codec = vae.alpha_codec
    codec.decoder.zero_()
    fg1, fg2, bg, a1, a2 = (torch.randn(2, 16, 2, 4, 4) for _ in range(5))
    round_trip = lambda z: vae.encode_rgb(vae.decode_rgb(z))  # noqa: E731
    assert torch.allclose(vae.composite([fg1, fg2], [a1, a2], bg), round_trip(bg), atol=1e-5)  # mattes decode to 0
    codec.mean.fill_(1.0)
    assert torch.allclose(vae.composite([fg1, fg2], [a1, a2], bg), round_trip(fg1), atol=1e-5)  # to 1
    codec.mean.fill_(0.5)
    c1, c2, back = (vae.decode_rgb(z) for z in (fg1, fg2, bg))
    by_hand = c1.clamp(max=0.5) + 0.5 * (c2.clamp(max=0.5) + 0.5 * back)
    assert torch.allclose(vae.composite([fg1, fg2], [a1, a2], bg), vae.encode_rgb(by_hand), atol=1e-5)


def test_the_refine_head_convolves_channels_last_frames_to_the_plain_layouts_values() -> None:
    """The head's frames go in channels-last (oneDNN's thin convolutions are faster so: `benchmarks/bench_vae.py`);
    the layout must not change the result, forward or backward, against the same convolutions on plain frames."""
    torch.manual_seed(0)
    head = LayerVAE(model_preset("tiny", vae_refine=8)).vae.refine
    torch.nn.init.normal_(head.net[2].weight, std=0.1)  # a trained head: zero at init would hide the convolutions
    layouts = []
    head.net[0].register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    video = torch.rand(2, 3, 5, 16, 16, requires_grad=True)
    out = head(video)
    (grad,) = torch.autograd.grad(out.square().sum(), video)
    plain = video.detach().transpose(1, 2).flatten(0, 1).contiguous().requires_grad_()
    reference = video.detach() + head.net(plain).unflatten(0, (2, -1)).transpose(1, 2)
    (plain_grad,) = torch.autograd.grad(reference.square().sum(), plain)
    assert layouts[0] and not plain.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    expected = plain_grad.unflatten(0, (2, -1)).transpose(1, 2)  # through the head only; the residual adds 2 * out
    torch.testing.assert_close(grad - 2 * out.detach(), expected, rtol=1e-5, atol=1e-5)


def test_for_inference_lays_the_latent_convolutions_out_channels_last_and_codes_the_same(tmp_path: Path) -> None:
    """Decoding runs the encoder, decoder and context convolutions on channels-last weights (`benchmarks/bench_vae.py`),
    training on plain ones; the codes match, and the file holds plain tensors that load as they were."""
    torch.manual_seed(0)
    vae = LayerVAE(model_preset("tiny", vae_context=16, vae_refine=8)).eval()
    refine = set(vae.vae.refine.modules())
    latent = [m for m in vae.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    latent = [m for m in latent if m not in refine]
    video = torch.rand(1, 3, 5, 32, 32)
    with torch.no_grad():
        z = vae.encode_rgb(video)
        decoded = vae.decode_rgb(z)
        assert latent and not any(m.weight.is_contiguous(memory_format=torch.channels_last) for m in latent)
        assert vae.for_inference() is vae and not vae.training
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in latent)
        torch.testing.assert_close(vae.encode_rgb(video), z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vae.decode_rgb(z), decoded, rtol=1e-5, atol=1e-5)
        save_vae(vae, tmp_path)
        torch.testing.assert_close(load_vae(tmp_path).eval().decode_rgb(z), decoded, rtol=1e-5, atol=1e-5)


def test_the_patch_posterior_is_diffusers_gaussian() -> None:
    """The patch VAE's posterior gives diffusers' `DiagonalGaussianDistribution`'s numbers (the same noise draws)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from layert2v.models.vae import Posterior

    parameters = torch.randn(2, 32, 3, 4, 4) * 20  # log-variances beyond both clamps
    ours, theirs = Posterior(parameters), DiagonalGaussianDistribution(parameters)
    draw = lambda dist: dist.sample(torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.equal(draw(ours), draw(theirs)) and torch.equal(ours.kl(), theirs.kl())
    assert torch.equal(ours.mode(), theirs.mode())
