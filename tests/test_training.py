"""Training stages 0-1 on the tiny preset: real Lightning, real MLflow (SQLite in a temp dir), resume after SIGKILL."""

import dataclasses
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import lightning as L
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from layert2v.config import DiTStageConfig, StageConfig, model_preset
from layert2v.data.datamodule import LatentClips, PreparedClips, SameKBatches, collate_clips, training_captions
from layert2v.data.synthetic import WORDS
from layert2v.evaluate import reworded_prompts, validation_prompts
from layert2v.models.checkpoint import known_segments, load_vae, save_vae
from layert2v.models.colour_words import folder_colour_words, known_colour_words
from layert2v.models.dit import LayerDiT
from layert2v.models.layout import Layout
from layert2v.models.vae import LayerVAE, alpha_to_latent_grid
from layert2v.pipeline import LayerT2VPipeline
from layert2v.quality.report import GateFailed
from layert2v.quality.sample_gate import sample_gate
from layert2v.training import precision
from layert2v.training.encode import encode_prepared
from layert2v.training.objective import ema_decay_at, flow_losses
from layert2v.training.run import STAGES, _guard_resume, fingerprint, train_stage
from layert2v.training.schedule import GradNormClip, Muon, adamw_warmup_cosine, dit_optimizer
from layert2v.training.spec import StageContext
from layert2v.training.stage2_joint import JointLayerTraining

from .conftest import ROOT


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_stages_0_1_encode_2_3_smoke_tracked_in_mlflow(tmp_path: Path, smoke, smoke_prepared, tracking: str) -> None:
    out = tmp_path / "train"
    weights0 = train_stage(0, smoke, smoke_prepared.out, out, tmp_path)
    vae = load_vae(out / "stage0")
    assert weights0.is_file() and not vae.latent_std.eq(1).all()  # latent statistics were fitted from data
    weights1 = train_stage(1, smoke, smoke_prepared.out, out, tmp_path)
    assert weights1.is_file() and load_vae(out / "stage1").lora_rank == smoke.train.stage1.decoder_lora_rank > 0
    encode_prepared(load_vae(out / "stage1"), smoke_prepared.out, tmp_path / "latents")
    config2 = train_stage(2, smoke, smoke_prepared.out, out, tmp_path, latents=tmp_path / "latents")
    strict = dataclasses.replace(smoke.evaluate, stage_gates={"stage2": {"coherence_db": 1000.0}})
    with pytest.raises(GateFailed, match=r"coherence_db >= 1000\.0 \(coherence_db = "):
        sample_gate(
            "stage2", dataclasses.replace(smoke, evaluate=strict), smoke_prepared.out, out, tmp_path / "gates", tmp_path
        )
    assert not (tmp_path / "gates" / "stage2" / "passed").exists()  # what stage 3 depends on
    sample_gate("stage2", smoke, smoke_prepared.out, out, tmp_path / "gates", tmp_path)
    pipeline = LayerT2VPipeline.from_folder(config2.parent)  # stage 2 leaves a complete model folder
    video = pipeline.generate("a red circle", "a grey wall", ["a red circle"], frames=5, height=32, width=32, steps=2)
    assert video.full.shape == (5, 32, 32, 3) and len(video.alphas) == 1
    config3 = train_stage(3, smoke, smoke_prepared.out, out, tmp_path, latents=tmp_path / "latents")
    sample_gate("stage3", smoke, smoke_prepared.out, out, tmp_path / "gates", tmp_path)
    two = LayerT2VPipeline.from_folder(config3.parent).generate(
        "a red circle and a blue star",
        "a grey wall",
        ["a red circle", "a blue star"],
        frames=5,
        height=32,
        width=32,
        steps=2,
    )
    assert len(two.alphas) == 2
    assert known_segments(config2.parent) == "replace" and known_segments(config3.parent) == "clean"  # smoke: 0 / 0.5
    captions = known_colour_words(training_captions(smoke_prepared.out))
    assert captions and folder_colour_words(config3.parent).known == captions  # the words its training captions used

    client = mlflow.MlflowClient(tracking)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("layert2v").experiment_id])}
    assert set(runs) == {"pipeline", "stage0", "stage1", "stage2", "stage3"}
    parent = runs["pipeline"].info.run_id
    assert all(runs[f"stage{n}"].data.tags["mlflow.parentRunId"] == parent for n in range(4))
    assert "train/fm_alpha_2" in runs["stage3"].data.metrics  # stage 3 saw two-foreground batches
    assert {"val/fm", "val/consistency", "train/fm_alpha_1", "train/alpha"} <= set(runs["stage2"].data.metrics)
    for stage in ("stage2", "stage3"):  # gated on finite losses; their sample gates log into the same run
        run = runs[stage]
        assert run.data.tags["gate"] == "passed" and run.data.tags["sample_gate"] == "passed"
        assert "sample/coherence_db" in run.data.metrics and "sample/colour_adherence" in run.data.metrics
        previews = {Path(a.path).suffix for a in client.list_artifacts(run.info.run_id, "previews")}
        assert previews == {".png", ".gif"}
        weights = (out / stage / "model" / "dit.safetensors").read_bytes()
        assert (tmp_path / "gates" / stage / "passed").read_text().strip() == hashlib.sha256(weights).hexdigest()
        assert run.data.params["model.text_len"] == str(smoke.prepare.max_tokens)  # the DiT config it trained
        assert run.data.params["compile_used"] == str(smoke.train.stage2.compile is True)  # auto: eager in 32-true
    stage0 = runs["stage0"]
    assert stage0.data.params["train.preset"] == "tiny" and stage0.data.params["stage.max_steps"] == "4"
    assert "val/psnr_rgb" in stage0.data.metrics and "val/alpha_iou" in runs["stage1"].data.metrics
    assert {"ceiling_shape_adherence", "ceiling_alpha_iou", "ceiling_blockiness"} <= set(runs["stage1"].data.metrics)
    assert len(client.get_metric_history(stage0.info.run_id, "train/loss")) == 4
    assert {a.path for a in client.list_artifacts(stage0.info.run_id, "weights")} == {
        "weights/vae.safetensors",
        "weights/config.json",
    }


