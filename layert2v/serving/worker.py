"""The service's work: one model (switched between jobs when the alias moves) and one worker (on the main thread
under `layert2v serve`).

Jobs run one at a time (a CPU host has no cores to spare for two; a GPU replica is scaled out instead, on one job
database). Each job writes into `<out>/jobs/<id>.partial` and is renamed to `<out>/jobs/<id>` when complete, so a
folder under `jobs/` is always whole. A job that raises fails alone with its message; a stop (SIGTERM) puts the
running job back in the queue at its next sampler step and the worker exits.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layert2v.compose import LayeredVideo
from layert2v.config import ServeConfig
from layert2v.editing import MANIFEST, write_manifest
from layert2v.io import to_uint8
from layert2v.serving.jobs import Job, JobStore
from layert2v.serving.source import FolderSource, Loaded, RegistrySource

log = logging.getLogger("layert2v.serve")
LAYERS = "layers.npz"  # every job's layers, uint8 and lossless: what recompositions and edits start from
BUNDLE = "bundle.zip"
LEASE_S = 120.0  # a running job whose worker has not reported for this long is put back in the queue
PROGRESS_S = 0.25  # progress (and the heartbeat) is written at most this often


class Requeue(Exception):
    """Raised from a sampler step when the service stops: the job goes back to the queue."""


@dataclass
class Timing:
    """Seconds of recent jobs: the Retry-After estimate of a full queue."""

    recent: list[float]

    def add(self, seconds: float) -> None:
        self.recent = [*self.recent[-19:], seconds]

    def mean(self) -> float:
        return float(np.mean(self.recent)) if self.recent else 5.0


def save_layers(folder: Path, video: LayeredVideo) -> None:
    arrays = {"full": video.full, "background": video.background}
    for k, (fg, alpha) in enumerate(zip(video.foregrounds, video.alphas, strict=True)):
        arrays[f"fg_{k}"], arrays[f"alpha_{k}"] = fg, alpha
    np.savez_compressed(folder / LAYERS, fps=video.fps, **{k: to_uint8(v) for k, v in arrays.items()})


def load_layers(folder: Path) -> LayeredVideo:
    with np.load(folder / LAYERS) as data:
        count = sum(1 for name in data.files if name.startswith("fg_"))
        f = lambda name: data[name].astype(np.float32) / 255.0  # noqa: E731
        return LayeredVideo(
            full=f("full"),
            background=f("background"),
            foregrounds=[f(f"fg_{k}") for k in range(count)],
            alphas=[f(f"alpha_{k}") for k in range(count)],
            fps=int(data["fps"]),
        )


def write_job_files(folder: Path, video: LayeredVideo, formats: list[str], manifest: dict[str, Any]) -> dict[str, str]:
    """The layer files a client downloads (PNG sequences zipped), the manifest, the lossless layers and one bundle
    zip of everything; returns file name -> name in `folder`."""
    written = video.write(folder, formats)
    files = {}
    for path in written.values():
        if path.is_dir():
            archive = path.with_suffix(".zip")
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for frame in sorted(path.iterdir()):
                    zf.write(frame, f"{path.name}/{frame.name}")
            shutil.rmtree(path)
            path = archive
        files[path.name] = path.name
    save_layers(folder, video)
    files[LAYERS] = LAYERS
    prompts = manifest.pop("prompts")
    files[MANIFEST] = write_manifest(folder, video, prompts, files=sorted(files), **manifest).name
    with zipfile.ZipFile(folder / BUNDLE, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            zf.write(folder / name, name)
    return files


class Worker:
    """Holds the served model, follows its source, and runs queued jobs until `stop`."""

    def __init__(
        self,
        store: JobStore,
        source: FolderSource | RegistrySource,
        cfg: ServeConfig,
        out: Path,
        handlers: dict[str, Callable[..., LayeredVideo]],
    ) -> None:
        self.store, self.source, self.cfg, self.handlers = store, source, cfg, handlers
        self.jobs_dir = Path(out) / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.loaded: Loaded | None = None
        self.pending: Loaded | None = None
        self.load_error: str | None = None
        self.timing = Timing([])
        self.stopping = threading.Event()
        self.wake = threading.Event()  # set when a job is accepted: an idle worker claims it at once
        self._threads: list[threading.Thread] = []
        self.on_job_done: Callable[[str, str, float, str], None] = lambda kind, state, seconds, version: None

    def start(self, work_thread: bool = True) -> None:
        """Put back what this worker left running, follow the model source, and run jobs on a thread of their own
        or (`work_thread=False`) on whichever thread then calls `work`."""
        requeued = self.store.requeue_mine()
        if requeued:
            log.info("requeued %d job(s) this service left running", requeued)
        self._threads = [threading.Thread(target=self._follow, name="layert2v-follow", daemon=True)]
        if work_thread:
            self._threads.append(threading.Thread(target=self.work, name="layert2v-work", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self.stopping.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------ the model

    def _follow(self) -> None:
        """Load the source's current version whenever it differs from what serves (and is not already loaded)."""
        while not self.stopping.is_set():
            try:
                version = self.source.current()
                known = {m.version for m in (self.loaded, self.pending) if m is not None}
                if version not in known:
                    log.info("loading model version %s", version)
                    loaded = self._load(version)
                    if self.loaded is None:
                        self.loaded = loaded
                    else:
                        self.pending = loaded
                    self.load_error = None
            except Exception as err:  # a registry or load failure keeps the version that serves
                self.load_error = f"{type(err).__name__}: {err}"
                log.warning("model source: %s", self.load_error)
            self.stopping.wait(self.cfg.poll_seconds)

    def _load(self, version: str) -> Loaded:
        """The source's `version`, loaded on a thread that ends with the load: a live thread that once ran torch keeps
        an OpenMP team that made every other thread's torch 1.7x slower here (2 cores; benchmarks/bench_serve.py)."""
        result: dict[str, Any] = {}

        def load() -> None:
            try:
                result["loaded"] = self.source.load(version, self.cfg)
            except Exception as err:  # raised again on the following thread
                result["error"] = err

        thread = threading.Thread(target=load, name=f"layert2v-load-{version}")
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["loaded"]

    def _switch(self) -> None:
        """Between jobs only: the loaded version replaces the serving one."""
        if self.pending is not None:
            log.info("switching from version %s to %s", self.loaded.version, self.pending.version)
            self.loaded, self.pending = self.pending, None

    # ------------------------------------------------------------ the jobs

    def work(self) -> None:
        """Run queued jobs until `stop` (`layert2v serve` calls it on the main thread: only one thread ever runs
        torch for long, see `_load`)."""
        last_cleanup = 0.0
        while not self.stopping.is_set():
            self._switch()
            job = self.store.claim() if self.loaded is not None else None
            if job is None:
                if time.monotonic() - last_cleanup > 30:
                    self.store.requeue_stale(LEASE_S)
                    self.cleanup()
                    last_cleanup = time.monotonic()
                self.wake.wait(0.2)
                self.wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        loaded, started = self.loaded, time.monotonic()
        reported = [0.0]

        def on_step(step: int, steps: int) -> None:
            now = time.monotonic()
            if self.stopping.is_set():
                raise Requeue
            if now - started > self.cfg.job_timeout_s:
                raise TimeoutError(f"the job ran past serve.job_timeout_s = {self.cfg.job_timeout_s:g} s")
            if now - reported[0] >= PROGRESS_S or step == steps:  # a database commit per step cost ~8% of a job
                self.store.progress(job.id, step, steps, loaded.version)
                reported[0] = now

        try:
            video, manifest = self.handlers[job.kind](loaded.pipeline, job, self.jobs_dir, on_step)
            read = loaded.pipeline.read_as(manifest["prompts"])
            files = self.publish(job.id, video, job.request.get("formats", []), manifest | read | {
                "model_version": loaded.version, "model_uri": loaded.uri, "job": job.id,
            })  # fmt: skip
            self.store.finish(job.id, files, loaded.version)
            state = "finished"
        except Requeue:
            self.store.requeue_mine()
            log.info("job %s requeued: the service is stopping", job.id)
            return
        except Exception as err:  # one job fails alone; the service stays up
            self.store.fail(job.id, f"{type(err).__name__}: {err}")
            log.warning("job %s failed: %s", job.id, err)
            state = "failed"
        if "upload" in job.request:  # the job's uploaded frames, kept until it ended
            (self.jobs_dir.parent / "uploads" / job.request["upload"]).unlink(missing_ok=True)
        seconds = time.monotonic() - started
        self.timing.add(seconds)
        self.on_job_done(job.kind, state, seconds, loaded.version)

    def publish(self, job_id: str, video: LayeredVideo, formats, manifest: dict[str, Any]) -> dict[str, str]:
        """Write a job's files into `<id>.partial` and rename it to `<id>` once whole (`write_job_files`)."""
        partial = self.jobs_dir / f"{job_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            files = write_job_files(partial, video, formats, manifest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        partial.rename(self.jobs_dir / job_id)
        return files

    def folder(self, job: Job) -> Path:
        return self.jobs_dir / job.id

    def cleanup(self) -> list[str]:
        """Delete finished jobs past `retention_hours`, then the oldest while the folder is over `disk_budget_mb`."""
        done = self.store.done_oldest_first()
        cutoff = time.time() - self.cfg.retention_hours * 3600
        sizes = {job.id: _size(self.folder(job)) for job in done}
        used, budget = sum(sizes.values()), self.cfg.disk_budget_mb * 2**20
        deleted = []
        for job in done:
            if (job.finished or 0) >= cutoff and used <= budget:
                continue
            shutil.rmtree(self.folder(job), ignore_errors=True)
            self.store.delete(job.id)
            used -= sizes[job.id]
            deleted.append(job.id)
        return deleted


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
