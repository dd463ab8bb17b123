"""Does a trained model draw the shape it is asked for, and which sampling setting moves it?

Run: `.venv/bin/python benchmarks/shape_levers.py swap --model DIR [--prepared DIR]`,
`... scan --model DIR --set guidance=4,8,12 [--clips 32] [--seeds 5]`, `... misses --model DIR [--clips 64]`,
`... path --model DIR [--clips 24]` or `... word --model DIR [--clips 16]`; `--reworded` asks for the same clips in
held-out words.

- swap: one-foreground validation clips asked for in template words once per shape, same seed: how many of the
  samples read as the asked shape (`metrics.shape_of`, chance 1 in 6) and how much the mattes differ between shape
  words (mean pairwise IoU of the middle frame's `alpha > 0.5`; 1.0: the word changes nothing);
- scan: `evaluate`'s figures (coherence, colour, shape, blockiness, empty layers) on the first `--clips` validation
  clips for each value of one `evaluate` setting, side by side, on `--backend` in `--precision` (bf16 against fp32 too);
  `--seeds N` pools N sampling seeds per value (shares over every foreground judged, with the shape share's
  binomial 95% margin): the seed alone moves one evaluation's shape by 5-10 points;
  `--split train` asks for clips the model trained on (does it fit them at all);
- misses: what each foreground of the multi-foreground clips among the first `--clips` shows in place of its asked
  colour: its own, another foreground's (a swap), another colour, or nothing (no alpha above 0.5 in the middle
  frame: a faded layer), with the peak alpha of the faded ones;
- path: where along the sampling path the shape is lost. The true latents of the first one-foreground clips
  (`--prepared`'s sibling `latents/`) are noised to `t0` and sampled back to 0 on the evaluate sampler's shifted
  Euler steps, with guidance; alpha IoU against the true matte and shape adherence per `t0` (`t0 = 1`: free
  generation). Where IoU holds and shape falls, the model keeps the object's place and loses its outline;
- word: does the model read the shape word (`word` below), beside the colour word.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import summary_table
import torch

from layert2v.ceiling import alpha_iou
from layert2v.config import SHARE_COUNTS, EvaluateConfig, load_params
from layert2v.data.datamodule import LatentClips
from layert2v.data.synthetic import COLOURS, SHAPES, captions
from layert2v.diffusion import predicted_x0
from layert2v.evaluate import ValPrompt, evaluate_pipeline, generate, reworded_prompts, validation_prompts
from layert2v.metrics import dominant_colour, shape_of
from layert2v.models.layout import Layout
from layert2v.models.text import null_prompts
from layert2v.pipeline import LayerT2VPipeline
from layert2v.sampling import guided, shifted_sigmas

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)


def asked_as(prompt: ValPrompt, **attribute: str) -> ValPrompt:
    """`prompt`'s clip with its one foreground's attribute (`shape=...`, `colour=...`) replaced, captioned in
    template words."""
    scene = prompt.scene | {"foregrounds": [dict(prompt.attributes[0], **attribute)]}
    text = captions(scene, np.random.default_rng(0), "fixed")
    return replace(prompt, prompt=text["full"], background=text["background"], foregrounds=text["foregrounds"])


def swap(pipe: LayerT2VPipeline, prompts: list[ValPrompt], args: argparse.Namespace) -> None:
    cfg, frames = load_params(args.params).evaluate, args.frames
    singles = [p for p in prompts if len(p.foregrounds) == 1][: args.swaps]
    hits, ious = 0, []
    for prompt in singles:
        masks = {
            s: generate(pipe, asked_as(prompt, shape=s), cfg, frames, SIZE).alphas[0][frames // 2] > 0.5 for s in SHAPES
        }
        read = {s: shape_of(m.astype(np.float32)) for s, m in masks.items()}
        hits += sum(read[s] == s for s in SHAPES)
        pairs = [(a & b).sum() / max((a | b).sum(), 1) for a, b in itertools.combinations(masks.values(), 2)]
        ious.append(float(np.mean(pairs)))
        print(f"{prompt.clip_id}: read {read}; mean pairwise IoU {ious[-1]:.2f}", flush=True)
    print(f"read as asked: {hits} of {len(SHAPES) * len(singles)} (chance {len(singles)}); "
          f"mean pairwise matte IoU across shape words {np.mean(ious):.2f}")  # fmt: skip


def pooled(runs: list[dict[str, float]]) -> dict[str, float]:
    """Summaries of one setting sampled with several seeds as one: each share over all the foregrounds judged, the
    other figures averaged. One seed's shape share on a few dozen foregrounds moves by 5-10 points."""
    total = sum(run["foregrounds"] for run in runs)
    summary = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
    shares = {key: sum(run[key] * run["foregrounds"] for run in runs) / total for key in runs[0] if key in SHARE_COUNTS}
    return summary | shares | {"foregrounds": total}


