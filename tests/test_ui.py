"""The MLflow UI in a real browser shows what the chain records: an evaluation preview one click away, the finished
parent run with its lineage tags and dataset. (The Prefect UI's named task runs: tests/test_flows.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from layert2v import io, tracking
from layert2v.evaluate import log_evaluation

from .browser import browser_page, screenshot
from .conftest import free_port, wait_healthy


def _chain_store(root: Path) -> dict[str, str]:
    """What a chain leaves in MLflow, written by the library calls the chain makes: the `pipeline` run (lineage,
    dataset), an `evaluate` run with a preview and its report, the parent ended by promotion."""
    train, out = root / "train", root / "eval"
    parent = tracking.open_parent_run(train, root, "layert2v")
    rows = {"full": np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)}
    io.contact_sheet(rows, out / "previews" / "clip_0001.png")
    (out / "metrics.json").write_text(json.dumps({"coherence_db": 21.9}))
    for name in ("gate.json", "gate.md", "samples.json"):
        (out / name).write_text("{}")
    evaluation = log_evaluation(root, "layert2v", train, {"coherence_db": 21.9}, out, True)
    tracking.end_parent_run(train, root, "FINISHED")
    return {"parent": parent, "evaluate": evaluation, "experiment": tracking.experiment_id(root, "layert2v")}


@pytest.fixture
def mlflow_ui(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = _chain_store(tmp_path)
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health")
        yield url, runs
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_ui_shows_the_evaluation_preview_and_the_finished_parent_run(mlflow_ui, tmp_path: Path) -> None:
    url, runs = mlflow_ui
    with browser_page() as page:
        page.goto(f"{url}/#/experiments/{runs['experiment']}/runs/{runs['evaluate']}/artifacts/previews/clip_0001.png")
        page.wait_for_function("() => [...document.images].some(i => i.src.startsWith('blob:') && i.naturalWidth > 0)")
        screenshot(page, tmp_path, "mlflow-evaluation-preview")

        page.goto(f"{url}/#/experiments/{runs['experiment']}/runs/{runs['parent']}")
        # the parent run ended, its child listed; lineage tags and the dataset on it
        for words in ("Finished", "evaluate", "git_commit", "git_dirty", "data_version", "vidlayer"):
            expect(page.get_by_text(words, exact=False).first).to_be_visible(timeout=60_000)
        screenshot(page, tmp_path, "mlflow-pipeline-run")
