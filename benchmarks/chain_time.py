"""Where a finished chain's time went: each DVC stage's wall time, read from a `make run` (or `dvc repro`) folder.

Run: `.venv/bin/python benchmarks/chain_time.py --root <folder>`.
The stages run one after another in `dvc.yaml`'s order, so a stage ran from the moment the stage before it had
written its last output to the moment it wrote its own last output (the newest modification time under its
`outs` and `metrics`); the first stage starts when the data it reads was last written (`--data`, the synthetic
set: its generation is not counted). A stage DVC found up to date wrote nothing, so it reads as `cached` and its
time counts as zero. Training stages add their step count (`train.<stage>.max_steps` of the folder's
`params.yaml`) and median step (`perf.json`). The line the issues quote, prepare to the end of stage 3, is the sum
of the stages from `prepare` through `stage3_multifg`. It reads a chain that ran end to end (a fresh `make run`):
where a later `dvc repro` re-ran only some stages, the first of them also counts the pause before it.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import yaml

FIRST, LAST = "prepare", "stage3_multifg"  # the span the chain-time goals are stated over


def output_paths(stage: dict) -> list[str]:
    """The paths a `dvc.yaml` stage writes: its `outs` and `metrics` entries (a string or `{path: options}`)."""
    entries = [*stage.get("outs", []), *stage.get("metrics", [])]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def newest_mtime(path: Path) -> float | None:
    """The latest modification time of a file or of any file under a folder; None when nothing is there."""
    if path.is_file():
        return path.stat().st_mtime
    times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return max(times, default=None)


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def stage_times(root: Path, data: Path, stages: dict[str, dict]) -> list[dict]:
    """One row per stage of `stages` (`dvc.yaml`'s, in order): name, end (epoch seconds or None) and seconds (None
    when cached)."""
    previous = newest_mtime(root / data)
    if previous is None:
        raise FileNotFoundError(f"{root / data} holds no files: give the data the first stage reads with --data")
    rows = []
    for name, stage in stages.items():
        ends = [t for t in (newest_mtime(root / p) for p in output_paths(stage)) if t is not None]
        end = max(ends, default=None)
        ran = end is not None and end > previous
        rows.append({"stage": name, "end": end, "seconds": end - previous if ran else None})
        previous = max(previous, end or previous)
    return rows


def step_figures(root: Path, stage: dict, params: dict) -> tuple[int, float] | None:
    """A training stage's configured steps and measured median step (seconds), when both are on disk; None for a
    stage that writes no `artifacts/train/<stage>` folder."""
    folders = [Path(p) for p in output_paths(stage) if Path(p).parent == Path("artifacts/train")]
    if not folders:
        return None
    key = folders[0].name
    perf = root / folders[0] / "perf.json"
    steps = params.get("train", {}).get(key, {}).get("max_steps")
    if steps is None or not perf.is_file():
        return None
    return int(steps), float(json.loads(perf.read_text())["perf/step_s"])


def span_minutes(rows: list[dict], first: str = FIRST, last: str = LAST) -> float:
    """Minutes of the stages from `first` through `last` (cached ones count zero)."""
    names = [row["stage"] for row in rows]
    chosen = rows[names.index(first) : names.index(last) + 1]
    return sum(row["seconds"] or 0.0 for row in chosen) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="a folder where `make run` finished")
    parser.add_argument("--data", type=Path, default=Path("data/vidlayer"), help="what the first stage reads")
    args = parser.parse_args()
    stages, params = read_yaml(args.root / "dvc.yaml")["stages"], read_yaml(args.root / "params.yaml")
    rows = stage_times(args.root, args.data, stages)
    print(f"{args.root.resolve()}\n| stage | finished | minutes | steps x median step |\n|---|---|---|---|")
    for row in rows:
        end = datetime.fromtimestamp(row["end"]).strftime("%Y-%m-%d %H:%M:%S") if row["end"] else "-"
        minutes = "cached" if row["seconds"] is None else f"{row['seconds'] / 60:.1f}"
        figures = step_figures(args.root, stages[row["stage"]], params)
        steps = f"{figures[0]} x {figures[1]:.3f} s" if figures else ""
        print(f"| {row['stage']} | {end} | {minutes} | {steps} |")
    print(f"\n{FIRST} to the end of {LAST}: {span_minutes(rows):.1f} min")


if __name__ == "__main__":
    main()
