"""Real DVC: the pipeline reproduces in a temp git repo, and regenerating the default data matches data.dvc."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from .conftest import ROOT

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> str:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def new_repo(path: Path) -> Path:
    path.mkdir()
    run(["git", "init", "-q"], path)
    run(["git", "config", "user.email", "ci@example.com"], path)
    run(["git", "config", "user.name", "ci"], path)
    run(["dvc", "init", "-q"], path)
    return path


def copy_code(repo: Path) -> None:
    """The tracked files the pipeline reads: package, dvc.yaml (data comes from the test)."""
    shutil.copytree(ROOT / "layert2v", repo / "layert2v", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_dvc_repro_smoke_then_nothing_then_only_dependents(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    copy_code(repo)
    params = run(["layert2v", "params", "--params", str(ROOT / "params.yaml"), "--profile", "smoke"], repo)
    (repo / "params.yaml").write_text(params)
    run(["layert2v", "data", "synth", "--out", "data/vidlayer"], repo)
    run(["dvc", "add", "-q", "data"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "smoke"], repo)

    first = run(["dvc", "repro"], repo)
    assert stages_run(first) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert yaml.safe_load((repo / "artifacts/reports/data_gate.json").read_text())["passed"] is True
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("layert2v", "champion").version) == "1"
    assert json.loads((repo / "artifacts/registry/promotion.json").read_text())["reason"] == "no champion yet"
    assert (repo / "artifacts/train/stage2/csv/metrics.csv").is_file() and any(
        (repo / "artifacts/eval/previews").iterdir()
    )
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("layert2v").experiment_id])}
    parent = runs["pipeline"]
    assert parent.info.status == "FINISHED" and parent.info.end_time  # promotion ended the chain's run
    for name in ("pipeline", "stage0", "stage3", "evaluate"):  # lineage on every run, the dataset as its input
        tags = runs[name].data.tags
        assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
        assert tags["data_version"] == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
        assert [d.dataset.name for d in runs[name].inputs.dataset_inputs] == ["vidlayer"]
    evaluation = runs["evaluate"]
    assert (
        evaluation.data.tags["mlflow.parentRunId"] == parent.info.run_id and "coherence_db" in evaluation.data.metrics
    )
    assert {"reworded_colour_adherence", "reworded_shape_adherence"} <= set(evaluation.data.metrics)  # held-out words
    judged = json.loads((repo / "artifacts/eval/samples.json").read_text())
    assert evaluation.data.metrics["foregrounds"] == sum(row["k"] for row in judged)  # what the shares are out of
    assert {a.path for a in client.list_artifacts(evaluation.info.run_id)} == {"previews", "report"}

    second = run(["dvc", "repro"], repo)
    assert stages_run(second) == set()

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "after repro"], repo)
    experiment = run(["dvc", "exp", "run", "-S", "gate.min_clips=10", "-S", "registry.min_improvement=5.0"], repo)
    assert stages_run(experiment) == {"validate", "promote"}  # training depends on the data, not the threshold

    with (repo / "layert2v" / "sampling.py").open("a") as sampler:  # a sampler-only change
        sampler.write("\n# a sampler change\n")
    status = run(["dvc", "status"], repo)
    assert not any(f"{stage}:" in status for stage in TRAINING), status
    # what a repro would run, without running it (the first repro ran every stage); `promote` then follows the new
    # version that `register` writes, which a dry run cannot know
    resampled = run(["dvc", "repro", "--dry"], repo)
    assert stages_run(resampled) == {"stage2_gate", "stage3_gate", "evaluate", "register"}


TRAINING = ("stage0_vae", "stage1_alpha", "encode", "stage2_joint", "stage3_multifg")


def test_dvc_yaml_code_deps_are_the_import_closures() -> None:
    """Every stage lists exactly the package files its command imports (`python -m layert2v.imports`)."""
    from layert2v.imports import check_dvc_yaml, cycles

    assert check_dvc_yaml(ROOT / "dvc.yaml") == []
    assert cycles() == []


def test_the_import_checks_find_drift_and_loops(tmp_path: Path) -> None:
    from layert2v import imports

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages["stages"]["prepare"]["deps"].remove("layert2v/data/cache.py")
    stages["stages"]["validate"]["deps"].append("layert2v/pipeline.py")
    drifted = tmp_path / "dvc.yaml"
    drifted.write_text(yaml.safe_dump(stages))
    problems = imports.check_dvc_yaml(drifted)
    assert len(problems) == 2 and "missing ['layert2v/data/cache.py']" in problems[0]
    assert "not run ['layert2v/pipeline.py']" in problems[1]

    package = tmp_path / "layert2v"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from layert2v.sub import b\n")  # a function-local import
    (package / "sub" / "b.py").write_text("from layert2v import a\n")
    original = imports.ROOT
    try:
        imports.ROOT = package
        imports.imports_of.cache_clear()
        assert imports.cycles() == [["layert2v.a", "layert2v.sub.b", "layert2v.a"]]
    finally:
        imports.ROOT = original
        imports.imports_of.cache_clear()


@pytest.mark.slow
def test_regenerated_default_data_matches_data_dvc(tmp_path: Path) -> None:
    """`make data && dvc status` on a fresh clone: the committed hash is reproduced byte for byte."""
    repo = new_repo(tmp_path / "repo")
    shutil.copy(ROOT / "data.dvc", repo / "data.dvc")
    run(["layert2v", "data", "synth", "--params", str(ROOT / "params.yaml"), "--out", "data/vidlayer"], repo)
    run(["dvc", "add", "-q", "data"], repo)  # what `make data` does: fills this clone's cache
    assert (repo / "data.dvc").read_text() == (ROOT / "data.dvc").read_text()  # same hash, file count and size
    status = run(["dvc", "status", "data.dvc"], repo)
    assert "up to date" in status, status
