"""Training data over prepare's cache: one Dataset per split, one LightningDataModule for every stage.

The cache is memory-mapped `.npy` (no pickle), so workers share pages instead of copying clips. An item is
a whole layered clip; each stage takes what it needs (stage 0: RGB streams, stage 1: alpha mattes).
Foreground slots past a clip's K are zero and `num_fg` says how many are real.

Item shapes (F frames, H x W): full, background `[3, F, H, W]`; foregrounds `[K_max, 3, F, H, W]`
(premultiplied); alphas `[K_max, 1, F, H, W]`; all float32 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset


def to_frames(array: np.ndarray) -> torch.Tensor:
    """uint8 `[F, H, W, C]` (or `[F, H, W]`) -> float `[C, F, H, W]` in [0, 1]."""
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float32) / 255.0)
    return tensor[..., None].permute(3, 0, 1, 2) if tensor.ndim == 3 else tensor.permute(3, 0, 1, 2)


class PreparedClips(Dataset):
    """The clips of one split of a prepared folder."""

    def __init__(self, prepared: Path, split: str, max_fg: int) -> None:
        manifest = pd.read_parquet(prepared / "manifest.parquet")
        self.rows = manifest[manifest["split"] == split].sort_values("cache_row").reset_index(drop=True)
        if self.rows.empty:
            raise ValueError(f"{prepared} has no clips in split '{split}'")
        folder = prepared / "cache" / split
        self.arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r")
            for name in ("full", "background", "foreground", "alpha")
        }
        self.max_fg = max_fg

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows.iloc[index]
        start, count = int(row["layer_start"]), int(row["num_fg"])
        fg = torch.zeros(self.max_fg, 3, *self.arrays["full"].shape[1:4])
        alpha = torch.zeros(self.max_fg, 1, *self.arrays["full"].shape[1:4])
        for k in range(min(count, self.max_fg)):
            fg[k] = to_frames(self.arrays["foreground"][start + k])
            alpha[k] = to_frames(self.arrays["alpha"][start + k])
        return {
            "full": to_frames(self.arrays["full"][int(row["cache_row"])]),
            "background": to_frames(self.arrays["background"][int(row["cache_row"])]),
            "foregrounds": fg,
            "alphas": alpha,
            "num_fg": torch.tensor(count),
        }


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
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
