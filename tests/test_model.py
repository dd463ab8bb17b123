"""LayerDiT, layout and flow matching: the properties the method relies on (tiny preset, seconds)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from layert2v.config import model_preset
from layert2v.diffusion import LossWeights, latent_composite, layered_loss, logit_normal_t, noisy, segment_timesteps
from layert2v.models import dit
from layert2v.models.dit import LayerDiT, additive_bias, attention, attention_mask, matmul_attention
from layert2v.models.layout import Layout, latent_shape
from layert2v.sampling import composite_guided, euler_sample, guided, sample, shifted_sigmas
from layert2v.training.objective import draw_known

CFG = model_preset("tiny")


def inputs(k: int, batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    layout = Layout(k)
    latents = torch.randn(batch, CFG.latent_channels, 2 * layout.num_segments, 4, 4, generator=g)
    text = torch.randn(batch, layout.num_prompts * CFG.text_len, CFG.text_dim, generator=g)
    text_mask = torch.zeros(batch, layout.num_prompts, CFG.text_len, dtype=torch.bool)
    text_mask[..., :5] = True
    return {
        "latents": latents,
        "timestep": torch.tensor([500.0, 250.0][:batch]),
        "text": text,
        "text_mask": text_mask,
        "layout": layout,
    }


@pytest.mark.parametrize("k", [1, 2, 3])
def test_layout_visibility_and_pack_round_trip(k: int) -> None:
    layout = Layout(k)
    vis = layout.visibility()
    assert vis[0].all()  # full reads every prompt
    assert vis[1].tolist() == [True, True] + [False] * k  # bg: full + bg
    for j in range(k):
        expected = [True, False] + [i == j for i in range(k)]
        assert vis[2 + 2 * j].tolist() == expected and vis[3 + 2 * j].tolist() == expected
    segments = [torch.randn(2, 16, 3, 4, 4) for _ in range(layout.num_segments)]
    packed = layout.pack(segments)
    assert packed.shape == (2, 16, 3 * layout.num_segments, 4, 4) == layout.latents_shape(2, 16, 9, 32, 32, 8)
    assert all(torch.equal(a, b) for a, b in zip(layout.split(packed), segments, strict=True))
    assert Layout.from_segments(len(segments)) == layout
    full, bg, fgs, alphas = layout.group(list(range(layout.num_segments)))
    assert (full, bg, fgs, alphas) == (0, 1, list(range(2, 2 + 2 * k, 2)), list(range(3, 3 + 2 * k, 2)))
    assert layout.order(full, bg, fgs, alphas) == list(range(layout.num_segments))


def test_latent_geometry_is_the_vae_contract() -> None:
    assert latent_shape(9, 64, 64, 8) == (3, 8, 8) and latent_shape(1, 8, 16, 8) == (1, 1, 2)
    assert latent_shape(9, 64, 64, 4) == (3, 16, 16)
    with pytest.raises(ValueError, match="4k\\+1 frames and 8x8 pixel cells"):
        latent_shape(6, 64, 64, 8)
    with pytest.raises(ValueError, match="4x4 pixel cells"):
        latent_shape(9, 66, 64, 4)
    with pytest.raises(ValueError, match="no layered sample"):
        Layout.from_segments(5)


def test_zero_init_layer_tables_give_the_base_model() -> None:
    torch.manual_seed(0)
    model = LayerDiT(CFG).eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)  # a non-zero output, so the comparison means something
    x = inputs(2)
    layered = model.forward_layout(**x)
    tokens = layered.shape[2] * 4 * 4 // 4 // x["layout"].num_segments
    mask = x["layout"].cross_attention_mask(tokens, x["text_mask"])
    base = model(x["latents"], x["timestep"], x["text"], mask)  # no layer ids: the plain Wan path
    assert torch.equal(layered, base) and layered.abs().mean() > 0
    with torch.no_grad():
        model.layer_adaln.normal_(std=0.1)
    assert not torch.allclose(model.forward_layout(**x), base)
    with torch.no_grad():
        model.layer_adaln.zero_()
        model.instance_adaln.normal_(std=0.1)
    assert not torch.allclose(model.forward_layout(**x), base)


def test_cross_attention_reads_only_visible_prompts() -> None:
    torch.manual_seed(0)
    model = LayerDiT(CFG).eval()
    layout, tokens, m = Layout(2), 8, CFG.text_len
    x = torch.randn(1, layout.num_segments * tokens, CFG.dim)
    text_mask = torch.ones(1, layout.num_prompts, m, dtype=torch.bool)
    context = torch.randn(1, layout.num_prompts * m, CFG.dim)
    mask = layout.cross_attention_mask(tokens, text_mask)
    attn = model.blocks[0].cross_attn
    before = attn(x, context=context, mask=mask)
    rows = lambda seg: slice(seg * tokens, (seg + 1) * tokens)  # noqa: E731

    new_bg = context.clone()
    new_bg[:, m : 2 * m] = torch.randn(1, m, CFG.dim)  # prompt 1 = background
    after = attn(x, context=new_bg, mask=mask)
    for seg in range(2, layout.num_segments):  # fg and alpha tokens do not read the bg prompt
        assert torch.equal(after[:, rows(seg)], before[:, rows(seg)])
    assert not torch.allclose(after[:, rows(1)], before[:, rows(1)])  # the background does
    assert not torch.allclose(after[:, rows(0)], before[:, rows(0)])  # and so does the full video

    new_fg1 = context.clone()
    new_fg1[:, 2 * m : 3 * m] = torch.randn(1, m, CFG.dim)  # prompt 2 = fg_1
    after = attn(x, context=new_fg1, mask=mask)
    for seg in (1, 4, 5):  # bg, fg_2, alpha_2 do not read fg_1's prompt
        assert torch.equal(after[:, rows(seg)], before[:, rows(seg)])
    assert not torch.allclose(after[:, rows(2)], before[:, rows(2)])


def test_loss_terms_vanish_for_a_perfect_prediction_and_train() -> None:
    layout = Layout(1)
    g = torch.Generator().manual_seed(0)
    seg = lambda: torch.randn(2, 16, 2, 4, 4, generator=g)  # noqa: E731
    fg, bg, alpha_lat = seg(), seg(), torch.rand(2, 1, 2, 4, 4, generator=g)
    full = fg + (1 - alpha_lat) * bg
    x0 = layout.pack([full, bg, fg, seg()])
    noise, t = torch.randn(x0.shape, generator=g), torch.tensor([0.3, 0.8])
    perfect = layered_loss(noise - x0, x0, noise, t, layout, LossWeights(), alpha_grid=[alpha_lat])
    assert perfect["fm"] < 1e-10 and perfect["consistency"] < 1e-10
    assert set(perfect) >= {"fm_full", "fm_background", "fm_fg_1", "fm_alpha_1", "loss"}

    torch.manual_seed(0)
    model = LayerDiT(CFG)
    x = inputs(1, seed=1)
    x0 = x["latents"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        t = torch.tensor([0.5, 0.5])
        v = model.forward_layout(
            noisy(x0, noise[:, :, : x0.shape[2]], t), t * 1000, x["text"], x["text_mask"], x["layout"]
        )
        loss = layered_loss(v, x0, noise[:, :, : x0.shape[2]], t, x["layout"], LossWeights())["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_per_segment_timesteps_are_the_shared_one_when_equal_and_move_only_by_segment() -> None:
    torch.manual_seed(0)
    model = LayerDiT(CFG).eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    x = inputs(2)
    layout = x["layout"]
    shared = model.forward_layout(**x)
    per_segment = x | {"timestep": x["timestep"][:, None].repeat(1, layout.num_segments)}
    assert torch.allclose(model.forward_layout(**per_segment), shared, atol=1e-5)
    known = torch.zeros(2, layout.num_segments, dtype=torch.bool)
    known[0, 1] = True
    clean = model.forward_layout(**(x | {"timestep": segment_timesteps(x["timestep"], known)}))
    assert torch.allclose(clean[1], shared[1], atol=1e-5)  # the other sample kept its t everywhere
    assert not torch.allclose(clean[0], shared[0], atol=1e-3)  # t = 0 on one segment is seen by every token


def test_attention_is_sdpa_in_fp32_and_the_matmul_form_under_cpu_bf16_autocast() -> None:
    """The DiT's attention spells softmax(q k^T) v out under CPU bf16 autocast (faster there than SDPA's flash
    kernel: benchmarks/bench_attention.py): the spelled-out form is SDPA's, masked keys included, and fp32 stays
    SDPA exactly (the exported graphs and the golden losses)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for n in (12, 10, 10))
    mask = torch.rand(2, 1, 12, 10, generator=g) < 0.5
    mask[..., 0], mask[..., 3] = True, False
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(attention(q, k, v, mask), sdpa)
    assert torch.allclose(matmul_attention(q, k, v, additive_bias(mask, q.dtype)), sdpa, atol=1e-6)
    hidden = v.clone()
    hidden[:, :, 3] += 100  # a key no query sees
    assert torch.allclose(matmul_attention(q, k, hidden, additive_bias(mask, q.dtype)), sdpa, atol=1e-6)
    assert torch.equal(attention_mask(mask, q), mask)
    with torch.autocast("cpu", torch.bfloat16):
        bias = attention_mask(mask, q)
        fast = attention(q, k, v, bias)
        assert torch.equal(fast, matmul_attention(q, k, v, additive_bias(mask, torch.bfloat16)))
    assert bias.dtype == torch.bfloat16 and torch.equal(bias == 0, mask)
    assert fast.dtype == torch.bfloat16 and (fast.float() - sdpa).abs().max() < 0.05
    wide = [t.repeat(1, 1, 1, 4).bfloat16() for t in (q, k, v)]  # d = 64: the scale on q is exact, as on the scores
    scaled_scores = ((wide[0] @ wide[1].transpose(-1, -2)) * 64**-0.5).softmax(-1) @ wide[2]
    assert torch.equal(matmul_attention(*wide, None), scaled_scores)


