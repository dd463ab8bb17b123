"""Import a VidLayer dataset into the versioned data folder (`data/vidlayer`), so that DVC versions all of it.

Two source forms, as `layert2v.data.vidlayer` reads them:
- a folder in the VidLayer folder layout: copied as it is;
- a jsonl manifest in the released form: the manifest *and every file it references* are copied, and the
  paths in the copy are rewritten relative to it. A relative path keeps its place under the new folder; an
  absolute one (or one that climbs out with `..`) goes under `external/<its absolute path>`. Folder and file
  names are kept, so every clip keeps its id and thereby its split.

The source is only read. The data folder is replaced through `layert2v.outputs.write_output`: checked first (it
may not overlap the source; an existing one must be an earlier import or the synthetic dataset), written beside
and swapped in at the end, so a failed import leaves the previous data whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from layert2v.outputs import marked_as, write_output

OUTPUT_KIND = "dataset"
SourceKind = Literal["folder", "jsonl"]
JSONL_PATHS = (("vid",), ("entry", "pha_video_path"), ("entry", "bg_path"))


@dataclass(frozen=True, kw_only=True)
class ImportResult:
    target: Path
    kind: SourceKind
    files: int  # files written under the target (manifest included)


def is_dataset_folder(folder: Path) -> bool:
    """An earlier import, or the synthetic generator's dataset (its `dataset.json` card says so)."""
    card = folder / "dataset.json"
    try:
        synthetic = json.loads(card.read_text()).get("source") == "synthetic"
    except (OSError, ValueError, AttributeError):
        synthetic = False
    return synthetic or marked_as(folder, OUTPUT_KIND)


def source_kind(source: Path, expected: SourceKind | None = None) -> SourceKind:
    """`folder` for a directory, `jsonl` for a `.jsonl` file; an error naming the path otherwise."""
    if not source.exists():
        raise FileNotFoundError(f"import source {source} does not exist")
    kind: SourceKind | None = "folder" if source.is_dir() else "jsonl" if source.suffix == ".jsonl" else None
    if kind is None:
        raise ValueError(f"import source {source} is neither a VidLayer folder nor a .jsonl manifest")
    if expected is not None and kind != expected:
        raise ValueError(f"import source {source} is a {kind}, not a {expected} as asked")
    return kind


def _field(row: dict, keys: tuple[str, ...]) -> str | None:
    value: object = row
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) and value else None


def referenced_files(manifest: Path) -> dict[Path, Path]:
    """Every existing file the manifest's lines name -> where it goes in the copy (relative to the manifest)."""
    base = manifest.parent.resolve()
    placed: dict[Path, Path] = {}
    for line in manifest.read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue  # prepare rejects the line with its rule; nothing to copy
        for keys in JSONL_PATHS if isinstance(row, dict) else ():
            name = _field(row, keys)
            source = (base / name).resolve() if name else None
            if source is not None and source.is_file():
                inside = base in source.parents
                placed[source] = source.relative_to(base) if inside else Path("external", *source.parts[1:])
    return placed


def _rewrite_line(line: str, base: Path, placed: dict[Path, Path]) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return line
    for keys in JSONL_PATHS if isinstance(row, dict) else ():
        name = _field(row, keys)
        source = (base / name).resolve() if name else None
        if source in placed:
            holder = row
            for key in keys[:-1]:
                holder = holder[key]
            holder[keys[-1]] = placed[source].as_posix()
    return json.dumps(row)


def _copy_jsonl(manifest: Path, folder: Path) -> int:
    placed = referenced_files(manifest)
    for source, relative in placed.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / relative)
    base = manifest.parent.resolve()
    lines = [_rewrite_line(line, base, placed) for line in manifest.read_text().splitlines() if line.strip()]
    (folder / manifest.name).write_text("\n".join(lines) + "\n")
    return len(placed) + 1


def _copy_folder(source: Path, folder: Path) -> int:
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return sum(1 for p in folder.rglob("*") if p.is_file())


def import_dataset(source: Path, target: Path, expected: SourceKind | None = None) -> ImportResult:
    """Copy `source` (a VidLayer folder or a jsonl manifest with its files) into `target`, replacing an earlier
    dataset there only once the copy is complete; see the module docstring."""
    kind = source_kind(source, expected)
    protect = (source, *(referenced_files(source) if kind == "jsonl" else ()))
    copy = _copy_folder if kind == "folder" else _copy_jsonl
    files = write_output(
        target, OUTPUT_KIND, lambda folder: copy(source, folder), protect=protect, is_ours=is_dataset_folder
    )
    return ImportResult(target=target, kind=kind, files=files)
