"""Typed, frozen configuration, loaded from `params.yaml`.

`params.yaml` is the single source of truth for runs. Its top-level sections are the `default` profile
(what `make run` and `dvc repro` use, and what DVC stages declare as params); `profiles.<name>` holds
overrides merged on top (`smoke` for tests). `layert2v params --profile smoke` prints the merged file,
which is how a test repo or an experiment gets a whole profile as plain params.

Every dataclass validates itself at construction and raises `ValueError` naming the bad value.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Self

import yaml


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# The VAE's round trip of ground truth (`ceiling.vae_ceiling`): what no sample of this autoencoder can exceed.
CEILING_METRICS = (
    "ceiling_shape_adherence",
    "ceiling_colour_adherence",
    "ceiling_alpha_iou",
    "ceiling_psnr_rgb",
    "ceiling_coherence_db",
    "ceiling_blockiness",
    "ceiling_alpha_stutter",
    "ceiling_foregrounds",
)
# What `evaluate` writes to metrics.json (`evaluate.summarise`): the names the evaluation gate and the promotion
# rule may use. A misspelt name is an error when params load, not a silent NaN after sampling.
REWORDED_METRICS = (  # the clips in held-out words
    "reworded_colour_adherence",
    "reworded_shape_adherence",
    "reworded_foregrounds",
)
EVALUATION_METRICS = (
    "coherence_db",
    "coherence_db_min",
    "colour_adherence",
    "shape_adherence",
    "empty_layers",
    "alpha_binarity",
    "alpha_temporal_iou",
    "alpha_stutter",
    "blockiness",
    "still_background_change",
    "samples",
    "foregrounds",
    *REWORDED_METRICS,
    *CEILING_METRICS,
)
# Each share among foregrounds and the metric that counts the foregrounds it was judged on: a share from a few dozen
# foregrounds moves by several points from one sampling seed to the next, which the promotion rule allows for.
SHARE_COUNTS = {
    "colour_adherence": "foregrounds",
    "shape_adherence": "foregrounds",
    "empty_layers": "foregrounds",
    "reworded_colour_adherence": "reworded_foregrounds",
    "reworded_shape_adherence": "reworded_foregrounds",
    "ceiling_shape_adherence": "ceiling_foregrounds",
    "ceiling_colour_adherence": "ceiling_foregrounds",
}
_DIT_GATE_METRICS = ("finite_loss", "val/loss", "val/fm", "val/consistency", "val/alpha")
# What each training stage measures when it finishes (its validation metrics): the names its gate may use. The
# DiT stages' samples are gated by their own DVC stages (`evaluate.stage_gates`), so a sampler change retrains
# nothing.
STAGE_GATE_METRICS = {
    "stage0": ("val/psnr_rgb",),
    "stage1": ("val/psnr_rgb", "val/alpha_iou", *CEILING_METRICS),
    "stage2": _DIT_GATE_METRICS,
    "stage3": _DIT_GATE_METRICS,
}


def _check_names(names: object, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(names) - set(known))  # type: ignore[arg-type]
    _require(not unknown, f"{where} names unknown metrics {unknown}; known: {list(known)}")


def _check_frames(frames: int, where: str) -> None:
    _require(frames >= 1 and (frames - 1) % 4 == 0, f"{where}.frames must be 4k+1 (1, 5, 9, ...), got {frames}")


@dataclass(frozen=True, kw_only=True)
class FromDict:
    """Builds a dataclass from a mapping, rejecting unknown keys so a typo in params.yaml is an error."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], section: str) -> Self:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        _require(not unknown, f"params section '{section}' has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class SynthConfig(FromDict):
    """The procedural VidLayer generator."""

    clips: int  # number of clips over all splits
    max_fg: int  # foreground layers per clip are drawn from 1..max_fg
    size: int  # square frame side in pixels (even, for H.264 4:2:0)
    frames: int  # frames per clip, 4k+1
    fps: int = 8  # frame rate written into the files
    seed: int = 0  # every clip draws from rng([seed, index]): clips are independent and reproducible
    val_fraction: float = 0.1  # share of clips in the val split (seen colour-shape combinations)
    test_fraction: float = 0.1  # share of clips in the test split (held-out combinations)
    held_out_combos: int = 6  # colour-shape combinations that only the test split uses
    wording: str = "varied"  # captions' words: "varied" (synonyms and sentence forms, `synthetic.WORDS` less its
    # held-out words) or "fixed" (attribute names and three templates)

    def __post_init__(self) -> None:
        _require(self.clips >= 1, f"synth.clips must be >= 1, got {self.clips}")
        _require(1 <= self.max_fg <= 8, f"synth.max_fg must be in 1..8, got {self.max_fg}")
        _require(self.size >= 16 and self.size % 2 == 0, f"synth.size must be even and >= 16, got {self.size}")
        _check_frames(self.frames, "synth")
        _require(self.fps >= 1, f"synth.fps must be >= 1, got {self.fps}")
        _require(
            self.val_fraction >= 0 and self.test_fraction >= 0 and self.val_fraction + self.test_fraction < 1,
            f"synth.val_fraction + test_fraction must be in [0, 1), got {self.val_fraction}, {self.test_fraction}",
        )
        _require(self.held_out_combos >= 1, f"synth.held_out_combos must be >= 1, got {self.held_out_combos}")
        _require(self.wording in ("fixed", "varied"), f"synth.wording must be fixed or varied, got {self.wording!r}")