def test_stage1_without_stage0_is_a_clear_error(tmp_path: Path, smoke, smoke_prepared, tracking: str) -> None:
    with pytest.raises(FileNotFoundError, match=r"stage0 has no config\.json: run the stage that writes it first"):
        train_stage(1, smoke, smoke_prepared.out, tmp_path / "train", tmp_path)


@pytest.mark.slow
def test_killed_stage_resumes_from_its_last_checkpoint(tmp_path: Path, smoke, smoke_prepared, tracking: str) -> None:
    longer = dataclasses.replace(smoke.train.stage0, max_steps=200, checkpoint_every=2, val_every=1000)
    raw = yaml.safe_load(subprocess.run(
        [sys.executable, "-m", "layert2v.cli", "params", "--params", str(ROOT / "params.yaml"), "--profile", "smoke"],
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    raw["train"]["stage0"] = dataclasses.asdict(longer)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "layert2v.cli", "train", "--stage", "0", "--params", str(params)]
    cmd += ["--prepared", str(smoke_prepared.out), "--out", str(tmp_path / "train"), "--root", str(tmp_path)]
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking}
    last = tmp_path / "train" / "stage0" / "checkpoints" / "last.ckpt"

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not last.is_file() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before it could be killed"
    first.send_signal(signal.SIGKILL)  # a few steps past the first checkpoint, far from the end
    first.wait()
    run_id = (tmp_path / "train" / "stage0" / "mlflow_run_id").read_text().strip()
    client = mlflow.MlflowClient(tracking)
    killed_at = max((m.step for m in client.get_metric_history(run_id, "train/loss")), default=-1)
    assert killed_at < longer.max_steps // 2, f"killed at step {killed_at}: too late to test a resume"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in second.stdout + second.stderr
    assert (tmp_path / "train" / "stage0" / "mlflow_run_id").read_text().strip() == run_id  # same MLflow run
    steps = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    stage_runs = client.search_runs([client.get_run(run_id).info.experiment_id], "attributes.run_name = 'stage0'")
    assert max(steps) == longer.max_steps - 1 and len(stage_runs) == 1


