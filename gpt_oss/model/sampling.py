"""Autoregressive generation: left-padded batches, a KV cache, greedy and sampled decoding.

`generate` runs one prefill over the (left-padded) prompts, then one token per step through
the cache; every row stops on its own at a stop token or after max_new_tokens. The sampling
controls are small pure functions on logits (B, V): temperature, top-k, top-p (nucleus).
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from gpt_oss.model.kv_cache import KVCache
from gpt_oss.model.model import GptOss
from gpt_oss.model.tokenizer import ENDOFTEXT_ID
from gpt_oss.training.metrics import synchronize

TokenCallback = Callable[[int, int], None]  # (row, token id), called as each token is produced


@dataclass
class SamplingConfig:
    """How the next token is chosen. temperature 0 = greedy (top_k and top_p then unused)."""

    temperature: float = 0.0
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = all

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        if not self.temperature >= 0:
            raise ValueError(
                f"temperature={self.temperature} is invalid: must be >= 0 (0 = greedy)"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} is invalid: must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} is invalid: must be in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """-inf everywhere but the top_k largest logits of each row (exactly k; ties broken by topk)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kept = torch.topk(logits, top_k, dim=-1).indices  # (B, k)
    return torch.full_like(logits, float("-inf")).scatter(-1, kept, logits.gather(-1, kept))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """-inf outside the nucleus: the most likely tokens whose probabilities first sum to top_p.

    A token is kept when the mass strictly before it is below top_p, so the top token always is.
    Exact, but sorts only the 256 most likely tokens when they hold top_p (usual for a trained
    model); otherwise the whole row (a full sort of 201k logits costs ~5 ms on a CPU).
    """
    if top_p >= 1.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    head_probs, head_ids = torch.topk(
        probs, min(256, logits.shape[-1]), dim=-1
    )  # (B, 256), descending
    if not bool((head_probs.sum(dim=-1) >= top_p).all()):
        head_probs, head_ids = torch.sort(probs, dim=-1, descending=True)  # (B, V)
    keep = (head_probs.cumsum(dim=-1) - head_probs) < top_p
    kept_logits = logits.gather(-1, head_ids).masked_fill(~keep, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, head_ids, kept_logits)


def sample_from(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of probs (B, V) by inverting the CDF: one uniform number per row, so
    it is cheap at a 201k vocabulary (torch.multinomial draws an exponential per entry).
    Zero-probability tokens are never drawn."""
    wide = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS has no float64
    cdf = probs.to(wide).cumsum(dim=-1)  # (B, V); float64 keeps the tail's small steps
    uniform = torch.rand(probs.shape[0], 1, generator=generator, dtype=wide, device=probs.device)
    draw = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)  # first index with cdf > u
    return draw.squeeze(-1).clamp(max=probs.shape[-1] - 1)


def sample_next(
    logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    logits = filter_top_p(filter_top_k(logits, sampling.top_k), sampling.top_p)
    return sample_from(torch.softmax(logits, dim=-1), generator)


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, key_valid), both (B, T_max): prompts right-aligned, key_valid False at pads."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt needs at least one token (prepend a start token to empty text)"
        )
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        valid[row, width - len(prompt) :] = True
    return ids.to(device), valid.to(device)


@dataclass
class Generation:
    """New tokens per prompt (stop token excluded) and how long prefill and decoding took."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "stop" (a stop token came) or "length" (max_new_tokens reached)
    prompt_tokens: int  # real prompt tokens, padding excluded
    prefill_seconds: float  # the prompt pass and the first token of every row
    decode_seconds: float  # every later step
    decode_tokens: int  # tokens the later steps produced for rows still running

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else float("nan")


class _Decoder:
    """Steps a batch forward: through the KV cache, or (use_cache=False) by recomputing the
    whole sequence each step, the reference the cache is tested against."""

    def __init__(self, model: GptOss, ids: torch.Tensor, key_valid: torch.Tensor, use_cache: bool):
        self.model = model
        self.cache = KVCache.empty(model.config) if use_cache else None
        self.ids = ids
        self.key_valid = None if bool(key_valid.all()) else key_valid  # no padding: the plain path

    def prefill(self) -> torch.Tensor:
        return self.model(self.ids, self.cache, self.key_valid, last_only=True)[:, -1]  # (B, V)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.model(tokens[:, None], self.cache, last_only=True)[:, -1]
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)  # (B, T + 1)
        if self.key_valid is not None:
            self.key_valid = torch.cat(
                [self.key_valid, self.key_valid.new_ones(len(tokens), 1)], dim=1
            )
        return self.model(self.ids, None, self.key_valid, last_only=True)[:, -1]


