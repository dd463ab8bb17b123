"""Serve every flow as a deployment of a local Prefect server, so runs start from the UI or the CLI.

`make prefect` starts the server (SQLite, loopback) and runs this; then open http://127.0.0.1:4200,
Deployments -> e.g. `pipeline/layert2v-pipeline` -> Run, or `prefect deployment run pipeline/layert2v-pipeline`.
Runs execute in this process's machine, in the repository given by `--repo` (default: here).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from prefect import serve

from flows.pipeline import evaluate_and_promote, export, ingest, pipeline, train


def deployments(repo: str) -> list:
    params = {"repo": repo}
    return [
        ingest.to_deployment(name="layert2v-ingest", parameters=params, tags=["layert2v", "data"]),
        train.to_deployment(name="layert2v-train", parameters=params, tags=["layert2v", "training"]),
        export.to_deployment(name="layert2v-export", parameters=params, tags=["layert2v", "export"]),
        evaluate_and_promote.to_deployment(
            name="layert2v-evaluate-and-promote", parameters=params, tags=["layert2v", "registry"]
        ),
        pipeline.to_deployment(name="layert2v-pipeline", parameters=params, tags=["layert2v"]),
    ]


def _stop(signum: int, frame: object) -> None:
    """SIGTERM stops serving the way Ctrl-C does (`serve` shuts its runner down on KeyboardInterrupt), so a
    terminated `make prefect` never hangs against a server that is already gone."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the LayerT2V flows (needs PREFECT_API_URL)")
    parser.add_argument("--repo", default=str(Path.cwd()), help="repository the flows work in")
    signal.signal(signal.SIGTERM, _stop)
    serve(*deployments(parser.parse_args().repo))


if __name__ == "__main__":
    main()
