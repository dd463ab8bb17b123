"""onnxruntime backend of `LayerT2VPipeline`: runs the exported denoising step in place of the PyTorch DiT.

Sessions are made lazily, one per K, with every graph optimisation on, one intra-op thread per core and no
spin-waiting between calls.
Execution providers: CUDA first when `onnxruntime-gpu` provides it (the `gpu` extra), else the CPU EP.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from layert2v.config import ModelConfig
from layert2v.export.onnx import GraphDenoiser

PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")


def session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An `InferenceSession` for `path`; `providers` default to the best of `PREFERRED` installed here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
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
        feed = {name: tensor.numpy() for name, tensor in inputs.items()}
        feed["latents"], feed["text"] = feed["latents"].astype(self.dtype), feed["text"].astype(self.dtype)
        feed["timestep"] = feed["timestep"].astype(np.float32)
        velocity = self._session(num_fg).run(["velocity"], feed)[0]
        return torch.from_numpy(velocity.astype(np.float32))
