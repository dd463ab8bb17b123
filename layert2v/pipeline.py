"""LayerT2VPipeline: prompts in, a `LayeredVideo` out, in one sampling pass.

A model folder holds `config.json` (the `ModelConfig` plus the text-encoder settings), `dit.safetensors`
and `vae.safetensors`; weights are only ever read with safetensors. `generate` encodes the overall,
background and per-foreground prompts, samples the packed latents `[full | bg | fg_1 | alpha_1 | ...]`
with classifier-free guidance, and decodes each segment:
RGB segments with the plain decoder, alpha segments through the alpha path. The unconditional branch is the
null prompt the DiT was trained to drop to (`text.null_prompts`), or a negative prompt repeated for every slot.
Compositing guidance keeps the full segment on the composite of the layers while they are sampled.

Backends are named by a string and only change who computes the denoising step: `torch` (the LayerDiT
itself), `compile` (the LayerDiT through `torch.compile`: each clip size and K compiles once, tens of seconds on a
CPU, then every step runs the fused graph; for a service, not a one-off command), `onnxruntime` (the exported
graphs of `export/onnx.py`, CPU here, CUDA with the `gpu` extra) or `tensorrt` (engines built from those graphs;
GPU only). Text encoding and VAE decoding stay in PyTorch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from layert2v.compose import LayeredVideo
from layert2v.config import TORCH_PRECISIONS, ModelConfig, Request, RequestLimits
from layert2v.editing import Given
from layert2v.export.runtime import Backend, GraphDenoiser, make_denoiser
from layert2v.hostcache import warn_if_bf16_is_emulated
from layert2v.models.checkpoint import (
    KNOWN_SEGMENTS,
    known_segments,
    load_dit,
    load_vae,
    save_pipeline,
    text_encoder_path,
)
from layert2v.models.colour_words import ColourWords, folder_colour_words
from layert2v.models.dit import LayerDiT
from layert2v.models.layout import ALPHA, Layout, latent_shape
from layert2v.models.shape_words import without_shape_words
from layert2v.models.text import TextEncoder, load_text_encoder, null_prompts
from layert2v.models.vae import LayerVAE
from layert2v.sampling import (
    composite_guided,
    guided,
    replace_known,
    reporting,
    sample,
    with_clean_known,
    with_known,
)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class PromptTruncated(UserWarning):
    """A prompt longer than the model's text length; only its first tokens condition the sample."""


def slot_names(count: int) -> list[str]:
    """The request field each of `count` prompt slots comes from, for messages."""
    return ["prompt", "background_prompt"] + [f"foreground_prompts[{i}]" for i in range(count - 2)]


class RequestError(ValueError):
    """A request field that breaks a rule; `field` names it as the request does (`foreground_prompts[1]`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise RequestError(field, message)


def check_request(cfg: ModelConfig, request: Request, limits: RequestLimits) -> Layout:
    """Every field of `request` against the model's sizes (`cfg`, read from config.json alone) and `limits`;
    `RequestError` naming the field and the rule. Returns the request's layout."""
    r = request
    _require(
        isinstance(r.foreground_prompts, list), "foreground_prompts", "foreground_prompts must be a list of strings"
    )
    for name, text in zip(slot_names(len(r.prompts())), r.prompts(), strict=True):
        _require(isinstance(text, str) and bool(text.strip()), name, f"{name} must be a non-empty string")
    count = len(r.foreground_prompts)
    _require(
        1 <= count <= cfg.max_fg,
        "foreground_prompts",
        f"1..{cfg.max_fg} foreground prompts allowed (the model's K_max), got {count}",
    )
    _require(r.frames >= 1 and (r.frames - 1) % 4 == 0, "frames", f"frames must be 4k+1, got {r.frames}")
    _require(r.frames <= limits.max_frames, "frames", f"frames must be <= {limits.max_frames}, got {r.frames}")
    for name, side, patch in (("height", r.height, cfg.patch[1]), ("width", r.width, cfg.patch[2])):
        multiple = cfg.vae_cell * patch  # pixels per DiT token side
        _require(
            side >= multiple and side % multiple == 0, name, f"{name} must be a multiple of {multiple}, got {side}"
        )
        _require(side <= limits.max_side, name, f"{name} must be <= {limits.max_side}, got {side}")
    _require(1 <= r.steps <= limits.max_steps, "steps", f"steps must be in 1..{limits.max_steps}, got {r.steps}")
    _require(r.guidance >= 1.0, "guidance", f"guidance must be >= 1, got {r.guidance}")
    _require(
        0.0 <= r.guidance_sigma < 1.0, "guidance_sigma", f"guidance_sigma must be in [0, 1), got {r.guidance_sigma}"
    )
    _require(
        1 <= r.guidance_every <= limits.max_steps,
        "guidance_every",
        f"guidance_every must be in 1..{limits.max_steps}, got {r.guidance_every}",
    )
    _require(
        0.0 <= r.shape_guidance <= 50.0,
        "shape_guidance",
        f"shape_guidance must be in [0, 50], got {r.shape_guidance}",
    )
    _require(
        0.0 <= r.composite_guidance <= 1.0,
        "composite_guidance",
        f"composite_guidance must be in [0, 1], got {r.composite_guidance}",
    )
    _require(
        0.0 < r.composite_sigma <= 1.0,
        "composite_sigma",
        f"composite_sigma must be in (0, 1], got {r.composite_sigma}",
    )
    return Layout(count)


