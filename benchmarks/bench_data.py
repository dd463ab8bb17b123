"""Data throughput: synth clips/s, prepare clips/s, and prepare against pure decoding of the same files.

Run: `.venv/bin/python benchmarks/bench_data.py [--clips 200] [--repeats 3]` (default-profile clip size).
Each figure is the median of `repeats` runs, measured side by side in one process:
  synth      generate_dataset (render + H.264 encode), 2 processes
  scaler     read_video of every full and background stream in 1 process, one pixel-format scaler per clip
             (`io._decode`) against `frame.to_ndarray(format=)`, which sets a scaler up for every frame
  decode     load_streams of every clip (PyAV decode of every stream), 2 processes
  conform    prepare_all: decode + checks + frame pick + resize + stats, 2 processes
  prepare    run_prepare end to end: conform + text embeddings + cache and manifest writes
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import tempfile
from pathlib import Path

import av
import numpy as np
from timing import median_seconds

from layert2v.config import load_params
from layert2v.data.prepare import load_streams, prepare_all, run_prepare
from layert2v.data.synthetic import generate_dataset
from layert2v.data.vidlayer import discover
from layert2v.io import read_video

ROOT = Path(__file__).resolve().parents[1]


def decode_frame_by_frame(paths: list[Path]) -> None:
    """What `io._decode` did before it kept one scaler per clip: each frame's conversion sets up its own."""
    for path in paths:
        with av.open(str(path)) as container:
            np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def decode_only(clips: list, workers: int) -> None:
    with mp.get_context("fork").Pool(workers) as pool:
        list(pool.imap(load_streams, clips, chunksize=8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    synth = dataclasses.replace(params.synth, clips=args.clips)
    prep = params.prepare
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "vidlayer"
        t_synth = median_seconds(lambda: generate_dataset(synth, data, workers=2), args.repeats)
        clips, _ = discover(data)
        decode_only(clips, prep.workers)  # warm the page cache so every timing below reads from memory
        streams = [path for clip in clips for path in (clip.full, clip.background)]
        t_frame = median_seconds(lambda: decode_frame_by_frame(streams), args.repeats)
        t_clip = median_seconds(lambda: [read_video(path) for path in streams], args.repeats)
        t_decode = median_seconds(lambda: decode_only(clips, prep.workers), args.repeats)
        t_conform = median_seconds(lambda: list(prepare_all(clips, prep)), args.repeats)
        run_prepare(data, Path(tmp) / "warm", prep)  # loads the text encoder once, as a long run would
        t_prepare = median_seconds(lambda: run_prepare(data, Path(tmp) / "prepared", prep), args.repeats)
    n = args.clips
    print(
        f"clips: {n} ({synth.size}x{synth.size}, {synth.frames} frames, 1..{synth.max_fg} foregrounds), medians of {args.repeats}"
    )
    print(f"synth    {t_synth:7.2f} s  {n / t_synth:7.1f} clips/s")
    print(
        f"scaler   {t_clip:7.2f} s  one per clip, {t_frame:.2f} s one per frame: {t_frame / t_clip:.2f}x faster"
        f" ({len(streams)} streams, 1 process)"
    )
    print(f"decode   {t_decode:7.2f} s  {n / t_decode:7.1f} clips/s")
    print(f"conform  {t_conform:7.2f} s  {n / t_conform:7.1f} clips/s   conform / decode = {t_conform / t_decode:.2f}x")
    print(f"prepare  {t_prepare:7.2f} s  {n / t_prepare:7.1f} clips/s   prepare / decode = {t_prepare / t_decode:.2f}x")


if __name__ == "__main__":
    main()
