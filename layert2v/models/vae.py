"""The video VAE with LayerT2V's alpha path.

Two autoencoders share one latent contract (4x temporal, `vae_cell` x spatial compression, 16 channels, causal):
- `wan`: diffusers' `AutoencoderKLWan`, loaded from a local diffusers-format Wan2.1 folder for `paper`
  (never downloaded) or built fresh at any width;
- `patch`: `PatchAutoencoder`, a space-time-to-depth autoencoder for the CPU presets (`tiny`, `small`), which
  train it from scratch in stage 0. Measured on the default data with 2 cores, it reaches ~19 dB RGB PSNR in
  150 s where a fresh Wan VAE of similar size reaches ~13 dB (below the 15 dB of predicting each clip's mean
  colour): Wan's full-resolution 3D convolutions cost ~20x more per step. Its cells are 8 x 8 or 4 x 4 pixels
  (`vae_cell`); an optional full-resolution head (`vae_refine`) smooths the seams between cells.
Latents are normalised per channel with a mean/std computed from data (`fit_latent_stats`) and stored as
buffers with the weights.

With `alpha_codec: vae`, alpha goes through the same encoder: `a in [0, 1] -> 2a - 1 -> 3 channels`; decoding
averages the three channels, maps `(x + 1) / 2` and clamps. Stage 1 adapts the alpha path only: a zero-gated
residual adapter on the alpha latent (so it starts as the identity) and LoRA (peft) on the decoder's 2D and
pointwise convolutions, active only when decoding alpha; RGB decoding runs with the adapters off.
With `alpha_codec: linear`, mattes skip the autoencoder: `LinearAlphaCodec` maps each latent cell's pixels to its
latent channels by one matrix (stage 1 fits it).

Shapes: B batch, F frames (4k+1), H, W pixels; latents `[B, 16, (F - 1) / 4 + 1, H / cell, W / cell]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from layert2v.compose import over
from layert2v.config import ModelConfig


class Posterior:
    """The encoder's diagonal Gaussian over latents, from `[B, 2C, ...]` (means, then log-variances), read as
    diffusers' `DiagonalGaussianDistribution` is (`sample`, `mode`, `kl`, the same arithmetic) so that the patch and
    Wan autoencoders answer alike. Defined here, not imported: diffusers' module loads every diffusers autoencoder,
    4.6 of the 10 s a `layert2v generate` took (docs/results.md); `wan` imports diffusers when it is built."""

    def __init__(self, parameters: torch.Tensor) -> None:
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to the unit Gaussian, summed over dims 1-3 as diffusers sums it."""
        return 0.5 * torch.sum(torch.pow(self.mean, 2) + torch.exp(self.logvar) - 1.0 - self.logvar, dim=[1, 2, 3])


@dataclass
class Encoded:
    """`encode`'s answer, named as diffusers' `AutoencoderKLOutput`."""

    latent_dist: Posterior


@dataclass
class Decoded:
    """`decode`'s answer, named as diffusers' `DecoderOutput`."""

    sample: torch.Tensor


