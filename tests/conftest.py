"""Shared fixtures: the smoke profile, a smoke synthetic dataset and its prepared output (built once)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from layert2v.config import Params, load_params
from layert2v.data.prepare import PrepareResult, run_prepare
from layert2v.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]


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
