"""Which backend is fastest on this host, per K: a short probe, cached per CPU model and thread count (`hostcache`).

No fixed order is right on every CPU, nor for every K on one CPU: onnxruntime ran a denoising step 1.31x faster
than torch eager on a Zen 5 host and 0.82-0.93x as fast on an Intel Xeon of the same machine kind, and on an
AVX2-only Zen 3 graphs that still read the prompts' padding won at K = 1 (1.36x) and lost at K = 3 (0.91x)
(docs/results.md, Export and backends). `fastest` times a few guided denoising steps as `generate` runs them
(`guided_step`: prompts of a user's length and the null prompts, batch 2, the export's clip shape; every K the
export has graphs for) on torch and onnxruntime (each on torch's thread count) and keeps the faster at each K; each
K's verdict is cached keyed by CPU model, thread count, the export's graph hashes and K, so a service or `generate`
pays the probe once per host and model. `pick_backend` turns the verdicts into a `Choice`: the graphs for the Ks
where they won, the PyTorch DiT for the others.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layert2v.config import GRAPH_PRECISIONS, TORCH_PRECISIONS
from layert2v.export.folder import INPUTS, ClipShape, read_manifest
from layert2v.export.runtime import TRT_PRECISIONS
from layert2v.hostcache import CACHE_DIR, cached_verdict, median_seconds
from layert2v.models.dit import layout_inputs, visible_positions
from layert2v.models.layout import Layout
from layert2v.models.text import null_prompts

CACHE = CACHE_DIR / "backends.json"
# what the probe's step reads: prompts of the length users write (the docs' examples), the K foregrounds in turn
PROMPTS = ("a red circle and a blue star moving over navy stripes", "navy stripes with a still camera")
FOREGROUNDS = ("a red circle moving right", "a blue star moving left", "a green square", "a small yellow triangle")
# the precisions each backend runs (`runs_in`)
RUNS = {
    "torch": TORCH_PRECISIONS, "compile": TORCH_PRECISIONS, "onnxruntime": GRAPH_PRECISIONS, "tensorrt": TRT_PRECISIONS
}  # fmt: skip


@dataclass(frozen=True)
class Choice:
    """The backend a pipeline is built on, the precision it runs in (None: its default), and the Ks its PyTorch DiT
    answers in fp32 instead of `backend`'s graphs (where the probe timed eager faster at that K)."""

    backend: str
    eager_ks: frozenset[int] = field(default_factory=frozenset)
    precision: str | None = None

    def __str__(self) -> str:
        name = f"{self.backend} {self.precision}" if self.precision else self.backend
        if not self.eager_ks:
            return name
        return f"{name} (torch at K={','.join(map(str, sorted(self.eager_ks)))})"


def _subject(manifest: dict, k: int, precision: str) -> str:
    """What the probe times: the export's graphs (their hashes, from its `manifest`) in `precision`, at K = `k`, on
    `guided_step`'s prompts."""
    graphs = manifest.get("sha256", manifest.get("files"))
    subject = {"graphs": graphs, "k": k, "precision": precision, "prompts": [*PROMPTS, *FOREGROUNDS]}
    return json.dumps(subject, sort_keys=True)


def foreground_prompts(k: int) -> list[str]:
    """K foreground prompts: `FOREGROUNDS` in turn."""
    return [FOREGROUNDS[i % len(FOREGROUNDS)] for i in range(k)]


def guided_step(pipeline, k: int, shape: ClipShape) -> dict[str, torch.Tensor]:
    """The inputs (`folder.INPUTS`) of `generate`'s guided denoising step at K = `k`: `PROMPTS` and the null prompts,
    batch 2. Not random prompt lengths: both backends skip the positions no token sees, so the time depends on them."""
    cond = pipeline.encode_prompts([*PROMPTS, *foreground_prompts(k)])
    text, text_mask = (torch.cat(pair) for pair in zip(cond, null_prompts(*cond), strict=True))
    layout = Layout(k)
    latents = torch.randn(shape.latents(pipeline.cfg, layout, 2), generator=torch.Generator().manual_seed(0))
    timestep = torch.full((2, layout.num_segments), 500.0)
    mask, layer_ids, instance_ids = layout_inputs(pipeline.cfg, latents.shape, text_mask, layout)
    values = (latents, timestep, text, mask, layer_ids, instance_ids, visible_positions(mask))
    return dict(zip(INPUTS, values, strict=True))


