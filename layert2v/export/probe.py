"""Which backend is fastest on this host: a short probe, cached per CPU model and thread count (`hostcache`).

No fixed order is right on every CPU: onnxruntime ran a denoising step 1.31x faster than torch eager on a Zen 5
host and 0.82-0.93x as fast on an Intel Xeon of the same machine kind (docs/results.md, Export and backends).
`fastest` times a few denoising steps (batch 2, K = 1 and the model's K_max, the export's clip shape) on torch and
onnxruntime (each on torch's thread count) and keeps the faster; the verdict is cached keyed by CPU model, thread
count and the export's graph hashes, so a service or `generate` pays the probe once per host and model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from layert2v.export.folder import ClipShape, read_manifest
from layert2v.hostcache import CACHE_DIR, cached_verdict, median_seconds
from layert2v.models.layout import Layout

CACHE = CACHE_DIR / "backends.json"


def _subject(onnx: Path) -> str:
    """What the probe times: the export's graphs (their hashes)."""
    manifest = read_manifest(onnx)
    return json.dumps(manifest.get("sha256", manifest.get("files")), sort_keys=True)


def _step_seconds(pipeline, k: int, shape: ClipShape, repeats: int) -> float:
    """Median seconds of one denoising step of K = `k`, batch 2, after a warm-up call."""
    from layert2v.export.onnx import step_inputs

    inputs = step_inputs(pipeline.cfg, Layout(k), shape, batch=2, seed=0)
    if pipeline.denoiser is not None:
        call = lambda: pipeline.denoiser.run(k, inputs)  # noqa: E731
    else:
        call = lambda: pipeline.dit(*inputs.values())  # noqa: E731
    with torch.no_grad():
        return median_seconds(call, repeats, warmup=1)


def probe(model: Path, onnx: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds of one denoising step at K = 1 plus one at K = K_max, per CPU backend."""
    from layert2v.pipeline import LayerT2VPipeline

    shape = ClipShape(**read_manifest(onnx)["shape"])
    seconds = {}
    for backend in ("torch", "onnxruntime"):
        pipeline = LayerT2VPipeline.from_folder(model, backend=backend, onnx=onnx if backend != "torch" else None)
        seconds[backend] = sum(_step_seconds(pipeline, k, shape, repeats) for k in sorted({1, pipeline.cfg.max_fg}))
    return seconds


def fastest(model: Path, onnx: Path, cache: Path = CACHE) -> tuple[str, dict[str, float]]:
    """The faster CPU backend for `model` with its export `onnx` on this host, and the probe's seconds (cached)."""
    verdict = cached_verdict(cache, _subject(onnx), lambda: probe(model, onnx))
    return verdict["fastest"], verdict["seconds"]


def pick_backend(configured: str, model: Path, onnx: Path | None, cache: Path = CACHE) -> str:
    """`configured`, or for `auto` the best this host runs: TensorRT on a CUDA GPU with TensorRT installed, else the
    faster of onnxruntime and torch here (`fastest`) when the model has its ONNX graphs, else torch."""
    if configured != "auto":
        return configured
    if onnx is None or not Path(onnx).is_dir():
        return "torch"
    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    return fastest(Path(model), Path(onnx), cache)[0]
