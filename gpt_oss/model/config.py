"""The typed model configuration: field names follow the gpt-oss release's config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from gpt_oss.validation import ConfigError, check_fields, ranged

LAYER_TYPES = ("sliding_attention", "full_attention")
ATTN_IMPLS = ("eager", "sdpa", "flex")
MOE_IMPLS = ("loop", "grouped")
BALANCING = ("aux_loss", "bias", "none")
# Fields that choose kernels, not weights or maths: a checkpoint loads or resumes under any.
IMPLEMENTATION_FIELDS = ("attn_impl", "moe_impl", "loss_chunk_tokens")


def resolve_device(name: str, option: str = "device") -> torch.device:
    """auto = cuda when present, else cpu; an unavailable cuda is an error (naming option), not
    a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"{option}={name!r} is invalid: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{option}={name!r} is invalid: CUDA is not available here (use cpu or auto)"
        )
    return device


@dataclass
class ModelConfig:
    """Shape and switches of a GPT-OSS model. Defaults are gpt-oss-20b."""

    # None (null in conf/model/*.yaml) = follow the data's vocabulary (data.vocabulary):
    # resolved by the entry point once the data is known; a model is built from an int only.
    vocab_size: int | None = ranged(201088, "[1, inf)")
    hidden_size: int = ranged(2880, "[1, inf)")
    intermediate_size: int = ranged(2880, "[1, inf)")  # width of each expert
    num_hidden_layers: int = ranged(24, "[1, inf)")
    num_attention_heads: int = ranged(64, "[1, inf)")
    num_key_value_heads: int = ranged(8, "[1, inf)")
    head_dim: int = ranged(64, "[1, inf)")
    num_experts: int = ranged(32, "[1, inf)")
    experts_per_token: int = ranged(4, "[1, inf)")
    sliding_window: int = ranged(128, "[1, inf)")  # a query sees itself and the 127 keys before it
    # None = the release's pattern: even layers sliding, odd layers full.
    layer_types: list[str] | None = None
    max_position_embeddings: int = ranged(131072, "[1, inf)")
    rope_theta: float = ranged(150000.0, "(0, inf)")
    # YaRN: the release's names (rope_ntk_beta = beta_fast, rope_ntk_alpha = beta_slow), both
    # rotation counts, so > 0 (YaRN takes their logarithm). factor 1 = plain RoPE.
    rope_scaling_factor: float = ranged(32.0, "[1, inf)")
    rope_ntk_alpha: float = ranged(1.0, "(0, inf)")
    rope_ntk_beta: float = ranged(32.0, "(0, inf)")
    initial_context_length: int = ranged(4096, "[1, inf)")
    swiglu_limit: float = ranged(7.0, "(0, inf)")
    swiglu_alpha: float = ranged(1.702, "(0, inf)")
    rms_norm_eps: float = ranged(1e-5, "(0, inf)")
    initializer_range: float = ranged(0.02, "(0, inf)")  # std of the normal initialisation
    # Round YaRN's ramp ends to whole pairs (transformers' `truncate`; absent there means true).
    # The release trains and writes false.
    rope_truncate: bool = False
    # Variants from the seed, off in the release.
    qk_norm: bool = False
    tie_embeddings: bool = False
    scale_embeddings: bool = False
    # Training additions (not in the release). "aux_loss": Switch-style loss with
    # router_aux_loss_coef; "bias": aux-loss-free balancing through a per-expert routing bias.
    balancing: str = "aux_loss"
    router_aux_loss_coef: float = ranged(0.01, "[0, inf)")
    router_z_loss_coef: float = ranged(0.001, "[0, inf)")
    expert_bias_rate: float = ranged(0.001, "[0, inf)")  # step size of the "bias" balancing update
    # Dropout on the residual stream while training (GPT-NeoX's and Falcon's hidden_dropout): on
    # the embeddings and on each attention and MoE output before it is added. A regulariser for
    # many passes over little text (on the README's CPU run tying and weight decay did better:
    # README, "Why these settings"); inactive in eval mode, so the model computes what
    # transformers' GptOss computes, and not written to config.json.
    hidden_dropout: float = ranged(0.0, "[0, 1)")
    # Implementations: each fast path is tested equal to the plain one ("eager", "loop").
    attn_impl: str = "sdpa"
    moe_impl: str = "grouped"
    loss_chunk_tokens: int = ranged(4096, "[0, inf)")  # 0 = whole-batch logits (plain path)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = release_layer_pattern(self.num_hidden_layers)
        else:
            self.layer_types = list(self.layer_types)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible field: its declared range, then the
        checks across fields."""
        check_fields(self, "model")
        if self.experts_per_token > self.num_experts:
            raise ConfigError(
                f"model.experts_per_token={self.experts_per_token} is invalid: must be in "
                f"[1, num_experts={self.num_experts}]"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"model.num_attention_heads={self.num_attention_heads} is invalid: must be a "
                f"multiple of num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model.head_dim={self.head_dim} is invalid: RoPE needs an even head_dim"
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"model.layer_types has {len(self.layer_types)} entries but "
                f"num_hidden_layers={self.num_hidden_layers}: give one type per layer"
            )
        for index, kind in enumerate(self.layer_types):
            if kind not in LAYER_TYPES:
                raise ConfigError(
                    f"model.layer_types[{index}]={kind!r} is invalid: valid types are {LAYER_TYPES}"
                )
        for name, valid in (
            ("attn_impl", ATTN_IMPLS),
            ("moe_impl", MOE_IMPLS),
            ("balancing", BALANCING),
        ):
            if getattr(self, name) not in valid:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)!r} is invalid: valid are {valid}"
                )
        if not isinstance(self.rope_truncate, bool):
            raise ConfigError(
                f"model.rope_truncate={self.rope_truncate!r} is invalid: must be true or false"
            )

    def require_vocab_size(self) -> int:
        """vocab_size, or ConfigError when it is still null (to follow data not yet prepared)."""
        if self.vocab_size is None:
            raise ConfigError(
                "model.vocab_size is null (it follows the data's vocabulary): resolve it from the "
                "prepared data (gpt_oss.train does) or give model.vocab_size=N"
            )
        return self.vocab_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config keys {unknown}; valid keys are {sorted(known)}"
            )
        return cls(**values)

    @property
    def yarn_attention_scale(self) -> float:
        """YaRN's factor on cos and sin: 0.1 * ln(factor) + 1 (1 when not scaling)."""
        factor = self.rope_scaling_factor
        return 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def release_layer_pattern(num_layers: int) -> list[str]:
    """gpt-oss alternates: even layers sliding-window, odd layers full attention."""
    return [LAYER_TYPES[i % 2] for i in range(num_layers)]


def layer_pattern(name: str, num_layers: int) -> list[str]:
    """Named layer-type patterns for sweeps: alternating, all_full, all_sliding, one_in_four."""
    patterns = {
        "alternating": release_layer_pattern(num_layers),
        "all_full": ["full_attention"] * num_layers,
        "all_sliding": ["sliding_attention"] * num_layers,
        # one full layer for every three sliding ones, the full one last in each group of 4
        "one_in_four": [
            "full_attention" if i % 4 == 3 else "sliding_attention" for i in range(num_layers)
        ],
    }
    if name not in patterns:
        raise ConfigError(f"layer pattern {name!r} is unknown: valid are {sorted(patterns)}")
    return patterns[name]


__all__ = ["ModelConfig", "ConfigError", "layer_pattern", "release_layer_pattern"]
