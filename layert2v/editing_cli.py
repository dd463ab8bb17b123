"""The editing commands of `layert2v`: `decompose`, `regenerate`, `recompose` (and the layer-file options of
`generate`, which `cli.py` reads through `given_from_files`). A thin shell over `editing.py` and the pipeline:
every input is checked (files readable, sizes and frame counts of the request, alpha in [0, 1]) before any model
loads, and every output folder goes through `outputs.write_output`."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from layert2v.compose import OUTPUT_KIND, LayeredVideo
from layert2v.config import BACKENDS, GRAPH_PRECISIONS, TORCH_PRECISIONS, Request, RequestLimits
from layert2v.outputs import check_output, write_output

if TYPE_CHECKING:  # editing.py imports torch: only the commands that run load it (`layert2v --help` stays instant)
    from layert2v.editing import Given


def given_from_files(background: str | None, foregrounds: list[str] | None) -> Given:
    """`--background-file` (a video or one image) and `--foreground-file`s (nearest first) as a `Given`."""
    from layert2v.editing import Given, read_foreground, read_rgb

    return Given(
        background=read_rgb(Path(background)) if background else None,
        foregrounds={k: read_foreground(Path(f)) for k, f in enumerate(foregrounds or [])},
    )


def write_layered(
    out: Path,
    video: LayeredVideo,
    prompts: list[str],
    replace_old: bool,
    keep: dict | None = None,
    read_as: dict[str, list[str]] | None = None,
) -> list[str]:
    """Write `video` and its manifest into `out`; `keep` maps file names to existing files copied byte for byte
    in place of the rewritten ones (the layers a user kept); `read_as` is the pipeline's `read_as` of the prompts.
    Returns the written names."""

    from layert2v.editing import write_manifest

    def write(folder: Path) -> list[str]:
        video.write(folder)
        write_manifest(folder, video, prompts, **(read_as or {}))
        for name, source in (keep or {}).items():
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)  # the copy this call just wrote, replaced by the user's own files
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        return sorted(p.name for p in folder.iterdir())

    return write_output(out, OUTPUT_KIND, write, replace=replace_old)


def load_pipeline(args: argparse.Namespace):
    """The model of `--model` on `--backend` (`auto` resolved per K by `export.probe.pick_backend`)."""
    from layert2v.export.probe import pick_backend
    from layert2v.pipeline import LayerT2VPipeline

    onnx = Path(args.onnx) if args.onnx else Path(args.model) / "onnx"
    chosen = pick_backend(args.backend, Path(args.model), onnx, precision=args.precision)
    return LayerT2VPipeline.from_folder(
        args.model, backend=chosen.backend, onnx=args.onnx, precision=chosen.precision, eager_ks=chosen.eager_ks
    )


def sampling_options(args: argparse.Namespace) -> dict:
    return {
        "steps": args.steps,
        "guidance": args.guidance,
        "guidance_sigma": args.guidance_sigma,
        "guidance_every": args.guidance_every,
        "shape_guidance": args.shape_guidance,
        "seed": args.seed,
        "composite_guidance": args.composite_guidance,
        "composite_sigma": args.composite_sigma,
    }


def cmd_decompose(args: argparse.Namespace) -> int:
    from layert2v.editing import classical_decompose, read_rgb
    from layert2v.models.checkpoint import model_config
    from layert2v.pipeline import check_request

    full = read_rgb(Path(args.video))
    if full.ndim != 4:
        raise ValueError(f"{args.video}: a video is needed, not a still image")
    frames, height, width = full.shape[:3]
    prompts = [args.prompt, args.background, *args.foreground]
    out = Path(args.out)
    check_output(out, OUTPUT_KIND, replace=args.overwrite)
    if args.method == "classical":
        video, read_as = classical_decompose(full), None
        prompts = prompts[:3]
    else:
        request = Request(
            args.prompt, args.background, args.foreground, frames, height, width, args.steps, args.guidance
        )
        check_request(model_config(args.model), request, RequestLimits())
        pipeline = load_pipeline(args)
        video = pipeline.decompose(full, args.prompt, args.background, args.foreground, **sampling_options(args))
        read_as = pipeline.read_as(prompts)
    names = write_layered(out, video, prompts, args.overwrite, read_as=read_as)
    print(f"decomposed {args.video} ({args.method}) into {len(video.foregrounds)} layer(s): {out} ({len(names)} files)")
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    from layert2v.editing import layer_files, read_layered

    source = Path(args.folder)
    video, manifest = read_layered(source)
    prompts = [manifest["prompt"], manifest["background_prompt"], *manifest["foreground_prompts"]]
    files = layer_files(len(video.foregrounds))
    if args.layer not in files or args.layer == "full":
        raise ValueError(f"--layer {args.layer!r} does not exist in {source}; it has {', '.join(list(files)[1:])}")
    slot = 1 if args.layer == "background" else 1 + int(args.layer.rsplit("_", 1)[1])
    prompts[slot] = args.prompt or prompts[slot]
    out = Path(args.out)
    check_output(out, OUTPUT_KIND, protect=(source,), replace=args.overwrite)
    pipeline = load_pipeline(args)
    new = pipeline.regenerate(video, args.layer, prompts, **sampling_options(args))
    kept = {
        name: source / name for layer, names in files.items() if layer not in (args.layer, "full") for name in names
    }
    names = write_layered(out, new, prompts, args.overwrite, keep=kept, read_as=pipeline.read_as(prompts))
    print(f"regenerated {args.layer} of {source}, every other layer kept: {out} ({len(names)} files)")
    return 0


def cmd_recompose(args: argparse.Namespace) -> int:
    from layert2v.editing import read_layered, read_rgb

    source = Path(args.folder)
    video, manifest = read_layered(source)
    count = len(video.foregrounds)
    order = [int(k) - 1 for k in args.order.split(",")] if args.order else list(range(count))
    hidden = {int(k) - 1 for k in args.hide.split(",")} if args.hide else set()
    if sorted(order) != list(range(count)) or not hidden <= set(order):
        raise ValueError(
            f"--order must list each of the {count} foregrounds once (1 = nearest) and --hide some of them"
        )
    background = read_rgb(Path(args.background)) if args.background else video.background
    if background.ndim == 3:
        background = background[None].repeat(len(video.full), axis=0)
    if background.shape != video.full.shape:
        raise ValueError(
            f"{args.background}: {background.shape[:3]} frames x size, the layers are {video.full.shape[:3]}"
        )
    shown = [k for k in order if k not in hidden]
    layers = replace(
        video,
        full=video.recomposite(background, shown),
        background=background,
        foregrounds=[video.foregrounds[k] for k in shown],
        alphas=[video.alphas[k] for k in shown],
    )
    prompts = [manifest["prompt"], manifest["background_prompt"], *[manifest["foreground_prompts"][k] for k in shown]]
    out = Path(args.out)
    check_output(out, OUTPUT_KIND, protect=(source,), replace=args.overwrite)
    names = write_layered(out, layers, prompts, args.overwrite)
    print(f"recomposed {source} (no sampling): {out} ({len(names)} files)")
    return 0


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """The model, backend and sampler options every sampling command takes, with `generate`'s defaults."""
    parser.add_argument("--model", default="artifacts/train/stage3/model", help="pipeline model folder")
    parser.add_argument(
        "--backend", default="auto", choices=list(BACKENDS),
        help="auto: TensorRT on a GPU, else the faster of onnxruntime and torch on this CPU when ONNX graphs are there",
    )  # fmt: skip
    parser.add_argument("--onnx", default=None, help="export folder (default: <model>/onnx)")
    parser.add_argument(
        "--precision", default=None, choices=sorted({*GRAPH_PRECISIONS, *TORCH_PRECISIONS}),
        help="the exported graphs' (fp32, fp16; int8: onnxruntime, faster on CPUs, not exact) or the torch "
        "backends' (fp32, bf16: autocast, faster where the CPU has bf16 kernels, not exact); auto runs it where the "
        "backend it picks has it",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=Request.steps)
    parser.add_argument("--guidance", type=float, default=Request.guidance)
    parser.add_argument(
        "--guidance-sigma", type=float, default=Request.guidance_sigma,
        help="classifier-free guidance on the steps above this noise level (0: every step, slower)",
    )  # fmt: skip
    parser.add_argument(
        "--guidance-every", type=int, default=Request.guidance_every,
        help="its unconditional branch on every n-th guided step, the last difference reused between (faster)",
    )  # fmt: skip
    parser.add_argument(
        "--shape-guidance", type=float, default=Request.shape_guidance,
        help="guided steps also follow what the prompts' shape words add, this strongly (0: off, faster)",
    )  # fmt: skip
    parser.add_argument("--composite-guidance", type=float, default=Request.composite_guidance)
    parser.add_argument(
        "--composite-sigma", type=float, default=Request.composite_sigma,
        help="compositing guidance on the steps at this noise level or below (1: every step, slower)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=Request.seed)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    dec = commands.add_parser("decompose", help="a plain video -> background, foreground layers and alphas")
    dec.add_argument("video", help="an MP4 (or any video) of 4k+1 frames at a size the model takes")
    dec.add_argument("--prompt", required=True, help="what the video shows")
    dec.add_argument("--background", required=True, help="background caption")
    dec.add_argument(
        "--foreground", action="append", required=True, help="a foreground caption (repeat, nearest first)"
    )
    dec.add_argument("--method", choices=["model", "classical"], default="model", help="classical: median + difference")
    dec.add_argument("--out", required=True)
    dec.add_argument("--overwrite", action="store_true")
    add_sampling_options(dec)
    dec.set_defaults(func=cmd_decompose)

    reg = commands.add_parser("regenerate", help="one layer of a generate folder sampled anew, the others kept")
    reg.add_argument("folder", help="a folder `layert2v generate` wrote")
    reg.add_argument("--layer", required=True, help="background or foreground_<k> (1 = nearest)")
    reg.add_argument("--prompt", default=None, help="the layer's new caption (default: its old one)")
    reg.add_argument("--out", required=True)
    reg.add_argument("--overwrite", action="store_true")
    add_sampling_options(reg)
    reg.set_defaults(func=cmd_regenerate)

    rec = commands.add_parser(
        "recompose", help="a generate folder's layers over a new background / order (no sampling)"
    )
    rec.add_argument("folder", help="a folder `layert2v generate` wrote")
    rec.add_argument("--background", default=None, help="a video or an image for the new background")
    rec.add_argument("--order", default=None, help="foregrounds nearest first, e.g. 2,1")
    rec.add_argument("--hide", default=None, help="foregrounds to leave out, e.g. 3")
    rec.add_argument("--out", required=True)
    rec.add_argument("--overwrite", action="store_true")
    rec.set_defaults(func=cmd_recompose)
