"""Output folders the platform writes: checked before any work, written beside, swapped in at the end.

A command that writes a folder (`data prepare --out`, `generate --out`, `data import`) must never destroy what
a user keeps there. The rules, in one place:
- the folder may not be, contain or sit inside a path the command reads (`protect`): replacing it would delete
  the source;
- a folder that exists and is not empty is replaced only when it is a previous output of the same kind
  (recognised by `is_ours`, by default the marker file this module writes) and the caller allows replacing;
- the new content is written into a fresh folder beside the target and swapped in by renames at the end, so an
  interrupted run leaves the old output whole and never a half-written one that looks complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

MARKER = ".layert2v-output.json"

T = TypeVar("T")


class OutputError(ValueError):
    """An output folder the platform refuses to write; the message names the folder and the rule."""


def marked_as(folder: Path, kind: str) -> bool:
    """True when `folder` holds this module's marker for an output of `kind`."""
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()).get("kind") == kind
    except (OSError, ValueError, AttributeError):
        return False


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(
    out: Path,
    kind: str,
    *,
    protect: tuple[Path, ...] = (),
    replace: bool = True,
    is_ours: Callable[[Path], bool] | None = None,
) -> None:
    """Raise `OutputError` unless `out` may receive a new output of `kind` (see the module docstring)."""
    target = out.resolve()
    for path in protect:
        source = path.resolve()
        if _inside(source, target) or _inside(target, source):
            raise OutputError(f"output folder {out} overlaps the input {path}; choose a folder outside it")
    for parent in [target, *target.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"output folder {out}: {parent} is a file, not a folder")
    if not target.exists() or not any(target.iterdir()):
        return
    ours = (is_ours or (lambda folder: marked_as(folder, kind)))(target)
    if not ours:
        raise OutputError(
            f"output folder {out} is not empty and holds no earlier {kind} output; refusing to replace it"
        )
    if not replace:
        raise OutputError(f"output folder {out} holds an earlier {kind} output; pass --overwrite to replace it")


def write_output(
    out: Path,
    kind: str,
    write: Callable[[Path], T],
    *,
    protect: tuple[Path, ...] = (),
    replace: bool = True,
    is_ours: Callable[[Path], bool] | None = None,
) -> T:
    """Check `out`, run `write(folder)` on a fresh folder beside it, mark it and swap it in; returns what
    `write` returned. The previous output (ours by `check_output`) is removed only after the swap."""
    check_output(out, kind, protect=protect, replace=replace, is_ours=is_ours)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        result = write(fresh)
        (fresh / MARKER).write_text(json.dumps({"kind": kind}) + "\n")
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)  # the folder this call created, never the target
        raise
    _swap(fresh, out)
    return result


def _swap(fresh: Path, out: Path) -> None:
    """Rename `fresh` to `out`; an existing `out` is renamed aside first and removed once `fresh` is in place."""
    if not out.exists():
        fresh.rename(out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    old.rmdir()
    out.rename(old)
    try:
        fresh.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old)  # the previous output, checked as ours before any work began
