"""Training data over prepare's cache: one Dataset per split, one LightningDataModule for every stage.

The cache is memory-mapped `.npy` (no pickle), so workers share pages instead of copying clips. An item is
a whole layered clip; each stage takes what it needs (stage 0: RGB streams, stage 1: alpha mattes).
Foreground slots past a clip's K are zero and `num_fg` says how many are real.

Batch shapes (B clips, F frames, H x W): full, background `[B, 3, F, H, W]`; foregrounds `[B, K_max, 3, F, H, W]`
(premultiplied); alphas `[B, K_max, 1, F, H, W]`; all float32 in [0, 1] (items are uint8, see `collate_clips`).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from layert2v.models.layout import Layout


def to_frames(array: np.ndarray) -> torch.Tensor:
    """uint8 `[F, H, W, C]` (or `[F, H, W]`) -> float `[C, F, H, W]` in [0, 1]."""
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float32) / 255.0)
    return tensor[..., None].permute(3, 0, 1, 2) if tensor.ndim == 3 else tensor.permute(3, 0, 1, 2)


class PreparedClips(Dataset):
    """The clips of one split of a prepared folder, as uint8 frames; `collate_clips` makes float batches.

    Items stay uint8 `[..., F, H, W, C]` and one batch is converted at once: per-clip float tensors (and their
    zero padding) cost more allocation than the CPU step they feed, which showed as data wait in stages 0-1.
    """

    def __init__(self, prepared: Path, split: str, max_fg: int) -> None:
        manifest = pd.read_parquet(prepared / "manifest.parquet")
        rows = manifest[manifest["split"] == split].sort_values("cache_row")
        if rows.empty:
            raise ValueError(f"{prepared} has no clips in split '{split}'")
        self.index = rows[["cache_row", "layer_start", "num_fg"]].to_numpy(dtype=np.int64)
        folder = prepared / "cache" / split
        self.arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r")
            for name in ("full", "background", "foreground", "alpha")
        }
        self.max_fg = max_fg

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip, start, count = (int(v) for v in self.index[index])
        used = min(count, self.max_fg)
        shape = self.arrays["full"].shape[1:]
        fg = np.zeros((self.max_fg, *shape), dtype=np.uint8)
        alpha = np.zeros((self.max_fg, *shape[:3], 1), dtype=np.uint8)
        fg[:used] = self.arrays["foreground"][start : start + used]
        alpha[:used, ..., 0] = self.arrays["alpha"][start : start + used]
        return {
            "full": torch.from_numpy(np.array(self.arrays["full"][clip])),
            "background": torch.from_numpy(np.array(self.arrays["background"][clip])),
            "foregrounds": torch.from_numpy(fg),
            "alphas": torch.from_numpy(alpha),
            "num_fg": torch.tensor(count),
        }


def collate_clips(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack `PreparedClips` items and convert frames to float `[B, (K,) C, F, H, W]` in [0, 1]."""
    batch = default_collate(items)
    for name in ("full", "background", "foregrounds", "alphas"):
        batch[name] = batch[name].movedim(-1, -4).float().div_(255.0)
    return batch


class VidLayerDataModule(L.LightningDataModule):
    """Train and val loaders over a prepared folder; `num_workers=0` suits small CPU runs (no respawns)."""

    def __init__(self, prepared: Path, batch_size: int, max_fg: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.prepared, self.batch_size, self.max_fg = Path(prepared), batch_size, max_fg
        self.num_workers, self.seed = num_workers, seed

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PreparedClips(self.prepared, "train", self.max_fg)
        self.val_set = PreparedClips(self.prepared, "val", self.max_fg)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, collate_fn=collate_clips,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate_clips
        )


