"""AdamW with linear warm-up then cosine decay to 10% of the peak rate, and gradient-norm clipping, as every stage
uses; the DiT stages may give the transformer blocks' matrices to Muon instead (`train.stageN.optimizer`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import lightning as L
import torch

from layert2v.config import DiTStageConfig, StageConfig
from layert2v.hostcache import native_bf16


def adamw_warmup_cosine(params: Iterable[torch.nn.Parameter], stage: StageConfig) -> dict:
    """A Lightning `configure_optimizers` answer, stepped every optimiser step.

    The fused AdamW kernel updates every parameter in one pass: on 2 CPU cores it took a third of the time of the
    default multi-tensor one for the `small` DiT (docs/results.md, "Where a DiT step's time goes")."""
    trainable = [p for p in params if p.requires_grad]
    return warmup_cosine(torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=stage.weight_decay, fused=True), stage)


def warmup_cosine(optimizer: torch.optim.Optimizer, stage: StageConfig) -> dict:
    """`optimizer` with the stages' schedule: linear warm-up, then cosine decay to a tenth of `stage.lr`."""

    def factor(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        progress = (step - stage.warmup_steps) / max(1, stage.max_steps - stage.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def dit_optimizer(dit: torch.nn.Module, stage: DiTStageConfig) -> dict:
    """The DiT stages' `configure_optimizers` answer: AdamW, or with `stage.optimizer` "muon" the `MuonAdamW` split
    (the 2-D weights under `blocks.` to Muon), on one schedule."""
    if stage.optimizer == "adamw":
        return adamw_warmup_cosine(dit.parameters(), stage)
    matrices, others = split_matrices(dit)
    muon = Muon(matrices, lr=stage.lr, weight_decay=stage.weight_decay)
    adamw = torch.optim.AdamW(others, lr=stage.lr, weight_decay=stage.weight_decay, fused=True)
    return warmup_cosine(MuonAdamW(muon, adamw), stage)


def split_matrices(dit: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The trainable parameters as (the 2-D weights of the transformer blocks, everything else): what Muon takes
    and what stays with AdamW (embeddings, the output head, norms, biases, modulation tables)."""
    matrices: list[torch.nn.Parameter] = []
    others: list[torch.nn.Parameter] = []
    for name, p in dit.named_parameters():
        if p.requires_grad:
            (matrices if name.startswith("blocks.") and p.ndim == 2 else others).append(p)
    return matrices, others


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan's quintic Newton-Schulz iteration (as `torch.optim.Muon`)


def orthogonalised(updates: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """`[n, A, B]` matrices replaced by about their nearest semi-orthogonal ones (U S' V^T with S' near 1 for
    U S V^T = G), by `steps` Newton-Schulz iterations on all n at once."""
    a, b, c = NS_COEFFICIENTS
    wide = updates.shape[-2] <= updates.shape[-1]
    x = updates if wide else updates.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024): SGD-Nesterov momentum whose update matrix is orthogonalised before it is applied,
    with the rate scaled to AdamW's update RMS (0.2 sqrt(max(A, B)), Liu et al. 2025) so it shares AdamW's `lr`.

    `torch.optim.Muon`'s arithmetic, but its Newton-Schulz iterations batched over the matrices of one shape (the
    `small` DiT's 60 are of three shapes) and in bf16 only where the CPU has bf16 kernels: torch's runs each matrix
    alone and always in bf16, which an AVX2-only CPU emulates many times slower than fp32 (`hostcache.native_bf16`).
    """

    def __init__(
        self, params: list[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float = 0.95
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[tuple[torch.nn.Parameter, torch.Tensor]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    by_shape[p.shape].append((p, p.grad.lerp(buf, group["momentum"])))
            for shape, pairs in by_shape.items():
                stacked = torch.stack([update for _, update in pairs])
                ortho = orthogonalised(stacked.to(ns_dtype(stacked.device))).to(stacked.dtype)
                for (p, _), update in zip(pairs, ortho, strict=True):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * 0.2 * math.sqrt(max(shape)))
        return loss


def ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 (what Muon's iteration is tuned in, and twice the GEMM rate) unless it would be emulated here."""
    return torch.bfloat16 if device.type != "cpu" or native_bf16() else torch.float32


class MuonAdamW(torch.optim.Optimizer):
    """`Muon` on the blocks' matrices and fused AdamW on the rest (`split_matrices`), as one optimiser for
    Lightning's automatic optimisation, one schedule and one checkpoint entry.

    Why: at 2000 stage-2 steps the DiT trained this way reached the training loss AdamW needs about 3500 steps for
    and read the shape word more strongly; at the default chain's time budget its samples were level with AdamW's
    within the noise, for a third more per step, so it is an option (docs/results.md, "Muon for the DiT's
    matrices")."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        # the inner optimisers' group dicts themselves: a scheduler's lr written here is the one they step with
        super().__init__([*muon.param_groups, *adamw.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = self.muon.step(closure)  # the closure (Lightning's forward and backward) runs once, there
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


class GradNormClip(L.Callback):
    """Clips the gradient norm of the optimiser's parameters to `max_norm` (0: off) before each step.

    Lightning's own `gradient_clip_val` refuses the fused AdamW under bf16-mixed (it assumes a GradScaler may have
    scaled the gradients, which bf16 never does), so the stages clip here, as Lightning would without a scaler."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        if self.max_norm > 0:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
