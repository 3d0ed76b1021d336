"""Which keys a forward pass sees: the KV cache, the left-padding bookkeeping (which key
slots are real tokens, the RoPE position of each token) and the attention masks built from
them once per forward pass. Training sees whole, unpadded sequences: plain causal masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_oss.model.attention import attention_mask
from gpt_oss.model.config import ModelConfig


@dataclass
class LayerCache:
    """Keys and values seen so far by one layer; sliding layers keep only the last window."""

    window: int | None = None  # None: a full-attention layer keeps every key
    keys: torch.Tensor | None = None  # (B, Hkv, S, D)
    values: torch.Tensor | None = None  # (B, Hkv, S, D)

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's k, v (B, Hkv, T, D); return every key and value the step attends,
        (B, Hkv, S + T, D). A sliding layer then keeps the window - 1 most recent: the next
        query sees those and itself."""
        if self.keys is not None:
            k = torch.cat([self.keys, k], dim=2)
            v = torch.cat([self.values, v], dim=2)
        drop = 0 if self.window is None else max(k.shape[2] - (self.window - 1), 0)
        self.keys, self.values = k[:, :, drop:], v[:, :, drop:]
        return k, v


@dataclass
class KVCache:
    """A whole model's cache, plus which cached key slots are real tokens (not left padding)."""

    layers: list[LayerCache]
    key_valid: torch.Tensor | None = None  # (B, length) over every index so far; None: all real
    length: int = 0  # tokens seen so far

    @classmethod
    def empty(cls, config: ModelConfig) -> KVCache:
        return cls([LayerCache(window) for window in layer_windows(config)])

    def key_index(self, window: int | None, new_tokens: int, device: torch.device) -> torch.Tensor:
        """Absolute index of every key a layer with this window attends in the next step, (S,):
        what LayerCache.extend keeps from before (all, or the last window - 1) and the new."""
        kept = self.length if window is None else min(self.length, window - 1)
        return torch.arange(self.length - kept, self.length + new_tokens, device=device)

    def extend_key_valid(
        self, key_valid: torch.Tensor | None, batch: int, new_tokens: int, device: torch.device
    ) -> torch.Tensor | None:
        """Append the new tokens' validity (B, T) (None: all real); returns (B, length + T),
        or None while no token so far is padding."""
        if key_valid is None and self.key_valid is None:
            return None
        old = self.key_valid
        if old is None:
            old = torch.ones(batch, self.length, dtype=torch.bool, device=device)
        if key_valid is None:
            key_valid = torch.ones(batch, new_tokens, dtype=torch.bool, device=device)
        self.key_valid = torch.cat([old, key_valid], dim=1)
        return self.key_valid


def layer_windows(config: ModelConfig) -> list[int | None]:
    """Each layer's attention window: sliding_window, or None for full attention."""
    return [config.sliding_window if t == "sliding_attention" else None for t in config.layer_types]


def rope_positions(query_index: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """RoPE positions of the queries: their index (1, T), or with left padding the count of
    real tokens before each (B, T), so a padded prompt rotates as it would alone."""
    if key_valid is None:
        return query_index[None]  # (1, T)
    counted = key_valid.long().cumsum(dim=1) - 1  # (B, S_total)
    return counted[:, query_index].clamp(min=0)  # (B, T)


def attention_masks(
    config: ModelConfig,
    query_index: torch.Tensor,
    key_valid: torch.Tensor | None,
    cache: KVCache | None,
) -> dict[int | None, torch.Tensor]:
    """One mask per attention window (None: full) for every layer of a forward pass:
    (B or 1, 1, T, S), True where query index query_index (T,) may attend a key, over the
    cache's keys and the new ones, never a left-padding slot (key_valid (B, S_total) False)."""
    masks = {}
    for window in set(layer_windows(config)):
        keys = query_index
        if cache is not None:
            keys = cache.key_index(window, len(query_index), query_index.device)  # (S,)
        valid = None if key_valid is None else key_valid[:, keys]  # (B, S)
        masks[window] = attention_mask(query_index, keys, window, valid)
    return masks
