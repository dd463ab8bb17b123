"""Every benchmark script still imports: they are run by hand on new hosts, so a moved helper (as `cpu_model`
once was) would otherwise be found only by the next person measuring."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import ROOT

BENCHMARKS = sorted(path.stem for path in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # they import each other (bench_dit, timing)
    module = importlib.import_module(name)
    if "__main__" in (ROOT / "benchmarks" / f"{name}.py").read_text():  # a script, not a shared helper
        assert callable(module.main), f"benchmarks/{name}.py has no main()"
    sys.modules.pop(name)


def test_the_training_objective_imports_without_the_video_autoencoder_and_tracking_packages() -> None:
    """`benchmarks/gpu_budget.py` trains stage 2 on GPU machines whose image has torch and lightning but not PyAV,
    diffusers or MLflow: the objective and the DiT must not pull them in."""
    blocked = ("av", "diffusers", "mlflow", "pandas", "prefect")
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({blocked!r}))\n"
        "import layert2v.training.objective, layert2v.training.schedule, layert2v.models.dit\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_packed_clips_give_back_the_latent_clips_items(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_budget import PackedClips, pack_items

    torch.manual_seed(0)
    lengths = [[3, 1, 5], [2, 4, 1]]
    items = []
    for row in lengths:
        mask = torch.arange(8) < torch.tensor(row)[:, None]
        items.append(
            {
                "segments": torch.randn(4, 2, 1, 2, 2),
                "alpha_grid": torch.rand(1, 1, 1, 2, 2),
                "text": torch.randn(3, 8, 5) * mask[..., None],  # padding states are zero, as null_prompts has them
                "text_mask": mask,
                "clear": torch.randn(2, 1, 2, 2),
            }
        )
    np.savez(tmp_path / "data.npz", **pack_items(items))
    packed = PackedClips(tmp_path / "data.npz", 8, torch.device("cpu"))
    batch = packed.batch(2)
    order = packed.order[:2].tolist()
    for got, index in enumerate(order):
        item = items[index]
        assert torch.equal(batch["text_mask"][got], item["text_mask"])
        torch.testing.assert_close(batch["text"][got], item["text"].half().float())
        torch.testing.assert_close(batch["segments"][got], item["segments"].half().float())
    torch.testing.assert_close(batch["clear"], items[0]["clear"])
    with pytest.raises(ValueError, match="not prefixes"):
        pack_items([items[0] | {"text_mask": items[0]["text_mask"].flip(-1)}])


def test_summary_rows_line_up_with_their_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import summary_table

    keys = (*summary_table.SAMPLES, "empty_layers")
    summary = {"coherence_db": 33.61, "colour_adherence": 1.0, "shape_adherence": 0.156, "blockiness": 0.8549}
    head, rule = summary_table.header(["model"], keys, ("seconds",)).splitlines()
    row = summary_table.row(["lr3e3"], summary | {"empty_layers": 0.0}, keys, ("658",))
    assert head == "| model | coherence dB | colour | shape | blockiness | empty layers | seconds |"
    assert row == "| lr3e3 | 33.6 | 100% | 16% | 0.85 | 0% | 658 |"
    assert head.count("|") == rule.count("|") == row.count("|")


def test_overrides_parse_to_the_types_the_configs_take(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_budget import parse_overrides

    assert parse_overrides(["lr=0.003", "warmup_steps=100", "patch=1,4,4", "optimizer=muon"]) == {
        "lr": 0.003,
        "warmup_steps": 100,
        "patch": (1, 4, 4),
        "optimizer": "muon",
    }


def test_chain_time_reads_each_stage_from_its_outputs(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Stages in `dvc.yaml` order, each from the previous one's last output to its own; an up-to-date stage (its
    outputs older than the stage before it) is `cached` and counts zero in the prepare-to-stage-3 span."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from chain_time import span_minutes, stage_times, step_figures

    stages = {
        "prepare": {"outs": ["prepared"]},
        "validate": {"metrics": [{"gate.json": {"cache": False}}]},
        "stage3_multifg": {"outs": [{"artifacts/train/stage3": {"persist": True}}]},
        "evaluate": {"outs": ["eval"]},
    }
    params = {"train": {"stage3": {"max_steps": 1000}}}
    written = {
        "data/clip.mp4": 1000.0,
        "prepared/a.npy": 1060.0,
        "prepared/sub/b.npy": 1090.0,  # the newest file under a folder ends the stage
        "gate.json": 500.0,  # older than the stage before: DVC did not run it
        "artifacts/train/stage3/dit.safetensors": 1690.0,
        "artifacts/train/stage3/perf.json": 1690.0,
        "eval/metrics.json": 1750.0,
    }
    for name, mtime in written.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"perf/step_s": 0.6}) if name.endswith("perf.json") else "x")
        os.utime(path, (mtime, mtime))

    rows = stage_times(tmp_path, Path("data"), stages)
    assert [(row["stage"], row["seconds"]) for row in rows] == [
        ("prepare", 90.0), ("validate", None), ("stage3_multifg", 600.0), ("evaluate", 60.0)
    ]  # fmt: skip
    assert span_minutes(rows) == pytest.approx(11.5)
    assert step_figures(tmp_path, stages["stage3_multifg"], params) == (1000, 0.6)
    assert step_figures(tmp_path, stages["evaluate"], params) is None
