"""The layered-video service as users meet it: real `layert2v serve` processes on loopback ports, driven over
HTTP (httpx). Generation to files whose alpha reads back and a bundle whose manifest matches; every validation
rule; auth; 429 on a full queue; a failing job leaves the service up; SIGKILL and SIGTERM lose no accepted job;
a promotion switches the served version between two jobs; recomposition equals `LayeredVideo.recomposite`;
path traversal and oversized uploads are refused."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from layert2v.cli import main
from layert2v.compose import LayeredVideo
from layert2v.io import read_rgba, read_video, write_video

from .conftest import ROOT, free_port, wait_healthy

SMALL = {"frames": 5, "height": 32, "width": 32, "steps": 2}
PROMPTS = {
    "prompt": "a red circle on grass",
    "background_prompt": "green grass",
    "foreground_prompts": ["a red circle"],
}
LONG = {"frames": 33, "height": 128, "width": 128, "steps": 200}  # seconds on the tiny model: a job to wait behind


def _params(tmp_path: Path, **serve) -> Path:
    raw = yaml.safe_load(subprocess.check_output([sys.executable, "-m", "layert2v.cli", "params", "--profile", "smoke"],
                                                 cwd=ROOT))  # fmt: skip
    raw["serve"] |= {"poll_seconds": 1.0} | serve
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@contextmanager
def serving(
    tmp_path: Path, *source: str, env: dict[str, str] | None = None, db: str | None = None, **serve
) -> Iterator[tuple[str, dict]]:
    """A `layert2v serve` process over `source` (`--model DIR` or `--root DIR`); yields its URL and how it was
    started, so a test can start it again on the same folder."""
    port = free_port()
    command = [sys.executable, "-m", "layert2v.cli", "serve", "--params", str(_params(tmp_path, **serve)),
               *source, "--out", str(tmp_path / "serve"), "--port", str(port), "--name", "test-replica",
               *(["--db", db] if db else [])]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})
    started = {"command": command, "env": environ, "log": tmp_path / f"serve-{port}.log"}
    _start(started)
    try:
        yield f"http://127.0.0.1:{port}", started
    finally:
        _stop(started["process"])  # the latest process: a test may have started it again


def _start(started: dict) -> subprocess.Popen:
    log = started["log"].open("ab")
    process = subprocess.Popen(started["command"], cwd=ROOT, env=started["env"], stdout=log, stderr=log)
    started["process"] = process
    url = f"http://127.0.0.1:{started['command'][started['command'].index('--port') + 1]}"
    try:
        wait_healthy(f"{url}/readyz", timeout=120)
    except TimeoutError:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(30)


def _wait(client: httpx.Client, job_id: str, states=("finished", "failed"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/generations/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['state']}")


def _submit(client: httpx.Client, **fields) -> str:
    response = client.post("/v1/generations", json=PROMPTS | SMALL | fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[httpx.Client]:
    """One service over the tiny model for the tests that only talk to it."""
    tmp = tmp_path_factory.mktemp("service")
    with serving(tmp, "--model", str(tiny_model), max_upload_mb=0.05) as (url, _), httpx.Client(base_url=url) as c:
        c.out = tmp / "serve"
        yield c


def test_a_generation_writes_layers_whose_alpha_reads_back_and_a_bundle_that_matches(service: httpx.Client) -> None:
    job = _wait(service, _submit(service, foreground_prompts=["a red circle", "a blue square"]))
    assert job["state"] == "finished" and job["model_version"] == "folder"
    assert job["progress"] == {"step": 2, "steps": 2}
    files = job["links"]["files"]
    assert {"full.mp4", "background.mp4", "foreground_1.mov", "foreground_2.webm", "foreground_2_png.zip"} <= set(files)
    full = service.get(files["full.mp4"])
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    movie = Path(job["id"] + ".mov")
    try:
        movie.write_bytes(service.get(files["foreground_1.mov"]).content)
        rgba = read_rgba(movie)
    finally:
        movie.unlink()
    layers = np.load(io.BytesIO(service.get(files["layers.npz"]).content))
    assert rgba.shape == (5, 32, 32, 4) and np.abs(rgba[..., 3].astype(int) - layers["alpha_0"]).max() <= 2
    bundle = zipfile.ZipFile(io.BytesIO(service.get(job["links"]["bundle"]).content))
    manifest = json.loads(bundle.read("layers.json"))
    assert sorted(bundle.namelist()) == sorted(files) and manifest["model_version"] == "folder"
    assert manifest["foreground_prompts"] == ["a red circle", "a blue square"] and manifest["job"] == job["id"]
    assert manifest["depth_order"] == "nearest first" and manifest["foreground_alpha"] == "straight"
    assert set(manifest["files"]) == set(files) - {"layers.json"}
    model = service.get("/v1/model").json()
    assert model["version"] == "folder" and model["backend"] == "torch" and model["max_foregrounds"] == 3
    metrics = service.get("/metrics").text
    assert 'layert2v_model_info{backend="torch",version="folder"} 1.0' in metrics
    assert "layert2v_queue_length" in metrics and 'layert2v_jobs{state="finished"}' in metrics
    assert 'layert2v_request_seconds_count{endpoint="/v1/generations",method="POST",status="202"}' in metrics
    assert 'layert2v_job_seconds_count{kind="generation",model_version="folder",state="finished"}' in metrics


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"background_prompt": None}, "background_prompt", "valid string"),
        ({"foreground_prompts": []}, "foreground_prompts", "at least 1 item"),
        ({"foreground_prompts": ["a", "b", "c", "d"]}, "foreground_prompts", "1..3 foreground prompts"),
        ({"foreground_prompts": ["a", " "]}, "foreground_prompts.1", "must be a non-empty string"),
        ({"frames": 6}, "frames", "frames must be 4k+1"),
        ({"frames": 37}, "frames", "frames must be <= 33"),
        ({"height": 30}, "height", "multiple of 16"),
        ({"width": 512}, "width", "width must be <= 256"),
        ({"steps": 0}, "steps", "steps must be in 1..200"),
        ({"guidance": 0.5}, "guidance", "greater than or equal to 1"),
        ({"composite_guidance": 2}, "composite_guidance", "less than or equal to 1"),
        ({"composite_sigma": 0}, "composite_sigma", "greater than 0"),
        ({"guidance_sigma": 1}, "guidance_sigma", "less than 1"),
        ({"guidance_every": 0}, "guidance_every", "greater than or equal to 1"),
        ({"guidance_every": 201}, "guidance_every", "guidance_every must be in 1..200"),
        ({"shape_guidance": -1}, "shape_guidance", "greater than or equal to 0"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"formats": ["avi"]}, "formats.0", "'mp4', 'mov', 'webm' or 'png'"),
        ({"negative": "x"}, "negative", "Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_every_field_is_validated_and_the_422_names_it(service: httpx.Client, change, field, message) -> None:
    response = service.post("/v1/generations", json=PROMPTS | SMALL | change)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert ".".join(str(part) for part in error["loc"][1:]) == field and message in error["msg"]


def test_files_are_served_by_recorded_name_only(service: httpx.Client) -> None:
    job = _wait(service, _submit(service))
    base = f"/v1/generations/{job['id']}"
    for name in ("..%2F..%2Fjobs.db", "..%2Fjobs.db", "layers.json%00", "%2Fetc%2Fpasswd", "jobs.db"):
        assert service.get(f"{base}/files/{name}").status_code == 404, name
    assert service.get("/v1/generations/..%2F..%2Fjobs.db/bundle").status_code == 404
    assert service.get("/v1/generations/0123/files/full.mp4").status_code == 404
    queued = _submit(service, **LONG)
    assert service.get(f"/v1/generations/{queued}/bundle").status_code in (404, 409)


def test_recomposition_is_layered_video_recomposite_with_a_new_background_and_order(service: httpx.Client) -> None:
    job = _wait(service, _submit(service, foreground_prompts=["a red circle", "a blue square"]))
    layers = np.load(io.BytesIO(service.get(job["links"]["files"]["layers.npz"]).content))
    background = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(background).save(png, format="PNG")
    response = service.post(
        "/v1/recompositions",
        data={"generation_id": job["id"], "order": "2"},
        files={"background": ("../../evil.png", png.getvalue(), "image/png")},
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["kind"] == "recomposition" and result["state"] == "finished"
    recomposed = np.load(io.BytesIO(service.get(result["links"]["files"]["layers.npz"]).content))
    f = lambda name: layers[name].astype(np.float32) / 255  # noqa: E731
    video = LayeredVideo(
        full=f("full"),
        background=f("background"),
        foregrounds=[f("fg_0"), f("fg_1")],
        alphas=[f("alpha_0"), f("alpha_1")],
    )
    expected = video.recomposite(np.broadcast_to(background / np.float32(255), (5, 32, 32, 3)), [1])
    assert np.array_equal(recomposed["full"], np.round(np.clip(expected, 0, 1) * 255).astype(np.uint8))
    assert recomposed["fg_0"].tolist() == layers["fg_1"].tolist() and "fg_1" not in recomposed.files
    full = read_video_bytes(service.get(result["links"]["files"]["full.mp4"]).content)
    assert np.abs(full.astype(int) - recomposed["full"]).mean() < 8  # H.264 of a noise background: lossy
    assert not [p for p in service.out.parent.rglob("*evil*")]  # the client's file name is never used

    wrong_size = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(wrong_size, format="PNG")
    for data, files, field in (
        ({"generation_id": job["id"], "order": "3"}, None, "order"),
        ({"generation_id": job["id"], "order": "1,1"}, None, "order"),
        ({"generation_id": job["id"]}, {"background": ("b.png", wrong_size.getvalue())}, "background"),
        ({"generation_id": job["id"]}, {"background": ("b.mp4", b"not a video at all")}, "background"),
    ):
        response = service.post("/v1/recompositions", data=data, files=files)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == field, response.text
    big = service.post("/v1/recompositions", data={"generation_id": job["id"]},
                       files={"background": ("b.png", b"0" * 60_000)})  # fmt: skip
    assert big.status_code == 413 and "max_upload_mb" in big.text
    assert not list((service.out / "uploads").iterdir())  # uploads are deleted once read


def read_video_bytes(data: bytes) -> np.ndarray:
    path = Path(f"recomposed-{os.getpid()}.mp4")
    try:
        path.write_bytes(data)
        return read_video(path)
    finally:
        path.unlink()


def test_regenerating_one_layer_keeps_the_others(service: httpx.Client) -> None:
    job = _wait(service, _submit(service, foreground_prompts=["a red circle", "a blue square"]))
    body = PROMPTS | {"foreground_prompts": ["a red circle", "a green star"], "steps": 2, "seed": 7}
    response = service.post("/v1/regenerations", json=body | {"generation_id": job["id"], "layer": "foreground_2"})
    assert response.status_code == 202, response.text
    result = _wait(service, response.json()["id"])
    assert result["state"] == "finished", result["error"]
    before = np.load(io.BytesIO(service.get(job["links"]["files"]["layers.npz"]).content))
    after = np.load(io.BytesIO(service.get(result["links"]["files"]["layers.npz"]).content))
    assert np.array_equal(before["fg_0"], after["fg_0"]) and np.array_equal(before["background"], after["background"])
    assert not np.array_equal(before["alpha_1"], after["alpha_1"])
    missing = service.post("/v1/regenerations", json=body | {"generation_id": job["id"], "layer": "foreground_3"})
    assert missing.status_code == 422 and "does not exist" in missing.text


def test_foregrounds_for_an_uploaded_background_and_a_decomposed_upload(service: httpx.Client) -> None:
    background = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(background).save(png, format="PNG")
    request = json.dumps(PROMPTS | SMALL)
    response = service.post("/v1/foregrounds", data={"request": request}, files={"background": ("bg", png.getvalue())})
    assert response.status_code == 202, response.text
    job = _wait(service, response.json()["id"])
    layers = np.load(io.BytesIO(service.get(job["links"]["files"]["layers.npz"]).content))
    assert job["state"] == "finished" and all(np.array_equal(frame, background) for frame in layers["background"])

    clip = Path(f"plain-{os.getpid()}.mp4")
    try:
        write_video(clip, layers["full"], 8)
        upload = clip.read_bytes()
    finally:
        clip.unlink()
    response = service.post("/v1/decompositions", data={"request": request}, files={"video": ("v.mp4", upload)})
    assert response.status_code == 202, response.text
    result = _wait(service, response.json()["id"])
    assert result["state"] == "finished", result["error"]
    decomposed = np.load(io.BytesIO(service.get(result["links"]["files"]["layers.npz"]).content))
    assert decomposed["full"].shape == (5, 32, 32, 3) and decomposed["alpha_0"].shape == (5, 32, 32)
    assert np.abs(decomposed["full"].astype(int) - layers["full"]).mean() < 8  # the upload, through H.264
    assert not list((service.out / "uploads").iterdir())  # an upload lives until its job ends

    bad = service.post("/v1/decompositions", data={"request": json.dumps(PROMPTS | {"steps": 0})},
                       files={"video": ("v.mp4", upload)})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "request", "steps"]
    still = service.post("/v1/decompositions", data={"request": request}, files={"video": ("v.png", png.getvalue())})
    assert still.status_code == 422 and "must be a video" in still.text


def test_auth_is_required_with_a_token_and_off_loopback(tmp_path: Path, tiny_model: Path) -> None:
    env = {"LAYERT2V_TOKEN": "s3cret-token"}
    with serving(tmp_path, "--model", str(tiny_model), env=env) as (url, _):
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200
        for path in ("/v1/model", "/metrics"):
            assert httpx.get(f"{url}{path}").status_code == 401
            assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert httpx.post(f"{url}/v1/generations", json=PROMPTS | SMALL).status_code == 401
    assert main(["serve", "--model", str(tiny_model), "--host", "0.0.0.0", "--out", str(tmp_path / "x")]) == 2


def test_a_full_queue_answers_429_and_a_failing_job_leaves_the_service_up(tmp_path: Path, tiny_model: Path) -> None:
    limits = {"queue_max": 2, "job_timeout_s": 1.0}
    with serving(tmp_path, "--model", str(tiny_model), **limits) as (url, _), httpx.Client(base_url=url) as client:
        accepted = [_submit(client, **LONG), _submit(client, **LONG)]
        full = client.post("/v1/generations", json=PROMPTS | SMALL)
        assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
        failed = _wait(client, accepted[0])
        assert failed["state"] == "failed" and "serve.job_timeout_s = 1 s" in failed["error"]
        _wait(client, accepted[1])
        ok = _wait(client, _submit(client))
        assert ok["state"] == "finished" and client.get("/healthz").status_code == 200


def test_sigkill_and_sigterm_lose_no_accepted_job(tmp_path: Path, tiny_model: Path) -> None:
    with serving(tmp_path, "--model", str(tiny_model)) as (url, started), httpx.Client(base_url=url) as client:
        done = _wait(client, _submit(client))
        queued = [_submit(client, frames=33, height=64, width=64, steps=60) for _ in range(3)]
        _wait(client, queued[0], states=("running",))
        started["process"].send_signal(signal.SIGKILL)
        started["process"].wait(30)
        _start(started)
        assert client.get(f"/v1/generations/{done['id']}/bundle").status_code == 200
        _wait(client, queued[0], states=("running", "finished"))
        started["process"].send_signal(signal.SIGTERM)
        assert started["process"].wait(60) == 0
        assert "Application shutdown complete" in started["log"].read_text()
        states = [client_state(tmp_path, job) for job in queued]
        assert set(states) <= {"queued", "finished"}, states  # a job running at SIGTERM went back to the queue
        log = started["log"].read_text()  # SIGTERM may land between two jobs: then none was running to requeue
        assert "requeued: the service is stopping" in log or states[0] == "finished", (states, log[-2000:])
        _start(started)
        assert all(_wait(client, job)["state"] == "finished" for job in queued)


def client_state(tmp_path: Path, job_id: str) -> str:
    from sqlalchemy import create_engine, text

    with create_engine(f"sqlite:///{tmp_path / 'serve' / 'jobs.db'}").connect() as db:
        return db.execute(text("select state from layert2v_jobs where id = :id"), {"id": job_id}).scalar_one()


def test_a_promotion_switches_the_served_version_between_two_jobs(
    tmp_path: Path, tiny_model: Path, smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layert2v.registry import promote, register

    metrics = {"coherence_db": 20.0, "colour_adherence": 0.7, "shape_adherence": 0.5}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    register(tiny_model, metrics, smoke, tmp_path, ROOT)
    promote(smoke.registry, tmp_path, actor="test")
    with serving(tmp_path, "--root", str(tmp_path)) as (url, _), httpx.Client(base_url=url) as client:
        first = _wait(client, _submit(client))
        assert first["model_version"] == "1" and client.get("/v1/model").json()["uri"] == "models:/layert2v/1"
        running = _submit(client, frames=33, height=64, width=64, steps=100)
        _wait(client, running, states=("running",))
        register(tiny_model, metrics | {"coherence_db": 21.0}, smoke, tmp_path, ROOT)
        assert promote(smoke.registry, tmp_path, actor="test").promote
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["model_version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _wait(client, running)["model_version"] == "1"  # never mid-job
        second = _wait(client, _submit(client))
        assert second["model_version"] == "2" and client.get("/v1/model").json()["version"] == "2"
        bundle = zipfile.ZipFile(io.BytesIO(client.get(second["links"]["bundle"]).content))
        assert json.loads(bundle.read("layers.json"))["model_uri"] == "models:/layert2v/2"


@pytest.fixture
def postgres() -> Iterator[callable]:
    """Fresh databases on the local PostgreSQL (`deploy/postgres.sh`, which `make test` runs), dropped after."""
    from sqlalchemy import create_engine, text

    base = subprocess.check_output(["bash", str(ROOT / "deploy" / "postgres.sh")], text=True).strip()
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    made = []

    def database(name: str) -> str:
        made.append(f"{name}_{os.getpid()}_{time.monotonic_ns()}")
        with admin.connect() as db:
            db.execute(text(f"CREATE DATABASE {made[-1]}"))
        return f"{base}/{made[-1]}"

    yield database
    with admin.connect() as db:
        for name in made:
            db.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def test_an_mlflow_server_on_postgresql_promotes_and_the_service_on_postgresql_follows(
    tmp_path: Path, tiny_model: Path, smoke, postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scale-out's parts that run here for real: `mlflow server` on PostgreSQL with an artifact root, register ->
    promote over HTTP, and the service, its jobs in PostgreSQL, switching to the promoted version."""
    from sqlalchemy import create_engine, text

    from layert2v.registry import promote, register

    port = free_port()
    mlflow_url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "mlflow.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres("mlflow"), "--artifacts-destination",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        wait_healthy(f"{mlflow_url}/health")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
        metrics = {"coherence_db": 20.0, "colour_adherence": 0.7, "shape_adherence": 0.5}
        register(tiny_model, metrics, smoke, tmp_path, ROOT)
        promote(smoke.registry, tmp_path, actor="test")
        jobs_db = postgres("jobs")
        env = {"MLFLOW_TRACKING_URI": mlflow_url}
        with serving(tmp_path, env=env, db=jobs_db) as (url, _), httpx.Client(base_url=url) as client:
            assert _wait(client, _submit(client))["model_version"] == "1"
            register(tiny_model, metrics | {"coherence_db": 21.0}, smoke, tmp_path, ROOT)
            assert promote(smoke.registry, tmp_path, actor="test").promote
            deadline = time.monotonic() + 60
            while client.get("/readyz").json()["model_version"] != "2" and time.monotonic() < deadline:
                time.sleep(0.5)
            job = _wait(client, _submit(client))
            assert job["model_version"] == "2" and job["state"] == "finished"
        with create_engine(jobs_db).connect() as db:
            versions = db.execute(text("select model_version from layert2v_jobs order by created")).scalars().all()
        assert versions == ["1", "2"]
    finally:
        server.terminate()
        server.wait(30)


