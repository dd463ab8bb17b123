"""Uploaded images and videos: bounded in bytes, checked on their header (size, frames) before anything is
decoded, kept under names the service makes, never the client's. Every refusal is an `HTTPException` naming the
form field and the rule (413 for bytes, 422 for the rest)."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import HTTPException, UploadFile

from layert2v.config import ServeConfig
from layert2v.editing import Given, read_rgb
from layert2v.io import VideoError, probe, read_video


def unprocessable(field: str, message: str) -> HTTPException:
    """A 422 in FastAPI's own shape: `loc` names the field (`foreground_prompts.1` for `foreground_prompts[1]`)."""
    return HTTPException(422, [{"loc": ["body", *field.replace("[", ".").rstrip("]").split(".")], "msg": message}])


@asynccontextmanager
async def saved(upload: UploadFile, out: Path, field: str, cfg: ServeConfig):
    """The upload as a file in a fresh folder under `<out>/uploads`, deleted on exit; 413 past `max_upload_mb`."""
    limit = int(cfg.max_upload_mb * 2**20)
    (out / "uploads").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out / "uploads"))
    try:
        path, size = folder / "upload", 0
        with path.open("wb") as f:
            while chunk := await upload.read(2**20):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"{field} is over serve.max_upload_mb = {cfg.max_upload_mb:g} MB")
                f.write(chunk)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def header(path: Path, field: str) -> tuple[str, int, int, int]:
    """`(kind, height, width, frames)` of an uploaded image or video, from its header alone."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return "image", image.height, image.width, 1
    except (UnidentifiedImageError, OSError):
        pass
    try:
        info = probe(path)
    except VideoError as err:
        raise unprocessable(field, f"{field} is neither an image nor a video") from err
    return "video", info.height, info.width, info.frames


def read_background(path: Path, field: str, frames: int, height: int, width: int) -> np.ndarray:
    """A still image (held for every frame) or a video of exactly this size and frame count, float `[T, H, W, 3]`."""
    kind, h, w, count = header(path, field)
    if (h, w) != (height, width):
        raise unprocessable(field, f"{field} is {h}x{w}, the request {height}x{width}")
    if kind == "video" and count and count != frames:
        raise unprocessable(field, f"{field} has {count} frames, the request {frames}")
    try:
        rgb = read_rgb(path.rename(path.with_suffix(".png")) if kind == "image" else path)
        return Given(background=rgb).resolved(frames, height, width, 1).background
    except (ValueError, VideoError) as err:
        raise unprocessable(field, f"{field}: {err}") from err


def read_clip(path: Path, field: str, cfg: ServeConfig) -> np.ndarray:
    """A video within the request bounds (frames, sides), uint8 `[T, H, W, 3]`."""
    kind, h, w, count = header(path, field)
    if kind != "video":
        raise unprocessable(field, f"{field} must be a video, got an image")
    if max(h, w) > cfg.max_side or count > cfg.max_frames:
        raise unprocessable(field, f"{field} is {count} frames of {h}x{w}; at most {cfg.max_frames} of {cfg.max_side}")
    try:
        video = read_video(path)
    except VideoError as err:
        raise unprocessable(field, f"{field}: {err}") from err
    if len(video) > cfg.max_frames:
        raise unprocessable(field, f"{field} decodes to {len(video)} frames; at most {cfg.max_frames}")
    return video
