"""Cached probe verdicts are keyed by host: two hosts whose CPU shows the same name but other vector units (a
hypervisor's "AMD EPYC" for an AVX-512 Zen 5 and an AVX2-only part) each measure their own."""

from pathlib import Path

import pytest
import torch

from layert2v import hostcache


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
