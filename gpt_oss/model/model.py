"""The GPT-OSS architecture. Module attribute names equal the Hugging Face checkpoint keys
(less the leading "model."), so import and export are a rename, not a conversion.

Shapes: B batch, T new tokens, S keys attended (T, or more with a KV cache), H hidden size,
Hq / Hkv query / key-value heads, D head_dim, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from gpt_oss.model.attention import attend, select_kernel
from gpt_oss.model.config import ModelConfig
from gpt_oss.model.kv_cache import KVCache, attention_masks, layer_windows, rope_positions
from gpt_oss.model.losses import (
    LossOutput,
    linear_cross_entropy,
    load_balancing_loss,
    router_z_loss,
)
from gpt_oss.model.moe import MoE, Routing, expert_counts
from gpt_oss.model.roles import Role, parameter_roles


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 with a learnable scale."""

    PARAMETER_ROLES: ClassVar[dict[str, Role]] = {"weight": Role.NORM}

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., size) -> (..., size), in x's dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32).to(x.dtype)


def yarn_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair rotation frequencies (D/2,) with YaRN: interpolate slow pairs, keep fast ones."""
    dim, base = config.head_dim, config.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    extrapolation = 1.0 / base**exponents  # (D/2,)
    factor = config.rope_scaling_factor
    if factor <= 1.0:
        return extrapolation
    interpolation = 1.0 / (factor * base**exponents)

    def correction_dim(rotations: float) -> float:  # the pair index that turns `rotations` times
        context = config.initial_context_length
        return dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(config.rope_ntk_beta), correction_dim(config.rope_ntk_alpha)
    if config.rope_truncate:  # the ramp starts and ends on whole pairs
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0.0), min(high, dim - 1.0)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1 = extrapolate (fast pairs), 0 = interpolate
    return interpolation * (1.0 - keep) + extrapolation * keep


class Rotary(nn.Module):
    """cos and sin tables for absolute positions, times YaRN's attention scale."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.scale = config.yarn_attention_scale
        self.register_buffer("inv_freq", yarn_inverse_frequencies(config), persistent=False)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B or 1, T) -> cos, sin (B or 1, T, D/2) in dtype."""
        angles = positions[..., None].float() * self.inv_freq  # (B or 1, T, D/2)
        return (angles.cos() * self.scale).to(dtype), (angles.sin() * self.scale).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split (NeoX) rotation; x (B, H, T, D), cos/sin (B or 1, T, D/2)."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, D/2)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


@dataclass
class Step:
    """What every layer of one forward pass shares besides the activations."""

    cos: torch.Tensor  # (B or 1, T, D/2)
    sin: torch.Tensor
    kernel: str  # attention.select_kernel's choice: "eager", "sdpa" or "flex"
    masks: dict[int | None, torch.Tensor]  # by sliding window (None: full), (B or 1, 1, T, S)
    cache: KVCache | None


class Attention(nn.Module):
    """Grouped-query attention with biases, RoPE, per-head sinks and an optional window."""

    PARAMETER_ROLES: ClassVar[dict[str, Role]] = {
        **{f"{proj}.weight": Role.MATRIX for proj in ("q_proj", "k_proj", "v_proj", "o_proj")},
        **{f"{proj}.bias": Role.BIAS for proj in ("q_proj", "k_proj", "v_proj", "o_proj")},
        "sinks": Role.SINK,
    }

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.sliding_window = layer_windows(config)[layer_index]
        H, D = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = D
        self.q_proj = nn.Linear(H, self.num_heads * D)
        self.k_proj = nn.Linear(H, self.num_kv_heads * D)
        self.v_proj = nn.Linear(H, self.num_kv_heads * D)
        self.o_proj = nn.Linear(self.num_heads * D, H)
        self.sinks = nn.Parameter(torch.zeros(self.num_heads))
        self.q_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        """x (B, T, H) -> (B, T, H); with a cache, its layer's keys and values grow."""
        (B, T, _), Hq, Hkv, D = x.shape, self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, Hq, D).transpose(1, 2)  # (B, Hq, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, step.cos, step.sin), apply_rotary(k, step.cos, step.sin)
        if step.cache is not None:  # the earlier tokens' keys too: (B, Hkv, S, D)
            k, v = step.cache.layers[self.layer_index].extend(k, v)
        mask = step.masks.get(self.sliding_window)
        out = attend(q, k, v, self.sinks, mask, self.sliding_window, step.kernel)  # (B, Hq, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, Hq * D))  # (B, T, H)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + moe(norm(x))."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config)
        self.dropout = nn.Dropout(config.hidden_dropout)  # identity in eval mode

    def forward(self, x: torch.Tensor, step: Step) -> tuple[torch.Tensor, Routing]:
        """x (B, T, H) -> (B, T, H), and the MoE's routing of the B*T tokens."""
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), step))
        moe_out, routing = self.mlp(self.post_attention_layernorm(x))
        return x + self.dropout(moe_out), routing


