"""`train.precision: auto`: bf16-mixed where it pays on this host, else 32-true, decided by timing the stage's step.

bf16 autocast ran the `small` DiT training step 1.35-1.44x faster than fp32 on an Intel Xeon with AMX and 1.5-1.7x on
a Zen 5, with the chain's gate figures unchanged within noise, but the `tiny` preset's step 0.82x (it is overhead,
not GEMMs) and a CPU without native bf16 kernels gains nothing (docs/results.md, Benchmarks). So no fixed setting is
right everywhere: `auto` times a few forward + backward passes of the stage's own module on one of its batches in
each precision, keeps bf16-mixed only when it is at least `MIN_SPEEDUP` faster, and caches the verdict per host
(`hostcache`), so each host and stage shape pays the probe (seconds) once. Where oneDNN has no bf16 kernels (AVX2-only
CPUs) there is nothing to time: bf16 is emulated there, and its probe alone took 4 minutes of the first chain (stage
3's bf16 step 41 s against 1.3 s in fp32 on a Zen 3), so `auto` is 32-true without one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch

from layert2v.hostcache import CACHE_DIR, cached_verdict, median_seconds, native_bf16, warn_if_bf16_is_emulated

CACHE = CACHE_DIR / "precision.json"
MIN_SPEEDUP = 1.1  # bf16 rounds every GEMM input: below this gain it is not worth it
PRECISIONS = {"32-true": False, "bf16-mixed": True}  # Lightning's name -> bf16 autocast


def _batch(data: L.LightningDataModule) -> dict[str, torch.Tensor]:
    """The first training batch (training's shapes: a validation batch may be smaller, and bf16 pays by batch size)
    from a loader of its own; the Trainer makes its own loader, whose order this does not touch."""
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def _subject(module: L.LightningModule, batch: dict) -> str:
    """What is timed: the module's class and size and the batch's shapes."""
    size = sum(p.numel() for p in module.parameters() if p.requires_grad)
    shapes = sorted((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor))
    return f"{type(module).__qualname__}|{size}|{shapes}"


def step_seconds(module: L.LightningModule, batch: dict, bf16: bool, repeats: int = 3) -> float:
    """Median seconds of the module's training step plus backward (no optimiser step; gradients dropped), after a
    warm-up call, in bf16 autocast or fp32."""

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch, 0)
        loss.backward()
        module.zero_grad(set_to_none=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer warns
        return median_seconds(step, repeats, warmup=1)


def probe(module: L.LightningModule, batch: dict) -> dict[str, float]:
    """Seconds of one step per precision name."""
    return {name: step_seconds(module, batch, bf16) for name, bf16 in PRECISIONS.items()}


def resolve_precision(
    configured: str,
    module: L.LightningModule,
    data: L.LightningDataModule,
    processes: int = 1,
    cache: Path | None = None,
) -> tuple[str, dict[str, float]]:
    """The Lightning precision to train with and the probe's seconds (empty when none ran). `configured` other than
    `auto` is kept. On a GPU, `auto` is bf16-mixed where the GPU has bf16; on a CPU it is the probe's verdict, for
    one process only: DDP ranks must agree, and a probe per rank might not, so they take 32-true; a CPU without
    bf16 kernels takes 32-true unprobed."""
    if configured != "auto":
        if configured == "bf16-mixed" and not torch.cuda.is_available():
            warn_if_bf16_is_emulated("train.precision")
        return configured, {}
    if torch.cuda.is_available():
        return ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"), {}
    if processes > 1 or not native_bf16():
        return "32-true", {}
    with torch.random.fork_rng():  # a probe must not change what the seeded run trains (a loader draws a seed too)
        batch = _batch(data)
        verdict = cached_verdict(cache or CACHE, _subject(module, batch), lambda: probe(module, batch))
    seconds = verdict["seconds"]
    fast = seconds["32-true"] >= MIN_SPEEDUP * seconds["bf16-mixed"]
    return ("bf16-mixed" if fast else "32-true"), seconds


def compile_pays(precision: str, device: torch.device) -> bool:
    """`train.stageN.compile: auto`: whether the DiT trains compiled here. Where it was measured to pay: a CPU with
    native bf16 kernels (AMX, or AVX-512 with AVX512-BF16) training in bf16-mixed. There the GEMMs are fast against
    the elementwise work inductor fuses: with its blocks compiled, stage 2's step ran 1.1-1.6x eager (Intel AMX, AMD
    Zen 4) and stage 3's 1.2-1.4x, each K's compile under a minute. In fp32 (the AVX2-only CPUs) the whole model
    compiled gained 0.97-1.03x, which a stage does not repay the compile with; GPUs were not measured in training.
    The samples' figures of a compiled run are another run's (docs/results.md, "Compiled blocks")."""
    return device.type == "cpu" and precision == "bf16-mixed" and native_bf16()
