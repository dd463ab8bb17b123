"""Samplers for layered latents, with classifier-free and compositing guidance.

Samplers integrate the rectified flow of `diffusion.py` from t = 1 (noise) to t = 0 with Wan's timestep shift
`s t / (1 + (s - 1) t)`: flow Euler and flow UniPC (both here). Classifier-free guidance runs
the conditional and unconditional branch in one batch of 2B, above a noise level. `composite_guided` applies the
training's compositing constraint to the predicted x0 of the steps below a noise level (see there).

Shapes: B batch, C channels, L segments, T latent frames per segment, H, W latent size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from layert2v.diffusion import bcast, predicted_x0, segment_timesteps, time_shift
from layert2v.models.layout import ALPHA, BACKGROUND, FOREGROUND, FULL, Layout

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B, ...], t [B] or [B, L] in [0, 1]) -> v
SIGMA_SLACK = 1e-4  # a sampler's float32 noise level at a threshold's step (0.5000001) still counts as at it


def shifted_sigmas(steps: int, shift: float) -> torch.Tensor:
    """`[steps + 1]` noise levels from 1 to 0 with Wan's shift (shift > 1 spends more steps at high noise)."""
    if steps < 1 or shift <= 0:
        raise ValueError(f"sampler needs steps >= 1 and shift > 0, got steps={steps}, shift={shift}")
    return time_shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def guided(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
    guidance: float,
    min_sigma: float = 0.0,
    every: int = 1,
) -> VelocityFn:
    """Classifier-free guidance: `v_u + g (v_c - v_u)`, both branches in one batch when g != 1, on the steps above
    noise level `min_sigma` (0: every step); below it the conditional branch alone, a batch of B. With `every` n > 1
    both branches run on every n-th guided step only; the guided steps between run the conditional branch alone and
    add the last difference they saw, `v_c + (g - 1) (v_c - v_u)_last` (FasterCache, Lv et al. 2024: the two
    branches' difference changes slowly from step to step), a batch of B instead of 2B.

    Why an interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval"): by the last steps the
    prompt has placed and coloured the layers, and the guided direction mostly sharpens where the layers and the
    full video disagree: unguided there, samples composite 1.2-1.6 dB closer (docs/results.md, classifier-free
    guidance on fewer steps).
    `velocity_fn(x, t, doubled)` gets `x` twice along the batch (conditional first) when `doubled`.
    """
    if not 0.0 <= min_sigma < 1.0:
        raise ValueError(f"guidance's lowest noise level must be in [0, 1), got {min_sigma}")
    if every < 1:
        raise ValueError(f"guidance's unconditional branch runs every n >= 1 guided steps, got {every}")
    guided_steps, last = itertools.count(), {}

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0 or float(t.max()) <= min_sigma + SIGMA_SLACK:
            return velocity_fn(x, t, False)
        if next(guided_steps) % every:
            return velocity_fn(x, t, False) + (guidance - 1.0) * last["difference"]
        cond, uncond = velocity_fn(torch.cat([x, x]), torch.cat([t, t]), True).chunk(2)
        last["difference"] = cond - uncond
        return uncond + guidance * (cond - uncond)

    return velocity


CompositeFn = Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], torch.Tensor]
# (foreground latents, their alpha latents, background latent) -> the latent of the full video they composite to


