"""Validation samples of a trained model and the metrics promotion is decided on.

The prompts are the captions of held-out validation clips (overall, background, each foreground), whose
recorded attributes say what colour and shape every foreground should have and whether the camera is
still. Each prompt is sampled once with a fixed seed; per sample we measure cross-layer coherence, colour
and shape adherence, the foregrounds drawn empty and, for still cameras, background change. The summary reports
medians over the prompts for dB figures and shares over all foregrounds for adherence and empty layers. The
evaluate stage samples the same clips once more in words no training caption used (`synthetic.reworded`: held-out
synonyms and sentence forms) and reports their adherence as `reworded_*`: whether the model follows a user's words
or only the templates'.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from layert2v.ceiling import vae_ceiling
from layert2v.compose import LayeredVideo
from layert2v.config import REWORDED_METRICS, EvaluateConfig, Params
from layert2v.data.synthetic import Sprite, reworded
from layert2v.metrics import adherence, layered_metrics
from layert2v.pipeline import LayerT2VPipeline
from layert2v.quality.report import GateReport, run_metric_gate


@dataclass(frozen=True)
class ValPrompt:
    clip_id: str
    prompt: str
    background: str
    foregrounds: list[str]
    attributes: list[dict]  # per foreground: colour, shape, ...
    still_camera: bool
    scene: dict  # every recorded attribute of the clip (background, camera, foregrounds)


def validation_prompts(prepared: Path, count: int, max_fg: int, split: str = "val") -> list[ValPrompt]:
    """The first `count` clips of `split` by clip id among those with at most `max_fg` foregrounds (a clip
    with more shows foregrounds in its full video that a `max_fg`-layer sample could not composite to)."""
    manifest = pd.read_parquet(Path(prepared) / "manifest.parquet")
    rows = manifest[(manifest["split"] == split) & (manifest["num_fg"] <= max_fg)].sort_values("clip_id").head(count)
    if rows.empty:
        raise ValueError(
            f"{prepared} has no clips in split '{split}' with at most {max_fg} foreground(s) to take prompts from"
        )
    prompts = []
    for row in rows.itertuples():
        attributes = json.loads(row.attributes)
        k = int(row.num_fg)
        prompts.append(
            ValPrompt(
                clip_id=row.clip_id,
                prompt=row.caption_full,
                background=row.caption_background,
                foregrounds=json.loads(row.captions_foreground)[:k],
                attributes=attributes.get("foregrounds", [])[:k],
                still_camera=attributes.get("camera", {}).get("kind") == "still",
                scene=attributes,
            )
        )
    return prompts


def reworded_prompts(prompts: list[ValPrompt]) -> list[ValPrompt]:
    """The same clips asked for in held-out words (`synthetic.reworded`); clips whose attributes do not describe a
    synthetic scene (imported data) have no rewording and are left out."""
    sprite_fields = {f.name for f in fields(Sprite)}
    out = []
    for prompt in prompts:
        scene = prompt.scene
        if not ({"background", "camera"} <= set(scene) and all(sprite_fields <= set(f) for f in prompt.attributes)):
            continue
        full, background, foregrounds = reworded(scene | {"foregrounds": prompt.attributes})
        out.append(replace(prompt, prompt=full, background=background, foregrounds=foregrounds))
    return out


def generate(pipeline, prompt: ValPrompt, cfg: EvaluateConfig, frames: int, size: tuple[int, int]):
    """One seeded sample of `prompt` (the seed is shared, so samples differ only by their prompts)."""
    return pipeline.generate(
        prompt.prompt,
        prompt.background,
        prompt.foregrounds,
        frames=frames,
        height=size[0],
        width=size[1],
        steps=cfg.steps,
        guidance=cfg.guidance,
        guidance_sigma=cfg.guidance_sigma,
        guidance_every=cfg.guidance_every,
        shape_guidance=cfg.shape_guidance,
        seed=cfg.seed,
        shift=cfg.shift,
        sampler=cfg.sampler,
        composite_guidance=cfg.composite_guidance,
        composite_sigma=cfg.composite_sigma,
    )


def sample_metrics(video: LayeredVideo, prompt: ValPrompt, cell: int) -> dict[str, float]:
    """Every metric of one generated sample against what its prompt asked for (`cell`: the VAE's, for blockiness)."""
    metrics = layered_metrics(video, cell) | adherence(video, prompt.attributes)
    metrics["still_camera"] = float(prompt.still_camera)
    return metrics


def summarise(rows: list[dict[str, float]], fg_counts: list[int]) -> dict[str, float]:
    """Medians of the per-sample figures; adherence as the share over all foregrounds; NaN -> a failing value."""
    frame = pd.DataFrame(rows)
    weights = np.asarray(fg_counts, dtype=float)
    coherence = frame["coherence_db"].clip(upper=100.0)  # exact layers give +inf; keep the median finite
    still = frame[frame["still_camera"] > 0]
    summary = {
        "coherence_db": float(coherence.median()),
        "coherence_db_min": float(coherence.min()),
        "colour_adherence": float(np.average(frame["colour_adherence"], weights=weights)),
        "shape_adherence": float(np.average(frame["shape_adherence"], weights=weights)),
        "empty_layers": float(np.average(frame["empty_layers"], weights=weights)),
        "alpha_binarity": float(frame["alpha_binarity"].median()),
        "alpha_temporal_iou": float(frame["alpha_temporal_iou"].median()),
        "alpha_stutter": float(frame["alpha_stutter"].median()),
        "blockiness": float(frame["blockiness"].median()),
        "still_background_change": float(still["background_change"].median()) if len(still) else 0.0,
        "samples": float(len(frame)),
        "foregrounds": float(weights.sum()),
    }
    return {k: (v if math.isfinite(v) else -1.0) for k, v in summary.items()}


def evaluate_pipeline(
    pipeline, prompts: list[ValPrompt], cfg: EvaluateConfig, frames: int, size: tuple[int, int], out: Path | None = None
) -> tuple[dict[str, float], list[dict]]:
    """Sample every prompt; returns the summary and per-sample rows. With `out`, writes previews of the
    first four samples (contact sheet + GIF) and `samples.json` there."""
    from layert2v.progress import progress

    rows = []
    with progress() as bar:
        task = bar.add_task("evaluate: validation samples", total=len(prompts))
        for i, prompt in enumerate(prompts):
            video = generate(pipeline, prompt, cfg, frames, size)
            rows.append(
                {"clip_id": prompt.clip_id, "k": len(prompt.foregrounds)}
                | sample_metrics(video, prompt, pipeline.cfg.vae_cell)
            )
            if out is not None and i < 4:
                write_preview(video, Path(out) / "previews", prompt.clip_id)
            bar.advance(task)
    summary = summarise(
        [{k: v for k, v in r.items() if k not in ("clip_id", "k")} for r in rows], [r["k"] for r in rows]
    )
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "samples.json").write_text(json.dumps(rows, indent=1) + "\n")
    return summary, rows