class LayerT2VPipeline:
    """Holds the DiT, the VAE and the frozen text encoder; `generate` makes one layered clip.

    `denoiser` answers `forward_layout` for the sampler: the DiT itself for `torch`, an `OrtDenoiser` or a
    `TrtDenoiser` over an export folder for the other backends (`from_folder` builds them), except at the Ks in
    `eager_ks`, which the DiT answers (where the backend probe timed eager faster at that K: `export.probe`).
    """

    def __init__(
        self,
        dit: LayerDiT,
        vae: LayerVAE,
        text_encoder: TextEncoder,
        backend: Backend = "torch",
        denoiser: GraphDenoiser | None = None,
        limits: RequestLimits | None = None,
        known_segments: str = "replace",
        precision: str | None = None,
        eager_ks: frozenset[int] = frozenset(),
        colour_words: ColourWords | None = None,
    ) -> None:
        in_torch = backend in ("torch", "compile")
        _check(
            in_torch == (denoiser is None), f"backend {backend!r} needs {'no' if in_torch else 'an exported'} denoiser"
        )
        _check(not (in_torch and eager_ks), f"eager_ks name Ks the DiT answers instead of graphs; {backend} has none")
        _check(
            precision in (None, *TORCH_PRECISIONS) or not in_torch,
            f"the {backend} backend runs in {' or '.join(TORCH_PRECISIONS)}, not {precision!r}",
        )
        _check(
            text_encoder.dim == dit.cfg.text_dim
            and text_encoder.max_tokens == dit.cfg.text_len
            and text_encoder.pooled == dit.cfg.text_pooled,
            f"text encoder ({text_encoder.dim}-dim, {text_encoder.max_tokens} tokens, pooled {text_encoder.pooled}) "
            f"does not match the model ({dit.cfg.text_dim}-dim, {dit.cfg.text_len} tokens, pooled {dit.cfg.text_pooled})",
        )
        self.dit, self.vae, self.text_encoder, self.backend = dit.eval(), vae.for_inference(), text_encoder, backend
        if backend == "compile":
            self.dit.compile(dynamic=False)  # in place: `forward_layout`'s call of the module runs compiled
        self.denoiser, self.eager_ks = denoiser, frozenset(eager_ks)
        self.bf16 = in_torch and precision == "bf16"
        if self.bf16 and next(self.dit.parameters()).device.type == "cpu":
            warn_if_bf16_is_emulated("precision")
        self.cfg = dit.cfg
        self.limits = limits or RequestLimits()
        self.known_segments = known_segments
        self.colour_words = colour_words

    # ------------------------------------------------------------ files

    def save(self, folder: Path | str) -> Path:
        """Write the model folder (`models.checkpoint`): config.json, dit.safetensors and vae.safetensors."""
        known = self.colour_words.known if self.colour_words else None
        return save_pipeline(
            Path(folder), self.dit, self.vae, self.text_encoder.path, self.known_segments, colour_words=known
        )

    @classmethod
    def from_folder(
        cls,
        folder: Path | str,
        backend: Backend = "torch",
        text_encoder: Path | None = None,
        onnx: Path | str | None = None,
        precision: str | None = None,
        eager_ks: frozenset[int] = frozenset(),
    ) -> LayerT2VPipeline:
        """Load a model folder written by `save`; a missing file is an error naming it. The `onnxruntime` and
        `tensorrt` backends read the export folder `onnx` (default `<folder>/onnx`) in `precision` (default
        fp32 for onnxruntime, fp16 for TensorRT), but the Ks in `eager_ks` on the DiT in fp32; `torch` and `compile`
        run the DiT in fp32 or, with `bf16`, under bf16 autocast (faster where the CPU has bf16 kernels, not exact:
        docs/serving.md)."""
        folder = Path(folder)
        dit, vae = load_dit(folder), load_vae(folder)
        encoder_path = text_encoder if text_encoder is not None else text_encoder_path(folder)
        graphs = Path(onnx) if onnx is not None else folder / "onnx"
        in_torch = backend in ("torch", "compile")
        return cls(
            dit,
            vae,
            load_text_encoder(encoder_path, dit.cfg.text_len, dit.cfg.text_pooled),
            backend,
            make_denoiser(backend, graphs, dit.cfg, None if in_torch else precision),
            known_segments=known_segments(folder),
            precision=precision if in_torch else None,
            eager_ks=eager_ks,
            colour_words=folder_colour_words(folder),
        )

    # ------------------------------------------------------------ generation

    def warn_long_prompts(self, prompts: list[str]) -> None:
        """A prompt past the model's text length is cut to it: say so, with the counts, instead of silently."""
        for name, text, tokens in zip(
            slot_names(len(prompts)), prompts, self.text_encoder.count_tokens(prompts), strict=True
        ):
            if tokens > self.cfg.text_len:
                warnings.warn(
                    f"{name} has {tokens} tokens; the model reads the first {self.cfg.text_len}: {text[:60]!r}...",
                    PromptTruncated,
                    stacklevel=3,
                )

    def read_prompts(self, prompts: list[str]) -> list[str]:
        """The prompts as the model reads them: colour words its training captions never used replaced by the
        nearest ones they did (`models.colour_words`; as written for folders that record none)."""
        return [self.colour_words.read(p) for p in prompts] if self.colour_words else list(prompts)

    def read_as(self, prompts: list[str]) -> dict[str, list[str]]:
        """`{"read_as": ...}` for an output's manifest where `read_prompts` changed any prompt, else nothing."""
        read = self.read_prompts(prompts)
        return {"read_as": read} if read != list(prompts) else {}

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states `[1, P * M, D_text]` and masks `[1, P, M]` of the prompts, in slot order."""
        states, mask = self.text_encoder.encode(prompts)
        return torch.from_numpy(states).reshape(1, -1, states.shape[-1]), torch.from_numpy(mask)[None]

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        background_prompt: str,
        foreground_prompts: list[str],
        *,
        frames: int = Request.frames,
        height: int = Request.height,
        width: int = Request.width,
        steps: int = Request.steps,
        guidance: float = Request.guidance,
        guidance_sigma: float = Request.guidance_sigma,
        guidance_every: int = Request.guidance_every,
        shape_guidance: float = Request.shape_guidance,
        seed: int = Request.seed,
        shift: float = 3.0,
        sampler: Literal["euler", "unipc"] = "unipc",
        negative_prompt: str | None = None,
        composite_guidance: float = Request.composite_guidance,
        composite_sigma: float = Request.composite_sigma,
        fps: int = 8,
        given: Given | None = None,
        conditioning: Literal["replace", "clean"] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> LayeredVideo:
        """One layered clip; the same arguments and seed give the same output.

        `given` holds layers the user keeps (`editing.py`): they are held on the sampling trajectory while the
        others are sampled, and come back as given: by `conditioning` "clean" (the model was trained on clean given
        segments, `sampling.with_clean_known`) or "replace" (sampling-only, `sampling.with_known`); None takes the
        model folder's `known_segments`. `on_step(i, steps)` is called after each sampler step.

        `negative_prompt` None guides against the null prompt: an encoded negative prompt, which training never
        showed as the unconditional branch, cost 1.1 dB coherence on 48 validation prompts (docs/results.md).
        Guidance acts on the steps above noise level `guidance_sigma` (0: every step; `sampling.guided`), its
        unconditional branch on every `guidance_every`-th of them (the last difference reused between).
        `shape_guidance` adds, on the steps that run both branches, that many times the difference between the
        conditional velocity and the velocity of the same prompts with their shape words made neutral
        (`shape_words`): at the CPU budget the DiT reads a shape word weakly and plain guidance amplifies the colour
        most (docs/results.md, "Shape guidance"); one more batch of 1 on those steps, none where no prompt names a
        shape.
        `composite_guidance` in [0, 1] pulls each step's full-video estimate towards the composite of the
        layers' estimates (`sampling.composite_guided`, composited in pixels by `LayerVAE.composite`; 0: off): the
        full video loses the patches its layers do not have, and the layers add up to it (coherence 13 dB off,
        24 dB composited in latent space at 0.5, 30 dB in pixels at 0.75: docs/results.md), on the steps at noise
        level `composite_sigma` or below (1: every step; 0.5 makes a K = 3 sample about a third faster for half a dB).
        """
        request = Request(
            prompt, background_prompt, foreground_prompts, frames, height, width, steps, guidance, guidance_sigma,
            composite_guidance, composite_sigma, seed, guidance_every, shape_guidance,
        )  # fmt: skip
        layout = check_request(self.cfg, request, self.limits)
        graphs = None if layout.num_fg in self.eager_ks else self.denoiser
        if graphs is not None:
            graphs.check(frames, height, width, layout.num_fg)
        prompts = self.read_prompts(request.prompts())
        self.warn_long_prompts(prompts)
        cond = self.encode_prompts(prompts)
        if negative_prompt is None:
            uncond = null_prompts(*cond)
        else:
            uncond = self.encode_prompts(self.read_prompts([negative_prompt]) * layout.num_prompts)

        shapeless = [without_shape_words(p) for p in prompts]
        contrasted = shape_guidance > 0 and guidance != 1.0 and shapeless != prompts  # guidance 1 runs no branch pair
        contrast = self.encode_prompts(shapeless) if contrasted else None

        def denoised(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                return (graphs or self.dit).forward_layout(x, t * 1000, text, mask, layout).float()

        def velocity(x: torch.Tensor, t: torch.Tensor, doubled: bool) -> torch.Tensor:
            if not doubled:
                return denoised(x, t, *cond)
            both = denoised(x, t, torch.cat([cond[0], uncond[0]]), torch.cat([cond[1], uncond[1]]))
            if contrast is None:
                return both
            v_cond, v_uncond = both.chunk(2)
            half = len(x) // 2  # the conditional branch's `x` and `t` come first
            shaped = v_cond + shape_guidance / guidance * (v_cond - denoised(x[:half], t[:half], *contrast))
            return torch.cat([shaped, v_uncond])  # `guided` scales the conditional branch's lead by `guidance`

        shape = (1, self.cfg.latent_channels, *latent_shape(frames, height, width, self.cfg.vae_cell))
        generator = torch.Generator().manual_seed(seed)
        noise = layout.pack([torch.randn(shape, generator=generator) for _ in range(layout.num_segments)])
        given = (given or Given()).resolved(frames, height, width, layout.num_fg)
        # a given full video's velocity is its own either way (`with_known`, `with_clean_known`): the pull would be
        # dropped, and its decodes and encode are a third of a step (docs/results.md)
        pull = composite_guidance if given.full is None else 0.0
        denoise = composite_guided(
            guided(velocity, guidance, guidance_sigma, guidance_every),
            layout,
            pull,
            self.vae.composite,
            composite_sigma,
        )
        if on_step is not None:
            denoise = reporting(denoise, steps, on_step)
        known = given.known_latents(self.vae, layout)
        mode = conditioning or self.known_segments
        _check(mode in KNOWN_SEGMENTS, f"conditioning must be one of {KNOWN_SEGMENTS}, got {mode!r}")
        if mode == "clean":
            denoise = with_clean_known(denoise, layout, known)
        else:
            denoise = with_known(denoise, layout, known, noise)
        latents = replace_known(sample(denoise, noise, steps, shift, sampler), layout, known)
        return given.apply(self._decode(layout.split(latents), layout, fps))

    def decompose(
        self, full: np.ndarray, prompt: str, background_prompt: str, foreground_prompts: list[str], **options
    ) -> LayeredVideo:
        """Background and foreground layers of a plain video `full` `[T, H, W, 3]` (its segment given)."""
        frames, height, width = full.shape[:3]
        return self.generate(
            prompt, background_prompt, foreground_prompts, frames=frames, height=height, width=width,
            given=Given(full=full), **options,
        )  # fmt: skip

    def regenerate(self, video: LayeredVideo, layer: str, prompts: list[str], **options) -> LayeredVideo:
        """`video` with one layer (`background` or `foreground_<k>`, 1-based) sampled anew from `prompts`
        (overall, background, foregrounds), every other layer kept as it is; the full video is sampled too."""
        count = len(video.foregrounds)
        names = ["background"] + [f"foreground_{k}" for k in range(1, count + 1)]
        if layer not in names:
            raise ValueError(f"layer {layer!r} does not exist; this video has {', '.join(names)}")
        keep = {k: (f, a) for k, (f, a) in enumerate(zip(video.foregrounds, video.alphas, strict=True))}
        keep.pop(names.index(layer) - 1, None)
        background = None if layer == "background" else video.background
        frames, height, width = video.full.shape[:3]
        return self.generate(
            prompts[0], prompts[1], prompts[2:], frames=frames, height=height, width=width,
            given=Given(background=background, foregrounds=keep), **options,
        )  # fmt: skip

    def _decode(self, segments: list[torch.Tensor], layout: Layout, fps: int) -> LayeredVideo:
        decoded = []
        for z, kind in zip(segments, layout.segment_types(), strict=True):
            video = self.vae.decode_alpha(z) if kind == ALPHA else self.vae.decode_rgb(z)
            decoded.append(video[0].permute(1, 2, 3, 0).numpy())  # [T, H, W, C]
        full, background, foregrounds, alphas = layout.group(decoded)
        alphas = [a[..., 0] for a in alphas]
        foregrounds = [np.minimum(f, a[..., None]) for f, a in zip(foregrounds, alphas, strict=True)]  # premultiplied
        return LayeredVideo(full=full, background=background, foregrounds=foregrounds, alphas=alphas, fps=fps)
