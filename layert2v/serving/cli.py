"""`layert2v serve`: the HTTP service on uvicorn, over a model folder or the registry's alias.

The bearer token comes from the environment (`LAYERT2V_TOKEN`) or a file, never from the command line (which
any user of the host can read); binding anything but loopback without one is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_parser(commands, common) -> None:
    serve = commands.add_parser("serve", help="the layered-video HTTP service (docs/serving.md)")
    common(serve)
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="serve this model folder (default: the registry's alias)")
    source.add_argument("--root", default=".", help="where mlflow.db lives, unless MLFLOW_TRACKING_URI is set")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--out", default="serve", help="jobs, their files and downloaded model versions")
    serve.add_argument("--db", default=None, help="job database URL (default: sqlite:///<out>/jobs.db)")
    serve.add_argument("--token-file", default=None, help="bearer token file (or LAYERT2V_TOKEN)")
    serve.add_argument("--name", default=socket.gethostname(), help="this replica's name in the job database")
    serve.set_defaults(func=cmd_serve)


def read_token(token_file: str | None) -> str | None:
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return os.environ.get("LAYERT2V_TOKEN") or None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from layert2v.config import load_params
    from layert2v.serving.service import Settings, create_app
    from layert2v.serving.source import FolderSource, RegistrySource
    from layert2v.tracking import tracking_uri

    params = load_params(args.params, args.profile)
    token = read_token(args.token_file)
    if args.host not in LOOPBACK and token is None:
        raise ValueError(f"--host {args.host} is not loopback: set LAYERT2V_TOKEN or --token-file first")
    out = Path(args.out)
    if args.model:
        source = FolderSource(Path(args.model))
    else:
        uri = tracking_uri(Path(args.root))
        source = RegistrySource(uri, params.registry.model_name, params.serve.alias, out / "models")
    settings = Settings(out=out, cfg=params.serve, db_url=args.db, token=token, worker_name=args.name)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(source, settings, work_thread=False)
    started = serve_on_main_thread(app, uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))
    return 0 if started else 1


def serve_on_main_thread(app, config) -> bool:
    """uvicorn on a thread, the jobs on the main thread (where torch runs fastest); SIGTERM or Ctrl-C stops the
    worker at its next sampler step (the job goes back to the queue), then the server."""
    import signal
    import threading

    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="layert2v-http")
    thread.start()
    worker = app.state.worker
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stopping.set())
    while not server.started and thread.is_alive():
        worker.stopping.wait(0.1)
    started = server.started
    if started:
        worker.work()
    server.should_exit = True
    thread.join()
    return started
