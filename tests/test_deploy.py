"""The scale-out files (deploy/compose.yaml, deploy/k8s/) name what the code provides: commands the CLI accepts,
probe paths the service answers, the metric the autoscaler reads. Docker and Kubernetes do not run here; the
processes they start run for real in tests/test_serve.py."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from layert2v.cli import build_parser
from layert2v.config import load_params
from layert2v.serving.service import Settings, create_app
from layert2v.serving.source import FolderSource

from .conftest import ROOT

DEPLOY = ROOT / "deploy"


def _k8s() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def test_compose_and_kubernetes_commands_are_ones_the_cli_accepts() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    serve = shlex.split(compose["services"]["serve"]["command"])
    args = build_parser().parse_args(serve[1:])
    assert args.func.__name__ == "cmd_serve" and args.host == "0.0.0.0" and args.db.startswith("postgresql+psycopg2")
    assert "LAYERT2V_TOKEN" in compose["services"]["serve"]["environment"]  # required off loopback
    assert "postgresql+psycopg2://" in compose["services"]["mlflow"]["command"]
    [deployment] = [doc for doc in _k8s() if doc["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert build_parser().parse_args(container["command"][1:]).func.__name__ == "cmd_serve"
    assert {"LAYERT2V_TOKEN", "MLFLOW_TRACKING_URI"} <= {env["name"] for env in container["env"]}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1


def test_probes_and_the_autoscaler_metric_are_what_the_service_serves(tmp_path: Path, tiny_model: Path) -> None:
    app = create_app(FolderSource(tiny_model), Settings(out=tmp_path, cfg=load_params(ROOT / "params.yaml").serve))
    routes = {route.path for route in app.routes}
    [deployment] = [doc for doc in _k8s() if doc["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes, probe
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] in routes
    [hpa] = [doc for doc in _k8s() if doc["kind"] == "HorizontalPodAutoscaler"]
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    exposed = app.state.metrics.response().body.decode()
    assert f"# TYPE {metric} gauge" in exposed
