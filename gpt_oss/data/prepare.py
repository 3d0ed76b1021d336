"""Preparation: a configured source -> both splits as token files, cached and checked.

Sources (`DataConfig.source`): "hub" (a Hugging Face dataset, TinyStories by default), "files"
(local .txt / .jsonl / .json / .parquet read through `datasets`) and "synthetic" (the built-in
story generator, gpt_oss/data/synthetic.py); see sources.py and hub.py. The file format is
tokens.py's.

Files live in `<cache_dir>/<name>-<fingerprint[:12]>/`, so different sources or sizes never
overwrite each other. The metadata is written last, so an interrupted preparation leaves nothing
a later run trusts; a stale metadata file (other tokenizer, changed source) is removed before
its .bin is replaced and the split is prepared again. A .bin whose size or checksum disagrees
with valid metadata is a `DataError`, never silently re-made: something damaged the cache and
the user should know.

data.max_train_documents caps the training documents of every source (see DataConfig); it is
part of the source's identity, so each cap has its own folder.

Offline: for the hub source the order is (1) our prepared token files, (2) the local Hugging
Face datasets cache (loaded with hub access switched off), (3) the hub itself when
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are unset and a 3 s probe reaches it, (4) otherwise, with
`offline_fallback="synthetic"`, the synthetic corpus with a loud warning, recorded in
`PreparedData.fallback`; with "error", a `DataError` naming the alternatives.

Several processes (ddp/fsdp): rank 0 prepares, the others open the very files it chose
(`prepare_data`).

Run `python -m gpt_oss.data data=<tinystories|text|synthetic>` to prepare ahead of training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from gpt_oss.data.compact import compact_directory, file_vocabulary, open_compact, write_compact
from gpt_oss.data.config import DataConfig, DataError, resolve_cache_dir
from gpt_oss.data.hub import fallback_message, hub_documents, load_hub_dataset
from gpt_oss.data.sources import (
    ConcatDocuments,
    Documents,
    SyntheticDocuments,
    check_file,
    file_identity,
    first_documents,
    hold_out,
    load_file,
)
from gpt_oss.data.synthetic import generate_stories
from gpt_oss.data.tokens import (
    FORMAT,
    TOKEN_DTYPE,
    TokenFile,
    encode_documents,
    fsync_directory,
    read_metadata,
    write_metadata,
)
from gpt_oss.files import remove_stale_temporaries, temporary_path
from gpt_oss.model.tokenizer import ENCODING_NAME, ENDOFTEXT_ID, VOCAB_SIZE, get_tokenizer
from gpt_oss.model.vocabulary import FullVocabulary, Vocabulary
from gpt_oss.training.distributed import World, broadcast_object

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
CHUNK_DOCUMENTS = 1024  # per worker task: ~0.1 s of work, small enough for a smooth progress bar
DATA_WAIT = timedelta(hours=4)  # how long ranks > 0 wait for rank 0 to download and tokenize


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
    # what train and val's ids mean: the full o200k_harmony ids, or a compact vocabulary's
    # (then train and val are the compact splits, the map in their metadata)
    vocabulary: Vocabulary = dataclasses.field(default_factory=FullVocabulary)

    def summary(self) -> dict[str, Any]:
        """Plain values for the run's config and W&B: source, fallback, sizes, files."""
        return {
            "source": self.source,
            "description": self.description,
            "fallback": self.fallback,
            "fingerprint": self.fingerprint,
            "directory": str(self.directory),
            "vocabulary": self.vocabulary.kind,
            "vocab_size": self.vocabulary.size,
            "vocabulary_sha256": getattr(self.vocabulary, "sha256", None),
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
# Tokenizing: worker processes each encode a range of documents with tiktoken's
# encode_to_numpy, which skips building Python int lists. Measured on 2 idle cores (3.5 MB of
# TinyStories x 10): encode_ordinary_batch(num_threads=2) 2.8M tokens/s, one process with
# encode_to_numpy 6.7M, two processes 10.5M.


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
# Plans: what to prepare and how to open its documents


@dataclass(frozen=True)
class _Source:
    """A source's identity (fingerprinted): which folder its token files go to, and whether
    files already there still describe it."""

    kind: str  # hub | files | synthetic
    name: str
    description: str
    identity: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        payload = json.dumps({"format": FORMAT, **self.identity}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def directory(self, root: Path) -> Path:
        return root / f"{self.name}-{self.fingerprint[:12]}"


OpenDocuments = Callable[[], AbstractContextManager[dict[str, Documents]]]


@dataclass(frozen=True)
class _Plan:
    """What to prepare: a source, and how to open its {"train", "val"} documents (slow: it
    loads data, so it is called only when a split must be tokenized)."""

    source: _Source
    open_documents: OpenDocuments


def _synthetic_plan(config: DataConfig) -> _Plan:
    seed, sizes = (
        config.synthetic_seed,
        (config.train_documents(config.synthetic_train_stories), config.synthetic_val_stories),
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
            "train": SyntheticDocuments(sizes[0], seed, "train"),
            "val": SyntheticDocuments(sizes[1], seed, "val"),
        }

    description = (
        f"synthetic stories (gpt_oss.data.synthetic, seed {seed}: "
        f"{sizes[0]} train / {sizes[1]} val)"
    )
    return _Plan(_Source("synthetic", "synthetic", description, identity), open_documents)


def _files_plan(config: DataConfig, root: Path) -> _Plan:
    if not config.train_files:
        raise DataError(
            "data.source=files needs input files: data.train_files=[a.jsonl,...] "
            "data.val_files=[b.jsonl,...] (.txt, .jsonl, .json or .parquet)"
        )
    train = [check_file(path, "train_files", config.text_field) for path in config.train_files]
    val = [check_file(path, "val_files", config.text_field) for path in config.val_files]
    identity = {
        "kind": "files",
        "train": [file_identity(path) for path in train],
        "val": [file_identity(path) for path in val],
        "text_field": config.text_field,
        "separator": config.separator,
        "val_fraction": None if val else config.val_fraction,
        **_cap_identity(config),
    }
    names = ", ".join(path.name for path in train[:3]) + (", ..." if len(train) > 3 else "")
    capped = _cap_description(config)
    names += f" ({capped})" if capped else ""
    held = (
        ", ".join(path.name for path in val[:3])
        if val
        else f"last {config.val_fraction:g} of train"
    )
    description = f"local files (train: {names}; val: {held}; field {config.text_field!r})"
    source = _Source("files", config.name, description, identity)

    @contextmanager
    def open_documents() -> Iterator[dict[str, Documents]]:
        hf_cache = source.directory(root) / ".hf-cache"  # datasets' Arrow copies, while tokenizing
        try:
            train_docs = ConcatDocuments([load_file(path, config, hf_cache) for path in train])
            if val:
                split = {
                    "train": train_docs,
                    "val": ConcatDocuments([load_file(p, config, hf_cache) for p in val]),
                }
            else:  # held out before the cap: the same val documents whatever the cap
                split = hold_out(train_docs, config.val_fraction, config.train_files)
            count = config.train_documents(len(split["train"]))
            yield split | {"train": first_documents(split["train"], count)}
        finally:
            shutil.rmtree(hf_cache, ignore_errors=True)  # a leftover cache only costs disk

    return _Plan(source, open_documents)


def _hub_source(config: DataConfig) -> _Source:
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
        **_cap_identity(config),
    }
    subset = f" ({config.hub_name})" if config.hub_name else ""
    capped = _cap_description(config)
    description = (
        f"{config.hub_path}{subset} (Hugging Face hub; "
        f"splits {config.train_split}/{config.val_split}, "
        f"{capped + ', ' if capped else ''}field {config.text_field!r})"
    )
    return _Source("hub", config.name, description, identity)


def _cap_identity(config: DataConfig) -> dict[str, int]:
    """The train cap as part of a source's identity, so a cache prepared for one cap is never
    taken for another or for all; absent when unset, so uncapped fingerprints stay as before."""
    if config.max_train_documents is None:
        return {}
    return {"max_train_documents": config.max_train_documents}


def _cap_description(config: DataConfig) -> str:
    """The train cap in words for a description ("first 30,000 train documents"); "" when
    uncapped."""
    if config.max_train_documents is None:
        return ""
    return f"first {config.max_train_documents:,} train documents"


def _opened(documents: dict[str, Documents]) -> OpenDocuments:
    """An opener for documents already loaded (the hub's, once it is known they exist)."""

    @contextmanager
    def open_documents() -> Iterator[dict[str, Documents]]:
        yield documents

    return open_documents


# ----------------------------------------------------------------------------------------------
# Writing


def _write_split(
    directory: Path,
    split: str,
    documents: Documents,
    source: _Source,
    num_proc: int,
    progress: bool,
) -> TokenFile:
    """Tokenize one split into directory/<split>.bin atomically, then write its metadata."""
    from tqdm.auto import tqdm

    bin_path = directory / f"{split}.bin"
    # Stale metadata must not outlive the .bin it described.
    bin_path.with_suffix(".json").unlink(missing_ok=True)
    tmp = temporary_path(bin_path)
    digest, totals, start = hashlib.sha256(), np.zeros(3, dtype=np.int64), time.perf_counter()
    bar = tqdm(
        total=len(documents), unit="doc", desc=f"{source.name}/{split}", disable=not progress
    )
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
                f"empty corpus: the {split} split of {source.description} "
                f"has no non-empty documents"
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
        "source": source.description,
        "source_fingerprint": source.fingerprint,
        "source_identity": source.identity,
        "num_tokens": int(totals[0]),
        "num_documents": int(totals[1]),
        "num_bytes": int(totals[2]),
        "sha256": digest.hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(totals[0] / max(seconds, 1e-9)),
    }
    write_metadata(bin_path, metadata)
    fsync_directory(directory)
    return TokenFile.open(bin_path, verify_checksum="never")  # just computed: no need to re-read


