"""Samplers for layered latents, with classifier-free and compositing guidance.

Samplers integrate the rectified flow of `diffusion.py` from t = 1 (noise) to t = 0 with Wan's timestep shift
`s t / (1 + (s - 1) t)`: flow Euler (here) and flow UniPC (diffusers' scheduler). Classifier-free guidance runs
the conditional and unconditional branch in one batch of 2B, above a noise level. `composite_guided` applies the
training's compositing constraint to the predicted x0 of the steps below a noise level (see there).

Shapes: B batch, C channels, L segments, T latent frames per segment, H, W latent size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

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
    velocity_fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], guidance: float, min_sigma: float = 0.0
) -> VelocityFn:
    """Classifier-free guidance: `v_u + g (v_c - v_u)`, both branches in one batch when g != 1, on the steps above
    noise level `min_sigma` (0: every step); below it the conditional branch alone, a batch of B.

    Why an interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval"): by the last steps the
    prompt has placed and coloured the layers, and the guided direction mostly sharpens where the layers and the
    full video disagree: unguided there, samples composite 1.2-1.6 dB closer (docs/results.md, classifier-free
    guidance on fewer steps).
    `velocity_fn(x, t, doubled)` gets `x` twice along the batch (conditional first) when `doubled`.
    """
    if not 0.0 <= min_sigma < 1.0:
        raise ValueError(f"guidance's lowest noise level must be in [0, 1), got {min_sigma}")

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0 or float(t.max()) <= min_sigma + SIGMA_SLACK:
            return velocity_fn(x, t, False)
        cond, uncond = velocity_fn(torch.cat([x, x]), torch.cat([t, t]), True).chunk(2)
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


@torch.no_grad()
def unipc_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, shift: float = 3.0) -> torch.Tensor:
    """Flow UniPC (Zhao et al. 2023) via diffusers' multistep scheduler in flow-prediction mode."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )
    scheduler.set_timesteps(steps)
    x = noise
    for timestep, sigma in zip(scheduler.timesteps, scheduler.sigmas, strict=False):
        t = torch.full((x.shape[0],), float(sigma))  # the timesteps are rounded to integers; sigmas are exact
        x = scheduler.step(velocity(x, t), timestep, x).prev_sample
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
