"""LayerDiT on a CUDA GPU: the training step and the denoising step per precision and compile mode, for the CPU
preset and the paper's Wan2.1-1.3B-sized one, side by side in one run.

Run (on a GPU host; the DiT alone, random weights: latency does not depend on them):
`python benchmarks/bench_cuda.py [--repeats 5] [--presets small paper] [--paper-clip 17 480 832]`.
- GEMM: square matrix products in bf16 and fp32 (TF32 off and on), the ceilings the steps are set against;
- training: forward + MSE + backward + the stages' fused AdamW on the shapes of `bench_dit.py` (64 x 64, 9 frames,
  batch `--batch`), fp32 (TF32 matmuls) and bf16 autocast, with FLOPs counted by FlopCounterMode and the achieved
  rate against the bf16 GEMM;
- denoising: one step at batch 2 (both classifier-free guidance branches) per K, on the `small` preset's 64 x 64 x 9
  clip and the paper preset's `--paper-clip`: eager fp32, TF32, bf16 autocast, `torch.compile` in bf16 and compile
  in bf16 with CUDA graphs (`reduce-overhead`; the paper preset: bf16 and compile bf16 only), each with its max abs
  difference to the first path (fp32 eager with TF32 off; bf16 eager for the paper preset) and the denoiser's part
  of a 20-step `generate` (steps x the step time).
Timings synchronise the device around each call: median of `--repeats` after two warm-ups (compiling happens there).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from bench_dit import batch, step_fn
from timing import median_seconds
from torch.utils.flop_counter import FlopCounterMode

from layert2v.config import model_preset
from layert2v.models.dit import LayerDiT, layout_inputs
from layert2v.models.layout import Layout

STEPS = 20  # `generate`'s default sampler steps
DEVICE = "cuda"  # `--device cpu` runs the same code on the CPU (a smoke test of the script, not a figure)


def synced(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` followed by a device synchronisation, so wall time covers its kernels, not only their launch."""

    def call() -> object:
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def gemm_size() -> int:
    return 8192 if DEVICE == "cuda" else 512


def gemm_tflops(dtype: torch.dtype, tf32: bool) -> float:
    size = gemm_size()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = (torch.randn(size, size, dtype=dtype, device=DEVICE) for _ in range(2))
    seconds = median_seconds(synced(lambda: a @ b), repeats=10, warmup=3)
    torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * size**3 / seconds / 1e12


def new_model(preset: str) -> LayerDiT:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LayerDiT(model_preset(preset))
    for table in (model.head.head.weight, model.layer_adaln, model.instance_adaln):
        torch.nn.init.normal_(table, std=0.02)  # zero-initialised for training; parity needs a real output
    return model


def training_rows(presets: list[str], size: int, repeats: int, bf16_peak: float) -> None:
    print(f"\ntraining step, batch {size}, 64 x 64 x 9 (fp32 = TF32 matmuls)")
    print(
        "| preset | K | precision | s/step | samples/s | GFLOP/step | TFLOP/s | of bf16 GEMM |\n|---|---|---|---|---|---|---|---|"
    )
    for preset in presets:
        for k in (1, 3):
            for bf16 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = not bf16
                model = new_model(preset)
                step = step_fn(model, batch(model.cfg, k, size, DEVICE), bf16)
                with FlopCounterMode(display=False) as counter:
                    step()
                seconds = median_seconds(synced(step), repeats, warmup=1)
                rate = counter.get_total_flops() / seconds / 1e12
                print(
                    f"| {preset} | {k} | {'bf16' if bf16 else 'fp32'} | {seconds:.4f} | {size / seconds:.0f} | "
                    f"{counter.get_total_flops() / 1e9:.0f} | {rate:.1f} | {rate / bf16_peak:.0%} |",
                    flush=True,
                )
                del model, step
                torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False