def test_the_prompts_padding_is_dropped_from_the_cross_attention_without_changing_the_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The text positions no token may see (every prompt is padded to text_len) are cut from the keys, by
    `forward_layout` (`visible_positions`, passed in) or inside `forward` (`visible_text`, when none are passed),
    which leaves the output as it was, in fp32 and on the bf16 matmul path."""
    torch.manual_seed(0)
    model = LayerDiT(CFG).eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    x = inputs(2)  # 5 real tokens of each prompt's text_len
    keys = []
    model.blocks[0].cross_attn.k.register_forward_hook(lambda _m, _i, out: keys.append(out.shape[1]))
    with torch.no_grad():
        cut = model.forward_layout(**x)
        with torch.autocast("cpu", torch.bfloat16):
            cut_bf16 = model.forward_layout(**x)
        mask, layer_ids, instance_ids = dit.layout_inputs(CFG, x["latents"].shape, x["text_mask"], x["layout"])
        inside = model(x["latents"], x["timestep"], x["text"], mask, layer_ids, instance_ids)
        monkeypatch.setattr(dit, "visible_positions", lambda mask: torch.arange(mask.shape[-1]))
        whole = model.forward_layout(**x)
        with torch.autocast("cpu", torch.bfloat16):
            whole_bf16 = model.forward_layout(**x)
    assert keys == [x["layout"].num_prompts * 5] * 3 + [x["layout"].num_prompts * CFG.text_len] * 2
    assert torch.allclose(cut, whole, atol=1e-6) and torch.allclose(inside, cut, atol=1e-6)
    assert torch.allclose(cut_bf16.float(), whole_bf16.float(), atol=2e-2)


def test_pooled_modulation_starts_as_the_model_without_it_and_learns() -> None:
    torch.manual_seed(0)
    plain = LayerDiT(CFG).eval()
    torch.nn.init.normal_(plain.head.head.weight, std=0.02)
    pooled = LayerDiT(dataclasses.replace(CFG, pooled_modulation=True)).eval()
    missing = pooled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("pooled_embedding.") for k in missing)
    x = inputs(2)
    assert torch.allclose(pooled.forward_layout(**x), plain.forward_layout(**x), atol=1e-6)
    loss = pooled.forward_layout(**x).pow(2).mean()
    loss.backward()
    assert pooled.pooled_embedding[-1].weight.grad.abs().max() > 0  # zero-initialised output, live gradient
    with torch.no_grad():
        pooled.pooled_embedding[-1].weight.normal_(std=0.1)
    moved = pooled.forward_layout(**x)
    assert not torch.allclose(moved, plain.forward_layout(**x))
    other = x["text"].clone()
    other[:, CFG.text_len] += 1.0  # the background prompt's first token: its summary, one segment's modulation
    assert not torch.allclose(pooled.forward_layout(**(x | {"text": other})), moved)


def test_a_clean_known_segment_carries_no_loss_and_no_gradient() -> None:
    layout = Layout(2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, 2 * layout.num_segments, 4, 4, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    known = torch.zeros(2, layout.num_segments, dtype=torch.bool)
    known[0, layout.editing_tasks()["background_for_foregrounds"]] = True
    t = segment_timesteps(torch.tensor([0.4, 0.7]), known)
    assert torch.equal(layout.split(noisy(x0, noise, t))[2][0], layout.split(x0)[2][0])  # clean: t = 0
    velocity = (noise - x0 + 0.1 * torch.randn(x0.shape, generator=g)).requires_grad_()
    loss = layered_loss(velocity, x0, noise, t, layout, LossWeights(), known=known)
    loss["loss"].backward()
    grad = layout.split(velocity.grad)
    assert all(grad[i][0].abs().max() == 0 for i in (2, 3, 4, 5)) and grad[2][1].abs().max() > 0
    off = known[:, :, None, None, None, None].float().movedim(1, 2)  # [B, 1, L, 1, 1, 1]: 1 on known segments
    wrong = (velocity.detach().unflatten(2, (layout.num_segments, -1)) + 5.0 * off).flatten(2, 3)
    again = layered_loss(wrong, x0, noise, t, layout, LossWeights(), known=known)
    assert again["fm"].item() == pytest.approx(loss["fm"].item())
    unmasked = layered_loss(velocity.detach(), x0, noise, t, layout, LossWeights())
    assert loss["fm"].item() != pytest.approx(unmasked["fm"].item())


def test_condition_dropout_gives_one_editing_task_to_that_share_of_samples() -> None:
    layout = Layout(3)
    known = draw_known(layout, 4000, 0.3, torch.Generator().manual_seed(0))
    given = known.any(1)
    assert given.float().mean() == pytest.approx(0.3, abs=0.03)
    tasks = {tuple(segments) for segments in layout.editing_tasks().values()}
    assert tasks == {(1,), (2, 3, 4, 5, 6, 7), (1, 2, 3, 4, 5), (0,)}
    assert {tuple(row.nonzero().flatten().tolist()) for row in known[given]} == tasks
    assert not draw_known(layout, 100, 0.0).any()


def test_latent_consistency_composites_about_the_clear_latent() -> None:
    """Two foregrounds whose latents are `clear` where transparent: the term is zero about `clear`, and would
    not be about 0 (the bug that left true K = 3 latents 6.1 off their own full latent)."""
    layout = Layout(2)
    g = torch.Generator().manual_seed(0)
    seg = lambda: torch.randn(1, 16, 2, 4, 4, generator=g)  # noqa: E731
    clear, bg, fg1, fg2 = seg(), seg(), seg(), seg()
    a1, a2 = (torch.rand(1, 1, 2, 4, 4, generator=g) for _ in range(2))
    full = clear + (fg1 - clear) + (1 - a1) * ((fg2 - clear) + (1 - a2) * (bg - clear))
    x0 = layout.pack([full, bg, fg1, seg(), fg2, seg()])
    noise, t = torch.randn(x0.shape, generator=g), torch.tensor([0.5])
    exact = dict(alpha_grid=[a1, a2], clear_latent=clear)
    assert layered_loss(noise - x0, x0, noise, t, layout, LossWeights(), **exact)["consistency"] < 1e-10
    about_zero = layered_loss(noise - x0, x0, noise, t, layout, LossWeights(), alpha_grid=[a1, a2])
    assert about_zero["consistency"] > 0.1


def test_foreground_weight_moves_the_flow_loss_onto_the_cells_a_foreground_touches() -> None:
    """One touched cell of 16 per latent frame: an error there counts (1 + w) / (16 + w) instead of 1 / 16, an error
    elsewhere 15 / (16 + w) instead of 15 / 16, and a uniform error keeps its size (the weights have mean 1)."""
    layout = Layout(2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 16, 2 * layout.num_segments, 4, 4, generator=g)
    noise, t = torch.randn(x0.shape, generator=g), torch.tensor([0.5])
    a1, a2 = torch.zeros(1, 1, 2, 4, 4), torch.zeros(1, 1, 2, 4, 4)
    a1[0, 0, 0, 0, 0], a2[0, 0, 1, 3, 3] = 0.3, 1.0
    touched = (torch.stack([a1, a2]).amax(0) > 0).repeat(1, 16, layout.num_segments, 1, 1).float()

    def fm(error: torch.Tensor, weight: float) -> float:
        weights = LossWeights(consistency=0.0, foreground=weight)
        return layered_loss(noise - x0 + error, x0, noise, t, layout, weights, alpha_grid=[a1, a2])["fm"].item()

    for error, uniform, weighted in ((touched, 1 / 16, 5 / 20), (1 - touched, 15 / 16, 15 / 20), (1.0, 1.0, 1.0)):
        assert fm(torch.ones_like(x0) * error, 0.0) == pytest.approx(uniform)
        assert fm(torch.ones_like(x0) * error, 4.0) == pytest.approx(weighted)


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_samplers_recover_x0_from_the_exact_velocity_field(sampler: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    exact = lambda x, t: (x - x0) / t.reshape(-1, 1, 1, 1, 1).clamp_min(1e-8)  # noqa: E731
    out = sample(exact, noise, steps=10, shift=3.0, sampler=sampler)
    assert torch.allclose(out, x0, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 3, 20])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_unipc_gives_diffusers_schedulers_numbers(steps: int, shift: float) -> None:
    """The in-package UniPC is diffusers' `UniPCMultistepScheduler` in flow mode, bit for bit, on a nonlinear field
    (first-order ends, the order-2 predictor and corrector between)."""
    from diffusers import UniPCMultistepScheduler

    g = torch.Generator().manual_seed(0)
    mix, noise = torch.randn(4, 4, generator=g) * 0.5, torch.randn(2, 4, 3, 4, 4, generator=g)
    field = lambda x, t: torch.tanh(torch.einsum("ij,bj...->bi...", mix, x)) * (1 + t.view(-1, 1, 1, 1, 1)) - x / 3  # noqa: E731
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )
    scheduler.set_timesteps(steps)
    x = noise
    for timestep, sigma in zip(scheduler.timesteps, scheduler.sigmas, strict=False):
        x = scheduler.step(field(x, torch.full((2,), float(sigma))), timestep, x).prev_sample
    assert torch.equal(sample(field, noise, steps, shift, "unipc"), x)


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_composite_guidance_moves_only_the_full_segment_towards_the_layers_composite(
    sampler: str, weight: float
) -> None:
    """A velocity field that predicts fixed, inconsistent layers: the sample keeps every layer and ends with the
    full segment `weight` of the way from its own prediction to the layers' composite (here a latent one)."""
    layout = Layout(2)
    g = torch.Generator().manual_seed(0)
    seg = lambda: torch.randn(1, 4, 2, 4, 4, generator=g)  # noqa: E731
    targets = [seg() for _ in range(layout.num_segments)]
    x0, noise, clear = layout.pack(targets), torch.randn(1, 4, 2 * layout.num_segments, 4, 4, generator=g), seg()
    to_grid = lambda z: z[:, :1].sigmoid()  # noqa: E731
    exact = lambda x, t: (x - x0) / t.reshape(-1, 1, 1, 1, 1).clamp_min(1e-8)  # noqa: E731
    to_composite = lambda fgs, alphas, bg: latent_composite(fgs, [to_grid(a) for a in alphas], bg, clear)  # noqa: E731
    out = layout.split(sample(composite_guided(exact, layout, weight, to_composite), noise, 12, 3.0, sampler))
    composite = latent_composite(targets[2::2], [to_grid(a) for a in targets[3::2]], targets[1], clear)
    assert torch.allclose(out[0], (1 - weight) * targets[0] + weight * composite, atol=1e-4)
    for got, want in zip(out[1:], targets[1:], strict=True):
        assert torch.allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match=r"composite guidance must be in \[0, 1\], got 1.5"):
        composite_guided(exact, layout, 1.5, to_composite)


