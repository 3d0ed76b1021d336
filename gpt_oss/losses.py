"""Training losses: cross-entropy through the unembedding without whole-batch float32 logits,
and the MoE router's load-balancing and z losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_oss.moe import Routing

IGNORE_INDEX = -100


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets (IGNORE_INDEX skipped).

    hidden (N, H), weight (V, H), targets (N,). chunk_tokens = 0 computes the whole logits
    matrix (plain path); otherwise logits exist one chunk at a time and their gradient is
    formed in the forward pass, so backward stores no logits at all.
    """
    if chunk_tokens <= 0:
        logits = F.linear(hidden, weight)  # (N, V)
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    dtype = _matmul_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, dtype)


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, dtype):
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        needs_grad = hidden.requires_grad or weight.requires_grad
        w = weight.to(dtype)
        grad_hidden = torch.zeros_like(hidden) if needs_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start : start + chunk_tokens].to(dtype)
            t = targets[start : start + chunk_tokens]
            logits = (h @ w.T).float()  # (chunk, V) float32 for this chunk only
            lse = torch.logsumexp(logits, dim=-1)
            valid = t != IGNORE_INDEX
            safe_t = t.clamp(min=0)
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
            total += ((lse - target_logit) * valid).sum()
            if needs_grad:
                # d(loss_sum)/d(logits) = softmax - onehot, zero on ignored rows
                grad = torch.exp(logits - lse[:, None])
                grad[torch.arange(len(t), device=t.device), safe_t] -= 1.0
                grad *= valid[:, None]
                grad = grad.to(dtype)
                grad_hidden[start : start + chunk_tokens] = (grad @ w).to(hidden.dtype)
                grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_output / count
        grad_h = grad_hidden * scale.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (grad_weight * scale).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None


def load_balancing_loss(routing: Routing, num_experts: int) -> torch.Tensor:
    """Switch-style: E * sum_i (fraction of assignments to i) * (mean router probability of i)."""
    probs = torch.softmax(routing.logits.float(), dim=-1)  # (N, E)
    assigned = expert_counts(routing, num_experts).float()
    fraction = assigned / assigned.sum()
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(routing: Routing) -> torch.Tensor:
    """Mean squared log-partition of the router logits (ST-MoE): keeps logits small."""
    return torch.logsumexp(routing.logits.float(), dim=-1).pow(2).mean()


def expert_counts(routing: Routing, num_experts: int) -> torch.Tensor:
    """How many token assignments each expert received: (E,)."""
    return torch.bincount(routing.experts.flatten(), minlength=num_experts)
