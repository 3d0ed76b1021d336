"""The GPT-OSS architecture. Module attribute names equal the Hugging Face checkpoint keys
(less the leading "model."), so import and export are a rename, not a conversion."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from gpt_oss.model.attention import attention_eager, attention_flex, attention_mask, attention_sdpa
from gpt_oss.model.config import ModelConfig
from gpt_oss.model.losses import (
    linear_cross_entropy,
    load_balancing_loss,
    router_z_loss,
)
from gpt_oss.model.moe import MoE, Routing, expert_counts


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 with a learnable scale."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32).to(x.dtype)


def yarn_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair rotation frequencies with YaRN: interpolate the slow pairs, keep the fast ones."""
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

    low = max(correction_dim(config.rope_ntk_beta), 0.0)
    high = min(correction_dim(config.rope_ntk_alpha), dim - 1.0)
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
        angles = positions[..., None].float() * self.inv_freq  # (B or 1, T, D/2)
        return (angles.cos() * self.scale).to(dtype), (angles.sin() * self.scale).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split (NeoX) rotation; x (B, H, T, D), cos/sin (B or 1, T, D/2)."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, D/2)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


@dataclass
class LayerCache:
    """Keys and values seen so far by one layer; sliding layers keep only the last window."""

    keys: torch.Tensor | None = None  # (B, Hkv, S, D)
    values: torch.Tensor | None = None
    index: torch.Tensor | None = None  # (S,) absolute index of each cached key
    window: int | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor):
        if self.keys is not None:
            k = torch.cat([self.keys, k], dim=2)
            v = torch.cat([self.values, v], dim=2)
            index = torch.cat([self.index, index])
        drop = 0 if self.window is None else max(k.shape[2] - (self.window - 1), 0)
        self.keys, self.values, self.index = k[:, :, drop:], v[:, :, drop:], index[drop:]
        return k, v, index


@dataclass
class KVCache:
    """A whole model's cache, plus which cached key slots are real tokens (not left padding)."""

    layers: list[LayerCache]
    key_valid: torch.Tensor | None = None  # (B, S_total) over every index so far
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig) -> KVCache:
        windows = [
            config.sliding_window if t == "sliding_attention" else None for t in config.layer_types
        ]
        return cls([LayerCache(window=w) for w in windows])


@dataclass
class Step:
    """What one forward pass needs besides the activations: positions, masks, cache."""

    cos: torch.Tensor
    sin: torch.Tensor
    query_index: torch.Tensor  # (T,)
    key_valid: torch.Tensor | None  # (B, S_total) or None when every token is real
    cache: KVCache | None
    masks: dict = field(default_factory=dict)


