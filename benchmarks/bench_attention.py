"""The DiT's attention under bf16 autocast on a CPU: SDPA's flash kernel against two GEMMs and a softmax, side by side.

Run: `.venv/bin/python benchmarks/bench_attention.py [--repeats 7 --passes 3]`.
1. The op, forward and backward, at the `small` DiT's training shapes (batch 8, 4 heads of 64, 64 x 64 x 9 frames:
   K = 1..3 -> 192-384 video tokens; cross-attention to the 64-token prompts each segment sees, its mask in the
   form the DiT gives each kernel), in bf16 and fp32.
2. The whole training step (`bench_dit.step_fn`, bf16 autocast, K = 1 and 3; captions of `CAPTION_TOKENS`) as the
   DiT is (`matmul_attention` under CPU autocast, the prompts' padding dropped: `visible_text`), with the padding kept,
   and with SDPA in its place as well (the DiT before both), alternating passes.
3. Parity: the output and the parameter gradients of one step of each, relative to the same step in fp32.
Each figure is the median of `repeats` calls; a step figure the median of its passes.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from unittest import mock

import torch
import torch.nn.functional as F
from bench_dit import batch, step_fn
from timing import median_seconds

from layert2v.config import model_preset
from layert2v.hostcache import cpu_model
from layert2v.models import dit
from layert2v.models.layout import Layout

HEADS, HEAD_DIM, BATCH = 4, 64, 8
CAPTION_TOKENS = (38, 16)  # real tokens of the overall prompt and of each layer's: about the 90th percentile of the
# default data's captions (8-55 tokens, median 18), what a batch of 8 holds at most


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


KERNELS: dict[str, Callable] = {"sdpa": sdpa, "matmul": dit.matmul_attention}


def op_seconds(kernel: Callable, queries: int, keys: int, masked: bool, dtype: torch.dtype, repeats: int) -> float:
    q, k, v = (torch.randn(BATCH, HEADS, n, HEAD_DIM, dtype=dtype, requires_grad=True) for n in (queries, keys, keys))
    mask = torch.rand(BATCH, 1, queries, keys) < 0.5 if masked else None
    if mask is not None:
        mask[..., 0] = True
        mask = dit.additive_bias(mask, dtype) if kernel is dit.matmul_attention else mask  # what the DiT passes
    grad = torch.randn(BATCH, HEADS, queries, HEAD_DIM, dtype=dtype)
    return median_seconds(lambda: kernel(q, k, v, mask).backward(grad), repeats)


def op_table(repeats: int) -> None:
    print("| attention, forward + backward | dtype | sdpa | matmul | sdpa / matmul |")
    print("|---|---|---|---|---|")
    for k in (1, 2, 3):
        layout = Layout(k)
        tokens = layout.num_segments * 3 * 16  # 3 latent frames of 4 x 4 tokens per segment
        for name, keys in (("self", tokens), ("cross", layout.num_prompts * 64)):
            for dtype in (torch.bfloat16, torch.float32):
                times = {
                    kernel: op_seconds(fn, tokens, keys, name == "cross", dtype, repeats)
                    for kernel, fn in KERNELS.items()
                }
                label = f"K = {k} {name} ({tokens} x {keys})"
                print(
                    f"| {label} | {str(dtype)[6:]} | {times['sdpa'] * 1e3:.1f} ms | {times['matmul'] * 1e3:.1f} ms "
                    f"| {times['sdpa'] / times['matmul']:.2f}x |"
                )


def captioned(inputs: dict, layout: Layout) -> dict:
    """`bench_dit.batch`'s inputs with prompts of `CAPTION_TOKENS` real tokens and the rest padding."""
    lengths = torch.tensor([CAPTION_TOKENS[0]] + [CAPTION_TOKENS[1]] * (layout.num_prompts - 1))
    mask = torch.arange(inputs["text_mask"].shape[-1]) < lengths[:, None]  # [P, M]
    return inputs | {"text_mask": mask.expand_as(inputs["text_mask"]).clone()}


VARIANTS = {  # name -> (attention under CPU autocast, the prompts' padding dropped)
    "SDPA, padding kept": (sdpa, False),
    "matmul, padding kept": (dit.matmul_attention, False),
    "matmul, padding dropped": (dit.matmul_attention, True),
}


def step_table(repeats: int, passes: int) -> None:
    cfg = model_preset("small")
    names = list(VARIANTS)
    print(f"| training step, bf16 autocast, batch 8 | {' | '.join(names)} | first / last |")
    print("|---|" + "---|" * (len(names) + 1))
    for k in (1, 3):
        torch.manual_seed(0)
        step = step_fn(dit.LayerDiT(cfg), captioned(batch(cfg, k, BATCH), Layout(k)), bf16=True)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(passes):
            for name, (fn, drop) in VARIANTS.items():
                kept = dit.visible_text if drop else lambda text, mask: (text, mask)
                with (
                    mock.patch.object(dit, "attention", lambda q, k, v, m, fn=fn: fn(q, k, v, m)),
                    mock.patch.object(dit, "visible_text", kept),
                ):
                    step()
                    times[name].append(median_seconds(step, repeats))
        medians = [statistics.median(times[name]) for name in names]
        cells = " | ".join(f"{m:.3f} s" for m in medians)
        print(f"| K = {k} | {cells} | {medians[0] / medians[-1]:.2f}x |")


def step_output_and_grads(model: dit.LayerDiT, inputs: dict, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward of an MSE to a fixed target: the output and every parameter's gradient, flat."""
    model.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = model.forward_layout(**inputs).float()
    (out - torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).pow(2).mean().backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def parity_table() -> None:
    cfg = model_preset("small")
    print("| K | kernel | output error vs fp32 | gradient error vs fp32 |")
    print("|---|---|---|---|")
    for k in (1, 3):
        torch.manual_seed(0)
        model = dit.LayerDiT(cfg)
        torch.nn.init.normal_(model.head.head.weight, std=0.02)  # a trained head's scale, not the zero init
        inputs = batch(cfg, k, 4)
        ref_out, ref_grad = step_output_and_grads(model, inputs, bf16=False)
        for kernel, fn in KERNELS.items():
            with mock.patch.object(dit, "attention", lambda q, k, v, m, fn=fn: fn(q, k, v, m)):
                out, grad = step_output_and_grads(model, inputs, bf16=True)
            rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
            print(f"| {k} | {kernel} | {rel(out, ref_out):.2e} | {rel(grad, ref_grad):.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    print(f"{cpu_model()}, {torch.get_num_threads()} threads\n")
    op_table(args.repeats)
    print()
    step_table(args.repeats, args.passes)
    print()
    parity_table()


if __name__ == "__main__":
    main()