def _stale_reason(metadata: dict[str, Any], source: _Source) -> str | None:
    expected = {
        "tokenizer": ENCODING_NAME,
        "vocab_size": VOCAB_SIZE,
        "source_fingerprint": source.fingerprint,
    }
    for key, value in expected.items():
        if metadata.get(key) != value:
            return f"{key} is {metadata.get(key)!r}, now {value!r}"
    if "metadata_sha256" not in metadata:
        return "written by an older version, without metadata_sha256"
    return None


def _open_split(
    directory: Path, split: str, source: _Source, verify_checksum: str
) -> TokenFile | None:
    """The prepared split, or None when it must be (re)prepared; DataError when it is damaged."""
    bin_path = directory / f"{split}.bin"
    metadata = read_metadata(bin_path)
    if metadata is None:
        return None
    if reason := _stale_reason(metadata, source):
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


def _load_prepared(source: _Source, root: Path, config: DataConfig) -> PreparedData | None:
    directory = source.directory(root)
    files = {
        split: _open_split(directory, split, source, config.verify_checksum) for split in SPLITS
    }
    if any(file is None for file in files.values()):
        return None
    return _prepared(source, root, files, ())


def _prepared(
    source: _Source,
    root: Path,
    files: dict[str, TokenFile],
    new: tuple[str, ...],
    seconds: float = 0.0,
) -> PreparedData:
    return PreparedData(
        train=files["train"],
        val=files["val"],
        description=source.description,
        fallback=None,
        cache_dir=root,
        directory=source.directory(root),
        source=source.kind,
        fingerprint=source.fingerprint,
        prepared_splits=new,
        seconds=seconds,
    )