@torch.inference_mode()
def generate(
    model: GptOss,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    stop_tokens: Iterable[int] = (ENDOFTEXT_ID,),
    use_cache: bool = True,
    on_token: TokenCallback | None = None,
) -> Generation:
    """Continue each prompt (token ids) by up to max_new_tokens; see the module docstring.

    stop_tokens are model ids: with a compact vocabulary, <|endoftext|> is vocabulary.endoftext_id.
    seed makes sampling reproducible (a generator of its own; the global RNG is untouched).
    on_token(row, token) is called for every kept token as it is produced (streaming).
    """
    sampling = sampling or SamplingConfig()
    sampling.validate()
    config, device = model.config, model.lm_head.weight.device
    _check_lengths(prompts, max_new_tokens, config.vocab_size, config.max_position_embeddings)
    stops = set(stop_tokens)
    pad_id = ENDOFTEXT_ID if ENDOFTEXT_ID < config.vocab_size else 0  # never attended: any id works
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    ids, key_valid = left_pad(prompts, pad_id, device)
    decoder = _Decoder(model, ids, key_valid, use_cache)
    outputs: list[list[int]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    running = [True] * len(prompts)

    started = time.perf_counter()
    tokens = sample_next(decoder.prefill(), sampling, generator)
    synchronize(device)
    prefill_seconds = time.perf_counter() - started
    decode_tokens = 0
    for step in range(max_new_tokens):
        kept = _record(tokens.tolist(), stops, outputs, reasons, running, on_token)
        decode_tokens += kept if step else 0  # step 0's tokens came from the prefill
        if step == max_new_tokens - 1 or not any(running):
            break
        done = torch.tensor([not r for r in running], device=device)
        tokens = sample_next(decoder.step(tokens.masked_fill(done, pad_id)), sampling, generator)
    synchronize(device)
    decode_seconds = time.perf_counter() - started - prefill_seconds
    prompt_tokens = sum(len(p) for p in prompts)
    return Generation(
        outputs, reasons, prompt_tokens, prefill_seconds, decode_seconds, decode_tokens
    )


def _record(
    tokens: list[int],
    stops: set[int],
    outputs: list[list[int]],
    reasons: list[str],
    running: list[bool],
    on_token: TokenCallback | None,
) -> int:
    """Append each running row's token or stop the row; returns how many tokens were kept."""
    kept = 0
    for row, token in enumerate(tokens):
        if not running[row]:
            continue
        if token in stops:
            running[row], reasons[row] = False, "stop"
            continue
        outputs[row].append(token)
        kept += 1
        if on_token is not None:
            on_token(row, token)
    return kept


def _check_lengths(
    prompts: Sequence[Sequence[int]], max_new_tokens: int, vocab_size: int, max_positions: int
) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 1")
    longest = max((len(p) for p in prompts), default=0)
    if longest + max_new_tokens > max_positions:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} "
            f"exceeds the model's "
            f"max_position_embeddings={max_positions}"
        )
    for prompt in prompts:
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"prompt token ids {bad[:5]} are outside the model's vocabulary [0, {vocab_size})"
            )


class StreamDecoder:
    """Token ids -> text as it becomes printable: bytes are held back until they form complete
    UTF-8 characters (one character may span several tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """The text that token completes (often "", mid-character)."""
        return self._utf8.decode(self.tokenizer.decode_single_token_bytes(token))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
