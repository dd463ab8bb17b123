"""Layout of a layered sample along latent time, and which prompt each segment may read.

For K foregrounds (1 = nearest) the segments are serialised along latent time in the order
`[full | bg | fg_1 | alpha_1 | ... | fg_K | alpha_K]` (L = 2 + 2K segments, no separator). Each token
carries a layer type (row of the LayerAdaLN table) and an instance id (row of the instance table, or
`NO_INSTANCE` for full and bg). Prompts are concatenated as `[full | bg | fg_1 | ... | fg_K]`
(P = 2 + K prompts); the visibility rule of layer-aware cross-attention is:

    full -> every prompt;  bg -> full + bg;  fg_k, alpha_k -> full + fg_k.

This module also owns the latent geometry every segment shares: the VAE compresses F = 4k+1 frames of
H x W pixels to `latent_shape(F, H, W, cell) = ((F - 1) / 4 + 1, H / cell, W / cell)`; `cell` is the model's
`vae_cell` (8 in the Wan 2.1 contract, 4 for the finer patch autoencoder).

Shapes: B batch, C latent channels, L segments, T latent frames per segment, H, W latent size,
P prompts, M tokens per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

FULL, BACKGROUND, FOREGROUND, ALPHA = 0, 1, 2, 3
LAYER_TYPES = 4
NO_INSTANCE = -1
TEMPORAL_COMPRESSION = 4  # of the VAE: F = 4k+1 frames -> k+1 latent frames

T = TypeVar("T")


def latent_shape(frames: int, height: int, width: int, cell: int) -> tuple[int, int, int]:
    """Latent `(T, H, W)` of one segment of `frames` (4k+1) frames of `height x width` pixels, `cell x cell`
    pixels per latent cell."""
    if (frames - 1) % TEMPORAL_COMPRESSION or height % cell or width % cell:
        raise ValueError(
            f"{frames} frames of {height}x{width} do not fit the VAE's 4k+1 frames and {cell}x{cell} pixel cells"
        )
    return (frames - 1) // TEMPORAL_COMPRESSION + 1, height // cell, width // cell


@dataclass(frozen=True)
class Layout:
    """Segment order, ids and prompt visibility for one value of K."""

    num_fg: int

    def __post_init__(self) -> None:
        if self.num_fg < 1:
            raise ValueError(f"a layered sample needs at least one foreground, got K={self.num_fg}")

    @classmethod
    def from_segments(cls, count: int) -> Layout:
        """The layout of `count` segments (2 + 2K)."""
        if count < 4 or count % 2:
            raise ValueError(f"{count} segments are no layered sample (2 + 2K, K >= 1)")
        return cls((count - 2) // 2)

    @property
    def num_segments(self) -> int:
        return 2 + 2 * self.num_fg

    def order(self, full: T, background: T, foregrounds: list[T], alphas: list[T]) -> list[T]:
        """Per-layer items in segment order `[full, bg, fg_1, alpha_1, ...]`."""
        if len(foregrounds) != self.num_fg or len(alphas) != self.num_fg:
            raise ValueError(
                f"K={self.num_fg} needs {self.num_fg} foregrounds and alphas, got {len(foregrounds)}, {len(alphas)}"
            )
        return [full, background] + [x for pair in zip(foregrounds, alphas, strict=True) for x in pair]

    def group(self, items: list[T]) -> tuple[T, T, list[T], list[T]]:
        """Inverse of `order`: `(full, background, foregrounds, alphas)`."""
        if len(items) != self.num_segments:
            raise ValueError(f"K={self.num_fg} has {self.num_segments} segments, got {len(items)}")
        return items[0], items[1], items[2::2], items[3::2]

    def pack(self, segments: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-segment latents `[B, C, T, H, W]` along time -> `[B, C, L*T, H, W]`."""
        if len(segments) != self.num_segments:
            raise ValueError(f"K={self.num_fg} packs {self.num_segments} segments, got {len(segments)}")
        return torch.cat(segments, dim=2)

    def split(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of `pack`: `[B, C, L*T, H, W]` -> L tensors `[B, C, T, H, W]`."""
        if latents.shape[2] % self.num_segments:
            raise ValueError(f"latent time {latents.shape[2]} does not split into {self.num_segments} segments")
        return list(latents.chunk(self.num_segments, dim=2))

    def latents_shape(
        self, batch: int, channels: int, frames: int, height: int, width: int, cell: int
    ) -> tuple[int, ...]:
        """Packed latents `[B, C, L*T, H, W]` of a clip of `frames` x `height` x `width` pixels."""
        t, h, w = latent_shape(frames, height, width, cell)
        return batch, channels, self.num_segments * t, h, w

    @property
    def num_prompts(self) -> int:
        return 2 + self.num_fg

    def segment_types(self) -> list[int]:
        """Layer type of each segment, in order."""
        return [FULL, BACKGROUND] + [t for _ in range(self.num_fg) for t in (FOREGROUND, ALPHA)]

    def segment_instances(self) -> list[int]:
        """Instance id (0-based foreground index) of each segment; NO_INSTANCE for full and bg."""
        return [NO_INSTANCE, NO_INSTANCE] + [k for k in range(self.num_fg) for _ in range(2)]

    def editing_tasks(self) -> dict[str, list[int]]:
        """The segments each editing task gives (`editing.py`), by task: a background to put foregrounds on, the
        foregrounds (RGB and alpha) to put a background behind, every layer but the last foreground (one layer
        regenerated) and the full video to decompose. Training gives the same sets clean (`condition_dropout`)."""
        fg_pairs = [i for i, kind in enumerate(self.segment_types()) if kind in (FOREGROUND, ALPHA)]
        return {
            "foregrounds_for_background": [1],
            "background_for_foregrounds": fg_pairs,
            "regenerate_one": [1, *fg_pairs[:-2]],
            "decompose": [0],
        }

    def segment_names(self) -> list[str]:
        return ["full", "background"] + [n for k in range(1, self.num_fg + 1) for n in (f"fg_{k}", f"alpha_{k}")]

    def visibility(self) -> torch.Tensor:
        """bool `[L, P]`: may segment l read prompt p (prompt order full, bg, fg_1..fg_K)."""
        vis = torch.zeros(self.num_segments, self.num_prompts, dtype=torch.bool)
        vis[0, :] = True
        vis[1, :2] = True
        for k in range(self.num_fg):
            vis[2 + 2 * k : 4 + 2 * k, 0] = True
            vis[2 + 2 * k : 4 + 2 * k, 2 + k] = True
        return vis

    def token_ids(self, tokens_per_segment: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token layer types and instance ids, long `[L * tokens_per_segment]` each."""
        types = torch.tensor(self.segment_types()).repeat_interleave(tokens_per_segment)
        instances = torch.tensor(self.segment_instances()).repeat_interleave(tokens_per_segment)
        return types, instances

    def cross_attention_mask(self, tokens_per_segment: int, text_mask: torch.Tensor) -> torch.Tensor:
        """bool `[B, L * tokens_per_segment, P * M]`: visibility per video token and text token.

        `text_mask` is bool `[B, P, M]` (padding False). Every segment sees the full prompt, whose
        first token is always real, so no row is fully masked.
        """
        batch, prompts, length = text_mask.shape
        if prompts != self.num_prompts:
            raise ValueError(f"K={self.num_fg} needs {self.num_prompts} prompts, got {prompts}")
        allowed = self.visibility().to(text_mask.device)[None, :, :, None] & text_mask[:, None]  # [B, L, P, M]
        allowed = allowed.reshape(batch, self.num_segments, 1, prompts * length)
        return allowed.expand(-1, -1, tokens_per_segment, -1).reshape(batch, -1, prompts * length)
