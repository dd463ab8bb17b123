"""The layered-video HTTP service (`layert2v serve`): FastAPI over the job store and the worker.

Endpoints (JSON; docs/serving.md has examples):
- `POST /v1/generations` -> 202 and a job id; `GET /v1/generations/{id}` -> state, progress, model version, links;
  `GET /v1/generations/{id}/files/{name}` -> one file; `GET /v1/generations/{id}/bundle` -> every file in one zip.
- `POST /v1/regenerations` -> 202: one layer of a finished generation sampled anew, the others kept.
- `POST /v1/foregrounds` (multipart: `request` JSON, `background` file) -> 202: foregrounds for that background;
  `POST /v1/decompositions` (multipart: `request` JSON, `video` file) -> 202: the layers of a plain video.
- `POST /v1/recompositions` (multipart: a generation id, a new depth order, optionally a background image or
  video) -> 201: the layers composited again, without sampling, as a new layered result.
- `GET /v1/model`, `GET /healthz` (the process), `GET /readyz` (a model is loaded), `GET /metrics` (Prometheus).

Every field is validated with bounds and a 422 names it; a full queue gets 429 with Retry-After; uploads are
bounded in bytes, frames and pixels, checked by decoding, and stored under names the service makes; a file is
served only by a name the job recorded. With a token set, `/v1/*` and `/metrics` need `Authorization: Bearer`.
"""

from __future__ import annotations

import hmac
import math
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from layert2v.compose import FORMATS, LayeredVideo
from layert2v.config import Request as GenerationDefaults
from layert2v.config import ServeConfig
from layert2v.editing import Given
from layert2v.io import to_uint8
from layert2v.pipeline import RequestError, check_request
from layert2v.serving import uploads
from layert2v.serving.jobs import FINISHED, QUEUED, RUNNING, Job, JobStore
from layert2v.serving.metrics import Metrics
from layert2v.serving.schema import OPTIONAL
from layert2v.serving.uploads import unprocessable
from layert2v.serving.worker import BUNDLE, Worker, load_layers

JOB_ID = r"^[0-9a-f]{32}$"
Prompt = Annotated[str, Field(min_length=1, max_length=2000)]


