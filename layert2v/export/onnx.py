"""ONNX export of one LayerDiT denoising step, and the parity gate against PyTorch.

One graph per number of foregrounds K (1..max_fg): the token count and the layer layout depend on K, the
batch does not (dynamic, 1..`max_batch`, so both guidance branches run in one call). Graph inputs are those
of `LayerDiT.forward`:

    latents [B, C, T, H, W]  timestep [B, L] (0..1000 per segment, fp32)  text [B, S, D_text]
    cross_mask bool [B, N, S]  layer_ids int64 [N]  instance_ids int64 [N]  text_positions int64 [S']
                                                                              ->  velocity [B, C, T, H, W]

`models.dit.layout_inputs` builds the mask and the ids from a `Layout` and the prompts' text mask, and
`visible_positions` the text positions some token sees (S' dynamic: the graph skips the prompts' padding). The
exporter is torch's dynamo exporter (`torch.export` + onnxscript); every file is checked with `onnx.checker`. The
16-bit graph is the model cast to fp16 before export (timestep stays fp32), so TensorRT's strongly typed build and
onnxruntime both compute in the precision the file states. The int8 graph is the fp32 graph with its weights
quantized (`quantize_step`), for onnxruntime on CPUs: not exact, and faster where fp32 GEMMs bound the step.

An export folder holds `manifest.json` (shapes, opset, files per K, checksums) and the `.onnx` files; the
parity gate writes `parity.json` (the figures) and `gate.json` / `gate.md` (its report) beside them or to a
reports folder (DVC keeps metrics outside the folder it caches).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from layert2v.config import ExportConfig, ModelConfig
from layert2v.export.folder import BATCHED, INPUTS, TEXT_POSITIONS, TIMESTEP, ClipShape, graph_name, read_manifest
from layert2v.export.runtime import TRT_PRECISIONS, GraphDenoiser, make_denoiser
from layert2v.models.checkpoint import load_dit
from layert2v.models.dit import LayerDiT, layout_inputs, visible_positions
from layert2v.models.layout import Layout
from layert2v.quality.report import GateFailed, GateReport, run_metric_gate

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def step_inputs(cfg: ModelConfig, layout: Layout, shape: ClipShape, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded inputs of one denoising step: noise-like latents, a random timestep per sample on every segment but
    those one editing task gives (0 there, in the first sample: the conditional input), random text states and
    prompts of random lengths (the first token always real, as the tokenizer guarantees), and the text positions
    their tokens see."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(shape.latents(cfg, layout, batch), generator=generator)
    timestep = (torch.rand(batch, 1, generator=generator) * 1000).repeat(1, layout.num_segments)
    tasks = list(layout.editing_tasks().values())
    timestep[0, tasks[seed % len(tasks)]] = 0.0
    text = torch.randn(batch, layout.num_prompts * cfg.text_len, cfg.text_dim, generator=generator)
    lengths = torch.randint(1, cfg.text_len + 1, (batch, layout.num_prompts, 1), generator=generator)
    text_mask = torch.arange(cfg.text_len)[None, None] < lengths
    mask, layer_ids, instance_ids = layout_inputs(cfg, latents.shape, text_mask, layout)
    positions = visible_positions(mask)
    return dict(zip(INPUTS, (latents, timestep, text, mask, layer_ids, instance_ids, positions), strict=True))


def _cast(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Latents and text in `dtype`; the timestep stays fp32 (fp16 cannot tell t = 999.7 from 999.5)."""
    return {k: v.to(dtype) if k in ("latents", "text") else v for k, v in inputs.items()}


