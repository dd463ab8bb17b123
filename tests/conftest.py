"""Shared fixtures: the smoke profile, a smoke synthetic dataset and its prepared output (built once)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from layert2v.config import Params, load_params, model_preset
from layert2v.data.prepare import PrepareResult, run_prepare
from layert2v.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_URIS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def mlflow_uris_stay_in_their_test() -> Iterator[None]:
    """`mlflow.set_tracking_uri` / `set_registry_uri` (called by `registry.register`) export the URI to the
    environment, where a later test's subprocesses (`dvc repro`) would find another test's store: undone after each."""
    saved = {name: os.environ.get(name) for name in MLFLOW_URIS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def smoke() -> Params:
    return load_params(ROOT / "params.yaml", "smoke")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory: pytest.TempPathFactory, smoke: Params) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "vidlayer"
    generate_dataset(smoke.synth, out, workers=2)
    return out


@pytest.fixture(scope="session")
def smoke_prepared(tmp_path_factory: pytest.TempPathFactory, smoke: Params, smoke_data: Path) -> PrepareResult:
    return run_prepare(smoke_data, tmp_path_factory.mktemp("prepared") / "out", smoke.prepare)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny-preset model folder: untrained, with a non-trivial velocity head (seeded)."""
    from layert2v.models.dit import LayerDiT
    from layert2v.models.text import load_text_encoder
    from layert2v.models.vae import LayerVAE
    from layert2v.pipeline import LayerT2VPipeline

    torch.manual_seed(0)
    cfg = model_preset("tiny")
    dit = LayerDiT(cfg)
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)
    pipeline = LayerT2VPipeline(dit, LayerVAE(cfg), load_text_encoder(None, cfg.text_len))
    return pipeline.save(tmp_path_factory.mktemp("tiny_model") / "m")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120) -> None:
    """Poll `url` until it answers 200 (a server started by a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy a folder into this test's tmp dir, so a test may break files without touching shared data."""

    def _copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return _copy


def tree_md5(root: Path) -> dict[str, str]:
    """Relative path -> md5 of every file under `root`: equal trees, byte for byte."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
