"""Training losses: cross-entropy through the unembedding without whole-batch float32 logits,
and the MoE router's load-balancing and z losses."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt_oss.model import moe
from gpt_oss.model.moe import Routing

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    """The training objective and what it is made of."""

    loss: torch.Tensor  # what backward runs on: ce + aux terms
    ce: torch.Tensor  # mean next-token cross-entropy (nats)
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    expert_counts: torch.Tensor  # (layers, experts) token assignments this batch


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int,
    compiled: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets (IGNORE_INDEX skipped).

    hidden (N, H), weight (V, H), targets (N,). chunk_tokens = 0 computes the whole logits
    matrix (plain path); otherwise logits exist one chunk at a time and their gradient is
    formed in the forward pass, so backward stores no logits at all. Under autocast the
    matmuls run in the autocast dtype; the softmax is always computed in float32. compiled
    (with chunks) runs the softmax and its gradient as one torch.compile'd kernel per chunk.
    """
    if chunk_tokens <= 0:
        logits = F.linear(hidden, weight)  # (N, V)
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    dtype = moe.compute_dtype(hidden)
    if not torch.is_grad_enabled():  # evaluation: no gradients to form in the forward pass
        hidden, weight = hidden.detach(), weight.detach()
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(
            hidden, weight, targets, chunk_tokens, dtype, compiled
        )


VOCAB_BLOCK = 16384  # weight rows per matmul when the logit gradient is kept
# Bytes of float32 log-probabilities alive at once. CPU: under glibc's 32 MiB mmap threshold
# (larger blocks are handed back to the kernel and fault in again every step) and near L3 size;
# GPUs: few, large kernels.
SOFTMAX_BYTES = {"cpu": 32 * 2**20, "other": 512 * 2**20}
# Bytes of one chunk's logits in the matmul dtype: caps chunk_tokens, so that float32 training
# on a CPU never holds a whole batch's logits either (measured: 4.79 GiB peak against 5.19).
LOGITS_BYTES = {"cpu": 256 * 2**20, "other": 2 * 2**30}