def _prepare_plan(plan: _Plan, root: Path, config: DataConfig, progress: bool) -> PreparedData:
    """Reuse what is prepared and valid; tokenize the missing or stale splits. Temporaries of
    killed preparations (.train.bin.<pid>.tmp) are removed first."""
    source = plan.source
    for stale in remove_stale_temporaries(source.directory(root)):
        log.info("removed %s, left by a preparation that was killed", stale)
    if prepared := _load_prepared(source, root, config):
        return prepared
    directory = source.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    get_tokenizer()  # loading the vocabulary (~1 s, once per process) is not part of the rate
    start = time.perf_counter()
    with _exclusive(directory):
        files = {
            split: _open_split(directory, split, source, config.verify_checksum) for split in SPLITS
        }
        missing = tuple(split for split, file in files.items() if file is None)
        if missing:
            with _datasets_progress(progress), plan.open_documents() as documents:
                for split in missing:
                    files[split] = _write_split(
                        directory, split, documents[split], source, config.num_proc, progress
                    )
    return _prepared(source, root, files, missing, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# prepare


def _fall_back(config: DataConfig, root: Path, progress: bool, reason: str) -> PreparedData:
    if config.offline_fallback == "error":
        raise DataError(
            f"{config.hub_path} is not available: {reason}. Without network, point at local files "
            f"(data=text data.train_files=[train.jsonl] data.val_files=[val.jsonl]; .txt, .jsonl, "
            f".json or .parquet), use the built-in corpus (data=synthetic), "
            f"or pre-fill the Hugging "
            f"Face cache on a connected machine."
        )
    log.warning(fallback_message(config, reason))
    prepared = _prepare_plan(_synthetic_plan(config), root, config, progress)
    prepared.fallback = reason
    prepared.description = f"{prepared.description}; FALLBACK for {config.hub_path}: {reason}"
    return prepared


def prepare(config: DataConfig, progress: bool = True) -> PreparedData:
    """Token files for both splits of the configured source, tokenizing only what is not cached,
    in the configured vocabulary (data.vocabulary=compact: mapped to the training split's).

    Idempotent: with the same config a second call re-uses the files (size and checksum checked).
    Raises DataError for bad inputs (before any long work) and for damaged cache files.
    """
    config.validate()
    if config.vocabulary == "auto":
        raise DataError(
            "data.vocabulary=auto is resolved against the model by the entry points (train, "
            "python -m gpt_oss.data); call prepare with data.vocabulary=compact or full"
        )
    return in_vocabulary(_prepare_o200k(config, progress), config)


def in_vocabulary(prepared: PreparedData, config: DataConfig) -> PreparedData:
    """`prepared` (o200k splits) in config.vocabulary: unchanged for full; for compact, the
    splits mapped to the training split's compact vocabulary, cached in compact-<size>/."""
    if config.vocabulary == "full":
        return prepared
    sources = {"train": prepared.train, "val": prepared.val}
    directory = compact_directory(prepared.directory, config.vocab_size)
    files = open_compact(directory, sources, config.verify_checksum)
    if files is None:
        directory.mkdir(parents=True, exist_ok=True)
        with _exclusive(directory):  # another process may have written them meanwhile
            files = open_compact(directory, sources, config.verify_checksum)
            files = files or write_compact(directory, sources, config.vocab_size)
    return dataclasses.replace(
        prepared, train=files["train"], val=files["val"], vocabulary=file_vocabulary(files["train"])
    )


def _prepare_o200k(config: DataConfig, progress: bool) -> PreparedData:
    """Both splits as o200k_harmony token files."""
    root = resolve_cache_dir(config)
    if config.source == "synthetic":
        return _prepare_plan(_synthetic_plan(config), root, config, progress)
    if config.source == "files":
        return _prepare_plan(_files_plan(config, root), root, config, progress)
    source = _hub_source(config)
    if prepared := _load_prepared(source, root, config):  # no network needed at all
        return prepared
    with _datasets_progress(progress):
        dataset, found = load_hub_dataset(config)
    if dataset is None:
        return _fall_back(config, root, progress, found)
    log.info("%s: loaded from %s", config.hub_path, found)
    plan = _Plan(source, _opened(hub_documents(dataset, config)))
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
# Several processes: rank 0 prepares, the others open the same files


def prepare_data(config: DataConfig, world: World) -> PreparedData:
    """Rank 0 prepares the data (it alone may reach the hub or fall back to the synthetic corpus);
    the other ranks then open the very token files it chose, so every rank trains on the same."""
    if world.size == 1:
        return prepare(config)
    # A group of its own with a long timeout: tokenizing may outlast NCCL's ten minutes.
    wait = dist.new_group(backend="gloo", timeout=DATA_WAIT)
    prepared = prepare(config) if world.is_main else None
    recipe = broadcast_object(_recipe(prepared) if world.is_main else None, group=wait)
    dist.destroy_process_group(wait)
    return prepared if world.is_main else _open_recipe(recipe, world.rank)


def _recipe(prepared: PreparedData) -> dict[str, Any]:
    fields = {f.name: getattr(prepared, f.name) for f in dataclasses.fields(prepared)}
    for split in SPLITS:
        token_file = fields.pop(split)
        fields[split] = (str(token_file.path), token_file.metadata["sha256"])
    return fields


def _open_recipe(recipe: dict[str, Any], rank: int) -> PreparedData:
    files = {}
    for split in SPLITS:
        path, sha256 = recipe.pop(split)
        if not Path(path).with_suffix(".json").is_file():
            raise DataError(
                f"rank {rank} cannot see {path}, prepared by rank 0: put data.cache_dir on a "
                "filesystem every node shares, or run `python -m gpt_oss.data` on every node first"
            )
        files[split] = TokenFile.open(path, verify_checksum="never")  # rank 0 checked it
        if files[split].metadata["sha256"] != sha256:
            raise DataError(f"rank {rank} sees a different {path} than rank 0 (sha256 differs)")
    return PreparedData(**files, **recipe)
