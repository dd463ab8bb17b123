"""The export folder format, shared by the exporter (`onnx.py`) and the runtimes (`runtime.py`, `tensorrt.py`).

manifest.json           {"opset", "max_batch", "shape": ClipShape, "inputs": INPUTS, "timestep": TIMESTEP,
                         "files": {K: {precision: graph file}}, "sha256": {file: hash}, "dit_sha256"}
dit_k<K>.onnx           the fp32 denoising step for K foregrounds
dit_k<K>_fp16.onnx      its 16-bit graph
dit_k<K>_int8.onnx      its weights in int8 (onnxruntime on CPUs)
engines/                TensorRT engines built from them (GPU hosts)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from layert2v.config import ModelConfig
from layert2v.models.layout import Layout

INPUTS = ("latents", "timestep", "text", "cross_mask", "layer_ids", "instance_ids", "text_positions")
BATCHED = ("latents", "timestep", "text", "cross_mask")
# `[S']` long, its length dynamic: the text positions the cross-attention reads (`dit.visible_positions`), so a
# graph skips the prompts' padding as eager torch does; exports whose manifest lacks it read every position
TEXT_POSITIONS = "text_positions"
TIMESTEP = "per_segment"  # graphs take `[B, L]` timesteps (0 on given layers); exports without this key take `[B]`


@dataclass(frozen=True)
class ClipShape:
    """Pixel size of the clips a graph is exported for (the token count is fixed in the graph)."""

    frames: int
    height: int
    width: int

    def latents(self, cfg: ModelConfig, layout: Layout, batch: int) -> tuple[int, ...]:
        return layout.latents_shape(batch, cfg.latent_channels, self.frames, self.height, self.width, cfg.vae_cell)


def graph_name(num_fg: int, precision: str) -> str:
    return f"dit_k{num_fg}.onnx" if precision == "fp32" else f"dit_k{num_fg}_{precision}.onnx"


def read_manifest(folder: Path) -> dict:
    """The manifest of an export folder; a missing one names the command that writes it."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `layert2v export onnx` first")
    return json.loads(path.read_text())