def scan(pipe: LayerT2VPipeline, prompts: list[ValPrompt], args: argparse.Namespace) -> None:
    base = load_params(args.params).evaluate
    name, values = args.set.split("=", 1)
    kind = type(getattr(base, name))
    keys = (*summary_table.SAMPLES, "empty_layers", "alpha_stutter")
    print(summary_table.header(["setting"], keys, ("foregrounds", "shape, 95% margin", "seconds")))
    for value in values.split(","):
        cfg = replace(base, **{name: kind(value)})
        start = time.perf_counter()
        seeds = [replace(cfg, seed=cfg.seed + i) for i in range(args.seeds)]
        summary = pooled([evaluate_pipeline(pipe, prompts, c, args.frames, SIZE)[0] for c in seeds])
        share, count = summary["shape_adherence"], summary["foregrounds"]
        margin = 1.96 * np.sqrt(share * (1 - share) / count)
        tail = (f"{count:.0f}", f"±{margin:.0%}", f"{time.perf_counter() - start:.0f}")
        print(summary_table.row([f"{name} {value}"], summary, keys, tail), flush=True)


def misses(pipe: LayerT2VPipeline, prompts: list[ValPrompt], args: argparse.Namespace) -> None:
    cfg, middle = load_params(args.params).evaluate, args.frames // 2
    counts = dict.fromkeys(("own", "another foreground's", "another colour", "empty"), 0)
    faded = []
    for prompt in (p for p in prompts if len(p.foregrounds) > 1):
        video = generate(pipe, prompt, cfg, args.frames, SIZE)
        asked = [attr["colour"] for attr in prompt.attributes]
        for k, (rgb, alpha) in enumerate(zip(video.straight, video.alphas, strict=True)):
            read = dominant_colour(rgb[middle], alpha[middle])
            kind = (
                "own" if read == asked[k] else "empty" if read is None
                else "another foreground's" if read in asked else "another colour"
            )  # fmt: skip
            counts[kind] += 1
            if kind == "empty":
                faded.append(f"K={len(asked)} k={k} peak {alpha[middle].max():.2f}")
    print(f"foregrounds by the colour they show: {counts}")
    print(f"empty layers: {'; '.join(faded) or 'none'}")


@torch.no_grad()
def from_truth(pipe: LayerT2VPipeline, item: dict, t0: float, cfg: EvaluateConfig, seed: int) -> np.ndarray:
    """The alpha (`[F, H, W]`) sampled back from the clip's true latents noised to `t0` (one foreground)."""
    layout = Layout(1)
    x0 = layout.pack(list(item["segments"][:, None]))
    cond = (item["text"].flatten(0, 1)[None], item["text_mask"][None])
    uncond = null_prompts(*cond)

    def velocity(x: torch.Tensor, t: torch.Tensor, doubled: bool) -> torch.Tensor:
        text, mask = (torch.cat([cond[0], uncond[0]]), torch.cat([cond[1], uncond[1]])) if doubled else cond
        return pipe.dit.forward_layout(x, t * 1000, text, mask, layout)

    sigmas = shifted_sigmas(cfg.steps, cfg.shift)
    sigmas = torch.cat([torch.tensor([t0]), sigmas[sigmas < t0 - 1e-6]])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x, step = (1 - t0) * x0 + t0 * noise, guided(velocity, cfg.guidance)
    for sigma, sigma_next in itertools.pairwise(sigmas):
        x = x + (sigma_next - sigma) * step(x, torch.full((1,), float(sigma)))
    return pipe.vae.decode_alpha(layout.split(x)[3])[0, 0].numpy()


