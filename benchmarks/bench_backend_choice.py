"""`generate` on the backend `auto` picks per K against torch and onnxruntime alone, side by side in one run; and
what the graphs' skipping of the prompts' padding buys each backend's step.

Run: `.venv/bin/python benchmarks/bench_backend_choice.py --model <model folder> --onnx <its export> [--passes 3]`.
`auto` times a guided denoising step of every K on both CPU backends (`export.probe`, here into a fresh cache so the
probe runs now) and builds each K on the faster; a single verdict for all K left one of them on the slower backend on
a host where onnxruntime won at K = 1 and lost at K = 3. This prints the probe's seconds and verdict per K; the
probe's step (`probe.guided_step`: its prompts and the null prompts, batch 2) on each backend with the text positions
no token sees skipped (`dit.visible_positions`, what both backends do) and read (every position: what the graphs did
before they took `text_positions`); then `generate` on the same prompts (the export's clip shape, `--steps` sampler
steps, `generate`'s other defaults) for K = 1..K_max on torch, onnxruntime and the `auto` choice, the three pipelines
called in turn for `passes` passes, each figure the median over its passes of the median of `repeats` calls, and
`auto`'s time over the faster single backend's at each K.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from timing import median_seconds

from layert2v.export.folder import TEXT_POSITIONS, ClipShape, read_manifest
from layert2v.export.probe import PROMPTS, fastest, foreground_prompts, graph_ks, guided_step, pick_backend
from layert2v.hostcache import cpu_model
from layert2v.pipeline import LayerT2VPipeline


def pipelines(model: Path, onnx: Path, cache: Path) -> dict[str, LayerT2VPipeline]:
    """torch, onnxruntime, and what `auto` builds from the probe's verdicts in `cache`."""
    chosen = pick_backend("auto", model, onnx, cache)
    auto = LayerT2VPipeline.from_folder(
        model, backend=chosen.backend, onnx=onnx if chosen.backend != "torch" else None, eager_ks=chosen.eager_ks
    )
    print(f"auto: {chosen}")
    return {
        "torch": LayerT2VPipeline.from_folder(model),
        "onnxruntime": LayerT2VPipeline.from_folder(model, backend="onnxruntime", onnx=onnx),
        "auto": auto,
    }


def padding_table(pipes: dict[str, LayerT2VPipeline], ks: list[int], shape: ClipShape, args) -> None:
    """The guided step per backend with the padding skipped and read, alternating for `args.passes` passes."""
    calls = {}
    for k in ks:
        skipped = guided_step(pipes["torch"], k, shape)
        read = skipped | {TEXT_POSITIONS: torch.arange(skipped["text"].shape[1])}
        for name, inputs in (("skipped", skipped), ("read", read)):
            calls["torch", name, k] = lambda inputs=inputs: pipes["torch"].dit(*inputs.values())
            calls["onnxruntime", name, k] = lambda k=k, inputs=inputs: pipes["onnxruntime"].denoiser.run(k, inputs)
    times: dict[tuple, list[float]] = {key: [] for key in calls}
    with torch.no_grad():
        for _ in range(args.passes):
            for key, call in calls.items():
                times[key].append(median_seconds(call, args.repeats + 2, warmup=1))
    print("\nthe probe's guided denoising step (batch 2): median s, padding read / skipped")
    print("| K | torch: read | skipped | speed-up | onnxruntime: read | skipped | speed-up | onnxruntime / torch |")
    print("|---|---|---|---|---|---|---|---|")
    for k in ks:
        median = {key[:2]: statistics.median(times[key]) for key in calls if key[2] == k}
        cells = []
        for backend in ("torch", "onnxruntime"):
            read, skipped = median[backend, "read"], median[backend, "skipped"]
            cells += [f"{read:.4f}", f"{skipped:.4f}", f"{read / skipped:.2f}x"]
        ratio = median["torch", "skipped"] / median["onnxruntime", "skipped"]
        print(f"| {k} | " + " | ".join(cells) + f" | {ratio:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True, help="the model's export folder (`layert2v export onnx`)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    print(f"{cpu_model()}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        verdicts = fastest(args.model, args.onnx, Path(tmp) / "backends.json")
        print("probe: denoising step, batch 2, median s")
        for k, verdict in verdicts.items():
            seconds = verdict["seconds"]
            ratio = seconds["torch"] / seconds["onnxruntime"]
            print(f"  K = {k}: torch {seconds['torch']:.4f}, onnxruntime {seconds['onnxruntime']:.4f} "
                  f"(onnxruntime {ratio:.2f}x): {verdict['fastest']}")  # fmt: skip
        pipes = pipelines(args.model, args.onnx, Path(tmp) / "backends.json")
    manifest = read_manifest(args.onnx)
    shape = ClipShape(**manifest["shape"])
    request = {"frames": shape.frames, "height": shape.height, "width": shape.width, "steps": args.steps}
    ks = graph_ks(manifest)
    padding_table(pipes, ks, shape, args)
    passes: dict[tuple[str, int], list[float]] = {(name, k): [] for name in pipes for k in ks}
    for _ in range(args.passes):
        for k in ks:
            for name, pipe in pipes.items():
                fgs = foreground_prompts(k)
                call = lambda pipe=pipe, fgs=fgs: pipe.generate(*PROMPTS, fgs, **request)  # noqa: E731
                passes[name, k].append(median_seconds(call, args.repeats, warmup=1))
    print(f"\ngenerate, {args.steps} steps, {shape.frames}x{shape.height}x{shape.width}: median s (passes)")
    print("| K | torch | onnxruntime | auto | auto / the faster alone |\n|---|---|---|---|---|")
    for k in ks:
        median = {name: statistics.median(passes[name, k]) for name in pipes}
        cells = [f"{median[n]:.2f} ({' / '.join(f'{s:.2f}' for s in passes[n, k])})" for n in pipes]
        best = min(median["torch"], median["onnxruntime"])
        print(f"| {k} | " + " | ".join(cells) + f" | {median['auto'] / best:.2f} |")


if __name__ == "__main__":
    main()