def test_retention_deletes_old_jobs_then_the_oldest_over_the_disk_budget(tmp_path: Path) -> None:
    from dataclasses import replace

    from sqlalchemy import update

    from layert2v.config import load_params
    from layert2v.serving.jobs import JobStore, jobs
    from layert2v.serving.worker import Worker

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", "test")
    cfg = replace(load_params(ROOT / "params.yaml").serve, retention_hours=1.0, disk_budget_mb=2.5)
    worker = Worker(store, None, cfg, tmp_path, {})
    now, made = time.time(), []
    for age_hours in (30, 0.5, 0.4, 0.3, 0.2):  # oldest first; 1 MB each
        job_id = store.add("generation", {})
        store.finish(job_id, {"x.bin": "x.bin"}, "1")
        with store.engine.begin() as db:
            db.execute(update(jobs).where(jobs.c.id == job_id).values(finished=now - age_hours * 3600))
        (tmp_path / "jobs" / job_id).mkdir()
        (tmp_path / "jobs" / job_id / "x.bin").write_bytes(b"0" * 2**20)
        made.append(job_id)
    queued = store.add("generation", {})
    assert worker.cleanup() == made[:3]  # past retention, then the oldest until 2 MB remain
    assert [store.get(j) is None for j in made] == [True, True, True, False, False]
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == sorted(made[3:])
    assert store.get(queued).state == "queued"  # unfinished work is never cleaned


