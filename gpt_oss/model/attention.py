"""Attention with sinks and sliding windows: a written-out reference and two fast paths.

All three take q (B, Hq, T, D), k and v (B, Hkv, S, D), the per-head sink logits (Hq,) and a
boolean mask (B or 1, 1, T, S) that is True where a query may attend a key; they return
(B, Hq, T, D). A sink is one extra logit per head that joins the softmax and has no value: it
only absorbs probability mass.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def select_kernel(impl: str, plain: bool, device: torch.device, backward: bool) -> str:
    """The kernel that runs attn_impl `impl` here: "eager", "sdpa" or "flex".

    FlexAttention runs only plain causal self-attention (no cache, no padding: plain=True)
    and has no CPU or MPS backward; elsewhere a flex model takes SDPA (tested equal).
    """
    if impl == "flex" and not (plain and (device.type not in ("cpu", "mps") or not backward)):
        return "sdpa"
    return impl


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    mask: torch.Tensor | None,
    sliding_window: int | None,
    kernel: str,
) -> torch.Tensor:
    """Attention with sinks by the kernel select_kernel chose; scale 1/sqrt(head_dim).

    q (B, Hq, T, D), k and v (B, Hkv, S, D), sinks (Hq,); mask (B or 1, 1, T, S), True =
    attend. flex takes no mask (None): it masks causally within sliding_window itself.
    Returns (B, Hq, T, D).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if kernel == "flex":
        return attention_flex(q, k, v, sinks, sliding_window, scale)
    if kernel == "eager":
        return attention_eager(q, k, v, sinks, mask, scale)
    return attention_sdpa(q, k, v, sinks, mask, scale)


def attention_mask(
    query_index: torch.Tensor,
    key_index: torch.Tensor,
    sliding_window: int | None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal (and windowed) mask from absolute indices: (B or 1, 1, T, S), True = attend."""
    distance = query_index[:, None] - key_index[None, :]  # (T, S)
    allowed = distance >= 0
    if sliding_window is not None:
        allowed = allowed & (distance < sliding_window)  # the query and the window-1 keys before it
    allowed = allowed[None, None]  # (1, 1, T, S)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]  # (B, 1, T, S)
    return allowed


def attention_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Reference: full score matrix, sink appended as a last column, softmax, sink dropped."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, Hq, S, D)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, Hq, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    sink_column = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    logits = torch.cat([scores, sink_column], dim=-1)  # (B, Hq, T, S + 1)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    probs = torch.softmax(logits, dim=-1)[..., :-1]
    return torch.matmul(probs.to(v.dtype), v)


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """PyTorch's fused SDPA with the sink as an extra key.

    The sink becomes key 0 with a zero value; one extra feature carries its logit: queries get
    sinks[h] / scale there, the sink key 1 and every real key 0, so the sink's logit is exactly
    sinks[h] and real logits are unchanged. Features are zero-padded to a multiple of 8, the
    values' too: with equal widths the fused kernels run (on the CPU, unequal widths fall back
    to the math path, which materialises every score).
    """
    batch, q_heads, _, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    padded = (head_dim + 1 + 7) // 8 * 8
    extra = padded - head_dim
    sink_feature = (
        (sinks.to(q.dtype) / scale).view(1, q_heads, 1, 1).expand(batch, -1, q.shape[2], 1)
    )
    q = torch.cat([q, sink_feature, q.new_zeros(*q.shape[:-1], extra - 1)], dim=-1)  # (B, Hq, T, P)
    sink_key = k.new_zeros(batch, kv_heads, 1, padded)
    sink_key[..., head_dim] = 1.0
    k = torch.cat([k, k.new_zeros(batch, kv_heads, keys, extra)], dim=-1)
    k = torch.cat([sink_key, k], dim=2)  # (B, Hkv, S + 1, P)
    v = torch.cat([v, v.new_zeros(batch, kv_heads, keys, extra)], dim=-1)
    v = torch.cat([v.new_zeros(batch, kv_heads, 1, padded), v], dim=2)  # (B, Hkv, S + 1, P)
    mask = torch.cat([mask.new_ones(*mask.shape[:-1], 1), mask], dim=-1)  # sink always visible
    gqa = kv_heads != q_heads
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out[..., :head_dim]  # (B, Hq, T, D): the padding features of the output are zero


@functools.lru_cache(maxsize=32)
def _block_mask(seq_len: int, sliding_window: int | None, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def windowed(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < sliding_window)

    mask_mod = causal if sliding_window is None else windowed
    return create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    sliding_window: int | None,
    scale: float,
) -> torch.Tensor:
    """FlexAttention over block-sparse causal/window masks; the sink enters through the LSE.

    softmax with a sink = softmax without it * sigmoid(lse - sink), and the kernel's lse is
    differentiable. Training only (self-attention over one (T, T) block, no cache).
    """
    seq_len = q.shape[2]
    block_mask = _block_mask(seq_len, sliding_window, str(q.device))
    flex = _compiled_flex() if q.is_cuda else _eager_flex()
    out, aux = flex(
        q,
        k,
        v,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
        return_aux=_lse_request(),
    )
    lse = aux.lse  # (B, Hq, T), natural log
    compute = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for checks
    gate = torch.sigmoid(lse.to(compute) - sinks.to(compute).view(1, -1, 1))
    return (out.to(compute) * gate.unsqueeze(-1)).to(q.dtype)


def _eager_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _lse_request():
    from torch.nn.attention.flex_attention import AuxRequest

    return AuxRequest(lse=True)
