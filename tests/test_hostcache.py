"""Cached probe verdicts are keyed by host: two hosts whose CPU shows the same name but other vector units (a
hypervisor's "AMD EPYC" for an AVX-512 Zen 5 and an AVX2-only part) each measure their own; an explicit bf16 on a
CPU that only emulates it is said, not silent."""

import warnings
from pathlib import Path

import pytest
import torch

from layert2v import hostcache
from layert2v.training import precision
from layert2v.training.precision import resolve_precision


def test_a_verdict_is_not_reused_on_a_host_with_other_vector_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert torch.backends.cpu.get_cpu_capability() in hostcache.cpu_model()
    cache, measured = tmp_path / "verdicts.json", []

    def verdict_on(capability: str, seconds: dict[str, float]) -> dict:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        return hostcache.cached_verdict(cache, "step", lambda: measured.append(capability) or seconds)

    assert verdict_on("AVX512", {"torch": 2.0, "onnxruntime": 1.0})["fastest"] == "onnxruntime"
    assert verdict_on("AVX2", {"torch": 1.0, "onnxruntime": 2.0})["fastest"] == "torch"
    assert verdict_on("AVX512", {"torch": 9.0, "onnxruntime": 9.0})["fastest"] == "onnxruntime"  # cached
    assert measured == ["AVX512", "AVX2"]


@pytest.mark.parametrize("native", [True, False])
def test_explicit_bf16_training_warns_only_where_bf16_is_emulated(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.precision: bf16-mixed` is kept as asked, with a warning on a CPU without bf16 kernels (an AVX2-only
    EPYC ran it 17x slower than fp32); where oneDNN has the kernels it says nothing."""
    monkeypatch.setattr(hostcache, "native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen, seconds = resolve_precision("bf16-mixed", None, None)  # type: ignore[arg-type]  # no probe runs
    assert (chosen, seconds) == ("bf16-mixed", {})
    messages = [str(w.message) for w in caught if issubclass(w.category, hostcache.SlowPrecision)]
    assert messages == (
        []
        if native
        else [
            f"train.precision: bf16 on {hostcache.cpu_model()}, which has no native "
            "bf16 kernels; it will run many times slower than fp32 here (choose fp32, "
            "or auto to let a probe decide)"
        ]
    )


def test_auto_precision_is_fp32_unprobed_where_bf16_is_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without bf16 kernels (an AVX2-only EPYC: stage 3's bf16 probe step took 41 s against 1.3 s in fp32) `auto`
    trains in fp32 and times nothing; with them it probes."""
    seconds = {"32-true": 2.0, "bf16-mixed": 1.0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    probes = []
    monkeypatch.setattr(precision, "cached_verdict", lambda *args: probes.append(args) or {"seconds": seconds})
    monkeypatch.setattr(precision, "_batch", lambda data: {})
    monkeypatch.setattr(precision, "_subject", lambda module, batch: "step")
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert resolve_precision("auto", None, None) == ("32-true", {})  # type: ignore[arg-type]  # no probe runs
    assert probes == []
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert resolve_precision("auto", None, None) == ("bf16-mixed", seconds)  # type: ignore[arg-type]
    assert len(probes) == 1