def test_replicas_on_one_database_never_share_a_job_and_take_over_a_dead_ones(tmp_path: Path) -> None:
    from sqlalchemy import update

    from layert2v.serving.jobs import JobStore, jobs

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first, second = JobStore(url, "replica-a"), JobStore(url, "replica-b")
    ids = [first.add("generation", {"n": i}) for i in range(3)]
    claimed = [first.claim(), second.claim(), first.claim()]
    assert sorted(job.id for job in claimed) == sorted(ids) and second.claim() is None
    assert second.requeue_stale(lease_s=60) == 0  # every worker reported just now
    with first.engine.begin() as db:
        db.execute(update(jobs).where(jobs.c.worker == "replica-a").values(heartbeat=time.time() - 600))
    assert second.requeue_stale(lease_s=60) == 2  # replica-a went silent: its two jobs go back to the queue
    assert {second.claim().id, second.claim().id} == {claimed[0].id, claimed[2].id}
    assert first.requeue_mine() == 0 and second.requeue_mine() == 3  # a restarted replica-b takes back its own


def test_serve_bf16_runs_the_torch_backends_under_autocast_and_says_so(tiny_model: Path) -> None:
    from dataclasses import replace

    from layert2v.config import load_params
    from layert2v.serving.source import FolderSource

    cfg = replace(load_params(ROOT / "params.yaml").serve, backend="torch", bf16=True)
    loaded = FolderSource(tiny_model).load("folder", cfg)
    assert loaded.backend == "torch (bf16)" and loaded.pipeline.bf16
    plain = FolderSource(tiny_model).load("folder", replace(cfg, bf16=False))
    assert plain.backend == "torch" and not plain.pipeline.bf16


def test_a_job_stored_before_a_sampler_field_existed_runs_with_its_default() -> None:
    """A queued job from an older version lacks the newer sampler fields: it resumes on `generate`'s defaults
    instead of failing on a missing key, and the fields it has are kept."""
    from layert2v.serving.service import _sampling

    old = {"frames": 5, "height": 32, "width": 32, "steps": 3, "guidance": 2.0, "composite_guidance": 0.5, "seed": 7}
    options = _sampling(old, on_step=None)
    assert options == old | {"on_step": None}  # guidance_sigma, _every and composite_sigma: generate's defaults
