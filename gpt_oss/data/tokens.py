"""The token-file format: one `<split>.bin` of little-endian uint32 o200k_harmony ids with
`<|endoftext|>` before each document, and beside it `<split>.json`, the metadata (tokenizer,
vocabulary size, source, counts, sha256) checked at every load. Writes are atomic.

Checksums: the size is checked at every load; the sha256 too for files up to 2 GiB under
`verify_checksum="auto"` (the default). sha256 runs at ~1.8 GB/s on one core here, so that is
at most ~1.2 s, and it covers the full TinyStories train split (~1.9 GB). "always" and
"never" force it either way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt_oss.data.config import DataError
from gpt_oss.files import sha256_file, temporary_path
from gpt_oss.model.tokenizer import ENDOFTEXT_ID, get_tokenizer

FORMAT = "gpt-oss-lab/tokens/1"
AUTO_CHECKSUM_MAX_BYTES = 2 * 1024**3  # ~1.2 s of sha256 on this machine's one core
TOKEN_DTYPE = np.dtype("<u4")  # little-endian uint32 on every host: ids reach 201087


def _should_verify(policy: str, num_bytes: int) -> bool:
    return policy == "always" or (policy == "auto" and num_bytes <= AUTO_CHECKSUM_MAX_BYTES)


def read_metadata(bin_path: Path) -> dict[str, Any] | None:
    """The metadata beside a .bin, or None when there is none (never prepared or interrupted)."""
    meta_path = bin_path.with_suffix(".json")
    if not meta_path.is_file():
        return None
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(
            f"{meta_path} is unreadable ({error}); delete it to prepare again"
        ) from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise DataError(f"{meta_path} is not gpt-oss-lab token metadata (expected format {FORMAT})")
    return metadata


def metadata_checksum(metadata: dict[str, Any]) -> str:
    """sha256 of the metadata's other fields (canonical JSON), stored as metadata_sha256: an
    edited count (num_bytes changes bits per byte) is refused like a damaged .bin."""
    fields = {k: v for k, v in metadata.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def write_metadata(bin_path: Path, metadata: dict[str, Any]) -> None:
    """Write `<split>.json` beside a .bin atomically, with its metadata_sha256 added: every
    token file's metadata is written here, so every one is covered."""
    metadata = metadata | {"metadata_sha256": metadata_checksum(metadata)}
    atomic_write_text(bin_path.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")


def _check_metadata(bin_path: Path, metadata: dict[str, Any]) -> None:
    meta_path = bin_path.with_suffix(".json")
    if "metadata_sha256" not in metadata:
        raise DataError(
            f"{meta_path} has no metadata_sha256 (written by an older gpt-oss-lab): delete "
            f"{bin_path.parent} to prepare again"
        )
    if metadata["metadata_sha256"] != metadata_checksum(metadata):
        raise DataError(
            f"{meta_path} was edited or is corrupt: its fields no longer match its "
            f"metadata_sha256. Delete {bin_path.parent} to prepare again."
        )


@dataclass
class TokenFile:
    """One split's tokens: a read-only uint32 memmap plus the metadata that describes it."""

    path: Path
    metadata: dict[str, Any]
    tokens: np.memmap

    @classmethod
    def open(cls, path: str | Path, verify_checksum: str = "auto") -> TokenFile:
        """Open a prepared .bin; DataError naming the file when it is missing, truncated or
        corrupt."""
        path = Path(path)
        metadata = read_metadata(path)
        if metadata is None:
            raise DataError(
                f"{path.with_suffix('.json')} does not exist: {path} was never fully prepared"
            )
        _check_metadata(path, metadata)
        expected = int(metadata["num_tokens"]) * 4
        if not path.is_file():
            raise DataError(f"{path} is missing although {path.with_suffix('.json')} describes it")
        size = path.stat().st_size
        if size != expected:
            raise DataError(
                f"{path} is truncated or corrupt: {size} bytes, but its metadata says "
                f"{metadata['num_tokens']} tokens = {expected} bytes. "
                f"Delete {path.parent} to prepare again."
            )
        if _should_verify(verify_checksum, size) and sha256_file(path) != metadata["sha256"]:
            raise DataError(
                f"{path} is corrupt: its sha256 differs from the one in "
                f"{path.with_suffix('.json')}. "
                f"Delete {path.parent} to prepare again."
            )
        return cls(path, metadata, np.memmap(path, dtype=TOKEN_DTYPE, mode="r"))

    def __len__(self) -> int:
        return int(self.metadata["num_tokens"])

    @property
    def num_bytes(self) -> int:
        """UTF-8 bytes of the original documents (for bits per byte)."""
        return int(self.metadata["num_bytes"])

    @property
    def num_documents(self) -> int:
        return int(self.metadata["num_documents"])

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / len(self)


# ----------------------------------------------------------------------------------------------
# The layout: <|endoftext|> before every document


def encode_text(encoding: Any, text: str) -> tuple[np.ndarray, int]:
    """Tokens (ordinary text: a literal "<|endoftext|>" is not special) and UTF-8 byte count."""
    try:
        num_bytes = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (broken UTF-16 upstream): replace them, as tiktoken's own encode does.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        num_bytes = len(text.encode("utf-8"))
    return encoding.encode_to_numpy(text, disallowed_special=()), num_bytes


def encode_documents(texts: Sequence[str | None]) -> tuple[np.ndarray, int, int]:
    """(uint32 tokens with <|endoftext|> before each document, documents, UTF-8 bytes); empty
    and missing texts are skipped."""
    encoding = get_tokenizer()
    separator = np.array([ENDOFTEXT_ID], dtype=np.uint32)
    pieces: list[np.ndarray] = []
    num_documents = num_bytes = 0
    for text in texts:
        if not text:
            continue
        tokens, text_bytes = encode_text(encoding, text)
        pieces += [separator, tokens]
        num_documents += 1
        num_bytes += text_bytes
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint32)
    return tokens, num_documents, num_bytes


# ----------------------------------------------------------------------------------------------
# Atomic writes


def fsync_directory(directory: Path) -> None:
    """Make renames durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file, fsync, then rename over `path`."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
