"""`layert2v` command line: a thin shell over the library.

Settings come from `params.yaml` (`--params`, `--profile`); flags override single values. Heavy
libraries (torch, transformers, great_expectations) are imported inside the command that needs them,
so `layert2v --help` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from layert2v.config import Params, Request, RequestLimits, load_params, read_params_file, resolve_profile
from layert2v.editing_cli import (
    add_parsers,
    add_sampling_options,
    given_from_files,
    load_pipeline,
    sampling_options,
    write_layered,
)
from layert2v.serving import cli as serve


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.profile)


def _override(section, **flags):
    """`section` with every flag that was given (not None) replaced; re-validates the dataclass."""
    return dataclasses.replace(section, **{k: v for k, v in flags.items() if v is not None})


def cmd_synth(args: argparse.Namespace) -> int:
    from layert2v.data.synthetic import generate_dataset

    cfg = _override(
        _params(args).synth,
        clips=args.clips,
        max_fg=args.max_fg,
        size=args.size,
        frames=args.frames,
        seed=args.seed,
    )
    ids = generate_dataset(cfg, Path(args.out), workers=args.workers)
    print(f"wrote {len(ids)} synthetic clips to {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from layert2v.data.ingest import import_dataset

    result = import_dataset(Path(args.source), Path(args.out), args.kind)
    print(f"imported a VidLayer {result.kind} ({result.files} files) into {result.target}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from layert2v.data.prepare import run_prepare

    cfg = _override(_params(args).prepare, workers=args.workers)
    result = run_prepare(Path(args.source), Path(args.out), cfg, args.text_encoder)
    print(f"prepared {result.accepted} clips, rejected {result.rejected} ({result.seconds:.1f} s) -> {result.out}")
    for rule, count in result.reasons.items():
        print(f"  rejected {count} x {rule}")
    if result.rejected:
        print(f"every rejected clip and its rule: {result.out / 'rejects.json'}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from layert2v.quality.data_gate import validate_prepared
    from layert2v.quality.report import mark_passed

    params = _params(args)
    report = validate_prepared(Path(args.prepared), params.gate, params.prepare, Path(args.report))
    print(report.to_markdown())
    print(f"report: {args.report} (and .md)")
    if args.passed:
        mark_passed(Path(args.passed), Path(args.prepared) / "manifest.parquet", report.passed)
    return 0 if report.passed else 1


def cmd_train(args: argparse.Namespace) -> int:
    from layert2v.quality.report import GateFailed
    from layert2v.training.run import train_stage

    try:
        weights = train_stage(
            args.stage, _params(args), Path(args.prepared), Path(args.out), Path(args.root), Path(args.latents)
        )
    except GateFailed as failed:
        _chain_stopped(args, failed)
        return 1
    print(f"stage {args.stage} weights: {weights}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from layert2v.models.checkpoint import load_vae
    from layert2v.training.encode import encode_prepared

    shapes = encode_prepared(load_vae(Path(args.vae)), Path(args.prepared), Path(args.out))
    print(f"latent cache in {args.out}: " + ", ".join(f"{split} {shape}" for split, shape in shapes.items()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from layert2v.evaluate import evaluate_and_gate, log_evaluation

    params, out = _params(args), Path(args.out)
    model, prepared = Path(args.model), Path(args.prepared)
    summary, report = evaluate_and_gate(
        model, prepared, params, params.evaluate.gate, out, "evaluation gate", ceiling=True, rewording=True
    )
    run_id = log_evaluation(Path(args.root), params.train.experiment, Path(args.train), summary, out, report.passed)
    print(report.to_markdown())
    print(f"metrics: {out / 'metrics.json'}; previews: {out / 'previews'}; MLflow run {run_id}")
    if not report.passed:
        _chain_stopped(args, RuntimeError(f"the evaluation gate failed; report: {out / 'gate.json'}"))
    return 0 if report.passed else 1


def cmd_gate(args: argparse.Namespace) -> int:
    from layert2v.quality.report import GateFailed
    from layert2v.quality.sample_gate import sample_gate

    params = _params(args)
    try:
        report = sample_gate(
            f"stage{args.stage}", params, Path(args.prepared), Path(args.train), Path(args.out), Path(args.root)
        )
    except GateFailed as failed:
        print(failed.report.to_markdown())
        _chain_stopped(args, failed)
        return 1
    print(report.to_markdown())
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    import json

    from layert2v.registry import register
    from layert2v.tracking import parent_run_id

    params = _params(args)
    metrics = json.loads(Path(args.metrics).read_text())
    parent = parent_run_id(Path(args.train))
    onnx, parity = (Path(args.onnx) if args.onnx else None), (Path(args.parity) if args.parity else None)
    version = register(Path(args.model), metrics, params, Path(args.root), Path("."), parent, onnx, parity)
    record = {"name": version.name, "version": version.version, "alias": "challenger", "source": version.source}
    _write(Path(args.record), json.dumps(record, indent=2) + "\n")
    print(f"registered {version.name} version {version.version} as challenger")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from layert2v.registry import promote
    from layert2v.tracking import end_parent_run

    decision = promote(_params(args).registry, Path(args.root), args.actor)
    end_parent_run(Path(args.train), Path(args.root), "FINISHED")  # promotion ends the chain
    if args.record:
        _write(Path(args.record), decision.to_json())
    verdict = "promoted to champion" if decision.promote else "not promoted"
    print(f"version {decision.challenger} {verdict}: {decision.reason} (champion before: {decision.champion})")
    return 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cmd_rollback(args: argparse.Namespace) -> int:
    from layert2v.registry import rollback

    version = rollback(_params(args).registry, Path(args.root), args.actor, args.reason)
    print(f"champion rolled back to version {version}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from layert2v.export.folder import ClipShape
    from layert2v.export.onnx import export_model
    from layert2v.quality.report import GateFailed

    params = _params(args)
    shape = ClipShape(params.prepare.frames, params.prepare.height, params.prepare.width)
    try:
        report = export_model(Path(args.model), Path(args.out), shape, params.export, args.reports)
    except GateFailed as failed:
        return _gate_failed(failed)
    print(report.to_markdown())
    print(f"ONNX graphs, manifest and parity report in {args.out}")
    return 0


def _gate_failed(failed) -> int:
    """A failed gate: its report on stdout, the failing rules on stderr, exit status 1."""
    print(failed.report.to_markdown())
    print(f"error: {failed}", file=sys.stderr)
    return 1


def _chain_stopped(args: argparse.Namespace, failed: Exception) -> None:
    """A gate stopped the chain: say why, and mark the chain's MLflow `pipeline` run failed."""
    from layert2v.tracking import end_parent_run

    print(f"error: {failed}", file=sys.stderr)
    end_parent_run(Path(getattr(args, "train", None) or args.out), Path(args.root), "FAILED")