@dataclass(frozen=True, kw_only=True)
class PrepareConfig(FromDict):
    """How raw clips are conformed into the training cache."""

    height: int  # output frame height
    width: int  # output frame width
    frames: int  # output frames per clip, 4k+1
    max_fg: int  # clips with more foreground layers are rejected
    fps: float = 8.0  # target frame rate: sources are subsampled by round(src_fps / fps)
    max_tokens: int = 48  # text-encoder context kept per caption; longer captions fail the gate
    text_pooled: bool = True  # the first token state carries the caption's pooled sentence embedding (meaning, not
    # token identity: "crimson" lands near "red"); the DiT trained on the cache reads prompts the same way
    workers: int = 2  # decode processes

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            _require(value >= 8 and value % 8 == 0, f"prepare.{name} must be a multiple of 8, got {value}")
        _check_frames(self.frames, "prepare")
        _require(1 <= self.max_fg <= 8, f"prepare.max_fg must be in 1..8, got {self.max_fg}")
        _require(self.fps > 0, f"prepare.fps must be > 0, got {self.fps}")
        _require(4 <= self.max_tokens <= 512, f"prepare.max_tokens must be in 4..512, got {self.max_tokens}")
        _require(self.workers >= 1, f"prepare.workers must be >= 1, got {self.workers}")


@dataclass(frozen=True, kw_only=True)
class DataGateConfig(FromDict):
    """Thresholds of the data-quality gate (`layert2v data validate`)."""

    min_clips: int  # fewer accepted clips than this fails the gate
    max_reject_fraction: float = 0.05  # rejected / (accepted + rejected) above this fails the gate
    min_coverage: float = 0.002  # every foreground layer must cover at least this mean alpha
    max_coverage: float = 0.8  # ... and at most this (a layer that is the whole frame is no foreground)
    composite_tolerance: float = 0.04  # mean |full - over(fg, bg)| in [0, 1] units allowed per clip
    min_split_clips: int = 1  # train, val and test must each hold at least this many clips

    def __post_init__(self) -> None:
        _require(self.min_clips >= 1, f"gate.min_clips must be >= 1, got {self.min_clips}")
        _require(
            0 <= self.max_reject_fraction <= 1,
            f"gate.max_reject_fraction not in [0, 1]: {self.max_reject_fraction}",
        )
        _require(
            0 <= self.min_coverage < self.max_coverage <= 1,
            f"gate coverage bounds must satisfy 0 <= min < max <= 1, got {self.min_coverage}, {self.max_coverage}",
        )
        _require(
            self.composite_tolerance > 0,
            f"gate.composite_tolerance must be > 0, got {self.composite_tolerance}",
        )


