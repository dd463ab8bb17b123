"""Small real-video fixtures in the released VidLayer layouts (not the synthetic generator's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from layert2v.io import write_video


def scene(frames: int, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """A moving soft square over a gradient: uint8 full/background RGB and alpha `[T, H, W]`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colour = rng.uniform(0.2, 1.0, 3).astype(np.float32)
    bg = np.stack([x / width, y / height, np.full_like(x, 0.4)], -1)
    background = np.repeat(bg[None], frames, 0)
    alpha = np.stack(
        [
            np.clip(min(height, width) / 4 - np.maximum(np.abs(x - width / 3 - t), np.abs(y - height / 2)), 0, 1)
            for t in range(frames)
        ]
    )
    full = colour * alpha[..., None] + (1 - alpha[..., None]) * background
    to8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return {"full": to8(full), "background": to8(background), "alpha": to8(alpha)}


def write_rgb_mask(path: Path, alpha: np.ndarray, fps: int) -> None:
    """A mask stored as an RGB video, as some released clips are."""
    write_video(path, np.repeat(alpha[..., None], 3, -1), fps)


def folder_sample(root: Path, name: str, seed: int, *, frames=17, height=48, width=80, fps=24) -> Path:
    """One sample in the released folder layout: metadata.json, full_video, background, mask (RGB form)."""
    folder = root / name
    folder.mkdir(parents=True)
    s = scene(frames, height, width, seed)
    write_video(folder / "full_video.mp4", s["full"], fps)
    write_video(folder / "background.mp4", s["background"], fps)
    write_rgb_mask(folder / "mask.mp4", s["alpha"], fps)
    captions = {
        "full": f"a square {seed} over a gradient",
        "foreground": f"a square {seed}",
        "background": "a gradient",
    }
    (folder / "metadata.json").write_text(json.dumps({"captions": captions}))
    return folder


def jsonl_dataset(root: Path, count: int, *, frames=13, height=40, width=64, fps=16) -> Path:
    """The released jsonl manifest form with relative paths in videos/, masks/ and bgs/."""
    lines = []
    for i in range(count):
        s = scene(frames, height, width, 100 + i)
        for sub, key in (("videos", "full"), ("bgs", "background")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            write_video(root / sub / f"clip{i}.mp4", s[key], fps)
        (root / "masks").mkdir(exist_ok=True)
        write_rgb_mask(root / "masks" / f"clip{i}.mp4", s["alpha"], fps)
        lines.append(
            {
                "vid": f"videos/clip{i}.mp4",
                "entry": {"pha_video_path": f"masks/clip{i}.mp4", "bg_path": f"bgs/clip{i}.mp4"},
                "overall_description": f"clip {i}: a square over a gradient",
                "foreground_prompt": f"square number {i}",
                "background_prompt": "a gradient",
            }
        )
    path = root / "train.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path
