"""The service's jobs, kept in a database so that none is lost when the service dies.

A job is accepted (`queued`) before the service answers 202, so what the client was told exists survives any
crash. A worker claims the oldest queued job with a conditional update (`running`, its name, a heartbeat), so
several replicas on one PostgreSQL never run a job twice; at start a service puts back the jobs its own name
left running (a SIGKILL), and any replica puts back a running job whose heartbeat stopped (a replica that died).
SQLite (a file under the service's folder) by default; PostgreSQL by URL (`postgresql+psycopg2://...`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Column, Float, Integer, MetaData, String, Table, Text, create_engine, func, select, update
from sqlalchemy.engine import Engine

QUEUED, RUNNING, FINISHED, FAILED = "queued", "running", "finished", "failed"
STATES = (QUEUED, RUNNING, FINISHED, FAILED)

metadata = MetaData()
jobs = Table(
    "layert2v_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),  # generation, recomposition
    Column("state", String(16), nullable=False, index=True),
    Column("request", JSON, nullable=False),
    Column("model_version", String(64)),  # the version that ran it
    Column("step", Integer, nullable=False, default=0),
    Column("steps", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("files", JSON),  # file name -> path relative to the job's folder
    Column("worker", String(128)),
    Column("heartbeat", Float),
    Column("created", Float, nullable=False, index=True),
    Column("started", Float),
    Column("finished", Float),
)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: str
    request: dict[str, Any]
    model_version: str | None
    step: int
    steps: int
    error: str | None
    files: dict[str, str] | None
    created: float
    started: float | None
    finished: float | None


class JobStore:
    """Jobs through SQLAlchemy; every method is one short transaction."""

    def __init__(self, url: str, worker: str) -> None:
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        self.worker = worker
        metadata.create_all(self.engine)

    def add(self, kind: str, request: dict[str, Any], state: str = QUEUED, steps: int = 0) -> str:
        job_id = uuid.uuid4().hex
        with self.engine.begin() as db:
            db.execute(
                jobs.insert().values(
                    id=job_id, kind=kind, state=state, request=request, steps=steps, step=0, created=time.time()
                )
            )
        return job_id

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as db:
            row = db.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return _job(row) if row else None

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, 0 when none)."""
        with self.engine.connect() as db:
            rows = db.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        return {state: 0 for state in STATES} | {state: count for state, count in rows}

    def claim(self) -> Job | None:
        """The oldest queued job, now running under this worker; None when the queue is empty."""
        with self.engine.begin() as db:
            for (job_id,) in db.execute(
                select(jobs.c.id).where(jobs.c.state == QUEUED).order_by(jobs.c.created, jobs.c.id).limit(4)
            ):
                now = time.time()
                claimed = db.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == QUEUED)
                    .values(state=RUNNING, worker=self.worker, heartbeat=now, started=now, step=0)
                )
                if claimed.rowcount == 1:
                    break
            else:
                return None
        return self.get(job_id)

    def progress(self, job_id: str, step: int, steps: int, model_version: str) -> None:
        with self.engine.begin() as db:
            db.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(step=step, steps=steps, model_version=model_version, heartbeat=time.time())
            )

    def finish(self, job_id: str, files: dict[str, str], model_version: str | None) -> None:
        with self.engine.begin() as db:
            db.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(state=FINISHED, files=files, model_version=model_version, finished=time.time())
            )

    def fail(self, job_id: str, error: str) -> None:
        with self.engine.begin() as db:
            db.execute(update(jobs).where(jobs.c.id == job_id).values(state=FAILED, error=error, finished=time.time()))

    def requeue_mine(self) -> int:
        """Put back the jobs this worker left running (it was killed); returns how many."""
        return self._requeue(jobs.c.worker == self.worker)

    def requeue_stale(self, lease_s: float) -> int:
        """Put back running jobs whose worker has not reported for `lease_s` seconds (a replica that died)."""
        return self._requeue(jobs.c.heartbeat < time.time() - lease_s)

    def _requeue(self, condition) -> int:
        with self.engine.begin() as db:
            result = db.execute(
                update(jobs)
                .where(jobs.c.state == RUNNING, condition)
                .values(state=QUEUED, worker=None, step=0, started=None)
            )
        return result.rowcount

    def done_oldest_first(self) -> list[Job]:
        """Finished and failed jobs, oldest first (retention deletes from the front)."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(jobs).where(jobs.c.state.in_((FINISHED, FAILED))).order_by(jobs.c.finished, jobs.c.id)
            ).mappings()
            return [_job(row) for row in rows]

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(jobs.delete().where(jobs.c.id == job_id))


def _job(row: Any) -> Job:
    return Job(**{name: row[name] for name in Job.__dataclass_fields__})