class GptOss(nn.Module):
    """GPT-OSS decoder: embeddings, blocks, final norm, untied unembedding."""

    PARAMETER_ROLES: ClassVar[dict[str, Role]] = {
        "embed_tokens.weight": Role.EMBEDDING,
        "lm_head.weight": Role.HEAD,  # with tie_embeddings it is embed_tokens.weight
    }
    RESIDUAL_OUTPUTS = ("o_proj.weight", "experts.down_proj")  # write into the residual stream

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        config.require_vocab_size()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_dropout = nn.Dropout(config.hidden_dropout)  # identity in eval mode
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(config)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) weights, residual outputs scaled by 1/sqrt(2 * layers);
        biases (stacked expert biases included) and sinks zero; norm scales one."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        roles = parameter_roles(self)
        for name, p in self.named_parameters():
            if roles[name] in (Role.BIAS, Role.SINK):
                nn.init.zeros_(p)
            elif roles[name] is Role.NORM:
                nn.init.ones_(p)
            else:
                residual = name.endswith(self.RESIDUAL_OUTPUTS)
                nn.init.normal_(p, 0.0, residual_std if residual else std)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        key_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[Routing]]:
        """input_ids (B, T) -> final-norm hidden states (B, T, H) and each layer's routing.

        cache: extended by this step (generation). key_valid (B, T): False at left-padding
        positions; with a cache it extends the cache's.
        """
        (B, T), config = input_ids.shape, self.config
        start = 0 if cache is None else cache.length
        query_index = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        if cache is not None:
            key_valid = cache.extend_key_valid(key_valid, B, T, input_ids.device)  # (B, S_total)
        x = self.embed_tokens(input_ids)  # (B, T, H)
        if config.scale_embeddings:
            x = x * math.sqrt(config.hidden_size)
        x = self.embed_dropout(x)
        cos, sin = self.rotary(rope_positions(query_index, key_valid), x.dtype)
        backward = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        plain = cache is None and key_valid is None
        kernel = select_kernel(config.attn_impl, plain, x.device, backward)
        masks = {} if kernel == "flex" else attention_masks(config, query_index, key_valid, cache)
        step = Step(cos, sin, kernel, masks, cache)
        routings = []
        for block in self.layers:
            x, routing = block(x, step)
            routings.append(routing)
        if cache is not None:
            cache.length += T
        return self.norm(x), routings

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        key_valid: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V), or (B, 1, V) for the last position."""
        hidden, _ = self.hidden_states(input_ids, cache, key_valid)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden)

    def loss(
        self, input_ids: torch.Tensor, targets: torch.Tensor, compiled: bool = False
    ) -> LossOutput:
        """Next-token cross-entropy of input_ids (B, T) against targets (B, T), plus the
        configured router losses. compiled: the chunked loss's softmax runs torch.compile'd
        (as with trainer.compile=true)."""
        hidden, routings = self.hidden_states(input_ids)
        ce = linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),  # (B*T, H)
            self.lm_head.weight,
            targets.reshape(-1),
            self.config.loss_chunk_tokens,
            compiled=compiled,
        )
        cfg = self.config
        aux = torch.stack([load_balancing_loss(r, cfg.num_experts) for r in routings]).mean()
        z = torch.stack([router_z_loss(r) for r in routings]).mean()
        counts = torch.stack([expert_counts(r.experts, cfg.num_experts) for r in routings])
        total = ce + cfg.router_z_loss_coef * z
        if cfg.balancing == "aux_loss":
            total = total + cfg.router_aux_loss_coef * aux
        return LossOutput(total, ce.detach(), aux.detach(), z.detach(), counts)

    @torch.no_grad()
    def update_selection_bias(self, counts: torch.Tensor) -> None:
        """Aux-loss-free balancing: nudge under-loaded experts up and over-loaded ones down.
        counts (layers, experts): token assignments of the last batch."""
        if self.config.balancing != "bias":
            return
        for block, layer_counts in zip(self.layers, counts, strict=True):
            load = layer_counts.float()
            block.mlp.router.selection_bias += self.config.expert_bias_rate * torch.sign(
                load.mean() - load
            )


def build_model(config: ModelConfig, meta: bool = False) -> GptOss:
    """The model, initialised on the CPU; on the meta device (no memory) for FSDP's meta_init."""
    if not meta:
        return GptOss(config)
    with torch.device("meta"):
        return GptOss(config)