class Attention(nn.Module):
    """Grouped-query attention with biases, RoPE, per-head sinks and an optional window."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.head_dim = config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.impl = config.attn_impl
        sliding = config.layer_types[layer_index] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None
        H, D = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(H, self.num_heads * D)
        self.k_proj = nn.Linear(H, self.num_kv_heads * D)
        self.v_proj = nn.Linear(H, self.num_kv_heads * D)
        self.o_proj = nn.Linear(self.num_heads * D, H)
        self.sinks = nn.Parameter(torch.zeros(self.num_heads))
        if config.qk_norm:
            self.q_norm = RMSNorm(D, config.rms_norm_eps)
            self.k_norm = RMSNorm(D, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        B, T, _ = x.shape
        q = (
            self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        )  # (B, Hq, T, D)
        k = (
            self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        )  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, step.cos, step.sin), apply_rotary(k, step.cos, step.sin)
        key_index = step.query_index
        if step.cache is not None:
            k, v, key_index = step.cache.layers[self.layer_index].extend(k, v, step.query_index)
        out = self._attend(q, k, v, step, key_index)  # (B, Hq, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def _attend(self, q, k, v, step: Step, key_index: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(self.head_dim)
        # FlexAttention has no CPU (or MPS) backward: training there takes SDPA (tested equal).
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        flex_usable = q.device.type not in ("cpu", "mps") or not backward
        if self.impl == "flex" and flex_usable and step.cache is None and step.key_valid is None:
            return attention_flex(q, k, v, self.sinks, self.sliding_window, scale)
        mask_key = self.sliding_window  # layers of one window share their keys' indices
        if mask_key not in step.masks:
            valid = None
            if step.key_valid is not None:
                valid = step.key_valid[:, key_index]
            step.masks[mask_key] = attention_mask(
                step.query_index, key_index, self.sliding_window, valid
            )
        mask = step.masks[mask_key]
        if self.impl == "eager":
            return attention_eager(q, k, v, self.sinks, mask, scale)
        return attention_sdpa(q, k, v, self.sinks, mask, scale)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + moe(norm(x))."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config)

    def forward(self, x: torch.Tensor, step: Step) -> tuple[torch.Tensor, Routing]:
        x = x + self.self_attn(self.input_layernorm(x), step)
        moe_out, routing = self.mlp(self.post_attention_layernorm(x))
        return x + moe_out, routing


@dataclass
class LossOutput:
    """The training objective and what it is made of."""

    loss: torch.Tensor  # what backward runs on: ce + aux terms
    ce: torch.Tensor  # mean next-token cross-entropy (nats)
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    expert_counts: torch.Tensor  # (layers, experts) token assignments this batch


class GptOss(nn.Module):
    """GPT-OSS decoder: embeddings, blocks, final norm, untied unembedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(config)
        self.compiled_loss = False  # Trainer(compile=True): the chunked loss's softmax compiled too
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) matrices; residual outputs scaled by 1/sqrt(2 * layers)."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "experts.down_proj")):
                nn.init.normal_(p, 0.0, residual_std)
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:  # biases and sinks
                nn.init.zeros_(p)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        key_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[Routing]]:
        """Final-norm hidden states (B, T, H) and each layer's routing.

        key_valid (B, T): False at left-padding positions; with a cache it extends the cache's.
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        query_index = torch.arange(start, start + T, device=input_ids.device)
        key_valid = self._extend_key_valid(cache, key_valid, B, T, input_ids.device)
        positions = self._positions(query_index, key_valid)
        x = self.embed_tokens(input_ids)  # (B, T, H)
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.hidden_size)
        cos, sin = self.rotary(positions, x.dtype)
        step = Step(cos, sin, query_index, key_valid, cache)
        routings = []
        for block in self.layers:
            x, routing = block(x, step)
            routings.append(routing)
        if cache is not None:
            cache.length += T
        return self.norm(x), routings

    @staticmethod
    def _extend_key_valid(cache, key_valid, B, T, device):
        if cache is None:
            return key_valid
        if key_valid is None and cache.key_valid is None:
            return None
        old = cache.key_valid
        if old is None:
            old = torch.ones(B, cache.length, dtype=torch.bool, device=device)
        new = (
            key_valid
            if key_valid is not None
            else torch.ones(B, T, dtype=torch.bool, device=device)
        )
        cache.key_valid = torch.cat([old, new], dim=1)
        return cache.key_valid

    @staticmethod
    def _positions(query_index: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        """RoPE positions: the index, or with left padding the count of real tokens before."""
        if key_valid is None:
            return query_index[None]  # (1, T)
        counted = key_valid.long().cumsum(dim=1) - 1  # (B, S_total)
        return counted[:, query_index].clamp(min=0)  # (B, T)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        key_valid: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or (B, 1, vocab) for the last position when last_only."""
        hidden, _ = self.hidden_states(input_ids, cache, key_valid)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        """Next-token cross-entropy plus the configured router losses."""
        hidden, routings = self.hidden_states(input_ids)
        ce = linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),
            self.lm_head.weight,
            targets.reshape(-1),
            self.config.loss_chunk_tokens,
            compiled=self.compiled_loss,
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
        """Aux-loss-free balancing: nudge under-loaded experts up and over-loaded ones down."""
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
