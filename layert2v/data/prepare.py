"""prepare: raw VidLayer clips -> conformed training cache, per-clip statistics, text embeddings.

For every clip: decode its streams, check them (readable, same frame count and size, alpha finite and in
[0, 1]), resample to `frames` (4k+1) frames at the target frame rate (nearest source frame), resize and centre-crop to `height x width`,
derive the premultiplied foreground `full * mask` where the clip has none, and measure what the gate
checks (alpha coverage, compositing error, motion). A clip that breaks a rule is listed in
`rejects.json` with the rule and the others go on; sources are only ever read.

Outputs under `out/`:
  manifest.parquet              one row per accepted clip (statistics, captions, cache and text indices)
  rejects.json                  clip, origin and rule of every rejected clip
  summary.json                  counts, the reject reasons by rule, and the time to conform the clips
  .layert2v-output.json         marks the folder as a prepare output (only such a folder is ever replaced)
  cache/<split>/full.npy        uint8 [N, F, H, W, 3]   (row = manifest.cache_row)
  cache/<split>/background.npy  uint8 [N, F, H, W, 3]
  cache/<split>/foreground.npy  uint8 [M, F, H, W, 3]   premultiplied; rows layer_start .. +num_fg, nearest first
  cache/<split>/alpha.npy       uint8 [M, F, H, W]
  text/states.npy               float16 [U, L, D] token states of the U unique captions
  text/mask.npy                 bool [U, L];  text/captions.json: the U captions in row order

`.npy` keeps the cache memory-mappable and loadable without pickle (`allow_pickle=False`).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from layert2v.compose import over
from layert2v.config import PrepareConfig
from layert2v.data.cache import OUTPUT_KIND, Prepared, reject_reasons, write_outputs
from layert2v.data.vidlayer import ClipError, ClipSource, Reject, discover
from layert2v.io import VideoError, probe, read_mask, read_video, to_uint8
from layert2v.outputs import check_output
from layert2v.progress import progress


@dataclass(frozen=True, kw_only=True)
class Streams:
    """One clip's decoded streams in [0, 1]: RGB `[T, H, W, 3]`, alpha `[T, H, W]`; fg None = derive."""

    full: np.ndarray
    background: np.ndarray
    alphas: list[np.ndarray]
    foregrounds: list[np.ndarray | None]
    fps: float