def test_composite_guidance_below_a_noise_level_composites_only_there_and_still_lands() -> None:
    """`max_sigma` 0.5: the composite is made on the Euler steps at noise 0.5 or below only, and the sample still
    ends with the full segment on the pulled x0 (the last steps are pulled); the layers are untouched."""
    layout, g = Layout(1), torch.Generator().manual_seed(1)
    targets = [torch.randn(1, 4, 2, 4, 4, generator=g) for _ in range(layout.num_segments)]
    x0, noise = layout.pack(targets), torch.randn(1, 4, 2 * layout.num_segments, 4, 4, generator=g)
    exact = lambda x, t: (x - x0) / t.reshape(-1, 1, 1, 1, 1).clamp_min(1e-8)  # noqa: E731
    seen = []
    mean = lambda fgs, alphas, bg: seen.append(1) or (fgs[0] + bg) / 2  # noqa: E731
    out = layout.split(sample(composite_guided(exact, layout, 0.5, mean, max_sigma=0.5), noise, 12, 3.0, "euler"))
    assert len(seen) == int((shifted_sigmas(12, 3.0)[:-1] <= 0.5 + 1e-4).sum()) == 3
    assert torch.allclose(out[0], 0.5 * targets[0] + 0.25 * (targets[2] + targets[1]), atol=1e-4)
    assert all(torch.allclose(got, want, atol=1e-4) for got, want in zip(out[1:], targets[1:], strict=True))
    with pytest.raises(ValueError, match=r"noise level must be in \(0, 1\], got 0.0"):
        composite_guided(exact, layout, 0.5, mean, max_sigma=0.0)