def step_inputs(model: LayerDiT, k: int, clip: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Batch-2 inputs of one denoising step on the GPU: noise latents, a timestep, random text states, full prompts."""
    cfg, layout = model.cfg, Layout(k)
    generator = torch.Generator(DEVICE).manual_seed(0)
    latents = torch.randn(
        layout.latents_shape(2, cfg.latent_channels, *clip, cfg.vae_cell), device=DEVICE, generator=generator
    )
    timestep = torch.full((2,), 500.0, device=DEVICE)
    text = torch.randn(2, layout.num_prompts * cfg.text_len, cfg.text_dim, device=DEVICE, generator=generator)
    text_mask = torch.ones(2, layout.num_prompts, cfg.text_len, dtype=torch.bool, device=DEVICE)
    return latents, timestep, text, *layout_inputs(cfg, latents.shape, text_mask, layout)


def step_paths(model: LayerDiT, fp32: bool) -> dict[str, tuple[Callable, bool]]:
    """Path name -> (a callable of the inputs, whether it runs under bf16 autocast). Without `fp32`, the fp32 paths
    and CUDA graphs (which pay where launches, not kernels, bound a step) are left out: the large preset's."""
    paths = {"eager fp32": (model, False), "TF32": (model, False)} if fp32 else {}
    paths |= {"bf16": (model, True), "compile bf16": (torch.compile(model, dynamic=False), True)}
    if fp32:
        paths["compile bf16 + CUDA graphs"] = (torch.compile(model, mode="reduce-overhead", dynamic=False), True)
    return paths


def denoising_rows(preset: str, clip: tuple[int, int, int], repeats: int, fp32: bool) -> None:
    """One row per K: each path's step time, its speed-up over the first path, its max abs difference to the first
    path's output (fp32 eager; bf16 eager without `fp32`), its first (compiling) call and `STEPS` steps."""
    model = new_model(preset).eval()
    print(f"\ndenoising step, {preset}, batch 2, clip {clip[0]} x {clip[1]} x {clip[2]} (frames x height x width)")
    paths = step_paths(model, fp32)
    print("| K | tokens | " + " | ".join(paths) + " |\n|---|---|" + "---|" * len(paths))
    for k in (1, 3):
        inputs = step_inputs(model, k, clip)
        tokens = inputs[3].shape[1]  # the cross-attention mask's rows
        with torch.no_grad():
            eager = reference = None
            cells = []
            for name, (fn, bf16) in paths.items():
                torch.backends.cuda.matmul.allow_tf32 = name != "eager fp32"

                def call(fn=fn, bf16=bf16, inputs=inputs) -> torch.Tensor:
                    with torch.autocast(DEVICE, dtype=torch.bfloat16) if bf16 else nullcontext():
                        return fn(*inputs).float()

                start = time.perf_counter()
                out = synced(call)()
                first = time.perf_counter() - start
                seconds = median_seconds(synced(call), repeats, warmup=2)
                eager = eager or seconds
                reference = out if reference is None else reference
                diff = float((out - reference).abs().max())
                cells.append(
                    f"{seconds * 1e3:.1f} ms ({eager / seconds:.2f}x; {diff:.1e}; first {first:.0f} s; "
                    f"{STEPS} steps {STEPS * seconds:.2f} s)"
                )
        print(f"| {k} | {tokens} | " + " | ".join(cells) + " |", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    del model
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])
    parser.add_argument("--paper-clip", type=int, nargs=3, default=(17, 480, 832), metavar=("FRAMES", "H", "W"))
    parser.add_argument("--paper-repeats", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py times CUDA kernels: no CUDA device is visible here")
    print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else DEVICE}, torch {torch.__version__}")
    bf16_peak = gemm_tflops(torch.bfloat16, tf32=False)
    fp32, tf32 = gemm_tflops(torch.float32, tf32=False), gemm_tflops(torch.float32, tf32=True)
    print(
        f"GEMM {gemm_size()}^3: bf16 {bf16_peak:.0f} TFLOP/s, fp32 {fp32:.0f}, TF32 {tf32:.0f}",
        flush=True,
    )
    small = [preset for preset in args.presets if preset != "paper"]
    for preset in small:
        denoising_rows(preset, (9, 64, 64), args.repeats, fp32=True)
    if not args.skip_training:
        training_rows(args.presets, args.batch, args.repeats, bf16_peak)
    if "paper" in args.presets:
        denoising_rows("paper", tuple(args.paper_clip), args.paper_repeats, fp32=False)


if __name__ == "__main__":
    main()