class LatentClips(Dataset):
    """Layered samples from the latent cache: the clips with at most `max_fg` foregrounds (stage 2: 1, stage 3: K_max).

    Clips with more foregrounds are left out rather than cut down: their full video shows every foreground, so
    dropping layers would teach the model a full video that its layers do not composite to.

    Item: segments `[2 + 2K, C, T', h, w]` (full, bg, fg_1, alpha_1, ..., fg_K, alpha_K), alpha_grid
    `[K, 1, T', h, w]`, alpha_pixels `[K, 1, F, H, W]` (decoded-alpha loss), text `[2 + K, M, D]` (full, bg,
    fg_1 .. fg_K prompt states), text_mask `[2 + K, M]`, clear `[C, T', h, w]` (the latent of an all-black clip,
    see `diffusion.latent_composite`).
    """

    def __init__(self, prepared: Path, latents: Path, split: str, max_fg: int = 1) -> None:
        manifest = pd.read_parquet(prepared / "manifest.parquet")
        rows = manifest[(manifest["split"] == split) & (manifest["num_fg"] <= max_fg)]
        self.rows = rows.sort_values("cache_row").reset_index(drop=True)
        if self.rows.empty:
            raise ValueError(f"{prepared} has no clips in split '{split}' with at most {max_fg} foreground(s)")
        names = ("full", "background", "foreground", "alpha", "alpha_grid")
        self.latents = {n: np.load(latents / split / f"{n}.npy", mmap_mode="r") for n in names}
        if not (latents / "clear.npy").is_file():
            raise FileNotFoundError(
                f"{latents / 'clear.npy'} is missing: the latent cache predates it, run encode again"
            )
        self.clear = torch.from_numpy(np.load(latents / "clear.npy"))
        self.alpha_pixels = np.load(prepared / "cache" / split / "alpha.npy", mmap_mode="r")
        self.states = np.load(prepared / "text" / "states.npy", mmap_mode="r")
        self.masks = np.load(prepared / "text" / "mask.npy", mmap_mode="r")
        self.num_fg = [int(k) for k in self.rows["num_fg"]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row, count = self.rows.iloc[index], self.num_fg[index]
        clip, start = int(row["cache_row"]), int(row["layer_start"])
        get = lambda name, i: torch.from_numpy(np.asarray(self.latents[name][i], dtype=np.float32))  # noqa: E731
        layers = range(start, start + count)
        layout = Layout(len(layers))
        fgs, alphas = [get("foreground", i) for i in layers], [get("alpha", i) for i in layers]
        segments = layout.order(get("full", clip), get("background", clip), fgs, alphas)
        prompts = [int(row["text_full"]), int(row["text_background"]), *json.loads(row["text_foreground"])[:count]]
        return {
            "segments": torch.stack(segments),
            "alpha_grid": torch.stack([get("alpha_grid", i) for i in layers]),
            "alpha_pixels": torch.stack([to_frames(self.alpha_pixels[i]) for i in layers]),
            "text": torch.from_numpy(np.asarray(self.states[prompts], dtype=np.float32)),
            "text_mask": torch.from_numpy(np.asarray(self.masks[prompts])),
            "clear": self.clear,
        }


class SameKBatches(Sampler[list[int]]):
    """Batches whose clips all have the same K (one layout per step), in a seeded random order each epoch.

    `k_weights[K - 1]` scales how often batches of K are drawn against their share of the data (None: as the
    data has them). An epoch keeps its length; a group drawn more often than it has full batches is cycled
    through fresh permutations, one drawn less often gives a random subset of its batches.
    """

    def __init__(
        self,
        num_fg: list[int],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        k_weights: list[float] | None = None,
    ) -> None:
        self.groups: dict[int, list[int]] = {}
        for index, k in enumerate(num_fg):
            self.groups.setdefault(k, []).append(index)
        self.batch_size, self.seed, self.shuffle, self.epoch = batch_size, seed, shuffle, 0
        self.counts = self._counts(k_weights)

    def _counts(self, k_weights: list[float] | None) -> dict[int, int]:
        """Batches of each K per epoch: the data's full batches, re-weighted by `k_weights`, same total."""
        natural = {k: len(g) // self.batch_size for k, g in self.groups.items()}
        if k_weights is None:
            return natural
        missing = sorted(k for k in self.groups if k > len(k_weights))
        if missing:
            raise ValueError(f"k_weights {k_weights} has no weight for K = {missing}: give one per K = 1..K_max")
        mass = {k: k_weights[k - 1] * n for k, n in natural.items()}
        total, weight_sum = sum(natural.values()), sum(mass.values())
        if weight_sum == 0:
            raise ValueError(
                f"k_weights {k_weights} give no batch: every K with a full batch (K = {sorted(natural)}) has weight 0"
            )
        return {k: round(total * m / weight_sum) for k, m in mass.items()}

    def _group_batches(self, indices: list[int], count: int, generator: torch.Generator) -> list[list[int]]:
        order: list[int] = []
        while len(order) < count * self.batch_size:
            order += (
                [indices[i] for i in torch.randperm(len(indices), generator=generator)] if self.shuffle else indices
            )
        return [order[i : i + self.batch_size] for i in range(0, count * self.batch_size, self.batch_size)]

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for k, indices in self.groups.items():
            batches += self._group_batches(indices, self.counts[k], generator)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def __iter__(self):
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return sum(self.counts.values())


class LatentDataModule(L.LightningDataModule):
    """Train and val loaders over the latent cache; every batch holds clips of one K."""

    def __init__(
        self,
        prepared: Path,
        latents: Path,
        batch_size: int,
        max_fg: int = 1,
        seed: int = 0,
        k_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.prepared, self.latents, self.batch_size = Path(prepared), Path(latents), batch_size
        self.max_fg, self.seed, self.k_weights = max_fg, seed, k_weights

    def setup(self, stage: str | None = None) -> None:
        self.train_set = LatentClips(self.prepared, self.latents, "train", self.max_fg)
        self.val_set = LatentClips(self.prepared, self.latents, "val", self.max_fg)

    def train_dataloader(self) -> DataLoader:
        batches = SameKBatches(self.train_set.num_fg, self.batch_size, self.seed, k_weights=self.k_weights)
        return DataLoader(self.train_set, batch_sampler=batches)

    def val_dataloader(self) -> DataLoader:
        batches = SameKBatches(self.val_set.num_fg, 1, self.seed, shuffle=False)
        return DataLoader(self.val_set, batch_sampler=batches)


def training_captions(prepared: Path) -> list[str]:
    """Every caption of the prepared training split (overall, background, foregrounds): the words a model trained
    on this folder has read."""
    train = pd.read_parquet(prepared / "manifest.parquet").query("split == 'train'")
    foregrounds = [c for row in train["captions_foreground"] for c in json.loads(row)]
    return [*train["caption_full"], *train["caption_background"], *foregrounds]
