"""ONNX export of the denoising step (real dynamo export, real onnxruntime sessions), the parity gate, the
onnxruntime backend of the pipeline, the CLI, and the TensorRT backend's behaviour without a GPU."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from layert2v.cli import main
from layert2v.config import ExportConfig, load_params, model_preset
from layert2v.editing import Given
from layert2v.export.folder import BATCHED, INPUTS, ClipShape
from layert2v.export.onnx import export_model, parity_gate, step_inputs
from layert2v.export.runtime import session
from layert2v.models.checkpoint import load_dit
from layert2v.models.dit import LayerDiT
from layert2v.models.layout import Layout
from layert2v.models.text import load_text_encoder
from layert2v.models.vae import LayerVAE
from layert2v.pipeline import LayerT2VPipeline
from layert2v.quality.report import GateFailed

CFG = dataclasses.replace(model_preset("tiny"), max_fg=2)  # two K values keep the suite short
SHAPE = ClipShape(frames=5, height=32, width=32)
EXPORT = ExportConfig(parity_samples=1)
ARGS = ("a red circle over stripes", "navy stripes with a still camera")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model folder with non-trivial layer tables and head, and its export folder."""
    torch.manual_seed(0)
    dit = LayerDiT(CFG)
    for table in (dit.head.head.weight, dit.layer_adaln, dit.instance_adaln):
        torch.nn.init.normal_(table, std=0.05)
    model = LayerT2VPipeline(dit, LayerVAE(CFG), load_text_encoder(None, CFG.text_len)).save(
        tmp_path_factory.mktemp("model")
    )
    out = tmp_path_factory.mktemp("export")
    export_model(model, out, SHAPE, EXPORT)
    return model, out


def test_export_writes_checked_graphs_with_dynamic_batch_and_parity(exported: tuple[Path, Path]) -> None:
    _, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {
        "1": {"fp32": "dit_k1.onnx", "fp16": "dit_k1_fp16.onnx", "int8": "dit_k1_int8.onnx"},
        "2": {"fp32": "dit_k2.onnx", "fp16": "dit_k2_fp16.onnx", "int8": "dit_k2_int8.onnx"},
    }
    assert manifest["opset"] == 23 and manifest["shape"] == {"frames": 5, "height": 32, "width": 32}
    graph = onnx.load(str(out / "dit_k2_fp16.onnx"))
    onnx.checker.check_model(graph)
    assert any(op.domain in ("", "ai.onnx") and op.version >= 17 for op in graph.opset_import)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    inputs = {i.name: i.shape for i in session(out / "dit_k2.onnx").get_inputs()}
    assert inputs["latents"][0] == inputs["cross_mask"][0] == "batch"  # dynamic, for CFG's batch of 2
    assert inputs["latents"][1:] == [16, 12, 4, 4] and inputs["layer_ids"] == [48]
    assert isinstance(inputs["text_positions"][0], str)  # dynamic: the graph reads only the prompts' real tokens
    figures = json.loads((out / "parity.json").read_text())
    assert figures["k1_fp32_max_abs"] <= 1e-3 and figures["k2_fp32_max_abs"] <= 1e-3
    assert 0 < figures["k2_fp16_max_abs"] <= 5e-2 and figures["k2_fp16_reference_max_abs"] > 0.1
    assert figures["k2_fp16_rel_error"] < figures["k2_int8_rel_error"] <= 0.1  # quantized: further off, in its gate
    assert json.loads((out / "gate.json").read_text())["passed"]
    int8 = onnx.load(str(out / "dit_k2_int8.onnx"))
    ops = {node.op_type for node in int8.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "MatMul" not in ops  # every weight GEMM in int8


def test_onnxruntime_backend_generates_what_torch_generates(exported: tuple[Path, Path]) -> None:
    model, out = exported
    torch_pipe = LayerT2VPipeline.from_folder(model)
    ort_pipe = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=out)
    request = {"frames": 5, "height": 32, "width": 32, "steps": 3, "guidance": 3.0, "seed": 4}
    expected = {k: torch_pipe.generate(*ARGS, ["a red circle", "a blue star"][:k], **request) for k in (1, 2)}
    for k, want in expected.items():
        got = ort_pipe.generate(*ARGS, ["a red circle", "a blue star"][:k], **request)
        assert len(got.alphas) == k
        assert np.abs(got.full - want.full).max() < 1e-3
        assert np.abs(got.alphas[-1] - want.alphas[-1]).max() < 1e-3
    half = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=out, precision="fp16")
    assert np.abs(half.generate(*ARGS, ["a red circle"], **request).full - expected[1].full).max() < 0.05
    int8 = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=out, precision="int8")
    got = int8.generate(*ARGS, ["a red circle", "a blue star"], **request)
    assert 0 < np.abs(got.full - expected[2].full).mean() < 0.02 and len(got.alphas) == 2


