"""The prepare output format, and its writer: the uint8 training cache, the text-embedding cache, the manifest,
the rejects and the summary.

Layout and dtypes are described in `layert2v.data.prepare`. The folder is written through
`layert2v.outputs.write_output`: beside the target first and swapped in at the end, so an interrupted prepare
never leaves a half cache that looks complete, and a folder that is not an earlier prepare output (or that holds
the source) is refused before any work.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from layert2v.config import PrepareConfig
from layert2v.data.vidlayer import SPLITS, ClipSource, Reject
from layert2v.outputs import write_output

CACHE_FILES = ("full", "background", "foreground", "alpha")
OUTPUT_KIND = "prepare"


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A conformed clip: uint8 arrays ready for the cache plus its manifest statistics."""

    clip: ClipSource
    full: np.ndarray
    background: np.ndarray
    foregrounds: list[np.ndarray]
    alphas: list[np.ndarray]
    stats: dict


def rejects_json(rejects: list[Reject]) -> str:
    return json.dumps([asdict(r) for r in sorted(rejects, key=lambda r: r.clip_id)], indent=2) + "\n"


def reject_reasons(rejects: list[Reject]) -> dict[str, int]:
    """How many clips broke each rule, most frequent first; numbers in a rule are folded so that "has 3 frames"
    and "has 4 frames" count as one reason."""
    counts = Counter(re.sub(r"\d+(\.\d+)?", "N", r.rule) for r in rejects)
    return dict(counts.most_common())


def _write_split(folder: Path, clips: list[Prepared]) -> list[dict]:
    """Stack one split's arrays into .npy files; returns each clip's cache indices."""
    folder.mkdir(parents=True)
    np.save(folder / "full.npy", np.stack([c.full for c in clips]))
    np.save(folder / "background.npy", np.stack([c.background for c in clips]))
    np.save(folder / "foreground.npy", np.stack([f for c in clips for f in c.foregrounds]))
    np.save(folder / "alpha.npy", np.stack([a for c in clips for a in c.alphas]))
    rows, start = [], 0
    for row, clip in enumerate(clips):
        rows.append({"cache_row": row, "layer_start": start})
        start += len(clip.foregrounds)
    return rows


def _write_text(folder: Path, captions: list[str], cfg: PrepareConfig, encoder_path: Path | None) -> list[int]:
    """Encode the unique captions once; returns the token count of each."""
    from layert2v.models.text import load_text_encoder

    encoder = load_text_encoder(encoder_path, cfg.max_tokens, cfg.text_pooled)
    states, mask = encoder.encode(captions)
    folder.mkdir(parents=True)
    np.save(folder / "states.npy", states.astype(np.float16))
    np.save(folder / "mask.npy", mask)
    (folder / "captions.json").write_text(json.dumps(captions, indent=0) + "\n")
    meta = {
        "encoder": str(encoder.path.name),
        "dim": encoder.dim,
        "max_tokens": cfg.max_tokens,
        "pooled": cfg.text_pooled,
    }
    (folder / "encoder.json").write_text(json.dumps(meta, indent=2) + "\n")
    return encoder.count_tokens(captions)


def _manifest_row(clip: Prepared, ids: dict[str, int], tokens: list[int], cfg: PrepareConfig) -> dict:
    src = clip.clip
    fg_ids = [ids[c] for c in src.captions_foreground]
    return {
        "clip_id": src.clip_id,
        "split": src.split,
        "source": src.source,
        "origin": src.origin,
        "num_fg": len(clip.foregrounds),
        "frames": clip.full.shape[0],
        "height": clip.full.shape[1],
        "width": clip.full.shape[2],
        **clip.stats,
        "caption_full": src.caption_full,
        "caption_background": src.caption_background,
        "captions_foreground": json.dumps(src.captions_foreground),
        "tokens_full": tokens[ids[src.caption_full]],
        "tokens_background": tokens[ids[src.caption_background]],
        "tokens_foreground_max": max(tokens[i] for i in fg_ids),
        "text_full": ids[src.caption_full],
        "text_background": ids[src.caption_background],
        "text_foreground": json.dumps(fg_ids),
        "attributes": json.dumps(src.attributes, sort_keys=True),
    }


def write_outputs(
    out: Path,
    prepared: list[Prepared],
    rejects: list[Reject],
    cfg: PrepareConfig,
    encoder_path: Path | None,
    summary: dict,
    protect: tuple[Path, ...] = (),
) -> None:
    """Write cache, text embeddings, manifest, rejects and summary under `out` (replacing an older prepare);
    `protect` are the sources, which `out` may not overlap."""

    def write(folder: Path) -> None:
        if prepared:
            _write_cache(folder, prepared, cfg, encoder_path)
        (folder / "rejects.json").write_text(rejects_json(rejects))
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    write_output(out, OUTPUT_KIND, write, protect=protect)


def _write_cache(tmp: Path, prepared: list[Prepared], cfg: PrepareConfig, encoder_path: Path | None) -> None:
    captions = sorted(
        {c for p in prepared for c in (p.clip.caption_full, p.clip.caption_background, *p.clip.captions_foreground)}
    )
    ids = {caption: i for i, caption in enumerate(captions)}
    tokens = _write_text(tmp / "text", captions, cfg, encoder_path)
    rows = []
    for split in SPLITS:
        clips = [p for p in prepared if p.clip.split == split]
        if clips:
            cache_rows = _write_split(tmp / "cache" / split, clips)
            rows += [_manifest_row(c, ids, tokens, cfg) | r for c, r in zip(clips, cache_rows, strict=True)]
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(tmp / "manifest.parquet", index=False)
