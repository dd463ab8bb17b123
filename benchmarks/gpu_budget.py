"""What a much larger stage-2 budget buys the samples' shapes: stage 2 trained on a GPU for many times the CPU
chain's steps, then sampled here on the same validation clips as the chain's own stage 2.

Three commands, the middle one on a machine with a CUDA GPU (torch, lightning and safetensors; no PyAV, diffusers
or MLflow needed):
1. `pack --root <make run folder> --out .gpu/data.npz`: the one-foreground training clips of the chain's latent
   cache (what `layert2v train --stage 2` reads) with their prompt states, in fp16, the text trimmed to each
   prompt's tokens, beside the model and stage-2 settings (`data.json`);
2. `train --data .gpu/data.npz --out DIR --name NAME --seconds S [--steps N] [--batch B] [--model key=value ...]
   [--stage key=value ...] [--snapshots 0.5,1] [--live] [--no-bf16]`: stage 2's objective
   (`training.objective.flow_losses`: the stage's shift, foreground weight, consistency term, prompt dropout; not the
   decoded-alpha term, which needs the VAE) in bf16 autocast (`--no-bf16`: fp32, for hosts without bf16 kernels)
   with the stage's optimiser (`--stage optimizer=muon` for Muon), cosine schedule and EMA (`--stage` overrides the
   packed stage settings, e.g. `lr=0.003`), for as many steps as `S` seconds hold at the step time a short probe
   measures, or for `--steps` (the schedule is set for that count); the EMA DiT saved in fp16 at the given fractions
   of the run as `NAME_step<N>.safetensors` (with `--live`, the trained weights too, as `NAME_live_step<N>`);
3. `sample --root <make run folder> --weights F [F ...] [--reference <stage-2 model folder>] [--clips 32]`: each
   weights file made a pipeline folder with the chain's stage-1 VAE and sampled on the first `--clips`
   one-foreground validation clips (`evaluate_pipeline`), with the reference model beside them.
`train --device cpu --seconds 20` runs the same loop here (the smoke test of the command).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import summary_table
import torch
from safetensors.torch import load_file, save_file

from layert2v.config import DiTStageConfig, ModelConfig
from layert2v.models.dit import LayerDiT
from layert2v.training.objective import ema_decay_at, flow_losses
from layert2v.training.schedule import dit_optimizer

SEGMENTS = ("segments", "alpha_grid")  # per-clip latent arrays packed as they are


def pack(args: argparse.Namespace) -> None:
    from layert2v.config import load_params
    from layert2v.data.datamodule import LatentClips
    from layert2v.training.spec import StageContext

    params = load_params(args.root / "params.yaml")
    artifacts = args.root / "artifacts"
    ctx = StageContext(params, artifacts / "prepared", artifacts / "train", artifacts / "latents")
    clips = LatentClips(ctx.prepared, ctx.latents, "train", max_fg=1)
    arrays = pack_items([clips[i] for i in range(len(clips))])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    meta = {"model": dataclasses.asdict(ctx.model), "stage2": dataclasses.asdict(params.train.stage2)}
    (args.out.parent / "data.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(a.nbytes for a in arrays.values()) / 2**20
    print(f"packed {len(clips)} clips, {size:.1f} MiB, into {args.out}")


def pack_items(items: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """`LatentClips` items as arrays: latents in fp16, each prompt's states cut to its tokens (a third of the
    padded bytes) and concatenated, with the token counts that `PackedClips` pads them back with."""
    masks = np.stack([item["text_mask"].numpy() for item in items])  # [N, P, M]
    lengths = masks.sum(-1)
    if not (masks == (np.arange(masks.shape[-1]) < lengths[..., None])).all():
        raise ValueError("text masks are not prefixes: the packed prompts could not be re-padded")
    states = np.concatenate(
        [item["text"][p, : lengths[n, p]].numpy() for n, item in enumerate(items) for p in range(masks.shape[1])]
    )
    arrays = {name: np.stack([item[name].numpy() for item in items]).astype(np.float16) for name in SEGMENTS}
    arrays |= {"states": states.astype(np.float16), "lengths": lengths.astype(np.int32)}
    return arrays | {"clear": items[0]["clear"].numpy().astype(np.float32)}


def model_config(values: dict) -> ModelConfig:
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs (comma-separated values become tuples) for the packed ModelConfig or stage settings."""
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        parts = [json_or_text(v) for v in value.split(",")]
        out[key] = tuple(parts) if len(parts) > 1 else parts[0]
    return out


