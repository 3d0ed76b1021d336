"""Data: a text source -> flat uint32 token files (cached, checked) -> training and eval loaders.

Sources (`DataConfig.source`): "hub" (a Hugging Face dataset, TinyStories by default), "files"
(local .txt / .jsonl / .json / .parquet read through `datasets`) and "synthetic" (the built-in
story generator, gpt_oss/synthetic.py).

Token files: one `<split>.bin` per split holding every document's o200k_harmony tokens as
little-endian uint32 (ids reach 201087), with `<|endoftext|>` (199999) BEFORE each document, so
a window that starts on it begins a story and `[199999]` is the prompt for a fresh one. Beside it
`<split>.json` holds the metadata: tokenizer, vocabulary size, source description and
fingerprint, token / document / UTF-8 byte counts and the sha256 of the .bin. Files live in
`<cache_dir>/<name>-<fingerprint[:12]>/`, so different sources or sizes never overwrite each
other. Writes are atomic (temporary name, fsync, rename) and the metadata is written last, so an
interrupted preparation leaves nothing a later run trusts; a stale metadata file (other
tokenizer, changed source) is removed before its .bin is replaced and the split is prepared
again. A .bin whose size or checksum disagrees with valid metadata is a `DataError`, never
silently re-made: something damaged the cache and the user should know.

Checksums: the size is checked at every load; the sha256 too for files up to 2 GiB under
`verify_checksum="auto"` (the default). sha256 runs at ~1.8 GB/s on one core here, so that is
at most ~1.2 s, and it covers the full TinyStories train split (~1.9 GB). "always" and
"never" force it either way.

Offline: for the hub source the order is (1) our prepared token files, (2) the local Hugging
Face datasets cache (loaded with hub access switched off), (3) the hub itself when
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are unset and a 3 s probe reaches it, (4) otherwise, with
`offline_fallback="synthetic"`, the synthetic corpus with a loud warning, recorded in
`PreparedData.fallback`; with "error", a `DataError` naming the alternatives.

Run `python -m gpt_oss.data data=<tinystories|text|synthetic>` to prepare ahead of training.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import torch

from gpt_oss.files import remove_stale_temporaries, temporary_path, utf8_error, utf8_message
from gpt_oss.synthetic import generate_stories
from gpt_oss.tokenizer import ENCODING_NAME, ENDOFTEXT_ID, VOCAB_SIZE, get_tokenizer

__all__ = [
    "DataConfig",
    "DataError",
    "PreparedData",
    "TokenFile",
    "TrainLoader",
    "ValLoader",
    "config_from_dict",
    "default_cache_dir",
    "encode_documents",
    "hub_unreachable_reason",
    "prepare",
]

log = logging.getLogger(__name__)

FORMAT = "gpt-oss-lab/tokens/1"
SPLITS = ("train", "val")
SOURCES = ("hub", "files", "synthetic")
FALLBACKS = ("synthetic", "error")
CHECKSUM_POLICIES = ("auto", "always", "never")
FILE_KINDS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
AUTO_CHECKSUM_MAX_BYTES = 2 * 1024**3  # ~1.2 s of sha256 on this machine's one core
HUB_PROBE_TIMEOUT_S = 3.0
CHUNK_DOCUMENTS = 1024  # per worker task: ~0.1 s of work, small enough for a smooth progress bar
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TOKEN_DTYPE = np.dtype("<u4")  # little-endian uint32 on every host: ids reach 201087


class DataError(ValueError):
    """Bad data input or a damaged cache; the message names the value or file and what is valid."""


@dataclass
class DataConfig:
    """Every data option. The conf/data/*.yaml files set these fields and nothing else."""

    source: str = "hub"  # "hub" | "files" | "synthetic"
    name: str = "tinystories"  # cache sub-folder stem: <cache_dir>/<name>-<fingerprint>/
    # hub source: datasets.load_dataset(hub_path, hub_name)[train_split / val_split][text_field]
    hub_path: str = "roneneldan/TinyStories"
    hub_name: str | None = None
    text_field: str = "text"  # also the field read from .jsonl / .json / .parquet files
    train_split: str = "train"
    val_split: str = "validation"
    # files source
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    # With no val_files, the LAST val_fraction of the train documents (at least one) is held out.
    val_fraction: float = 0.01
    # .txt only: None = one document per line; else documents are split on this string
    # ("<|endoftext|>", "\n\n", ...) and stripped of surrounding whitespace.
    separator: str | None = None
    # synthetic source, and the fallback when the hub is unreachable
    synthetic_train_stories: int = 50000
    synthetic_val_stories: int = 1000
    synthetic_seed: int = 0
    # None: $GPT_OSS_DATA_DIR, else <repo root>/data
    cache_dir: str | None = None
    hf_cache_dir: str | None = None  # None: the datasets library's own cache (~/.cache/huggingface)
    num_proc: int = 0  # tokenizer processes; 0 = all cores
    offline_fallback: str = "synthetic"  # "synthetic" | "error" when the hub is unreachable
    verify_checksum: str = "auto"  # "auto" (files <= 2 GiB) | "always" | "never"

    def __post_init__(self) -> None:
        # Hydra hands over ListConfig objects; plain lists keep the config picklable and simple.
        self.train_files = [str(path) for path in self.train_files or []]
        self.val_files = [str(path) for path in self.val_files or []]
        self.validate()

    def validate(self) -> None:
        """Raise DataError naming the first invalid field (files are checked later, by prepare)."""
        choices = {
            "source": SOURCES,
            "offline_fallback": FALLBACKS,
            "verify_checksum": CHECKSUM_POLICIES,
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise DataError(
                    f"data.{name}={getattr(self, name)!r} is invalid: must be one of {', '.join(valid)}"
                )
        for name in ("synthetic_train_stories", "synthetic_val_stories"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise DataError(f"data.{name}={getattr(self, name)!r} is invalid: must be >= 1")
        if not isinstance(self.num_proc, int) or self.num_proc < 0:
            raise DataError(
                f"data.num_proc={self.num_proc!r} is invalid: must be >= 0 (0 = all cores)"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(
                f"data.val_fraction={self.val_fraction!r} is invalid: must be in [0, 1)"
            )
        if not self.name or "/" in self.name:
            raise DataError(f"data.name={self.name!r} is invalid: must be a non-empty folder name")
        if self.separator == "":
            raise DataError(
                "data.separator='' is invalid: use null (one document per line) or a string"
            )


def config_from_dict(values: dict[str, Any]) -> DataConfig:
    """A DataConfig from a plain mapping (e.g. a run's saved config); `_target_` is ignored."""
    known = {f.name for f in fields(DataConfig)}
    unknown = sorted(set(values) - known - {"_target_"})
    if unknown:
        raise DataError(f"unknown data fields {unknown}; valid fields: {', '.join(sorted(known))}")
    return DataConfig(**{key: value for key, value in values.items() if key in known})


def default_cache_dir() -> Path:
    """$GPT_OSS_DATA_DIR, else the project's data/ folder (a user cache for non-editable installs)."""
    if os.environ.get("GPT_OSS_DATA_DIR"):
        return Path(os.environ["GPT_OSS_DATA_DIR"]).expanduser()
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "data"
    return Path.home() / ".cache" / "gpt-oss-lab" / "data"


def resolve_cache_dir(config: DataConfig) -> Path:
    """Where prepared token files go: data.cache_dir, else default_cache_dir()."""
    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()


# ----------------------------------------------------------------------------------------------
# Token files


def _should_verify(policy: str, num_bytes: int) -> bool:
    return policy == "always" or (policy == "auto" and num_bytes <= AUTO_CHECKSUM_MAX_BYTES)


def sha256_file(path: Path, block_bytes: int = 16 * 1024**2) -> str:
    """sha256 of a file, read in blocks so memory stays flat for multi-GB files."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


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
        """Open a prepared .bin; DataError naming the file when it is missing, truncated or corrupt."""
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
                f"{metadata['num_tokens']} tokens = {expected} bytes. Delete {path.parent} to prepare again."
            )
        if _should_verify(verify_checksum, size) and sha256_file(path) != metadata["sha256"]:
            raise DataError(
                f"{path} is corrupt: its sha256 differs from the one in {path.with_suffix('.json')}. "
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


@dataclass
class PreparedData:
    """Both splits of a prepared source, and where they came from (for the run's record)."""

    train: TokenFile
    val: TokenFile
    description: str  # human-readable source, e.g. "roneneldan/TinyStories (Hugging Face hub) ..."
    fallback: str | None  # why the configured source was replaced by the synthetic corpus
    cache_dir: Path  # the root of all prepared data
    directory: Path  # this source's folder inside it
    source: str  # the source actually used: hub | files | synthetic
    fingerprint: str
    prepared_splits: tuple[str, ...] = ()  # splits tokenized by this call (empty: all cached)
    seconds: float = 0.0  # time spent tokenizing in this call

    @property
    def source_description(self) -> str:
        return self.description

    def summary(self) -> dict[str, Any]:
        """Plain values for the run's config and W&B: source, fallback, sizes, files."""
        return {
            "source": self.source,
            "description": self.description,
            "fallback": self.fallback,
            "fingerprint": self.fingerprint,
            "directory": str(self.directory),
            **{
                f"{split}_{key}": value
                for split, file in (("train", self.train), ("val", self.val))
                for key, value in (
                    ("tokens", len(file)),
                    ("documents", file.num_documents),
                    ("bytes", file.num_bytes),
                    ("sha256", file.metadata["sha256"]),
                )
            },
        }


# ----------------------------------------------------------------------------------------------
# Document sources: a length and texts(start, stop), picklable, so worker processes read their
# own ranges (from memory-mapped Arrow, or by generating stories) instead of being sent text.


class Documents(Protocol):
    def __len__(self) -> int: ...

    def texts(self, start: int, stop: int) -> list[str | None]: ...


@dataclass
class _ArrowDocuments:
    dataset: Any  # datasets.Dataset, memory-mapped
    text_field: str

    def __len__(self) -> int:
        return len(self.dataset)

    def texts(self, start: int, stop: int) -> list[str | None]:
        return self.dataset[start:stop][self.text_field]


@dataclass
class _ListDocuments:
    documents: list[str]

    def __len__(self) -> int:
        return len(self.documents)

    def texts(self, start: int, stop: int) -> list[str | None]:
        return self.documents[start:stop]


@dataclass
class _SyntheticDocuments:
    count: int
    seed: int
    stream: str

    def __len__(self) -> int:
        return self.count

    def texts(self, start: int, stop: int) -> list[str | None]:
        return generate_stories(stop - start, self.seed, start=start, stream=self.stream)


class _ConcatDocuments:
    """Several sources read as one, in order (one per input file)."""

    def __init__(self, parts: Sequence[Documents]) -> None:
        self.parts = list(parts)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def texts(self, start: int, stop: int) -> list[str | None]:
        texts: list[str | None] = []
        part = bisect.bisect_right(self.offsets, start) - 1
        while start < stop:
            part_stop = min(stop, self.offsets[part + 1])
            texts += self.parts[part].texts(
                start - self.offsets[part], part_stop - self.offsets[part]
            )
            start, part = part_stop, part + 1
        return texts


@dataclass
class _SliceDocuments:
    documents: Documents
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def texts(self, start: int, stop: int) -> list[str | None]:
        return self.documents.texts(self.start + start, self.start + stop)


# ----------------------------------------------------------------------------------------------
# Tokenizing: worker processes each encode a range of documents with tiktoken's
# encode_to_numpy, which skips building Python int lists. Measured on 2 idle cores (3.5 MB of
# TinyStories x 10): encode_ordinary_batch(num_threads=2) 2.8M tokens/s, one process with
# encode_to_numpy 6.7M, two processes 10.5M.


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


_worker_documents: Documents | None = None


def _init_worker(documents: Documents) -> None:
    global _worker_documents
    _worker_documents = documents


def _encode_range(span: tuple[int, int]) -> tuple[np.ndarray, int, int, int]:
    assert _worker_documents is not None, "worker not initialised"
    tokens, documents, num_bytes = encode_documents(_worker_documents.texts(*span))
    return tokens, documents, num_bytes, span[1] - span[0]


def available_cores() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _encode_all(documents: Documents, num_proc: int) -> Iterator[tuple[np.ndarray, int, int, int]]:
    """Encoded chunks of the documents, in order, from `num_proc` processes (0 = all cores)."""
    workers = num_proc or available_cores()
    # At least 4 chunks per worker, so a small corpus still keeps every worker busy to the end.
    chunk = max(16, min(CHUNK_DOCUMENTS, math.ceil(len(documents) / (4 * workers))))
    spans = [(s, min(s + chunk, len(documents))) for s in range(0, len(documents), chunk)]
    workers = min(workers, len(spans))
    get_tokenizer()  # load the vocabulary once here; forked workers inherit it
    if workers <= 1:
        _init_worker(documents)
        yield from map(_encode_range, spans)
        return
    # fork: workers inherit the memory-mapped sources without pickling; elsewhere spawn.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_init_worker, initargs=(documents,)) as pool:
        yield from pool.imap(_encode_range, spans)


# ----------------------------------------------------------------------------------------------
# Writing


def _fsync_directory(directory: Path) -> None:
    """Make renames durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = temporary_path(path)
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class _Plan:
    """What to prepare: the source's identity (fingerprinted) and how to open its documents."""

    source: str
    name: str
    description: str
    identity: dict[str, Any]
    # Opens {"train": Documents, "val": Documents}; slow (loads data), so called only when needed.
    open_documents: Callable[[], Any] | None = None

    @property
    def fingerprint(self) -> str:
        payload = json.dumps({"format": FORMAT, **self.identity}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def directory(self, root: Path) -> Path:
        return root / f"{self.name}-{self.fingerprint[:12]}"


def _write_split(
    directory: Path, split: str, documents: Documents, plan: _Plan, num_proc: int, progress: bool
) -> TokenFile:
    """Tokenize one split into directory/<split>.bin atomically, then write its metadata."""
    from tqdm.auto import tqdm

    bin_path = directory / f"{split}.bin"
    # Stale metadata must not outlive the .bin it described.
    bin_path.with_suffix(".json").unlink(missing_ok=True)
    tmp = temporary_path(bin_path)
    digest, totals, start = hashlib.sha256(), np.zeros(3, dtype=np.int64), time.perf_counter()
    bar = tqdm(total=len(documents), unit="doc", desc=f"{plan.name}/{split}", disable=not progress)
    try:
        with open(tmp, "wb") as handle, bar:
            for tokens, num_documents, num_bytes, done in _encode_all(documents, num_proc):
                tokens = tokens.astype(TOKEN_DTYPE, copy=False)  # a no-op on little-endian hosts
                handle.write(memoryview(tokens).cast("B"))
                digest.update(tokens)
                totals += (len(tokens), num_documents, num_bytes)
                bar.update(done)
                bar.set_postfix(tokens=f"{totals[0]:,}", refresh=False)
            handle.flush()
            os.fsync(handle.fileno())
        if totals[1] == 0:
            raise DataError(
                f"empty corpus: the {split} split of {plan.description} has no non-empty documents"
            )
        os.replace(tmp, bin_path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    metadata = {
        "format": FORMAT,
        "split": split,
        "tokenizer": ENCODING_NAME,
        "vocab_size": VOCAB_SIZE,
        "dtype": TOKEN_DTYPE.str,
        "layout": f"<|endoftext|> ({ENDOFTEXT_ID}) before every document",
        "source": plan.description,
        "source_fingerprint": plan.fingerprint,
        "source_identity": plan.identity,
        "num_tokens": int(totals[0]),
        "num_documents": int(totals[1]),
        "num_bytes": int(totals[2]),
        "sha256": digest.hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(totals[0] / max(seconds, 1e-9)),
    }
    metadata["metadata_sha256"] = metadata_checksum(metadata)
    _atomic_write_text(bin_path.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")
    _fsync_directory(directory)
    return TokenFile.open(bin_path, verify_checksum="never")  # just computed: no need to re-read


def _stale_reason(metadata: dict[str, Any], plan: _Plan) -> str | None:
    expected = {
        "tokenizer": ENCODING_NAME,
        "vocab_size": VOCAB_SIZE,
        "source_fingerprint": plan.fingerprint,
    }
    for key, value in expected.items():
        if metadata.get(key) != value:
            return f"{key} is {metadata.get(key)!r}, now {value!r}"
    if "metadata_sha256" not in metadata:
        return "written by an older version, without metadata_sha256"
    return None


def _open_split(directory: Path, split: str, plan: _Plan, verify_checksum: str) -> TokenFile | None:
    """The prepared split, or None when it must be (re)prepared; DataError when it is damaged."""
    bin_path = directory / f"{split}.bin"
    metadata = read_metadata(bin_path)
    if metadata is None:
        return None
    if reason := _stale_reason(metadata, plan):
        log.info("%s is stale (%s): preparing it again", bin_path, reason)
        return None
    return TokenFile.open(bin_path, verify_checksum)


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One preparer per folder across processes (DDP ranks, sweeps); the others wait, then reuse."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(directory / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is preparing %s", directory)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_prepared(plan: _Plan, root: Path, config: DataConfig) -> PreparedData | None:
    directory = plan.directory(root)
    files = {split: _open_split(directory, split, plan, config.verify_checksum) for split in SPLITS}
    if any(file is None for file in files.values()):
        return None
    return _prepared(plan, root, files, ())


def _prepared(
    plan: _Plan, root: Path, files: dict[str, TokenFile], new: tuple[str, ...], seconds: float = 0.0
) -> PreparedData:
    return PreparedData(
        train=files["train"],
        val=files["val"],
        description=plan.description,
        fallback=None,
        cache_dir=root,
        directory=plan.directory(root),
        source=plan.source,
        fingerprint=plan.fingerprint,
        prepared_splits=new,
        seconds=seconds,
    )


def _prepare_plan(plan: _Plan, root: Path, config: DataConfig, progress: bool) -> PreparedData:
    """Reuse what is prepared and valid; tokenize the missing or stale splits. Temporaries of
    killed preparations (.train.bin.<pid>.tmp) are removed first."""
    for stale in remove_stale_temporaries(plan.directory(root)):
        log.info("removed %s, left by a preparation that was killed", stale)
    if prepared := _load_prepared(plan, root, config):
        return prepared
    directory = plan.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    get_tokenizer()  # loading the vocabulary (~1 s, once per process) is not part of the rate
    start = time.perf_counter()
    with _exclusive(directory):
        files = {
            split: _open_split(directory, split, plan, config.verify_checksum) for split in SPLITS
        }
        missing = tuple(split for split, file in files.items() if file is None)
        if missing:
            assert plan.open_documents is not None
            with _datasets_progress(progress), plan.open_documents() as documents:
                for split in missing:
                    files[split] = _write_split(
                        directory, split, documents[split], plan, config.num_proc, progress
                    )
    return _prepared(plan, root, files, missing, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# Sources -> plans


def _synthetic_plan(config: DataConfig) -> _Plan:
    seed, sizes = (
        config.synthetic_seed,
        (config.synthetic_train_stories, config.synthetic_val_stories),
    )
    # A hash of sample stories: an edit to the generator changes the fingerprint, so stale
    # caches are re-made without anyone remembering to bump a version number.
    sample = generate_stories(4, seed) + generate_stories(4, seed, stream="val")
    identity = {
        "kind": "synthetic",
        "seed": seed,
        "train_stories": sizes[0],
        "val_stories": sizes[1],
        "generator_sample_sha256": hashlib.sha256("\n".join(sample).encode()).hexdigest(),
    }

    @contextmanager
    def open_documents() -> Iterator[dict[str, Documents]]:
        yield {
            "train": _SyntheticDocuments(sizes[0], seed, "train"),
            "val": _SyntheticDocuments(sizes[1], seed, "val"),
        }

    description = (
        f"synthetic stories (gpt_oss.synthetic, seed {seed}: {sizes[0]} train / {sizes[1]} val)"
    )
    return _Plan("synthetic", "synthetic", description, identity, open_documents)


def _peek_fields(path: Path, kind: str) -> list[str] | None:
    """Field names of the first record, read cheaply; None when that cannot be done cheaply."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as error:  # pyarrow raises several types for a non-parquet file
            raise DataError(f"{path} is not a readable parquet file: {error}") from error
    if kind == "json":
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline(1 << 20).strip()
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            return None  # a pretty-printed or array .json: the datasets reader decides
        return list(record) if isinstance(record, dict) else None
    return None


def _check_file(path_text: str, option: str, text_field: str) -> Path:
    """A readable input file with a known extension and the text field; DataError otherwise."""
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"data.{option}: {path_text} does not exist (resolved to {path})")
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"data.{option}: {path_text} has an unsupported extension {path.suffix!r}; "
            f"valid: {', '.join(FILE_KINDS)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"data.{option}: {path_text} is empty")
    names = _peek_fields(path, kind)
    if names is not None and text_field not in names:
        raise DataError(
            f"data.{option}: {path_text} has no field {text_field!r} (data.text_field); "
            f"its fields are {names}"
        )
    return path


def _file_identity(path: Path) -> list[Any]:
    # Path, size and mtime (as make does): hashing multi-GB inputs at every start would be slow.
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _load_file(path: Path, config: DataConfig, hf_cache: Path) -> Documents:
    """One input file through `datasets`; a text or JSON file that is not UTF-8 is a DataError
    naming the file and the first bad byte's offset (datasets' errors name neither, and for
    JSON come only when the text is read). Checked only when preparing."""
    if FILE_KINDS[path.suffix.lower()] != "parquet" and (where := utf8_error(path)):
        raise DataError(utf8_message(path, where))
    return _load_with_datasets(path, config, hf_cache)


def _load_with_datasets(path: Path, config: DataConfig, hf_cache: Path) -> Documents:
    """One input file through `datasets` (text / json / parquet builders)."""
    import datasets

    kind = FILE_KINDS[path.suffix.lower()]
    if kind == "text" and config.separator is not None:
        # The whole file as one record, split on the separator: memory ~2x the file size.
        dataset = datasets.load_dataset(
            "text",
            data_files=str(path),
            split="train",
            cache_dir=str(hf_cache),
            sample_by="document",
            keep_linebreaks=True,
        )
        text = "".join(dataset["text"])
        documents = (doc.strip() for doc in text.split(config.separator))
        return _ListDocuments([doc for doc in documents if doc])  # a trailing separator is no story
    if kind == "text":
        dataset = datasets.load_dataset(
            "text", data_files=str(path), split="train", cache_dir=str(hf_cache)
        )
        return _ArrowDocuments(dataset, "text")
    dataset = datasets.load_dataset(
        kind, data_files=str(path), split="train", cache_dir=str(hf_cache)
    )
    return _ArrowDocuments(
        _check_text_column(dataset, config.text_field, str(path)), config.text_field
    )


def _check_text_column(dataset: Any, text_field: str, where: str) -> Any:
    feature = dataset.features.get(text_field)
    if feature is None:
        raise DataError(
            f"{where} has no field {text_field!r} (data.text_field); its fields are {list(dataset.features)}"
        )
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise DataError(f"{where}: field {text_field!r} holds {feature}, not text")
    return dataset


def _hold_out(documents: Documents, fraction: float, files: list[str]) -> dict[str, Documents]:
    """The last `fraction` of the documents (at least one) become the validation split."""
    if fraction <= 0:
        raise DataError(
            "data.val_files is empty and data.val_fraction=0: give validation files or a fraction > 0"
        )
    held = max(1, round(len(documents) * fraction))
    if len(documents) - held < 1:
        raise DataError(
            f"{files} hold {len(documents)} document(s): too few to hold out validation"
        )
    return {
        "train": _SliceDocuments(documents, 0, len(documents) - held),
        "val": _SliceDocuments(documents, len(documents) - held, len(documents)),
    }


def _files_plan(config: DataConfig, root: Path) -> _Plan:
    if not config.train_files:
        raise DataError(
            "data.source=files needs input files: data.train_files=[a.jsonl,...] "
            "data.val_files=[b.jsonl,...] (.txt, .jsonl, .json or .parquet)"
        )
    train = [_check_file(path, "train_files", config.text_field) for path in config.train_files]
    val = [_check_file(path, "val_files", config.text_field) for path in config.val_files]
    identity = {
        "kind": "files",
        "train": [_file_identity(path) for path in train],
        "val": [_file_identity(path) for path in val],
        "text_field": config.text_field,
        "separator": config.separator,
        "val_fraction": None if val else config.val_fraction,
    }
    names = ", ".join(path.name for path in train[:3]) + (", ..." if len(train) > 3 else "")
    held = (
        ", ".join(path.name for path in val[:3])
        if val
        else f"last {config.val_fraction:g} of train"
    )
    description = f"local files (train: {names}; val: {held}; field {config.text_field!r})"
    plan = _Plan("files", config.name, description, identity)

    @contextmanager
    def open_documents() -> Iterator[dict[str, Documents]]:
        hf_cache = (
            plan.directory(root) / ".hf-cache"
        )  # datasets' Arrow copies, only while tokenizing
        try:
            train_docs = _ConcatDocuments([_load_file(path, config, hf_cache) for path in train])
            if not val:
                yield _hold_out(train_docs, config.val_fraction, config.train_files)
                return
            yield {
                "train": train_docs,
                "val": _ConcatDocuments([_load_file(p, config, hf_cache) for p in val]),
            }
        finally:
            shutil.rmtree(hf_cache, ignore_errors=True)  # a leftover cache only costs disk

    plan.open_documents = open_documents
    return plan


def _hub_plan(config: DataConfig) -> _Plan:
    if not config.hub_path:
        raise DataError(
            "data.hub_path is empty: name a Hugging Face dataset, e.g. roneneldan/TinyStories"
        )
    identity = {
        "kind": "hub",
        "path": config.hub_path,
        "name": config.hub_name,
        "train_split": config.train_split,
        "val_split": config.val_split,
        "text_field": config.text_field,
    }
    subset = f" ({config.hub_name})" if config.hub_name else ""
    description = (
        f"{config.hub_path}{subset} (Hugging Face hub; splits {config.train_split}/{config.val_split}, "
        f"field {config.text_field!r})"
    )
    return _Plan("hub", config.name, description, identity)


# ----------------------------------------------------------------------------------------------
# The hub: local cache first, then the network, else the fallback


def _env_offline() -> str | None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{name}={os.environ[name]} is set"
    return None


def _hub_address() -> tuple[str, int]:
    """Where a connection to the hub goes first: the HTTPS proxy if one is set, else the endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_unreachable_reason(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers a TCP connect within timeout_s; else why not (offline env var,
    DNS failure, refused, timeout). Runs in a thread because DNS lookups ignore socket timeouts."""
    if reason := _env_offline():
        return reason
    host, port = _hub_address()
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}:{port} is unreachable ({error})")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout_s:g} s"


@contextmanager
def _hub_access_off() -> Iterator[None]:
    """datasets and huggingface_hub read HF_HUB_OFFLINE once, at import; flip their flags for a
    cache-only load, and restore them after."""
    import datasets
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load_hub_dataset(config: DataConfig) -> tuple[Any | None, str]:
    """(DatasetDict, how it was found) or (None, why the hub dataset is unavailable)."""
    import datasets

    arguments = {"path": config.hub_path, "name": config.hub_name, "cache_dir": config.hf_cache_dir}
    cache = config.hf_cache_dir or datasets.config.HF_DATASETS_CACHE
    try:
        with _hub_access_off():
            return datasets.load_dataset(**arguments), f"local Hugging Face cache ({cache})"
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        log.info("%s is not in the Hugging Face cache %s: %s", config.hub_path, cache, error)
    if reason := hub_unreachable_reason():
        return None, f"{reason}, and no copy is in the Hugging Face cache ({cache})"
    try:
        return datasets.load_dataset(**arguments), "the Hugging Face hub"
    except datasets.exceptions.DatasetNotFoundError as error:  # a typo must not fall back
        raise DataError(f"data.hub_path={config.hub_path!r}: {error}") from error
    except ConnectionError as error:  # reachable a moment ago, but the download failed
        return None, f"the hub could not be reached: {error}"


def _hub_documents(dataset: Any, config: DataConfig) -> dict[str, Documents]:
    documents = {}
    for split, name in (("train", config.train_split), ("val", config.val_split)):
        if name not in dataset:
            raise DataError(
                f"{config.hub_path} has no split {name!r} (data.{split}_split); it has {list(dataset)}"
            )
        where = f"{config.hub_path}[{name!r}]"
        documents[split] = _ArrowDocuments(
            _check_text_column(dataset[name], config.text_field, where), config.text_field
        )
    return documents


def _fallback_message(config: DataConfig, reason: str) -> str:
    rule = "=" * 88
    return "\n".join(
        [
            rule,
            f"DATA FALLBACK: {config.hub_path} is not available: {reason}.",
            f"Using the SYNTHETIC story corpus instead ({config.synthetic_train_stories} train / "
            f"{config.synthetic_val_stories} val stories, seed {config.synthetic_seed}).",
            "Results are NOT comparable with TinyStories runs; the run's config records this fallback.",
            "  real text offline:  data=text data.train_files=[train.jsonl] data.val_files=[val.jsonl]",
            "  synthetic on purpose (no warning):  data=synthetic",
            "  fail instead of falling back:  data.offline_fallback=error",
            rule,
        ]
    )


def _fall_back(config: DataConfig, root: Path, progress: bool, reason: str) -> PreparedData:
    if config.offline_fallback == "error":
        raise DataError(
            f"{config.hub_path} is not available: {reason}. Without network, point at local files "
            f"(data=text data.train_files=[train.jsonl] data.val_files=[val.jsonl]; .txt, .jsonl, "
            f".json or .parquet), use the built-in corpus (data=synthetic), or pre-fill the Hugging "
            f"Face cache on a connected machine."
        )
    log.warning(_fallback_message(config, reason))
    prepared = _prepare_plan(_synthetic_plan(config), root, config, progress)
    prepared.fallback = reason
    prepared.description = f"{prepared.description}; FALLBACK for {config.hub_path}: {reason}"
    return prepared


def prepare(config: DataConfig, progress: bool = True) -> PreparedData:
    """Token files for both splits of the configured source, tokenizing only what is not cached.

    Idempotent: with the same config a second call re-uses the files (size and checksum checked).
    Raises DataError for bad inputs (before any long work) and for damaged cache files.
    """
    config.validate()
    root = resolve_cache_dir(config)
    if config.source == "synthetic":
        return _prepare_plan(_synthetic_plan(config), root, config, progress)
    if config.source == "files":
        return _prepare_plan(_files_plan(config, root), root, config, progress)
    plan = _hub_plan(config)
    if prepared := _load_prepared(plan, root, config):  # no network needed at all
        return prepared
    with _datasets_progress(progress):
        dataset, found = _load_hub_dataset(config)
    if dataset is None:
        return _fall_back(config, root, progress, found)
    log.info("%s: loaded from %s", config.hub_path, found)
    documents = _hub_documents(dataset, config)

    @contextmanager
    def open_documents() -> Iterator[dict[str, Documents]]:
        yield documents

    plan.open_documents = open_documents
    return _prepare_plan(plan, root, config, progress)


@contextmanager
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """Silence the datasets library's own bars when progress=False (tests, DDP ranks > 0)."""
    import datasets

    silence = not enabled and not datasets.are_progress_bars_disabled()
    if silence:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if silence:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------------------------
# Loaders


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
    """(inputs, targets) int64 of shape (len(starts), seq_len); targets are inputs shifted by one."""
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
                f"{len(self.tokens)} tokens are too few for one window of seq_len={seq_len} (+1 target)"
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

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

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
                f"{len(self.tokens)} validation tokens are too few for one window of seq_len={seq_len}"
            )
        self.bytes_per_token = tokens.bytes_per_token if isinstance(tokens, TokenFile) else None
        self.batch_size, self.seq_len, self.stride = batch_size, seq_len, stride
        self.device = torch.device(device)
        num_windows = (len(self.tokens) - seq_len - 1) // stride + 1
        if max_batches is not None:
            num_windows = min(num_windows, max_batches * batch_size)
        self.window_starts = np.arange(num_windows, dtype=np.int64) * stride

    def __len__(self) -> int:
        return math.ceil(len(self.window_starts) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first in range(0, len(self.window_starts), self.batch_size):
            starts = self.window_starts[first : first + self.batch_size]
            yield windows_to_batch(self.tokens, starts, self.seq_len, self.device)

    @property
    def num_target_tokens(self) -> int:
        """Target tokens scored in one pass (the denominator of the mean loss)."""
        return len(self.window_starts) * self.seq_len

    @property
    def num_bytes(self) -> float | None:
        """UTF-8 bytes those targets stand for, for bits per byte. Approximated as
        num_target_tokens * (split bytes / split tokens); None for a bare array."""
        if self.bytes_per_token is None:
            return None
        return self.num_target_tokens * self.bytes_per_token


# ----------------------------------------------------------------------------------------------
# Entry point: python -m gpt_oss.data data=tinystories|text|synthetic


def format_summary(prepared: PreparedData, seconds: float) -> str:
    """The lines `python -m gpt_oss.data` prints."""
    lines = [f"source:    {prepared.description}"]
    if prepared.fallback:
        lines.append(f"FALLBACK:  {prepared.fallback}")
    for split, file in (("train", prepared.train), ("val", prepared.val)):
        lines.append(
            f"{split + ':':<10} {file.num_documents:,} docs, {len(file):,} tokens, "
            f"{file.num_bytes:,} bytes -> {file.path}"
        )
    if prepared.prepared_splits:
        tokens = sum(len(getattr(prepared, split)) for split in prepared.prepared_splits)
        lines.append(
            f"time:      {seconds:.1f} s ({', '.join(prepared.prepared_splits)} tokenized: "
            f"{tokens / max(prepared.seconds, 1e-9):,.0f} tokens/s)"
        )
    else:
        lines.append(f"time:      {seconds:.1f} s (already prepared: nothing tokenized)")
    lines.append(f"location:  {prepared.directory}")
    return "\n".join(lines)


def main() -> None:
    """Hydra entry point: compose conf/config.yaml, prepare `data`, print the summary."""
    import hydra  # here, not at the top: library code never imports Hydra
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    from gpt_oss import schema

    schema.register()

    # An absolute path: this runs as gpt_oss.data (see the bottom), where "../conf" would be
    # read as a Python package.
    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def run(cfg: DictConfig) -> None:
        config = instantiate(cfg.data, _convert_="all")
        start = time.perf_counter()
        try:
            prepared = prepare(config)
        except DataError as error:
            log.error("DataError: %s", error)
            raise SystemExit(2) from error
        print(format_summary(prepared, time.perf_counter() - start), flush=True)

    run()


if __name__ == "__main__":
    # Run the imported gpt_oss.data, not this __main__ copy: worker processes pickle functions by
    # module name, and instantiate builds gpt_oss.data.DataConfig, not __main__.DataConfig.
    from gpt_oss.data import main as module_main

    module_main()