def composite_guided(
    velocity: VelocityFn, layout: Layout, weight: float, composite: CompositeFn, max_sigma: float = 1.0
) -> VelocityFn:
    """Compositing guidance: each step's predicted x0 of the full segment moves `weight` of the way to the
    composite of the predicted layers, and its velocity is re-derived from that x0 and the current `x_t`
    (`v = (x_t - x0) / t`, so `v += weight (x0_full - composite) / t` on the full segment only): the last step
    then lands on the moved x0. Only steps whose full segment is at noise level `max_sigma` or below are pulled
    (1: every step): the composite costs K + 1 decodes and an encode, and the steps at high noise, whose x0 is a
    blur that later steps redraw, add little coherence (docs/results.md, compositing guidance on fewer steps).

    Why: joint self-attention alone leaves K = 2-3 samples' full video 12-14 dB off its own layers (coloured
    patches the layers lack); the training term (`layered_loss`'s consistency) pulls the two together only in
    expectation. `composite` is given as a callable so this module stays free of VAE code: the pipeline's
    (`LayerVAE.composite`) decodes the layers, composites them in pixels and encodes the result, since a
    composite made in latent space (`diffusion.latent_composite`, about the clear latent on the coarse alpha grid)
    is itself 5 dB off the layers it comes from (docs/results.md, compositing guidance).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"composite guidance must be in [0, 1], got {weight}")
    if not 0.0 < max_sigma <= 1.0:
        raise ValueError(f"composite guidance's noise level must be in (0, 1], got {max_sigma}")
    if weight == 0.0:
        return velocity
    types = layout.segment_types()
    full = types.index(FULL)

    def guided_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = velocity(x, t)
        sigma = t if t.ndim == 1 else t[:, full]
        if bool((sigma > max_sigma + SIGMA_SLACK).all()):
            return v
        x0 = layout.split(predicted_x0(x, v, t))
        fgs = [z for z, kind in zip(x0, types, strict=True) if kind == FOREGROUND]
        alphas = [z for z, kind in zip(x0, types, strict=True) if kind == ALPHA]
        target = composite(fgs, alphas, x0[types.index(BACKGROUND)])
        t_full = bcast(sigma, target)  # a given (clean, t = 0) full video is not pulled
        pull = weight * (x0[full] - target) * (t_full > 0) / t_full.clamp_min(1e-8)
        return v + layout.pack([pull if i == full else torch.zeros_like(z) for i, z in enumerate(x0)])

    return guided_velocity


@torch.no_grad()
def euler_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, shift: float = 3.0) -> torch.Tensor:
    """Flow Euler: `x <- x + (sigma_next - sigma) v(x, sigma)` from pure noise to x0."""
    sigmas = shifted_sigmas(steps, shift)
    x = noise
    for sigma, sigma_next in itertools.pairwise(sigmas):
        t = torch.full((x.shape[0],), float(sigma))
        x = x + (sigma_next - sigma) * velocity(x, t)
    return x


def unipc_sigmas(steps: int, shift: float) -> torch.Tensor:
    """UniPC's `[steps + 1]` noise levels: diffusers' flow sigmas (`use_flow_sigmas`), `steps` points from 1 down to
    1/1000 before the shift, the first nudged below 1 (its log-SNR must stay finite), then 0."""
    if steps < 1 or shift <= 0:
        raise ValueError(f"sampler needs steps >= 1 and shift > 0, got steps={steps}, shift={shift}")
    sigmas = np.linspace(1, 1 / 1000, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if np.fabs(sigmas[0] - 1) < 1e-6:
        sigmas[0] -= 1e-6
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) of the flow path x_t = (1 - t) x0 + t eps."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _unipc_coefficients(
    sigmas: torch.Tensor, now: int, before: int, older: int, order: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The bh2 update's terms from noise level `sigmas[before]` to `sigmas[now]` with x0 predictions at `before`
    (and at `older` for order 2): `-h` (the log-SNR step, negated for data prediction), `e^-h - 1` (bh2's `h phi_1`
    and `B(h)` alike) and the older step's log-SNR gap over `h`."""
    h = _log_snr(sigmas[now]) - _log_snr(sigmas[before])
    ratio = (_log_snr(sigmas[older]) - _log_snr(sigmas[before])) / h if order == 2 else None
    return -h, torch.expm1(-h), ratio


def _unipc_predict(x: torch.Tensor, sigmas: torch.Tensor, i: int, x0s: list[torch.Tensor], order: int) -> torch.Tensor:
    """UniP-2 (bh2, data prediction): x at `sigmas[i + 1]` from x at `sigmas[i]` and the last `order` x0s."""
    _, phi, ratio = _unipc_coefficients(sigmas, i + 1, i, i - 1, order)
    m0, sigma_t, alpha_t = x0s[-1], sigmas[i + 1], 1 - sigmas[i + 1]
    x_t = sigma_t / sigmas[i] * x - alpha_t * phi * m0
    if order == 2:
        rhos = torch.ones(1, dtype=x.dtype) * 0.5
        x_t = x_t - alpha_t * phi * torch.einsum("k,bkc...->bc...", rhos, torch.stack([(x0s[-2] - m0) / ratio], 1))
    return x_t


def _unipc_correct(
    x: torch.Tensor, sigmas: torch.Tensor, i: int, x0s: list[torch.Tensor], x0: torch.Tensor, order: int
) -> torch.Tensor:
    """UniC (bh2): the sample at `sigmas[i]` made again from `x` at `sigmas[i - 1]`, with the model's x0 at
    `sigmas[i]` (`x0`) beside the x0s the prediction used (`x0s`, `order` of them); it replaces the predicted one."""
    hh, phi, ratio = _unipc_coefficients(sigmas, i, i - 1, i - 2, order)
    m0, sigma_t, alpha_t = x0s[-1], sigmas[i], 1 - sigmas[i]
    rks = torch.stack([ratio, torch.ones(())]) if order == 2 else torch.ones(()).unsqueeze(0)
    powers, b, factorial, h_phi_k = [], [], 1, phi / hh - 1
    for k in range(1, order + 1):
        powers.append(torch.pow(rks, k - 1))
        b.append(h_phi_k * factorial / phi)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rhos = torch.ones(1, dtype=x.dtype) * 0.5 if order == 1 else torch.linalg.solve(torch.stack(powers), torch.stack(b))
    x_t = sigma_t / sigmas[i - 1] * x - alpha_t * phi * m0
    correction = rhos[-1] * (x0 - m0)
    if order == 2:
        correction = torch.einsum("k,bkc...->bc...", rhos[:-1], torch.stack([(x0s[-2] - m0) / ratio], 1)) + correction
    return x_t - alpha_t * phi * correction