def export_step(dit: LayerDiT, num_fg: int, shape: ClipShape, path: Path, precision: str, cfg: ExportConfig) -> Path:
    """Write the denoising step for K = `num_fg` to `path` and check it with `onnx.checker`."""
    import onnx
    from torch.export import Dim

    dtype = PRECISIONS[precision]
    model = copy.deepcopy(dit).eval().to(dtype)
    example = _cast(step_inputs(dit.cfg, Layout(num_fg), shape, cfg.max_batch, seed=0), dtype)
    batch = Dim("batch", min=1, max=cfg.max_batch)
    dynamic = {name: ({0: batch} if name in BATCHED else None) for name in INPUTS}
    dynamic[TEXT_POSITIONS] = {0: Dim("positions", min=1, max=example["text"].shape[1])}
    program = torch.onnx.export(
        model,
        tuple(example.values()),
        dynamo=True,
        opset_version=cfg.opset,
        dynamic_shapes=dynamic,
        input_names=list(INPUTS),
        output_names=["velocity"],
        verbose=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def quantize_step(fp32: Path, path: Path) -> Path:
    """Write the int8 graph of the fp32 step `fp32` to `path` and check it: onnxruntime's dynamic quantization of
    every MatMul and Gemm weight, per output channel, activations quantized on each call. Weights keep 7 bits
    (`reduce_range`): CPUs without VNNI sum pairs of u8 x s8 products in 16 bits, which full-range weights overflow
    (the velocity off by 16% of its norm on an AVX2 host, against 1.7% with 7 bits: docs/results.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
        op_types_to_quantize=["MatMul", "Gemm"],
    )  # fmt: skip
    onnx.checker.check_model(str(path), full_check=True)
    return path


def write_step(dit: LayerDiT, num_fg: int, shape: ClipShape, out: Path, precision: str, cfg: ExportConfig) -> Path:
    """The graph for K = `num_fg` in `precision` under `out`: exported from the model, or for int8 quantized from
    its fp32 graph (written first)."""
    path = out / graph_name(num_fg, precision)
    if precision == "int8":
        return quantize_step(out / graph_name(num_fg, "fp32"), path)
    return export_step(dit, num_fg, shape, path, precision, cfg)


def parity(dit: LayerDiT, denoiser: GraphDenoiser, num_fg: int, cfg: ExportConfig) -> dict[str, float]:
    """Max and mean abs difference of `denoiser`'s graph for K = `num_fg` against the fp32 PyTorch step, and the
    relative error (the norm of the difference over the norm of PyTorch's velocity), over `parity_samples` seeded
    input sets at every batch size 1..max_batch."""
    model, worst, total, count, scale = dit.eval().float(), 0.0, 0.0, 0, 0.0
    squared, reference = 0.0, 0.0
    for seed in range(cfg.parity_samples):
        for batch in range(1, cfg.max_batch + 1):
            inputs = step_inputs(dit.cfg, Layout(num_fg), denoiser.shape, batch, seed=1000 + seed)
            with torch.no_grad():
                expected = model(*inputs.values())
            diff = (denoiser.run(num_fg, inputs) - expected).abs()
            worst, total, count = max(worst, diff.max().item()), total + diff.sum().item(), count + diff.numel()
            scale = max(scale, expected.abs().max().item())
            squared, reference = squared + diff.square().sum().item(), reference + expected.square().sum().item()
    return {
        "max_abs": worst,
        "mean_abs": total / count,
        "rel_error": (squared / reference) ** 0.5,
        "reference_max_abs": scale,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_model(
    model_dir: Path, out: Path, shape: ClipShape, cfg: ExportConfig, reports: Path | None = None
) -> GateReport:
    """Export every K of the pipeline folder `model_dir` into `out` with its manifest, then run the parity
    gate (its files go to `reports`, default `out`; see `parity_gate`)."""
    dit = load_dit(model_dir)
    precisions = ["fp32", *(["fp16"] if cfg.fp16 else []), *(["int8"] if cfg.int8 else [])]
    files = {
        str(k): {p: write_step(dit, k, shape, out, p, cfg).name for p in precisions}
        for k in range(1, dit.cfg.max_fg + 1)
    }
    manifest = {
        "opset": cfg.opset,
        "max_batch": cfg.max_batch,
        "shape": asdict(shape),
        "inputs": list(INPUTS),
        "timestep": TIMESTEP,
        "files": files,
        "sha256": {name: _sha256(out / name) for per_k in files.values() for name in per_k.values()},
        "dit_sha256": _sha256(Path(model_dir) / "dit.safetensors"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return parity_gate(dit, out, cfg, reports=reports)


def parity_gate(
    dit: LayerDiT, folder: Path, cfg: ExportConfig, backend: str = "onnxruntime", reports: Path | None = None
) -> GateReport:
    """Parity of every graph in the export folder on `backend`; writes `parity.json` (figures; `_trt` suffixed
    for TensorRT) and the gate report `gate.json` / `.md` under `reports` (default `folder`), and raises
    `GateFailed` after writing them when a graph is off by more than its tolerance (max abs: `tolerance` for fp32,
    `fp16_tolerance` for 16-bit; relative error: `int8_tolerance` for int8, whose quantized activations put a few
    values far off on any input; TensorRT builds no int8 graph)."""
    manifest, figures, limits = read_manifest(folder), {}, {}
    suffix = "" if backend == "onnxruntime" else "_trt"
    gated = {
        "fp32": ("max_abs", cfg.tolerance), "fp16": ("max_abs", cfg.fp16_tolerance),
        "int8": ("rel_error", cfg.int8_tolerance),
    }  # fmt: skip
    precisions = {p for per_k in manifest["files"].values() for p in per_k}
    for precision in sorted(precisions if backend == "onnxruntime" else precisions & set(TRT_PRECISIONS)):
        denoiser = make_denoiser(backend, folder, dit.cfg, precision)
        for num_fg in sorted(int(k) for k in manifest["files"]):
            prefix = f"k{num_fg}_{precision}{suffix}"
            figures |= {f"{prefix}_{key}": v for key, v in parity(dit, denoiser, num_fg, cfg).items()}
            figure, limit = gated[precision]
            limits[f"{prefix}_{figure}"] = limit
    reports = Path(reports or folder)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"parity{suffix}.json").write_text(json.dumps(dict(sorted(figures.items())), indent=2) + "\n")
    gate = reports / f"gate{suffix}.json"
    report = run_metric_gate(f"{backend} parity gate", figures, {}, gate, maximums=limits)
    if not report.passed:
        raise GateFailed(report, gate)
    return report