def test_onnxruntime_backend_takes_given_layers_clean_as_torch_does(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    model, out = exported
    assert json.loads((out / "manifest.json").read_text())["timestep"] == "per_segment"
    assert [i.shape for i in session(out / "dit_k2.onnx").get_inputs() if i.name == "timestep"] == [["batch", 6]]
    background = np.random.default_rng(0).random((5, 32, 32, 3), dtype=np.float32)
    request = {"frames": 5, "height": 32, "width": 32, "steps": 3, "guidance": 3.0, "seed": 4, "conditioning": "clean"}
    given = Given(background=background)
    want = LayerT2VPipeline.from_folder(model).generate(*ARGS, ["a red circle", "a star"], given=given, **request)
    ort = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=out)
    got = ort.generate(*ARGS, ["a red circle", "a star"], given=given, **request)
    assert np.abs(got.full - want.full).max() < 1e-3 and np.array_equal(got.background, background)
    old = tmp_path / "old_export"
    shutil.copytree(out, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["timestep"]  # an export from before per-segment timesteps
    (old / "manifest.json").write_text(json.dumps(manifest))
    stale = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=old)
    with pytest.raises(ValueError, match="one timestep per sample, not per segment: export again"):
        stale.generate(*ARGS, ["a red circle"], given=given, **request)


