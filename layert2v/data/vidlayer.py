"""The VidLayer on-disk layouts: write the folder layout, read it and the released jsonl form.

Folder layout (docs/design.md), one folder a clip, optionally under a split folder::

    <root>/[<split>/]<clip_id>/metadata.json  full_video.mp4  background.mp4
                               mask.mp4 [mask_2.mp4 ...]  [foreground.mp4 foreground_2.mp4 ...]

`metadata.json` holds `captions.{full, background, foreground, foregrounds}`; as in the released code,
`paths.{full_video, background_video, mask_video}` name the files when the local ones are absent.

jsonl layout (the released training manifest), one object a line::

    {"vid": ".../full.mp4", "entry": {"pha_video_path": ".../mask.mp4", "bg_path": ".../bg.mp4"},
     "overall_description": "...", "foreground_prompt": "...", "background_prompt": "..."}

Reading never decodes video: it only resolves paths and captions into `ClipSource` records, and a
clip whose description is unusable becomes a `Reject` naming the clip and the rule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layert2v.io import write_mask, write_video

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class ClipSource:
    """Where one clip's streams live and what its captions say; no pixels."""

    clip_id: str
    split: str
    source: str  # "synthetic", "vidlayer-folder" or "vidlayer-jsonl"
    origin: str  # the folder or jsonl line it came from, for error messages
    full: Path
    background: Path
    masks: list[Path]  # one per foreground layer, nearest first
    foregrounds: list[Path | None]  # premultiplied fg per layer; None: derive full * mask
    caption_full: str
    caption_background: str
    captions_foreground: list[str]
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Reject:
    """A clip left out, and why."""

    clip_id: str
    origin: str
    rule: str


class ClipError(ValueError):
    """A clip that breaks a rule; carries the clip id so reports can name it."""

    def __init__(self, clip_id: str, rule: str) -> None:
        super().__init__(f"clip {clip_id}: {rule}")
        self.clip_id = clip_id
        self.rule = rule


def layer_name(stem: str, k: int) -> str:
    """`mask.mp4`, `mask_2.mp4`, ...: layer k (1-based) of a stream kind."""
    return f"{stem}.mp4" if k == 1 else f"{stem}_{k}.mp4"


