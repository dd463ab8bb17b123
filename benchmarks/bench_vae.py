"""The patch VAE in channels-last (the refine head's frames, the latent convolutions' weights) against the plain
(contiguous) layout, side by side.

Run: `.venv/bin/python benchmarks/bench_vae.py [--repeats 7 --passes 3] [--fp32-only]`.
The default model's autoencoder (`params.yaml`: 8-pixel cells, refine head, context branch), random
weights (the head's output conv is zero at init, so it is filled first, as after training), fp32 and bf16 autocast:
1. the refine head alone, forward and backward, on stage 0's frames (batch 2 x 3 streams x 9 frames of 64 x 64);
2. stage 0's training step (`VAEPretraining.training_step` plus backward, the same batch);
3. decoding a K = 3 sample's eight layer streams (what `generate` decodes), no gradients.
Each row is timed in three layouts, alternating passes: as decoding runs (`channels-last`: both), with the latent
convolutions' weights contiguous (`latent contiguous`: as training runs) and with the head's frames plain contiguous
too (`contiguous`: the layout before both); a figure is the median over passes of the median of `repeats` calls. The
last columns are the largest difference between the two layouts' outputs (a gradient for the training rows) and each
one's relative L2 error against the plain layout in fp32: the layout must not change what bf16 rounding costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
from timing import median_seconds

from layert2v.config import load_params
from layert2v.hostcache import cpu_model
from layert2v.models import vae as vae_module
from layert2v.training.stage0_vae import VAEPretraining

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("channels-last", "latent contiguous", "contiguous")


def contiguous_forward(self: vae_module._Refine, video: torch.Tensor) -> torch.Tensor:
    """The head as it ran before: its frames in the plain layout."""
    frames = video.transpose(1, 2).flatten(0, 1).contiguous()
    return video + self.net(frames).unflatten(0, (video.shape[0], -1)).transpose(1, 2)


def stage0_module(refine: int | None = None) -> VAEPretraining:
    """Stage 0's module on the default model; `refine` replaces its refine head's width."""
    params = load_params(ROOT / "params.yaml")
    torch.manual_seed(0)
    cfg = params.train.model_config(params.prepare.max_tokens, params.prepare.text_pooled)
    if refine is not None:
        cfg = dataclasses.replace(cfg, vae_refine=refine)
    module = VAEPretraining(cfg, params.train.stage0)
    head = module.vae.vae.refine.net[2]
    torch.nn.init.normal_(head.weight, std=0.02)
    return module


def cases(module: VAEPretraining) -> dict[str, Callable[[], torch.Tensor]]:
    """Name -> a call returning the output compared between layouts (a gradient for the training rows)."""
    torch.manual_seed(1)
    frames = torch.rand(6, 3, 9, 64, 64, requires_grad=True)
    clips = {
        "full": torch.rand(2, 3, 9, 64, 64),
        "background": torch.rand(2, 3, 9, 64, 64),
        "foregrounds": torch.rand(2, 1, 3, 9, 64, 64),
        "alphas": torch.rand(2, 1, 1, 9, 64, 64),
    }
    latents = torch.randn(8, module.vae.cfg.latent_channels, 3, 8, 8)
    head = module.vae.vae.refine

    def refine() -> torch.Tensor:
        frames.grad = None
        head(frames).square().mean().backward()
        return frames.grad

    def step() -> torch.Tensor:
        module.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the posterior sample: the same noise in every call
        module.training_step(clips, 0).backward()
        return head.net[0].weight.grad

    def decode() -> torch.Tensor:
        with torch.no_grad():
            return module.vae.decode_rgb(latents)

    return {"refine head, fwd + bwd": refine, "stage-0 step": step, "decode K = 3 (8 streams)": decode}


def set_latent_layout(module: VAEPretraining, layout: str) -> None:
    """The latent convolutions' weights channels-last (as built) or contiguous."""
    memory_format = torch.channels_last if layout == "channels-last" else torch.contiguous_format
    module.vae.vae.lay_out_latent_convolutions(memory_format)


def timed(
    module: VAEPretraining, call: Callable[[], torch.Tensor], layout: str, bf16: bool, repeats: int
) -> tuple[float, torch.Tensor]:
    plain = layout == "contiguous"
    set_latent_layout(module, layout)
    layout_patch = mock.patch.object(vae_module._Refine, "forward", contiguous_forward) if plain else nullcontext()
    with layout_patch, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        seconds = median_seconds(call, repeats)
        return seconds, call().float().clone()


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return ((output - reference).norm() / reference.norm()).item()


def main() -> None:
    warnings.filterwarnings("ignore", message=".*self.log.*")  # the training step outside a Trainer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--fp32-only", action="store_true", help="skip bf16 (a CPU without bf16 kernels emulates it)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; threads {torch.get_num_threads()}")
    print(
        "| case | precision | contiguous | latent contiguous | channels-last | speed-up: over contiguous / latent "
        "contiguous | max difference | error: channels-last / latent contiguous / contiguous |"
    )
    print("|---|---|---|---|---|---|---|---|")
    module = stage0_module()
    for name, call in cases(module).items():
        reference = timed(module, call, "contiguous", False, 1)[1]
        for bf16 in (False,) if args.fp32_only else (False, True):
            seconds: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
            outputs: dict[str, torch.Tensor] = {}
            for _ in range(args.passes):
                for layout in LAYOUTS:
                    s, outputs[layout] = timed(module, call, layout, bf16, args.repeats)
                    seconds[layout].append(s)
            last, latent, plain = (statistics.median(seconds[layout]) for layout in LAYOUTS)
            difference = (outputs["channels-last"] - outputs["contiguous"]).abs().max().item()
            errors = " / ".join(f"{relative_error(outputs[layout], reference):.1e}" for layout in LAYOUTS)
            print(
                f"| {name} | {'bf16' if bf16 else 'fp32'} | {plain * 1e3:.1f} ms | {latent * 1e3:.1f} ms "
                f"| {last * 1e3:.1f} ms | {plain / last:.2f}x / {latent / last:.2f}x | {difference:.1e} | {errors} |"
            )


if __name__ == "__main__":
    main()