def _step_seconds(pipeline, k: int, shape: ClipShape, repeats: int) -> float:
    """Median seconds of one guided denoising step of K = `k` (`guided_step`) after a warm-up call."""
    inputs = guided_step(pipeline, k, shape)
    if pipeline.denoiser is not None:
        call = lambda: pipeline.denoiser.run(k, inputs)  # noqa: E731
    else:
        call = lambda: pipeline.dit(*inputs.values())  # noqa: E731
    with torch.no_grad():
        return median_seconds(call, repeats, warmup=1)


def graph_ks(manifest: dict) -> list[int]:
    """The Ks an export folder (its `manifest`) has graphs for."""
    return sorted(int(k) for k in manifest["files"])


def probe(model: Path, onnx: Path, repeats: int = 3, precision: str = "fp32") -> dict[int, dict[str, float]]:
    """Seconds of one guided denoising step (`guided_step`) per K the export has graphs for, per CPU backend (the
    graphs in `precision`, the DiT in fp32)."""
    from layert2v.pipeline import LayerT2VPipeline

    manifest = read_manifest(onnx)
    shape = ClipShape(**manifest["shape"])
    seconds: dict[int, dict[str, float]] = {k: {} for k in graph_ks(manifest)}
    for backend in ("torch", "onnxruntime"):
        graphs = {"onnx": onnx, "precision": precision} if backend != "torch" else {}
        pipeline = LayerT2VPipeline.from_folder(model, backend=backend, **graphs)
        for k in seconds:
            seconds[k][backend] = _step_seconds(pipeline, k, shape, repeats)
    return seconds


def fastest(model: Path, onnx: Path, cache: Path = CACHE, precision: str = "fp32") -> dict[int, dict]:
    """Per K, the verdict of the faster CPU backend for `model` with its export `onnx` (graphs in `precision`) on
    this host (`fastest`, and the probe's `seconds` per backend), cached; one probe times every K a missing verdict
    needs."""
    measured = functools.cache(lambda: probe(model, onnx, precision=precision))
    manifest = read_manifest(onnx)
    return {
        k: cached_verdict(cache, _subject(manifest, k, precision), lambda k=k: measured()[k])
        for k in graph_ks(manifest)
    }


def choice(verdicts: dict[int, dict], precision: str | None = None) -> Choice:
    """onnxruntime (its graphs in `precision`) with the Ks torch won on the DiT, or torch where onnxruntime won at
    no K."""
    eager = frozenset(k for k, verdict in verdicts.items() if verdict["fastest"] == "torch")
    return Choice("torch") if eager == set(verdicts) else Choice("onnxruntime", eager, precision)


def runs_in(backend: str, precision: str | None) -> str | None:
    """`precision` where `backend` runs it (bf16 on the DiT; fp16 on the graphs, int8 on onnxruntime's), else None
    (the backend's default)."""
    return precision if precision in RUNS[backend] else None


def pick_backend(
    configured: str, model: Path, onnx: Path | None, cache: Path = CACHE, precision: str | None = None
) -> Choice:
    """`configured` in the asked `precision`, or for `auto` the best this host runs: TensorRT on a CUDA GPU with
    TensorRT installed, else at each K the faster of onnxruntime (its graphs in `precision` where it is a graph
    precision) and torch here (`fastest`) when the model has its ONNX graphs, else torch; `auto` runs the asked
    precision where the chosen backend has it (`runs_in`), fp32 elsewhere."""
    if configured != "auto":
        return Choice(configured, precision=precision)
    if onnx is None or not Path(onnx).is_dir():
        return Choice("torch", precision=runs_in("torch", precision))
    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None:
        return Choice("tensorrt", precision=runs_in("tensorrt", precision))
    graphs = runs_in("onnxruntime", precision)
    chosen = choice(fastest(Path(model), Path(onnx), cache, graphs or "fp32"), graphs)
    return chosen if chosen.backend != "torch" else Choice("torch", precision=runs_in("torch", precision))