def test_an_export_from_before_text_positions_still_runs(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Registered versions carry graphs that take every text position (no `text_positions` input): the runtime
    feeds them what they take, and they sample what torch samples."""
    model, out = exported
    old = tmp_path / "old_export"
    shutil.copytree(out, old)
    dit = load_dit(model).eval()
    example = dict(zip(INPUTS, step_inputs(CFG, Layout(1), SHAPE, 2, seed=0).values(), strict=True))
    before = [name for name in INPUTS if name != "text_positions"]
    dynamic = {name: ({0: torch.export.Dim("batch", min=1, max=2)} if name in BATCHED else None) for name in before}
    program = torch.onnx.export(
        dit,
        tuple(example[name] for name in before),
        dynamo=True,
        dynamic_shapes=dynamic,
        input_names=before,
        output_names=["velocity"],
    )
    program.save(str(old / "dit_k1.onnx"))
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(manifest | {"inputs": before}))
    assert [i.name for i in session(old / "dit_k1.onnx").get_inputs()] == before
    request = {"frames": 5, "height": 32, "width": 32, "steps": 3, "guidance": 3.0, "seed": 4}
    want = LayerT2VPipeline.from_folder(model).generate(*ARGS, ["a red circle"], **request)
    got = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=old).generate(
        *ARGS, ["a red circle"], **request
    )
    assert np.abs(got.full - want.full).max() < 1e-3


def test_onnxruntime_backend_refuses_a_size_it_was_not_exported_for(exported: tuple[Path, Path]) -> None:
    model, out = exported
    pipe = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=out)
    with pytest.raises(ValueError, match=r"for 5 frames of 32x32, not 9 of 32x32: export again"):
        pipe.generate(*ARGS, ["a red circle"], frames=9, height=32, width=32, steps=1)
    with pytest.raises(FileNotFoundError, match="run `layert2v export onnx` first"):
        LayerT2VPipeline.from_folder(model, backend="onnxruntime")  # no <model>/onnx


def test_parity_gate_fails_with_the_numbers_when_the_graph_is_not_the_model(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    model, out = exported
    other = load_dit(model)
    with torch.no_grad():
        other.head.head.bias.add_(0.01)  # a model the graphs no longer match
    with pytest.raises(GateFailed, match=r"k1_fp32_max_abs <= 0.001 \(k1_fp32_max_abs = 0.01"):
        parity_gate(other, out, EXPORT)
    report = json.loads((out / "gate.json").read_text())
    assert not report["passed"] and not next(r for r in report["rules"] if r["rule"].startswith("k1_fp32"))["passed"]
    parity_gate(load_dit(model), out, EXPORT)  # the folder is left passing for the other tests


def test_cli_generate_with_the_onnxruntime_backend_writes_layered_files(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    model, out = exported
    argv = ["generate", ARGS[0], "--background", ARGS[1], "--foreground", "a red circle", "--model", str(model)]
    argv += ["--backend", "onnxruntime", "--onnx", str(out), "--out", str(tmp_path / "clip")]
    argv += ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]
    assert main(argv) == 0
    names = {p.name for p in (tmp_path / "clip").iterdir()}
    assert {"full.mp4", "background.mp4"} <= names and any(n.endswith(".mov") for n in names)
    assert main([*argv[:-8], "--frames", "9", "--height", "32", "--width", "32", "--steps", "2"]) == 2


def test_tensorrt_backend_without_a_gpu_says_what_is_missing(exported: tuple[Path, Path]) -> None:
    from layert2v.export.tensorrt import TensorRTUnavailable

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the gpu-marked test covers TensorRT")
    model, out = exported
    with pytest.raises(TensorRTUnavailable, match="gpu"):
        LayerT2VPipeline.from_folder(model, backend="tensorrt", onnx=out)
    with pytest.raises(ValueError, match="TensorRT builds fp32 or fp16 graphs, not int8: use onnxruntime"):
        LayerT2VPipeline.from_folder(model, backend="tensorrt", onnx=out, precision="int8")
    assert main(["export", "tensorrt", "--model", str(model), "--onnx", str(out)]) == 2


@pytest.mark.gpu
def test_tensorrt_engine_matches_pytorch(exported: tuple[Path, Path]) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model, out = exported
    report = parity_gate(load_dit(model), out, EXPORT, backend="tensorrt")
    assert report.passed and list((out / "engines").glob("*.plan"))


def test_registered_version_carries_the_graphs_and_serves_on_onnxruntime(
    exported: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke
) -> None:
    import mlflow

    from layert2v.registry import register

    from .conftest import ROOT

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model, out = exported
    metrics = {"coherence_db": 20.0, "colour_adherence": 0.7}
    version = register(model, metrics, smoke, tmp_path, ROOT, onnx=out, parity=out)
    assert version.tags["onnx_opset"] == "23" and version.tags["onnx_precisions"] == "fp16,fp32,int8"
    assert float(version.tags["parity_max_abs.fp32"]) <= 1e-3
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(version.run_id, "export")}
    assert logged == {"export/parity.json", "export/gate.json", "export/gate.md"}

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model(f"models:/{smoke.registry.model_name}@challenger")
    assert served.unwrap_python_model().pipeline.backend == "onnxruntime"
    request = {"prompt": ARGS[0], "background_prompt": ARGS[1], "foreground_prompts": ["a red circle", "a blue star"]}
    [clip] = served.predict([request | {"frames": 5, "height": 32, "width": 32, "steps": 2}])
    assert clip["full"].shape == (5, 32, 32, 3) and len(clip["alphas"]) == 2


def test_auto_backend_probes_the_faster_cpu_path_per_k_once_per_host_and_model(
    exported: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layert2v.export import probe
    from layert2v.hostcache import cpu_model

    model, onnx = exported
    cache = tmp_path / "backends.json"
    verdicts = probe.fastest(model, onnx, cache)
    assert set(verdicts) == {1, 2}  # every K the export has graphs for
    for verdict in verdicts.values():
        seconds = verdict["seconds"]
        assert set(seconds) == {"torch", "onnxruntime"} and verdict["fastest"] == min(seconds, key=seconds.get)
    entries = json.loads(cache.read_text()).values()
    assert len(entries) == 2 and {e["cpu"] for e in entries} == {cpu_model()}
    assert {e["threads"] for e in entries} == {torch.get_num_threads()}

    def no_second_probe(*args, **kwargs):
        raise AssertionError("the verdicts are cached")

    monkeypatch.setattr(probe, "probe", no_second_probe)
    assert probe.pick_backend("auto", model, onnx, cache) == probe.choice(verdicts)
    assert probe.pick_backend("auto", model, None, cache) == probe.Choice("torch")  # no graphs: torch
    assert probe.pick_backend("onnxruntime", model, None, cache) == probe.Choice("onnxruntime")  # explicit wins


def test_auto_times_the_graphs_in_the_asked_precision_and_runs_it_where_it_can(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    from layert2v.export import probe
    from layert2v.serving.source import FolderSource

    from .conftest import ROOT

    model, onnx = exported
    cache = tmp_path / "backends.json"
    int8 = probe.pick_backend("auto", model, onnx, cache, precision="int8")
    fp32 = probe.pick_backend("auto", model, onnx, cache)
    assert len(json.loads(cache.read_text())) == 4  # a verdict per K and graph precision
    assert int8.precision == ("int8" if int8.backend == "onnxruntime" else None) and fp32.precision is None
    assert probe.pick_backend("auto", model, None, cache, precision="bf16") == probe.Choice("torch", precision="bf16")
    assert probe.pick_backend("auto", model, None, cache, precision="int8") == probe.Choice("torch")
    served = tmp_path / "served"
    shutil.copytree(model, served)
    shutil.copytree(onnx, served / "onnx")
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").serve, backend="onnxruntime", int8=True)
    loaded = FolderSource(served).load("folder", cfg)
    assert loaded.backend == "onnxruntime int8" and loaded.pipeline.denoiser.precision == "int8"
    assert FolderSource(served).load("folder", dataclasses.replace(cfg, backend="torch")).backend == "torch"


def test_a_choice_takes_the_graphs_only_at_the_ks_where_they_won() -> None:
    from layert2v.export.probe import Choice, choice

    def won(*backends: str) -> dict[int, dict]:
        return {k: {"fastest": backend} for k, backend in enumerate(backends, start=1)}

    assert choice(won("torch", "torch", "torch")) == Choice("torch")
    assert choice(won("onnxruntime", "onnxruntime")) == Choice("onnxruntime")
    mixed = choice(won("onnxruntime", "torch", "torch"))
    assert mixed == Choice("onnxruntime", frozenset({2, 3})) and str(mixed) == "onnxruntime (torch at K=2,3)"
    assert str(choice(won("onnxruntime", "torch"), "int8")) == "onnxruntime int8 (torch at K=2)"


def test_eager_ks_run_on_the_dit_and_the_others_on_the_graphs(
    exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mixed pipeline a per-K verdict builds: K = 2 on the DiT (exactly torch's sample, and free of the graphs'
    fixed clip size), K = 1 on onnxruntime (its graph runs, and refuses another size as before)."""
    from layert2v.export.runtime import OrtDenoiser

    model, out = exported
    mixed = LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=out, eager_ks=frozenset({2}))
    graph_calls = []
    run = OrtDenoiser.run
    monkeypatch.setattr(OrtDenoiser, "run", lambda self, k, inputs: graph_calls.append(k) or run(self, k, inputs))
    request = {"frames": 9, "height": 32, "width": 32, "steps": 2, "seed": 4}
    want = LayerT2VPipeline.from_folder(model).generate(*ARGS, ["a red circle", "a star"], **request)
    got = mixed.generate(*ARGS, ["a red circle", "a star"], **request)
    assert np.array_equal(got.full, want.full) and graph_calls == []
    with pytest.raises(ValueError, match=r"for 5 frames of 32x32, not 9 of 32x32: export again"):
        mixed.generate(*ARGS, ["a red circle"], **request)
    mixed.generate(*ARGS, ["a red circle"], **(request | {"frames": 5}))
    assert graph_calls and set(graph_calls) == {1}
    with pytest.raises(ValueError, match="eager_ks name Ks the DiT answers instead of graphs; torch has none"):
        LayerT2VPipeline.from_folder(model, eager_ks=frozenset({2}))