@torch.no_grad()
def unipc_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, shift: float = 3.0) -> torch.Tensor:
    """Flow UniPC (Zhao et al. 2023): second-order predictor-corrector on x0 predictions (bh2), first order at the
    first and last step, as diffusers' `UniPCMultistepScheduler` runs it in flow-prediction mode (the same numbers:
    tests/test_model.py). Here rather than through diffusers, whose import took 2.4 s of every `generate`."""
    sigmas = unipc_sigmas(steps, shift)
    x, x0s, before, order = noise, [], None, 1
    for i in range(steps):
        t = torch.full((x.shape[0],), float(sigmas[i]))
        x0 = x - sigmas[i] * velocity(x, t)
        if before is not None:
            x = _unipc_correct(before, sigmas, i, x0s, x0, order)
        x0s = [*x0s[-1:], x0]
        order = min(2, steps - i, len(x0s))
        before = x
        x = _unipc_predict(x, sigmas, i, x0s, order)
    return x


def with_known(velocity: VelocityFn, layout: Layout, known: dict[int, torch.Tensor], noise: torch.Tensor) -> VelocityFn:
    """Sampling-only conditioning on known segments (no retraining): before every model call the known segments
    of `x_t` are set to their own noise path `(1 - t) z + t eps` (with `eps` that segment of the sampler's
    starting `noise`), so the model sees them where its training put them, and their velocity is the path's
    exact one, `eps - z`, so any sampler stays on it. `known` maps segment index -> latent `[B, C, T, H, W]`;
    `replace_known` puts the exact latents in at the end."""
    if not known:
        return velocity
    eps = layout.split(noise)

    def conditioned(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        segments = layout.split(x)
        tt = bcast(t, x)
        for index, z in known.items():
            segments[index] = (1 - tt) * z + tt * eps[index]
        v = layout.split(velocity(layout.pack(segments), t))
        for index, z in known.items():
            v[index] = eps[index] - z
        return layout.pack(v)

    return conditioned


def with_clean_known(velocity: VelocityFn, layout: Layout, known: dict[int, torch.Tensor]) -> VelocityFn:
    """Trained conditioning on known segments (a model trained with `condition_dropout`): every model call sees
    the known segments clean, at their own timestep 0 (`t` becomes `[B, L]`, see `LayerDiT.forward`), while the
    others carry the sampler's `t`. Their velocity is 0; whatever the sampler does with them is discarded by
    `replace_known` at the end, and nothing mixes segments inside a sampler step."""
    if not known:
        return velocity
    given = torch.zeros(layout.num_segments, dtype=torch.bool)
    given[list(known)] = True

    def conditioned(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        segments = layout.split(x)
        for index, z in known.items():
            segments[index] = z.expand_as(segments[index])
        v = layout.split(velocity(layout.pack(segments), segment_timesteps(t, given.expand(len(t), -1))))
        for index in known:
            v[index] = torch.zeros_like(v[index])
        return layout.pack(v)

    return conditioned


def reporting(velocity: VelocityFn, steps: int, on_step: Callable[[int, int], None]) -> VelocityFn:
    """`velocity` that calls `on_step(i, steps)` after its i-th call: both samplers call it once per step. The
    callback may raise to stop sampling (the service's per-job timeout does)."""
    calls = itertools.count(1)

    def reported(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = velocity(x, t)
        on_step(min(next(calls), steps), steps)
        return v

    return reported


def replace_known(latents: torch.Tensor, layout: Layout, known: dict[int, torch.Tensor]) -> torch.Tensor:
    """`latents` with each known segment set to its given latent."""
    segments = layout.split(latents)
    for index, z in known.items():
        segments[index] = z
    return layout.pack(segments)


def sample(
    velocity: VelocityFn, noise: torch.Tensor, steps: int, shift: float, sampler: Literal["euler", "unipc"] = "unipc"
) -> torch.Tensor:
    """Integrate `velocity` from `noise` to x0 with the named sampler."""
    if sampler == "euler":
        return euler_sample(velocity, noise, steps, shift)
    if sampler == "unipc":
        return unipc_sample(velocity, noise, steps, shift)
    raise ValueError(f"unknown sampler {sampler!r}; use 'euler' or 'unipc'")