def test_checkpoints_made_under_other_params_are_set_aside_not_resumed(tmp_path: Path, smoke) -> None:
    out, latents = tmp_path / "train", tmp_path / "latents"
    folder = out / "stage0"
    ctx = lambda params: StageContext(params, tmp_path / "prepared", out, latents)  # noqa: E731
    _guard_resume(folder, fingerprint(STAGES["stage0"], ctx(smoke)))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (folder / "mlflow_run_id").write_text("abc\n")
    _guard_resume(folder, fingerprint(STAGES["stage0"], ctx(smoke)))  # same params: resumable
    assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "mlflow_run_id").is_file()

    changed = dataclasses.replace(smoke, train=dataclasses.replace(smoke.train, seed=1))
    _guard_resume(folder, fingerprint(STAGES["stage0"], ctx(changed)))
    assert not (folder / "checkpoints").exists() and not (folder / "mlflow_run_id").exists()
    assert (folder / "stale-checkpoints" / "last.ckpt").read_bytes() == b"weights"  # set aside, not deleted
    (out / "stage0" / "vae.safetensors").write_bytes(b"v1")
    before = fingerprint(STAGES["stage1"], ctx(smoke))
    (out / "stage0" / "vae.safetensors").write_bytes(b"v2")
    assert fingerprint(STAGES["stage1"], ctx(smoke)) != before  # new upstream weights: stage 1 starts afresh


def test_stage2_without_latents_is_a_clear_error(tmp_path: Path, smoke, smoke_prepared, tracking: str) -> None:
    with pytest.raises(FileNotFoundError, match="run `layert2v encode` first"):
        train_stage(2, smoke, smoke_prepared.out, tmp_path / "train", tmp_path, latents=tmp_path / "none")


def test_stage_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        StageConfig(max_steps=5, batch_size=2, lr=1e-3, warmup_steps=5)


class GradNorms(L.Callback):
    """Records the gradient norm each time the optimiser is about to step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))))


class Steep(L.LightningModule):
    """A linear layer under a loss steep enough that every gradient norm is far over 1."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 8)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        return 1e3 * self.layer(batch[0]).square().mean()

    def configure_optimizers(self) -> dict:
        return adamw_warmup_cosine(self.parameters(), StageConfig(max_steps=3, batch_size=4, lr=1e-3, warmup_steps=0))


def test_stages_clip_gradients_with_the_fused_optimiser_in_bf16(tmp_path: Path) -> None:
    """The stages' fused AdamW under bf16-mixed (what `auto` picks on bf16 hosts): Lightning's `gradient_clip_val`
    refuses that pair, `GradNormClip` clips it to the stage's norm."""
    before, after = GradNorms(), GradNorms()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 8)), batch_size=4)
    L.Trainer(
        max_steps=3, precision="bf16-mixed", callbacks=[before, GradNormClip(1.0), after], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
    ).fit(Steep(), data)  # fmt: skip
    assert len(after.norms) == 3 and min(before.norms) > 10
    assert max(after.norms) == pytest.approx(1.0, rel=1e-3)