def write_preview(video: LayeredVideo, folder: Path, name: str) -> list[Path]:
    """Contact sheet (PNG) and animated strip (GIF) of full / background / foregrounds / alphas."""
    from layert2v import io

    return [
        io.contact_sheet(video.preview_rows(), folder / f"{name}.png"),
        io.write_gif(folder / f"{name}.gif", video.preview_strip(), video.fps),
    ]


def log_evaluation(
    root: Path, experiment: str, train_dir: Path, summary: dict[str, float], out: Path, passed: bool
) -> str:
    """The evaluation as an MLflow run `evaluate` under the chain's `pipeline` run: its metrics, previews and gate
    report, with lineage; its id goes to `out/mlflow_run_id` (the Prefect report links to it). Returns the id."""
    from layert2v import tracking

    client = tracking.client(root)
    parent = tracking.parent_run_id(train_dir)
    run = client.create_run(
        tracking.experiment_id(root, experiment),
        run_name="evaluate",
        tags={"mlflow.parentRunId": parent} if parent else None,
    )
    run_id = run.info.run_id
    tracking.log_lineage(root, run_id)
    for key, value in summary.items():
        client.log_metric(run_id, key, value)
    for path in sorted((out / "previews").glob("*")):
        client.log_artifact(run_id, str(path), "previews")
    for name in ("metrics.json", "gate.json", "gate.md", "samples.json"):
        client.log_artifact(run_id, str(out / name), "report")
    client.set_tag(run_id, "gate", "passed" if passed else "failed")
    client.set_terminated(run_id, "FINISHED" if passed else "FAILED")
    (out / "mlflow_run_id").write_text(run_id + "\n")
    return run_id


def evaluate_and_gate(
    model: Path,
    prepared: Path,
    params: Params,
    gate: dict[str, float],
    out: Path,
    name: str,
    max_fg: int | None = None,
    ceiling: bool = False,
    rewording: bool = False,
) -> tuple[dict[str, float], GateReport]:
    """Sample the validation prompts with the model folder `model` (clips of at most `max_fg` foregrounds,
    default the model's K_max), write `metrics.json`, `samples.json` and previews under `out`, and check
    `gate` (metric -> minimum) into `out/gate.json`. With `ceiling`, the model's VAE round trip of the same
    clips' ground truth joins the figures (`ceiling.py`); with `rewording`, the adherence of the same clips asked
    for in held-out words (`reworded_prompts`). The evaluate stage and the DiT stages' sample gates."""
    pipeline = LayerT2VPipeline.from_folder(model)
    prompts = validation_prompts(prepared, params.evaluate.prompts, max_fg or pipeline.cfg.max_fg)
    size = (params.prepare.height, params.prepare.width)
    summary, _ = evaluate_pipeline(pipeline, prompts, params.evaluate, params.prepare.frames, size, out)
    if ceiling:
        summary |= vae_ceiling(pipeline.vae, prepared, params.evaluate.prompts)
    if rewording and (others := reworded_prompts(prompts)):
        words, _ = evaluate_pipeline(pipeline, others, params.evaluate, params.prepare.frames, size)
        summary |= {name: words[name.removeprefix("reworded_")] for name in REWORDED_METRICS}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, run_metric_gate(name, summary, gate, out / "gate.json")
