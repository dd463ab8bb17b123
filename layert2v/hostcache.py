"""Verdicts of short timing probes, cached per host in one JSON file per kind of verdict.

No fixed choice of backend or precision is fastest on every CPU: hosts of one machine kind are AMD or Intel, with
or without native bf16, and onnxruntime or bf16 autocast won on one and lost on another (docs/results.md). A probe
times the candidates once; its verdict is keyed by the CPU model, the thread count and what was timed, so a host
pays each probe once.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

CACHE_DIR = Path.home() / ".cache" / "layert2v"


def cpu_model() -> str:
    """The CPU's model name, family and model numbers, and the widest vector ISA torch dispatches to on it (what
    hosts of one machine kind differ in). Not the name alone: a hypervisor may show "AMD EPYC" for a Zen 5 with
    AVX-512 and for an AVX2-only part alike, and a verdict cached on one would then be reused on the other."""
    first: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().split("\n\n", 1)[0].splitlines():  # the first processor's block
            key, _, value = line.partition(":")
            first[key.strip()] = value.strip()
    name = first.get("model name") or platform.processor() or platform.machine()
    numbers = f"family {first['cpu family']} model {first['model']}, " if "cpu family" in first else ""
    return f"{name} ({numbers}{torch.backends.cpu.get_cpu_capability()})"


class SlowPrecision(UserWarning):
    """bf16 asked for on a CPU that has no native bf16 kernels, where it runs many times slower than fp32."""


def native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX-512 with bf16, AMX); elsewhere it emulates them."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_if_bf16_is_emulated(where: str) -> None:
    """Say so when bf16 is asked for explicitly (`train.precision: bf16-mixed`, `--precision bf16`) on a CPU whose
    oneDNN has no bf16 kernels: there every bf16 GEMM is emulated, and an AVX2-only AMD EPYC ran a training step 17x
    slower than in fp32 (docs/results.md). `auto` never picks it there; an explicit choice is kept, not overridden."""
    if not native_bf16():
        warnings.warn(
            f"{where}: bf16 on {cpu_model()}, which has no native bf16 kernels; it will run many times slower "
            "than fp32 here (choose fp32, or auto to let a probe decide)",
            SlowPrecision,
            stacklevel=3,
        )


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall time of `repeats` calls of `fn` after `warmup` untimed ones (first-call allocations, sessions):
    the machine is noisy, one call says little. The one timing rule of the probes and the benchmarks."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def host_key(subject: str) -> str:
    """A short key of this host (CPU model, torch's thread count) and `subject` (what the probe timed)."""
    return hashlib.sha256(f"{cpu_model()}|{torch.get_num_threads()}|{subject}".encode()).hexdigest()[:16]


def cached_verdict(cache: Path, subject: str, measure: Callable[[], dict[str, float]]) -> dict:
    """`{"cpu", "threads", "seconds", "fastest"}` for `subject` on this host: from `cache`, or `measure()` (seconds
    per candidate) run now and stored there."""
    key = host_key(subject)
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        seconds = measure()
        known[key] = {
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "seconds": seconds,
            "fastest": min(seconds, key=seconds.get),
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2) + "\n")
    return known[key]