class AlphaAdapter(nn.Module):
    """`z + gate * conv(silu(conv(z)))` with `gate = 0` at init: the identity until stage 1 trains it."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, channels, 1))
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.gate * self.net(z)


class LinearAlphaCodec(nn.Module):
    """Mattes <-> latents by one linear map per latent cell, on the autoencoder's latent grid.

    A cell's `4 x cell x cell` alpha pixels (the four frames of its latent frame; frame 0, alone in latent frame 0,
    counted four times) are centred and projected on `channels` principal components, all scaled by one factor
    that gives the latents unit variance on average; decoding is one matrix back. One factor, not one per
    component: whitened, the fine components weigh as much as where the matte lies and how large it is, and a
    DiT's samples of them were speckled cells (docs/results.md). Why not the autoencoder: a DiT's sample is an average over what it is unsure of,
    and an average of the autoencoder's nonlinear edge codes decodes to a patchwork of cells, where an average of
    linear codes decodes to a softer matte of the same outline. Stage 1 fits the projection (`fit`) and then
    trains the decoding matrix alone, so the latents the DiT learns stay the fitted ones.
    """

    def __init__(self, channels: int, cell: int) -> None:
        super().__init__()
        self.cell, pixels = cell, 4 * cell * cell
        self.register_buffer("mean", torch.zeros(pixels))
        self.register_buffer("encoder", torch.zeros(channels, pixels))
        self.decoder = nn.Parameter(torch.zeros(channels, pixels))

    def cells(self, alpha: torch.Tensor) -> torch.Tensor:
        """Alpha `[B, 1, F, H, W]` -> `[B, T', h, w, 4 cell^2]`: each latent cell's pixels in one row."""
        frames = torch.cat([alpha[:, 0, :1].expand(-1, 4, -1, -1), alpha[:, 0, 1:]], dim=1)
        b, f, h, w, c = *frames.shape[:2], frames.shape[2] // self.cell, frames.shape[3] // self.cell, self.cell
        grouped = frames.reshape(b, f // 4, 4, h, c, w, c).permute(0, 1, 3, 5, 2, 4, 6)
        return grouped.reshape(b, f // 4, h, w, 4 * c * c)

    def pixels(self, rows: torch.Tensor) -> torch.Tensor:
        """Inverse of `cells`: `[B, T', h, w, 4 cell^2]` -> alpha `[B, 1, F, H, W]` (frame 0: its four copies' mean)."""
        b, t, h, w, _ = rows.shape
        c = self.cell
        frames = rows.reshape(b, t, h, w, 4, c, c).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, 4 * t, h * c, w * c)
        return torch.cat([frames[:, :4].mean(1, keepdim=True), frames[:, 4:]], dim=1)[:, None]

    def encode(self, alpha: torch.Tensor) -> torch.Tensor:
        """Alpha `[B, 1, F, H, W]` in [0, 1] -> latents `[B, C, T', h, w]` (unit mean variance on the fitted data)."""
        return ((self.cells(alpha) - self.mean) @ self.encoder.T).permute(0, 4, 1, 2, 3)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> alpha `[B, 1, F, H, W]`, unclamped."""
        return self.pixels(z.permute(0, 2, 3, 4, 1) @ self.decoder + self.mean)

    @torch.no_grad()
    def fit(self, alpha: torch.Tensor) -> float:
        """Principal components of the cells of mattes `[N, 1, F, H, W]`; returns the share of variance kept."""
        rows = self.cells(alpha).flatten(0, 3).double()
        mean = rows.mean(0)
        variance, basis = torch.linalg.eigh(torch.cov((rows - mean).T))  # ascending
        channels = self.encoder.shape[0]
        kept, basis = variance.flip(0)[:channels].clamp_min(1e-12), basis.flip(1)[:, :channels].T
        scale = kept.mean().sqrt()
        self.mean.copy_(mean)
        self.encoder.copy_(basis / scale)
        self.decoder.copy_(basis * scale)
        return float(kept.sum() / variance.clamp_min(0).sum())


class _Residual(nn.Module):
    """Pre-norm residual block of two 3x3 convolutions at latent resolution."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class _Refine(nn.Module):
    """`x + conv(silu(conv(x)))` per frame at full resolution, zero at init: 3x3 kernels that cross cell borders.

    The frames go in channels-last: oneDNN's kernels for these thin (3-channel) convolutions ran forward and backward
    1.4-1.6x faster that way, fp32 and bf16 (1.2x with AVX2 kernels alone), and the default chain's stage-0 step went
    from 0.091 to 0.061 s on 2 cores (`benchmarks/bench_vae.py`, docs/results.md). Only the memory layout differs; the
    values are the same."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        frames = video.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return video + self.net(frames).unflatten(0, (video.shape[0], -1)).transpose(1, 2)


class _Context(nn.Sequential):
    """Two latent frames' channels (current, previous) -> a correction of the current one's folded pixels, zero
    at init: a 1x1 convolution in, one residual block, a 1x1 convolution out."""

    def __init__(self, z_dim: int, width: int, folded: int) -> None:
        super().__init__(
            nn.Conv2d(2 * z_dim, width, 1), _Residual(width), nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, folded, 1)
        )  # fmt: skip
        nn.init.zeros_(self[-1].weight)
        nn.init.zeros_(self[-1].bias)


class PatchAutoencoder(nn.Module):
    """A causal video autoencoder that folds each 4-frame x `cell` x `cell` pixel block into channels.

    Frame 0 is repeated three times in front so that latent frame 0 covers frame 0 alone and latent frame j
    frames 4j-3 .. 4j, as in Wan. Every latent frame is then coded independently by 2D residual blocks at
    H/cell x W/cell (so the encoder is causal), to a diagonal Gaussian like diffusers' VAEs (`encode(x).latent_dist`,
    `decode(z).sample` clamped to [-1, 1], `decode_unclamped` for losses). With `refine > 0` a full-resolution
    head follows the decoder (it sees one frame at a time, so decoding stays causal). With `context > 0` a side
    branch of that width reads each latent frame beside the one before it (latent frame 0 beside itself) and adds a
    correction to the decoder's folded output, zero at init: coded alone, a latent frame's four frames decode as
    about one picture (the layers hold still for four frames and jump at the next latent frame, `metrics.stutter`);
    with the frame before, the branch can place each frame between the two while the decoder keeps its picture
    (feeding the context into the decoder itself cost that picture: docs/results.md). Still causal.
    """

    time_block = 4

    def __init__(self, z_dim: int, width: int, blocks: int, cell: int = 8, refine: int = 0, context: int = 0) -> None:
        super().__init__()
        self.space_block = cell
        folded = 3 * self.time_block * self.space_block**2
        self.encoder = nn.Sequential(
            nn.Conv2d(folded, width, 1), *[_Residual(width) for _ in range(blocks)],
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, 2 * z_dim, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(z_dim, width, 1), *[_Residual(width) for _ in range(blocks)],
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, folded, 1),
        )  # fmt: skip
        self.refine = _Refine(refine) if refine else nn.Identity()
        self.context = _Context(z_dim, context, folded) if context else None

    def lay_out_latent_convolutions(self, memory_format: torch.memory_format = torch.channels_last) -> None:
        """The latent-resolution convolutions' weights in `memory_format`. Channels-last, which oneDNN then keeps for
        their outputs:
        a K = 3 sample's decode 1.07-1.27x on the AVX2 host, where stage 0's training step did not gain (0.170-0.174 s
        against 0.163-0.168 s over 600 steps: docs/results.md), so only `LayerVAE.for_inference` asks for it. Only the
        memory layout differs; the weights are saved contiguous."""
        for convolutions in (self.encoder, self.decoder, self.context):
            if convolutions is not None:
                convolutions.to(memory_format=memory_format)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 3, F, H, W]` -> `[B * T', 3 * 4 * cell * cell, H / cell, W / cell]`."""
        b, c, _, h, w = x.shape
        t, s = self.time_block, self.space_block
        x = torch.cat([x[:, :, :1].expand(-1, -1, t - 1, -1, -1), x], dim=2)
        x = x.reshape(b, c, -1, t, h // s, s, w // s, s).permute(0, 2, 1, 3, 5, 7, 4, 6)
        return x.reshape(-1, c * t * s * s, h // s, w // s)

    def _unfold(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverse of `_fold`, dropping the three repeats of frame 0."""
        t, s = self.time_block, self.space_block
        _, _, h, w = y.shape
        y = y.reshape(batch, -1, 3, t, s, s, h, w).permute(0, 2, 1, 3, 6, 4, 7, 5)
        return y.reshape(batch, 3, -1, h * s, w * s)[:, :, t - 1 :]

    def encode(self, x: torch.Tensor) -> Encoded:
        if x.shape[2] % self.time_block != 1 or x.shape[3] % self.space_block or x.shape[4] % self.space_block:
            raise ValueError(
                f"video of shape {tuple(x.shape)}: frames must be 4k+1 and height, width multiples of {self.space_block}"
            )
        h = self.encoder(self._fold(x))
        h = h.reshape(x.shape[0], -1, *h.shape[1:]).transpose(1, 2)
        return Encoded(latent_dist=Posterior(h))

    def decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        frames = z.transpose(1, 2).flatten(0, 1)
        folded = self.decoder(frames)
        if self.context is not None:
            previous = torch.cat([z[:, :, :1], z[:, :, :-1]], dim=2).transpose(1, 2).flatten(0, 1)
            folded = folded + self.context(torch.cat([frames, previous], dim=1))
        return self.refine(self._unfold(folded, z.shape[0]))

    def decode(self, z: torch.Tensor) -> Decoded:
        return Decoded(sample=self.decode_unclamped(z).clamp(-1, 1))


def build_autoencoder(cfg: ModelConfig, pretrained: Path | None = None) -> nn.Module:
    """The preset's autoencoder: a fresh `patch` or `wan` one, or a local diffusers-format Wan checkpoint."""
    if cfg.vae_arch == "patch":
        if pretrained is not None:
            raise ValueError(f"preset '{cfg.name}' uses the patch VAE, which has no pretrained checkpoint")
        return PatchAutoencoder(
            cfg.latent_channels,
            cfg.vae_width,
            cfg.vae_num_res_blocks,
            cell=cfg.vae_cell,
            refine=cfg.vae_refine,
            context=cfg.vae_context,
        )
    from diffusers import AutoencoderKLWan

    if pretrained is not None:
        if not (Path(pretrained) / "config.json").is_file():
            raise FileNotFoundError(
                f"Wan VAE checkpoint folder {pretrained} has no config.json (no download is attempted)"
            )
        return AutoencoderKLWan.from_pretrained(pretrained, local_files_only=True)
    return AutoencoderKLWan(
        base_dim=cfg.vae_base_dim,
        z_dim=cfg.latent_channels,
        dim_mult=list(cfg.vae_dim_mult),
        num_res_blocks=cfg.vae_num_res_blocks,
        temperal_downsample=[False, True, True],
    )


class LayerVAE(nn.Module):
    """Encode / decode RGB and alpha videos to normalised latents."""

    def __init__(self, cfg: ModelConfig, pretrained: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = build_autoencoder(cfg, pretrained)
        self.alpha_adapter = AlphaAdapter(cfg.latent_channels)
        self.alpha_codec = LinearAlphaCodec(cfg.latent_channels, cfg.vae_cell) if cfg.alpha_codec == "linear" else None
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))
        self.lora_rank = 0  # of the decoder's alpha LoRA; 0: none

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def _denorm(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mode()

    def encode_rgb(self, video: torch.Tensor) -> torch.Tensor:
        """RGB `[B, 3, F, H, W]` in [0, 1] -> normalised latents."""
        return self._norm(self._encode(video * 2 - 1))

    def encode_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """Alpha `[B, 1, F, H, W]` in [0, 1] -> normalised latents (through the alpha adapter or the linear codec)."""
        if self.alpha_codec is not None:
            return self.alpha_codec.encode(alpha)
        return self._norm(self.alpha_adapter(self._encode((alpha * 2 - 1).expand(-1, 3, -1, -1, -1))))

    def _decode(self, z: torch.Tensor, clamp: bool) -> torch.Tensor:
        z = self._denorm(z)
        return self.vae.decode(z).sample if clamp else self.decode_unclamped(z)

    def decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents -> the decoder's output without its final clamp to [-1, 1].

        Training losses need this: a clamped pixel gets no gradient, so one that starts beyond the wrong bound
        (alpha -3 where the matte is 1, black where the frame is white) never moves, and a fresh VAE has many.
        """
        if isinstance(self.vae, PatchAutoencoder):
            return self.vae.decode_unclamped(z)
        return _wan_decode_unclamped(self.vae, z)

    def for_inference(self) -> LayerVAE:
        """This VAE in eval mode, laid out for decoding: the patch autoencoder's latent convolutions channels-last."""
        if isinstance(self.vae, PatchAutoencoder):
            self.vae.lay_out_latent_convolutions()
        return self.eval()

    def posterior(self, x: torch.Tensor) -> Posterior:
        """The encoder's latent distribution of `x` in [-1, 1] (unnormalised latents)."""
        return self.vae.encode(x).latent_dist

    def decode_rgb(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised latents -> RGB `[B, 3, F, H, W]` in [0, 1] (decoder LoRA off); `clamp=False` for losses."""
        if self.lora_rank:
            self.set_lora(False)
        rgb = (self._decode(z, clamp) + 1) / 2
        return rgb.clamp(0, 1) if clamp else rgb

    def decode_alpha(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised latents -> alpha `[B, 1, F, H, W]` in [0, 1] (decoder LoRA on; channels averaged);
        `clamp=False` for losses (see `decode_unclamped`)."""
        if self.alpha_codec is not None:
            alpha = self.alpha_codec.decode(z)
            return alpha.clamp(0, 1) if clamp else alpha
        if self.lora_rank:
            self.set_lora(True)
        try:
            alpha = (self._decode(z, clamp).mean(1, keepdim=True) + 1) / 2
            return alpha.clamp(0, 1) if clamp else alpha
        finally:
            if self.lora_rank:
                self.set_lora(False)

    def composite(
        self, foregrounds: list[torch.Tensor], alphas: list[torch.Tensor], background: torch.Tensor
    ) -> torch.Tensor:
        """The latent of the full video that decoded layers composite to: each layer decoded as the pipeline
        decodes it (foreground clipped to its alpha), `over` in pixels, encoded again. Latents `[B, C, T, h, w]`.

        Why in pixels: the latent-space composite (`diffusion.latent_composite`) treats the nonlinear VAE as linear
        about the clear latent, and lands 5 dB off the true layers' own full video; this one follows the decoder.
        """
        channel_last = lambda x: x.movedim(1, -1)  # noqa: E731
        batch = len(background)
        *colours, back = self.decode_rgb(torch.cat([*foregrounds, background])).split(batch)  # one decoder call
        mattes = self.decode_alpha(torch.cat(alphas)).split(batch) if alphas else []
        layers = [channel_last(torch.minimum(f, a)) for f, a in zip(colours, mattes, strict=True)]
        pixels = over(layers, [channel_last(a)[..., 0] for a in mattes], channel_last(back))
        return self.encode_rgb(pixels.movedim(-1, 1))

    def add_decoder_lora(self, rank: int = 8) -> None:
        """Inject LoRA (peft) into the decoder's non-causal convolutions; B matrices start at zero."""
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=self._lora_targets(), init_lora_weights=True)
        inject_adapter_in_model(config, self.vae.decoder, adapter_name="alpha")
        self.lora_rank = rank
        self.set_lora(False)

    def _lora_targets(self) -> str:
        """The decoder's plain 2D convs (all of the patch VAE's; Wan's attention qkv/proj and upsampler convs), as
        a full-match pattern: peft matches a list by name suffix, and `0` would also pick `1.net.0`, a norm.
        Wan's causal 3D convs are a subclass that pads in its own forward, which a LoRA branch would not reproduce.
        """
        names = [name for name, module in self.vae.decoder.named_modules() if type(module) is nn.Conv2d]
        return "|".join(re.escape(name) for name in names)

    def set_lora(self, enabled: bool) -> None:
        """Switch the decoder LoRA on or off, leaving whether its weights train to the stage.

        peft's `enable_adapters` also sets the adapter weights' `requires_grad` (off when disabling). Stage 1
        decodes with the LoRA on, `decode_alpha` switches it off again before `backward`, and autograd skips a
        leaf that no longer requires grad: the LoRA never trained. So the flags are put back after the switch.
        """
        from peft.tuners.lora import LoraLayer

        for module in self.vae.decoder.modules():
            if isinstance(module, LoraLayer):
                lora = [p for name, p in module.named_parameters() if "lora_" in name]
                trainable = [p.requires_grad for p in lora]
                module.enable_adapters(enabled)
                for param, flag in zip(lora, trainable, strict=True):
                    param.requires_grad_(flag)

    @torch.no_grad()
    def fit_latent_stats(self, videos: list[torch.Tensor]) -> None:
        """Set the per-channel latent mean/std from RGB clips `[B, 3, F, H, W]` (unnormalised latents)."""
        latents = torch.cat([self._encode(v * 2 - 1).transpose(0, 1).flatten(1) for v in videos], dim=1)
        self.latent_mean.copy_(latents.mean(1))
        self.latent_std.copy_(latents.std(1).clamp_min(1e-4))


def _wan_decode_unclamped(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Mirrors `AutoencoderKLWan._decode` without the clamp: latent frame by frame through the causal cache."""
    if vae.config.patch_size is not None:
        raise ValueError("decode_unclamped supports Wan 2.1 VAEs (no patch_size); this one has a patch size")
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        step = x[:, :, i : i + 1]
        frames.append(vae.decoder(step, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def alpha_to_latent_grid(alpha: torch.Tensor, cell: int) -> torch.Tensor:
    """Alpha `[B, 1, F, H, W]` -> `[B, 1, (F - 1) / 4 + 1, H / cell, W / cell]` on the VAE's causal latent grid.

    Latent frame 0 covers frame 0 and latent frame j frames 4j-3 .. 4j, so frame 0 stays alone and later frames
    are averaged in fours; space is averaged over cell x cell. This is the `alpha_down` of the consistency loss.
    """
    first, rest = alpha[:, :, :1], alpha[:, :, 1:]
    groups = rest.unflatten(2, (-1, 4)).mean(3) if rest.shape[2] else rest
    return torch.nn.functional.avg_pool3d(torch.cat([first, groups], dim=2), kernel_size=(1, cell, cell))
