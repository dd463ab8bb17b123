"""LayerDiT training-step throughput against the machine's GEMM rate, fp32 and bf16 autocast side by side.

Run: `.venv/bin/python benchmarks/bench_dit.py [--repeats 5]`.
For each preset (tiny, small) and precision: one forward + backward + AdamW step (the stages' optimiser) on a
training-shaped batch (64x64, 9 frames -> 3 latent frames per segment, K = 1 and 3), median seconds of `repeats`
timed steps after a warm-up, samples/s, FLOPs per step counted by torch's FlopCounterMode, achieved FLOP/s
and its ratio to a plain square GEMM of the same dtype measured in the same run.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch
from timing import median_seconds
from torch.utils.flop_counter import FlopCounterMode

from layert2v.config import StageConfig, model_preset
from layert2v.models.dit import LayerDiT
from layert2v.models.layout import Layout
from layert2v.training.schedule import adamw_warmup_cosine


def gemm_flops_per_s(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats)


def batch(cfg, k: int, size: int, device: str = "cpu") -> dict:
    layout = Layout(k)
    return {
        "latents": torch.randn(
            *layout.latents_shape(size, cfg.latent_channels, 9, 64, 64, cfg.vae_cell), device=device
        ),
        "timestep": torch.rand(size, device=device) * 1000,
        "text": torch.randn(size, layout.num_prompts * cfg.text_len, cfg.text_dim, device=device),
        "text_mask": torch.ones(size, layout.num_prompts, cfg.text_len, dtype=torch.bool, device=device),
        "layout": layout,
    }


def step_fn(model: LayerDiT, inputs: dict, bf16: bool, optimizer: torch.optim.Optimizer | None = None):
    """One training step (forward, MSE, backward, `optimizer` or the stages' AdamW) on the device `inputs` lie on."""
    adamw = StageConfig(max_steps=100, batch_size=1, lr=1e-4)
    optimizer = optimizer or adamw_warmup_cosine(model.parameters(), adamw)["optimizer"]
    target = torch.randn_like(inputs["latents"])
    device = target.device.type

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = (model.forward_layout(**inputs).float() - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(preset: str, k: int, size: int, bf16: bool, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = model_preset(preset)
    model = LayerDiT(cfg)
    step = step_fn(model, batch(cfg, k, size), bf16)
    with FlopCounterMode(display=False) as counter:
        step()
    return median_seconds(step, repeats), counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    peak = {False: gemm_flops_per_s(torch.float32), True: gemm_flops_per_s(torch.bfloat16, size=1024, repeats=3)}
    print(
        f"threads {torch.get_num_threads()}; GEMM: fp32 {peak[False] / 1e9:.0f} GFLOP/s (2048^2), bf16 {peak[True] / 1e9:.1f} GFLOP/s (1024^2)"
    )
    bf16_usable = peak[True] > 0.1 * peak[False]
    if not bf16_usable:
        print(
            f"bf16 GEMM runs at {peak[True] / peak[False]:.1%} of fp32 here (no native bf16 kernels): bf16 steps skipped"
        )
    print(
        f"{'preset':6} {'K':>2} {'prec':5} {'params':>8} {'s/step':>8} {'samples/s':>10} {'GFLOP/step':>11} {'GFLOP/s':>8} {'of GEMM':>8}"
    )
    for preset in ("tiny", "small"):
        params = sum(p.numel() for p in LayerDiT(model_preset(preset)).parameters())
        for k in (1, 3):
            fp32 = None
            for bf16 in (False, True) if bf16_usable else (False,):
                seconds, flops = measure(preset, k, args.batch, bf16, args.repeats)
                rate = flops / seconds
                speed = "" if fp32 is None else f"  bf16 speed-up {fp32 / seconds:.2f}x"
                fp32 = seconds if fp32 is None else fp32
                print(
                    f"{preset:6} {k:>2} {'bf16' if bf16 else 'fp32':5} {params / 1e6:7.2f}M {seconds:8.3f} "
                    f"{args.batch / seconds:10.1f} {flops / 1e9:11.2f} {rate / 1e9:8.1f} {rate / peak[bf16]:7.0%}{speed}"
                )


if __name__ == "__main__":
    main()
