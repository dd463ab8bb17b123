"""Registry on a temp SQLite MLflow store: register as challenger, promote by the rule, refuse a regression,
roll back, and load `models:/layert2v@champion` as a pyfunc that generates layers."""

import dataclasses
from pathlib import Path

import mlflow
import pytest
import torch

from layert2v.config import RegistryConfig, model_preset
from layert2v.models.dit import LayerDiT
from layert2v.models.text import load_text_encoder
from layert2v.models.vae import LayerVAE
from layert2v.pipeline import LayerT2VPipeline
from layert2v.registry import CHAMPION, decide, promote, register, rollback
from layert2v.serving.schema import REQUIRED

from .conftest import ROOT

GOOD = {"coherence_db": 20.0, "colour_adherence": 0.7, "shape_adherence": 0.5}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = model_preset("tiny")
    pipeline = LayerT2VPipeline(LayerDiT(cfg), LayerVAE(cfg), load_text_encoder(None, cfg.text_len))
    return pipeline.save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: sqlite:///<root>/mlflow.db
    return tmp_path


def test_decide_rule() -> None:
    rule = RegistryConfig(primary="coherence_db", tolerance={"colour_adherence": 0.05})
    assert decide(GOOD, None, rule) == (True, "no champion yet")
    assert decide(GOOD | {"coherence_db": 21.0}, GOOD, rule)[0]
    assert not decide(GOOD, GOOD, rule)[0]  # no improvement on the primary metric
    worse = decide(GOOD | {"coherence_db": 25.0, "colour_adherence": 0.6}, GOOD, rule)
    assert not worse[0] and "colour_adherence regressed" in worse[1]
    assert decide(GOOD | {"coherence_db": 25.0, "colour_adherence": 0.66}, GOOD, rule)[0]  # within tolerance
    assert not decide(GOOD | {"coherence_db": 20.5}, GOOD, dataclasses.replace(rule, min_improvement=1.0))[0]


def test_a_share_may_drop_by_what_sampling_noise_moves_it() -> None:
    """chain72's champion evaluated with sampling seeds 0 and 1 (16 prompts, 39 foregrounds; docs/results.md): the
    tolerance alone turned the second evaluation away; a drop the counts can tell from noise still is a regression,
    and the allowance narrows as the counts grow."""
    rule = RegistryConfig(primary="coherence_db", tolerance={"colour_adherence": 0.05, "shape_adherence": 0.05})
    champion = {"coherence_db": 28.85, "colour_adherence": 38 / 39, "shape_adherence": 16 / 39, "foregrounds": 39.0}
    reseeded = {"coherence_db": 29.30, "colour_adherence": 35 / 39, "shape_adherence": 10 / 39, "foregrounds": 39.0}
    assert decide(reseeded, champion, rule)[0]
    plain = decide(reseeded, champion, dataclasses.replace(rule, noise_z=0.0))
    assert not plain[0] and "colour_adherence regressed" in plain[1]
    worse = decide(reseeded | {"shape_adherence": 8 / 39}, champion, rule)
    assert not worse[0] and "shape_adherence regressed" in worse[1] and "sampling noise" in worse[1]
    many = {"foregrounds": 4000.0}
    assert not decide(reseeded | many, champion | many, rule)[0]
    uncounted = {k: v for k, v in champion.items() if k != "foregrounds"}  # registered before the counts were
    assert not decide(reseeded, uncounted, rule)[0]


def test_register_promote_refuse_rollback_and_serve(model: Path, root: Path, smoke) -> None:
    rule = smoke.registry
    first = register(model, GOOD, smoke, root, ROOT)
    assert str(first.version) == "1" and first.tags["preset"] == "tiny" and len(first.tags["git_commit"]) == 40
    assert first.tags["data_version"].endswith(".dir") and first.tags["metric.coherence_db"] == "20"
    decision = promote(rule, root, actor="ci")
    assert decision.promote and decision.reason == "no champion yet" and decision.champion is None

    register(model, GOOD | {"coherence_db": 30.0, "colour_adherence": 0.2}, smoke, root, ROOT)
    refused = promote(rule, root, actor="ci")
    assert not refused.promote and "colour_adherence regressed" in refused.reason

    register(model, GOOD | {"coherence_db": 22.0}, smoke, root, ROOT)
    better = promote(rule, root, actor="ci")
    assert better.promote and better.champion == "1"
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(rule.model_name, CHAMPION)
    assert str(champion.version) == "3" and champion.tags["promoted_by"] == "ci"
    assert champion.tags["previous_champion"] == "1" and "improved" in champion.tags["promoted_reason"]
    assert client.get_model_version(rule.model_name, "2").tags["rejected_reason"].startswith("colour_adherence")

    assert rollback(rule, root, actor="ci", reason="bad samples in review") == "1"
    assert str(client.get_model_version_by_alias(rule.model_name, CHAMPION).version) == "1"
    assert client.get_model_version(rule.model_name, "3").tags["rolled_back_reason"] == "bad samples in review"
    with pytest.raises(ValueError, match="replaced no earlier champion"):
        rollback(rule, root)

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model(f"models:/{rule.model_name}@{CHAMPION}")
    request = {"prompt": "a red circle", "background_prompt": "a grey wall", "foreground_prompts": ["a red circle"]}
    [clip] = served.predict([request | {"frames": 5, "height": 32, "width": 32, "steps": 2}])
    assert clip["full"].shape == (5, 32, 32, 3) and len(clip["alphas"]) == 1
    assert [c.name for c in served.metadata.get_input_schema().inputs][:3] == list(REQUIRED)
    assert {c.name for c in served.metadata.get_output_schema().inputs} == {
        "full",
        "background",
        "foregrounds",
        "alphas",
    }
    [clip] = served.predict([request | {"frames": 5, "height": 32, "width": 32, "steps": 2, "guidance": 4}])
    assert clip["full"].shape == (5, 32, 32, 3)  # an integer guidance passes the schema
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing inputs"):
        served.predict([{"prompt": "a red circle"}])
    with pytest.raises(ValueError, match=r"composite_guidance must be in \[0, 1\], got 2.0"):
        served.predict([request | {"steps": 2, "composite_guidance": 2}])  # every field reaches the checks


def test_promote_without_challenger_is_a_clear_error(root: Path, smoke) -> None:
    with pytest.raises(ValueError, match="no 'challenger'"):
        promote(smoke.registry, root)
