"""Loaders: random training windows (a pure function of seed and batch index, so resuming is
exact) and the fixed validation windows, as (inputs, targets) batches on the device."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from gpt_oss.data.config import DataError
from gpt_oss.data.tokens import TokenFile


def _token_array(tokens: TokenFile | np.ndarray) -> np.ndarray:
    array = tokens.tokens if isinstance(tokens, TokenFile) else tokens
    if array.ndim != 1:
        raise DataError(f"tokens must be a flat array, got shape {array.shape}")
    return array


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{name}={value!r} is invalid: must be a positive integer")


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously with the previous step's compute.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def windows_to_batch(
    tokens: np.ndarray, starts: np.ndarray, seq_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) int64 of shape (len(starts), seq_len); targets are inputs shifted by
    one."""
    index = starts[:, None] + np.arange(seq_len + 1)  # (batch, seq_len + 1)
    window = tokens[index].astype(np.int64)
    inputs, targets = np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
    return _to_device(inputs, device), _to_device(targets, device)


class TrainLoader:
    """Random training windows; batch b is a pure function of (seed, b), so resuming is exact.

    Each batch draws batch_size * world_size start offsets from a generator seeded with
    (seed, batch index); rank r takes its own slice of them, so ranks see distinct windows and
    world_size=1 is the plain stream. The state is just the next batch index.
    """

    def __init__(
        self,
        tokens: TokenFile | np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_positive(batch_size=batch_size, seq_len=seq_len, world_size=world_size)
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} is invalid: must be in [0, world_size={world_size})")
        self.tokens = _token_array(tokens)
        if len(self.tokens) < seq_len + 1:
            raise DataError(
                f"{len(self.tokens)} tokens are too few for one window of "
                f"seq_len={seq_len} (+1 target)"
            )
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, int(seed)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.batch_index = 0

    @property
    def num_windows(self) -> int:
        """Distinct start offsets: every window needs seq_len + 1 tokens."""
        return len(self.tokens) - self.seq_len

    def starts(self, batch_index: int) -> np.ndarray:
        """This rank's window offsets for a batch (independent of any loader state)."""
        generator = np.random.default_rng([self.seed % 2**64, batch_index])
        offsets = generator.integers(0, self.num_windows, size=self.batch_size * self.world_size)
        return offsets[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets), each int64 of shape (batch_size, seq_len)."""
        starts = self.starts(self.batch_index)
        self.batch_index += 1
        return windows_to_batch(self.tokens, starts, self.seq_len, self.device)

    def state_dict(self) -> dict[str, int]:
        """Everything needed to continue the stream exactly (goes into the checkpoint)."""
        return {
            "batch_index": self.batch_index,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; DataError if the saved stream differs from this one.

        The rank is not compared: every rank loads the same checkpoint and keeps its own slice.
        """
        for key in ("seed", "batch_size", "seq_len", "world_size", "num_tokens"):
            if state[key] != self.state_dict()[key]:
                raise DataError(
                    f"cannot resume the training data stream: saved {key}={state[key]}, "
                    f"this loader has {key}={self.state_dict()[key]}"
                )
        self.batch_index = int(state["batch_index"])


class ValLoader:
    """Sequential validation windows, the same batches every pass.

    Windows start at 0, stride, 2*stride, ... (stride defaults to seq_len: non-overlapping,
    every target token scored once; a smaller stride scores overlapping tokens again). Tokens
    after the last whole window are not scored. `max_batches` caps the pass.
    """

    def __init__(
        self,
        tokens: TokenFile | np.ndarray,
        batch_size: int,
        seq_len: int,
        stride: int | None = None,
        max_batches: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        stride = seq_len if stride is None else stride
        _check_positive(stride=stride)
        if max_batches is not None:
            _check_positive(max_batches=max_batches)
        self.tokens = _token_array(tokens)
        if len(self.tokens) < seq_len + 1:
            raise DataError(
                f"{len(self.tokens)} validation tokens are too few for one window of "
                f"seq_len={seq_len}"
            )
        # UTF-8 bytes per token of the split, for the trainer's bits per byte (None: unknown)
        self.bytes_per_token = tokens.bytes_per_token if isinstance(tokens, TokenFile) else None
        self.batch_size, self.seq_len, self.stride = batch_size, seq_len, stride
        self.device = torch.device(device)
        num_windows = (len(self.tokens) - seq_len - 1) // stride + 1
        if max_batches is not None:
            num_windows = min(num_windows, max_batches * batch_size)
        self.window_starts = np.arange(num_windows, dtype=np.int64) * stride

    def rank_batches(
        self, rank: int, world_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(inputs, targets, weight): rank `rank`'s slice of each batch, so `world_size` ranks
        together score exactly the windows one process scores. A rank whose slice of the last
        batch is empty scores a window with weight 0: every rank runs every forward (FSDP
        all-gathers). One process (world_size 1) gets the plain batches with weight 1."""
        per_rank = math.ceil(self.batch_size / world_size)
        for first in range(0, len(self.window_starts), self.batch_size):
            batch = self.window_starts[first : first + self.batch_size]
            starts = batch[rank * per_rank : (rank + 1) * per_rank]
            weight = 1 if len(starts) else 0
            inputs, targets = windows_to_batch(
                self.tokens, starts if weight else batch[:1], self.seq_len, self.device
            )
            yield inputs, targets, weight

    @property
    def num_target_tokens(self) -> int:
        """Target tokens scored in one pass (the denominator of the mean loss)."""
        return len(self.window_starts) * self.seq_len
