"""LayerDiT: the Wan 2.1 diffusion transformer with LayerAdaLN and layer-aware cross-attention.

Written plainly in the spirit of DiT's `models.py` and Wan's `WanAttentionBlock`; parameter names follow
Wan (`patch_embedding`, `blocks.N.self_attn.q`, `norm_q`, `modulation`, `head.head`, ...) so a key map can
load Wan2.1 weights. Two additions, both zero-initialised so the model starts as the base model:

- **LayerAdaLN**: one table `[4, 6, D]` shared by all blocks, added per token to the six modulation
  vectors (shift/scale/gate for attention and FFN); the token's layer type picks the row.
- **Instance table** `[K_max, 6, D]`, added for the tokens of fg_k / alpha_k (multi-foreground).

With `pooled_modulation`, a third zero-initialised path adds each segment's prompt summary (its prompt's first token
state: the pooled sentence embedding when prompts are `text_pooled`) to the timestep embedding of its tokens, so what
a layer's prompt means modulates every block of that layer, not only what cross-attention picks out.

Self-attention is joint and unmasked over all segments (that is where cross-layer consistency comes
from); cross-attention takes a boolean visibility mask built by `layout.Layout`. RoPE is 3D with real
cos/sin (exportable to ONNX), temporal positions running on across segments.

Legend: B batch, C latent channels, T latent time over all segments, H, W latent size, N video tokens,
S text tokens (all prompts), D width, h heads, d head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layert2v.config import ModelConfig
from layert2v.models.layout import BACKGROUND, FULL, LAYER_TYPES, Layout


def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """`[B]` timesteps (0..1000) -> `[B, dim]` cos/sin features (Transformer positional encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head's dims over (time, height, width); each even."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def rope_cos_sin(
    grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin `[N, d/2]` for a token grid (T, H, W) in row-major order (time slowest)."""
    angles = []
    for axis, (size, width) in enumerate(zip(grid, rope_axes(head_dim), strict=True)):
        freqs = 1.0 / theta ** (torch.arange(0, width, 2, dtype=torch.float32) / width)
        pos = torch.arange(size, dtype=torch.float32)
        shape = [1, 1, 1]
        shape[axis] = size
        ang = (pos[:, None] * freqs[None]).reshape(*shape, -1).expand(*grid, -1)
        angles.append(ang)
    angle = torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)
    return torch.cos(angle), torch.sin(angle)


def traced() -> bool:
    """Whether the model is being traced into a graph (ONNX export, `torch.compile`): shapes must not depend on the
    data there, and ONNX has no complex tensors."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of `x` `[B, h, N, d]` by the angles behind cos/sin `[N, d/2]`.

    Eager fp32 rotates the pairs as complex numbers, one multiplication each way, where the real form takes four
    products, two sums and a stack (with the fused multiply-adds of `modulate` and `gated_residual`, 1.04-1.07x a
    training step where training is fp32: `benchmarks/bench_elementwise.py`). bf16 (its angles are bf16 under
    autocast) has no complex type and the graphs no complex ops: they take the real form, equal to the last bit."""
    if x.dtype == cos.dtype == torch.float32 and not traced():
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2)
    pairs = x.unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`x + y * gate` for x, y `[B, N, D]` and gate `[B, G, D]`, row g of gate for the g-th of G equal runs of tokens.

    Tokens of one latent frame share their modulation (timestep, layer, prompt), so it is kept per frame and
    broadcast here instead of being materialised per token (6 x N x D per block, forward and backward); one fused
    multiply-add (`addcmul`) instead of a product and a sum."""
    runs = gate.shape[1]
    return torch.addcmul(x.unflatten(1, (runs, -1)), y.unflatten(1, (runs, -1)), gate[:, :, None]).flatten(1, 2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x * (1 + scale) + shift` with shift, scale `[B, G, D]` per run of tokens (as `gated_residual`), one
    fused multiply-add."""
    runs = shift.shape[1]
    return torch.addcmul(shift[:, :, None], x.unflatten(1, (runs, -1)), 1 + scale[:, :, None]).flatten(1, 2)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), as Wan uses on q and k."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    """Multi-head attention with RMS-normalised q and k; self-attention when `context` is None."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, N, D] -> [B, h, N, d]

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        source = x if context is None else context
        q, k, v = (
            self._split(self.norm_q(self.q(x))),
            self._split(self.norm_k(self.k(source))),
            self._split(self.v(source)),
        )
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(q, k, v, None if mask is None else mask[:, None])
        return self.o(out.transpose(1, 2).flatten(2))


def visible_text(text: torch.Tensor, cross_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """text `[B, S, D]` and cross_mask `[B, N, S]` cut to the text positions some token of the batch may see.

    Prompts are padded to `text_len` (64) tokens and the default data's captions hold 8-55 (median 18), so most of
    the cross-attention's keys are padding that every query masks out, at the cost of real ones; dropping them
    changes nothing but the time. Kept whole where the shapes must not depend on the data, inside a graph
    (`torch.compile`, ONNX export), whose callers pass the cut as an input instead (`visible_positions` as `forward`'s
    `text_positions`: the exported graphs' runtime, and `forward_layout` for the `compile` backend)."""
    if traced():
        return text, cross_mask
    seen = cross_mask.any(1).any(0)  # [S]
    return (text, cross_mask) if bool(seen.all()) else (text[:, seen], cross_mask[..., seen])


def visible_positions(cross_mask: torch.Tensor) -> torch.Tensor:
    """The text positions `[S']` (long) some token of the batch may see in cross_mask `[B, N, S]`: what
    `visible_text` keeps, computed outside a graph that cannot have a data-dependent shape (its runtime passes them)."""
    return cross_mask.any(1).any(0).nonzero().squeeze(1)


def matmul_path(x: torch.Tensor) -> bool:
    """Whether `attention` spells attention out for `x`: under autocast (bf16) on a CPU, where SDPA's flash kernel
    took 2-2.8x as long forward and backward at the DiT's lengths (192-384 tokens) for the same error against fp32
    (`benchmarks/bench_attention.py`). Everywhere else (fp32, the exported graphs, CUDA) it is SDPA."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`[B, h, N, d]` attention; `mask` (from `attention_mask`) broadcast to `[B, h, N, S]`."""
    if matmul_path(q):
        return matmul_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The bool visibility mask (True: visible; no row all False) in the form `attention` takes for `x`: as it is for
    SDPA, an additive bias (0 / -inf) in the autocast dtype for `matmul_attention`, built once per forward: adding
    it took half the time of filling the scores by the mask, and its backward is free."""
    return additive_bias(mask, torch.get_autocast_dtype("cpu")) if matmul_path(x) else mask


def additive_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool visibility mask as the scores' additive bias: 0 where visible, -inf elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, spelled out (`bias` from `additive_bias`). The scale goes on q, `[N, d]`,
    not on the scores, `[N, S]`: fewer products where S > d (self-attention: 1.03-1.05x a bf16 training step on an
    AMX host), and the same bits where 1 / sqrt(d) is a power of two (d = 64: the CPU presets)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return (scores if bias is None else scores + bias).softmax(-1).to(v.dtype) @ v


class Block(nn.Module):
    """Wan block: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(cfg.dim, cfg.heads, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.cross_attn = Attention(cfg.dim, cfg.heads, cfg.eps)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x `[B, N, D]`, e `[B, G, 6, D]` (G groups of consecutive tokens: 1 or the latent frames), context
        `[B, S, D]`, mask bool `[B, N, S]`."""
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation + e).unbind(2)
        x = gated_residual(x, self.self_attn(modulate(self.norm1(x), shift_sa, scale_sa), rope=rope), gate_sa)
        x = x + self.cross_attn(self.norm3(x), context=context, mask=mask)
        return gated_residual(x, self.ffn(modulate(self.norm2(x), shift_ff, scale_ff)), gate_ff)


class Head(nn.Module):
    """Final modulated norm and projection back to patches."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.latent_channels * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x `[B, N, D]`, t_emb `[B, G, D]` (G groups of consecutive tokens, as `Block.forward`)."""
        shift, scale = (self.modulation[None] + t_emb[:, :, None]).unbind(2)
        return self.head(modulate(self.norm(x), shift, scale))


def mark_block_shapes(
    x: torch.Tensor, e: torch.Tensor, context: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, ...]
) -> None:
    """Tell compiled blocks which sizes vary: the prompts' visible length (`visible_text` cuts it per batch) is
    compiled as a symbol from the first batch on, every other size stays a constant, so that stage 3's K = 1..3
    compile a static graph each, not one whose sizes are symbols (a step with every size symbolic: 1.25-1.37x slower)."""
    for tensor in (x, e, context, mask, *rope):
        torch._dynamo.mark_static(tensor)
    torch._dynamo.maybe_mark_dynamic(context, 1)
    torch._dynamo.maybe_mark_dynamic(mask, mask.dim() - 1)


class LayerDiT(nn.Module):
    """Predicts the flow-matching velocity of packed layered latents."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.latent_channels, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.head = Head(cfg)
        self.layer_adaln = nn.Parameter(torch.zeros(LAYER_TYPES, 6, cfg.dim))
        self.instance_adaln = nn.Parameter(torch.zeros(cfg.max_fg, 6, cfg.dim))
        self.pooled_embedding = (
            nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
            if cfg.pooled_modulation
            else None
        )
        self.blocks_compiled = False
        self._init_weights()

    def _init_weights(self) -> None:
        """Wan's init: xavier linears, zero biases, small embeddings, zero output head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for layer in seq:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        if self.pooled_embedding is not None:
            nn.init.zeros_(self.pooled_embedding[-1].weight)  # starts as the model without it

    def compile_blocks(self) -> None:
        """`torch.compile` each transformer block in place (regional compilation), the rest eager. The blocks share
        one code object, so inductor compiles one graph per token count for all of them: a cold compile took 30-46 s
        on 2 cores (Intel AMX) where the whole model's took 117-155 s, the step is as fast (the elementwise work
        between GEMMs is the blocks'), and the eager top level keeps `visible_text`'s cut of the prompts' padding."""
        for block in self.blocks:
            block.compile()
        self.blocks_compiled = True

    def prompt_summaries(self, text: torch.Tensor, layer_ids: torch.Tensor, instance_ids: torch.Tensor) -> torch.Tensor:
        """`[B, G, D]` for ids `[G]` (one per latent frame): the frame's segment's prompt (full -> the overall
        prompt, background -> its prompt, fg_k / alpha_k -> fg_k's prompt), its first token state embedded by
        `pooled_embedding`."""
        summaries = self.pooled_embedding(text.unflatten(1, (-1, self.cfg.text_len))[:, :, 0])  # [B, P, D]
        layer_prompt = torch.where(layer_ids == BACKGROUND, 1, 2 + instance_ids)  # fg_k's prompt is 2 + k
        return summaries[:, torch.where(layer_ids == FULL, 0, layer_prompt)]

    def layer_modulation(self, layer_ids: torch.Tensor, instance_ids: torch.Tensor) -> torch.Tensor:
        """`[G, 6, D]` offsets for ids `[G]`: LayerAdaLN row of the layer type plus the instance row (if any)."""
        padded = torch.cat([self.instance_adaln, torch.zeros_like(self.instance_adaln[:1])])
        instance = torch.where(instance_ids < 0, torch.full_like(instance_ids, self.cfg.max_fg), instance_ids)
        return self.layer_adaln[layer_ids] + padded[instance]

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        cross_mask: torch.Tensor,
        layer_ids: torch.Tensor | None = None,
        instance_ids: torch.Tensor | None = None,
        text_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents `[B, C, T, H, W]`, timestep `[B]` in 0..1000 or `[B, L]` (one per segment: the tokens split into
        L equal runs), text `[B, S, text_dim]`, cross_mask bool `[B, N, S]`, ids long `[N]` (None: the base model,
        no layer tables), text_positions long `[S']`: the text positions the cross-attention reads (None: those
        some token may see, `visible_text`; `forward_layout` and the exported graphs pass `visible_positions`).

        Per-segment timesteps are how a known layer is given (`t = 0` on its segment while the others are noised):
        Wan modulates every token from its timestep already, so this only repeats the embedding per segment."""
        pt, ph, pw = self.cfg.patch
        batch, _, frames, height, width = latents.shape
        grid = (frames // pt, height // ph, width // pw)
        x = self.patch_embedding(latents).flatten(2).transpose(1, 2)  # [B, N, D]
        rope = tuple(r.to(x.device, x.dtype) for r in rope_cos_sin(grid, self.cfg.head_dim))
        steps = timestep.reshape(batch, -1)  # [B, 1 or L]
        t_emb = self.time_embedding(sinusoidal_embedding(steps.flatten(), self.cfg.freq_dim).to(x.dtype))
        t_emb = t_emb.unflatten(0, (batch, -1))  # [B, 1 or L, D]
        per_frame = lambda y: y if y.shape[1] in (1, grid[0]) else y.repeat_interleave(grid[0] // y.shape[1], 1)  # noqa: E731
        if layer_ids is not None and instance_ids is not None:
            # a latent frame lies in one segment: its first token's ids are the frame's
            layer_ids, instance_ids = (ids.unflatten(0, (grid[0], -1))[:, 0] for ids in (layer_ids, instance_ids))
        if self.pooled_embedding is not None and layer_ids is not None and instance_ids is not None:
            t_emb = per_frame(t_emb) + self.prompt_summaries(text, layer_ids, instance_ids)  # [B, T, D]
        e = self.time_projection(t_emb).unflatten(2, (6, -1))  # [B, 1 or L or T, 6, D]
        t_emb, e = per_frame(t_emb), per_frame(e)  # per latent frame, unless one for all
        if layer_ids is not None and instance_ids is not None:
            e = e + self.layer_modulation(layer_ids, instance_ids)[None]
        if text_positions is None:
            text, cross_mask = visible_text(text, cross_mask)
        else:
            text, cross_mask = text.index_select(1, text_positions), cross_mask.index_select(2, text_positions)
        context, cross_mask = self.text_embedding(text), attention_mask(cross_mask, x)
        # the residual stream's dtype from block 0's first gated residual on (fp32 under autocast), given at once:
        # block 0's first norm runs in fp32 like the other blocks' norms, and compiled blocks share one graph
        x = x.to(torch.promote_types(x.dtype, self.blocks[0].modulation.dtype))
        if self.blocks_compiled:
            mark_block_shapes(x, e, context, cross_mask, rope)
        for block in self.blocks:
            x = block(x, e, context, cross_mask, rope)
        x = self.head(x, t_emb)  # [B, N, C * pt * ph * pw]
        x = x.reshape(batch, *grid, -1, pt, ph, pw)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(batch, -1, frames, height, width)

    def forward_layout(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        layout: Layout,
    ) -> torch.Tensor:
        """`forward` with ids and the cross-attention mask built from `layout`; text_mask bool `[B, P, M]`.

        The text positions the tokens see are cut here, outside the module, so that a compiled DiT (the `compile`
        backend) skips the prompts' padding as eager does: inside a graph `visible_text` must keep all 64 per
        prompt, which left `generate` K = 3 on `compile` 1.02x eager instead of 1.2x (docs/results.md). Their count
        is marked dynamic: one graph serves every prompt length instead of one compile per length."""
        mask, layer_ids, instance_ids = layout_inputs(self.cfg, latents.shape, text_mask, layout)
        positions = visible_positions(mask)
        if self._compiled_call_impl is not None:  # compiled in place (`Module.compile`); eager skips dynamo's import
            torch._dynamo.maybe_mark_dynamic(positions, 0)
        return self(latents, timestep, text, mask, layer_ids, instance_ids, positions)


def layout_inputs(
    cfg: ModelConfig, latent_shape: torch.Size | tuple[int, ...], text_mask: torch.Tensor, layout: Layout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cross-attention mask `[B, N, S]` and the per-token layer / instance ids `[N]` of `layout` for latents
    of `latent_shape`: what `forward` takes besides latents, timestep and text (also the ONNX graph's inputs)."""
    pt, ph, pw = cfg.patch
    frames, height, width = latent_shape[2:]
    tokens = (frames // pt) * (height // ph) * (width // pw) // layout.num_segments
    layer_ids, instance_ids = (ids.to(text_mask.device) for ids in layout.token_ids(tokens))
    return layout.cross_attention_mask(tokens, text_mask), layer_ids, instance_ids
