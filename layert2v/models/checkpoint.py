"""The model folder: what training stages and the pipeline write, and the one place that reads it back.

    config.json        {"vae": VAE sizes, "vae_lora_rank": r,            (every folder with a VAE)
                        "model": DiT sizes, "text_encoder": path}        (pipeline folders: stages 2-3 `model/`)
    vae.safetensors    the VAE, its alpha adapter and LoRA, latent statistics
    dit.safetensors    the LayerDiT

Weights are only ever read with safetensors. Whatever is wrong with a folder (a missing or truncated file, a
config that is not JSON or lacks a key, sizes that do not match the weights) is one `ModelFolderError` naming the
file and the rule, not a traceback (a missing file is a `FileNotFoundError` naming it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from layert2v.config import ModelConfig
from layert2v.models.dit import LayerDiT
from layert2v.models.vae import LayerVAE

CONFIG, VAE_WEIGHTS, DIT_WEIGHTS = "config.json", "vae.safetensors", "dit.safetensors"


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what is wrong with it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ModelFolderError(message)


def read_config(folder: Path | str) -> dict[str, Any]:
    """The folder's `config.json` as a mapping."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"model folder {folder} has no {CONFIG}: run the stage that writes it first")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path} is not valid JSON: {err}") from err
    _require(isinstance(config, dict), f"{path} must hold a JSON object")
    return config


def _sizes(config: dict[str, Any], key: str, path: Path) -> ModelConfig:
    _require(isinstance(config.get(key), dict), f"{path} has no '{key}' object (the {key} sizes)")
    try:
        return ModelConfig.from_json(config[key])
    except (TypeError, ValueError) as err:
        raise ModelFolderError(f"{path}: '{key}' is not a valid model config: {err}") from err


def model_config(folder: Path | str) -> ModelConfig:
    """The DiT's sizes, read without loading any weights (requests are checked against it first)."""
    return _sizes(read_config(folder), "model", Path(folder) / CONFIG)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"model folder {path.parent} has no {path.name}: run the stage that writes it first")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ModelFolderError(f"{path} is not a readable safetensors file (truncated?): {err}") from err


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """`load_state_dict`, with a disagreement summarised in one line instead of one line per tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        example = (
            f"{shapes[0]}: file {list(state[shapes[0]].shape)}, config {list(expected[shapes[0]].shape)}"
            if shapes
            else (missing or unexpected)[0]
        )
        raise ModelFolderError(
            f"{path} does not match the sizes in {CONFIG}: {len(shapes)} tensors of another shape, "
            f"{len(missing)} missing, {len(unexpected)} unexpected (e.g. {example})"
        )
    module.load_state_dict(state)


def save_vae(vae: LayerVAE, folder: Path) -> Path:
    """`vae.safetensors` and `config.json` (`vae`: the VAE's preset sizes, `vae_lora_rank`) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, folder / VAE_WEIGHTS)
    config = {"vae": dataclasses.asdict(vae.cfg), "vae_lora_rank": vae.lora_rank}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder / VAE_WEIGHTS


def load_vae(folder: Path) -> LayerVAE:
    """A VAE saved by `save_vae`."""
    config, path = read_config(folder), Path(folder) / CONFIG
    if isinstance(config.get("vae"), dict):
        config["vae"].setdefault("vae_arch", "wan")  # saved before the patch VAE existed: every VAE then was Wan
    vae = LayerVAE(_sizes(config, "vae", path))
    rank = config.get("vae_lora_rank", 8 if config.get("vae_lora") else 0)  # `vae_lora`: saved as a flag, rank 8
    _require(isinstance(rank, int) and rank >= 0, f"{path}: vae_lora_rank must be an integer >= 0, got {rank!r}")
    if rank:
        vae.add_decoder_lora(rank)
    _load_into(vae, _weights(Path(folder) / VAE_WEIGHTS), Path(folder) / VAE_WEIGHTS)
    return vae


KNOWN_SEGMENTS = ("replace", "clean")  # how a model conditions on given layers (`sampling.with_known`)


def save_pipeline(
    folder: Path,
    dit: LayerDiT,
    vae: LayerVAE,
    text_encoder: Path,
    known_segments: str = "replace",
    colour_words: dict[str, list[float]] | None = None,
) -> Path:
    """A pipeline folder: the VAE files, then the DiT's sizes and weights, the text encoder's path, how the DiT
    takes given layers (`known_segments`: "clean" when it was trained on clean given segments) and the colour words
    its training captions used (`colour_words`, name -> sRGB: `models.colour_words`; None reads prompts as written)."""
    _require(known_segments in KNOWN_SEGMENTS, f"known_segments must be one of {KNOWN_SEGMENTS}")
    save_vae(vae, folder)
    config = read_config(folder) | {
        "model": dataclasses.asdict(dit.cfg),  # the DiT's sizes (its text length may differ from the VAE preset)
        "text_encoder": str(text_encoder),
        "known_segments": known_segments,
    }
    if colour_words:
        config["colour_words"] = colour_words
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, folder / DIT_WEIGHTS)
    return folder


def load_dit(folder: Path | str) -> LayerDiT:
    """The LayerDiT of a pipeline folder (its `config.json` sizes, `dit.safetensors` weights)."""
    dit = LayerDiT(model_config(folder))
    _load_into(dit, _weights(Path(folder) / DIT_WEIGHTS), Path(folder) / DIT_WEIGHTS)
    return dit


def known_segments(folder: Path | str) -> str:
    """How the folder's DiT takes given layers: "clean" (trained, per-segment timesteps) or "replace"
    (sampling-only; folders from before trained conditioning)."""
    mode = read_config(folder).get("known_segments", "replace")
    _require(mode in KNOWN_SEGMENTS, f"{Path(folder) / CONFIG}: known_segments must be one of {KNOWN_SEGMENTS}")
    return mode


def text_encoder_path(folder: Path | str) -> Path | None:
    """The recorded text-encoder folder if it exists here, else None: the packaged default (same weights)."""
    recorded = read_config(folder).get("text_encoder")
    return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_dir() else None