class GenerationIn(BaseModel):
    """A generation request: the pyfunc's record fields plus the layer file formats to write."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    background_prompt: Prompt
    foreground_prompts: list[Prompt] = Field(min_length=1, max_length=8)
    frames: int = GenerationDefaults.frames
    height: int = GenerationDefaults.height
    width: int = GenerationDefaults.width
    steps: int = GenerationDefaults.steps
    guidance: float = Field(GenerationDefaults.guidance, ge=1.0, le=50.0)
    guidance_sigma: float = Field(GenerationDefaults.guidance_sigma, ge=0.0, lt=1.0)
    guidance_every: int = Field(GenerationDefaults.guidance_every, ge=1)
    shape_guidance: float = Field(GenerationDefaults.shape_guidance, ge=0.0, le=50.0)
    composite_guidance: float = Field(GenerationDefaults.composite_guidance, ge=0.0, le=1.0)
    composite_sigma: float = Field(GenerationDefaults.composite_sigma, gt=0.0, le=1.0)
    seed: int = Field(GenerationDefaults.seed, ge=0, le=2**63 - 1)
    formats: list[Literal[FORMATS]] = Field(default=list(FORMATS), min_length=1, max_length=4)


class RegenerationIn(GenerationIn):
    """One layer of a finished generation sampled anew from these prompts; sizes come from that generation."""

    generation_id: str = Field(pattern=JOB_ID)
    layer: str = Field(pattern=r"^(background|foreground_[1-8])$")


@dataclass
class Settings:
    out: Path  # jobs, downloaded model versions and the default SQLite job database live here
    cfg: ServeConfig
    db_url: str | None = None  # default: sqlite:///<out>/jobs.db
    token: str | None = None  # bearer token; None: no authentication (loopback only, the CLI enforces it)
    worker_name: str = "layert2v"


def _links(job: Job) -> dict[str, Any]:
    base = f"/v1/generations/{job.id}"
    links = {"self": base}
    if job.state == FINISHED:
        links |= {"bundle": f"{base}/bundle", "files": {name: f"{base}/files/{name}" for name in job.files or {}}}
    return links


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "progress": {"step": job.step, "steps": job.steps},
        "model_version": job.model_version,
        "error": job.error,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "links": _links(job),
    }


class Api:
    """The routes, over one job store and one worker; `create_app` binds them."""

    def __init__(self, source, settings: Settings) -> None:
        self.settings, self.cfg = settings, settings.cfg
        self.out = Path(settings.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.db_url or f"sqlite:///{self.out.resolve() / 'jobs.db'}", settings.worker_name)
        handlers = {
            "generation": _generate,
            "regeneration": _regenerate,
            "foregrounds": _foregrounds,
            "decomposition": _decompose,
        }
        self.worker = Worker(self.store, source, self.cfg, self.out, handlers)
        self.metrics = Metrics(self.store, self.worker)
        self.worker.on_job_done = self.metrics.job_done
        self.admitting = threading.Lock()  # count and add as one step: requests run on a thread pool

    # ------------------------------------------------------------ helpers

    def auth(self, request: Request) -> None:
        if self.settings.token is None:
            return
        header = request.headers.get("authorization", "")
        if not hmac.compare_digest(header.encode(), f"Bearer {self.settings.token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    def finished_job(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.state != FINISHED:
            raise HTTPException(409, f"job {job_id} is {job.state}, not finished")
        return job

    def admit(self, kind: str, request: dict[str, Any], steps: int) -> JSONResponse:
        """Accept a job into the database, or 429 with an estimated wait when `serve.queue_max` are unfinished."""
        with self.admitting:
            counts = self.store.counts()
            if counts[QUEUED] + counts[RUNNING] >= self.cfg.queue_max:
                wait = math.ceil(self.worker.timing.mean() * (counts[QUEUED] + 1))
                raise HTTPException(429, f"the queue is full ({self.cfg.queue_max} jobs)", {"Retry-After": str(wait)})
            job = self.store.get(self.store.add(kind, request, steps=steps))
        self.worker.wake.set()
        return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/generations/{job.id}"})

    def admit_with_frames(self, kind: str, body: GenerationIn, frames: np.ndarray) -> JSONResponse:
        """`admit` a job whose input frames were uploaded: kept as `<out>/uploads/<name>.npy` until it ends."""
        name = f"{uuid.uuid4().hex}.npy"
        np.save(self.out / "uploads" / name, frames)
        try:
            return self.admit(kind, body.model_dump() | {"upload": name}, body.steps)
        except HTTPException:
            (self.out / "uploads" / name).unlink()
            raise

    def model_checked(self, body: GenerationIn, frames: int, height: int, width: int, where: str = "") -> None:
        """`check_request` against the serving model; a 422 names the field (`where`: `request.` in a form)."""
        loaded = self.worker.loaded
        if loaded is None:
            raise HTTPException(503, "no model is loaded yet", {"Retry-After": "5"})
        request = GenerationDefaults(
            body.prompt, body.background_prompt, body.foreground_prompts, frames, height, width, body.steps,
            body.guidance, body.guidance_sigma, body.composite_guidance, body.composite_sigma, body.seed,
            body.guidance_every, body.shape_guidance,
        )  # fmt: skip
        try:
            check_request(loaded.pipeline.cfg, request, self.cfg.limits())
        except RequestError as err:
            raise unprocessable(where + err.field, str(err)) from err

    # ------------------------------------------------------------ health, model, metrics

    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    def readyz(self) -> JSONResponse:
        loaded = self.worker.loaded
        if loaded is None:
            return JSONResponse({"ready": False, "error": self.worker.load_error}, status_code=503)
        return JSONResponse({"ready": True, "model_version": loaded.version})

    def prometheus(self):
        return self.metrics.response()

    def model(self) -> dict[str, Any]:
        loaded, pending = self.worker.loaded, self.worker.pending
        if loaded is None:
            raise HTTPException(503, f"no model is loaded yet ({self.worker.load_error or 'loading'})")
        return {
            "version": loaded.version,
            "uri": loaded.uri,
            "backend": loaded.backend,
            "loading": pending.version if pending else None,
            "preset": loaded.pipeline.cfg.name,
            "max_foregrounds": loaded.pipeline.cfg.max_fg,
            "limits": vars(self.cfg.limits()),
        }

    # ------------------------------------------------------------ jobs

    def create_generation(self, body: GenerationIn) -> JSONResponse:
        self.model_checked(body, body.frames, body.height, body.width)
        return self.admit("generation", body.model_dump(), body.steps)

    def create_regeneration(self, body: RegenerationIn) -> JSONResponse:
        layers = load_layers(self.worker.folder(self.finished_job(body.generation_id)))
        count = len(layers.foregrounds)
        self.model_checked(body, *layers.full.shape[:3])
        if body.layer != "background" and int(body.layer.split("_")[1]) > count:
            raise unprocessable("layer", f"layer {body.layer} does not exist: the generation has {count} foreground(s)")
        if len(body.foreground_prompts) != count:
            raise unprocessable("foreground_prompts", f"the generation has {count} foreground(s); give one prompt each")
        return self.admit("regeneration", body.model_dump(), body.steps)

    async def create_foregrounds(
        self, request: Annotated[str, Form(max_length=20_000)], background: Annotated[UploadFile, File()]
    ) -> JSONResponse:
        """New foreground layer(s) for an uploaded background (a still or a video of the request's size)."""
        body = form_body(request)
        self.model_checked(body, body.frames, body.height, body.width, "request.")
        async with uploads.saved(background, self.out, "background", self.cfg) as path:
            rgb = await run_in_threadpool(
                uploads.read_background, path, "background", body.frames, body.height, body.width
            )
        return self.admit_with_frames("foregrounds", body, to_uint8(rgb))

    async def create_decomposition(
        self, request: Annotated[str, Form(max_length=20_000)], video: Annotated[UploadFile, File()]
    ) -> JSONResponse:
        """Background and foreground layers of an uploaded plain video (its own size and frame count)."""
        body = form_body(request)
        async with uploads.saved(video, self.out, "video", self.cfg) as path:
            frames = await run_in_threadpool(uploads.read_clip, path, "video", self.cfg)
        self.model_checked(body, *frames.shape[:3], "request.")
        return self.admit_with_frames("decomposition", body, frames)

    async def create_recomposition(
        self,
        generation_id: Annotated[str, Form(pattern=JOB_ID)],
        order: Annotated[str | None, Form(max_length=64)] = None,
        background: Annotated[UploadFile | None, File()] = None,
    ) -> JSONResponse:
        source = self.finished_job(generation_id)
        if background is None:
            job = await run_in_threadpool(_recompose, self.store, self.worker, source, order, None)
        else:
            async with uploads.saved(background, self.out, "background", self.cfg) as path:
                job = await run_in_threadpool(_recompose, self.store, self.worker, source, order, path)
        return JSONResponse(job_view(job), status_code=201, headers={"Location": f"/v1/generations/{job.id}"})

    def get_generation(self, job_id: str) -> dict[str, Any]:
        return job_view(self.job(job_id))

    def get_file(self, job_id: str, name: str) -> FileResponse:
        job = self.finished_job(job_id)
        if name not in (job.files or {}):
            raise HTTPException(404, f"job {job_id} has no file {name!r}; it has {sorted(job.files or {})}")
        return FileResponse(self.worker.folder(job) / job.files[name], filename=name)

    def get_bundle(self, job_id: str) -> FileResponse:
        job = self.finished_job(job_id)
        return FileResponse(self.worker.folder(job) / BUNDLE, filename=f"layert2v-{job.id}.zip")


def form_body(request: str) -> GenerationIn:
    """The generation fields of a multipart request, sent as one JSON form field `request`."""
    try:
        return GenerationIn.model_validate_json(request)
    except ValidationError as err:
        raise RequestValidationError(
            [e | {"loc": ("body", "request", *e["loc"])} for e in err.errors(include_url=False)]
        ) from err


ROUTES = [  # path, method, Api method, status; every route but the probes needs the token when one is set
    ("/healthz", "GET", "healthz", 200),
    ("/readyz", "GET", "readyz", 200),
    ("/metrics", "GET", "prometheus", 200),
    ("/v1/model", "GET", "model", 200),
    ("/v1/generations", "POST", "create_generation", 202),
    ("/v1/regenerations", "POST", "create_regeneration", 202),
    ("/v1/foregrounds", "POST", "create_foregrounds", 202),
    ("/v1/decompositions", "POST", "create_decomposition", 202),
    ("/v1/recompositions", "POST", "create_recomposition", 201),
    ("/v1/generations/{job_id}", "GET", "get_generation", 200),
    ("/v1/generations/{job_id}/files/{name}", "GET", "get_file", 200),
    ("/v1/generations/{job_id}/bundle", "GET", "get_bundle", 200),
]
OPEN = ("/healthz", "/readyz")  # probes answer without a token


def create_app(source, settings: Settings, work_thread: bool = True) -> FastAPI:
    """The app over a model source (`serving.source`); the worker starts and stops with the app's lifespan, and runs
    jobs on a thread of its own, or with `work_thread=False` wherever `app.state.worker.work()` is called."""
    api = Api(source, settings)

    async def lifespan(app: FastAPI):
        api.worker.start(work_thread)
        yield
        await run_in_threadpool(api.worker.stop)

    app = FastAPI(title="LayerT2V", version="1", lifespan=lifespan)
    app.state.store, app.state.worker, app.state.metrics = api.store, api.worker, api.metrics
    app.middleware("http")(api.metrics.middleware)
    for path, method, name, status in ROUTES:
        dependencies = [] if path in OPEN else [Depends(api.auth)]
        app.add_api_route(path, getattr(api, name), methods=[method], status_code=status, dependencies=dependencies)
    return app


# ---------------------------------------------------------------- job handlers (run on the worker thread)


def _prompts(r: dict[str, Any]) -> list[str]:
    """Overall, background and foreground prompts of a job's request, in slot order."""
    return [r["prompt"], r["background_prompt"], *r["foreground_prompts"]]


def _sampling(r: dict[str, Any], on_step, sized: bool = True) -> dict[str, Any]:
    """The sampler options of a job's request (and its size, unless the job's input fixes it). A field a job
    stored before it existed (a queued job from an older version) takes `generate`'s default."""
    size_fields = ("frames", "height", "width")
    size = {key: r[key] for key in size_fields} if sized else {}
    sampler = {key: r[key] for key in OPTIONAL if key not in size_fields and key in r}
    return size | sampler | {"on_step": on_step}


def _generate(pipeline, job: Job, jobs_dir: Path, on_step) -> tuple[LayeredVideo, dict[str, Any]]:
    prompts = _prompts(job.request)
    return pipeline.generate(*prompts[:2], prompts[2:], **_sampling(job.request, on_step)), {"prompts": prompts}


def _regenerate(pipeline, job: Job, jobs_dir: Path, on_step) -> tuple[LayeredVideo, dict[str, Any]]:
    r, prompts = job.request, _prompts(job.request)
    layers = load_layers(jobs_dir / r["generation_id"])
    video = pipeline.regenerate(layers, r["layer"], prompts, **_sampling(r, on_step, sized=False))
    return video, {"prompts": prompts, "regenerated": r["layer"], "from_generation": r["generation_id"]}


def _uploaded(job: Job, jobs_dir: Path) -> np.ndarray:
    return np.load(jobs_dir.parent / "uploads" / job.request["upload"]).astype(np.float32) / 255.0


def _foregrounds(pipeline, job: Job, jobs_dir: Path, on_step) -> tuple[LayeredVideo, dict[str, Any]]:
    prompts, given = _prompts(job.request), Given(background=_uploaded(job, jobs_dir))
    video = pipeline.generate(*prompts[:2], prompts[2:], **_sampling(job.request, on_step), given=given)
    return video, {"prompts": prompts, "given": "background"}


def _decompose(pipeline, job: Job, jobs_dir: Path, on_step) -> tuple[LayeredVideo, dict[str, Any]]:
    prompts = _prompts(job.request)
    video = pipeline.decompose(
        _uploaded(job, jobs_dir), *prompts[:2], prompts[2:], **_sampling(job.request, on_step, sized=False)
    )
    return video, {"prompts": prompts, "given": "full"}


# ---------------------------------------------------------------- recomposition and uploads


def _parse_order(order: str | None, count: int) -> list[int]:
    """ "2,1" -> [1, 0]: foreground numbers (1-based), nearest first; a number left out hides that layer."""
    if order is None or not order.strip():
        return list(range(count))
    try:
        numbers = [int(part) for part in order.split(",")]
    except ValueError as err:
        raise unprocessable("order", f"order must be comma-separated foreground numbers, got {order!r}") from err
    if len(set(numbers)) != len(numbers) or not all(1 <= n <= count for n in numbers):
        raise unprocessable("order", f"order must name distinct foregrounds among 1..{count}, got {order!r}")
    return [n - 1 for n in numbers]


def _recompose(store: JobStore, worker: Worker, source: Job, order: str | None, upload: Path | None) -> Job:
    layers = load_layers(worker.folder(source))
    frames, height, width = layers.full.shape[:3]
    indices = _parse_order(order, len(layers.foregrounds))
    background = layers.background
    if upload is not None:
        background = uploads.read_background(upload, "background", frames, height, width)
    video = LayeredVideo(
        full=layers.recomposite(background, indices),
        background=background,
        foregrounds=[layers.foregrounds[i] for i in indices],
        alphas=[layers.alphas[i] for i in indices],
        fps=layers.fps,
    )
    request = {"generation_id": source.id, "order": order, "background": upload is not None}
    job_id = store.add("recomposition", request, state=RUNNING)
    files = worker.publish(job_id, video, FORMATS, json_manifest(source, indices))
    store.finish(job_id, files, source.model_version)
    return store.get(job_id)


def json_manifest(source: Job, indices: list[int]) -> dict[str, Any]:
    r = source.request
    prompts = [r.get("prompt", ""), r.get("background_prompt", ""), *[r["foreground_prompts"][i] for i in indices]]
    return {"prompts": prompts, "recomposed_from": source.id, "order": [i + 1 for i in indices]}