def write_clip(
    folder: Path,
    *,
    metadata: dict,
    full: np.ndarray,
    background: np.ndarray,
    foregrounds: list[np.ndarray],
    alphas: list[np.ndarray],
    fps: int,
) -> None:
    """Write one clip in the folder layout (uint8 arrays, RGB `[T, H, W, 3]`, alpha `[T, H, W]`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    write_video(folder / "full_video.mp4", full, fps)
    write_video(folder / "background.mp4", background, fps)
    for k, (fg, alpha) in enumerate(zip(foregrounds, alphas, strict=True), start=1):
        write_video(folder / layer_name("foreground", k), fg, fps)
        write_mask(folder / layer_name("mask", k), alpha, fps)


def hashed_split(clip_id: str) -> str:
    """A stable split for data that names none: 90 / 5 / 5 by a hash of the clip id."""
    bucket = int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < 5 else "val" if bucket < 10 else "train"


def _caption(value: object, clip_id: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ClipError(clip_id, f"caption '{what}' is missing or empty")
    return value.strip()


def _pick(folder: Path, local: str, remote: object) -> Path:
    """The local file when present, else the path the metadata names (relative to the clip folder)."""
    path = folder / local
    if path.exists() or not isinstance(remote, str) or not remote:
        return path
    remote_path = Path(remote)
    return remote_path if remote_path.is_absolute() else folder / remote_path


def read_folder_clip(folder: Path) -> ClipSource:
    """Parse one clip folder; `ClipError` when its metadata is unusable (files are checked on decode)."""
    clip_id = folder.name
    try:
        meta = json.loads((folder / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ClipError(clip_id, f"metadata.json is unreadable ({err})") from err
    clip_id = str(meta.get("clip_id", clip_id))
    captions = meta.get("captions")
    if not isinstance(captions, dict):
        raise ClipError(clip_id, "metadata.json has no 'captions' object")
    paths = meta.get("paths") or {}
    fg_captions = captions.get("foregrounds") or [captions.get("foreground")]
    fg_captions = [_caption(c, clip_id, f"foregrounds[{i}]") for i, c in enumerate(fg_captions)]
    masks = [_pick(folder, layer_name("mask", 1), paths.get("mask_video"))]
    masks += [folder / layer_name("mask", k) for k in range(2, len(fg_captions) + 1)]
    foregrounds = [folder / layer_name("foreground", k) for k in range(1, len(fg_captions) + 1)]
    split = meta.get("split") or (folder.parent.name if folder.parent.name in SPLITS else hashed_split(clip_id))
    if split not in SPLITS:
        raise ClipError(clip_id, f"split '{split}' is not one of {SPLITS}")
    return ClipSource(
        clip_id=clip_id,
        split=split,
        source=meta.get("source", "vidlayer-folder"),
        origin=str(folder),
        full=_pick(folder, "full_video.mp4", paths.get("full_video")),
        background=_pick(folder, "background.mp4", paths.get("background_video")),
        masks=masks,
        foregrounds=[p if p.exists() else None for p in foregrounds],
        caption_full=_caption(captions.get("full"), clip_id, "full"),
        caption_background=_caption(captions.get("background"), clip_id, "background"),
        captions_foreground=fg_captions,
        attributes=meta.get("attributes") or {},
    )


def _jsonl_clip(line: str, where: str, base: Path) -> ClipSource:
    try:
        row = json.loads(line)
        entry = row["entry"]
        full, mask, bg = Path(row["vid"]), Path(entry["pha_video_path"]), Path(entry["bg_path"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ClipError(where, f"jsonl line lacks vid / entry.pha_video_path / entry.bg_path ({err!r})") from err
    clip_id = f"{full.parent.name}_{full.stem}" if full.parent.name else full.stem
    resolve = lambda p: p if p.is_absolute() else base / p  # noqa: E731
    return ClipSource(
        clip_id=clip_id,
        split=row.get("split") or hashed_split(clip_id),
        source="vidlayer-jsonl",
        origin=where,
        full=resolve(full),
        background=resolve(bg),
        masks=[resolve(mask)],
        foregrounds=[None],
        caption_full=_caption(row.get("overall_description"), clip_id, "overall_description"),
        caption_background=_caption(row.get("background_prompt"), clip_id, "background_prompt"),
        captions_foreground=[_caption(row.get("foreground_prompt"), clip_id, "foreground_prompt")],
    )


def read_jsonl(path: Path) -> tuple[list[ClipSource], list[Reject]]:
    """Every line of a released-format jsonl manifest; relative paths resolve against its folder."""
    clips, rejects = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            clips.append(_jsonl_clip(line, where, path.parent))
        except ClipError as err:
            rejects.append(Reject(clip_id=err.clip_id, origin=where, rule=err.rule))
    return clips, rejects


def discover(source: Path) -> tuple[list[ClipSource], list[Reject]]:
    """All clips under a folder-layout root, or in a jsonl manifest, sorted by clip id."""
    if not source.exists():
        raise FileNotFoundError(f"VidLayer source {source} does not exist")
    if source.is_file():
        clips, rejects = read_jsonl(source)
    else:
        clips, rejects = [], []
        for meta in sorted(source.rglob("metadata.json")):
            try:
                clips.append(read_folder_clip(meta.parent))
            except ClipError as err:
                rejects.append(Reject(clip_id=err.clip_id, origin=str(meta.parent), rule=err.rule))
        for manifest in sorted(source.rglob("*.jsonl")):
            more, bad = read_jsonl(manifest)
            clips += more
            rejects += bad
        if not clips and not rejects:
            raise FileNotFoundError(
                f"VidLayer source {source} holds no clip: no <clip>/metadata.json and no *.jsonl manifest under it"
            )
    seen: set[str] = set()
    unique = []
    for clip in sorted(clips, key=lambda c: c.clip_id):
        if clip.clip_id in seen:
            rejects.append(Reject(clip_id=clip.clip_id, origin=clip.origin, rule="duplicate clip id"))
            continue
        seen.add(clip.clip_id)
        unique.append(clip)
    return unique, rejects
