"""Prometheus metrics of the service: what an autoscaler and a dashboard need.

- `layert2v_queue_length`: accepted, unfinished jobs (what the HPA scales on);
- `layert2v_jobs{state}`: jobs in the store by state;
- `layert2v_model_info{version, backend}`: the version serving (1), so every series can be read against it;
- `layert2v_request_seconds{endpoint, method, status}`: HTTP latency per route (its template, not the raw path);
- `layert2v_job_seconds{kind, state, model_version}`: time from claim to end of each job.
Job counts are read from the store at scrape time, so every replica on one database reports the same queue.
"""

from __future__ import annotations

import time

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from layert2v.serving.jobs import QUEUED, RUNNING, JobStore

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _StoreCollector:
    def __init__(self, store: JobStore, worker) -> None:
        self.store, self.worker = store, worker

    def collect(self):
        counts = self.store.counts()
        queue = GaugeMetricFamily("layert2v_queue_length", "Accepted jobs not yet finished (queued + running)")
        queue.add_metric([], counts[QUEUED] + counts[RUNNING])
        jobs = GaugeMetricFamily("layert2v_jobs", "Jobs in the store by state", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state], count)
        info = GaugeMetricFamily("layert2v_model_info", "The model version serving", labels=["version", "backend"])
        loaded = self.worker.loaded
        if loaded is not None:
            info.add_metric([loaded.version, loaded.backend], 1)
        yield from (queue, jobs, info)


class Metrics:
    def __init__(self, store: JobStore, worker) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store, worker))
        self.requests = Histogram(
            "layert2v_request_seconds", "HTTP request latency", ["endpoint", "method", "status"],
            registry=self.registry, buckets=BUCKETS,
        )  # fmt: skip
        self.jobs = Histogram(
            "layert2v_job_seconds", "Job run time", ["kind", "state", "model_version"],
            registry=self.registry, buckets=BUCKETS,
        )  # fmt: skip

    async def middleware(self, request: Request, call_next) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        self.requests.labels(endpoint, request.method, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    def job_done(self, kind: str, state: str, seconds: float, version: str) -> None:
        self.jobs.labels(kind, state, version).observe(seconds)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
