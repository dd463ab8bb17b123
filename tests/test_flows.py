"""Prefect flows on a smoke repository: real Prefect (test harness and a real local server), real DVC."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from .conftest import ROOT, free_port, tree_md5, wait_healthy
from .test_dvc import copy_code, new_repo, run

pytest.importorskip("flows.pipeline")
from flows.pipeline import ingest


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def smoke_repo(tmp_path: Path) -> Path:
    repo = new_repo(tmp_path / "repo")
    copy_code(repo)
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # with profiles: the flow applies one
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "code"], repo)
    return repo


def _artifacts(flow_run_id) -> dict:
    import asyncio

    async def read() -> list:
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return {a.key: a for a in asyncio.run(read())}


@pytest.mark.slow
def test_ingest_flow_versions_prepares_and_gates(harness, smoke_repo: Path) -> None:
    state = ingest(repo=str(smoke_repo), source="synthetic", profile="smoke", return_state=True)
    assert state.is_completed(), state
    assert (smoke_repo / "data.dvc").is_file() and (smoke_repo / "artifacts/reports/data_gate.passed").is_file()
    artifacts = _artifacts(state.state_details.flow_run_id)
    gate = json.loads(artifacts["gate-validate"].data)
    assert all(row["passed"] for row in gate) and any("clip ids unique" in row["rule"] for row in gate)
    names = _task_run_names(state.state_details.flow_run_id)
    assert {"layert2v data synth", "dvc add data", "prepare", "validate"} <= names, names

    again = ingest(repo=str(smoke_repo), return_state=True)  # source "existing": the data as it is, nothing reruns
    assert again.is_completed(), again
    assert _task_run_names(again.state_details.flow_run_id) == {"dvc add data", "prepare", "validate"}


def _task_run_names(flow_run_id) -> set[str]:
    import asyncio

    async def read() -> list:
        async with get_client() as client:
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return {run.name for run in asyncio.run(read())}


@pytest.mark.slow
def test_ingest_of_a_folder_inside_the_data_folder_fails_and_loses_nothing(
    harness, smoke_repo: Path, smoke_data
) -> None:
    data = smoke_repo / "data" / "vidlayer"
    shutil.copytree(smoke_data, data)
    before = tree_md5(data)
    state = ingest(repo=str(smoke_repo), source="folder", source_path=str(data / "train"), return_state=True)
    assert state.is_failed() and "overlaps the input" in str(state.result(raise_on_failure=False))
    (smoke_repo / "a_file").write_text("not a folder")
    state = ingest(repo=str(smoke_repo), source="folder", source_path=str(smoke_repo / "a_file"), return_state=True)
    assert state.is_failed() and "neither a VidLayer folder nor a .jsonl" in str(state.result(raise_on_failure=False))
    assert tree_md5(data) == before


@pytest.mark.slow
def test_a_failing_gate_fails_the_flow_with_its_report(harness, smoke_repo: Path) -> None:
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    params["profiles"]["smoke"]["gate"]["min_clips"] = 10_000  # impossible
    (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    state = ingest(repo=str(smoke_repo), source="synthetic", profile="smoke", return_state=True)
    assert state.is_failed()
    gate = json.loads(_artifacts(state.state_details.flow_run_id)["gate-validate"].data)
    failing = [row for row in gate if not row["passed"]]
    assert failing and "at least 10000 clips" in failing[0]["rule"]
    assert not (smoke_repo / "artifacts/reports/data_gate.passed").exists()


@pytest.mark.slow
def test_served_deployment_runs_on_a_real_server(tmp_path: Path, smoke_repo: Path) -> None:
    """`prefect server start` on loopback, `flows/deploy.py` serving, a run triggered through the API client."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = None
    try:
        wait_healthy(f"{api}/health")
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.deploy", "--repo", str(smoke_repo)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        run_id = _trigger(api, "ingest/layert2v-ingest", {"profile": "smoke", "source": "synthetic"})
        state = _wait_final(api, run_id, timeout=300)
        assert state == "COMPLETED", state
        assert (smoke_repo / "artifacts/reports/data_gate.passed").is_file()
        _see_named_task_runs(f"http://127.0.0.1:{port}/runs/flow-run/{run_id}", tmp_path)
    finally:
        for proc in (served, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _see_named_task_runs(page_url: str, folder: Path) -> None:
    """The Prefect UI, in a real browser, lists the flow run's task runs under the names of their stages."""
    from playwright.sync_api import expect

    from .browser import browser_page, screenshot

    with browser_page() as page:
        page.goto(page_url)
        for name in ("layert2v data synth", "dvc add data", "prepare", "validate"):
            expect(page.get_by_text(name, exact=False).first).to_be_visible(timeout=60_000)
        screenshot(page, folder, "prefect-flow-run")


def _trigger(api: str, deployment: str, parameters: dict, timeout: float = 120):
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api) as client:
            deadline = time.monotonic() + timeout
            while True:  # the serve process registers the deployment shortly after it starts
                try:
                    found = await client.read_deployment_by_name(deployment)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(1)
            flow_run = await client.create_flow_run_from_deployment(found.id, parameters=parameters)
            return flow_run.id

    return asyncio.run(go())


def _wait_final(api: str, run_id, timeout: float) -> str:
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api) as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                flow_run = await client.read_flow_run(run_id)
                if flow_run.state and flow_run.state.is_final():
                    return flow_run.state.type.value
                await asyncio.sleep(2)
            return "TIMEOUT"

    return asyncio.run(go())