def tiny_dit_batch(seed: int) -> tuple[LayerDiT, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    cfg = model_preset("tiny")
    layout = Layout(1)
    batch = {
        "segments": torch.randn(4, layout.num_segments, cfg.latent_channels, 2, 4, 4),
        "alpha_grid": torch.rand(4, 1, 1, 2, 4, 4),
        "text": torch.randn(4, layout.num_prompts, cfg.text_len, cfg.text_dim),
        "text_mask": torch.ones(4, layout.num_prompts, cfg.text_len, dtype=torch.bool),
        "clear": torch.zeros(cfg.latent_channels, 2, 4, 4),
    }
    return LayerDiT(cfg), batch


def test_muon_takes_the_blocks_matrices_learns_and_resumes_from_its_state(tmp_path: Path) -> None:
    """`optimizer: muon`: the blocks' 2-D weights step by Muon, everything else by AdamW, both on the stage's one
    schedule; the pair lowers a DiT's loss, and its state round-trips through a checkpoint so a resumed stage takes
    the step the killed one would have."""
    stage = DiTStageConfig(max_steps=40, batch_size=4, lr=1e-2, warmup_steps=5, optimizer="muon")
    dit, batch = tiny_dit_batch(0)
    configured = dit_optimizer(dit, stage)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    matrices = {id(p) for group in optimizer.muon.param_groups for p in group["params"]}
    assert matrices == {id(p) for n, p in dit.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    assert len(matrices) + sum(len(g["params"]) for g in optimizer.adamw.param_groups) == len(list(dit.parameters()))

    def step() -> float:
        torch.manual_seed(len(losses))  # the same noise and timesteps for the original and the resumed run
        loss = flow_losses(batch, dit, stage, 0.0)["loss"]
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return loss.item()

    losses: list[float] = []
    while len(losses) < 30:
        losses.append(step())
    assert [g["lr"] for g in optimizer.param_groups] == [scheduler.get_last_lr()[0]] * len(optimizer.param_groups)
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])  # 4 random clips: a slow fit at any rate

    torch.save(
        {"dit": dit.state_dict(), "opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, tmp_path / "c"
    )
    expected = step()
    after = {k: v.clone() for k, v in dit.state_dict().items()}
    saved = torch.load(tmp_path / "c", weights_only=True)
    dit.load_state_dict(saved["dit"])
    configured = dit_optimizer(dit, stage)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    optimizer.load_state_dict(saved["opt"])
    scheduler.load_state_dict(saved["sched"])
    assert step() == pytest.approx(expected)
    assert all(torch.allclose(v, after[k]) for k, v in dit.state_dict().items())


def test_compile_auto_compiles_where_it_was_measured_to_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    """`compile: auto` trains compiled on a CPU with native bf16 kernels in bf16-mixed only; every other host and
    precision stays eager."""
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda native=native: native)
        assert precision.compile_pays("bf16-mixed", cpu) == native
        assert not precision.compile_pays("32-true", cpu)
        assert not precision.compile_pays("bf16-mixed", torch.device("cuda"))
    assert DiTStageConfig(max_steps=4, batch_size=1, lr=1e-3, warmup_steps=1, compile="auto").compile == "auto"
    with pytest.raises(ValueError, match="compile must be true, false or auto, got 'yes'"):
        DiTStageConfig(max_steps=4, batch_size=1, lr=1e-3, warmup_steps=1, compile="yes")


def test_compiled_stage_trains_the_same_dit_with_the_same_losses_and_gradients() -> None:
    """`compile: true` compiles the stage's live DiT's blocks in place when training starts (after the precision probe has
    timed the eager step): its losses and gradients are eager's within float rounding, its state dict keeps the
    keys that checkpoints, the EMA and `save_model` use, and the EMA (validation, saving) stays eager."""
    stage = DiTStageConfig(max_steps=4, batch_size=4, lr=1e-3, warmup_steps=1, compile=True)
    module = JointLayerTraining(model_preset("tiny"), stage)
    _, batch = tiny_dit_batch(0)
    keys = list(module.dit.state_dict())

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(1)
        loss = module.training_step(batch, 0)
        loss.backward()
        grads = [p.grad.clone() for p in module.dit.parameters()]
        module.zero_grad(set_to_none=True)
        return loss.item(), grads

    with mock.patch.object(module, "log"), mock.patch.object(module, "log_dict"):
        eager_loss, eager_grads = loss_and_grads()
        module.on_train_start()
        compiled_loss, compiled_grads = loss_and_grads()
    assert all(block._compiled_call_impl is not None for block in module.dit.blocks)
    assert module.dit.blocks_compiled and not module.ema.blocks_compiled
    assert all(block._compiled_call_impl is None for block in module.ema.blocks)
    assert list(module.dit.state_dict()) == keys
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    assert all(torch.allclose(c, e, atol=1e-5, rtol=1e-3) for c, e in zip(compiled_grads, eager_grads, strict=True))