def cmd_export_tensorrt(args: argparse.Namespace) -> int:
    from layert2v.export.onnx import parity_gate
    from layert2v.export.tensorrt import TensorRTUnavailable
    from layert2v.models.checkpoint import load_dit
    from layert2v.quality.report import GateFailed

    try:
        report = parity_gate(load_dit(args.model), Path(args.onnx), _params(args).export, backend="tensorrt")
    except TensorRTUnavailable as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    except GateFailed as failed:
        return _gate_failed(failed)
    print(report.to_markdown())
    print(f"engines in {Path(args.onnx) / 'engines'}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from layert2v.compose import OUTPUT_KIND
    from layert2v.models.checkpoint import model_config
    from layert2v.outputs import check_output
    from layert2v.pipeline import check_request

    limits = RequestLimits(max_frames=args.max_frames, max_side=args.max_side)
    prompts = [args.prompt, args.background, *args.foreground]
    request = Request(
        args.prompt,
        args.background,
        args.foreground,
        args.frames,
        args.height,
        args.width,
        args.steps,
        args.guidance,
        args.guidance_sigma,
        args.composite_guidance,
        args.composite_sigma,
        args.seed,
        args.guidance_every,
        args.shape_guidance,
    )
    check_request(model_config(args.model), request, limits)  # before the model loads
    given = given_from_files(args.background_file, args.foreground_file)
    given = given.resolved(args.frames, args.height, args.width, len(args.foreground))
    out = Path(args.out)
    check_output(out, OUTPUT_KIND, replace=args.overwrite)
    pipeline = load_pipeline(args)
    pipeline.limits = limits
    options = {"frames": args.frames, "height": args.height, "width": args.width, "given": given}
    video = pipeline.generate(args.prompt, args.background, args.foreground, **options, **sampling_options(args))
    kept = {name: Path(f) for name, f in _kept_files(args).items()}
    read_as = pipeline.read_as(prompts)
    names = write_layered(out, video, prompts, args.overwrite, keep=kept, read_as=read_as)
    for written, read in zip(prompts, read_as.get("read_as", prompts), strict=True):
        if read != written:
            print(f"read {written!r} as {read!r} (a colour word the model never read: docs/design.md, Colour words)")
    print(f"{len(names)} files in {out}: " + ", ".join(names))
    return 0


def _kept_files(args: argparse.Namespace) -> dict[str, str]:
    """Given foreground files of the written formats come back as the very files the user gave."""
    kept = {}
    for k, path in enumerate(args.foreground_file or [], start=1):
        suffix = ".mov" if path.endswith(".mov") else ".webm" if path.endswith(".webm") else None
        if suffix:
            kept[f"foreground_{k}{suffix}"] = path
    return kept


def cmd_params(args: argparse.Namespace) -> int:
    load_params(args.params, args.profile)  # validate before printing
    raw = read_params_file(Path(args.params))
    sys.stdout.write(yaml.safe_dump(resolve_profile(raw, args.profile), sort_keys=False))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="profile in params.yaml, e.g. smoke (default: default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layert2v", description="LayerT2V: layered text-to-video platform")
    commands = parser.add_subparsers(dest="command", required=True)

    params = commands.add_parser("params", help="print the params of a profile as plain YAML")
    _common(params)
    params.set_defaults(func=cmd_params)

    data = commands.add_parser("data", help="make, import, prepare and validate VidLayer data")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    synth = data_commands.add_parser("synth", help="write a procedural VidLayer dataset")
    _common(synth)
    synth.add_argument("--out", default="data/vidlayer")
    synth.add_argument("--clips", type=int)
    synth.add_argument("--max-fg", type=int)
    synth.add_argument("--size", type=int)
    synth.add_argument("--frames", type=int)
    synth.add_argument("--seed", type=int)
    synth.add_argument("--workers", type=int, default=2)
    synth.set_defaults(func=cmd_synth)

    imp = data_commands.add_parser(
        "import", help="copy a VidLayer folder or jsonl manifest (with its files) into the data folder"
    )
    imp.add_argument("source", help="a VidLayer folder-layout root or a released-form jsonl manifest")
    imp.add_argument("--out", default="data/vidlayer", help="the versioned data folder (default: data/vidlayer)")
    imp.add_argument("--kind", choices=["folder", "jsonl"], default=None, help="refuse a source of the other kind")
    imp.set_defaults(func=cmd_import)

    prepare = data_commands.add_parser("prepare", help="conform clips, compute statistics, cache frames and text")
    _common(prepare)
    prepare.add_argument("--source", default="data/vidlayer", help="folder-layout root or a jsonl manifest")
    prepare.add_argument("--out", default="artifacts/prepared")
    prepare.add_argument("--workers", type=int)
    prepare.add_argument("--text-encoder", type=Path, default=None, help="local HF folder (default: MiniLM package)")
    prepare.set_defaults(func=cmd_prepare)

    validate = data_commands.add_parser("validate", help="great_expectations data gate on a prepared folder")
    _common(validate)
    validate.add_argument("--prepared", default="artifacts/prepared")
    validate.add_argument("--report", default="artifacts/reports/data_gate.json")
    validate.add_argument("--passed", default=None, help="write the data's hash here when the gate passes")
    validate.set_defaults(func=cmd_validate)

    train = commands.add_parser("train", help="run one training stage (Lightning, tracked in MLflow)")
    _common(train)
    train.add_argument(
        "--stage",
        type=int,
        required=True,
        choices=[0, 1, 2, 3],
        help="0: VAE on RGB, 1: alpha, 2: joint DiT (K=1), 3: K up to K_max",
    )
    train.add_argument("--latents", default="artifacts/latents", help="latent cache (stages 2-3)")
    train.add_argument("--prepared", default="artifacts/prepared")
    train.add_argument("--out", default="artifacts/train")
    train.add_argument("--root", default=".", help="where mlflow.db and mlartifacts/ live (default: here)")
    train.set_defaults(func=cmd_train)

    encode = commands.add_parser("encode", help="encode every clip's segments with the stage-1 VAE (latent cache)")
    encode.add_argument("--vae", default="artifacts/train/stage1", help="folder with vae.safetensors + config.json")
    encode.add_argument("--prepared", default="artifacts/prepared")
    encode.add_argument("--out", default="artifacts/latents")
    encode.set_defaults(func=cmd_encode)

    gate = commands.add_parser("gate", help="a DiT stage's sample gate: validation samples of its model vs minimums")
    _common(gate)
    gate.add_argument("--stage", type=int, required=True, choices=[2, 3], help="the DiT stage whose model is gated")
    gate.add_argument("--prepared", default="artifacts/prepared")
    gate.add_argument("--train", default="artifacts/train", help="training folder (stage<N>/model, its MLflow run)")
    gate.add_argument("--out", default="artifacts/gates", help="reports, samples and previews under <out>/stage<N>/")
    gate.add_argument("--root", default=".", help="where mlflow.db and mlartifacts/ live (default: here)")
    gate.set_defaults(func=cmd_gate)

    evaluate = commands.add_parser("evaluate", help="sample validation prompts, measure them, check the gate")
    _common(evaluate)
    evaluate.add_argument("--model", default="artifacts/train/stage3/model", help="pipeline model folder")
    evaluate.add_argument("--prepared", default="artifacts/prepared")
    evaluate.add_argument("--out", default="artifacts/eval")
    evaluate.add_argument("--train", default="artifacts/train", help="training folder (the chain's MLflow run)")
    evaluate.add_argument("--root", default=".", help="where mlflow.db and mlartifacts/ live (default: here)")
    evaluate.set_defaults(func=cmd_evaluate)

    export = commands.add_parser("export", help="ONNX graphs of the denoising step, TensorRT engines")
    export_commands = export.add_subparsers(dest="export_command", required=True)
    onnx = export_commands.add_parser("onnx", help="export every K to ONNX (fp32 + fp16) and gate on parity")
    trt = export_commands.add_parser("tensorrt", help="build TensorRT engines from the ONNX graphs (GPU)")
    for sub in (onnx, trt):
        _common(sub)
        sub.add_argument("--model", default="artifacts/train/stage3/model", help="pipeline model folder")
    onnx.add_argument("--out", default="artifacts/export/onnx", help="export folder (graphs + manifest)")
    onnx.add_argument("--reports", type=Path, default=None, help="parity.json + gate.json here (default: --out)")
    onnx.set_defaults(func=cmd_export_onnx)
    trt.add_argument("--onnx", default="artifacts/export/onnx", help="export folder written by `export onnx`")
    trt.set_defaults(func=cmd_export_tensorrt)

    gen = commands.add_parser("generate", help="one layered clip from prompts, written as video files")
    gen.add_argument("prompt", help="the overall caption")
    gen.add_argument("--background", required=True, help="background caption")
    gen.add_argument(
        "--foreground", action="append", required=True, help="a foreground caption (repeat, nearest first)"
    )
    gen.add_argument("--out", required=True, help="folder for the layered files (new, empty, or --overwrite)")
    gen.add_argument("--overwrite", action="store_true", help="replace an earlier generate output in --out")
    gen.add_argument("--frames", type=int, default=Request.frames, help="4k+1")
    gen.add_argument("--height", type=int, default=Request.height)
    gen.add_argument("--width", type=int, default=Request.width)
    gen.add_argument("--background-file", default=None, help="keep this background (a video or one image)")
    gen.add_argument(
        "--foreground-file",
        action="append",
        default=None,
        help="keep this foreground (.mov/.webm/PNG folder; repeat, nearest first)",
    )
    add_sampling_options(gen)
    gen.add_argument("--max-frames", type=int, default=RequestLimits.max_frames, help="refuse longer requests")
    gen.add_argument("--max-side", type=int, default=RequestLimits.max_side, help="refuse larger frames")
    gen.set_defaults(func=cmd_generate)

    add_parsers(commands)
    serve.add_parser(commands, _common)

    registry = commands.add_parser("registry", help="MLflow model registry: register, promote, rollback")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    reg = registry_commands.add_parser("register", help="register a model folder as the challenger")
    _common(reg)
    reg.add_argument("--model", default="artifacts/train/stage3/model")
    reg.add_argument("--metrics", default="artifacts/eval/metrics.json")
    reg.add_argument("--train", default="artifacts/train", help="training folder (its pipeline MLflow run)")
    reg.add_argument("--record", default="artifacts/registry/registered.json")
    reg.add_argument("--onnx", default=None, help="export folder to log with the model (serves on onnxruntime)")
    reg.add_argument("--parity", default=None, help="folder with the parity gate's parity.json and gate.json/.md")
    reg.set_defaults(func=cmd_register)
    prom = registry_commands.add_parser("promote", help="challenger -> champion if the params.yaml rule says so")
    _common(prom)
    prom.add_argument("--record", default=None, help="write the decision as JSON here")
    prom.add_argument("--train", default="artifacts/train", help="training folder (the chain's MLflow run to end)")
    prom.set_defaults(func=cmd_promote)
    back = registry_commands.add_parser("rollback", help="champion -> the version it replaced")
    _common(back)
    back.add_argument("--reason", default="rollback")
    back.set_defaults(func=cmd_rollback)
    for sub in (reg, prom, back):
        sub.add_argument("--root", default=".", help="where mlflow.db and mlartifacts/ live (default: here)")
        sub.add_argument("--actor", default=None, help="who acts (default: the login name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