def defers_weight_grad(tokens: int, vocab: int, hidden: int, dtype: torch.dtype) -> bool:
    """Keep the (N, V) logit gradient for backward instead of a float32 (V, H) weight gradient
    accumulated chunk by chunk, when it is smaller (few tokens, e.g. on a CPU): one matmul
    per vocabulary block in backward then replaces one (V, H) read-modify-write per chunk."""
    return tokens * vocab * dtype.itemsize < vocab * hidden * 4


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Forward: the loss and both gradients; backward scales them (and, when the logit
    gradient was kept, multiplies it out into the weight gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, dtype, compiled):
        tokens, vocab = hidden.shape[0], weight.shape[0]
        valid = targets != IGNORE_INDEX
        chunk_tokens = min(chunk_tokens, _rows_within(LOGITS_BYTES, vocab * dtype.itemsize, hidden))
        rows = min(chunk_tokens, _rows_within(SOFTMAX_BYTES, vocab * 4, hidden))
        softmax = _ChunkSoftmax(valid, targets.clamp(min=0), bool(valid.all()), rows, compiled)
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h = hidden.to(dtype)
        ctx.grad_logits = ctx.hidden_for_weight = ctx.grad_weight = None
        if needs_weight and defers_weight_grad(tokens, vocab, weight.shape[1], dtype):
            total, ctx.grad_logits, grad_hidden = _keeping_logit_grad(h, weight, softmax)
            ctx.hidden_for_weight = h
        else:
            total, grad_hidden, ctx.grad_weight = _accumulating_weight_grad(
                h, weight, softmax, chunk_tokens, needs_hidden, needs_weight
            )
        ctx.grad_hidden = grad_hidden.to(hidden.dtype) if needs_hidden else None
        ctx.count, ctx.weight_dtype = valid.sum().clamp(min=1), weight.dtype
        return total / ctx.count

    @staticmethod
    def backward(ctx, grad_output):
        scale = grad_output / ctx.count  # d(mean)/d(sum) times the upstream gradient
        grad_hidden, grad_weight = ctx.grad_hidden, ctx.grad_weight
        ctx.grad_hidden = ctx.grad_weight = None  # returned buffers become .grad without a copy
        if grad_hidden is not None:
            grad_hidden.mul_(scale.to(grad_hidden.dtype))
        if ctx.grad_logits is not None:
            grad_weight = _weight_grad_from_logit_grad(
                ctx.grad_logits, ctx.hidden_for_weight, scale, ctx.weight_dtype
            )
            ctx.grad_logits = ctx.hidden_for_weight = None
        elif grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def _rows_within(budget: dict[str, int], row_bytes: int, like: torch.Tensor) -> int:
    """How many rows of row_bytes fit the budget of like's device (at least one)."""
    return max(1, budget.get(like.device.type, budget["other"]) // row_bytes)


class _ChunkSoftmax:
    """Cross-entropy of logits rows, `rows` at a time in float32; gradients in place."""

    def __init__(
        self,
        valid: torch.Tensor,
        safe_targets: torch.Tensor,
        all_valid: bool,
        rows: int,
        compiled: bool = False,
    ):
        # ignored rows point at class 0 (safe to index) and count for nothing
        self.valid, self.safe_targets, self.all_valid, self.rows = (
            valid,
            safe_targets,
            all_valid,
            rows,
        )
        self.rows_to_grad = _compiled_rows_to_grad() if compiled else _rows_to_grad

    def __call__(self, logits: torch.Tensor, first: int, with_grad: bool) -> torch.Tensor:
        """Summed -log p(target) of logits (n, V), the tokens first..first+n; with_grad, the
        logits are overwritten with d(loss_sum)/d(logits) = softmax - onehot (0 if ignored)."""
        total = logits.new_zeros((), dtype=torch.float32)
        for start in range(0, logits.shape[0], self.rows):
            part = logits[start : start + self.rows]
            tokens = slice(first + start, first + start + part.shape[0])
            targets = self.safe_targets[tokens]
            if with_grad:
                picked = self.rows_to_grad(part, targets)
                if not self.all_valid:
                    part[~self.valid[tokens]] = 0
            else:
                logprobs = torch.log_softmax(part, dim=-1, dtype=torch.float32)  # (rows, V)
                picked = logprobs.gather(1, targets[:, None]).squeeze(1)
            total -= picked.sum() if self.all_valid else (picked * self.valid[tokens]).sum()
        return total


def _rows_to_grad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row (float32); logits are overwritten with softmax - onehot."""
    logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (rows, V)
    picked = logprobs.gather(1, targets[:, None]).squeeze(1)
    _softmax_minus_onehot(logprobs, picked, targets, out=logits)
    return picked


def _fused_rows_to_grad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """_rows_to_grad written for one compiled kernel: each row is read (max, then the sum of
    exponentials) and written once, with no float32 log-probabilities in memory."""
    x = logits.float()
    top = x.amax(dim=-1, keepdim=True)
    exps = torch.exp(x - top)
    total = exps.sum(dim=-1, keepdim=True)
    picked = (x.gather(1, targets[:, None]) - top - torch.log(total)).squeeze(1)
    grad = (exps / total).scatter(1, targets[:, None], (torch.exp(picked) - 1)[:, None])
    logits.copy_(grad)
    return picked


@functools.cache
def _compiled_rows_to_grad():
    """torch.compile of _fused_rows_to_grad, made once per process: a chunk's shape is fixed
    (the last chunk adds one more), so kernels are specialised to it."""
    return torch.compile(_fused_rows_to_grad, dynamic=False)


def _accumulating_weight_grad(
    h, weight, softmax: _ChunkSoftmax, chunk_tokens: int, needs_hidden: bool, needs_weight: bool
):
    """Token chunks over the whole (cast) weight; the float32 weight gradient grows per chunk."""
    w = weight.to(h.dtype)  # cast once per call, shared by the chunks
    grad_hidden = torch.empty_like(h, dtype=torch.float32) if needs_hidden else None
    grad_weight = None
    if needs_weight:
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        grad = h[rows] @ w.T  # (chunk, V): logits, then their gradient
        total += softmax(grad, start, with_grad=needs_hidden or needs_weight)
        if needs_hidden:
            grad_hidden[rows] = grad @ w
        if needs_weight:
            _accumulate(grad_weight, grad.T, h[rows])
    return total, grad_hidden, grad_weight


def _keeping_logit_grad(h, weight, softmax: _ChunkSoftmax):
    """The whole batch's logits in h's dtype, turned in place into their gradient (the
    softmax in float32). Matmuls run VOCAB_BLOCK weight rows at a time: narrower outputs
    stay in cache (measured 410-450 GFLOP/s in bf16 against 330 for the whole width)."""
    tokens, vocab = h.shape[0], weight.shape[0]
    grad_logits = h.new_empty(tokens, vocab)  # (N, V): logits, then d(loss_sum)/d(logits)
    w = weight.to(h.dtype)  # cast once for both passes
    for block in _vocab_blocks(vocab):
        grad_logits[:, block] = h @ w[block].T
    total = softmax(grad_logits, 0, with_grad=True)
    grad_hidden = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
    for block in _vocab_blocks(vocab):
        _accumulate(grad_hidden, grad_logits[:, block], w[block])
    return total, grad_logits, grad_hidden


def _weight_grad_from_logit_grad(grad_logits, h, scale, weight_dtype) -> torch.Tensor:
    """(V, H) = grad_logits.T @ (h * scale), block by block into the final weight gradient."""
    h_scaled = h * scale.to(h.dtype)
    shape = (grad_logits.shape[1], h.shape[1])
    grad_weight = torch.empty(shape, dtype=weight_dtype, device=h.device)
    for block in _vocab_blocks(grad_logits.shape[1]):
        grad_weight[block] = grad_logits[:, block].T @ h_scaled
    return grad_weight


def _vocab_blocks(vocab: int) -> list[slice]:
    return [slice(start, start + VOCAB_BLOCK) for start in range(0, vocab, VOCAB_BLOCK)]


def _softmax_minus_onehot(
    logprobs: torch.Tensor, picked: torch.Tensor, targets: torch.Tensor, out: torch.Tensor
) -> None:
    """out = softmax - onehot, in out's dtype. The target entries come from the float32
    log-probabilities, so p - 1 is rounded once, not p and then p - 1."""
    torch.exp(logprobs, out=out)
    rows = torch.arange(len(targets), device=targets.device)
    out[rows, targets] = (picked.exp() - 1).to(out.dtype)


def _accumulate(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """total (float32) += a @ b, in place where the dtypes allow (a, b in float32)."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    else:
        total += a @ b


def load_balancing_loss(routing: Routing, num_experts: int) -> torch.Tensor:
    """Switch-style: E * sum_i (fraction of assignments to i) * (mean router probability of i)."""
    probs = torch.softmax(routing.logits.float(), dim=-1)  # (N, E)
    assigned = moe.expert_counts(routing.experts, num_experts).float()
    fraction = assigned / assigned.sum()
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(routing: Routing) -> torch.Tensor:
    """Mean squared log-partition of the router logits (ST-MoE): keeps logits small."""
    return torch.logsumexp(routing.logits.float(), dim=-1).pow(2).mean()
