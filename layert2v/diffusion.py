"""Rectified-flow training objective and samplers for layered latents.

Rectified flow (Liu et al. 2022; Esser et al. 2024): `x_t = (1 - t) x0 + t eps`, the model predicts the
velocity `v = eps - x0`. One logit-normal `t` per sample is shared by every segment, so all layers of a
sample move along one trajectory; only segments given clean (`segment_timesteps`, trained conditioning on kept
layers) sit at `t = 0` and carry no loss. LayerT2V adds two terms (weights 0.1 each by default):

- latent compositing consistency: the predicted x0 of the foreground and background segments,
  composited with the ground-truth alpha downsampled to latent resolution, must match the full segment.
  The composite is taken about the latent of a clear (all-black) clip: a premultiplied foreground is black
  where it is transparent, and the VAE does not map black to 0. Compositing raw latents, as the reference
  does, leaves the true latents of the validation clips off their own full latent by a mean squared error of
  0.77 (K = 1), 2.9 (K = 2) and 6.1 (K = 3), against a latent variance of 1.1; about the clear latent the
  error is 0.018, 0.054 and 0.078, so the term no longer pulls the layers away from the data;
- smooth-L1 between the decoded predicted alpha latent and the true alpha (needs the VAE decoder, given
  as a callable so this module stays free of VAE code).

The samplers live in `sampling.py`: training never imports them, so a sampler change retrains nothing.

Shapes: B batch, C channels, L segments, T latent frames per segment, H, W latent size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from layert2v.compose import over
from layert2v.models.layout import ALPHA, BACKGROUND, FOREGROUND, FULL, Layout


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's / SD3's timestep shift `s t / (1 + (s - 1) t)`: s > 1 moves every t towards noise, keeping 0 and 1."""
    return shift * t / (1 + (shift - 1) * t)


def logit_normal_t(
    batch: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0, shift: float = 1.0
) -> torch.Tensor:
    """`[B]` timesteps in (0, 1), `sigmoid(N(mean, std))` (more weight on the middle of the path, SD3), shifted by
    `shift` (`time_shift`). Training with the sampler's shift puts the samples where the sampler takes its steps:
    unshifted, 1.4% of them lie above t = 0.9, where a shift-3 sampler takes 5 of its 20 steps."""
    return time_shift(torch.sigmoid(mean + std * torch.randn(batch, generator=generator)), shift)


def bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` `[B]` (one per sample) or `[B, L]` (one per segment of packed latents, which split dim 2 evenly)
    shaped to broadcast against `like` `[B, C, L*T, H, W]`."""
    if t.ndim == 2:
        t = t.repeat_interleave(like.shape[2] // t.shape[1], dim=1)[:, None, :, None, None]
        return t.to(like.dtype)
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def segment_timesteps(t: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """`[B, L]` timesteps: each sample's `t` `[B]` on every segment, 0 where `known` `[B, L]` (a clean, given
    segment: the trained way to condition on layers a user keeps)."""
    return torch.where(known, torch.zeros_like(t)[:, None], t[:, None]).to(t.dtype)


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (1 - bcast(t, x0)) * x0 + bcast(t, x0) * noise


def predicted_x0(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x_t - bcast(t, x_t) * velocity


def latent_composite(
    fgs: list[torch.Tensor], alphas: list[torch.Tensor], bg: torch.Tensor, clear: torch.Tensor | None = None
) -> torch.Tensor:
    """Back-to-front over in latent space about `clear`, the latent of an all-black clip (None: zero).

    fgs/bg `[B, C, T, H, W]`, alphas `[B, 1, T, H, W]` in [0, 1], clear broadcastable to fgs.
    """
    clear = torch.zeros_like(bg) if clear is None else clear
    last = lambda x: (x - clear).movedim(1, -1)  # noqa: E731
    composite = over([last(f) for f in fgs], [a.movedim(1, -1)[..., 0] for a in alphas], last(bg))
    return composite.movedim(-1, 1) + clear


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    consistency: float = 0.1  # latent compositing consistency
    alpha: float = 0.1  # decoded-alpha smooth-L1
    foreground: float = 0.0  # extra flow-matching weight on the latent cells a foreground touches (0: uniform)


def foreground_cell_weights(alphas: list[torch.Tensor], weight: float, segments: int) -> torch.Tensor:
    """`[B, 1, L*T, H, W]` flow-matching weights: `1 + weight` on latent cells any foreground touches, else 1,
    the same cells in every segment, scaled to mean 1 per latent frame so the loss keeps its size.

    Why: sprites cover ~7% of the alpha mass and touch ~20% of the cells on the default data; a uniform loss is
    then mostly the empty, easy rest, and the DiT learns transparent foregrounds long before it learns sprites.
    """
    touched = (torch.stack(alphas).amax(0) > 0).to(alphas[0].dtype)
    cells = (1 + weight * touched).repeat(1, 1, segments, 1, 1)
    return cells / cells.mean(dim=(0, 1, 3, 4), keepdim=True)


def layered_loss(
    velocity: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    layout: Layout,
    weights: LossWeights,
    alpha_grid: list[torch.Tensor] | None = None,
    clear_latent: torch.Tensor | None = None,
    decode_alpha: Callable[[torch.Tensor], torch.Tensor] | None = None,
    alpha_pixels: list[torch.Tensor] | None = None,
    known: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms for packed latents `[B, C, L*T, H, W]`; `loss` is the weighted total. `t` is `[B]` or
    `[B, L]` (`segment_timesteps`); `known` bool `[B, L]` marks clean given segments, which carry no
    flow-matching loss (their x0 is exact, so they add nothing to the other terms either).

    `alpha_grid`: true alpha per foreground at latent resolution `[B, 1, T, H, W]` and `clear_latent`, the
    latent of an all-black clip `[B or 1, C, T, H, W]` (consistency term, see `latent_composite`; the alphas also
    place `weights.foreground`, see `foreground_cell_weights`);
    `decode_alpha` + `alpha_pixels`: decoder and true pixel alpha per foreground (decoded-alpha term).
    """
    error = (velocity - (noise - x0)).pow(2)
    if alpha_grid is not None and weights.foreground:
        error = error * foreground_cell_weights(alpha_grid, weights.foreground, layout.num_segments)
    per_sample = error.mean(dim=(1, 3, 4)).unflatten(1, (layout.num_segments, -1)).mean(2)  # [B, L]
    counted = torch.ones_like(per_sample) if known is None else (~known).to(per_sample)
    per_segment = (per_sample * counted).sum(0) / counted.sum(0).clamp_min(1)
    losses = {f"fm_{name}": value for name, value in zip(layout.segment_names(), per_segment, strict=True)}
    losses["fm"] = (per_sample * counted).sum() / counted.sum().clamp_min(1)
    total = losses["fm"]
    x0_hat = layout.split(predicted_x0(noisy(x0, noise, t), velocity, t))
    types = layout.segment_types()
    fg_hat = [x for x, kind in zip(x0_hat, types, strict=True) if kind == FOREGROUND]
    if alpha_grid is not None and weights.consistency:
        full = layout.split(x0)[types.index(FULL)]
        composite = latent_composite(fg_hat, alpha_grid, x0_hat[types.index(BACKGROUND)], clear_latent)
        losses["consistency"] = F.mse_loss(composite, full)
        total = total + weights.consistency * losses["consistency"]
    if decode_alpha is not None and alpha_pixels is not None and weights.alpha:
        alpha_hat = [x for x, kind in zip(x0_hat, types, strict=True) if kind == ALPHA]
        decoded = [decode_alpha(a) for a in alpha_hat]
        losses["alpha"] = torch.stack(
            [F.smooth_l1_loss(d, a) for d, a in zip(decoded, alpha_pixels, strict=True)]
        ).mean()
        total = total + weights.alpha * losses["alpha"]
    losses["loss"] = total
    return losses