def test_training_timesteps_take_the_samplers_shift() -> None:
    """A shift moves the training timesteps where a shifted sampler steps: each draw maps monotonically, the median
    of the logit-normal (0.5) goes to the sampler's point for 0.5 (0.75 at shift 3), and the share above 0.9
    grows from ~1.4% to ~14%."""
    draw = lambda shift: logit_normal_t(20000, torch.Generator().manual_seed(0), shift=shift)  # noqa: E731
    plain, shifted = draw(1.0), draw(3.0)
    assert (shifted >= plain).all() and (shifted < 1).all() and (shifted > 0).all()
    assert torch.allclose(shifted, 3 * plain / (1 + 2 * plain))
    assert abs(float(shifted.median()) - 0.75) < 0.01 and abs(float(shifted_sigmas(2, 3.0)[1]) - 0.75) < 1e-6
    assert float((plain > 0.9).float().mean()) < 0.02 < 0.12 < float((shifted > 0.9).float().mean())


def test_sampling_is_deterministic_and_guidance_mixes_branches() -> None:
    sigmas = shifted_sigmas(10, 3.0)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas[:-1] > sigmas[1:]).all()
    calls = []

    def branches(x: torch.Tensor, t: torch.Tensor, doubled: bool) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.cat([torch.ones_like(x[:1]), torch.zeros_like(x[:1])]) if doubled else torch.ones_like(x)

    v = guided(branches, guidance=5.0)(torch.zeros(1, 2), torch.ones(1))
    assert calls == [2] and torch.allclose(v, torch.full((1, 2), 5.0))  # 0 + 5 * (1 - 0)
    interval = guided(branches, guidance=5.0, min_sigma=0.5)
    calls.clear()
    steps = [interval(torch.zeros(1, 2), torch.full((1, 3), s)) for s in (0.9, 0.5000001, 0.2)]  # [B, L] timesteps
    assert calls == [2, 1, 1] and [float(v[0, 0]) for v in steps] == [5.0, 1.0, 1.0]  # conditional alone at 0.5
    with pytest.raises(ValueError, match=r"lowest noise level must be in \[0, 1\), got 1.0"):
        guided(branches, guidance=5.0, min_sigma=1.0)
    with pytest.raises(ValueError, match="every n >= 1 guided steps, got 0"):
        guided(branches, guidance=5.0, every=0)