def path(pipe: LayerT2VPipeline, prompts: list[ValPrompt], args: argparse.Namespace) -> None:
    cfg = load_params(args.params).evaluate
    clips = LatentClips(args.prepared, args.prepared.parent / "latents", args.split, max_fg=1)
    count = min(args.clips, len(clips))
    print(f"| t0 | alpha IoU | shape | ({count} one-foreground {args.split} clips, guidance {cfg.guidance}) |")
    print("|---|---|---|---|")
    items = [clips[i] for i in range(count)]
    wanted = [json.loads(clips.rows.iloc[i]["attributes"])["foregrounds"][0]["shape"] for i in range(count)]
    for t0 in (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.4):
        ious, hits = [], []
        for i, (item, shape) in enumerate(zip(items, wanted, strict=True)):
            alpha = from_truth(pipe, item, t0, cfg, seed=i)
            ious.append(alpha_iou([alpha], [item["alpha_pixels"][0, 0].numpy()]))
            hits.append(shape_of(alpha[len(alpha) // 2]) == shape)
        print(f"| {t0} | {np.mean(ious):.2f} | {np.mean(hits):.0%} | |", flush=True)


@torch.no_grad()
def word(pipe: LayerT2VPipeline, prompts: list[ValPrompt], args: argparse.Namespace) -> None:
    """How much the model's one-step x0 depends on the shape word, beside the colour word: the first one-foreground
    clips' true latents noised to t, the x0 of the segment that shows the attribute (alpha for shape, fg for
    colour) predicted with the caption asked in template words for each value; the error with the other values
    over the error with the true one, and the share of (clip, other value) pairs where the true one is closer."""
    clips, layout = LatentClips(args.prepared, args.prepared.parent / "latents", args.split, max_fg=1), Layout(1)
    by_id = {p.clip_id: p for p in validation_prompts(args.prepared, len(clips), 1, args.split)}
    count = min(args.clips, len(clips))
    print(f"| attribute | t | x0 error, true word | other words / true | true word closer | ({count} clips) |")
    print("|---|---|---|---|---|---|")
    levels = (0.6, 0.7, 0.8, 0.9)
    for attribute, values, segment in (("shape", SHAPES, 3), ("colour", list(COLOURS), 2)):
        true_errors, other_errors, closer = ({t: [] for t in levels} for _ in range(3))
        for i in range(count):
            item, prompt = clips[i], by_id[clips.rows.iloc[i]["clip_id"]]
            x0 = layout.pack(list(item["segments"][:, None]))
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i))
            asked = prompt.attributes[0][attribute]
            texts = {}
            for value in values:
                ask = asked_as(prompt, **{attribute: value})
                texts[value] = pipe.encode_prompts([ask.prompt, ask.background, *ask.foregrounds])
            for t in levels:
                x_t, errors = (1 - t) * x0 + t * noise, {}
                for value, (text, mask) in texts.items():
                    v = pipe.dit.forward_layout(x_t, torch.full((1,), t * 1000), text, mask, layout)
                    predicted = layout.split(predicted_x0(x_t, v, torch.full((1,), t)))[segment]
                    errors[value] = float(((predicted - item["segments"][segment]) ** 2).mean())
                others = [errors[v] for v in values if v != asked]
                true_errors[t].append(errors[asked])
                other_errors[t].append(float(np.mean(others)))
                closer[t].extend(errors[asked] < e for e in others)
        for t in levels:
            print(
                f"| {attribute} | {t} | {np.mean(true_errors[t]):.4f} | "
                f"{np.mean(other_errors[t]) / np.mean(true_errors[t]):.3f} | {np.mean(closer[t]):.0%} | |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["swap", "scan", "misses", "path", "word"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, default=ROOT / "artifacts" / "prepared")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument(
        "--clips", type=int, default=32, help="validation clips (scan), searched for one-fg ones (swap)"
    )
    parser.add_argument("--swaps", type=int, default=6, help="one-foreground clips to swap shapes on")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--backend", default="torch", choices=["torch", "compile"])
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="the DiT's (bf16: autocast)")
    parser.add_argument(
        "--max-fg", type=int, default=None, help="clips with at most this many foregrounds (1: stage 2)"
    )
    parser.add_argument("--set", default="guidance=4", help="an evaluate setting and its values (scan)")
    parser.add_argument("--seeds", type=int, default=1, help="sampling seeds per value, pooled (scan)")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"], help="whose clips to ask for")
    parser.add_argument("--reworded", action="store_true", help="ask in held-out words (`evaluate.reworded_prompts`)")
    args = parser.parse_args()
    pipe = LayerT2VPipeline.from_folder(args.model, backend=args.backend, precision=args.precision)
    prompts = validation_prompts(args.prepared, args.clips, args.max_fg or pipe.cfg.max_fg, args.split)
    prompts = reworded_prompts(prompts) if args.reworded else prompts
    {"swap": swap, "scan": scan, "misses": misses, "path": path, "word": word}[args.what](pipe, prompts, args)


if __name__ == "__main__":
    main()
