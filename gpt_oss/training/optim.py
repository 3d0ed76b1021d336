"""Optimizers and learning-rate schedules. Each is a factory that conf/ names as a partial;
the trainer completes it with the model (optimizers) or the optimizer (schedules)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from gpt_oss.model.config import ConfigError
from gpt_oss.model.roles import Role, layer_shape, parameter_roles
from gpt_oss.validation import ranged_args

# Weight decay: the layers' matrices only, not norms, biases, sinks or (by default) embeddings.
DECAYED_ROLES = frozenset({Role.MATRIX, Role.EXPERT_MATRIX, Role.ROUTER, Role.HEAD})
# Muon orthogonalises the blocks' hidden matrices; the rest (embeddings, head, router, norms,
# biases, sinks) is AdamW's, as in Muon's reference use.
MUON_ROLES = frozenset({Role.MATRIX, Role.EXPERT_MATRIX})


def param_groups(
    model: nn.Module, weight_decay: float, decay_embeddings: bool = False
) -> list[dict]:
    """Two AdamW groups by parameter role: decayed matrices, and everything else without decay."""
    decayed_roles = DECAYED_ROLES | ({Role.EMBEDDING} if decay_embeddings else set())
    decay, no_decay = [], []
    for name, role in parameter_roles(model).items():
        param = model.get_parameter(name)
        if param.requires_grad:
            (decay if role in decayed_roles else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@ranged_args(lr="(0, inf)", betas="[0, 1)", eps="(0, inf)", weight_decay="[0, inf)")
def adamw(
    model: nn.Module,
    lr: float = 3e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    decay_embeddings: bool = False,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (unless decay_embeddings)."""
    device = next(model.parameters()).device
    if fused is None:  # the fused kernel is fastest wherever it exists
        fused = device.type in ("cuda", "cpu")
    groups = param_groups(model, weight_decay, decay_embeddings)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def newton_schulz(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise the last two dims of (rows, cols) or (E, rows, cols).

    Muon's quintic iteration in bf16, written as torch.optim.Muon's (the same fused
    multiply-adds, so each matrix rounds exactly as there).
    """
    a, b, c = 3.4445, -4.7750, 2.0315  # coefficients that maximise the slope at zero
    x = matrix.to(torch.bfloat16)
    stacked = x if x.dim() == 3 else x.unsqueeze(0)  # (E, rows, cols)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        stacked = stacked.mT
    stacked = stacked / stacked.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)
    for _ in range(steps):
        gram = stacked @ stacked.mT
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram^2
        stacked = torch.baddbmm(stacked, polynomial, stacked, beta=a)  # a * x + polynomial @ x
    if transposed:
        stacked = stacked.mT
    return (stacked if x.dim() == 3 else stacked[0]).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (momentum + orthogonalised update) for hidden matrices, AdamW for the rest.

    Groups with use_muon=True hold 2-D matrices or stacked expert matrices, each expert
    orthogonalised on its own. Updates are scaled by sqrt(max(1, out/in)) of the layer, so
    their RMS matches across shapes; `roles` says how each matrix is stored (nn.Linear's
    (out, in) unless its role is EXPERT_MATRIX, stored (E, in, out)), as torch.optim.Muon
    would see the layer.
    """

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        momentum: float,
        nesterov: bool,
        ns_steps: int,
        adamw_lr: float,
        adamw_betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        roles: dict[torch.Tensor, Role] | None = None,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            betas=tuple(adamw_betas),
            eps=eps,
            weight_decay=weight_decay,
            use_muon=False,
        )
        for group in groups:
            if not group.get("use_muon"):
                group.setdefault("lr", adamw_lr)
        super().__init__(groups, defaults)
        self.roles = roles or {}  # not state: rebuilt from the model with the optimizer

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["use_muon"]:
                    self._muon_update(p, group)
                else:
                    self._adamw_update(p, group)
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(p)
        buf = state["momentum"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        update = newton_schulz(update, group["ns_steps"])
        out_features, in_features = layer_shape(self.roles.get(p, Role.MATRIX), p.shape)
        scale = math.sqrt(max(1.0, out_features / in_features))  # of the layer, not the storage
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"] * scale)

    def _adamw_update(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        correction1 = 1 - beta1 ** state["step"]
        correction2 = 1 - beta2 ** state["step"]
        denom = (state["exp_avg_sq"] / correction2).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / correction1)


@ranged_args(
    lr="(0, inf)",
    momentum="[0, 1)",
    ns_steps="[1, inf)",
    adamw_lr="(0, inf)",
    adamw_betas="[0, 1)",
    eps="(0, inf)",
    weight_decay="[0, inf)",
)
def muon(
    model: nn.Module,
    lr: float = 0.02,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    adamw_lr: float = 3e-4,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Muon:
    """Muon on attention and expert matrices; AdamW on embeddings, head, router, norms, biases."""
    hidden, other, roles = [], [], {}
    for name, role in parameter_roles(model).items():
        param = model.get_parameter(name)
        roles[param] = role
        (hidden if role in MUON_ROLES else other).append(param)
    groups = [
        {"params": hidden, "use_muon": True},
        {"params": other, "use_muon": False, "weight_decay": 0.0},
    ]
    return Muon(
        groups, lr, momentum, nesterov, ns_steps, adamw_lr, adamw_betas, eps, weight_decay, roles
    )


def warmup_length(total_steps: int, warmup_steps: int | None, warmup_fraction: float) -> int:
    """Warmup in steps: warmup_steps when given, else warmup_fraction of the run (the ranges of
    each are declared on the schedules below)."""
    if warmup_steps is None:
        return int(warmup_fraction * total_steps)
    if warmup_steps > total_steps:
        raise ConfigError(
            f"schedule.warmup_steps={warmup_steps} is invalid: must be <= total_steps={total_steps}"
        )
    return warmup_steps


SCHEDULE_RANGES = dict(total_steps="[1, inf)", warmup_steps="[0, inf)", warmup_fraction="[0, 1]")


@ranged_args(**SCHEDULE_RANGES, min_lr_ratio="[0, 1]")
def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """Linear warmup to the peak, then cosine decay to min_lr_ratio * peak at total_steps."""
    warmup_steps = warmup_length(total_steps, warmup_steps, warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


@ranged_args(**SCHEDULE_RANGES)
def constant(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.0,
) -> LambdaLR:
    """Linear warmup, then the peak rate until the end."""
    warmup_steps = warmup_length(total_steps, warmup_steps, warmup_fraction)
    return LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )


@ranged_args(**SCHEDULE_RANGES, decay_fraction="[0, 1]", min_lr_ratio="[0, 1]")
def warmup_stable_decay(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.05,
    decay_fraction: float = 0.2,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """WSD: warmup, a long constant stage, then a linear decay over the last decay_fraction."""
    warmup_steps = warmup_length(total_steps, warmup_steps, warmup_fraction)
    decay_start = total_steps - int(decay_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * progress

    return LambdaLR(optimizer, factor)