@dataclass(frozen=True, kw_only=True)
class ModelConfig(FromDict):
    """Sizes of the VAE and LayerDiT. Presets by name in `PRESETS`; `paper` matches Wan2.1-T2V-1.3B."""

    name: str  # preset name, recorded with the weights
    latent_channels: int = 16  # VAE latent channels (Wan 2.1: 16)
    vae_arch: str = "patch"  # "patch" (fast from scratch on CPU) or "wan" (Wan 2.1's causal 3D VAE); see vae.py
    vae_width: int = 128  # patch VAE: channels of its residual blocks (a multiple of 8)
    vae_base_dim: int = 16  # wan VAE: width of the first stage
    vae_dim_mult: tuple[int, ...] = (1, 2, 2, 2)  # wan VAE: per-stage width multipliers; 3 downsamplings -> 8x
    vae_num_res_blocks: int = 2  # residual blocks per wan VAE stage, or of the patch VAE's encoder and decoder
    vae_cell: int = 8  # pixels per side of one latent cell (spatial compression): 8 (wan, patch) or 4 (patch)
    vae_refine: int = 0  # patch VAE: width of a 3x3 head at full resolution after its decoder (0: none); it lets
    # neighbouring cells' pixels meet, where the space-to-depth decoder alone draws each cell apart
    vae_context: int = 0  # patch VAE: width of a side branch that reads each latent frame beside the one before
    # (causal) and corrects its decoded frames, so layers move inside a latent frame instead of holding still for
    # four frames and jumping (0: none)
    alpha_codec: str = "vae"  # how mattes become latents: "vae" (the autoencoder, with stage 1's adapter) or
    # "linear" (one linear map per latent cell, fitted in stage 1: `vae.LinearAlphaCodec`)
    patch: tuple[int, int, int] = (1, 2, 2)  # DiT patch over (latent time, height, width)
    dim: int = 256  # transformer width D
    depth: int = 6  # transformer blocks
    heads: int = 4  # attention heads; dim / heads must be even and split into 3 RoPE axes
    ffn_dim: int = 1024  # hidden width of each block's FFN
    freq_dim: int = 256  # sinusoidal timestep embedding width
    text_dim: int = 384  # text-encoder hidden size (MiniLM 384, umT5-XXL 4096)
    text_len: int = 64  # tokens kept per prompt
    text_pooled: bool = False  # prompts' first token is their pooled sentence embedding (`prepare.text_pooled`)
    pooled_modulation: bool = False  # each segment's prompt's first token state (its pooled embedding with
    # `text_pooled`) is added to the timestep embedding of that segment's tokens: SD3's pooled vector, per layer
    max_fg: int = 3  # K_max: foreground layers the instance table holds
    eps: float = 1e-6  # norm epsilon

    def __post_init__(self) -> None:
        _require(self.dim % self.heads == 0, f"model.dim {self.dim} must be divisible by heads {self.heads}")
        head_dim = self.dim // self.heads
        _require(head_dim % 2 == 0 and head_dim >= 6, f"model head dim {head_dim} must be even and >= 6 (3D RoPE)")
        _require(
            len(self.patch) == 3 and min(self.patch) >= 1, f"model.patch must be 3 positive ints, got {self.patch}"
        )
        _require(
            self.depth >= 1 and self.ffn_dim >= 1, f"model depth/ffn_dim must be >= 1: {self.depth}, {self.ffn_dim}"
        )
        _require(1 <= self.max_fg <= 8, f"model.max_fg must be in 1..8, got {self.max_fg}")
        _require(
            len(self.vae_dim_mult) == 4, f"model.vae_dim_mult needs 4 stages (8x spatial), got {self.vae_dim_mult}"
        )
        _require(self.vae_arch in ("patch", "wan"), f"model.vae_arch must be 'patch' or 'wan', got {self.vae_arch!r}")
        _require(
            self.vae_cell in ((4, 8) if self.vae_arch == "patch" else (8,)),
            f"model.vae_cell of the {self.vae_arch} VAE must be {'4 or 8' if self.vae_arch == 'patch' else '8'}, "
            f"got {self.vae_cell}",
        )
        _require(
            self.vae_refine >= 0 and (self.vae_refine == 0 or self.vae_arch == "patch"),
            f"model.vae_refine must be >= 0 and is a patch VAE option, got {self.vae_refine} ({self.vae_arch})",
        )
        _require(
            self.vae_context >= 0 and self.vae_context % 8 == 0 and (self.vae_context == 0 or self.vae_arch == "patch"),
            f"model.vae_context must be >= 0 and is a patch VAE option (the wan VAE's decoder is causal 3D already); "
            f"a width, a multiple of 8 (its group norm): got {self.vae_context} ({self.vae_arch})",
        )
        _require(
            self.alpha_codec in ("vae", "linear"),
            f"model.alpha_codec must be 'vae' or 'linear', got {self.alpha_codec!r}",
        )
        _require(
            self.vae_width >= 8 and self.vae_width % 8 == 0,
            f"model.vae_width must be a positive multiple of 8, got {self.vae_width}",
        )

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of `dataclasses.asdict` after a JSON round trip (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny", vae_width=32, vae_num_res_blocks=1, vae_base_dim=8, dim=48, depth=2, heads=2, ffn_dim=96,
        freq_dim=64, text_len=16, max_fg=3,
    ),
    "small": ModelConfig(name="small"),  # profiles.finevae: 4-pixel cells (docs/results.md, the autoencoder)
    "paper": ModelConfig(
        name="paper", vae_arch="wan", vae_base_dim=96, vae_dim_mult=(1, 2, 4, 4), vae_num_res_blocks=2,
        dim=1536, depth=30, heads=12, ffn_dim=8960, text_dim=4096, text_len=512, max_fg=3,
    ),
}  # fmt: skip


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name, optionally with some fields replaced (validated again)."""
    _require(name in PRESETS, f"unknown model preset '{name}'; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


@dataclass(frozen=True)
class Request:
    """What a user asks `generate` for; `pipeline.check_request` checks it before any model is loaded. Its
    defaults are those of `LayerT2VPipeline.generate` and of `layert2v generate`."""

    prompt: str
    background_prompt: str
    foreground_prompts: list[str]
    frames: int = 9  # the defaults of `generate` and of the CLI: the CPU presets' training clips
    height: int = 64
    width: int = 64
    steps: int = 20
    guidance: float = 4.0
    guidance_sigma: float = 0.5  # classifier-free guidance on the steps above this noise level (0: every step)
    composite_guidance: float = 0.75
    composite_sigma: float = 0.5  # compositing guidance on the steps at this noise level or below (1: every step)
    seed: int = 0
    guidance_every: int = 2  # both guidance branches on every n-th guided step, the last difference reused between
    shape_guidance: float = 6.0  # guided steps also follow what the prompts' shape words add (0: off)

    def prompts(self) -> list[str]:
        return [self.prompt, self.background_prompt, *self.foreground_prompts]


@dataclass(frozen=True, kw_only=True)
class RequestLimits:
    """Upper bounds on one generation request, checked before any model is loaded: a request past them would
    run the machine out of memory or time (attention grows with the square of the token count)."""

    max_frames: int = 33  # frames per clip
    max_side: int = 256  # height and width in pixels
    max_steps: int = 200  # sampler steps

    def __post_init__(self) -> None:
        _require(self.max_frames >= 1, f"limits.max_frames must be >= 1, got {self.max_frames}")
        _require(self.max_side >= 8, f"limits.max_side must be >= 8, got {self.max_side}")
        _require(self.max_steps >= 1, f"limits.max_steps must be >= 1, got {self.max_steps}")


@dataclass(frozen=True, kw_only=True)
class StageConfig(FromDict):
    """Optimisation of one training stage (AdamW, linear warm-up then cosine decay); what every stage shares."""

    max_steps: int  # optimiser steps
    batch_size: int  # clips per step
    lr: float  # peak learning rate
    warmup_steps: int = 10  # linear warm-up before the cosine decay
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # gradient-norm clipping
    val_every: int = 50  # validation every N steps
    checkpoint_every: int = 20  # `last.ckpt` every N steps, what a killed run resumes from
    val_batches: int = 2  # validation batches per check
    gate: dict[str, float] = field(default_factory=dict)  # validation metric -> minimum; a miss stops the chain

    def __post_init__(self) -> None:
        _require(self.max_steps >= 1 and self.batch_size >= 1, f"stage max_steps/batch_size must be >= 1: {self}")
        _require(self.lr > 0, f"stage lr must be > 0, got {self.lr}")
        _require(
            0 <= self.warmup_steps < self.max_steps, f"warmup_steps must be in [0, max_steps), got {self.warmup_steps}"
        )
        _require(self.checkpoint_every >= 1 and self.val_every >= 1, "checkpoint_every and val_every must be >= 1")


@dataclass(frozen=True, kw_only=True)
class VAEStageConfig(StageConfig):
    """Stage 0: the VAE on RGB clips (and, with `alpha_weight > 0`, on alpha mattes too)."""

    kl_weight: float = 1e-6  # weight of the posterior's KL term beside the L1 reconstruction
    alpha_weight: float = 0.0  # weight of the first foreground's matte, reconstructed as the alpha path feeds it
    seam_weight: float = 0.0  # weight of the L1 between the decoded and the true clip's steps across cell borders
    crop: float = 1.0  # train on windows of this fraction of the frame's sides (whole cells), at random places

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.kl_weight >= 0, f"kl_weight must be >= 0, got {self.kl_weight}")
        _require(0 < self.crop <= 1, f"crop must be in (0, 1], got {self.crop}")
        _require(self.alpha_weight >= 0, f"alpha_weight must be >= 0, got {self.alpha_weight}")
        _require(self.seam_weight >= 0, f"seam_weight must be >= 0, got {self.seam_weight}")


@dataclass(frozen=True, kw_only=True)
class AlphaStageConfig(StageConfig):
    """Stage 1: the VAE's alpha path (encoder frozen)."""

    decoder_lora_rank: int = 8  # rank of the VAE decoder's alpha LoRA (0: the alpha adapter alone)
    edge_weight: float = 4.0  # extra L1 weight on matte edges (pixels whose 3x3 neighbourhood is not uniform)
    ceiling_clips: int = 48  # validation clips whose true layers go through the finished VAE (`ceiling.py`)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.decoder_lora_rank >= 0, f"decoder_lora_rank must be >= 0, got {self.decoder_lora_rank}")
        _require(self.edge_weight >= 0, f"edge_weight must be >= 0, got {self.edge_weight}")
        _require(self.ceiling_clips >= 1, f"ceiling_clips must be >= 1, got {self.ceiling_clips}")