def json_or_text(value: str) -> object:
    """A JSON value (numbers, true/false), or the text itself (`optimizer=muon`)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class PackedClips:
    """The packed clips on one device, drawn as `LatentClips` batches (every clip K = 1), a fresh order per epoch."""

    def __init__(self, path: Path, text_len: int, device: torch.device) -> None:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: torch.from_numpy(data[name]) for name in data.files}
        n, prompts = arrays["lengths"].shape
        text = torch.zeros(n, prompts, text_len, arrays["states"].shape[-1], dtype=torch.float16)
        offsets = np.concatenate([[0], np.cumsum(arrays["lengths"].flatten().numpy())])
        for row, length in enumerate(arrays["lengths"].flatten().tolist()):
            text[row // prompts, row % prompts, :length] = arrays["states"][offsets[row] : offsets[row + 1]]
        self.text = text.to(device)
        self.mask = (torch.arange(text_len) < arrays["lengths"][..., None]).to(device)
        self.latents = {name: arrays[name].to(device) for name in SEGMENTS}
        self.clear = arrays["clear"].to(device)
        self.order, self.cursor = torch.empty(0, dtype=torch.long), 0

    def __len__(self) -> int:
        return self.text.shape[0]

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        if self.cursor + size > len(self.order):
            self.order, self.cursor = torch.randperm(len(self)), 0
        index = self.order[self.cursor : self.cursor + size].to(self.text.device)
        self.cursor += size
        out = {name: value[index].float() for name, value in self.latents.items()}
        return out | {"text": self.text[index].float(), "text_mask": self.mask[index], "clear": self.clear}


def step_fn(model: LayerDiT, stage: DiTStageConfig, data: PackedClips, device: torch.device, bf16: bool = True):
    """One optimiser step of the objective, in bf16 autocast (what `precision: auto` picks on a GPU) unless `bf16` is
    false (hosts without bf16 kernels), as a function returning the batch's loss; the stage's optimiser
    (`schedule.dit_optimizer`) and schedule live in its closure."""
    configured = dit_optimizer(model, stage)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow_losses(data.batch(stage.batch_size), model, stage, stage.prompt_dropout)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def probe_steps(
    cfg: ModelConfig, stage: DiTStageConfig, data: PackedClips, device: torch.device, seconds: float, bf16: bool
) -> int:
    """How many steps `seconds` hold: a throwaway model's steps timed after a warm-up."""
    step = step_fn(LayerDiT(cfg).to(device), dataclasses.replace(stage, max_steps=10_000), data, device, bf16)
    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, count = time.perf_counter(), 20
    for _ in range(count):
        step()
    sync()
    step_s = (time.perf_counter() - start) / count
    print(f"probe: {step_s * 1000:.1f} ms a step", flush=True)
    return max(stage.warmup_steps + 1, int(seconds / step_s))


