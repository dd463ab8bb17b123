"""The Wan 2.1 causal 3D VAE with LayerT2V's alpha path.

The autoencoder is diffusers' `AutoencoderKLWan` (4x temporal, 8x spatial compression, 16 channels),
at small widths for the `tiny` / `small` presets or loaded from a local diffusers-format Wan2.1 folder
for `paper` (never downloaded). Latents are normalised per channel with a mean/std computed from data
(`fit_latent_stats`) and stored as buffers with the weights.

Alpha goes through the same encoder: `a in [0, 1] -> 2a - 1 -> 3 channels`; decoding averages the three
channels, maps `(x + 1) / 2` and clamps. Stage 1 adapts the alpha path only: a zero-gated residual
adapter on the alpha latent (so it starts as the identity) and LoRA (peft) on the decoder's 2D and
pointwise convolutions, active only when decoding alpha; RGB decoding runs with the adapters off.

Shapes: B batch, F frames (4k+1), H, W pixels; latents `[B, 16, (F - 1) / 4 + 1, H / 8, W / 8]`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from layert2v.config import ModelConfig


class AlphaAdapter(nn.Module):
    """`z + gate * conv(silu(conv(z)))` with `gate = 0` at init: the identity until stage 1 trains it."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, channels, 1))
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.gate * self.net(z)


def build_autoencoder(cfg: ModelConfig, pretrained: Path | None = None) -> nn.Module:
    """A fresh Wan VAE at the preset's widths, or a local diffusers-format checkpoint folder."""
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
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))
        self.has_lora = False

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
        """Alpha `[B, 1, F, H, W]` in [0, 1] -> normalised latents (through the alpha adapter)."""
        return self._norm(self.alpha_adapter(self._encode((alpha * 2 - 1).expand(-1, 3, -1, -1, -1))))

    def _decode(self, z: torch.Tensor, clamp: bool) -> torch.Tensor:
        z = self._denorm(z)
        return self.vae.decode(z).sample if clamp else self.decode_unclamped(z)

    def decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents -> the Wan decoder's output without its final clamp to [-1, 1].

        Training losses need this: a clamped pixel gets no gradient, so one that starts beyond the wrong bound
        (alpha -3 where the matte is 1, black where the frame is white) never moves, and a fresh VAE has many.
        Mirrors `AutoencoderKLWan._decode`: latent frame by frame through the decoder's causal cache.
        """
        vae = self.vae
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

    def decode_rgb(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised latents -> RGB `[B, 3, F, H, W]` in [0, 1] (decoder LoRA off); `clamp=False` for losses."""
        if self.has_lora:
            self.set_lora(False)
        rgb = (self._decode(z, clamp) + 1) / 2
        return rgb.clamp(0, 1) if clamp else rgb

    def decode_alpha(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised latents -> alpha `[B, 1, F, H, W]` in [0, 1] (decoder LoRA on; channels averaged);
        `clamp=False` for losses (see `decode_unclamped`)."""
        if self.has_lora:
            self.set_lora(True)
        try:
            alpha = (self._decode(z, clamp).mean(1, keepdim=True) + 1) / 2
            return alpha.clamp(0, 1) if clamp else alpha
        finally:
            if self.has_lora:
                self.set_lora(False)

    def add_decoder_lora(self, rank: int = 8) -> None:
        """Inject LoRA (peft) into the decoder's non-causal convolutions; B matrices start at zero."""
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=self._lora_targets(), init_lora_weights=True)
        inject_adapter_in_model(config, self.vae.decoder, adapter_name="alpha")
        self.has_lora = True
        self.set_lora(False)

    def _lora_targets(self) -> list[str]:
        """The decoder's plain 2D convs (attention qkv/proj, upsampler convs). Wan's causal 3D convs are a
        subclass that pads in its own forward, which a LoRA branch built from it would not reproduce."""
        return [name for name, module in self.vae.decoder.named_modules() if type(module) is nn.Conv2d]

    def set_lora(self, enabled: bool) -> None:
        from peft.tuners.lora import LoraLayer

        for module in self.vae.decoder.modules():
            if isinstance(module, LoraLayer):
                module.enable_adapters(enabled)

    @torch.no_grad()
    def fit_latent_stats(self, videos: list[torch.Tensor]) -> None:
        """Set the per-channel latent mean/std from RGB clips `[B, 3, F, H, W]` (unnormalised latents)."""
        latents = torch.cat([self._encode(v * 2 - 1).transpose(0, 1).flatten(1) for v in videos], dim=1)
        self.latent_mean.copy_(latents.mean(1))
        self.latent_std.copy_(latents.std(1).clamp_min(1e-4))


def alpha_to_latent_grid(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha `[B, 1, F, H, W]` -> `[B, 1, (F - 1) / 4 + 1, H / 8, W / 8]` on the VAE's causal latent grid.

    Latent frame 0 covers frame 0 and latent frame j frames 4j-3 .. 4j, so frame 0 stays alone and later frames
    are averaged in fours; space is averaged over 8 x 8. This is the `alpha_down` of the consistency loss.
    """
    first, rest = alpha[:, :, :1], alpha[:, :, 1:]
    groups = rest.unflatten(2, (-1, 4)).mean(3) if rest.shape[2] else rest
    return torch.nn.functional.avg_pool3d(torch.cat([first, groups], dim=2), kernel_size=(1, 8, 8))


def save_vae(vae: LayerVAE, folder: Path) -> Path:
    """`vae.safetensors` and `config.json` (`vae`: the VAE's preset sizes, `vae_lora`) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, folder / "vae.safetensors")
    config = {"vae": dataclasses.asdict(vae.cfg), "vae_lora": vae.has_lora}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder / "vae.safetensors"


def load_vae(folder: Path) -> LayerVAE:
    """A VAE saved by `save_vae`; missing files name the stage that writes them."""
    path, config_path = folder / "vae.safetensors", folder / "config.json"
    if not path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it first")
    config = json.loads(config_path.read_text())
    vae = LayerVAE(ModelConfig.from_json(config["vae"]))
    if config.get("vae_lora"):
        vae.add_decoder_lora()
    vae.load_state_dict(load_file(path))
    return vae
