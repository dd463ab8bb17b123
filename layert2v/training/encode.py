"""encode: every clip's segments through the frozen (stage 1) VAE once, into a latent cache for stages 2-3.

Per split under `out/<split>/` (float16 `.npy`, rows as in the prepared cache):
  full.npy, background.npy   [N, C, T', h, w]   normalised RGB latents
  foreground.npy, alpha.npy  [M, C, T', h, w]   premultiplied fg and alpha-path latents, rows layer_start ..
  alpha_grid.npy             [M, 1, T', h, w]   true alpha on the latent grid (consistency loss)
plus, under `out/`, `clear.npy` `[C, T', h, w]` (float32), the latent of an all-black clip that the consistency
loss composites about (`diffusion.latent_composite`), and `encode.json` (shapes, latent std). The manifest of
the prepared folder still indexes every row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from layert2v.data.datamodule import to_frames
from layert2v.data.vidlayer import SPLITS
from layert2v.models.vae import LayerVAE, alpha_to_latent_grid
from layert2v.progress import progress


def _encode_rows(array: np.ndarray, encode, batch: int) -> np.ndarray:
    """Encode uint8 clips `[N, F, H, W(, 3)]` in batches; returns float16 latents `[N, C, T', h, w]`."""
    out = []
    for start in range(0, len(array), batch):
        clips = torch.stack([to_frames(x) for x in array[start : start + batch]])
        out.append(encode(clips).to(torch.float16).numpy())
    return np.concatenate(out)


@torch.no_grad()
def encode_prepared(vae: LayerVAE, prepared: Path, out: Path, batch: int = 8) -> dict[str, list[int]]:
    """Write the latent cache for every split of `prepared`; returns each split's full-latent shape."""
    vae.eval()
    shapes = {}
    jobs = {
        "full": ("full", vae.encode_rgb),
        "background": ("background", vae.encode_rgb),
        "foreground": ("foreground", vae.encode_rgb),
        "alpha": ("alpha", vae.encode_alpha),
        "alpha_grid": ("alpha", lambda alpha: alpha_to_latent_grid(alpha, vae.cfg.vae_cell)),
    }
    splits = [s for s in SPLITS if (prepared / "cache" / s).is_dir()]
    with progress() as bar:
        task = bar.add_task("encode: latent cache", total=len(splits) * len(jobs))
        for split in splits:
            folder = out / split
            folder.mkdir(parents=True, exist_ok=True)
            for name, (source, fn) in jobs.items():
                array = np.load(prepared / "cache" / split / f"{source}.npy", mmap_mode="r")
                np.save(folder / f"{name}.npy", _encode_rows(array, fn, batch))
                bar.advance(task)
            shapes[split] = list(np.load(folder / "full.npy", mmap_mode="r").shape)
        frames, height, width = np.load(prepared / "cache" / splits[0] / "full.npy", mmap_mode="r").shape[1:4]
        np.save(out / "clear.npy", vae.encode_rgb(torch.zeros(1, 3, frames, height, width))[0].numpy())
    (out / "encode.json").write_text(
        json.dumps({"shapes": shapes, "latent_std": vae.latent_std.tolist()}, indent=2) + "\n"
    )
    return shapes
