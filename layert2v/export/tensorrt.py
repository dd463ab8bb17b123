"""TensorRT backend: engines built from the exported ONNX graphs, run with the TensorRT Python API.

GPU only. `tensorrt` (the `gpu` extra) and a CUDA build of torch are imported lazily; without them, or
without a CUDA device, every entry point raises `TensorRTUnavailable` saying what is missing.

TensorRT 10/11 networks are strongly typed: precision comes from the ONNX file (`dit_kK_fp16.onnx` gives an
fp16 engine), there are no precision flags. One optimisation profile covers batch 1..max_batch (opt: the
largest, both guidance branches). An engine only runs on the TensorRT version and GPU that built it, so the
cache key is the graph's sha256, the TensorRT version and the GPU name.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from layert2v.export.folder import BATCHED, TEXT_POSITIONS


class TensorRTUnavailable(RuntimeError):
    """The tensorrt backend cannot run here (no package, no CUDA torch or no GPU)."""


def require_gpu():
    """The `tensorrt` module, after checking a CUDA device is usable from torch."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise TensorRTUnavailable(
            "the tensorrt backend needs the `gpu` extra (pip install 'layert2v[gpu]'): " + str(error)
        ) from error
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("the tensorrt backend needs a CUDA GPU and a CUDA build of torch; none found")
    return trt


def engine_key(onnx_sha256: str, trt_version: str, gpu_name: str) -> str:
    """File stem of a cached engine: graph hash, TensorRT version and GPU, each enough to invalidate it."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")
    return f"{onnx_sha256[:16]}-trt{trt_version}-{gpu}"


def build_engine(onnx_path: Path, cache_dir: Path, onnx_sha256: str, max_batch: int, workspace_gib: int = 4) -> Path:
    """The serialized engine for `onnx_path` under `cache_dir`, built once per key (see `engine_key`)."""
    trt = require_gpu()
    key = engine_key(onnx_sha256, trt.__version__, torch.cuda.get_device_name())
    engine = Path(cache_dir) / f"{onnx_path.stem}-{key}.plan"
    if engine.is_file():
        return engine
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    profile = builder.create_optimization_profile()
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    for name, tensor in inputs.items():
        if name in BATCHED:
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
        elif name == TEXT_POSITIONS:  # 1 .. every position of the (static) text input
            positions = inputs["text"].shape[1]
            profile.set_shape(name, (1,), (positions,), (positions,))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(bytes(plan))
    return engine