def _read(clip: ClipSource, path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
    try:
        return reader(path)
    except VideoError as err:
        raise ClipError(clip.clip_id, f"{path.name}: {err.rule}") from err


def load_streams(clip: ClipSource) -> Streams:
    """Decode every stream of `clip`, checking that they agree in frame count and size."""
    rgb = lambda p: _read(clip, p, read_video).astype(np.float32) / 255.0  # noqa: E731
    full, background = rgb(clip.full), rgb(clip.background)
    alphas = [_read(clip, p, read_mask) for p in clip.masks]
    foregrounds = [None if p is None else rgb(p) for p in clip.foregrounds]
    named = {clip.full.name: full, clip.background.name: background}
    named |= {p.name: a for p, a in zip(clip.masks, alphas, strict=True)}
    named |= {p.name: f for p, f in zip(clip.foregrounds, foregrounds, strict=True) if f is not None}
    counts = {name: len(x) for name, x in named.items()}
    if len(set(counts.values())) > 1:
        raise ClipError(clip.clip_id, f"streams have different frame counts: {counts}")
    sizes = {name: tuple(x.shape[1:3]) for name, x in named.items()}
    if len(set(sizes.values())) > 1:
        raise ClipError(clip.clip_id, f"streams have different frame sizes: {sizes}")
    return Streams(full=full, background=background, alphas=alphas, foregrounds=foregrounds, fps=probe(clip.full).fps)


def check_alpha(clip_id: str, alpha: np.ndarray, name: str) -> None:
    """Alpha mattes must be finite and inside [0, 1]."""
    if not np.isfinite(alpha).all():
        raise ClipError(clip_id, f"{name}: alpha has NaN or infinite values")
    low, high = float(alpha.min()), float(alpha.max())
    if low < 0 or high > 1:
        raise ClipError(clip_id, f"{name}: alpha out of range [0, 1] (min {low:.3f}, max {high:.3f})")


def frame_indices(clip_id: str, total: int, src_fps: float, cfg: PrepareConfig) -> tuple[np.ndarray, float]:
    """Resample to `cfg.fps`: output frame i is the source frame nearest to time i / fps. Returns the indices
    and the timing error, the largest distance of a chosen frame from its time, in output frame periods
    (at most 0.5 when the source rate is at least the target's; more means frames would be repeated)."""
    if not src_fps > 0:
        raise ClipError(clip_id, "frame rate unknown: the container names none")
    times = np.arange(cfg.frames) / cfg.fps
    idx = np.rint(times * src_fps).astype(int)
    needed = int(idx[-1]) + 1
    if total < needed:
        raise ClipError(
            clip_id,
            f"has {total} frames, fewer than the {needed} required ({cfg.frames} at {cfg.fps:g} fps from {src_fps:g})",
        )
    error = float(np.abs(idx / src_fps - times).max() * cfg.fps)
    if error > 0.5 + 1e-6:
        raise ClipError(clip_id, f"frame rate {src_fps:g} fps is below the target {cfg.fps:g} fps")
    return idx, error


def resize_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale `[T, h, w(, C)]` float frames to cover `height x width` (antialiased), then centre-crop."""
    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    channels = [frames] if frames.ndim == 3 else [frames[..., c] for c in range(frames.shape[-1])]
    out = [np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in ch]) for ch in channels]
    stacked = out[0] if frames.ndim == 3 else np.stack(out, axis=-1)
    return np.clip(stacked[:, top : top + height, left : left + width], 0, 1)


def clip_stats(full: np.ndarray, background: np.ndarray, fgs: list[np.ndarray], alphas: list[np.ndarray]) -> dict:
    """What the gate checks, measured on conformed float frames in [0, 1]."""
    coverage = [float(a.mean()) for a in alphas]
    stacked = np.stack(alphas)
    return {
        "alpha_min": float(stacked.min()),
        "alpha_max": float(stacked.max()),
        "coverage_min": min(coverage),
        "coverage_max": max(coverage),
        "coverage_mean": float(np.mean(coverage)),
        "composite_err": float(np.abs(full - over(fgs, alphas, background)).mean()),
        "motion": float(np.abs(np.diff(full, axis=0)).mean()) if len(full) > 1 else 0.0,
        "bg_motion": float(np.abs(np.diff(background, axis=0)).mean()) if len(background) > 1 else 0.0,
    }


def conform(clip: ClipSource, streams: Streams, cfg: PrepareConfig) -> Prepared:
    """Check, select frames, resize and crop one clip's decoded streams; derive missing foregrounds."""
    if len(clip.masks) > cfg.max_fg:
        raise ClipError(clip.clip_id, f"has {len(clip.masks)} foreground layers, more than max_fg={cfg.max_fg}")
    for path, alpha in zip(clip.masks, streams.alphas, strict=True):
        check_alpha(clip.clip_id, alpha, path.name)
    idx, timing_error = frame_indices(clip.clip_id, len(streams.full), streams.fps, cfg)
    fit = lambda x: resize_crop(x[idx], cfg.height, cfg.width)  # noqa: E731
    full, background = fit(streams.full), fit(streams.background)
    alphas = [fit(a) for a in streams.alphas]
    fgs = [full * a[..., None] if f is None else fit(f) for f, a in zip(streams.foregrounds, alphas, strict=True)]
    stats = clip_stats(full, background, fgs, alphas)
    stats |= {
        "src_frames": len(streams.full),
        "src_height": streams.full.shape[1],
        "src_width": streams.full.shape[2],
        "src_fps": streams.fps,
        "fps": cfg.fps,
        "timing_error": timing_error,
        "fg_derived": any(f is None for f in streams.foregrounds),
    }
    return Prepared(
        clip=clip,
        full=to_uint8(full),
        background=to_uint8(background),
        foregrounds=[to_uint8(f) for f in fgs],
        alphas=[to_uint8(a) for a in alphas],
        stats=stats,
    )


def prepare_one(args: tuple[ClipSource, PrepareConfig]) -> Prepared | Reject:
    """Worker entry: one clip to a `Prepared`, or a `Reject` naming the rule it broke."""
    clip, cfg = args
    try:
        prepared = conform(clip, load_streams(clip), cfg)
    except ClipError as err:
        return Reject(clip_id=clip.clip_id, origin=clip.origin, rule=err.rule)
    prepared.stats["full_md5"] = hashlib.md5(clip.full.read_bytes()).hexdigest()  # finds one clip under two ids
    return prepared


def prepare_all(clips: list[ClipSource], cfg: PrepareConfig) -> Iterator[Prepared | Reject]:
    """Conform clips in `cfg.workers` processes, yielding results in input order."""
    jobs = [(clip, cfg) for clip in clips]
    if cfg.workers == 1 or len(jobs) < 2:
        yield from map(prepare_one, jobs)
        return
    with mp.get_context("fork").Pool(cfg.workers) as pool:
        yield from pool.imap(prepare_one, jobs, chunksize=8)


@dataclass(frozen=True, kw_only=True)
class PrepareResult:
    out: Path
    accepted: int
    rejected: int
    seconds: float
    reasons: dict[str, int]  # reject rule -> clips, most frequent first


class NothingPrepared(ValueError):
    """Every clip was rejected; `rejects.json` and the summary were written all the same."""


def run_prepare(source: Path, out: Path, cfg: PrepareConfig, text_encoder_path: Path | None = None) -> PrepareResult:
    """The whole prepare step; see the module docstring for what lands under `out`. `out` is checked before any
    work: it may not overlap the source, and an existing one must be an earlier prepare output."""
    check_output(out, OUTPUT_KIND, protect=(source,))
    start = time.perf_counter()
    clips, rejects = discover(source)
    prepared: list[Prepared] = []
    with progress() as bar:
        task = bar.add_task("prepare: conform clips", total=len(clips))
        for result in prepare_all(clips, cfg):
            (prepared if isinstance(result, Prepared) else rejects).append(result)
            bar.advance(task)
    reasons = reject_reasons(rejects)
    conform_seconds = round(time.perf_counter() - start, 2)
    summary = {"accepted": len(prepared), "rejected": len(rejects), "conform_seconds": conform_seconds}
    summary |= {"reasons": reasons}
    protect = (source, *(p for c in clips for p in (c.full, c.background, *c.masks)))
    write_outputs(out, prepared, rejects, cfg, text_encoder_path, summary, protect)
    seconds = time.perf_counter() - start
    if not prepared:
        lines = "\n".join(f"  {count} x {rule}" for rule, count in reasons.items())
        raise NothingPrepared(
            f"prepare: no usable clip under {source}; {len(rejects)} rejected:\n{lines}\n"
            f"every clip and its rule: {out / 'rejects.json'}"
        )
    return PrepareResult(out=out, accepted=len(prepared), rejected=len(rejects), seconds=seconds, reasons=reasons)