OPTIMIZERS = ("adamw", "muon")


@dataclass(frozen=True, kw_only=True)
class DiTStageConfig(StageConfig):
    """Stages 2-3: LayerDiT on the latent cache."""

    alpha_decode_samples: int = 0  # samples per batch whose predicted alpha is decoded for the alpha loss
    alpha_weight: float = 0.1  # weight of the decoded-alpha smooth-L1 term (the paper's 0.1)
    consistency_weight: float = 0.1  # weight of the latent compositing-consistency term (the paper's 0.1)
    foreground_weight: float = 0.0  # extra flow-matching weight where a foreground is (0: uniform)
    k_weights: list[float] | None = None  # how often batches of K = 1.. are drawn, against the data's mix
    ema_decay: float = 0.999  # of the EMA weights that are saved (warmed up, see `ema_decay_at`)
    prompt_dropout: float = 0.1  # probability that a sample's prompts are dropped to the null prompt (for CFG)
    condition_dropout: float = 0.0  # probability that a sample gets one editing task's segments clean and given
    timestep_shift: float = 1.0  # shift of the training timesteps towards noise (`diffusion.time_shift`)
    optimizer: str = "adamw"  # adamw, or muon: the transformer blocks' matrices by Muon, the rest by AdamW
    # (`schedule.MuonAdamW`)
    compile: bool | str = False  # the DiT's blocks' training forward and backward under `torch.compile` (inductor,
    # `LayerDiT.compile_blocks`): the first step of each K compiles (30-60 s), later ones run with the elementwise
    # work fused; "auto": where that was measured to pay (`precision.compile_pays`)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.timestep_shift > 0, f"timestep_shift must be > 0, got {self.timestep_shift}")
        _require(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _require(self.compile in (True, False, "auto"), f"compile must be true, false or auto, got {self.compile!r}")
        _require(self.alpha_decode_samples >= 0, f"alpha_decode_samples must be >= 0, got {self.alpha_decode_samples}")
        for name in ("alpha_weight", "consistency_weight", "foreground_weight"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(
            self.k_weights is None or (min(self.k_weights, default=-1) >= 0 and sum(self.k_weights) > 0),
            f"k_weights must be weights >= 0 with a positive sum, one per K = 1..K_max, got {self.k_weights}",
        )
        _require(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(0 <= self.prompt_dropout < 1, f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        _require(0 <= self.condition_dropout < 1, f"condition_dropout must be in [0, 1), got {self.condition_dropout}")


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "stage0": VAEStageConfig,
    "stage1": AlphaStageConfig,
    "stage2": DiTStageConfig,
    "stage3": DiTStageConfig,
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Trainer settings shared by all stages, and each stage's optimisation."""

    preset: str = "small"  # model preset (tiny, small, paper)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields that replace the preset's
    precision: str = "auto"  # Lightning precision 32-true or bf16-mixed, or auto (training/precision.py)
    strategy: str = "auto"  # auto, ddp, fsdp (GPU only)
    devices: int = 1  # processes (CPU) or GPUs per node
    num_nodes: int = 1
    seed: int = 0  # seeds weights, data order and noise
    experiment: str = "layert2v"  # MLflow experiment
    colour_words: bool = True  # the DiT stages record the captions' colour names in the model folder
    stage0: VAEStageConfig  # VAE pretraining on RGB
    stage1: AlphaStageConfig  # alpha VAE adaptation
    stage2: DiTStageConfig  # joint multi-layer learning (K = 1) on the latent cache
    stage3: DiTStageConfig  # multi-foreground extension (K = 1..K_max), from stage 2

    def __post_init__(self) -> None:
        _require(self.preset in PRESETS, f"train.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        known = {f.name for f in fields(ModelConfig)} - {"name", "text_len", "text_pooled"}
        _require(not set(self.model) - known, f"train.model has unknown keys {sorted(set(self.model) - known)}")
        self.model_config(PRESETS[self.preset].text_len, text_pooled=False)
        _require(
            self.precision in ("auto", "32-true", "bf16-mixed"),
            f"train.precision must be auto, 32-true or bf16-mixed, got {self.precision!r}",
        )
        _require(
            self.strategy in ("auto", "ddp", "fsdp"), f"train.strategy must be auto, ddp or fsdp, got {self.strategy!r}"
        )
        _require(self.devices >= 1 and self.num_nodes >= 1, "train.devices and num_nodes must be >= 1")
        _require(
            isinstance(self.colour_words, bool), f"train.colour_words must be true or false, got {self.colour_words!r}"
        )
        for stage, known in STAGE_GATE_METRICS.items():
            _check_names(getattr(self, stage).gate, known, f"train.{stage}.gate")

    def model_config(self, text_len: int, text_pooled: bool) -> ModelConfig:
        """The preset with `train.model`'s fields in place (lists as tuples) and the text length and pooling the
        cached text embeddings were written with (`prepare.max_tokens` and `prepare.text_pooled`, their owners)."""
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model.items()}
        return model_preset(self.preset, **overrides, text_len=text_len, text_pooled=text_pooled)

    @classmethod
    def from_dict(cls, values: dict[str, Any], section: str) -> TrainConfig:
        stages = {
            name: config.from_dict(values.get(name, {}), f"{section}.{name}") for name, config in STAGE_CONFIGS.items()
        }
        rest = {k: v for k, v in values.items() if k not in stages}
        known = {f.name for f in fields(cls)} - set(stages)
        _require(not set(rest) - known, f"params section '{section}' has unknown keys {sorted(set(rest) - known)}")
        return cls(**rest, **stages)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(FromDict):
    """Validation samples of a trained model: how they are drawn, and the minimums a model must reach."""

    prompts: int = 16  # validation clips whose captions are sampled (first N of the val split by clip id)
    steps: int = 20  # sampler steps
    guidance: float = 4.0  # classifier-free guidance scale
    guidance_sigma: float = 0.5  # ... on the steps above this noise level (0: every step)
    shift: float = 3.0  # timestep shift
    sampler: str = "unipc"
    seed: int = 0
    composite_guidance: float = 0.75  # pull of each step's full-video estimate to the layers' composite (0: off)
    composite_sigma: float = 0.5  # ... on the steps at this noise level or below (1: every step)
    guidance_every: int = 2  # both guidance branches on every n-th guided step (`sampling.guided`)
    shape_guidance: float = Request.shape_guidance  # the pull towards the prompts' shape words (`pipeline.generate`)
    gate: dict[str, float] = field(default_factory=dict)  # metric -> minimum; checked before registration
    stage_gates: dict[str, dict[str, float]] = field(default_factory=dict)  # stage2/stage3 -> minimums of its samples

    def __post_init__(self) -> None:
        _require(self.prompts >= 1, f"evaluate.prompts must be >= 1, got {self.prompts}")
        _require(self.steps >= 1, f"evaluate.steps must be >= 1, got {self.steps}")
        _require(self.guidance >= 1.0, f"evaluate.guidance must be >= 1, got {self.guidance}")
        _require(
            0.0 <= self.guidance_sigma < 1.0, f"evaluate.guidance_sigma must be in [0, 1), got {self.guidance_sigma}"
        )
        _require(self.sampler in ("euler", "unipc"), f"evaluate.sampler must be euler or unipc, got {self.sampler!r}")
        _require(self.guidance_every >= 1, f"evaluate.guidance_every must be >= 1, got {self.guidance_every}")
        _require(self.shape_guidance >= 0.0, f"evaluate.shape_guidance must be >= 0, got {self.shape_guidance}")
        _require(
            0.0 <= self.composite_guidance <= 1.0,
            f"evaluate.composite_guidance must be in [0, 1], got {self.composite_guidance}",
        )
        _require(
            0.0 < self.composite_sigma <= 1.0,
            f"evaluate.composite_sigma must be in (0, 1], got {self.composite_sigma}",
        )
        _check_names(self.gate, EVALUATION_METRICS, "evaluate.gate")
        _require(
            set(self.stage_gates) <= {"stage2", "stage3"},
            f"evaluate.stage_gates holds stage2 and stage3 only, got {sorted(self.stage_gates)}",
        )
        for stage, minimums in self.stage_gates.items():
            _check_names(minimums, EVALUATION_METRICS, f"evaluate.stage_gates.{stage}")


@dataclass(frozen=True, kw_only=True)
class RegistryConfig(FromDict):
    """Registered model name and the promotion rule: challenger replaces champion when it improves the
    primary metric by at least `min_improvement` and loses no more than `tolerance[m]` on any metric m; on a share
    among foregrounds (`SHARE_COUNTS`) a loss counts only when it also exceeds `noise_z` standard errors of the
    difference of the two shares, from the foregrounds each was judged on (0: the tolerance alone)."""

    model_name: str = "layert2v"
    primary: str = "coherence_db"
    min_improvement: float = 0.0
    tolerance: dict[str, float] = field(default_factory=dict)
    noise_z: float = 1.64

    def __post_init__(self) -> None:
        _require(bool(self.model_name.strip()), "registry.model_name must not be empty")
        _require(all(v >= 0 for v in self.tolerance.values()), f"registry.tolerance must be >= 0: {self.tolerance}")
        _require(self.noise_z >= 0, f"registry.noise_z must be >= 0: {self.noise_z}")
        _check_names([self.primary], EVALUATION_METRICS, "registry.primary")
        _check_names(self.tolerance, EVALUATION_METRICS, "registry.tolerance")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(FromDict):
    """ONNX export of one LayerDiT denoising step per K, and the parity gate against PyTorch."""

    opset: int = 23  # >= 17 keeps LayerNormalization; 23 adds RMSNormalization and Attention (faster in onnxruntime)
    max_batch: int = 2  # dynamic batch 1..max_batch (2: both classifier-free guidance branches in one call)
    fp16: bool = True  # also write a 16-bit graph (TensorRT 10/11 take precision from the ONNX file)
    tolerance: float = 1e-3  # fp32: max abs error onnxruntime vs PyTorch (the parity gate)
    fp16_tolerance: float = 5e-2  # 16-bit graph vs fp32 PyTorch
    int8: bool = True  # also an int8 graph for onnxruntime on CPUs (`export.onnx.quantize_step`; faster, not exact)
    int8_tolerance: float = 0.1  # int8 graph vs fp32 PyTorch: relative error (norm of the difference / PyTorch's)
    parity_samples: int = 3  # seeded input sets per graph and batch size

    def __post_init__(self) -> None:
        _require(self.opset >= 17, f"export.opset must be >= 17 (LayerNormalization), got {self.opset}")
        _require(self.max_batch >= 2, f"export.max_batch must be >= 2 (guidance runs batch 2), got {self.max_batch}")
        _require(min(self.tolerance, self.fp16_tolerance, self.int8_tolerance) > 0, "export tolerances must be > 0")
        _require(self.parity_samples >= 1, f"export.parity_samples must be >= 1, got {self.parity_samples}")


BACKENDS = ("auto", "torch", "compile", "onnxruntime", "tensorrt")  # `export.runtime.Backend` and `auto`
TORCH_PRECISIONS = ("fp32", "bf16")  # the torch backends: fp32, or bf16 autocast (faster on bf16 CPUs, inexact)
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")  # the exported graphs (onnxruntime, TensorRT; int8: onnxruntime only)


@dataclass(frozen=True, kw_only=True)
class ServeConfig(FromDict):
    """The layered-video service (`layert2v serve`): which model it follows, how much work it accepts, how long it
    keeps what it made."""

    alias: str = "champion"  # registry alias the service follows (the model is registry.model_name)
    backend: str = "auto"  # auto: tensorrt with a GPU and TensorRT, else the faster of onnxruntime and torch on
    # this CPU when the model carries its ONNX graphs (a probe cached per CPU model, export/probe.py), else torch
    bf16: bool = False  # the torch and compile backends run the DiT under bf16 autocast (faster where the CPU has
    # bf16 kernels, not exact); exported graphs keep their own precision
    int8: bool = False  # onnxruntime runs the export's int8 graphs (faster on CPUs, not exact; `auto` times them)
    poll_seconds: float = 10.0  # how often the alias is looked up; a moved alias loads in the background
    queue_max: int = 16  # accepted, unfinished jobs; beyond it a request gets 429 with Retry-After
    job_timeout_s: float = 600.0  # a job still sampling after this fails with a timeout
    retention_hours: float = 24.0  # finished jobs older than this are deleted with their files ...
    disk_budget_mb: float = 2048.0  # ... and the oldest finished ones while the output folder is over this
    max_upload_mb: float = 64.0  # bytes of one uploaded file
    max_frames: int = RequestLimits.max_frames  # frames per clip
    max_side: int = RequestLimits.max_side  # height and width in pixels
    max_steps: int = RequestLimits.max_steps  # sampler steps

    def __post_init__(self) -> None:
        _require(bool(self.alias.strip()), "serve.alias must not be empty")
        _require(self.backend in BACKENDS, f"serve.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        for name in ("poll_seconds", "job_timeout_s", "retention_hours", "disk_budget_mb", "max_upload_mb"):
            _require(getattr(self, name) > 0, f"serve.{name} must be > 0, got {getattr(self, name)}")
        _require(self.queue_max >= 1, f"serve.queue_max must be >= 1, got {self.queue_max}")
        self.limits()

    def limits(self) -> RequestLimits:
        """The bounds `check_request` applies to every job."""
        return RequestLimits(max_frames=self.max_frames, max_side=self.max_side, max_steps=self.max_steps)


@dataclass(frozen=True, kw_only=True)
class Params:
    """Everything one run reads, one dataclass per params.yaml section."""

    synth: SynthConfig
    prepare: PrepareConfig
    gate: DataGateConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    registry: RegistryConfig
    serve: ServeConfig


SECTIONS = {
    "synth": SynthConfig,
    "prepare": PrepareConfig,
    "gate": DataGateConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
    "registry": RegistryConfig,
    "serve": ServeConfig,
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_profile(raw: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """The plain params of `profile`: top-level sections with `profiles[profile]` merged on top. A section name
    that no dataclass reads, at the top or in the profile, is an error: it would otherwise be dropped unseen."""
    profiles = raw.get("profiles", {})
    base = {key: value for key, value in raw.items() if key != "profiles"}
    _check_sections(base, "params")
    if profile in (None, "default"):
        return base
    _require(profile in profiles, f"unknown profile '{profile}'; params.yaml has: default, {', '.join(profiles)}")
    _require(isinstance(profiles[profile], dict), f"profiles.{profile} must be a mapping of sections")
    _check_sections(profiles[profile], f"profiles.{profile}")
    return _merge(base, profiles[profile])


def _check_sections(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(SECTIONS))
    _require(not unknown, f"{where} has unknown sections {unknown}; known: {list(SECTIONS)}")


def read_params_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a params file; a file that is missing, not YAML or not a mapping is one clear error."""
    _require(path.is_file(), f"params file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"params file {path} is not valid YAML{line}: {getattr(err, 'problem', err)}") from err
    raw = {} if raw is None else raw
    _require(isinstance(raw, dict), f"params file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_params(path: Path | str = "params.yaml", profile: str | None = None) -> Params:
    """Read `path`, apply `profile` and validate every section."""
    path = Path(path)
    values = resolve_profile(read_params_file(path), profile)
    built = {}
    for name, cls in SECTIONS.items():
        _require(name in values, f"{path} has no '{name}' section")
        _require(isinstance(values[name], dict), f"{path}: section '{name}' must be a mapping")
        built[name] = cls.from_dict(values[name], name)
    return Params(**built)
