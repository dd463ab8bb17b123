"""Can a sampler draw the asked shape when it is told what the shape looks like? Shape guidance from a matte
classifier, measured against the same sampler without it.

Run: `.venv/bin/python benchmarks/shape_guide.py --model DIR --prepared DIR [--clips 32] [--weights 0,0.1,0.3]`.

The DiT reads a colour word and not a shape word (docs/results.md, "Shapes in the samples"): its alpha latents do
not land where the autoencoder decodes an outline. This probe trains a small CNN on the training split's mattes
(each frame as the model's autoencoder round-trips it, blurred by a random amount so that it also reads the blurred
mattes of early x0 estimates) to name the shape, then samples the first `--clips` validation clips with that
classifier's gradient added on the steps whose noise level is within `--window`: each foreground's predicted alpha
x0 is decoded, scored for the asked shape (log-probability, mean over frames), and moved up that gradient by a
step of RMS `weight` (normalised latent units) before the velocity is re-derived from it (`v = (x_t - x0) / t`).
The classifier knows the asked shape from the clip's record (an oracle of the six shape words): whether the
sampler can be steered to a shape at all comes before reading it from free text. Figures: `evaluate`'s, and the
classifier's accuracy on validation mattes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import summary_table
import torch
import torch.nn.functional as F
from torch import nn

from layert2v import pipeline as pipeline_module
from layert2v.ceiling import true_clips
from layert2v.config import load_params
from layert2v.data.synthetic import SHAPES
from layert2v.diffusion import bcast, predicted_x0
from layert2v.evaluate import generate, sample_metrics, summarise, validation_prompts
from layert2v.models.layout import ALPHA, Layout
from layert2v.pipeline import LayerT2VPipeline
from layert2v.sampling import VelocityFn

KEYS = ("coherence_db", "colour_adherence", "shape_adherence", "empty_layers", "blockiness")

SIZE = (64, 64)


class MatteClassifier(nn.Module):
    """Shape logits of single matte frames `[N, 1, H, W]` in [0, 1]: four strided convolutions, global pooling."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], 1
        for out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, len(SHAPES))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames * 2 - 1).mean((2, 3)))


def matte_frames(pipe: LayerT2VPipeline, prepared: Path, clips: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every foreground's alpha frames through the model's autoencoder `[N, 1, H, W]` and their shape ids `[N]`;
    frames with almost no matte (a sprite outside the frame) are left out."""
    frames, labels = [], []
    for video, attributes in true_clips(prepared, clips, split):
        for truth, attr in zip(video.alphas, attributes, strict=True):
            alpha = pipe.vae.decode_alpha(pipe.vae.encode_alpha(torch.from_numpy(truth)[None, None]))[0, 0]
            kept = alpha[alpha.flatten(1).sum(1) > 16]
            frames.append(kept)
            labels += [SHAPES.index(attr["shape"])] * len(kept)
    return torch.cat(frames)[:, None], torch.tensor(labels)


def blurred(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each frame box-blurred by a random radius of 0-3 pixels (early x0 estimates are soft)."""
    out = frames.clone()
    radius = torch.randint(0, 4, (len(frames),), generator=generator)
    for r in range(1, 4):
        pick = radius == r
        if pick.any():
            out[pick] = F.avg_pool2d(frames[pick], 2 * r + 1, stride=1, padding=r, count_include_pad=False)
    return out


def train_classifier(frames: torch.Tensor, labels: torch.Tensor, steps: int, width: int) -> MatteClassifier:
    torch.manual_seed(0)
    model, generator = MatteClassifier(width), torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(steps):
        pick = torch.randint(0, len(frames), (128,), generator=generator)
        loss = F.cross_entropy(model(blurred(frames[pick], generator)), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            print(f"  classifier step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval().requires_grad_(False)


def shape_guided(
    velocity: VelocityFn, layout: Layout, pipe: LayerT2VPipeline, classifier: MatteClassifier,
    targets: list[int], weight: float, window: tuple[float, float],
) -> VelocityFn:  # fmt: skip
    """`velocity` with each foreground's alpha x0 moved up the classifier's log-probability of its target shape on
    the steps at a noise level within `window`."""
    alphas = [i for i, kind in enumerate(layout.segment_types()) if kind == ALPHA]

    def steered(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = velocity(x, t)
        sigma = t if t.ndim == 1 else t[:, alphas[0]]
        if weight == 0 or not window[0] <= float(sigma.max()) <= window[1]:
            return v
        x0 = layout.split(predicted_x0(x, v, t))
        moves = [torch.zeros_like(z) for z in x0]
        with torch.enable_grad():
            for target, i in zip(targets, alphas, strict=True):
                z = x0[i].detach().requires_grad_()
                matte = pipe.vae.decode_alpha(z, clamp=False).clamp(0, 1)  # [B, 1, F, H, W]
                score = classifier(matte[:, 0].flatten(0, 1)[:, None]).log_softmax(-1)[:, target].mean()
                (grad,) = torch.autograd.grad(score, z)
                moves[i] = weight * grad / grad.pow(2).mean().sqrt().clamp_min(1e-12)
        return v - layout.pack(moves) / bcast(sigma, x).clamp_min(1e-8)

    return steered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--train-clips", type=int, default=400)
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--classifier-width", type=int, default=32)
    parser.add_argument("--weights", default="0,0.1,0.3")
    parser.add_argument("--window", type=float, nargs=2, default=(0.5, 0.95))
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipe = LayerT2VPipeline.from_folder(args.model)
    pipe.vae.requires_grad_(False)  # the guidance differentiates the decoder in its input only
    with torch.enable_grad():
        classifier = train_classifier(
            *matte_frames(pipe, args.prepared, args.train_clips, "train"), args.classifier_steps, args.classifier_width
        )
    val_frames, val_labels = matte_frames(pipe, args.prepared, 64, "val")
    accuracy = (classifier(val_frames).argmax(-1) == val_labels).float().mean()
    print(f"classifier: validation mattes through the autoencoder named right {accuracy:.0%} (chance 17%)")
    cfg = replace(load_params(args.params).evaluate, seed=args.seed)
    prompts = validation_prompts(args.prepared, args.clips, pipe.cfg.max_fg)
    original = pipeline_module.composite_guided
    print(summary_table.header(["weight"], KEYS, ("seconds",)))
    for weight in (float(w) for w in args.weights.split(",")):
        rows, start = [], time.perf_counter()
        for prompt in prompts:
            targets = [SHAPES.index(attr["shape"]) for attr in prompt.attributes]
            pipeline_module.composite_guided = lambda *a, targets=targets, weight=weight, **kw: shape_guided(
                original(*a, **kw), a[1], pipe, classifier, targets, weight, tuple(args.window)
            )
            video = generate(pipe, prompt, cfg, args.frames, SIZE)
            rows.append(sample_metrics(video, prompt, pipe.cfg.vae_cell))
        pipeline_module.composite_guided = original
        summary = summarise(rows, [len(p.foregrounds) for p in prompts])
        print(summary_table.row([weight], summary, KEYS, (f"{time.perf_counter() - start:.0f}",)), flush=True)


if __name__ == "__main__":
    main()
