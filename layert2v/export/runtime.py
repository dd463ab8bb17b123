"""The exported-graph backends of `LayerT2VPipeline`: they run the denoising step in place of the PyTorch DiT.

`GraphDenoiser` is what they share (the export folder, its manifest, the request check); `make_denoiser` picks
one by name. `OrtDenoiser` (onnxruntime) makes its sessions lazily, one per K, with every graph optimisation on,
torch's intra-op thread count (one per core, or what `OMP_NUM_THREADS` sets) and no spin-waiting between calls;
execution providers: CUDA first when `onnxruntime-gpu` provides it (the `gpu` extra), else the CPU EP.
`TrtDenoiser` runs TensorRT engines built from the same graphs (`tensorrt.py`; GPU only). onnxruntime and tensorrt
are imported only when used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from layert2v.config import ModelConfig
from layert2v.export.folder import INPUTS, TIMESTEP, ClipShape, read_manifest
from layert2v.export.tensorrt import build_engine, require_gpu
from layert2v.models.dit import layout_inputs, visible_positions
from layert2v.models.layout import Layout

Backend = Literal["torch", "compile", "onnxruntime", "tensorrt"]

PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")
TRT_PRECISIONS = ("fp32", "fp16")  # TensorRT parses no dynamically quantized (int8) graph


class GraphDenoiser(ABC):
    """What the onnxruntime and TensorRT backends share: the export folder, its manifest and the request check."""

    def __init__(self, folder: Path | str, cfg: ModelConfig, precision: str) -> None:
        self.folder, self.cfg, self.precision = Path(folder), cfg, precision
        self.manifest = read_manifest(self.folder)
        self.inputs = tuple(self.manifest["inputs"])  # an older export's graphs take fewer (`folder.INPUTS`)
        self.shape = ClipShape(**self.manifest["shape"])
        available = {p for per_k in self.manifest["files"].values() for p in per_k}
        if precision not in available:
            raise ValueError(f"{self.folder} has no {precision} graphs (it has: {sorted(available)})")

    def graph(self, num_fg: int) -> str:
        return self.manifest["files"][str(num_fg)][self.precision]

    def check(self, frames: int, height: int, width: int, num_fg: int) -> None:
        """Graphs have a fixed token count: a request for another clip size or K is an error, not a crash."""
        if ClipShape(frames, height, width) != self.shape:
            raise ValueError(
                f"the ONNX graphs in {self.folder} are for {self.shape.frames} frames of "
                f"{self.shape.height}x{self.shape.width}, not {frames} of {height}x{width}: export again"
            )
        if str(num_fg) not in self.manifest["files"]:
            raise ValueError(f"{self.folder} has no graph for K={num_fg} (has K in {sorted(self.manifest['files'])})")

    def forward_layout(
        self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, layout: Layout
    ) -> torch.Tensor:
        """What `LayerDiT.forward_layout` computes, by the exported graph for `layout.num_fg`; `timestep` `[B]` or
        `[B, L]` as there."""
        mask, layer_ids, instance_ids = layout_inputs(self.cfg, latents.shape, text_mask, layout)
        timestep = self._timesteps(timestep, layout)
        inputs = (latents, timestep, text, mask, layer_ids, instance_ids, visible_positions(mask))
        return self.run(layout.num_fg, dict(zip(INPUTS, inputs, strict=True)))

    def _timesteps(self, timestep: torch.Tensor, layout: Layout) -> torch.Tensor:
        """The timestep input the graphs take: `[B, L]`, or `[B]` for an export that predates per-segment timesteps
        (which then cannot take given layers clean)."""
        per_segment = timestep.reshape(len(timestep), -1).expand(-1, layout.num_segments)
        if self.manifest.get("timestep") == TIMESTEP:
            return per_segment.contiguous()
        if not (per_segment == per_segment[:, :1]).all():
            raise ValueError(f"the graphs in {self.folder} take one timestep per sample, not per segment: export again")
        return per_segment[:, 0].contiguous()

    def graph_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`inputs` (every name of `folder.INPUTS`) cut to those this export's graphs take."""
        return {name: inputs[name] for name in self.inputs}

    @abstractmethod
    def run(self, num_fg: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fp32 velocity `[B, C, T, H, W]` of the graph for K = `num_fg` on the named inputs of `folder.INPUTS`."""


def session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An `InferenceSession` for `path`; `providers` default to the best of `PREFERRED` installed here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # torch's count: the backend probe compares the two backends on the same threads, and a one-thread worker
    # (OMP_NUM_THREADS=1) gets one thread in both.
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Spinning workers keep the cores busy after each call, which starves the PyTorch work between denoising
    # steps (sampler, VAE decode) on a small machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    chosen = providers or [p for p in PREFERRED if p in available]
    return ort.InferenceSession(str(path), options, providers=chosen)


class OrtDenoiser(GraphDenoiser):
    """`forward_layout` of `LayerDiT`, answered by the ONNX graphs of an export folder."""

    def __init__(self, folder: Path | str, cfg: ModelConfig, precision: str = "fp32") -> None:
        super().__init__(folder, cfg, precision)
        self.dtype = np.float16 if precision == "fp16" else np.float32
        self.sessions: dict[int, object] = {}

    def _session(self, num_fg: int):
        if num_fg not in self.sessions:
            self.sessions[num_fg] = session(self.folder / self.graph(num_fg))
        return self.sessions[num_fg]

    def run(self, num_fg: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {name: tensor.numpy() for name, tensor in self.graph_inputs(inputs).items()}
        feed["latents"], feed["text"] = feed["latents"].astype(self.dtype), feed["text"].astype(self.dtype)
        feed["timestep"] = feed["timestep"].astype(np.float32)
        velocity = self._session(num_fg).run(["velocity"], feed)[0]
        return torch.from_numpy(velocity.astype(np.float32))


class TrtDenoiser(GraphDenoiser):
    """`forward_layout` of `LayerDiT`, answered by TensorRT engines built (or cached) from an export folder."""

    def __init__(self, folder: Path | str, cfg: ModelConfig, precision: str = "fp16", cache_dir: Path | None = None):
        if precision not in TRT_PRECISIONS:
            raise ValueError(f"TensorRT builds {' or '.join(TRT_PRECISIONS)} graphs, not {precision}: use onnxruntime")
        self.trt = require_gpu()
        super().__init__(folder, cfg, precision)
        self.cache_dir = Path(cache_dir) if cache_dir else self.folder / "engines"
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.contexts: dict[int, tuple[object, object]] = {}  # K -> (engine, execution context)

    def _context(self, num_fg: int):
        if num_fg not in self.contexts:
            name = self.graph(num_fg)
            plan = build_engine(
                self.folder / name, self.cache_dir, self.manifest["sha256"][name], self.manifest["max_batch"]
            )
            engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
            self.contexts[num_fg] = (engine, engine.create_execution_context())
        return self.contexts[num_fg]

    def run(self, num_fg: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        context = self._context(num_fg)[1]  # the engine stays referenced beside it
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        on_gpu = {
            name: tensor.to("cuda", dtype if name in ("latents", "text") else tensor.dtype).contiguous()
            for name, tensor in self.graph_inputs(inputs).items()
        }  # alive until synchronize()
        on_gpu["timestep"] = on_gpu["timestep"].float()
        for name, tensor in on_gpu.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        output = torch.empty(tuple(context.get_tensor_shape("velocity")), dtype=dtype, device="cuda")
        context.set_tensor_address("velocity", output.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the log above)")
        stream.synchronize()
        return output.float().cpu()


def make_denoiser(backend: Backend, graphs: Path, cfg: ModelConfig, precision: str | None) -> GraphDenoiser | None:
    """The exported-graph runtime of `backend` over the export folder `graphs` (None for the PyTorch backends)."""
    if backend in ("torch", "compile"):
        return None
    if backend == "onnxruntime":
        return OrtDenoiser(graphs, cfg, precision or "fp32")
    if backend == "tensorrt":
        return TrtDenoiser(graphs, cfg, precision or "fp16")
    raise ValueError(f"unknown backend {backend!r}: choose torch, compile, onnxruntime or tensorrt")