def train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    meta = json.loads((args.data.parent / "data.json").read_text())
    cfg = model_config(meta["model"] | parse_overrides(args.model))
    batch = {"batch_size": args.batch} if args.batch else {}
    stage = DiTStageConfig(**meta["stage2"] | parse_overrides(args.stage) | batch | {"alpha_decode_samples": 0})
    data = PackedClips(args.data, cfg.text_len, device)
    torch.manual_seed(0)
    steps = args.steps or probe_steps(cfg, stage, data, device, args.seconds, args.bf16)
    stage = dataclasses.replace(stage, max_steps=steps)
    snapshots = {max(1, round(float(f) * stage.max_steps)) for f in args.snapshots.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    model = LayerDiT(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    step, losses, start = step_fn(model, stage, data, device, args.bf16), [], time.perf_counter()
    print(f"{args.name}: {stage.max_steps} steps of batch {stage.batch_size}, {len(data)} clips", flush=True)
    for n in range(1, stage.max_steps + 1):
        losses.append(step())
        with torch.no_grad():
            torch._foreach_lerp_(
                list(ema.parameters()), list(model.parameters()), 1 - ema_decay_at(n - 1, stage.ema_decay)
            )
        if n in snapshots or n % max(1, stage.max_steps // 10) == 0:
            mean = float(torch.stack(losses).mean())
            print(f"{args.name} step {n}: loss {mean:.3f}, {time.perf_counter() - start:.0f} s", flush=True)
            losses = []
        late = not args.steps and time.perf_counter() - start > 1.25 * args.seconds  # the probe was optimistic
        if n in snapshots or late:
            save_weights(ema, cfg, n, stage.batch_size, args.out / f"{args.name}_step{n}.safetensors")
            if args.live:
                save_weights(model, cfg, n, stage.batch_size, args.out / f"{args.name}_live_step{n}.safetensors")
        if late:
            print(f"{args.name}: stopped at step {n} of {stage.max_steps}, over time", flush=True)
            break


def save_weights(dit: LayerDiT, cfg: ModelConfig, steps: int, batch: int, path: Path) -> None:
    """A DiT (the EMA, or the live one) in fp16 (half the bytes a device call may bring back) with its sizes and
    budget."""
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in dit.state_dict().items()}
    meta = {"model": json.dumps(dataclasses.asdict(cfg)), "steps": str(steps), "batch": str(batch)}
    save_file(state, path, metadata=meta)


def sample(args: argparse.Namespace) -> None:
    from safetensors import safe_open

    from layert2v.config import load_params
    from layert2v.evaluate import evaluate_pipeline, validation_prompts
    from layert2v.models.checkpoint import load_vae, save_pipeline
    from layert2v.models.text import default_text_encoder_path
    from layert2v.pipeline import LayerT2VPipeline

    artifacts = args.root / "artifacts"
    params = load_params(args.root / "params.yaml")
    vae = load_vae(artifacts / "train" / "stage1")
    prompts = validation_prompts(artifacts / "prepared", args.clips, 1)
    folders = {"reference": args.reference} if args.reference else {}
    for weights in args.weights:
        with safe_open(str(weights), "pt") as handle:
            meta = handle.metadata()
        dit = LayerDiT(model_config(json.loads(meta["model"])))
        dit.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
        folder = args.out / weights.stem
        folders[f"{weights.stem} (batch {meta['batch']})"] = save_pipeline(
            folder, dit, vae, default_text_encoder_path()
        )
    keys = (*summary_table.SAMPLES, "empty_layers")
    print(summary_table.header(["model"], keys))
    for name, folder in folders.items():
        summary, _ = evaluate_pipeline(LayerT2VPipeline.from_folder(folder), prompts, params.evaluate, 9, (64, 64))
        print(summary_table.row([name], summary, keys), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path(".gpu/data.npz"))
    p = commands.add_parser("train")
    p.add_argument("--data", type=Path, default=Path(".gpu/data.npz"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="run")
    p.add_argument("--seconds", type=float, default=400)
    p.add_argument("--steps", type=int, default=0, help="a fixed step count instead of --seconds' probe")
    p.add_argument("--batch", type=int, default=0, help="clips per step (0: the stage's)")
    p.add_argument("--stage", nargs="*", default=[], help="stage-2 overrides, e.g. lr=0.003 warmup_steps=100")
    p.add_argument("--model", nargs="*", default=[], help="ModelConfig overrides, e.g. patch=1,1,1 dim=128")
    p.add_argument("--snapshots", default="1", help="fractions of the run at which the EMA DiT is saved")
    p.add_argument("--live", action="store_true", help="save the trained weights beside their EMA")
    p.add_argument("--device", default="cuda")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="--no-bf16: fp32")
    p = commands.add_parser("sample")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--weights", type=Path, nargs="+", required=True)
    p.add_argument("--reference", type=Path, default=None)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("gpu_budget"))
    args = parser.parse_args()
    {"pack": pack, "train": train, "sample": sample}[args.command](args)


if __name__ == "__main__":
    main()