def test_guidance_every_n_reuses_the_last_difference_between() -> None:
    """Both branches on guided steps 0, 2, 4, ...; between, the conditional branch alone plus (g - 1) times the
    difference of the last step that ran both; below the interval the conditional branch alone, uncounted."""
    calls, step = [], iter(range(100))

    def branches(x: torch.Tensor, t: torch.Tensor, doubled: bool) -> torch.Tensor:
        n = next(step)  # each call's outputs differ, so a reused difference is told from a fresh one
        calls.append(x.shape[0])
        cond = torch.full_like(x[:1], 10.0 * n)
        return torch.cat([cond, cond - (n + 1)]) if doubled else cond

    velocity = guided(branches, guidance=3.0, min_sigma=0.5, every=2)
    out = [float(velocity(torch.zeros(1, 1), torch.full((1,), s))[0, 0]) for s in (0.9, 0.8, 0.7, 0.6, 0.2)]
    assert calls == [2, 1, 2, 1, 1]
    # step 0: 0 + 2 * (0 - -1) = 2; step 1: 10 + 2 * 1; step 2: 20 + 2 * 3; step 3: 30 + 2 * 3; step 4: 40 alone
    assert out == [2.0, 12.0, 26.0, 36.0, 40.0]

    model = LayerDiT(CFG).eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    x = inputs(1, batch=1)

    def run(seed: int) -> torch.Tensor:
        noise = torch.randn(x["latents"].shape, generator=torch.Generator().manual_seed(seed))
        fn = lambda z, t: model.forward_layout(z, t * 1000, x["text"], x["text_mask"], x["layout"])  # noqa: E731
        return euler_sample(fn, noise, steps=3)

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))