def test_batched_muon_takes_torchs_muon_steps() -> None:
    """`schedule.Muon` batches the Newton-Schulz iterations by shape (and keeps them in fp32 where bf16 is emulated):
    the same steps as `torch.optim.Muon` with the AdamW-matched rate, to its bf16 rounding."""
    torch.manual_seed(0)
    shapes = [(24, 24), (24, 24), (64, 24), (24, 64)]
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    mine = Muon(ours, lr=0.01, weight_decay=0.1)
    reference = torch.optim.Muon(theirs, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        grads = [torch.randn(shape) for shape in shapes]
        for params, optimizer in ((ours, mine), (theirs, reference)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for p, q, p0 in zip(ours, theirs, start, strict=True):
        moved, expected = p.detach() - p0, q.detach() - p0
        assert float((moved - expected).norm() / expected.norm()) < 0.06  # bf16 alone moves it 2-4%


def test_alpha_on_the_latent_grid() -> None:
    alpha = torch.zeros(1, 1, 9, 16, 16)
    alpha[:, :, 0, :8, :8] = 1.0  # frame 0: top-left block
    alpha[:, :, 1:5, 8:, 8:] = 0.5  # frames 1-4: bottom-right block at half
    grid = alpha_to_latent_grid(alpha, 8)
    assert grid.shape == (1, 1, 3, 2, 2)
    assert grid[0, 0, 0, 0, 0] == 1 and grid[0, 0, 1, 1, 1] == 0.5 and grid[0, 0, 2].abs().sum() == 0
    fine = alpha_to_latent_grid(alpha, 4)
    assert fine.shape == (1, 1, 3, 4, 4) and fine[0, 0, 0, :2, :2].eq(1).all() and fine[0, 0, 0, 2:].eq(0).all()


def test_encode_writes_the_latent_cache(tmp_path: Path, smoke_prepared) -> None:
    torch.manual_seed(0)
    save_vae(LayerVAE(model_preset("tiny")), tmp_path / "vae")
    shapes = encode_prepared(load_vae(tmp_path / "vae"), smoke_prepared.out, tmp_path / "latents")
    manifest = pd.read_parquet(smoke_prepared.out / "manifest.parquet")
    for split, rows in manifest.groupby("split"):
        assert shapes[split] == [len(rows), 16, 2, 4, 4]  # 5 frames -> 2 latent frames, 32 px -> 4
        folder = tmp_path / "latents" / split
        fg, alpha, grid = (np.load(folder / f"{n}.npy") for n in ("foreground", "alpha", "alpha_grid"))
        assert len(fg) == len(alpha) == len(grid) == rows["num_fg"].sum() and fg.dtype == np.float16
        assert grid.min() >= 0 and grid.max() <= 1 and grid.shape[1:] == (1, 2, 4, 4)
    vae = load_vae(tmp_path / "vae")
    clear = np.load(tmp_path / "latents" / "clear.npy")
    assert clear.shape == (16, 2, 4, 4) and np.abs(clear).max() > 0.1  # the VAE does not map black to 0
    np.testing.assert_allclose(clear, vae.encode_rgb(torch.zeros(1, 3, 5, 32, 32))[0].detach().numpy(), atol=1e-6)
    single = LatentClips(smoke_prepared.out, tmp_path / "latents", "train", max_fg=1)
    assert torch.equal(single[0]["clear"], torch.from_numpy(clear))
    train = manifest[manifest["split"] == "train"]
    assert len(single) == (train["num_fg"] == 1).sum() < len(train)  # clips with more layers are left out
    assert all(single[i]["segments"].shape[0] == 4 for i in range(len(single)))
    prompts = validation_prompts(smoke_prepared.out, 8, max_fg=1)
    assert prompts and all(len(p.foregrounds) == 1 for p in prompts)
    (tmp_path / "latents" / "clear.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"clear\.npy is missing: .* run encode again"):
        LatentClips(smoke_prepared.out, tmp_path / "latents", "train", max_fg=1)


def test_auto_precision_times_the_stage_once_per_host_and_leaves_the_seeded_run_as_it_was(
    tmp_path: Path, smoke, smoke_prepared, tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "precision.json"
    monkeypatch.setattr(precision, "CACHE", cache)
    monkeypatch.setattr(precision, "MIN_SPEEDUP", 1e9)  # the verdict: fp32, so the run can be compared bit for bit
    monkeypatch.setattr(precision, "native_bf16", lambda: True)  # probed on every host (AVX2 ones skip it)
    auto = dataclasses.replace(smoke, train=dataclasses.replace(smoke.train, precision="auto"))
    probed = train_stage(0, auto, smoke_prepared.out, tmp_path / "auto", tmp_path)
    fp32 = train_stage(0, smoke, smoke_prepared.out, tmp_path / "fp32", tmp_path)
    assert hashlib.sha256(probed.read_bytes()).digest() == hashlib.sha256(fp32.read_bytes()).digest()
    [entry] = json.loads(cache.read_text()).values()
    assert set(entry["seconds"]) == {"32-true", "bf16-mixed"} and entry["threads"] == torch.get_num_threads()
    run = mlflow.MlflowClient(tracking).get_run((tmp_path / "auto" / "stage0" / "mlflow_run_id").read_text().strip())
    assert run.data.params["precision_used"] == "32-true"
    assert set(run.data.metrics) >= {"precision_probe/32-true_s", "precision_probe/bf16-mixed_s"}

    def no_second_probe(*args, **kwargs):
        raise AssertionError("the verdict is cached")

    monkeypatch.setattr(precision, "probe", no_second_probe)
    monkeypatch.setattr(precision, "MIN_SPEEDUP", 0.0)  # any gain is enough: bf16, from the cached seconds
    module, data = STAGES["stage0"].module, STAGES["stage0"].data
    ctx = StageContext(smoke, smoke_prepared.out, tmp_path / "auto", tmp_path / "latents")
    chosen, seconds = precision.resolve_precision("auto", module(ctx), data(ctx, smoke.train.stage0))
    assert chosen == "bf16-mixed" and seconds == entry["seconds"]
    assert precision.resolve_precision("32-true", module(ctx), data(ctx, smoke.train.stage0)) == ("32-true", {})


def test_a_failing_gate_stops_the_stage_with_metric_value_and_threshold(
    tmp_path: Path, smoke, smoke_prepared, tracking: str
) -> None:
    out = tmp_path / "train"
    train_stage(0, smoke, smoke_prepared.out, out, tmp_path)
    strict = dataclasses.replace(smoke.train.stage1, gate={"val/alpha_iou": 1.01, "val/psnr_rgb": 0.0})
    params = dataclasses.replace(smoke, train=dataclasses.replace(smoke.train, stage1=strict))
    with pytest.raises(GateFailed, match=r"val/alpha_iou >= 1\.01 \(val/alpha_iou = [0-9.]+, threshold 1\.01\)"):
        train_stage(1, params, smoke_prepared.out, out, tmp_path)
    report = json.loads((out / "stage1" / "gate.json").read_text())
    assert report["passed"] is False and [r["passed"] for r in report["rules"]] == [False, True]
    client = mlflow.MlflowClient(tracking)
    run = client.get_run((out / "stage1" / "mlflow_run_id").read_text().strip())
    assert run.data.tags["gate"] == "failed"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "gate")} == {"gate/gate.json", "gate/gate.md"}


def test_clip_batches_are_the_cached_frames_in_unit_range_with_zero_padding(smoke_prepared) -> None:
    clips = PreparedClips(smoke_prepared.out, "train", max_fg=3)
    batch = collate_clips([clips[i] for i in range(4)])
    cache = smoke_prepared.out / "cache" / "train"
    full, fg, alpha = (np.load(cache / f"{n}.npy") for n in ("full", "foreground", "alpha"))
    assert batch["full"].shape == (4, 3, 5, 32, 32) and batch["full"].dtype == torch.float32
    assert batch["foregrounds"].shape == (4, 3, 3, 5, 32, 32) and batch["alphas"].shape == (4, 3, 1, 5, 32, 32)
    row, start = clips.index[0, :2]
    assert torch.equal(batch["full"][0], torch.from_numpy(full[row]).permute(3, 0, 1, 2).float() / 255)
    assert torch.equal(batch["alphas"][0, 0, 0], torch.from_numpy(alpha[start]).float() / 255)
    assert torch.equal(batch["foregrounds"][0, 0], torch.from_numpy(fg[start]).permute(3, 0, 1, 2).float() / 255)
    for i, count in enumerate(batch["num_fg"].tolist()):
        assert batch["alphas"][i, count:].abs().sum() == 0 and batch["foregrounds"][i, count:].abs().sum() == 0
        assert batch["alphas"][i, :count].amax() > 0


def test_same_k_batches_never_mix_layouts() -> None:
    num_fg = [1, 2, 1, 3, 2, 1, 2, 3, 1, 2]
    sampler = SameKBatches(num_fg, batch_size=2, seed=0)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 5 and first != second  # 2 + 2 + 1 full batches, reshuffled each epoch
    for batch in first:
        assert len(batch) == 2 and len({num_fg[i] for i in batch}) == 1


def test_same_k_batches_k_weights_redistribute_an_epoch() -> None:
    num_fg = [1] * 20 + [2] * 20 + [3] * 20
    sampler = SameKBatches(num_fg, batch_size=2, seed=0, k_weights=[1.0, 2.0, 3.0])
    for _ in range(2):
        batches = list(sampler)
        ks = [num_fg[b[0]] for b in batches]
        assert len(batches) == len(sampler) == 30  # the natural epoch's length
        assert [ks.count(k) for k in (1, 2, 3)] == [5, 10, 15]
        assert all(len(b) == 2 and len({num_fg[i] for i in b}) == 1 for b in batches)
        threes = [i for b in batches for i in b if num_fg[i] == 3]
        assert sorted(set(threes)) == list(range(40, 60))  # oversampled: every K = 3 clip, 30 draws of 20
    with pytest.raises(ValueError, match=r"no weight for K = \[3\]"):
        SameKBatches(num_fg, batch_size=2, seed=0, k_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="give no batch"):
        SameKBatches(num_fg, batch_size=2, seed=0, k_weights=[0.0, 0.0, 0.0, 1.0])


@pytest.mark.slow
def test_stage0_under_ddp_on_two_cpu_processes(tmp_path: Path, smoke_prepared, tracking: str) -> None:
    """strategy ddp, devices 2 (gloo on CPU): both ranks train, rank 0 alone records the MLflow runs and saves."""
    raw = yaml.safe_load(subprocess.run(
        [sys.executable, "-m", "layert2v.cli", "params", "--params", str(ROOT / "params.yaml"), "--profile", "smoke"],
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    raw["train"] |= {"strategy": "ddp", "devices": 2}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "layert2v.cli", "train", "--stage", "0", "--params", str(params)]
    cmd += ["--prepared", str(smoke_prepared.out), "--out", str(tmp_path / "train"), "--root", str(tmp_path)]
    done = subprocess.run(cmd, env=os.environ | {"MLFLOW_TRACKING_URI": tracking}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name(raw["train"]["experiment"]).experiment_id
    names = sorted(r.info.run_name for r in client.search_runs([experiment]))
    assert names == ["pipeline", "stage0"]  # one of each, not one per rank
    run_id = (tmp_path / "train" / "stage0" / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.run_name == "stage0"
    assert (
        max(m.step for m in client.get_metric_history(run_id, "train/loss")) == raw["train"]["stage0"]["max_steps"] - 1
    )
    assert load_vae(tmp_path / "train" / "stage0") is not None
    perf = json.loads((tmp_path / "train" / "stage0" / "perf.json").read_text())
    assert 0 <= perf["perf/data_wait_fraction"] < 1 and perf["perf/samples_per_s"] > 0
    assert client.get_run(run_id).data.metrics["perf/step_s"] == pytest.approx(perf["perf/step_s"])


def test_ema_warms_up_so_a_short_run_saves_what_it_learnt() -> None:
    """The saved DiT is the EMA: after a 250-step run almost none of the random initial weights may remain in it
    (a fixed 0.999 decay would keep 78%), and long runs still average with the configured decay."""
    decays = [ema_decay_at(step, 0.999) for step in range(250)]
    assert math.prod(decays) < 1e-3
    assert decays == sorted(decays) and ema_decay_at(100_000, 0.999) == 0.999


def test_reworded_prompts_ask_for_the_same_clips_in_held_out_words(smoke_prepared) -> None:
    prompts = validation_prompts(smoke_prepared.out, 4, 3)
    others = reworded_prompts(prompts)
    assert len(others) == len(prompts)
    for prompt, other in zip(prompts, others, strict=True):
        assert other.attributes == prompt.attributes and other.clip_id == prompt.clip_id
        assert other.prompt != prompt.prompt and len(other.foregrounds) == len(prompt.foregrounds)
        assert all(WORDS[a["colour"]][-1] in text for a, text in zip(other.attributes, other.foregrounds, strict=True))
    imported = [dataclasses.replace(p, scene={}) for p in prompts]  # no recorded scene: nothing to reword
    assert reworded_prompts(imported) == []