def test_decoded_alpha_term_uses_the_decoder() -> None:
    layout = Layout(2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 16, 2 * layout.num_segments, 4, 4, generator=g)
    noise, t = torch.randn(x0.shape, generator=g), torch.tensor([0.5])
    decode = lambda z: torch.sigmoid(z.mean(1, keepdim=True))  # noqa: E731  (stands in for LayerVAE.decode_alpha)
    truth = [torch.zeros(1, 1, 2, 4, 4), torch.ones(1, 1, 2, 4, 4)]
    losses = layered_loss(noise - x0, x0, noise, t, layout, LossWeights(), decode_alpha=decode, alpha_pixels=truth)
    expected = torch.stack(
        [torch.nn.functional.smooth_l1_loss(decode(z), a) for z, a in zip(layout.split(x0)[3::2], truth, strict=True)]
    ).mean()
    assert torch.allclose(losses["alpha"], expected) and torch.allclose(losses["loss"], losses["fm"] + 0.1 * expected)


def test_the_fused_elementwise_forms_equal_the_plain_products_and_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """RoPE as a complex product (eager fp32) rotates as the real form that graphs and bf16 take; the modulation and
    the gated residual as fused multiply-adds give `x * (1 + scale) + shift` and `x + y * gate` per run of tokens."""
    torch.manual_seed(0)
    q = torch.randn(2, 3 * 16, 4, 24).transpose(1, 2)  # [B, h, N, d], a strided view as the DiT's heads
    cos, sin = dit.rope_cos_sin((3, 4, 4), 24)
    rotated = dit.apply_rope(q, cos, sin)
    monkeypatch.setattr(dit, "traced", lambda: True)
    assert torch.allclose(rotated, dit.apply_rope(q, cos, sin), atol=1e-6)
    norms = q.unflatten(-1, (-1, 2)).norm(dim=-1)
    assert torch.allclose(rotated.unflatten(-1, (-1, 2)).norm(dim=-1), norms, atol=1e-5)  # a rotation
    x, y, shift, scale, gate = torch.randn(2, 48, 8), torch.randn(2, 48, 8), *torch.randn(3, 2, 3, 8)
    per_token = lambda v: v.repeat_interleave(16, dim=1)  # noqa: E731
    assert torch.allclose(dit.modulate(x, shift, scale), x * (1 + per_token(scale)) + per_token(shift), atol=1e-6)
    assert torch.allclose(dit.gated_residual(x, y, gate), x + y * per_token(gate), atol=1e-6)
